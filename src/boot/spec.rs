//! Specs of the boot layers (SeKVM VMPower, BootCore, BootOps) over `(AbsVms, RData)`. A VM's
//! record abstracts to its boot state: its stage-2 table is in `RData.npts` (memory's relation),
//! and each vCPU is only unused, idle or running (`Vcpu<()>`), its context being the vCPU
//! layer's business.

use super::{
    BootCore, BootData, BootError, LoadInfo, Vcpu, Verifier, VmState, Vms, MAX_BOOT_DATA_PAGES, MAX_IMAGE_BYTES,
    MAX_LOAD_INFO, MAX_VCPUS, SIGNATURE_LEN,
};
use crate::addr::{Ipa, IpaRange, Pfn, PA_LIMIT};
use crate::ids::{VcpuId, VmId};
use crate::machine::PAGE_SIZE;
use crate::memory::pages::Owner;
use crate::memory::spec::{prot_and_map_vm_s2pt_spec, RData};
use crate::page_table::descriptor::INPUT_LIMIT;
use corevisor_abi::bundle::{image_message, ImageRecord};
use ed25519_dalek::Signature;
use sha2::{Digest, Sha256};

/// A VM's record as the boot specs see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsVm {
    pub state: VmState,
    pub ram: IpaRange,
    pub vcpus: [Vcpu<()>; MAX_VCPUS],
    pub load: Vec<LoadInfo>,
    pub checked: u64,
    pub boot_data: Option<BootData>,
    pub entered: bool,
}

/// Every VM as the boot specs see it: one entry per vmid, `None` when it has no record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsVms {
    pub next_vmid: u16,
    pub vms: Vec<Option<AbsVm>>,
}

impl AbsVms {
    /// The abstraction of the concrete records.
    pub fn of<C>(vms: &Vms<C>) -> AbsVms {
        AbsVms::of_records(&vms.core, vms.vms.iter().map(Option::as_ref))
    }

    /// The abstraction of `core` and every vmid's record in order (KCore's, under its locks).
    pub fn of_records<'a, C: 'a>(core: &BootCore, recs: impl Iterator<Item = Option<&'a super::Vm<C>>>) -> AbsVms {
        let abs = |rec: &super::Vm<C>| AbsVm {
            state: rec.state,
            ram: rec.ram,
            vcpus: core::array::from_fn(|i| match rec.vcpus[i] {
                Vcpu::Unused => Vcpu::Unused,
                Vcpu::Idle(_) => Vcpu::Idle(()),
                Vcpu::Running => Vcpu::Running,
            }),
            load: rec.load.clone(),
            checked: rec.checked,
            boot_data: rec.boot_data,
            entered: rec.entered,
        };
        AbsVms { next_vmid: core.next_vmid, vms: recs.map(|rec| rec.map(abs)).collect() }
    }

    pub fn get(&self, vm: VmId) -> Option<&AbsVm> {
        self.vms[vm.index()].as_ref()
    }

    fn get_mut(&mut self, vm: VmId) -> Option<&mut AbsVm> {
        self.vms[vm.index()].as_mut()
    }
}

type Step<T> = Option<(AbsVms, RData, Result<T, BootError>)>;

fn state_of(vms: &AbsVms, vm: VmId) -> Option<VmState> {
    vms.get(vm).map(|v| v.state)
}

fn refuse<T>(vms: &AbsVms, r: &RData, e: BootError) -> Step<T> {
    Some((vms.clone(), r.clone(), Err(e)))
}

/// Checks the VM is READY; the error otherwise.
fn need_ready(vms: &AbsVms, vm: VmId) -> Result<(), BootError> {
    match state_of(vms, vm) {
        None => Err(BootError::NoVm),
        Some(VmState::Ready) => Ok(()),
        Some(s) => Err(BootError::State(s)),
    }
}

/// A fresh vmid, in order, never reused; the VM is READY with RAM `ram` and no vCPUs.
pub fn register_vm_spec(vms: &AbsVms, r: &RData, ram: IpaRange) -> Step<VmId> {
    let Some(vm) = VmId::new(vms.next_vmid.into()) else { return refuse(vms, r, BootError::NoVmid) };
    let mut next = vms.clone();
    next.next_vmid += 1;
    next.vms[vm.index()] = Some(AbsVm {
        state: VmState::Ready,
        ram,
        vcpus: [const { Vcpu::Unused }; MAX_VCPUS],
        load: vec![],
        checked: 0,
        boot_data: None,
        entered: false,
    });
    Some((next, r.clone(), Ok(vm)))
}

pub fn register_vcpu_spec(vms: &AbsVms, r: &RData, vm: VmId, vcpu: VcpuId) -> Step<()> {
    if let Err(e) = need_ready(vms, vm) {
        return refuse(vms, r, e);
    }
    let mut next = vms.clone();
    match &mut next.get_mut(vm)?.vcpus[vcpu.index()] {
        v @ Vcpu::Unused => *v = Vcpu::Idle(()),
        _ => return refuse(vms, r, BootError::Vcpu),
    }
    Some((next, r.clone(), Ok(())))
}

/// SET_BOOT_INFO, from the ABI: a READY VM takes up to five images; each is page-aligned, not
/// empty, lies (with its signature, in whole pages) below the guest's input limit without
/// overlapping another, and all of the VM's images fill at most `MAX_IMAGE_BYTES`. Sizes are
/// counted in 128-bit arithmetic here, so that no wrapping can make a huge image look small.
pub fn set_boot_info_spec(vms: &AbsVms, r: &RData, vm: VmId, gpa: Ipa, size: u64) -> Step<usize> {
    if let Err(e) = need_ready(vms, vm) {
        return refuse(vms, r, e);
    }
    let info = vms.get(vm)?;
    let gpa = gpa.raw();
    let span = |size: u64| (size as u128 + SIGNATURE_LEN as u128).div_ceil(PAGE_SIZE as u128) * PAGE_SIZE as u128;
    let (start, end) = (gpa as u128, gpa as u128 + span(size));
    let clash = info.load.iter().any(|l| start < l.gpa.raw() as u128 + span(l.size) && (l.gpa.raw() as u128) < end);
    let bytes: u128 = info.load.iter().map(|l| span(l.size)).sum::<u128>() + span(size);
    if info.load.len() >= MAX_LOAD_INFO
        || !gpa.is_multiple_of(PAGE_SIZE)
        || size == 0
        || end > INPUT_LIMIT as u128
        || bytes > MAX_IMAGE_BYTES as u128
        || clash
    {
        return refuse(vms, r, BootError::BadRange);
    }
    let mut next = vms.clone();
    next.get_mut(vm)?.load.push(LoadInfo { gpa: Ipa(gpa), size, pfns: vec![] });
    Some((next, r.clone(), Ok(info.load.len())))
}

/// REMAP_VM_IMAGE, from the ABI: `pfn` names the page at `pfn * PAGE_SIZE`; a number at or past
/// the physical address size names no page and must have been refused where it entered (the
/// trap edge, `Pfn::new`): reaching this layer it breaks the layer's precondition (`None`). The
/// page must be the host's, not shared, and not listed in any image of any VM; the image must
/// still miss pages.
pub fn remap_vm_image_spec(vms: &AbsVms, r: &RData, vm: VmId, pfn: Pfn, index: usize) -> Step<()> {
    if pfn.raw() >= PA_LIMIT / PAGE_SIZE {
        return None;
    }
    if let Err(e) = need_ready(vms, vm) {
        return refuse(vms, r, e);
    }
    let Some(load) = vms.get(vm)?.load.get(index) else { return refuse(vms, r, BootError::BadImage) };
    if load.pfns.len() as u64 >= load.pages() {
        return refuse(vms, r, BootError::BadImage);
    }
    let listed = vms.vms.iter().flatten().any(|v| v.load.iter().any(|l| l.pfns.contains(&pfn)));
    let host_page = r.page(pfn.raw() * PAGE_SIZE).is_some_and(|p| p.owner == Owner::Host && p.count == 0);
    if listed || !host_page {
        return refuse(vms, r, BootError::BadPage);
    }
    let mut next = vms.clone();
    next.get_mut(vm)?.load[index].pfns.push(pfn);
    Some((next, r.clone(), Ok(())))
}

/// The image's bytes as the spec's memory holds them.
fn image_bytes(r: &RData, load: &LoadInfo, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|pos| {
            let pa = load.pfns[(pos / PAGE_SIZE) as usize].pa().raw() + (pos % PAGE_SIZE);
            let word = r.flatmem.get(&(pa & !7)).copied().unwrap_or(0);
            word.to_le_bytes()[(pa % 8) as usize]
        })
        .collect()
}

/// VERIFY_VM_IMAGE, from the ABI: a READY VM whose images all have their pages starts
/// VERIFYING; each call then takes the next `chunk_pages` pages (images in order, pages in
/// order) from the host into the VM at their guest addresses, and answers how many are left.
/// The call that takes the last page checks each image's signature over the VM's whole layout
/// (`image_message`: the RAM window, the images' count, the image's index, and every image's
/// load address, size and SHA-256 (FIPS 180-4) of the bytes now in its pages): all good makes the VM
/// VERIFIED, any bad REJECTED. A page that cannot be taken makes it REJECTED at once. The spec
/// hashes in one step at the end: the pages hashed by earlier calls are the VM's by then, so
/// their bytes are those the code hashed as it went.
pub fn verify_vm_image_spec(vms: &AbsVms, r: &RData, vm: VmId, v: &Verifier) -> Step<u64> {
    let mut next = vms.clone();
    let info = match state_of(vms, vm) {
        None => return refuse(vms, r, BootError::NoVm),
        Some(VmState::Ready) => {
            let info = next.get_mut(vm)?;
            if info.load.is_empty() || info.load.iter().any(|l| l.pfns.len() as u64 != l.pages()) {
                return refuse(vms, r, BootError::BadImage);
            }
            info.state = VmState::Verifying;
            info.checked = 0;
            info
        }
        Some(VmState::Verifying) => next.get_mut(vm)?,
        Some(s) => return refuse(vms, r, BootError::State(s)),
    };
    let pages: Vec<(u64, u64)> = info
        .load
        .iter()
        .flat_map(|l| l.pfns.iter().enumerate().map(move |(i, &pfn)| (l.gpa.gfn().raw() + i as u64, pfn.raw())))
        .collect();
    let mut memory = r.clone();
    for &(gfn, pfn) in pages.iter().skip(info.checked as usize).take(v.chunk_pages as usize) {
        let (after, result) = prot_and_map_vm_s2pt_spec(&memory, vm.vmid(), gfn, pfn, 3)?;
        memory = after;
        if let Err(e) = result {
            info.state = VmState::Rejected;
            return Some((next, memory, Err(BootError::Mem(e))));
        }
        info.checked += 1;
    }
    let left = pages.len() as u64 - info.checked;
    if left > 0 {
        return Some((next, memory, Ok(left)));
    }
    let records: Vec<ImageRecord> = info
        .load
        .iter()
        .map(|l| ImageRecord {
            gpa: l.gpa.raw(),
            size: l.size,
            sha256: Sha256::digest(image_bytes(&memory, l, 0, l.size)).into(),
        })
        .collect();
    let signed = |(index, l): (usize, &LoadInfo)| {
        let signature: [u8; 64] = image_bytes(&memory, l, l.size, SIGNATURE_LEN).try_into().unwrap();
        let message = image_message(info.ram.base(), info.ram.size(), &records, index).unwrap();
        v.key.verify_strict(message.as_bytes(), &Signature::from_bytes(&signature)).is_ok()
    };
    let good = info.load.iter().enumerate().all(signed);
    info.state = if good { VmState::Verified } else { VmState::Rejected };
    Some((next, memory, if good { Ok(0) } else { Err(BootError::Rejected) }))
}

/// Teardown of a VERIFYING VM: it becomes REJECTED.
pub fn abandon_verification_spec(vms: &AbsVms, vm: VmId) -> AbsVms {
    let mut next = vms.clone();
    if let Some(info) = next.get_mut(vm).filter(|i| i.state == VmState::Verifying) {
        info.state = VmState::Rejected;
    }
    next
}

/// A VERIFIED VM is powered off for good; a vCPU running now finishes its run.
pub fn power_off_spec(vms: &AbsVms, r: &RData, vm: VmId) -> Step<()> {
    match state_of(vms, vm) {
        None => refuse(vms, r, BootError::NoVm),
        Some(VmState::Verified) => {
            let mut next = vms.clone();
            next.get_mut(vm)?.state = VmState::PoweredOff;
            Some((next, r.clone(), Ok(())))
        }
        Some(s) => refuse(vms, r, BootError::State(s)),
    }
}

/// An idle vCPU of a VERIFIED VM starts running.
pub fn set_vcpu_active_spec(vms: &AbsVms, r: &RData, vm: VmId, vcpu: VcpuId) -> Step<()> {
    match state_of(vms, vm) {
        None => refuse(vms, r, BootError::NoVm),
        Some(VmState::Verified) => {
            let mut next = vms.clone();
            match &mut next.get_mut(vm)?.vcpus[vcpu.index()] {
                v @ Vcpu::Idle(()) => *v = Vcpu::Running,
                _ => return refuse(vms, r, BootError::Vcpu),
            }
            next.get_mut(vm)?.entered = true;
            Some((next, r.clone(), Ok(())))
        }
        Some(s) => refuse(vms, r, BootError::State(s)),
    }
}

/// A running vCPU is back, idle (whatever its VM's state now).
pub fn set_vcpu_inactive_spec(vms: &AbsVms, vm: VmId, vcpu: VcpuId) -> AbsVms {
    let mut next = vms.clone();
    if let Some(v @ Vcpu::Running) = next.get_mut(vm).map(|i| &mut i.vcpus[vcpu.index()]) {
        *v = Vcpu::Idle(());
    }
    next
}

/// BOOT_DATA, from the ABI (issue 13): the host gives a VERIFIED VM that has never run one page
/// of unsigned boot data (its device tree) at guest address `gpa`. The first page may go
/// anywhere page-aligned in the VM's RAM that no image covers; each further one goes right after
/// the last, up to `MAX_BOOT_DATA_PAGES`. The page must be the host's, unshared, and listed in
/// no VM's image. It becomes the VM's at `gpa`, mapped, with the bytes the host wrote (the memory
/// spec's `prot_and_map_vm_s2pt`, which takes it from the host). Once any vCPU of the VM has run,
/// the call is refused: the host never places bytes in a guest that is running.
pub fn load_boot_data_spec(vms: &AbsVms, r: &RData, vm: VmId, gpa: Ipa, pfn: Pfn) -> Step<()> {
    if pfn.raw() >= PA_LIMIT / PAGE_SIZE {
        return None;
    }
    let info = match vms.get(vm) {
        None => return refuse(vms, r, BootError::NoVm),
        Some(info) if info.state != VmState::Verified => return refuse(vms, r, BootError::State(info.state)),
        Some(info) if info.entered => return refuse(vms, r, BootError::Started),
        Some(info) => info,
    };
    let gpa = gpa.raw() as u128;
    let covered = |l: &LoadInfo| {
        let start = l.gpa.raw() as u128;
        (start..start + l.pages() as u128 * PAGE_SIZE as u128).contains(&gpa)
    };
    let (base, pages) = info.boot_data.map_or((gpa, 0), |d| (d.base.raw() as u128, d.pages));
    let next_page = base + pages as u128 * PAGE_SIZE as u128;
    let in_ram = (info.ram.base() as u128..info.ram.base() as u128 + info.ram.size() as u128).contains(&gpa);
    if !gpa.is_multiple_of(PAGE_SIZE as u128) || gpa != next_page || pages >= MAX_BOOT_DATA_PAGES || !in_ram {
        return refuse(vms, r, BootError::BadRange);
    }
    if info.load.iter().any(covered) {
        return refuse(vms, r, BootError::BadRange);
    }
    if vms.vms.iter().flatten().any(|v| v.load.iter().any(|l| l.pfns.contains(&pfn))) {
        return refuse(vms, r, BootError::BadPage);
    }
    let (memory, result) = prot_and_map_vm_s2pt_spec(r, vm.vmid(), (gpa / PAGE_SIZE as u128) as u64, pfn.raw(), 3)?;
    if let Err(e) = result {
        return Some((vms.clone(), memory, Err(BootError::Mem(e))));
    }
    let mut next = vms.clone();
    next.get_mut(vm)?.boot_data = Some(BootData { base: Ipa(base as u64), pages: pages + 1 });
    Some((next, memory, Ok(())))
}

//! Specs of the boot layers (SeKVM VMPower, BootCore, BootOps) over `(Vms, RData)`. The VM
//! records are abstract already, so the relation is the identity on them (as SeKVM's
//! `relate_RData` is for these layers) and `memory::spec`'s relation on memory.

use super::{
    image_message, BootError, LoadInfo, VcpuState, VmState, Vms, MAX_IMAGE_BYTES, MAX_LOAD_INFO, MAX_VMS, SIGNATURE_LEN,
};
use crate::machine::PAGE_SIZE;
use crate::memory::pages::Owner;
use crate::memory::spec::{prot_and_map_vm_s2pt_spec, RData};
use crate::memory::MemError;
use crate::page_table::descriptor::{INPUT_LIMIT, OUTPUT_LIMIT};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

type Step<T> = Option<(Vms, RData, Result<T, BootError>)>;

fn state_of(vms: &Vms, vmid: u16) -> Option<VmState> {
    (1..=MAX_VMS).contains(&vmid).then(|| vms.infos[vmid as usize - 1].state).filter(|s| *s != VmState::Unused)
}

fn refuse<T>(vms: &Vms, r: &RData, e: BootError) -> Step<T> {
    Some((vms.clone(), r.clone(), Err(e)))
}

/// Checks the VM is READY; the error otherwise.
fn need_ready(vms: &Vms, vmid: u16) -> Result<(), BootError> {
    match state_of(vms, vmid) {
        None => Err(BootError::NoVm),
        Some(VmState::Ready) => Ok(()),
        Some(s) => Err(BootError::State(s)),
    }
}

pub fn register_vm_spec(vms: &Vms, r: &RData) -> Step<u16> {
    if vms.next_vmid > MAX_VMS {
        return refuse(vms, r, BootError::NoVmid);
    }
    let mut next = vms.clone();
    let vmid = next.next_vmid;
    next.next_vmid += 1;
    next.infos[vmid as usize - 1].state = VmState::Ready;
    Some((next, r.clone(), Ok(vmid)))
}

pub fn register_vcpu_spec(vms: &Vms, r: &RData, vmid: u16, vcpuid: usize) -> Step<()> {
    if let Err(e) = need_ready(vms, vmid) {
        return refuse(vms, r, e);
    }
    let mut next = vms.clone();
    match next.infos[vmid as usize - 1].vcpus.get_mut(vcpuid) {
        Some(v) if *v == VcpuState::Unused => *v = VcpuState::Ready,
        _ => return refuse(vms, r, BootError::Vcpu),
    }
    Some((next, r.clone(), Ok(())))
}

/// SET_BOOT_INFO, from the ABI: a READY VM takes up to five images; each is page-aligned, not
/// empty, lies (with its signature, in whole pages) below the guest's input limit without
/// overlapping another, and all of the VM's images fill at most `MAX_IMAGE_BYTES`. Sizes are
/// counted in 128-bit arithmetic here, so that no wrapping can make a huge image look small.
pub fn set_boot_info_spec(vms: &Vms, r: &RData, vmid: u16, gpa: u64, size: u64) -> Step<usize> {
    if let Err(e) = need_ready(vms, vmid) {
        return refuse(vms, r, e);
    }
    let info = &vms.infos[vmid as usize - 1];
    let span = |size: u64| (size as u128 + SIGNATURE_LEN as u128).div_ceil(PAGE_SIZE as u128) * PAGE_SIZE as u128;
    let (start, end) = (gpa as u128, gpa as u128 + span(size));
    let clash = info.load.iter().any(|l| start < l.gpa as u128 + span(l.size) && (l.gpa as u128) < end);
    let bytes: u128 = info.load.iter().map(|l| span(l.size)).sum::<u128>() + span(size);
    if info.load.len() >= MAX_LOAD_INFO
        || gpa % PAGE_SIZE != 0
        || size == 0
        || end > INPUT_LIMIT as u128
        || bytes > MAX_IMAGE_BYTES as u128
        || clash
    {
        return refuse(vms, r, BootError::BadRange);
    }
    let mut next = vms.clone();
    next.infos[vmid as usize - 1].load.push(LoadInfo { gpa, size, pfns: vec![] });
    Some((next, r.clone(), Ok(info.load.len())))
}

/// REMAP_VM_IMAGE, from the ABI: `pfn` names a page of RAM by its number, so a number at or past
/// the physical address size (`OUTPUT_LIMIT`) names nothing and is refused; the page must be the
/// host's, not shared, and not listed in any image of any VM; the image must still miss pages.
pub fn remap_vm_image_spec(vms: &Vms, r: &RData, vmid: u16, pfn: u64, index: usize) -> Step<()> {
    if let Err(e) = need_ready(vms, vmid) {
        return refuse(vms, r, e);
    }
    let Some(load) = vms.infos[vmid as usize - 1].load.get(index) else { return refuse(vms, r, BootError::BadImage) };
    if load.pfns.len() as u64 >= load.pages() {
        return refuse(vms, r, BootError::BadImage);
    }
    if pfn >= OUTPUT_LIMIT / PAGE_SIZE {
        return refuse(vms, r, BootError::Mem(MemError::BadPfn));
    }
    let listed = vms.infos.iter().any(|i| i.load.iter().any(|l| l.pfns.contains(&pfn)));
    let host_page = r.page(pfn * PAGE_SIZE).is_some_and(|p| p.owner == Owner::Host && p.count == 0);
    if listed || !host_page {
        return refuse(vms, r, BootError::BadPage);
    }
    let mut next = vms.clone();
    next.infos[vmid as usize - 1].load[index].pfns.push(pfn);
    Some((next, r.clone(), Ok(())))
}

/// The image's bytes as the spec's memory holds them.
fn image_bytes(r: &RData, load: &LoadInfo, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|pos| {
            let pa = (load.pfns[(pos / PAGE_SIZE) as usize] << 12) + (pos % PAGE_SIZE);
            let word = r.flatmem.get(&(pa & !7)).copied().unwrap_or(0);
            word.to_le_bytes()[(pa % 8) as usize]
        })
        .collect()
}

pub fn verify_vm_image_spec(vms: &Vms, r: &RData, vmid: u16, key: &VerifyingKey) -> Step<()> {
    if let Err(e) = need_ready(vms, vmid) {
        return refuse(vms, r, e);
    }
    let load = vms.infos[vmid as usize - 1].load.clone();
    if load.is_empty() || load.iter().any(|l| l.pfns.len() as u64 != l.pages()) {
        return refuse(vms, r, BootError::BadImage);
    }
    let mut memory = r.clone();
    let mut verdict = Ok(());
    'images: for image in &load {
        for (i, &pfn) in image.pfns.iter().enumerate() {
            let (next, result) = prot_and_map_vm_s2pt_spec(&memory, vmid, (image.gpa >> 12) + i as u64, pfn, 3)?;
            memory = next;
            if let Err(e) = result {
                verdict = Err(BootError::Mem(e));
                break 'images;
            }
        }
        let digest: [u8; 64] = Sha512::digest(image_bytes(&memory, image, 0, image.size)).into();
        let signature: [u8; 64] = image_bytes(&memory, image, image.size, SIGNATURE_LEN).try_into().unwrap();
        if key.verify_strict(&image_message(&digest), &Signature::from_bytes(&signature)).is_err() {
            verdict = Err(BootError::Rejected);
            break;
        }
    }
    let mut next = vms.clone();
    next.infos[vmid as usize - 1].state = if verdict.is_ok() { VmState::Verified } else { VmState::Rejected };
    Some((next, memory, verdict))
}

pub fn power_off_spec(vms: &Vms, r: &RData, vmid: u16) -> Step<()> {
    match state_of(vms, vmid) {
        None => refuse(vms, r, BootError::NoVm),
        Some(VmState::Verified) => {
            let mut next = vms.clone();
            let info = &mut next.infos[vmid as usize - 1];
            info.state = VmState::PoweredOff;
            for v in info.vcpus.iter_mut() {
                if *v == VcpuState::Active {
                    *v = VcpuState::Ready;
                }
            }
            Some((next, r.clone(), Ok(())))
        }
        Some(s) => refuse(vms, r, BootError::State(s)),
    }
}

pub fn set_vcpu_active_spec(vms: &Vms, r: &RData, vmid: u16, vcpuid: usize) -> Step<()> {
    match state_of(vms, vmid) {
        None => refuse(vms, r, BootError::NoVm),
        Some(VmState::Verified) => match vms.infos[vmid as usize - 1].vcpus.get(vcpuid) {
            Some(VcpuState::Ready) => {
                let mut next = vms.clone();
                next.infos[vmid as usize - 1].vcpus[vcpuid] = VcpuState::Active;
                Some((next, r.clone(), Ok(())))
            }
            _ => refuse(vms, r, BootError::Vcpu),
        },
        Some(s) => refuse(vms, r, BootError::State(s)),
    }
}

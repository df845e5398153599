//! Specs of the boot layers (SeKVM VMPower, BootCore, BootOps) over `(Vms, RData)`. The VM
//! records are abstract already, so the relation is the identity on them (as SeKVM's
//! `relate_RData` is for these layers) and `memory::spec`'s relation on memory.

use super::{
    BootError, LoadInfo, VcpuState, Verifier, VmState, Vms, MAX_IMAGE_BYTES, MAX_LOAD_INFO, MAX_VMS, SIGNATURE_LEN,
};
use crate::machine::PAGE_SIZE;
use crate::memory::pages::Owner;
use crate::memory::spec::{prot_and_map_vm_s2pt_spec, RData};
use crate::memory::MemError;
use crate::page_table::descriptor::{INPUT_LIMIT, OUTPUT_LIMIT};
use corevisor_abi::bundle::{image_message, ImageRecord};
use ed25519_dalek::Signature;
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
        || !gpa.is_multiple_of(PAGE_SIZE)
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

/// VERIFY_VM_IMAGE, from the ABI: a READY VM whose images all have their pages starts
/// VERIFYING; each call then takes the next `chunk_pages` pages (images in order, pages in
/// order) from the host into the VM at their guest addresses, and answers how many are left.
/// The call that takes the last page checks each image's signature over the VM's whole layout
/// (`image_message`: the RAM window, the images' count, the image's index, and every image's
/// load address, size and SHA-512 of the bytes now in its pages): all good makes the VM
/// VERIFIED, any bad REJECTED. A page that cannot be taken makes it REJECTED at once. The spec
/// hashes in one step at the end: the pages hashed by earlier calls are the VM's by then, so
/// their bytes are those the code hashed as it went.
pub fn verify_vm_image_spec(vms: &Vms, r: &RData, vmid: u16, v: &Verifier) -> Step<u64> {
    let mut next = vms.clone();
    let info = match state_of(vms, vmid) {
        None => return refuse(vms, r, BootError::NoVm),
        Some(VmState::Ready) => {
            let info = &mut next.infos[vmid as usize - 1];
            if info.load.is_empty() || info.load.iter().any(|l| l.pfns.len() as u64 != l.pages()) {
                return refuse(vms, r, BootError::BadImage);
            }
            info.state = VmState::Verifying;
            info.checked = 0;
            info
        }
        Some(VmState::Verifying) => &mut next.infos[vmid as usize - 1],
        Some(s) => return refuse(vms, r, BootError::State(s)),
    };
    let pages: Vec<(u64, u64)> = info
        .load
        .iter()
        .flat_map(|l| l.pfns.iter().enumerate().map(move |(i, &pfn)| ((l.gpa >> 12) + i as u64, pfn)))
        .collect();
    let mut memory = r.clone();
    for &(gfn, pfn) in pages.iter().skip(info.checked as usize).take(v.chunk_pages as usize) {
        let (after, result) = prot_and_map_vm_s2pt_spec(&memory, vmid, gfn, pfn, 3)?;
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
            gpa: l.gpa,
            size: l.size,
            sha512: Sha512::digest(image_bytes(&memory, l, 0, l.size)).into(),
        })
        .collect();
    let signed = |(index, l): (usize, &LoadInfo)| {
        let signature: [u8; 64] = image_bytes(&memory, l, l.size, SIGNATURE_LEN).try_into().unwrap();
        let message = image_message(v.ram_base, v.ram_size, &records, index).unwrap();
        v.key.verify_strict(message.as_bytes(), &Signature::from_bytes(&signature)).is_ok()
    };
    let good = info.load.iter().enumerate().all(signed);
    info.state = if good { VmState::Verified } else { VmState::Rejected };
    Some((next, memory, if good { Ok(0) } else { Err(BootError::Rejected) }))
}

/// Teardown of a VERIFYING VM: it becomes REJECTED.
pub fn abandon_verification_spec(vms: &Vms, vmid: u16) -> Vms {
    let mut next = vms.clone();
    if state_of(vms, vmid) == Some(VmState::Verifying) {
        next.infos[vmid as usize - 1].state = VmState::Rejected;
    }
    next
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

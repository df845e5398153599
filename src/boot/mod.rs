//! Boot (SeKVM layers 18-21): VM power state (VMPower), vmid allocation (BootCore), and VM and
//! vCPU registration with boot-image verification (BootAux, BootOps).
//!
//! A VM's life: REGISTER_VM gives a vmid (READY); REGISTER_VCPU adds vCPUs; SET_BOOT_INFO
//! declares where each image goes in the guest's address space and how long it is;
//! REMAP_VM_IMAGE lists, page by page, the host pages that hold it (the image followed by its
//! 64-byte signature); VERIFY_VM_IMAGE takes every listed page from the host (unmapping it there,
//! so the host cannot change it afterwards), maps it for the VM, and checks the signature over
//! what the VM will run. Only then is the VM VERIFIED, the one state in which its vCPUs may run.
//! A failed check leaves it REJECTED for good; its pages come back to the host only through
//! teardown, scrubbed.
//!
//! The signature is Ed25519 over `IMAGE_DOMAIN ‖ SHA-512(image)`: hashing page by page lets KCore
//! check images larger than its heap.

#[cfg(test)]
pub mod spec;
#[cfg(test)]
mod tests;

use crate::machine::{Machine, PAGE_SIZE};
use crate::memory::pages::Owner;
use crate::memory::{checked_pa, HostMemory, MemError};
use crate::page_table::descriptor::INPUT_LIMIT;
use crate::page_table::PageTable;
use alloc::vec::Vec;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

/// VM ids run from 1 to `MAX_VMS`; 0 is the host.
pub const MAX_VMS: u16 = 16;
pub const MAX_VCPUS: usize = 8;
/// Images per VM (SeKVM: 5).
pub const MAX_LOAD_INFO: usize = 5;
/// The most image bytes (images and signatures, in whole pages) one VM may have listed: 64 MiB,
/// which holds a distribution's arm64 kernel (Debian's is 35 MB) with room for an initrd.
///
/// With this cap no sequence of host calls exhausts KCore's heap through the boot records: an
/// image's page list is allocated once, exactly, when SET_BOOT_INFO declares it (REMAP_VM_IMAGE
/// only fills it and never allocates), so the lists of all VMs together hold at most
/// `MAX_VMS * MAX_IMAGE_PAGES` numbers (16 × 16,384 × 8 bytes = 2 MiB); the index of listed pages
/// is one bit per page of RAM, allocated once; a verification in progress holds one hash state
/// per VM. A refused call allocates nothing, and teardown frees what the VM had.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// [`MAX_IMAGE_BYTES`] in pages.
pub const MAX_IMAGE_PAGES: u64 = MAX_IMAGE_BYTES / PAGE_SIZE;
pub const SIGNATURE_LEN: u64 = corevisor_abi::bundle::SIGNATURE_LEN as u64;
/// What the signature covers before the image's hash (shared with xtask through the ABI crate).
pub use corevisor_abi::bundle::IMAGE_DOMAIN;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Unused,
    /// Registered; boot information and images may be given.
    Ready,
    /// Every image checked: the VM may run.
    Verified,
    /// An image failed its check: the VM can never run.
    Rejected,
    PoweredOff,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    Unused,
    Ready,
    /// Running on a core.
    Active,
}

/// One image: where it goes in the guest, its length, and the host pages listed so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadInfo {
    pub gpa: u64,
    pub size: u64,
    pub pfns: Vec<u64>,
}

impl LoadInfo {
    /// Pages the image and its signature fill.
    pub fn pages(&self) -> u64 {
        image_pages(self.size)
    }
}

/// Pages an image of `size` bytes and its signature fill (saturating: a size near `u64::MAX` is
/// refused by the cap, never wrapped into a small one).
pub fn image_pages(size: u64) -> u64 {
    size.saturating_add(SIGNATURE_LEN).div_ceil(PAGE_SIZE)
}

/// Which pages of RAM are listed in some VM's image: one bit per page, indexed like the ownership
/// table. Derived from the VMs' page lists (KCore's working state, so that "listed already" costs
/// one lookup instead of a scan of every list); equality ignores it, and the boot tests check it
/// against the lists after every step.
#[derive(Clone, Debug, Default)]
pub struct ListedIndex(Vec<u64>);

impl PartialEq for ListedIndex {
    fn eq(&self, _: &ListedIndex) -> bool {
        true
    }
}
impl Eq for ListedIndex {}

impl ListedIndex {
    fn get(&self, index: usize) -> bool {
        self.0.get(index / 64).is_some_and(|w| w >> (index % 64) & 1 == 1)
    }

    /// Sets or clears the bit of page `index`; the bitmap grows (once) to cover `pages` pages.
    fn set(&mut self, index: usize, pages: usize, on: bool) -> Result<(), BootError> {
        let words = pages.div_ceil(64);
        if self.0.len() < words {
            self.0.try_reserve_exact(words - self.0.len()).map_err(|_| BootError::NoRoom)?;
            self.0.resize(words, 0);
        }
        let word = self.0.get_mut(index / 64).ok_or(BootError::BadPage)?;
        if on {
            *word |= 1 << (index % 64);
        } else {
            *word &= !(1 << (index % 64));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    pub state: VmState,
    pub vcpus: [VcpuState; MAX_VCPUS],
    pub load: Vec<LoadInfo>,
}

impl VmInfo {
    const UNUSED: VmInfo = VmInfo { state: VmState::Unused, vcpus: [VcpuState::Unused; MAX_VCPUS], load: Vec::new() };
}

/// Why a boot operation was refused. Nothing changed, except where noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// Every vmid is taken.
    NoVmid,
    /// No such VM (out of range, or never registered).
    NoVm,
    /// The VM is not in the state the operation needs.
    State(VmState),
    /// No such vCPU, or it is not in the state the operation needs.
    Vcpu,
    /// Too many images, or the image would overlap another or leave the guest's address space.
    BadRange,
    /// No such image, or it already has all its pages, or it has not got them all yet.
    BadImage,
    /// The page cannot be part of an image (not the host's, or listed already).
    BadPage,
    /// KCore's heap cannot hold the record (never happens within the caps; refused, not a panic).
    NoRoom,
    Mem(MemError),
    /// The signature does not match: the VM is now REJECTED.
    Rejected,
}

/// Every VM's boot state (SeKVM `vminfos` and `core_data.next_vmid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vms {
    pub next_vmid: u16,
    pub infos: Vec<VmInfo>,
    /// The pages listed in any VM's images (derived from `infos`).
    pub listed: ListedIndex,
}

impl Default for Vms {
    fn default() -> Self {
        Self::new()
    }
}

impl Vms {
    pub fn new() -> Vms {
        Vms { next_vmid: 1, infos: (0..MAX_VMS).map(|_| VmInfo::UNUSED).collect(), listed: ListedIndex::default() }
    }

    /// The VM `vmid`, if it is registered.
    pub fn get(&self, vmid: u16) -> Option<&VmInfo> {
        let info = self.infos.get((vmid as usize).checked_sub(1)?)?;
        (info.state != VmState::Unused).then_some(info)
    }

    fn get_mut(&mut self, vmid: u16) -> Result<&mut VmInfo, BootError> {
        let index = (vmid as usize).checked_sub(1).ok_or(BootError::NoVm)?;
        self.infos.get_mut(index).filter(|i| i.state != VmState::Unused).ok_or(BootError::NoVm)
    }

    fn ready(&mut self, vmid: u16) -> Result<&mut VmInfo, BootError> {
        let info = self.get_mut(vmid)?;
        match info.state {
            VmState::Ready => Ok(info),
            other => Err(BootError::State(other)),
        }
    }

    /// VMPower `get_vm_poweron`: may the VM's vCPUs run?
    pub fn may_run(&self, vmid: u16) -> bool {
        self.get(vmid).is_some_and(|i| i.state == VmState::Verified)
    }

    /// VMPower `set_vm_poweroff`.
    pub fn power_off(&mut self, vmid: u16) -> Result<(), BootError> {
        let info = self.get_mut(vmid)?;
        match info.state {
            VmState::Verified => {
                info.state = VmState::PoweredOff;
                info.vcpus.iter_mut().filter(|v| **v != VcpuState::Unused).for_each(|v| *v = VcpuState::Ready);
                Ok(())
            }
            other => Err(BootError::State(other)),
        }
    }

    /// BootCore `gen_vmid` and BootOps `register_kvm`: a fresh vmid, READY. Vmids are not reused.
    pub fn register_vm(&mut self) -> Result<u16, BootError> {
        if self.next_vmid > MAX_VMS {
            return Err(BootError::NoVmid);
        }
        let vmid = self.next_vmid;
        self.next_vmid += 1;
        self.infos[vmid as usize - 1].state = VmState::Ready;
        Ok(vmid)
    }

    /// `register_vcpu`: the VM must be READY and the vCPU unused (the verified spec's `&&`).
    pub fn register_vcpu(&mut self, vmid: u16, vcpuid: usize) -> Result<(), BootError> {
        let info = self.ready(vmid)?;
        match info.vcpus.get_mut(vcpuid) {
            Some(v @ VcpuState::Unused) => {
                *v = VcpuState::Ready;
                Ok(())
            }
            _ => Err(BootError::Vcpu),
        }
    }

    /// `set_vcpu_active`: a vCPU of a VERIFIED VM starts running. `set_vcpu_inactive` undoes it.
    pub fn set_vcpu_active(&mut self, vmid: u16, vcpuid: usize) -> Result<(), BootError> {
        let info = self.get_mut(vmid)?;
        if info.state != VmState::Verified {
            return Err(BootError::State(info.state));
        }
        match info.vcpus.get_mut(vcpuid) {
            Some(v @ VcpuState::Ready) => {
                *v = VcpuState::Active;
                Ok(())
            }
            _ => Err(BootError::Vcpu),
        }
    }

    pub fn set_vcpu_inactive(&mut self, vmid: u16, vcpuid: usize) -> Result<(), BootError> {
        match self.get_mut(vmid)?.vcpus.get_mut(vcpuid) {
            Some(v @ VcpuState::Active) => {
                *v = VcpuState::Ready;
                Ok(())
            }
            _ => Err(BootError::Vcpu),
        }
    }

    /// After teardown (every page of the VM is the host's again): the VM's image pages are no
    /// longer listed, so they may be listed for another VM.
    pub fn release_images(&mut self, mem: &HostMemory, vmid: u16) {
        let Ok(info) = self.get_mut(vmid) else { return };
        let load = core::mem::take(&mut info.load);
        for pfn in load.iter().flat_map(|l| &l.pfns) {
            // Every listed number was checked to name a page of RAM when it was listed.
            if let Some(index) = checked_pa(*pfn).ok().and_then(|pa| mem.db.regions().page_index(pa)) {
                let _ = self.listed.set(index, mem.db.regions().pages(), false);
            }
        }
    }

    /// Whether the index of listed pages says exactly what the lists say (for the tests).
    #[cfg(test)]
    pub fn index_agrees(&self, mem: &HostMemory) -> bool {
        let regions = mem.db.regions();
        let mut listed = alloc::collections::BTreeSet::new();
        for pfn in self.infos.iter().flat_map(|i| &i.load).flat_map(|l| &l.pfns) {
            listed.insert(regions.page_index(*pfn << 12).expect("a listed page is RAM"));
        }
        let bits: usize = self.listed.0.iter().map(|w| w.count_ones() as usize).sum();
        bits == listed.len() && listed.iter().all(|&i| self.listed.get(i))
    }

    /// `set_boot_info`: an image of `size` bytes goes at guest address `gpa`. Returns its index.
    /// The VM's images may fill at most [`MAX_IMAGE_BYTES`] together; the image's page list is
    /// allocated here, whole, so that listing its pages never allocates.
    pub fn set_boot_info(&mut self, vmid: u16, gpa: u64, size: u64) -> Result<usize, BootError> {
        let info = self.ready(vmid)?;
        let pages = image_pages(size);
        let listed_before: u64 = info.load.iter().map(LoadInfo::pages).sum();
        // Within the cap, the byte count cannot overflow.
        let end = (listed_before + pages <= MAX_IMAGE_PAGES).then(|| gpa.checked_add(pages * PAGE_SIZE)).flatten();
        let Some(end) = end else { return Err(BootError::BadRange) };
        let overlaps = info.load.iter().any(|l| gpa < l.gpa + l.pages() * PAGE_SIZE && l.gpa < end);
        if info.load.len() >= MAX_LOAD_INFO
            || !gpa.is_multiple_of(PAGE_SIZE)
            || size == 0
            || end > INPUT_LIMIT
            || overlaps
        {
            return Err(BootError::BadRange);
        }
        let mut pfns = Vec::new();
        pfns.try_reserve_exact(pages as usize).map_err(|_| BootError::NoRoom)?;
        info.load.push(LoadInfo { gpa, size, pfns });
        Ok(info.load.len() - 1)
    }

    /// `remap_vm_image`: the next page of image `index` is host page `pfn`. The page stays the
    /// host's until verification takes it.
    /// A page number beyond the physical address size is refused (`MemError::BadPfn`) before
    /// anything looks it up, so that every page has exactly one number.
    pub fn remap_vm_image(&mut self, mem: &HostMemory, vmid: u16, pfn: u64, index: usize) -> Result<(), BootError> {
        let info = self.ready(vmid)?;
        let load = info.load.get(index).ok_or(BootError::BadImage)?;
        if load.pfns.len() as u64 >= load.pages() {
            return Err(BootError::BadImage);
        }
        let pa = if crate::mutation::planted(crate::mutation::Mutation::RemapTakesAnyPfn) {
            pfn << 12
        } else {
            checked_pa(pfn).map_err(BootError::Mem)?
        };
        let host_page = mem.db.get(pa).is_some_and(|p| p.owner == Owner::Host && p.count == 0);
        let page_index = mem.db.regions().page_index(pa);
        let listed = page_index.is_some_and(|i| self.listed.get(i));
        if listed || !host_page {
            return Err(BootError::BadPage);
        }
        let page_index = page_index.ok_or(BootError::BadPage)?;
        self.listed.set(page_index, mem.db.regions().pages(), true)?;
        // Within the capacity reserved by SET_BOOT_INFO: no allocation.
        self.ready(vmid)?.load[index].pfns.push(pfn);
        Ok(())
    }

    /// `verify_and_load_images`: takes every image page from the host into the VM, then checks
    /// each image's signature with `key`. On success the VM is VERIFIED; on a bad signature (or a
    /// page the host no longer owns) it is REJECTED for good.
    pub fn verify_vm_image(
        &mut self,
        m: &impl Machine,
        mem: &mut HostMemory,
        vm_s2: &mut PageTable,
        vmid: u16,
        key: &VerifyingKey,
    ) -> Result<(), BootError> {
        let info = self.ready(vmid)?;
        if info.load.is_empty() || info.load.iter().any(|l| l.pfns.len() as u64 != l.pages()) {
            return Err(BootError::BadImage);
        }
        let load = info.load.clone();
        let mut verdict = Ok(());
        'images: for image in &load {
            for (i, &pfn) in image.pfns.iter().enumerate() {
                let gfn = (image.gpa >> 12) + i as u64;
                if let Err(e) = mem.prot_and_map_vm_s2pt(m, vm_s2, vmid, gfn, pfn, 3) {
                    verdict = Err(BootError::Mem(e));
                    break 'images;
                }
            }
            if !signature_matches(m, image, key) {
                verdict = Err(BootError::Rejected);
                break;
            }
        }
        let info = self.ready(vmid)?;
        info.state = if verdict.is_ok() { VmState::Verified } else { VmState::Rejected };
        verdict
    }
}

/// Reads image bytes `[offset, offset + len)` across its pages into `sink`.
fn read_image(m: &impl Machine, image: &LoadInfo, offset: u64, len: u64, sink: &mut impl FnMut(&[u8])) {
    let mut pos = offset;
    while pos < offset + len {
        let pa = (image.pfns[(pos / PAGE_SIZE) as usize] << 12) + ((pos % PAGE_SIZE) & !7);
        let word = m.read_u64(pa).to_le_bytes();
        let start = (pos % 8) as usize;
        let take = (8 - start).min((offset + len - pos) as usize);
        sink(&word[start..start + take]);
        pos += take as u64;
    }
}

/// The message an image's signature covers: `IMAGE_DOMAIN ‖ SHA-512(image)`.
pub fn image_message(digest: &[u8; 64]) -> [u8; IMAGE_DOMAIN.len() + 64] {
    let mut message = [0u8; IMAGE_DOMAIN.len() + 64];
    message[..IMAGE_DOMAIN.len()].copy_from_slice(IMAGE_DOMAIN);
    message[IMAGE_DOMAIN.len()..].copy_from_slice(digest);
    message
}

/// Whether the signature after the image matches the image (the machine-level `verify_image`).
fn signature_matches(m: &impl Machine, image: &LoadInfo, key: &VerifyingKey) -> bool {
    let mut hasher = Sha512::new();
    let hashed = image.size - crate::mutation::planted(crate::mutation::Mutation::VerifyIgnoresLastByte) as u64;
    read_image(m, image, 0, hashed, &mut |bytes| hasher.update(bytes));
    let digest: [u8; 64] = hasher.finalize().into();
    let mut signature = [0u8; 64];
    let mut filled = 0;
    read_image(m, image, image.size, SIGNATURE_LEN, &mut |bytes| {
        signature[filled..filled + bytes.len()].copy_from_slice(bytes);
        filled += bytes.len();
    });
    key.verify_strict(&image_message(&digest), &Signature::from_bytes(&signature)).is_ok()
}

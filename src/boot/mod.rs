//! Boot (SeKVM layers 18-21): VM power state (VMPower), vmid allocation (BootCore), and VM and
//! vCPU registration with boot-image verification (BootAux, BootOps).
//!
//! A VM's life: REGISTER_VM gives a vmid (READY); REGISTER_VCPU adds vCPUs; SET_BOOT_INFO
//! declares where each image goes in the guest's address space and how long it is;
//! REMAP_VM_IMAGE lists, page by page, the host pages that hold it (the image followed by its
//! 64-byte signature); VERIFY_VM_IMAGE takes every listed page from the host (unmapping it there,
//! so the host cannot change it afterwards), maps it for the VM, and hashes what the VM will run,
//! a bounded number of pages per call (VERIFYING in between); after the last page it checks every
//! image's signature. Only then is the VM VERIFIED, the one state in which its vCPUs may run. A
//! failed check leaves it REJECTED for good; its pages come back to the host only through
//! teardown, scrubbed.
//!
//! Each image's signature is Ed25519 over `corevisor_abi::bundle::image_message`: the VM's RAM
//! window, its number of images, the image's index (0 is the entry) and every image's load
//! address, size and SHA-512. So the host can neither move a signed image, nor make another image
//! the entry, nor mix images signed for different layouts. Hashing page by page lets KCore check
//! images larger than its heap. A whole older layout, correctly signed, still verifies: refusing
//! rollback needs a counter in storage the host cannot reset, which corevisor does not have.

#[cfg(test)]
pub mod spec;
#[cfg(test)]
mod tests;

/// Signing for the tests: what xtask does for the bundle.
#[cfg(test)]
pub mod testing {
    use corevisor_abi::bundle::{image_message, ImageRecord};
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::{Digest, Sha512};

    /// Each image of a VM with RAM `[ram_base, ram_base + ram_size)` and `images` (load address,
    /// bytes), followed by its signature over the whole layout: the bytes the host lays out.
    pub fn sign_layout(key: &SigningKey, ram_base: u64, ram_size: u64, images: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        let records: Vec<ImageRecord> = images
            .iter()
            .map(|&(gpa, bytes)| ImageRecord { gpa, size: bytes.len() as u64, sha512: Sha512::digest(bytes).into() })
            .collect();
        images
            .iter()
            .enumerate()
            .map(|(i, &(_, bytes))| {
                let message = image_message(ram_base, ram_size, &records, i).unwrap();
                [bytes, &key.sign(message.as_bytes()).to_bytes()[..]].concat()
            })
            .collect()
    }
}

use crate::machine::{Machine, PAGE_SIZE};
use crate::memory::pages::Owner;
use crate::memory::{checked_pa, HostMemory, MemError};
use crate::page_table::descriptor::INPUT_LIMIT;
use crate::page_table::PageTable;
use alloc::boxed::Box;
use alloc::vec::Vec;
use corevisor_abi::bundle::{image_message, ImageRecord};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

pub use crate::ids::{MAX_VCPUS, MAX_VMS};
/// Images per VM (SeKVM: 5; the bundle and the signed message agree).
pub const MAX_LOAD_INFO: usize = corevisor_abi::bundle::MAX_IMAGES;
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
/// Pages one VERIFY_VM_IMAGE call takes and hashes at most (KCore's lock is held meanwhile).
pub const VERIFY_CHUNK_PAGES: u64 = corevisor_abi::host_call::VERIFY_CHUNK_PAGES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Unused,
    /// Registered; boot information and images may be given.
    Ready,
    /// VERIFY_VM_IMAGE has begun taking and hashing the image pages: the images are fixed.
    Verifying,
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
    /// Image pages VERIFY_VM_IMAGE has taken and hashed so far, counted over the images in order.
    pub checked: u64,
    /// The hashes of what has been taken (derived from those pages).
    pub hashing: HashState,
}

impl VmInfo {
    const UNUSED: VmInfo = VmInfo {
        state: VmState::Unused,
        vcpus: [VcpuState::Unused; MAX_VCPUS],
        load: Vec::new(),
        checked: 0,
        hashing: HashState(None),
    };

    /// Every page of every image: (image index, page index in the image, host pfn), in order.
    fn image_pages(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        self.load
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.pfns.iter().enumerate().map(move |(p, &pfn)| (i, p as u64, pfn)))
    }
}

/// A verification in progress: the running SHA-512 of the image being hashed and the digests of
/// those done. It is a function of the pages already taken (the VM's now, so nobody can change
/// them): equality ignores it, as the spec hashes those pages in one step at the end.
#[derive(Clone, Debug, Default)]
pub struct HashState(Option<Box<Hashing>>);

impl PartialEq for HashState {
    fn eq(&self, _: &HashState) -> bool {
        true
    }
}
impl Eq for HashState {}

#[derive(Clone, Debug)]
struct Hashing {
    current: Sha512,
    digests: [[u8; 64]; MAX_LOAD_INFO],
}

/// What a VM's images are checked against: the key, and the VM's RAM window (part of the signed
/// message).
#[derive(Clone, Copy, Debug)]
pub struct Verifier<'a> {
    pub key: &'a VerifyingKey,
    pub ram_base: u64,
    pub ram_size: u64,
    /// Pages per call: [`VERIFY_CHUNK_PAGES`] (the tests use fewer, to cross chunk boundaries).
    pub chunk_pages: u64,
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

    /// `verify_and_load_images`, in chunks: takes the next (up to `chunk_pages`) image pages
    /// from the host into the VM and hashes them; returns how many pages are still to check. The
    /// first call needs a READY VM with every image complete and makes it VERIFYING; the call
    /// that takes the last page checks every image's signature over the VM's layout and makes the
    /// VM VERIFIED (returning 0), or REJECTED for good on a bad signature (`Rejected`) or a page
    /// the host no longer owns.
    pub fn verify_vm_image(
        &mut self,
        m: &impl Machine,
        mem: &mut HostMemory,
        vm_s2: &mut PageTable,
        vmid: u16,
        verifier: &Verifier,
    ) -> Result<u64, BootError> {
        let info = self.get_mut(vmid)?;
        match info.state {
            VmState::Ready => {
                if info.load.is_empty() || info.load.iter().any(|l| l.pfns.len() as u64 != l.pages()) {
                    return Err(BootError::BadImage);
                }
                info.state = VmState::Verifying;
                info.checked = 0;
                info.hashing =
                    HashState(Some(Box::new(Hashing { current: Sha512::new(), digests: [[0; 64]; MAX_LOAD_INFO] })));
            }
            VmState::Verifying => {}
            other => return Err(BootError::State(other)),
        }
        let total: u64 = info.load.iter().map(LoadInfo::pages).sum();
        let pages: Vec<_> =
            info.image_pages().skip(info.checked as usize).take(verifier.chunk_pages as usize).collect();
        let mut hashing = info.hashing.0.take().ok_or(BootError::State(VmState::Verifying))?;
        for (image, page, pfn) in pages {
            let load = &info.load[image];
            let gfn = (load.gpa >> 12) + page;
            if let Err(e) = mem.prot_and_map_vm_s2pt(m, vm_s2, vmid, gfn, pfn, 3) {
                info.state = VmState::Rejected;
                return Err(BootError::Mem(e));
            }
            info.checked += 1;
            // The image's bytes in this page (the signature is not hashed).
            let start = page * PAGE_SIZE;
            let mut hashed = load.size.saturating_sub(start).min(PAGE_SIZE);
            if crate::mutation::planted(crate::mutation::Mutation::VerifyIgnoresLastByte)
                && hashed > 0
                && start + hashed == load.size
            {
                hashed -= 1;
            }
            read_image(m, load, start, hashed, &mut |bytes| hashing.current.update(bytes));
            if page + 1 == load.pages() {
                hashing.digests[image] = core::mem::take(&mut hashing.current).finalize().into();
            }
        }
        if info.checked < total {
            info.hashing = HashState(Some(hashing));
            return Ok(total - info.checked);
        }
        let records: Vec<ImageRecord> = info
            .load
            .iter()
            .zip(hashing.digests)
            .map(|(l, sha512)| ImageRecord { gpa: l.gpa, size: l.size, sha512 })
            .collect();
        let good = info.load.iter().enumerate().all(|(i, image)| signature_matches(m, image, &records, i, verifier));
        info.state = if good { VmState::Verified } else { VmState::Rejected };
        if good {
            Ok(0)
        } else {
            Err(BootError::Rejected)
        }
    }

    /// Teardown began while the VM was VERIFYING: pages it had taken go back to the host, so the
    /// verification can never finish honestly. The VM is REJECTED.
    pub fn abandon_verification(&mut self, vmid: u16) {
        if let Ok(info) = self.get_mut(vmid) {
            if info.state == VmState::Verifying {
                info.state = VmState::Rejected;
                info.hashing = HashState(None);
            }
        }
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

/// Whether the signature after image `index` matches the VM's layout (the machine-level
/// `verify_image`).
fn signature_matches(m: &impl Machine, image: &LoadInfo, records: &[ImageRecord], index: usize, v: &Verifier) -> bool {
    let mut signature = [0u8; 64];
    let mut filled = 0;
    read_image(m, image, image.size, SIGNATURE_LEN, &mut |bytes| {
        signature[filled..filled + bytes.len()].copy_from_slice(bytes);
        filled += bytes.len();
    });
    // The planted bug: the old message, which bound the image alone.
    let message = if crate::mutation::planted(crate::mutation::Mutation::SignatureOverImageOnly) {
        image_message(v.ram_base, v.ram_size, &records[index..=index], 0)
    } else {
        image_message(v.ram_base, v.ram_size, records, index)
    };
    message.is_some_and(|msg| v.key.verify_strict(msg.as_bytes(), &Signature::from_bytes(&signature)).is_ok())
}

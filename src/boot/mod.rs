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
//! address, size and SHA-256. So the host can neither move a signed image, nor make another image
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
    use sha2::{Digest, Sha256};

    /// Each image of a VM with RAM `[ram_base, ram_base + ram_size)` and `images` (load address,
    /// bytes), followed by its signature over the whole layout: the bytes the host lays out.
    pub fn sign_layout(key: &SigningKey, ram_base: u64, ram_size: u64, images: &[(u64, &[u8])]) -> Vec<Vec<u8>> {
        let records: Vec<ImageRecord> = images
            .iter()
            .map(|&(gpa, bytes)| ImageRecord { gpa, size: bytes.len() as u64, sha256: Sha256::digest(bytes).into() })
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

use crate::addr::{Ipa, IpaRange, Pfn, PAGE_SIZE};
use crate::ids::{VcpuId, VmId};
use crate::machine::sha256::Sha256;
use crate::machine::Machine;
use crate::memory::pages::Owner;
use crate::memory::{HostMemory, MemError};
use crate::page_table::descriptor::INPUT_LIMIT;
use crate::page_table::PageTable;
use alloc::boxed::Box;
use alloc::vec::Vec;
use corevisor_abi::bundle::{image_message, ImageRecord};
use ed25519_dalek::{Signature, VerifyingKey};

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
/// The most boot-data pages (BOOT_DATA) a VM may be given: 64 KiB, ample for a guest's device
/// tree (a few KiB).
pub const MAX_BOOT_DATA_PAGES: u64 = 16;
/// [`MAX_IMAGE_BYTES`] in pages.
pub const MAX_IMAGE_PAGES: u64 = MAX_IMAGE_BYTES / PAGE_SIZE;
pub const SIGNATURE_LEN: u64 = corevisor_abi::bundle::SIGNATURE_LEN as u64;
/// Pages one VERIFY_VM_IMAGE call takes and hashes at most (the VM's and the ownership lock are held meanwhile).
pub const VERIFY_CHUNK_PAGES: u64 = corevisor_abi::host_call::VERIFY_CHUNK_PAGES;

/// A registered VM's state (an unregistered or destroyed one has no record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
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

/// A vCPU of a VM: not registered, idle with its saved context, or running on a core (which
/// holds the context meanwhile). So "running" is stated once. Generic over the context, which
/// the vCPU layer above defines (the VM layer keeps a `Box<VcpuContext>` here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vcpu<C> {
    Unused,
    Idle(C),
    Running,
}

/// The boot data a VM was given (BOOT_DATA): `pages` pages from guest address `base` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootData {
    pub base: Ipa,
    pub pages: u64,
}

/// One image: where it goes in the guest, its length, and the host pages listed so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadInfo {
    pub gpa: Ipa,
    pub size: u64,
    pub pfns: Vec<Pfn>,
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
/// table. Derived from the VMs' page lists; the boot tests check it against the lists after every
/// step.
#[derive(Clone, Debug, Default)]
struct ListedIndex(Vec<u64>);

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

/// One VM: everything KCore keeps for it (SeKVM's `vminfos` entry, its NPT and its vCPUs'
/// contexts in one record). The boot layers own its state, images and vCPU run states; the VM
/// layer its stage-2 table, counter offset and the contexts inside [`Vcpu::Idle`].
pub struct Vm<C> {
    pub state: VmState,
    /// Guest-physical RAM: part of the message each image's signature covers.
    pub ram: IpaRange,
    /// The VM's stage-2 table (with its own page-table pool, a slice of KCore's).
    pub s2: PageTable,
    /// The virtual counter's offset (TIMER_SET_CNTVOFF).
    pub cntvoff: u64,
    /// The guest address of the VM's PL011 page, whose transmit side KCore serves (VM_CONSOLE).
    pub console: Option<Ipa>,
    pub vcpus: [Vcpu<C>; MAX_VCPUS],
    pub load: Vec<LoadInfo>,
    /// Image pages VERIFY_VM_IMAGE has taken and hashed so far, counted over the images in order.
    pub checked: u64,
    /// The unsigned boot data (a device tree) the host gave the VM before its first run; vCPU 0
    /// starts with x0 = its base.
    pub boot_data: Option<BootData>,
    /// Whether a vCPU of the VM has run: from then on the VM takes no more boot data.
    pub entered: bool,
    /// The hashes of what has been taken, while VERIFYING (a function of those pages, which are
    /// the VM's now: the spec hashes them in one step at the end).
    hashing: Option<Box<Hashing>>,
}

impl<C> Vm<C> {
    /// Every page of every image: (image index, page index in the image, host page), in order.
    fn image_pages(&self) -> impl Iterator<Item = (usize, u64, Pfn)> + '_ {
        self.load
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.pfns.iter().enumerate().map(move |(p, &pfn)| (i, p as u64, pfn)))
    }

    /// Whether a vCPU of the VM is running on some core.
    pub fn any_running(&self) -> bool {
        self.vcpus.iter().any(|v| matches!(v, Vcpu::Running))
    }
}

/// A verification in progress: the running SHA-256 of the image being hashed and the digests of
/// those done.
#[derive(Clone, Debug)]
struct Hashing {
    current: Sha256,
    digests: [[u8; 32]; MAX_LOAD_INFO],
}

/// What a VM's images are checked against (with the VM's RAM window, from its record).
#[derive(Clone, Copy, Debug)]
pub struct Verifier<'a> {
    pub key: &'a VerifyingKey,
    /// Pages per call: [`VERIFY_CHUNK_PAGES`] (the tests use fewer, to cross chunk boundaries).
    pub chunk_pages: u64,
}

/// Why a boot operation was refused. Nothing changed, except where noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// Every vmid is taken.
    NoVmid,
    /// No such VM (never registered, or destroyed).
    NoVm,
    /// The VM is not in the state the operation needs.
    State(VmState),
    /// The vCPU is not in the state the operation needs.
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
    /// A vCPU of the VM has run already (boot data comes before the first run).
    Started,
}

/// What SeKVM keeps under its `core` lock for the boot layers (`core_data`): the next vmid, and
/// the index of pages listed in any VM's images (derived from the VMs' page lists, so that
/// "listed already" costs one lookup instead of a scan of every VM's lists).
pub struct BootCore {
    pub next_vmid: u16,
    listed: ListedIndex,
}

impl Default for BootCore {
    fn default() -> Self {
        Self::new()
    }
}

impl BootCore {
    pub fn new() -> BootCore {
        BootCore { next_vmid: 1, listed: ListedIndex::default() }
    }

    /// BootCore `gen_vmid`, first half: the vmid the next REGISTER_VM gets. Vmids are not reused.
    pub fn free_vmid(&self) -> Result<VmId, BootError> {
        VmId::new(self.next_vmid.into()).ok_or(BootError::NoVmid)
    }

    /// `gen_vmid`, second half: `vm` (the [`BootCore::free_vmid`]) is taken.
    pub fn take_vmid(&mut self, vm: VmId) {
        self.next_vmid = vm.vmid() + 1;
    }

    /// Whether host page `pfn` is listed in some VM's image.
    pub fn listed(&self, mem: &HostMemory, pfn: Pfn) -> bool {
        mem.db.regions().page_index(pfn.pa().raw()).is_some_and(|i| self.listed.get(i))
    }

    /// After teardown (every page of the VM is the host's again): VM `rec`'s image pages are no
    /// longer listed, so they may be listed for another VM.
    pub fn unlist<C>(&mut self, mem: &HostMemory, rec: &Vm<C>) {
        for pfn in rec.load.iter().flat_map(|l| &l.pfns) {
            if let Some(index) = mem.db.regions().page_index(pfn.pa().raw()) {
                let _ = self.listed.set(index, mem.db.regions().pages(), false);
            }
        }
    }

    /// Whether the index of listed pages says exactly what `recs`' lists say (for the tests).
    #[cfg(test)]
    pub fn index_agrees<'a, C: 'a>(&self, mem: &HostMemory, recs: impl Iterator<Item = &'a Vm<C>>) -> bool {
        let regions = mem.db.regions();
        let mut listed = alloc::collections::BTreeSet::new();
        for pfn in recs.flat_map(|rec| &rec.load).flat_map(|l| &l.pfns) {
            listed.insert(regions.page_index(pfn.pa().raw()).expect("a listed page is RAM"));
        }
        let bits: usize = self.listed.0.iter().map(|w| w.count_ones() as usize).sum();
        bits == listed.len() && listed.iter().all(|&i| self.listed.get(i))
    }
}

/// Each VM's operations (SeKVM's BootOps and VMPower on one `vminfos` entry), on its record
/// alone: the caller holds the VM's lock, and `core`'s where one takes a [`BootCore`].
impl<C> Vm<C> {
    /// BootOps `register_kvm`: VM record READY with RAM `ram` and stage-2 table `s2`.
    pub fn new(ram: IpaRange, s2: PageTable) -> Vm<C> {
        Vm {
            state: VmState::Ready,
            ram,
            s2,
            cntvoff: 0,
            console: None,
            vcpus: core::array::from_fn(|_| Vcpu::Unused),
            load: Vec::new(),
            checked: 0,
            boot_data: None,
            entered: false,
            hashing: None,
        }
    }

    fn ready(&mut self) -> Result<&mut Vm<C>, BootError> {
        match self.state {
            VmState::Ready => Ok(self),
            other => Err(BootError::State(other)),
        }
    }

    /// VMPower `set_vm_poweroff`. A vCPU running now finishes its run.
    pub fn power_off(&mut self) -> Result<(), BootError> {
        match self.state {
            VmState::Verified => {
                self.state = VmState::PoweredOff;
                Ok(())
            }
            other => Err(BootError::State(other)),
        }
    }

    /// `register_vcpu`: the VM must be READY and the vCPU unused (the verified spec's `&&`); it
    /// starts idle with the context `new_ctx` makes.
    pub fn register_vcpu(&mut self, vcpu: VcpuId, new_ctx: impl FnOnce() -> C) -> Result<(), BootError> {
        match &mut self.ready()?.vcpus[vcpu.index()] {
            v @ Vcpu::Unused => {
                *v = Vcpu::Idle(new_ctx());
                Ok(())
            }
            _ => Err(BootError::Vcpu),
        }
    }

    /// `set_vcpu_active`: an idle vCPU of a VERIFIED VM starts running; its context goes to the
    /// core that runs it. [`Vm::set_vcpu_inactive`] takes it back.
    pub fn set_vcpu_active(&mut self, vcpu: VcpuId) -> Result<C, BootError> {
        if self.state != VmState::Verified {
            return Err(BootError::State(self.state));
        }
        let slot = &mut self.vcpus[vcpu.index()];
        match core::mem::replace(slot, Vcpu::Running) {
            Vcpu::Idle(ctx) => {
                self.entered = true;
                Ok(ctx)
            }
            other => {
                *slot = other;
                Err(BootError::Vcpu)
            }
        }
    }

    pub fn set_vcpu_inactive(&mut self, vcpu: VcpuId, ctx: C) {
        if let v @ Vcpu::Running = &mut self.vcpus[vcpu.index()] {
            *v = Vcpu::Idle(ctx);
        }
    }

    /// `set_boot_info`: an image of `size` bytes goes at guest address `gpa`. Returns its index.
    /// The VM's images may fill at most [`MAX_IMAGE_BYTES`] together; the image's page list is
    /// allocated here, whole, so that listing its pages never allocates.
    pub fn set_boot_info(&mut self, gpa: Ipa, size: u64) -> Result<usize, BootError> {
        let rec = self.ready()?;
        let pages = image_pages(size);
        let listed_before: u64 = rec.load.iter().map(LoadInfo::pages).sum();
        // Within the cap, the byte count cannot overflow.
        let end =
            (listed_before + pages <= MAX_IMAGE_PAGES).then(|| gpa.raw().checked_add(pages * PAGE_SIZE)).flatten();
        let Some(end) = end else { return Err(BootError::BadRange) };
        let overlaps = rec.load.iter().any(|l| gpa.raw() < l.gpa.raw() + l.pages() * PAGE_SIZE && l.gpa.raw() < end);
        if rec.load.len() >= MAX_LOAD_INFO || !gpa.is_page_aligned() || size == 0 || end > INPUT_LIMIT || overlaps {
            return Err(BootError::BadRange);
        }
        let mut pfns = Vec::new();
        pfns.try_reserve_exact(pages as usize).map_err(|_| BootError::NoRoom)?;
        rec.load.push(LoadInfo { gpa, size, pfns });
        Ok(rec.load.len() - 1)
    }

    /// `remap_vm_image`: the next page of image `index` is host page `pfn`, listed in `core`'s
    /// index (a page listed for any VM is refused). The page stays the host's until
    /// verification takes it.
    pub fn remap_vm_image(
        &mut self,
        core: &mut BootCore,
        mem: &HostMemory,
        pfn: Pfn,
        index: usize,
    ) -> Result<(), BootError> {
        let rec = self.ready()?;
        let load = rec.load.get_mut(index).ok_or(BootError::BadImage)?;
        if load.pfns.len() as u64 >= load.pages() {
            return Err(BootError::BadImage);
        }
        let pa = pfn.pa().raw();
        let host_page = mem.db.get(pa).is_some_and(|p| p.owner == Owner::Host && p.count == 0);
        let page_index = mem.db.regions().page_index(pa);
        let listed = page_index.is_some_and(|i| core.listed.get(i));
        if listed || !host_page {
            return Err(BootError::BadPage);
        }
        let page_index = page_index.ok_or(BootError::BadPage)?;
        core.listed.set(page_index, mem.db.regions().pages(), true)?;
        // Within the capacity reserved by SET_BOOT_INFO: no allocation.
        load.pfns.push(pfn);
        Ok(())
    }

    /// `verify_and_load_images`, in chunks: takes the next (up to `chunk_pages`) image pages
    /// from the host into the VM's stage-2 and hashes them; returns how many pages are still to
    /// check. The first call needs a READY VM with every image complete and makes it VERIFYING;
    /// the call that takes the last page checks every image's signature over the VM's layout and
    /// makes the VM VERIFIED (returning 0), or REJECTED for good on a bad signature (`Rejected`)
    /// or a page the host no longer owns.
    pub fn verify_vm_image(
        &mut self,
        m: &impl Machine,
        mem: &mut HostMemory,
        vm: VmId,
        verifier: &Verifier,
    ) -> Result<u64, BootError> {
        let rec = self;
        match rec.state {
            VmState::Ready => {
                if rec.load.is_empty() || rec.load.iter().any(|l| l.pfns.len() as u64 != l.pages()) {
                    return Err(BootError::BadImage);
                }
                rec.state = VmState::Verifying;
                rec.checked = 0;
                rec.hashing = Some(Box::new(Hashing { current: Sha256::default(), digests: [[0; 32]; MAX_LOAD_INFO] }));
            }
            VmState::Verifying => {}
            other => return Err(BootError::State(other)),
        }
        let total: u64 = rec.load.iter().map(LoadInfo::pages).sum();
        let pages: Vec<_> = rec.image_pages().skip(rec.checked as usize).take(verifier.chunk_pages as usize).collect();
        let mut hashing = rec.hashing.take().ok_or(BootError::State(VmState::Verifying))?;
        for (image, page, pfn) in pages {
            let load = &rec.load[image];
            let gfn = load.gpa.gfn().raw() + page;
            if let Err(e) = mem.prot_and_map_vm_s2pt(m, &mut rec.s2, vm.vmid(), gfn, pfn.raw(), 3) {
                rec.state = VmState::Rejected;
                return Err(BootError::Mem(e));
            }
            rec.checked += 1;
            // The image's bytes in this page (the signature is not hashed).
            let start = page * PAGE_SIZE;
            let mut hashed = load.size.saturating_sub(start).min(PAGE_SIZE);
            if crate::mutation::planted(crate::mutation::Mutation::VerifyIgnoresLastByte)
                && hashed > 0
                && start + hashed == load.size
            {
                hashed -= 1;
            }
            hashing.current.update_memory(m, pfn.pa().raw(), hashed);
            if page + 1 == load.pages() {
                hashing.digests[image] = core::mem::take(&mut hashing.current).finalize(m);
            }
        }
        if rec.checked < total {
            rec.hashing = Some(hashing);
            return Ok(total - rec.checked);
        }
        let records: Vec<ImageRecord> = rec
            .load
            .iter()
            .zip(hashing.digests)
            .map(|(l, sha256)| ImageRecord { gpa: l.gpa.raw(), size: l.size, sha256 })
            .collect();
        let good =
            rec.load.iter().enumerate().all(|(i, image)| signature_matches(m, image, &records, i, rec.ram, verifier));
        rec.state = if good { VmState::Verified } else { VmState::Rejected };
        if good {
            Ok(0)
        } else {
            Err(BootError::Rejected)
        }
    }

    /// `load_boot_data` (BOOT_DATA): the host's page `pfn` becomes the VM's boot-data page at
    /// `gpa`, its contents kept (not scrubbed: they are the host's data, a device tree, which the
    /// VM takes unsigned). The host loses the page at once (unmapped, cleaned to DRAM, the VM's),
    /// so the host never maps a page the VM owns. Only a VERIFIED VM none of whose vCPUs has run
    /// takes boot data: whatever it is, the VM finds it there at its first instruction, never
    /// later. The pages follow each other from the first one's address, inside the VM's RAM and
    /// outside its images, at most [`MAX_BOOT_DATA_PAGES`]; a page listed in an image (any VM's,
    /// `core`'s index) is refused.
    pub fn load_boot_data(
        &mut self,
        core: &BootCore,
        m: &impl Machine,
        mem: &mut HostMemory,
        vm: VmId,
        gpa: Ipa,
        pfn: Pfn,
    ) -> Result<(), BootError> {
        let listed = core.listed(mem, pfn);
        let rec = self;
        if rec.state != VmState::Verified {
            return Err(BootError::State(rec.state));
        }
        if rec.entered && !crate::mutation::planted(crate::mutation::Mutation::BootDataAfterFirstRun) {
            return Err(BootError::Started);
        }
        let (base, pages) = rec.boot_data.map_or((gpa, 0), |d| (d.base, d.pages));
        let in_image =
            rec.load.iter().any(|l| l.gpa.raw() <= gpa.raw() && gpa.raw() - l.gpa.raw() < l.pages() * PAGE_SIZE);
        if !gpa.is_page_aligned()
            || gpa.raw() != base.raw() + pages * PAGE_SIZE
            || pages >= MAX_BOOT_DATA_PAGES
            || !rec.ram.contains(gpa.raw())
            || in_image
        {
            return Err(BootError::BadRange);
        }
        if listed {
            return Err(BootError::BadPage);
        }
        mem.prot_and_map_vm_s2pt(m, &mut rec.s2, vm.vmid(), gpa.gfn().raw(), pfn.raw(), 3).map_err(BootError::Mem)?;
        rec.boot_data = Some(BootData { base, pages: pages + 1 });
        Ok(())
    }

    /// Teardown began while the VM was VERIFYING: pages it had taken go back to the host, so the
    /// verification can never finish honestly. The VM is REJECTED.
    pub fn abandon_verification(&mut self) {
        if self.state == VmState::Verifying {
            self.state = VmState::Rejected;
            self.hashing = None;
        }
    }
}

/// Every VM in one place, with [`BootCore`] (SeKVM `vminfos` and `core_data`): the boot layers
/// as one serial object, for their tests and spec. KCore keeps each record under its own lock
/// instead (`vm::Kcore`); the operations are the records' and `BootCore`'s either way.
#[cfg(test)]
pub struct Vms<C> {
    pub core: BootCore,
    vms: Vec<Option<Vm<C>>>,
}

#[cfg(test)]
impl<C> Default for Vms<C> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
impl<C> Vms<C> {
    pub fn new() -> Vms<C> {
        Vms { core: BootCore::new(), vms: (0..MAX_VMS).map(|_| None).collect() }
    }

    /// VM `vm`'s record, if it is registered.
    pub fn get(&self, vm: VmId) -> Option<&Vm<C>> {
        self.vms.get(vm.index())?.as_ref()
    }

    pub fn get_mut(&mut self, vm: VmId) -> Option<&mut Vm<C>> {
        self.vms.get_mut(vm.index())?.as_mut()
    }

    /// Every registered VM, by id.
    pub fn iter(&self) -> impl Iterator<Item = (VmId, &Vm<C>)> {
        VmId::all().zip(&self.vms).filter_map(|(vm, rec)| Some((vm, rec.as_ref()?)))
    }

    fn live(&mut self, vm: VmId) -> Result<&mut Vm<C>, BootError> {
        self.get_mut(vm).ok_or(BootError::NoVm)
    }

    /// VMPower `get_vm_poweron`: may the VM's vCPUs run?
    pub fn may_run(&self, vm: VmId) -> bool {
        self.get(vm).is_some_and(|rec| rec.state == VmState::Verified)
    }

    pub fn power_off(&mut self, vm: VmId) -> Result<(), BootError> {
        self.live(vm)?.power_off()
    }

    /// BootCore `gen_vmid` and BootOps `register_kvm`, with the stage-2 table `new_s2` makes.
    pub fn register_vm(
        &mut self,
        ram: IpaRange,
        new_s2: impl FnOnce(VmId) -> Result<PageTable, MemError>,
    ) -> Result<VmId, BootError> {
        let vm = self.core.free_vmid()?;
        let s2 = new_s2(vm).map_err(BootError::Mem)?;
        self.core.take_vmid(vm);
        self.vms[vm.index()] = Some(Vm::new(ram, s2));
        Ok(vm)
    }

    pub fn register_vcpu(&mut self, vm: VmId, vcpu: VcpuId, new_ctx: impl FnOnce() -> C) -> Result<(), BootError> {
        self.live(vm)?.register_vcpu(vcpu, new_ctx)
    }

    pub fn set_vcpu_active(&mut self, vm: VmId, vcpu: VcpuId) -> Result<C, BootError> {
        self.live(vm)?.set_vcpu_active(vcpu)
    }

    pub fn set_vcpu_inactive(&mut self, vm: VmId, vcpu: VcpuId, ctx: C) {
        if let Some(rec) = self.get_mut(vm) {
            rec.set_vcpu_inactive(vcpu, ctx);
        }
    }

    /// After teardown: the VM's record goes, and its image pages are no longer listed.
    pub fn remove(&mut self, mem: &HostMemory, vm: VmId) -> Option<Vm<C>> {
        let rec = self.vms.get_mut(vm.index())?.take()?;
        self.core.unlist(mem, &rec);
        Some(rec)
    }

    /// Whether the index of listed pages says exactly what the lists say.
    pub fn index_agrees(&self, mem: &HostMemory) -> bool {
        self.core.index_agrees(mem, self.iter().map(|(_, rec)| rec))
    }

    pub fn set_boot_info(&mut self, vm: VmId, gpa: Ipa, size: u64) -> Result<usize, BootError> {
        self.live(vm)?.set_boot_info(gpa, size)
    }

    pub fn remap_vm_image(&mut self, mem: &HostMemory, vm: VmId, pfn: Pfn, index: usize) -> Result<(), BootError> {
        let rec = self.vms.get_mut(vm.index()).and_then(Option::as_mut).ok_or(BootError::NoVm)?;
        rec.remap_vm_image(&mut self.core, mem, pfn, index)
    }

    pub fn verify_vm_image(
        &mut self,
        m: &impl Machine,
        mem: &mut HostMemory,
        vm: VmId,
        verifier: &Verifier,
    ) -> Result<u64, BootError> {
        self.live(vm)?.verify_vm_image(m, mem, vm, verifier)
    }

    pub fn load_boot_data(
        &mut self,
        m: &impl Machine,
        mem: &mut HostMemory,
        vm: VmId,
        gpa: Ipa,
        pfn: Pfn,
    ) -> Result<(), BootError> {
        let rec = self.vms.get_mut(vm.index()).and_then(Option::as_mut).ok_or(BootError::NoVm)?;
        rec.load_boot_data(&self.core, m, mem, vm, gpa, pfn)
    }

    pub fn abandon_verification(&mut self, vm: VmId) {
        if let Some(rec) = self.get_mut(vm) {
            rec.abandon_verification();
        }
    }
}

/// Reads image bytes `[offset, offset + len)` across its pages into `sink`.
fn read_image(m: &impl Machine, image: &LoadInfo, offset: u64, len: u64, sink: &mut impl FnMut(&[u8])) {
    let mut pos = offset;
    while pos < offset + len {
        let pa = image.pfns[(pos / PAGE_SIZE) as usize].pa().raw() + ((pos % PAGE_SIZE) & !7);
        let word = m.read_u64(pa).to_le_bytes();
        let start = (pos % 8) as usize;
        let take = (8 - start).min((offset + len - pos) as usize);
        sink(&word[start..start + take]);
        pos += take as u64;
    }
}

/// Whether the signature after image `index` matches the layout of a VM with RAM `ram` (the
/// machine-level `verify_image`).
fn signature_matches(
    m: &impl Machine,
    image: &LoadInfo,
    records: &[ImageRecord],
    index: usize,
    ram: IpaRange,
    v: &Verifier,
) -> bool {
    let mut signature = [0u8; 64];
    let mut filled = 0;
    read_image(m, image, image.size, SIGNATURE_LEN, &mut |bytes| {
        signature[filled..filled + bytes.len()].copy_from_slice(bytes);
        filled += bytes.len();
    });
    // The planted bug: the old message, which bound the image alone.
    let message = if crate::mutation::planted(crate::mutation::Mutation::SignatureOverImageOnly) {
        image_message(ram.base(), ram.size(), &records[index..=index], 0)
    } else {
        image_message(ram.base(), ram.size(), records, index)
    };
    message.is_some_and(|msg| v.key.verify_strict(msg.as_bytes(), &Signature::from_bytes(&signature)).is_ok())
}

//! Memory (SeKVM layers 13-17): RAM regions, the page index, per-page ownership, and the
//! ownership transitions that keep every principal to its own pages. Every transition checks its
//! preconditions and returns an error when one fails; none succeeds silently.
//!
//! [`HostMemory`] holds the ownership table together with the host's stage-2 table, because every
//! transition that takes a page from the host must also unmap it there (`clear_pfn_host`). The
//! two are guarded by one lock, `s2page` (see `handlers::trap_handler` for the lock order).
//!
//! When KCore owns an SMMU, [`HostMemory`] also holds the host's SMMU table (SeKVM layers 9-12),
//! under the same lock: what the host's devices reach by DMA. At every point where the lock is
//! free it maps exactly the pages the host owns, identity-mapped (`invariants::check`, `smmu_iso`):
//! a page leaves it, and the SMMU's TLB, before the page leaves the host ([`HostMemory::
//! take_from_host`]), and comes back only after it was scrubbed ([`HostMemory::clear_vm_page`]).
//! Those are the only two places where a page's owner changes to or from the host.
//!
//! A VM with devices assigned to it has an SMMU table too ([`HostMemory::attach_vm_smmu`]): a
//! copy of the RAM leaves of its stage-2, changed with them, and losing a page (and the SMMU's
//! TLB entry) before the page is scrubbed.

pub mod invariants;
pub mod ops;
pub mod pages;
#[cfg(test)]
mod refinement;
pub mod regions;
#[cfg(test)]
pub mod spec;
#[cfg(test)]
pub mod system;
#[cfg(test)]
mod tests;

use crate::machine::{Machine, PAGE_SIZE};
use crate::mutation::{planted, Mutation};
use crate::page_table::descriptor::{level_size, Attrs, Regime, LAST_LEVEL, OUTPUT_LIMIT};
use crate::page_table::pool::PagePool;
use crate::page_table::{Leaf, PageTable, PtError};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use corevisor_boards::PhysRange;
use pages::{Owner, PageDb, PageInfo};

/// How many times a VM may share one page with the host at once.
pub const MAX_SHARE_COUNT: u16 = 100;

/// Why an ownership transition or a host mapping was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// The address is not RAM (or, for MMIO, is RAM).
    NotRam,
    IsRam,
    /// The page belongs to someone else.
    NotOwned(Owner),
    /// The page is shared with the host and cannot change hands.
    Shared,
    /// The page is not shared.
    NotShared,
    /// The share count is at its maximum.
    ShareLimit,
    /// The MMIO range is KCore's.
    Protected,
    /// The address is no device the host (or a VM) may have: MMIO is deny-by-default.
    NotAllowed,
    /// A page KCore emulates for the host (a GICv3 redistributor's control page): never mapped,
    /// the caller performs the access itself.
    Emulated,
    /// A page frame number beyond the physical address size (KCore's 40-bit stage-2 output):
    /// shifted into an address it would lose its high bits and alias another page.
    BadPfn,
    PageTable(PtError),
}

/// The physical address of page `pfn`, if it lies inside the 40-bit physical address space that
/// KCore's stage-2 tables can name (`OUTPUT_LIMIT`). Every page number the host or a guest hands
/// KCore goes through here: `pfn << 12` alone drops the high bits, so `P | k << 52` would name
/// page P again under another number.
pub fn checked_pa(pfn: u64) -> Result<u64, MemError> {
    if pfn < OUTPUT_LIMIT >> 12 || planted(Mutation::UncheckedPfn) {
        Ok(pfn << 12)
    } else {
        Err(MemError::BadPfn)
    }
}

impl From<PtError> for MemError {
    fn from(e: PtError) -> MemError {
        MemError::PageTable(e)
    }
}

/// Host block mapping policy: the largest block whose whole range the host owns, or 4 KiB only
/// (for comparison in `cargo xtask bench`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMapPolicy {
    LargestBlock,
    PagesOnly,
}

/// The MMIO the host may reach, deny by default (SeKVM's host reaches every device; a device that
/// masters DMA would write wherever the host told it to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmioMap {
    /// The device ranges the host may map (page-aligned): its own devices, from the board's list
    /// and the DT. Everything else that is not RAM is refused.
    pub allowed: Vec<PhysRange>,
    /// Pages inside `allowed` that are never mapped: KCore performs the host's accesses there
    /// itself and refuses those that would make the GIC write memory.
    pub emulated: Vec<PhysRange>,
    /// MMIO that is KCore's (the GICv2 virtual interface control): never mapped for anyone.
    pub protected: Vec<PhysRange>,
    /// MMIO a VM may be given (PHYS_ADDR_IOREMAP) but the host never maps: the GICv2 virtual
    /// CPU interface (GICV), which a guest gets at its GICC address.
    pub guest_only: Vec<PhysRange>,
}

fn overlaps(ranges: &[PhysRange], base: u64, size: u64) -> bool {
    ranges.iter().any(|r| base < r.end() && r.base < base + size)
}

impl MmioMap {
    /// Whether `[base, base + size)` may be one Device mapping: inside a single allowed range,
    /// and no page of it emulated or KCore's.
    pub fn may_map(&self, base: u64, size: u64) -> bool {
        let inside = self.allowed.iter().any(|r| base >= r.base && base + size <= r.end())
            || planted(Mutation::HostMmioIgnoresAllowList);
        inside
            && !overlaps(&self.emulated, base, size)
            && !overlaps(&self.protected, base, size)
            && !overlaps(&self.guest_only, base, size)
    }

    /// Why the host (or a VM) may not have the MMIO page at `pa`, if it may not.
    pub fn refusal(&self, pa: u64) -> Option<MemError> {
        let page = pa & !(PAGE_SIZE - 1);
        if overlaps(&self.protected, page, PAGE_SIZE) {
            Some(MemError::Protected)
        } else if overlaps(&self.emulated, page, PAGE_SIZE) {
            Some(MemError::Emulated)
        } else if !self.may_map(page, PAGE_SIZE) {
            Some(MemError::NotAllowed)
        } else {
            None
        }
    }
}

/// The ownership table and the host's stage-2 table (identity-mapped on demand).
pub struct HostMemory {
    pub db: PageDb,
    pub host_s2: PageTable,
    /// The MMIO the host may map.
    pub mmio: MmioMap,
    pub policy: HostMapPolicy,
    /// The host's SMMU stage-2 table (SeKVM's SMMU page tables, layers 9-12), when KCore owns an
    /// SMMU: what the host's devices reach by DMA. Unlike the CPU's table it is filled up front
    /// (a device cannot take a fault and retry), with exactly the pages the host owns, and it
    /// changes with ownership: a page leaves it (and the SMMU's TLB) before it leaves the host.
    pub host_smmu: Option<PageTable>,
    /// Each VM's SMMU table, for the devices assigned to it ([`HostMemory::attach_vm_smmu`]):
    /// the RAM leaves of the VM's stage-2, at the same guest addresses (SMMU VMID = the vmid).
    /// Empty on a machine that assigns no device.
    pub vm_smmu: BTreeMap<u16, PageTable>,
}

/// The SMMU VMID of the host's SMMU table (SMMU VMIDs are the SMMU's own tags, apart from the
/// CPU's; a VM's SMMU table uses the VM's vmid).
pub const HOST_SMMU_VMID: u16 = 0;

/// Every leaf of an SMMU table: RAM, readable and writable, never executable (a device has no
/// business fetching instructions through it).
pub const SMMU_RAM: Attrs = Attrs { exec: false, ..Attrs::RAM };

/// The most table pages the host's SMMU table can ever take over RAM `regions`: its root, one
/// level-2 table per GiB and one level-3 table per 2 MiB of physical address space that RAM
/// touches. [`HostMemory::enable_host_smmu`] refuses a smaller pool, and then no transition
/// can run out: the table maps only RAM, identity-mapped, never at level 1; and a slot gets a
/// table at most once in its life, because no table is ever freed or replaced (an unmap
/// removes a leaf, a split turns a block leaf into a table, a map fills only an empty slot, and
/// the pool is a bump allocator). So a 2 MiB block split when its first page leaves the host,
/// or a page mapped again into an empty 2 MiB slot, always finds its table page.
pub fn host_smmu_table_pages(ram: &[PhysRange]) -> u64 {
    let slots =
        |size: u64| ram.iter().filter(|r| r.size > 0).map(|r| r.end().div_ceil(size) - r.base / size).sum::<u64>();
    1 + slots(level_size(1)) + slots(level_size(2))
}

impl HostMemory {
    pub fn new(db: PageDb, host_s2: PageTable, mmio: MmioMap) -> HostMemory {
        HostMemory { db, host_s2, mmio, policy: HostMapPolicy::LargestBlock, host_smmu: None, vm_smmu: BTreeMap::new() }
    }

    /// Builds the host's SMMU table from `pool` and returns its root (a stream table entry's
    /// S2TTB): every page the host owns now, identity-mapped, in 2 MiB blocks where the host owns
    /// the whole block. From here on every ownership change keeps it exact. Refused (nothing
    /// changes) if the host has one already, or if `pool` is smaller than the worst case
    /// ([`host_smmu_table_pages`]), so that no later transition can run out of table pages.
    /// The caller invalidates the SMMU's TLB for [`HOST_SMMU_VMID`] before a stream uses it.
    pub fn enable_host_smmu(&mut self, m: &impl Machine, pool: PagePool) -> Result<u64, MemError> {
        if self.host_smmu.is_some() {
            return Err(MemError::PageTable(PtError::Occupied));
        }
        if pool.free() < host_smmu_table_pages(&self.db.regions().iter().collect::<Vec<_>>()) {
            return Err(MemError::PageTable(PtError::PoolExhausted));
        }
        let mut table = PageTable::new(m, Regime::Smmu { vmid: HOST_SMMU_VMID }, pool)?;
        let block = level_size(2);
        let regions: Vec<PhysRange> = self.db.regions().iter().collect();
        for region in regions {
            let mut pa = region.base;
            while pa < region.end() {
                if pa % block == 0 && self.db.host_owns_block_in(region, pa, block) {
                    table.map(m, pa, pa, 2, SMMU_RAM)?;
                    pa += block;
                    continue;
                }
                if self.db.get(pa).is_some_and(|p| p.owner == Owner::Host) {
                    table.map(m, pa, pa, LAST_LEVEL, SMMU_RAM)?;
                }
                pa += PAGE_SIZE;
            }
        }
        let root = table.root();
        self.host_smmu = Some(table);
        Ok(root)
    }

    /// Gives VM `vmid` an SMMU table for the devices assigned to it (SeKVM `alloc_smmu`,
    /// `init_spt`, `map_spt` for a VM's context bank) and returns its root, the S2TTB of the VM's
    /// streams (SMMU VMID `vmid`, whose old SMMU TLB entries are dropped here). It maps every page
    /// of RAM the VM's stage-2 `vm_s2` maps, at the same guest address and level, and from here
    /// on changes with it: a page enters with the stage-2 ([`Self::map_pfn_vm`], a 2 MiB block
    /// answer) and leaves it, with the SMMU's TLB entry, before the page is scrubbed
    /// ([`Self::clear_vm_page`]); so the VM's devices reach exactly what its CPUs reach of RAM,
    /// never MMIO. Refused if the VM has one already, or if `pool` is smaller than `vm_s2`'s
    /// pool: the copy needs a table only where `vm_s2` has one, and neither frees a table, so
    /// the copy can never run out where the stage-2 did not.
    pub fn attach_vm_smmu(
        &mut self,
        m: &impl Machine,
        vmid: u16,
        vm_s2: &PageTable,
        pool: PagePool,
    ) -> Result<u64, MemError> {
        if self.vm_smmu.contains_key(&vmid) {
            return Err(MemError::PageTable(PtError::Occupied));
        }
        if pool.capacity() < vm_s2.pool().capacity() {
            return Err(MemError::PageTable(PtError::PoolExhausted));
        }
        let mut table = PageTable::new(m, Regime::Smmu { vmid }, pool)?;
        for leaf in vm_s2.leaves(m).into_iter().filter(|leaf| self.db.get(leaf.output).is_some()) {
            table.map(m, leaf.input, leaf.output, leaf.level, SMMU_RAM)?;
        }
        m.smmu_flush_vmid(vmid);
        let root = table.root();
        self.vm_smmu.insert(vmid, table);
        Ok(root)
    }

    /// Takes VM `vmid`'s SMMU table away, once no stream uses it (the caller detached them), and
    /// drops what the SMMU cached of it.
    pub fn detach_vm_smmu(&mut self, m: &impl Machine, vmid: u16) -> Option<PageTable> {
        let table = self.vm_smmu.remove(&vmid)?;
        m.smmu_flush_vmid(vmid);
        Some(table)
    }

    /// VM `vmid`'s SMMU table, if it has one: one branch on a machine that assigns no device.
    fn vm_smmu_of(&mut self, vmid: u16) -> Option<&mut PageTable> {
        if self.vm_smmu.is_empty() {
            return None;
        }
        self.vm_smmu.get_mut(&vmid)
    }

    /// Maps `[gpa, gpa + level_size(level))` to RAM at `pa` in VM `vmid`'s stage-2 and, if it has
    /// one, its SMMU table: in both or, refused, in neither (the SMMU table is checked first).
    pub(crate) fn map_vm_ram(
        &mut self,
        m: &impl Machine,
        vm_s2: &mut PageTable,
        vmid: u16,
        gpa: u64,
        pa: u64,
        level: u8,
    ) -> Result<(), MemError> {
        let Some(smmu) = self.vm_smmu_of(vmid) else {
            return Ok(vm_s2.map(m, gpa, pa, level, Attrs::RAM)?);
        };
        smmu.can_map(m, gpa, pa, level)?;
        vm_s2.map(m, gpa, pa, level, Attrs::RAM)?;
        Ok(smmu.map(m, gpa, pa, level, SMMU_RAM)?)
    }

    /// Serves a host stage-2 fault at `ipa` (SeKVM `map_page_host`, with blocks): maps the
    /// largest block around it that the host may have, identity-mapped. RAM the host owns is
    /// Normal memory; a page a VM shares is mapped alone; MMIO the host may have (`mmio`) is
    /// Device, in the largest block that stays inside one allowed range and holds no emulated or
    /// protected page. Anything else is refused.
    pub fn map_page_host(&mut self, m: &impl Machine, ipa: u64) -> Result<Leaf, MemError> {
        let levels: &[u8] = match self.policy {
            HostMapPolicy::LargestBlock => &[1, 2, 3],
            HostMapPolicy::PagesOnly => &[3],
        };
        let attrs = match self.db.get(ipa) {
            Some(page) if page.owner == Owner::Host => Attrs::RAM,
            Some(page) if page.count > 0 => {
                let base = ipa & !(PAGE_SIZE - 1);
                return self.map_host_leaf(m, ipa, base, LAST_LEVEL, Attrs { exec: false, ..Attrs::RAM });
            }
            Some(page) => return Err(MemError::NotOwned(page.owner)),
            None => match self.mmio.refusal(ipa) {
                Some(refused) => return Err(refused),
                None => Attrs::DEVICE,
            },
        };
        let region = self.db.regions().search(ipa);
        for &level in levels {
            let size = level_size(level);
            let base = ipa & !(size - 1);
            let allowed = match attrs.mem {
                crate::page_table::descriptor::MemType::Normal => {
                    region.is_some_and(|region| self.db.host_owns_block_in(region, base, size))
                        || (planted(Mutation::HostBlockWithoutOwnershipCheck) && self.db.regions().all_ram(base, size))
                }
                crate::page_table::descriptor::MemType::Device => {
                    self.db.regions().no_ram(base, size) && self.mmio.may_map(base, size)
                }
            };
            if !allowed {
                continue;
            }
            match self.map_host_leaf(m, ipa, base, level, attrs) {
                // A table already hangs here (an earlier split): try a smaller block.
                Err(MemError::PageTable(PtError::Occupied)) if level < LAST_LEVEL => continue,
                result => return result,
            }
        }
        Err(MemError::PageTable(PtError::Occupied))
    }

    /// Maps a host leaf; if the slot is taken because `ipa` is already mapped (another core
    /// served the same fault first), that mapping is the answer.
    fn map_host_leaf(
        &mut self,
        m: &impl Machine,
        ipa: u64,
        base: u64,
        level: u8,
        attrs: Attrs,
    ) -> Result<Leaf, MemError> {
        match self.host_s2.map_leaf(m, base, base, level, attrs) {
            Err(PtError::Occupied) => self.host_s2.walk(m, ipa).ok_or(MemError::PageTable(PtError::Occupied)),
            result => Ok(result?),
        }
    }

    /// Gives a host page to KCore (SeKVM `protect_el2_mem`), unmapping it from the host.
    pub fn give_to_kcore(&mut self, m: &impl Machine, range: PhysRange) -> Result<(), MemError> {
        for pa in (range.base..range.end()).step_by(PAGE_SIZE as usize) {
            self.take_from_host(m, pa, Owner::KCore, pa >> 12)?;
        }
        Ok(())
    }

    /// The shared step of every transition away from the host: the page must be the host's and
    /// unshared; it is unmapped from the host's stage-2 (and the TLB flushed) and from the
    /// host's SMMU table (and the SMMU's TLB, CMD_SYNC waited for) before it changes owner, and
    /// then cleaned and invalidated to the point of coherency, so that no line the host left in
    /// the caches can later be written back over the new owner's data, and what KCore reads of
    /// it (an image it hashes) is what DRAM holds: neither the host's cores nor its devices can
    /// write it any more by then.
    ///
    /// A refusal leaves the page the host's: the stage-2 may have lost its entry (the host
    /// faults it back in), the SMMU table is unchanged. Without an SMMU the cost is one branch.
    fn take_from_host(&mut self, m: &impl Machine, pa: u64, owner: Owner, gfn: u64) -> Result<(), MemError> {
        let page = self.db.get(pa).ok_or(MemError::NotRam)?;
        if page.owner != Owner::Host {
            return Err(MemError::NotOwned(page.owner));
        }
        if page.count > 0 {
            return Err(MemError::Shared);
        }
        if !planted(Mutation::SkipClearPfnHost) {
            self.host_s2.clear_page(m, pa)?;
        }
        if let Some(smmu) = &mut self.host_smmu {
            // Cannot run out of table pages for a split (`host_smmu_table_pages`).
            if !planted(Mutation::SmmuPageLeftMapped) {
                smmu.clear_page(m, pa)?;
            }
        }
        if !planted(Mutation::SkipCleanOnTake) {
            m.clean_invalidate_page(pa);
        }
        self.db.set(pa, PageInfo { owner, count: 0, gfn });
        Ok(())
    }

    /// Gives the host page `pfn` to VM `vmid` at `gfn` (SeKVM `assign_pfn_to_vm`). Assigning a
    /// page the VM already has at the same gfn is accepted.
    pub fn assign_pfn_to_vm(&mut self, m: &impl Machine, vmid: u16, gfn: u64, pfn: u64) -> Result<(), MemError> {
        let pa = checked_pa(pfn)?;
        match self.db.get(pa) {
            Some(p) if p.owner == Owner::Vm(vmid) && p.gfn == gfn => Ok(()),
            Some(p) if planted(Mutation::AssignStealsFromAnotherVm) && matches!(p.owner, Owner::Vm(_)) => {
                self.db.set(pa, PageInfo { owner: Owner::Vm(vmid), count: 0, gfn });
                Ok(())
            }
            _ => self.take_from_host(m, pa, Owner::Vm(vmid), gfn),
        }
    }

    /// Takes page `pfn` back from VM `vmid`, scrubs it, and returns it to the host (SeKVM
    /// `clear_vm_page`). The VM loses its mapping first (of the whole 2 MiB block, for a page of
    /// one) (SeKVM relies on the VM being powered off
    /// instead), so no VM ever maps a page it does not own. The scrub is cleaned to the point of
    /// coherency before the page is the host's, so that DRAM holds zeros too, not the VM's data
    /// behind zeroed cache lines. The host maps it again on its next fault; its devices get it
    /// back (the host's SMMU table) only now, after the scrub.
    pub fn clear_vm_page(
        &mut self,
        m: &impl Machine,
        vm_s2: &mut PageTable,
        vmid: u16,
        pfn: u64,
    ) -> Result<(), MemError> {
        let pa = checked_pa(pfn)?;
        let page = self.db.get(pa).ok_or(MemError::NotRam)?;
        if page.owner != Owner::Vm(vmid) {
            return Err(MemError::NotOwned(page.owner));
        }
        match vm_s2.walk(m, page.gfn << 12) {
            Some(leaf) if leaf.translate(page.gfn << 12) != pa => {}
            Some(leaf) if leaf.level == LAST_LEVEL => {
                vm_s2.clear_page(m, page.gfn << 12)?;
            }
            // A page of a 2 MiB block: the whole block leaves the VM's stage-2 rather than being
            // split (a table page per block would exhaust the VM's pool at teardown). The VM is
            // off wherever this meets a block (teardown); its other pages of the block stay its
            // own, unmapped, until they come back too.
            Some(_) => {
                vm_s2.unmap(m, page.gfn << 12)?;
            }
            None => {}
        }
        // The VM's devices lose the page as its CPUs do, before the scrub.
        if let Some(smmu) = self.vm_smmu_of(vmid) {
            let gpa = page.gfn << 12;
            let mapped = smmu.walk(m, gpa).is_some_and(|leaf| leaf.translate(gpa) == pa);
            if mapped && !planted(Mutation::VmSmmuPageLeftOnClear) {
                smmu.unmap(m, gpa)?;
            }
        }
        if page.count > 0 {
            // Shared pages are mapped in the host: unmap before the page is scrubbed and handed
            // back, so the host's next access faults and gets a fresh mapping.
            self.host_s2.clear_page(m, pa)?;
        }
        if !planted(Mutation::SkipScrub) {
            scrub(m, pa);
        }
        if let Some(smmu) = &mut self.host_smmu {
            // Cannot run out of table pages (`host_smmu_table_pages`); `Occupied` would mean the
            // host's devices reached a VM's page, and the page stays the VM's.
            smmu.map(m, pa, pa, LAST_LEVEL, SMMU_RAM)?;
        }
        self.db.set(pa, PageInfo { owner: Owner::Host, count: 0, gfn: pfn });
        Ok(())
    }

    /// Takes the whole 2 MiB block at `pa` out of the host's SMMU table in one break and one
    /// SMMU TLB invalidation, if it is mapped there as one block; the caller is taking every
    /// page of it from the host ([`Self::take_from_host`] then finds each page gone, where it
    /// would otherwise split the block and invalidate 512 times).
    pub(crate) fn unmap_host_smmu_block(&mut self, m: &impl Machine, pa: u64) -> Result<(), MemError> {
        if let Some(smmu) = &mut self.host_smmu {
            let block = smmu.walk(m, pa).is_some_and(|leaf| leaf.level == 2 && leaf.input == pa);
            if block && !planted(Mutation::SmmuPageLeftMapped) {
                smmu.unmap(m, pa)?;
            }
        }
        Ok(())
    }

    /// VM `vmid` shares its page `pfn` with the host (SeKVM `grant_vm_page`). The check and
    /// the update are one step on the page's record.
    pub fn grant_vm_page(&mut self, vmid: u16, pfn: u64) -> Result<(), MemError> {
        let pa = checked_pa(pfn)?;
        let (owner, count) = self.db.share_count_mut(pa).ok_or(MemError::NotRam)?;
        if owner != Owner::Vm(vmid) {
            return Err(MemError::NotOwned(owner));
        }
        if *count >= MAX_SHARE_COUNT {
            return Err(MemError::ShareLimit);
        }
        *count += 1;
        Ok(())
    }

    /// VM `vmid` takes back one share of page `pfn` (SeKVM `revoke_vm_page`); at zero shares the
    /// host loses its mapping ([`Self::end_host_share`]).
    pub fn revoke_vm_page(&mut self, m: &impl Machine, vmid: u16, pfn: u64) -> Result<(), MemError> {
        if self.take_share(vmid, pfn)? == 0 {
            self.end_host_share(m, pfn << 12)?;
        }
        Ok(())
    }

    /// The record half of [`Self::revoke_vm_page`]: checks that VM `vmid` owns page `pfn` and
    /// shares it, takes one share off, and returns how many are left. With none left, the
    /// caller owes [`Self::end_host_share`].
    pub(crate) fn take_share(&mut self, vmid: u16, pfn: u64) -> Result<u16, MemError> {
        let pa = checked_pa(pfn)?;
        let (owner, count) = self.db.share_count_mut(pa).ok_or(MemError::NotRam)?;
        if owner != Owner::Vm(vmid) {
            return Err(MemError::NotOwned(owner));
        }
        if *count == 0 {
            return Err(MemError::NotShared);
        }
        *count -= 1;
        Ok(*count)
    }

    /// The host has lost its last share of the VM page at `pa`: its stage-2 entry goes (and the
    /// TLB entry), and if there was one, the page is cleaned and invalidated to the point of
    /// coherency, so that no line the host allocated through it can be written back over the
    /// VM's data later or read stale. Without an entry the host holds no line of the page: it
    /// was cleaned and invalidated when the VM got it, and the host can allocate lines only
    /// through a mapping, which it gets only while the page is shared, and whose end always
    /// cleans (docs/cache-coherency.md, "The last share").
    pub(crate) fn end_host_share(&mut self, m: &impl Machine, pa: u64) -> Result<(), MemError> {
        // A shared page is a single 4 KiB leaf in the host's table (`map_page_host`), so this
        // needs no split and no table page: it cannot fail.
        // Most shares end without the host ever touching the page: one walk says so.
        let host_mapped = self.host_s2.output_of(m, pa).is_some() && self.host_s2.clear_page(m, pa)?;
        if host_mapped && !planted(Mutation::SkipCleanOnLastUnshare) {
            m.clean_invalidate_page(pa);
        }
        Ok(())
    }

    /// Maps page `pfn`, which VM `vmid` owns at `gfn`, into the VM's stage-2 (SeKVM `map_pfn_vm`).
    pub fn map_pfn_vm(
        &mut self,
        m: &impl Machine,
        vm_s2: &mut PageTable,
        vmid: u16,
        gfn: u64,
        pfn: u64,
    ) -> Result<(), MemError> {
        let pa = checked_pa(pfn)?;
        let page = self.db.get(pa).ok_or(MemError::NotRam)?;
        if page.owner != Owner::Vm(vmid) || page.gfn != gfn {
            return Err(MemError::NotOwned(page.owner));
        }
        self.map_vm_ram(m, vm_s2, vmid, gfn << 12, pa, LAST_LEVEL)
    }

    /// Maps MMIO page `pa` at `gpa` in a VM's stage-2 (SeKVM `map_vm_io`): never RAM, and only
    /// a device the host itself may map directly (a VM handed a DMA-capable device could make it
    /// write anywhere; never an emulated or a KCore page).
    pub fn map_vm_io(&self, m: &impl Machine, vm_s2: &mut PageTable, gpa: u64, pa: u64) -> Result<(), MemError> {
        if self.db.get(pa).is_some() {
            return Err(MemError::IsRam);
        }
        let guest_only = overlaps(&self.mmio.guest_only, pa & !(PAGE_SIZE - 1), PAGE_SIZE);
        if let Some(refused) = self.mmio.refusal(pa).filter(|_| !guest_only) {
            return Err(refused);
        }
        vm_s2.map(m, gpa & !(PAGE_SIZE - 1), pa & !(PAGE_SIZE - 1), LAST_LEVEL, Attrs::DEVICE)?;
        Ok(())
    }
}

/// Zeroes the page at `pa` and cleans the zeros to the point of coherency: the page is scrubbed
/// in DRAM too, not only behind the cache. Every page a VM gives back or is given goes through
/// here before its next owner can read it.
pub fn scrub(m: &impl Machine, pa: u64) {
    m.zero_page(pa);
    if !planted(Mutation::SkipCleanAfterScrub) {
        m.clean_invalidate_page(pa);
    }
}

//! MemoryOps (SeKVM layer 17): MemManager's transitions over ranges, as KCore's VM paths use
//! them: reclaiming a VM's pages, mapping a page or a 2 MiB block into a VM on its stage-2 fault,
//! and a VM sharing or unsharing a range of its memory with the host.

use super::pages::Owner;
use super::{checked_pa, HostMemory, MemError};
use crate::machine::{Machine, PAGE_SIZE};
use crate::mutation::{planted, Mutation};
use crate::page_table::descriptor::INPUT_LIMIT;
use crate::page_table::PageTable;

/// Pages in a 2 MiB block.
const BLOCK_PAGES: u64 = 512;

impl HostMemory {
    /// Takes back, scrubs and returns to the host every page of `[pfn, pfn + pages)` that VM
    /// `vmid` owns (SeKVM `clear_vm_range`); pages it does not own are left alone. Returns how
    /// many pages came back; on an error, the pages before it have come back. A range that
    /// reaches past the physical address size is refused whole.
    pub fn clear_vm_range(
        &mut self,
        m: &impl Machine,
        vm_s2: &mut PageTable,
        vmid: u16,
        pfn: u64,
        pages: u64,
    ) -> Result<u64, MemError> {
        let end = pfn.checked_add(pages).ok_or(MemError::BadPfn)?;
        if pages > 0 {
            checked_pa(end - 1)?;
        }
        let mut returned = 0;
        for pfn in pfn..end {
            if self.db.get(pfn << 12).is_some_and(|p| p.owner == super::pages::Owner::Vm(vmid)) {
                self.clear_vm_page(m, vm_s2, vmid, pfn)?;
                returned += 1;
            }
        }
        Ok(returned)
    }

    /// Gives VM `vmid` the host page (level 3) or the 2 MiB block of host pages (level 2) at
    /// `pfn`, mapped at `gfn` (SeKVM `prot_and_map_vm_s2pt`). A block is [`Self::give_vm_block`]:
    /// all or nothing, and scrubbed.
    pub fn prot_and_map_vm_s2pt(
        &mut self,
        m: &impl Machine,
        vm_s2: &mut PageTable,
        vmid: u16,
        gfn: u64,
        pfn: u64,
        level: u8,
    ) -> Result<(), MemError> {
        match level {
            3 => {
                self.assign_pfn_to_vm(m, vmid, gfn, pfn)?;
                self.map_pfn_vm(m, vm_s2, vmid, gfn, pfn)
            }
            2 if gfn.is_multiple_of(BLOCK_PAGES) && pfn.is_multiple_of(BLOCK_PAGES) => {
                self.give_vm_block(m, vm_s2, vmid, gfn, pfn)
            }
            _ => Err(MemError::PageTable(crate::page_table::PtError::BadRange)),
        }
    }

    /// Gives VM `vmid` the 2 MiB-aligned run of 512 host pages at `pfn`, scrubbed, mapped as ONE
    /// level-2 block at the aligned `gfn` (issue 13: a large guest faults once per 2 MiB). All or
    /// nothing: refused, with nothing changed, unless every page of the run is the host's (one
    /// lookup of the per-2 MiB summary, one RAM region) and the VM's stage-2 can take the block
    /// there (no page of the gfn block mapped, no table hanging in its slot, a table page for it
    /// if needed). A refused run names the first page that is not the host's (`NotRam` if every
    /// page is but the run crosses two RAM regions).
    fn give_vm_block(
        &mut self,
        m: &impl Machine,
        vm_s2: &mut PageTable,
        vmid: u16,
        gfn: u64,
        pfn: u64,
    ) -> Result<(), MemError> {
        let pa = checked_pa(pfn)?;
        checked_pa(pfn + BLOCK_PAGES - 1)?;
        let size = BLOCK_PAGES * PAGE_SIZE;
        let region = self.db.regions().search(pa);
        // The planted bug looks at the run's first page only (the summary's `_` arm).
        let checked = if planted(Mutation::BlockOwnershipFirstPageOnly) { PAGE_SIZE } else { size };
        if !region.is_some_and(|region| self.db.host_owns_block_in(region, pa, checked)) {
            let pages = (pa..pa + size).step_by(PAGE_SIZE as usize).map(|at| self.db.get(at));
            return Err(match pages.map(|p| p.map(|p| p.owner)).find(|owner| *owner != Some(Owner::Host)) {
                Some(Some(owner)) => MemError::NotOwned(owner),
                _ => MemError::NotRam,
            });
        }
        if !planted(Mutation::BlockOverMappedGfn) {
            vm_s2.can_map(m, gfn << 12, pa, 2)?;
        }
        if let Some(smmu) = self.vm_smmu.get(&vmid) {
            smmu.can_map(m, gfn << 12, pa, 2)?;
        }
        // Every page leaves the host's tables in `take_from_host`. With an SMMU, first for the
        // whole run: the host's stage-2 split (the one step that can fail, before anything
        // changed), then the SMMU's 2 MiB block in one break rather than a split and 512
        // invalidations.
        if self.host_smmu.is_some() {
            if !planted(Mutation::SkipClearPfnHost) {
                self.host_s2.clear_page(m, pa)?;
            }
            self.unmap_host_smmu_block(m, pa)?;
        }
        for i in 0..BLOCK_PAGES {
            self.take_from_host(m, pa + i * PAGE_SIZE, Owner::Vm(vmid), gfn + i)?;
            if !planted(Mutation::SkipFaultPageScrub) {
                super::scrub(m, pa + i * PAGE_SIZE);
            }
        }
        self.map_vm_ram(m, vm_s2, vmid, gfn << 12, pa, 2)
    }

    /// VM `vmid` shares every mapped page of `[gpa, gpa + size)` with the host (SeKVM
    /// `grant_stage2_sg_gpa`), all or nothing: if one page may not be shared, the call is
    /// refused with that page's reason and no page changes (SeKVM shares the pages before it).
    ///
    /// One walk of the VM's stage-2 per page, the check and the update of each page one step
    /// ([`HostMemory::grant_vm_page`]). A refusal undoes the pages before it exactly: a frame is
    /// mapped at most once in a VM's stage-2 (at the gfn its record names), so each of them is a
    /// different frame whose count this call raised by one, and no page's check depends on
    /// another page's update. Only the refusal walks those pages a second time. One page (the
    /// common case) is one walk and one record update, inline.
    #[inline]
    pub fn grant_stage2_sg_gpa(
        &mut self,
        m: &impl Machine,
        vm_s2: &PageTable,
        vmid: u16,
        gpa: u64,
        size: u64,
    ) -> Result<(), MemError> {
        if let Some(page) = one_page(gpa, size)? {
            return match mapped_pfn(m, vm_s2, page) {
                Some(pfn) => self.grant_vm_page(vmid, pfn),
                None => Ok(()),
            };
        }
        self.grant_range(m, vm_s2, vmid, gpa, size)
    }

    /// [`Self::grant_stage2_sg_gpa`] over more than one page.
    #[inline(never)]
    fn grant_range(
        &mut self,
        m: &impl Machine,
        vm_s2: &PageTable,
        vmid: u16,
        gpa: u64,
        size: u64,
    ) -> Result<(), MemError> {
        let pages = share_pages(gpa, size)?;
        let share = |mem: &mut Self, pfn| mem.grant_vm_page(vmid, pfn);
        self.all_or_nothing(m, vm_s2, pages, share, |mem, pfn| mem.take_share(vmid, pfn).map(drop))
    }

    /// Applies `step` to the frame behind each mapped page of `pages`; if one refuses, `undo`
    /// takes the steps before it back (exact: each is a different frame, see
    /// [`Self::grant_stage2_sg_gpa`]) and the refusal is the answer.
    fn all_or_nothing(
        &mut self,
        m: &impl Machine,
        vm_s2: &PageTable,
        pages: core::ops::Range<u64>,
        mut step: impl FnMut(&mut Self, u64) -> Result<(), MemError>,
        mut undo: impl FnMut(&mut Self, u64) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        for page in pages.clone().step_by(PAGE_SIZE as usize) {
            let Some(pfn) = mapped_pfn(m, vm_s2, page) else { continue };
            if let Err(e) = step(self, pfn) {
                if !planted(Mutation::ShareRangeNotAtomic) {
                    for_each_mapped_pfn(m, vm_s2, pages.start..page, |pfn| undo(self, pfn));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// VM `vmid` takes back one share of every mapped page of `[gpa, gpa + size)` (SeKVM
    /// `revoke_stage2_sg_gpa`), all or nothing as for [`Self::grant_stage2_sg_gpa`].
    ///
    /// One walk per page: each page's check and count update are one step
    /// ([`HostMemory::take_share`]), undone exactly on a refusal as for a grant; only once every
    /// page has passed do the pages whose last share it took leave the host's stage-2
    /// ([`HostMemory::end_host_share`]), found by a second walk (their count is now zero, and
    /// was not before: an unshared page is refused), so a refused call changes no table either.
    /// One page is [`HostMemory::revoke_vm_page`] on the frame one walk finds, inline.
    #[inline]
    pub fn revoke_stage2_sg_gpa(
        &mut self,
        m: &impl Machine,
        vm_s2: &PageTable,
        vmid: u16,
        gpa: u64,
        size: u64,
    ) -> Result<(), MemError> {
        if let Some(page) = one_page(gpa, size)? {
            return mapped_pfn(m, vm_s2, page).map_or(Ok(()), |pfn| self.revoke_vm_page(m, vmid, pfn));
        }
        self.revoke_range(m, vm_s2, vmid, gpa, size)
    }

    /// [`Self::revoke_stage2_sg_gpa`] over more than one page.
    #[inline(never)]
    fn revoke_range(
        &mut self,
        m: &impl Machine,
        vm_s2: &PageTable,
        vmid: u16,
        gpa: u64,
        size: u64,
    ) -> Result<(), MemError> {
        let pages = share_pages(gpa, size)?;
        let unshare = |mem: &mut Self, pfn| mem.take_share(vmid, pfn).map(drop);
        self.all_or_nothing(m, vm_s2, pages.clone(), unshare, |mem, pfn| mem.grant_vm_page(vmid, pfn))?;
        // Cannot fail now: a shared page is a single 4 KiB leaf in the host's table, so
        // unmapping it needs no split and no table page.
        let mut result = Ok(());
        for_each_mapped_pfn(m, vm_s2, pages, |pfn| {
            if result.is_ok() && self.db.get(pfn << 12).is_some_and(|p| p.count == 0) {
                result = self.end_host_share(m, pfn << 12);
            }
        });
        result
    }
}

/// The page-aligned guest-physical range a share call covers, or `BadRange` if it reaches past
/// the guest-physical address space (or wraps around).
fn share_pages(gpa: u64, size: u64) -> Result<core::ops::Range<u64>, MemError> {
    let end = gpa
        .checked_add(size)
        .filter(|&end| end <= INPUT_LIMIT)
        .ok_or(MemError::PageTable(crate::page_table::PtError::BadRange))?;
    Ok(gpa & !(PAGE_SIZE - 1)..end)
}

/// The page a share call over `[gpa, gpa + size)` covers if that is exactly one page (aligned),
/// `None` if it is more; `BadRange` as [`share_pages`] for a page past the guest-physical
/// address space.
#[inline(always)]
fn one_page(gpa: u64, size: u64) -> Result<Option<u64>, MemError> {
    if size != PAGE_SIZE || !gpa.is_multiple_of(PAGE_SIZE) {
        return Ok(None);
    }
    if gpa >= INPUT_LIMIT {
        return Err(MemError::PageTable(crate::page_table::PtError::BadRange));
    }
    Ok(Some(gpa))
}

/// The page frame behind guest-physical page `page`, if the VM maps it.
#[inline(always)]
fn mapped_pfn(m: &impl Machine, vm_s2: &PageTable, page: u64) -> Option<u64> {
    vm_s2.output_of(m, page).map(|pa| pa >> 12)
}

/// Calls `f` with the frame behind each mapped page of `pages` (page-aligned start), in order.
/// For the undo and the long-revoke paths only.
fn for_each_mapped_pfn<T>(
    m: &impl Machine,
    vm_s2: &PageTable,
    pages: core::ops::Range<u64>,
    mut f: impl FnMut(u64) -> T,
) {
    for page in pages.step_by(PAGE_SIZE as usize) {
        if let Some(pfn) = mapped_pfn(m, vm_s2, page) {
            f(pfn);
        }
    }
}

//! MemoryOps (SeKVM layer 17): MemManager's transitions over ranges, as KCore's VM paths use
//! them: reclaiming a VM's pages, mapping a page or a 2 MiB block into a VM on its stage-2 fault,
//! and a VM sharing or unsharing a range of its memory with the host.

use super::{checked_pa, HostMemory, MemError};
use crate::machine::Machine;
use crate::mutation::{planted, Mutation};
use crate::page_table::descriptor::{level_size, Attrs, INPUT_LIMIT};
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
    /// `pfn`, mapped at `gfn` (SeKVM `prot_and_map_vm_s2pt`). A block needs both aligned and
    /// every page the host's; pages are assigned one by one, so a refusal part-way leaves the
    /// pages before it assigned and unmapped, which a later retry accepts.
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
                for i in 0..BLOCK_PAGES {
                    self.assign_pfn_to_vm(m, vmid, gfn + i, pfn + i)?;
                }
                vm_s2.map(m, gfn << 12, pfn << 12, 2, Attrs::RAM)?;
                Ok(())
            }
            _ => Err(MemError::PageTable(crate::page_table::PtError::BadRange)),
        }
    }

    /// VM `vmid` shares every mapped page of `[gpa, gpa + size)` with the host (SeKVM
    /// `grant_stage2_sg_gpa`), all or nothing: if one page may not be shared, the call is
    /// refused with that page's reason and no page changes (SeKVM shares the pages before it).
    pub fn grant_stage2_sg_gpa(
        &mut self,
        m: &impl Machine,
        vm_s2: &PageTable,
        vmid: u16,
        gpa: u64,
        size: u64,
    ) -> Result<(), MemError> {
        // A frame is mapped at most once in a VM's stage-2 (at the gfn its record names), so
        // checking each page against its record as it is now checks the whole call.
        if !planted(Mutation::ShareRangeNotAtomic) {
            for_each_mapped_pfn(m, vm_s2, gpa, size, |pfn| self.may_grant(vmid, pfn).map(drop))?;
        }
        for_each_mapped_pfn(m, vm_s2, gpa, size, |pfn| self.grant_vm_page(vmid, pfn))
    }

    /// VM `vmid` takes back one share of every mapped page of `[gpa, gpa + size)` (SeKVM
    /// `revoke_stage2_sg_gpa`), all or nothing as for [`Self::grant_stage2_sg_gpa`].
    pub fn revoke_stage2_sg_gpa(
        &mut self,
        m: &impl Machine,
        vm_s2: &PageTable,
        vmid: u16,
        gpa: u64,
        size: u64,
    ) -> Result<(), MemError> {
        if !planted(Mutation::ShareRangeNotAtomic) {
            for_each_mapped_pfn(m, vm_s2, gpa, size, |pfn| self.may_revoke(vmid, pfn).map(drop))?;
        }
        // Cannot fail part-way now: a shared page is a single 4 KiB leaf in the host's table, so
        // unmapping it needs no split and no table page.
        for_each_mapped_pfn(m, vm_s2, gpa, size, |pfn| self.revoke_vm_page(m, vmid, pfn))
    }
}

/// Calls `f` with the page frame behind each mapped page of `[gpa, gpa + size)`, in order,
/// stopping at the first error; unmapped pages are skipped. A range that reaches past the
/// guest-physical address space (or wraps around) is refused before any page is looked at.
fn for_each_mapped_pfn(
    m: &impl Machine,
    vm_s2: &PageTable,
    gpa: u64,
    size: u64,
    mut f: impl FnMut(u64) -> Result<(), MemError>,
) -> Result<(), MemError> {
    let end = gpa
        .checked_add(size)
        .filter(|&end| end <= INPUT_LIMIT)
        .ok_or(MemError::PageTable(crate::page_table::PtError::BadRange))?;
    for page in (gpa & !0xfff..end).step_by(level_size(3) as usize) {
        if let Some(leaf) = vm_s2.walk(m, page) {
            f(leaf.translate(page) >> 12)?;
        }
    }
    Ok(())
}

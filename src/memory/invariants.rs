//! The SeKVM invariants, checkable at run time (debug builds check them after every hypercall)
//! and in property tests:
//! - `host_iso`: the host maps only RAM it owns, pages a VM shares with it, and MMIO it is allowed
//!   (each Device leaf inside one allowed range, with no emulated, KCore or guest-only page in it);
//! - `host_flatmap`: the host's stage-2 is the identity;
//! - `vm_iso`: a VM maps only RAM it owns, at the gfn the ownership table records (so no page is
//!   mapped by two VMs);
//! - `smmu_iso` (issue 15), when KCore owns an SMMU: the host's SMMU table is an identity map of
//!   pages the host owns (never a page a VM shares with it, nor one of KCore's), and, the half
//!   the host's own DMA relies on, of all of them;
//! - `smmu_iso` for a VM's SMMU table: exactly the RAM leaves of the VM's stage-2 (none once
//!   the VM is gone), so `vm_iso` covers the devices assigned to it too;
//! - well-formedness: leaves never overlap, and every table page lies in its owner's pool.
//!
//! The cost of `smmu_iso` is that of `host_iso`: one visit of the table, an O(1) ownership
//! lookup per leaf (the per-block counters for a block), and one count for completeness (the
//! leaves, which do not overlap and hold only host pages, cover as many pages as the host owns),
//! never a walk per page; the sampled checker (`handlers::trap_handler::invariants`) runs it
//! exactly when it runs the rest.

use super::pages::Owner;
use super::{HostMemory, SMMU_RAM};
use crate::machine::{Machine, PAGE_SIZE};
use crate::page_table::descriptor::MemType;
use crate::page_table::{Leaf, PageTable};
use corevisor_boards::PhysRange;

/// A broken invariant, with the leaf that breaks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    HostIso(Leaf),
    HostFlatmap(Leaf),
    VmIso {
        vmid: u16,
        leaf: Leaf,
    },
    Overlap(Leaf),
    /// A table page of `principal`'s stage-2 (0: the host) lies outside its own pool.
    ForeignTablePage {
        principal: u16,
        pa: u64,
    },
    /// A leaf of the host's SMMU table that maps a page the host does not own (or not at its
    /// own address, or not as [`SMMU_RAM`]).
    SmmuIso(Leaf),
    /// The host's SMMU table maps `mapped` pages, but the host owns `owned`: a page of the
    /// host's is missing (its devices cannot reach it).
    SmmuIncomplete {
        mapped: u64,
        owned: u64,
    },
    /// A table page of an SMMU table (SMMU VMID `vmid`: 0 for the host's) lies outside its own
    /// pool.
    SmmuTablePage {
        vmid: u16,
        pa: u64,
    },
    /// VM `vmid`'s SMMU table and the RAM leaves of its stage-2 differ at `leaf` (of one of them).
    VmSmmuIso {
        vmid: u16,
        leaf: Leaf,
    },
    /// A word of KCore's canary page changed: something wrote KCore's memory behind every
    /// stage-2 (a device's DMA).
    Canary {
        pa: u64,
        found: u64,
    },
}

/// Words in the canary page.
const CANARY_WORDS: u64 = PAGE_SIZE / 8;

/// Fills KCore's canary page at `pa` (at boot).
pub fn fill_canary(m: &impl Machine, pa: u64) {
    (0..CANARY_WORDS).for_each(|i| m.write_u64(pa + 8 * i, corevisor_abi::canary_word(i)));
}

/// Checks KCore's canary page at `pa`: every word as [`fill_canary`] left it.
pub fn check_canary(m: &impl Machine, pa: u64) -> Result<(), Violation> {
    match (0..CANARY_WORDS).find(|&i| m.read_u64(pa + 8 * i) != corevisor_abi::canary_word(i)) {
        Some(i) => Err(Violation::Canary { pa: pa + 8 * i, found: m.read_u64(pa + 8 * i) }),
        None => Ok(()),
    }
}

/// Checks every invariant over the host's table and the given VM tables.
pub fn check(m: &impl Machine, mem: &HostMemory, vms: &[(u16, &PageTable)]) -> Result<(), Violation> {
    own_pool(m, 0, &mem.host_s2)?;
    let leaves = mem.host_s2.leaves(m);
    well_formed(&leaves)?;
    for &leaf in &leaves {
        if leaf.input != leaf.output {
            return Err(Violation::HostFlatmap(leaf));
        }
        let regions = mem.db.regions();
        let ok = if regions.no_ram(leaf.output, leaf.size()) {
            let (base, end) = (leaf.output, leaf.output + leaf.size());
            let touches = |r: &PhysRange| base < r.end() && r.base < end;
            leaf.attrs.mem == MemType::Device
                && mem.mmio.allowed.iter().any(|r| r.base <= base && end <= r.end())
                && !mem.mmio.emulated.iter().chain(&mem.mmio.protected).chain(&mem.mmio.guest_only).any(touches)
        } else if leaf.size() == PAGE_SIZE {
            mem.db.get(leaf.output).is_some_and(|p| p.owner == Owner::Host || p.count > 0)
        } else {
            mem.db.host_owns_block(leaf.output, leaf.size())
        };
        if !ok {
            return Err(Violation::HostIso(leaf));
        }
    }
    if let Some(smmu) = &mem.host_smmu {
        smmu_iso(m, mem, smmu)?;
    }
    for &(vmid, table) in vms {
        own_pool(m, vmid, table)?;
        let leaves = table.leaves(m);
        well_formed(&leaves)?;
        for leaf in leaves {
            for offset in (0..leaf.size()).step_by(PAGE_SIZE as usize) {
                let (gpa, pa) = (leaf.input + offset, leaf.output + offset);
                if let Some(page) = mem.db.get(pa) {
                    if page.owner != Owner::Vm(vmid) || page.gfn != gpa >> 12 {
                        return Err(Violation::VmIso { vmid, leaf });
                    }
                }
            }
        }
    }
    for (&vmid, smmu) in &mem.vm_smmu {
        let stage2 = vms.iter().find(|&&(v, _)| v == vmid).map(|&(_, table)| table);
        vm_smmu_iso(m, mem, vmid, smmu, stage2)?;
    }
    Ok(())
}

/// `smmu_iso` for VM `vmid`'s SMMU table `smmu`: its leaves are the RAM leaves of the VM's
/// stage-2 (`None`: the VM is gone, and so are they), with the SMMU's attributes.
fn vm_smmu_iso(
    m: &impl Machine,
    mem: &HostMemory,
    vmid: u16,
    smmu: &PageTable,
    stage2: Option<&PageTable>,
) -> Result<(), Violation> {
    if let Some(pa) = foreign_table_page(m, smmu) {
        return Err(Violation::SmmuTablePage { vmid, pa });
    }
    let found = smmu.leaves(m);
    let ram = stage2.map(|t| t.leaves(m)).unwrap_or_default().into_iter().filter(|l| mem.db.get(l.output).is_some());
    let expected: alloc::vec::Vec<Leaf> = ram.map(|l| Leaf { attrs: SMMU_RAM, ..l }).collect();
    if found == expected {
        return Ok(());
    }
    let extra = found.iter().find(|l| !expected.contains(l));
    match extra.or_else(|| expected.iter().find(|l| !found.contains(l))) {
        Some(&leaf) => Err(Violation::VmSmmuIso { vmid, leaf }),
        None => Ok(()),
    }
}

/// `smmu_iso` for the host's SMMU table `smmu`: every leaf an identity map of pages the host
/// owns, and together all of them.
fn smmu_iso(m: &impl Machine, mem: &HostMemory, smmu: &PageTable) -> Result<(), Violation> {
    if let Some(pa) = foreign_table_page(m, smmu) {
        return Err(Violation::SmmuTablePage { vmid: super::HOST_SMMU_VMID, pa });
    }
    let leaves = smmu.leaves(m);
    well_formed(&leaves)?;
    let mut mapped = 0;
    for &leaf in &leaves {
        let owned = if leaf.size() == PAGE_SIZE {
            mem.db.get(leaf.output).is_some_and(|p| p.owner == Owner::Host)
        } else {
            mem.db.host_owns_block(leaf.output, leaf.size())
        };
        if leaf.input != leaf.output || leaf.attrs != SMMU_RAM || !owned {
            return Err(Violation::SmmuIso(leaf));
        }
        mapped += leaf.size() / PAGE_SIZE;
    }
    let owned = mem.db.host_pages();
    if mapped != owned {
        return Err(Violation::SmmuIncomplete { mapped, owned });
    }
    Ok(())
}

/// Every table page of a principal's stage-2, its root included, comes from its own pool: no
/// principal's tables can be reached through another's memory.
fn own_pool(m: &impl Machine, principal: u16, table: &PageTable) -> Result<(), Violation> {
    match foreign_table_page(m, table) {
        Some(pa) => Err(Violation::ForeignTablePage { principal, pa }),
        None => Ok(()),
    }
}

/// A table page of `table`, its root included, that is not from its own pool.
fn foreign_table_page(m: &impl Machine, table: &PageTable) -> Option<u64> {
    let pages = core::iter::once(table.root()).chain(table.tables(m).into_iter().map(|(_, _, pa)| pa));
    pages.into_iter().find(|&pa| !table.pool().contains(pa))
}

fn well_formed(leaves: &[Leaf]) -> Result<(), Violation> {
    match leaves.windows(2).find(|w| w[0].input + w[0].size() > w[1].input) {
        Some(w) => Err(Violation::Overlap(w[1])),
        None => Ok(()),
    }
}

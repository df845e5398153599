//! Specs of the memory layers (SeKVM MemRegion, PageIndex, PageManager, MemManager) and of the
//! FaultHandler's `handle_host_stage2_fault`, over [`RData`], the part of SeKVM's abstract state
//! these layers touch. Ownership is checked page by page here, where the implementation uses its
//! per-block counters: the refinement tests compare the two.
//!
//! Issue 15 adds the host's SMMU table (SeKVM's SMMU page tables, layers 9-12) to the state:
//! built from ownership once ([`enable_host_smmu_spec`]), it loses a page in the common step of
//! every transition away from the host ([`take_from_host_spec`]) and gets it back only in
//! [`clear_vm_page_spec`], after the scrub; no other transition touches it. The host's devices
//! reach memory through it ([`device_access_spec`]). A VM with devices assigned to it has an SMMU
//! table ([`attach_vm_smmu_spec`]) that is its stage-2's RAM leaves: `map_pfn_vm` and a 2 MiB
//! block answer add to both, `clear_vm_page` takes from both before the scrub.

use super::pages::{Owner, PageInfo};
use super::{MemError, MAX_SHARE_COUNT, SMMU_RAM};
use crate::machine::PAGE_SIZE;
use crate::page_table::descriptor::{level_size, Attrs, MemType, LAST_LEVEL};
use crate::page_table::spec::{clear_page_spec, map_spec, unmap_spec, walk_spec, AbsNpt};
use crate::page_table::{Leaf, PtError};
use corevisor_boards::PhysRange;
use std::collections::BTreeMap;

/// The host's principal id in [`RData::npts`].
pub const HOST: u16 = 0;

/// The physical address size the ABI promises (docs/hypercalls.md): page frame numbers name
/// pages of a 40-bit physical address space; any other number names no page at all.
pub const PA_BITS: u32 = 40;
/// The guest-physical address space (docs/hypercalls.md, REGISTER_VM: "below 2^39").
pub const GUEST_PA_BITS: u32 = 39;

/// The address of page `pfn`, or `BadPfn` for a number outside the physical address space.
pub fn frame(pfn: u64) -> Result<u64, MemError> {
    if u128::from(pfn) * u128::from(PAGE_SIZE) < 1u128 << PA_BITS {
        Ok(pfn * PAGE_SIZE)
    } else {
        Err(MemError::BadPfn)
    }
}

/// A mirror of SeKVM's `RData`, limited to what corevisor has so far.
///
/// Not yet here (they arrive with the VM layers): VM and vCPU states, boot info, shadow vCPU
/// contexts, the current principal per core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RData {
    pub halt: bool,
    /// MemRegion: RAM.
    pub ram: Vec<PhysRange>,
    /// The MMIO the host may have (allowed ranges, emulated pages, KCore's ranges).
    pub mmio: super::MmioMap,
    /// The host maps 4 KiB pages only.
    pub pages_only: bool,
    /// `s2page`: pfn ↦ {owner, count, gfn}; a RAM page that is not here is `{Host, 0, pfn}`.
    pub s2page: BTreeMap<u64, PageInfo>,
    /// `npts`: principal (0 = host, else the VM id) ↦ its stage-2, abstractly.
    pub npts: BTreeMap<u16, AbsNpt>,
    /// `flatmem`: word address ↦ value (zero where absent).
    pub flatmem: BTreeMap<u64, u64>,
    /// The host's SMMU table, abstractly, once KCore owns an SMMU (`spts` of SeKVM's state,
    /// the host's part): what the host's devices reach.
    pub host_smmu: Option<AbsNpt>,
    /// Each VM's SMMU table, abstractly (`spts`, the VMs' part): what the devices assigned to
    /// it reach.
    pub vm_smmu: BTreeMap<u16, AbsNpt>,
}

type Step<T> = Option<(RData, Result<T, MemError>)>;

impl RData {
    fn is_ram(&self, pa: u64) -> bool {
        self.ram.iter().any(|r| r.contains(pa))
    }

    /// `get_pfn_owner/count/map`: the record of the page at `pa`, `None` outside RAM.
    pub fn page(&self, pa: u64) -> Option<PageInfo> {
        let pfn = pa >> 12;
        self.is_ram(pa)
            .then(|| self.s2page.get(&pfn).copied().unwrap_or(PageInfo { owner: Owner::Host, count: 0, gfn: pfn }))
    }

    fn set_page(&mut self, pa: u64, info: PageInfo) {
        let pfn = pa >> 12;
        if info == (PageInfo { owner: Owner::Host, count: 0, gfn: pfn }) {
            self.s2page.remove(&pfn);
        } else {
            self.s2page.insert(pfn, info);
        }
    }

    /// The issue-11 rule for a Device mapping of `[base, base + size)`: no byte of it is RAM,
    /// it lies wholly inside one range the board and the DT give the host, and no page of it is
    /// emulated by KCore or KCore's own.
    fn host_may_map_mmio(&self, base: u64, size: u64) -> bool {
        let touches = |r: &PhysRange| base < r.end() && r.base < base + size;
        !self.ram.iter().any(touches)
            && self.mmio.allowed.iter().any(|r| r.base <= base && base + size <= r.end())
            && !self.mmio.emulated.iter().any(touches)
            && !self.mmio.protected.iter().any(touches)
            && !self.mmio.guest_only.iter().any(touches)
    }

    /// Why an MMIO fault at `pa` (not RAM) is refused: KCore's, emulated, or not allowed.
    fn mmio_refusal(&self, pa: u64) -> Option<MemError> {
        let page = PhysRange::new(pa & !(PAGE_SIZE - 1), PAGE_SIZE);
        let holds = |r: &PhysRange| page.base < r.end() && r.base < page.end();
        if self.mmio.protected.iter().any(holds) {
            Some(MemError::Protected)
        } else if self.mmio.emulated.iter().any(holds) {
            Some(MemError::Emulated)
        } else if !self.host_may_map_mmio(page.base, PAGE_SIZE) {
            Some(MemError::NotAllowed)
        } else {
            None
        }
    }

    fn host(&self) -> &AbsNpt {
        &self.npts[&HOST]
    }

    fn with_npt(mut self, principal: u16, npt: AbsNpt) -> RData {
        self.npts.insert(principal, npt);
        self
    }
}

/// Whether the host owns every page of `[base, base + size)`, all of it RAM in one region.
pub fn host_owns_block_spec(r: &RData, base: u64, size: u64) -> bool {
    r.ram.iter().any(|reg| base >= reg.base && base + size <= reg.end())
        && r.s2page.range(base >> 12..(base + size) >> 12).all(|(_, p)| p.owner == Owner::Host)
}

/// Maps a host leaf; a slot taken by a mapping of `ipa` answers with that mapping.
fn map_host_leaf_spec(r: &RData, ipa: u64, base: u64, level: u8, attrs: Attrs) -> Step<Leaf> {
    let (npt, result) = map_spec(r.host(), base, base, level, attrs)?;
    let r = r.clone().with_npt(HOST, npt);
    match result {
        Ok(()) => Some((r, Ok(Leaf { input: base, output: base, level, attrs }))),
        Err(PtError::Occupied) => {
            let found = walk_spec(r.host(), ipa).ok_or(MemError::PageTable(PtError::Occupied));
            Some((r, found))
        }
        Err(e) => Some((r, Err(e.into()))),
    }
}

/// `map_page_host` / `handle_host_stage2_fault`.
pub fn map_page_host_spec(r: &RData, ipa: u64) -> Step<Leaf> {
    if r.halt {
        return Some((r.clone(), Err(MemError::Protected)));
    }
    let attrs = match r.page(ipa) {
        Some(p) if p.owner == Owner::Host => Attrs::RAM,
        Some(p) if p.count > 0 => {
            return map_host_leaf_spec(r, ipa, ipa & !(PAGE_SIZE - 1), LAST_LEVEL, Attrs { exec: false, ..Attrs::RAM });
        }
        Some(p) => return Some((r.clone(), Err(MemError::NotOwned(p.owner)))),
        None => match r.mmio_refusal(ipa) {
            Some(refused) => return Some((r.clone(), Err(refused))),
            None => Attrs::DEVICE,
        },
    };
    let levels: &[u8] = if r.pages_only { &[3] } else { &[1, 2, 3] };
    for &level in levels {
        let size = level_size(level);
        let base = ipa & !(size - 1);
        let allowed = match attrs.mem {
            MemType::Normal => host_owns_block_spec(r, base, size),
            MemType::Device => r.host_may_map_mmio(base, size),
        };
        if !allowed {
            continue;
        }
        match map_host_leaf_spec(r, ipa, base, level, attrs)? {
            (_, Err(MemError::PageTable(PtError::Occupied))) if level < LAST_LEVEL => continue,
            step => return Some(step),
        }
    }
    Some((r.clone(), Err(MemError::PageTable(PtError::Occupied))))
}

/// The table pages the host's SMMU table may need at most over RAM `ram` (its root, a level-2
/// table per GiB and a level-3 table per 2 MiB that RAM touches).
pub fn host_smmu_table_pages_spec(ram: &[PhysRange]) -> u64 {
    let slots = |size: u64| ram.iter().map(|r| r.end().div_ceil(size) - r.base / size).sum::<u64>();
    1 + slots(level_size(1)) + slots(level_size(2))
}

/// `enable_host_smmu` (SeKVM `init_spt` and `map_spt` for the host), with a pool of
/// `pool_pages`: the host's SMMU table maps every page the host owns at its own address, as one
/// 2 MiB block where the host owns a whole aligned 2 MiB of one region, page by page elsewhere;
/// its tables are those these leaves need. Refused, unchanged, if the host has one, or if the
/// pool is smaller than [`host_smmu_table_pages_spec`].
pub fn enable_host_smmu_spec(r: &RData, pool_pages: u64) -> Step<()> {
    if r.host_smmu.is_some() {
        return Some((r.clone(), Err(MemError::PageTable(PtError::Occupied))));
    }
    if pool_pages < host_smmu_table_pages_spec(&r.ram) {
        return Some((r.clone(), Err(MemError::PageTable(PtError::PoolExhausted))));
    }
    let mut npt = AbsNpt::default();
    let block = level_size(2);
    for region in &r.ram {
        let mut pa = region.base;
        while pa < region.end() {
            let level = if pa.is_multiple_of(block) && host_owns_block_spec(r, pa, block) {
                2
            } else if r.page(pa).is_some_and(|p| p.owner == Owner::Host) {
                LAST_LEVEL
            } else {
                pa += PAGE_SIZE;
                continue;
            };
            npt.leaves.insert(pa, (pa, level, SMMU_RAM));
            npt.tables.insert((2, pa & !(level_size(1) - 1)));
            if level == LAST_LEVEL {
                npt.tables.insert((3, pa & !(block - 1)));
            }
            pa += level_size(level);
        }
    }
    npt.free = pool_pages - 1 - npt.tables.len() as u64;
    let mut next = r.clone();
    next.host_smmu = Some(npt);
    Some((next, Ok(())))
}

/// `attach_vm_smmu`: VM `vmid`'s SMMU table, from a pool of `pool_pages`, holds the RAM leaves
/// of its stage-2 at the same guest addresses and levels, and the tables they need. Refused,
/// unchanged, if the VM has one, or if the pool is smaller than its stage-2's pool.
pub fn attach_vm_smmu_spec(r: &RData, vmid: u16, pool_pages: u64) -> Step<()> {
    let refuse = |e| Some((r.clone(), Err(MemError::PageTable(e))));
    let stage2 = &r.npts[&vmid];
    if r.vm_smmu.contains_key(&vmid) {
        return refuse(PtError::Occupied);
    }
    if pool_pages < stage2.free + 1 + stage2.tables.len() as u64 {
        return refuse(PtError::PoolExhausted);
    }
    let mut npt = AbsNpt::default();
    for (&gpa, &(pa, level, _)) in stage2.leaves.iter().filter(|(_, (pa, _, _))| r.page(*pa).is_some()) {
        npt.leaves.insert(gpa, (pa, level, SMMU_RAM));
        for table_level in 2..=level {
            npt.tables.insert((table_level, gpa & !(level_size(table_level - 1) - 1)));
        }
    }
    npt.free = pool_pages - 1 - npt.tables.len() as u64;
    let mut next = r.clone();
    next.vm_smmu.insert(vmid, npt);
    Some((next, Ok(())))
}

/// Maps RAM `[gpa, gpa + level_size(level))` at `pa` for VM `vmid`: in its stage-2 and, if it
/// has one, its SMMU table, or (refused) in neither; the SMMU table is tried first.
fn map_vm_ram_spec(r: &RData, vmid: u16, gpa: u64, pa: u64, level: u8) -> Step<()> {
    let smmu = match vm_smmu_mapped(r, vmid, gpa, pa, level)? {
        Ok(smmu) => smmu,
        Err(e) => return Some((r.clone(), Err(e))),
    };
    let (npt, mapped) = map_spec(&r.npts[&vmid], gpa, pa, level, Attrs::RAM)?;
    let mut next = r.clone().with_npt(vmid, npt);
    if let Err(e) = mapped {
        return Some((next, Err(e.into())));
    }
    if let Some(smmu) = smmu {
        next.vm_smmu.insert(vmid, smmu);
    }
    Some((next, Ok(())))
}

/// VM `vmid`'s SMMU table with RAM `[gpa, gpa + level_size(level))` mapped at `pa`; `Ok(None)`
/// if the VM has no SMMU table, an error if the mapping cannot go there.
fn vm_smmu_mapped(r: &RData, vmid: u16, gpa: u64, pa: u64, level: u8) -> Option<Result<Option<AbsNpt>, MemError>> {
    let Some(smmu) = r.vm_smmu.get(&vmid) else { return Some(Ok(None)) };
    let (smmu, mapped) = map_spec(smmu, gpa, pa, level, SMMU_RAM)?;
    Some(mapped.map(|()| Some(smmu)).map_err(MemError::from))
}

/// The common step of every transition away from the host (`clear_pfn_host`, then the owner).
/// The host's devices lose the page too: it leaves the host's SMMU table (split out of its
/// block) before the owner changes.
fn take_from_host_spec(r: &RData, pa: u64, owner: Owner, gfn: u64) -> Step<()> {
    let page = match r.page(pa) {
        None => return Some((r.clone(), Err(MemError::NotRam))),
        Some(p) if p.owner != Owner::Host => return Some((r.clone(), Err(MemError::NotOwned(p.owner)))),
        Some(p) if p.count > 0 => return Some((r.clone(), Err(MemError::Shared))),
        Some(p) => p,
    };
    let _ = page;
    let (npt, cleared) = clear_page_spec(r.host(), pa)?;
    let mut next = r.clone().with_npt(HOST, npt);
    if let Err(e) = cleared {
        return Some((next, Err(e.into())));
    }
    if let Some(smmu) = &r.host_smmu {
        let (smmu, cleared) = clear_page_spec(smmu, pa)?;
        next.host_smmu = Some(smmu);
        if let Err(e) = cleared {
            return Some((next, Err(e.into())));
        }
    }
    next.set_page(pa, PageInfo { owner, count: 0, gfn });
    Some((next, Ok(())))
}

/// `protect_el2_mem`.
pub fn give_to_kcore_spec(r: &RData, range: PhysRange) -> Step<()> {
    let mut state = r.clone();
    for pa in (range.base..range.end()).step_by(PAGE_SIZE as usize) {
        match take_from_host_spec(&state, pa, Owner::KCore, pa >> 12)? {
            (next, Ok(())) => state = next,
            (next, Err(e)) => return Some((next, Err(e))),
        }
    }
    Some((state, Ok(())))
}

/// `assign_pfn_to_vm`.
pub fn assign_pfn_to_vm_spec(r: &RData, vmid: u16, gfn: u64, pfn: u64) -> Step<()> {
    let pa = match frame(pfn) {
        Ok(pa) => pa,
        Err(e) => return Some((r.clone(), Err(e))),
    };
    match r.page(pa) {
        Some(p) if p.owner == Owner::Vm(vmid) && p.gfn == gfn => Some((r.clone(), Ok(()))),
        _ => take_from_host_spec(r, pa, Owner::Vm(vmid), gfn),
    }
}

/// `clear_vm_page`: the VM's mapping of the page goes, the page is scrubbed and returned to the
/// host (unmapped from the host first if it was shared); the host's SMMU table maps it again,
/// after the scrub (a refusal there leaves the page the VM's, scrubbed).
pub fn clear_vm_page_spec(r: &RData, vmid: u16, pfn: u64) -> Step<()> {
    let pa = match frame(pfn) {
        Ok(pa) => pa,
        Err(e) => return Some((r.clone(), Err(e))),
    };
    let page = match r.page(pa) {
        None => return Some((r.clone(), Err(MemError::NotRam))),
        Some(p) if p.owner != Owner::Vm(vmid) => return Some((r.clone(), Err(MemError::NotOwned(p.owner)))),
        Some(p) => p,
    };
    let mut next = r.clone();
    let gpa = page.gfn << 12;
    match walk_spec(&r.npts[&vmid], gpa) {
        Some(leaf) if leaf.translate(gpa) == pa && leaf.level == LAST_LEVEL => {
            let (npt, cleared) = clear_page_spec(&r.npts[&vmid], gpa)?;
            next = next.with_npt(vmid, npt);
            if let Err(e) = cleared {
                return Some((next, Err(e.into())));
            }
        }
        // Issue 13: a page of a 2 MiB block takes the whole block out of the VM's stage-2 (no
        // split: teardown must not need a table page per block).
        Some(leaf) if leaf.translate(gpa) == pa => {
            let (npt, _) = unmap_spec(&r.npts[&vmid], gpa)?;
            next = next.with_npt(vmid, npt);
        }
        _ => {}
    }
    // The VM's devices lose the page with its CPUs, before the scrub.
    if let Some(smmu) = r.vm_smmu.get(&vmid) {
        if walk_spec(smmu, gpa).is_some_and(|leaf| leaf.translate(gpa) == pa) {
            next.vm_smmu.insert(vmid, unmap_spec(smmu, gpa)?.0);
        }
    }
    if page.count > 0 {
        let (npt, cleared) = clear_page_spec(next.host(), pa)?;
        next = next.with_npt(HOST, npt);
        if let Err(e) = cleared {
            return Some((next, Err(e.into())));
        }
    }
    let words: Vec<u64> = next.flatmem.range(pa..pa + PAGE_SIZE).map(|(&a, _)| a).collect();
    words.into_iter().for_each(|a| {
        next.flatmem.remove(&a);
    });
    if let Some(smmu) = &next.host_smmu {
        let (smmu, mapped) = map_spec(smmu, pa, pa, LAST_LEVEL, SMMU_RAM)?;
        next.host_smmu = Some(smmu);
        if let Err(e) = mapped {
            return Some((next, Err(e.into())));
        }
    }
    next.set_page(pa, PageInfo { owner: Owner::Host, count: 0, gfn: pfn });
    Some((next, Ok(())))
}

/// `grant_vm_page`.
pub fn grant_vm_page_spec(r: &RData, vmid: u16, pfn: u64) -> Step<()> {
    let pa = match frame(pfn) {
        Ok(pa) => pa,
        Err(e) => return Some((r.clone(), Err(e))),
    };
    match r.page(pa) {
        None => Some((r.clone(), Err(MemError::NotRam))),
        Some(p) if p.owner != Owner::Vm(vmid) => Some((r.clone(), Err(MemError::NotOwned(p.owner)))),
        Some(p) if p.count >= MAX_SHARE_COUNT => Some((r.clone(), Err(MemError::ShareLimit))),
        Some(p) => {
            let mut next = r.clone();
            next.set_page(pa, PageInfo { count: p.count + 1, ..p });
            Some((next, Ok(())))
        }
    }
}

/// `revoke_vm_page`: at zero shares the host loses its mapping (and the page is cleaned and
/// invalidated if, and only if, [`last_share_owes_clean`]).
pub fn revoke_vm_page_spec(r: &RData, vmid: u16, pfn: u64) -> Step<()> {
    let pa = match frame(pfn) {
        Ok(pa) => pa,
        Err(e) => return Some((r.clone(), Err(e))),
    };
    let page = match r.page(pa) {
        None => return Some((r.clone(), Err(MemError::NotRam))),
        Some(p) if p.owner != Owner::Vm(vmid) => return Some((r.clone(), Err(MemError::NotOwned(p.owner)))),
        Some(p) if p.count == 0 => return Some((r.clone(), Err(MemError::NotShared))),
        Some(p) => p,
    };
    let mut next = r.clone();
    if page.count == 1 {
        let (npt, cleared) = clear_page_spec(r.host(), pa)?;
        next = next.with_npt(HOST, npt);
        if let Err(e) = cleared {
            return Some((next, Err(e.into())));
        }
    }
    next.set_page(pa, PageInfo { count: page.count - 1, ..page });
    Some((next, Ok(())))
}

/// The cache rule of the host's last share (issue 12, docs/cache-coherency.md "The last
/// share"): taking it back owes a clean and invalidate of the page to the point of coherency
/// exactly when the host's stage-2 maps the page in `r`, the state before. A page becomes a
/// VM's with no line in any cache (cleaned at the hand-over), the host can allocate lines only
/// through a stage-2 mapping, it gets one only while the page is shared, and the end of every
/// share period that had one cleans; so without a mapping now the host holds no line of it.
pub fn last_share_owes_clean(r: &RData, pa: u64) -> bool {
    r.page(pa).is_some_and(|p| matches!(p.owner, Owner::Vm(_)) && p.count == 1) && walk_spec(r.host(), pa).is_some()
}

/// `map_pfn_vm`.
pub fn map_pfn_vm_spec(r: &RData, vmid: u16, gfn: u64, pfn: u64) -> Step<()> {
    let pa = match frame(pfn) {
        Ok(pa) => pa,
        Err(e) => return Some((r.clone(), Err(e))),
    };
    match r.page(pa) {
        None => Some((r.clone(), Err(MemError::NotRam))),
        Some(p) if p.owner != Owner::Vm(vmid) || p.gfn != gfn => Some((r.clone(), Err(MemError::NotOwned(p.owner)))),
        Some(_) => map_vm_ram_spec(r, vmid, gfn << 12, pa, LAST_LEVEL),
    }
}

/// `map_vm_io`: the MMIO the host may map, or a page of the guest-only MMIO (the GICv2 virtual
/// CPU interface), which only VMs get.
pub fn map_vm_io_spec(r: &RData, vmid: u16, gpa: u64, pa: u64) -> Step<()> {
    if r.page(pa).is_some() {
        return Some((r.clone(), Err(MemError::IsRam)));
    }
    let guest_only = r.mmio.guest_only.iter().any(|g| g.base <= pa && pa < g.end());
    if let Some(refused) = r.mmio_refusal(pa).filter(|_| !guest_only) {
        return Some((r.clone(), Err(refused)));
    }
    map_vm_leaf_spec(r, vmid, gpa & !(PAGE_SIZE - 1), pa & !(PAGE_SIZE - 1), Attrs::DEVICE)
}

fn map_vm_leaf_spec(r: &RData, vmid: u16, gpa: u64, pa: u64, attrs: Attrs) -> Step<()> {
    let (npt, result) = map_spec(&r.npts[&vmid], gpa, pa, LAST_LEVEL, attrs)?;
    Some((r.clone().with_npt(vmid, npt), result.map_err(MemError::from)))
}

/// What a principal's access did: the value read (0 for a store), or an abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Done(u64),
    /// The host's access was refused: an external abort.
    Abort,
    /// A VM's access missed its stage-2: an exit to the host, no access.
    Exit,
}

/// SeKVM's `mem_load`/`mem_store` by the host: through its stage-2, faulting in on a miss.
pub fn host_access_spec(r: &RData, pa: u64, store: Option<u64>) -> Option<(RData, Access)> {
    let (next, mapped) = match walk_spec(r.host(), pa) {
        Some(_) => (r.clone(), true),
        None => {
            let (next, result) = map_page_host_spec(r, pa)?;
            let ok = result.is_ok();
            (next, ok)
        }
    };
    if !mapped {
        return Some((next, Access::Abort));
    }
    Some(access_flatmem(next, pa, store))
}

/// A load (`store` = None) or store of the word at `pa` in the spec's memory.
fn access_flatmem(mut r: RData, pa: u64, store: Option<u64>) -> (RData, Access) {
    match store {
        Some(0) => {
            r.flatmem.remove(&pa);
            (r, Access::Done(0))
        }
        Some(v) => {
            r.flatmem.insert(pa, v);
            (r, Access::Done(0))
        }
        None => {
            let v = r.flatmem.get(&pa).copied().unwrap_or(0);
            (r, Access::Done(v))
        }
    }
}

/// SeKVM's `dev_load`/`dev_store` by a device of the host's: through the host's SMMU table,
/// at the page's own address. A miss aborts (the SMMU records a fault event; a device does not
/// retry), and without an SMMU that KCore owns the host has no device that masters DMA (the
/// board refuses them to the host, issue 11): nothing is accessed either way.
pub fn device_access_spec(r: &RData, pa: u64, store: Option<u64>) -> Option<(RData, Access)> {
    match r.host_smmu.as_ref().and_then(|smmu| walk_spec(smmu, pa)) {
        Some(leaf) => Some(access_flatmem(r.clone(), leaf.translate(pa), store)),
        None => Some((r.clone(), Access::Abort)),
    }
}

/// A DMA load or store by a device assigned to VM `vmid`, at guest address `gpa`: through the
/// VM's SMMU table; a miss aborts, and so does every access while the VM has none.
pub fn vm_device_access_spec(r: &RData, vmid: u16, gpa: u64, store: Option<u64>) -> Option<(RData, Access)> {
    match r.vm_smmu.get(&vmid).and_then(|smmu| walk_spec(smmu, gpa)) {
        Some(leaf) => Some(access_flatmem(r.clone(), leaf.translate(gpa), store)),
        None => Some((r.clone(), Access::Abort)),
    }
}

/// A VM's load or store through its own stage-2; a miss exits to the host.
pub fn vm_access_spec(r: &RData, vmid: u16, gpa: u64, store: Option<u64>) -> Option<(RData, Access)> {
    let Some(leaf) = walk_spec(&r.npts[&vmid], gpa) else { return Some((r.clone(), Access::Exit)) };
    Some(access_flatmem(r.clone(), leaf.translate(gpa), store))
}

/// `clear_vm_range`: the pages come back in order; the count of those returned. A range with a
/// page outside the physical address space names pages that do not exist: refused whole.
pub fn clear_vm_range_spec(r: &RData, vmid: u16, pfn: u64, pages: u64) -> Step<u64> {
    let last = u128::from(pfn) + u128::from(pages) - 1;
    if pages > 0 && last >= 1u128 << (PA_BITS - 12) {
        return Some((r.clone(), Err(MemError::BadPfn)));
    }
    clear_vm_pages_spec(r, vmid, pfn..pfn + pages)
}

/// `clear_vm_page` on every page of `pfns` that VM `vmid` owns, in order, stopping at the first
/// error; the count of pages returned.
pub fn clear_vm_pages_spec(r: &RData, vmid: u16, pfns: impl Iterator<Item = u64>) -> Step<u64> {
    let mut state = r.clone();
    let mut returned = 0;
    for pfn in pfns {
        if state.page(pfn << 12).is_some_and(|p| p.owner == Owner::Vm(vmid)) {
            match clear_vm_page_spec(&state, vmid, pfn)? {
                (next, Ok(())) => state = next,
                (next, Err(e)) => return Some((next, Err(e))),
            }
            returned += 1;
        }
    }
    Some((state, Ok(returned)))
}

/// `prot_and_map_vm_s2pt`.
pub fn prot_and_map_vm_s2pt_spec(r: &RData, vmid: u16, gfn: u64, pfn: u64, level: u8) -> Step<()> {
    match level {
        3 => match assign_pfn_to_vm_spec(r, vmid, gfn, pfn)? {
            (next, Ok(())) => map_pfn_vm_spec(&next, vmid, gfn, pfn),
            failed => Some(failed),
        },
        2 if gfn.is_multiple_of(512) && pfn.is_multiple_of(512) => give_vm_block_spec(r, vmid, gfn, pfn),
        _ => Some((r.clone(), Err(MemError::PageTable(PtError::BadRange)))),
    }
}

/// `grant_stage2_sg_gpa` (`revoke` = false) and `revoke_stage2_sg_gpa` (`revoke` = true): the
/// page-level call on every page of the range that the VM maps, as one call. From the ABI
/// (SET_DESC_PFN / UNSET_DESC_PFN, issue 11 finding 7): all or nothing. If the page-level call
/// would refuse any of the pages, the range call is refused with the reason of the first such
/// page in address order and the state is as before; otherwise every page changes. A range
/// that reaches past the guest-physical address space (2^39: REGISTER_VM's bound) is refused.
pub fn share_range_spec(r: &RData, vmid: u16, gpa: u64, size: u64, revoke: bool) -> Step<()> {
    let page_call = |state: &RData, pfn: u64| {
        if revoke {
            revoke_vm_page_spec(state, vmid, pfn)
        } else {
            grant_vm_page_spec(state, vmid, pfn)
        }
    };
    if u128::from(gpa) + u128::from(size) > 1 << GUEST_PA_BITS {
        return Some((r.clone(), Err(MemError::PageTable(PtError::BadRange))));
    }
    let first = gpa - gpa % PAGE_SIZE;
    let frames: Vec<u64> = (first..gpa + size)
        .step_by(PAGE_SIZE as usize)
        .filter_map(|page| walk_spec(&r.npts[&vmid], page).map(|leaf| leaf.translate(page) / PAGE_SIZE))
        .collect();
    for &pfn in &frames {
        if let (_, Err(e)) = page_call(r, pfn)? {
            return Some((r.clone(), Err(e)));
        }
    }
    let mut state = r.clone();
    for pfn in frames {
        let (next, result) = page_call(&state, pfn)?;
        // Checked above on the state before the call; a page is mapped once, so it still holds.
        result.ok()?;
        state = next;
    }
    Some((state, Ok(())))
}

/// A 2 MiB block for VM `vmid` (issue 13, the PAGE_ANSWER_BLOCK answer): the 512 host pages from
/// the aligned `pfn` become the VM's at the aligned `gfn` onwards, each scrubbed, and the VM's
/// stage-2 maps them as one level-2 block. All or nothing: if a page of the run is outside the
/// physical address space, not RAM or not the host's (the first such page in order names the
/// reason), if the run is not wholly inside one RAM region, or if the block could not be
/// mapped there (a page of the gfn block mapped, a table in the slot, no table page left), the
/// state is as before.
pub fn give_vm_block_spec(r: &RData, vmid: u16, gfn: u64, pfn: u64) -> Step<()> {
    let refuse = |e| Some((r.clone(), Err(e)));
    let pa = match frame(pfn).and_then(|pa| frame(pfn + 511).map(|_| pa)) {
        Ok(pa) => pa,
        Err(e) => return refuse(e),
    };
    let size = 512 * PAGE_SIZE;
    for at in (pa..pa + size).step_by(PAGE_SIZE as usize) {
        match r.page(at) {
            None => return refuse(MemError::NotRam),
            Some(p) if p.owner != Owner::Host => return refuse(MemError::NotOwned(p.owner)),
            Some(_) => {}
        }
    }
    if !r.ram.iter().any(|reg| pa >= reg.base && pa + size <= reg.end()) {
        return refuse(MemError::NotRam);
    }
    let (npt, mapped) = map_spec(&r.npts[&vmid], gfn << 12, pa, 2, Attrs::RAM)?;
    if let Err(e) = mapped {
        return refuse(e.into());
    }
    let smmu = match vm_smmu_mapped(r, vmid, gfn << 12, pa, 2)? {
        Ok(smmu) => smmu,
        Err(e) => return refuse(e),
    };
    // Each page leaves the host's stage-2 and SMMU table as any page taken from the host does;
    // with an SMMU, the host's stage-2 first splits for the run (the first page's step), and
    // the SMMU's block, if it is one, goes whole.
    let mut next = r.clone();
    if let Some(smmu) = &r.host_smmu {
        let (host, cleared) = clear_page_spec(r.host(), pa)?;
        next = next.with_npt(HOST, host);
        if let Err(e) = cleared {
            return Some((next, Err(e.into())));
        }
        if walk_spec(smmu, pa).is_some_and(|leaf| leaf.level == 2 && leaf.input == pa) {
            next.host_smmu = Some(unmap_spec(smmu, pa)?.0);
        }
    }
    for i in 0..512 {
        match take_from_host_spec(&next, pa + i * PAGE_SIZE, Owner::Vm(vmid), gfn + i)? {
            (taken, Ok(())) => next = taken,
            failed => return Some(failed),
        }
    }
    let words: Vec<u64> = next.flatmem.range(pa..pa + size).map(|(&a, _)| a).collect();
    words.into_iter().for_each(|a| {
        next.flatmem.remove(&a);
    });
    if let Some(smmu) = smmu {
        next.vm_smmu.insert(vmid, smmu);
    }
    Some((next.with_npt(vmid, npt), Ok(())))
}

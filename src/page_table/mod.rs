//! Page tables (SeKVM layers 5-8: PTAlloc, PTWalk, NPTWalk, NPTOps): walking, mapping,
//! unmapping and splitting 4 KiB-granule tables, with break-before-make and TLB maintenance by
//! VMID. The same code builds every stage-2 table (host and VMs) and KCore's own EL2 stage-1.
//!
//! Tables start at level 1 (39-bit input addresses) and map 1 GiB blocks at level 1, 2 MiB blocks
//! at level 2 and 4 KiB pages at level 3. Every operation either succeeds or leaves the
//! translation the table describes unchanged: an exhausted pool is an error, never a torn table.

pub mod descriptor;
pub mod pool;
#[cfg(test)]
pub mod spec;
#[cfg(test)]
mod tests;

use crate::machine::Machine;
use crate::mutation::{planted, Mutation};
use descriptor::{decode, index, leaf, level_size, table, Attrs, Entry, Regime, FIRST_LEVEL, INPUT_LIMIT, LAST_LEVEL};
use pool::{PagePool, PoolExhausted};

/// Why a page-table operation was refused. The table is unchanged in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtError {
    /// No page left in the principal's pool for a table.
    PoolExhausted,
    /// Address or level not aligned to the mapping size, or outside the input range.
    BadRange,
    /// Something is already mapped (a leaf or a table) where the mapping would go.
    Occupied,
    /// Nothing is mapped there.
    NotMapped,
}

impl From<PoolExhausted> for PtError {
    fn from(_: PoolExhausted) -> PtError {
        PtError::PoolExhausted
    }
}

/// A leaf translation: the block or page that covers an input address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Input address where the leaf starts.
    pub input: u64,
    /// Output address where it starts.
    pub output: u64,
    pub level: u8,
    pub attrs: Attrs,
}

impl Leaf {
    pub fn size(&self) -> u64 {
        level_size(self.level)
    }
    /// The output address of `input`, which this leaf covers.
    pub fn translate(&self, input: u64) -> u64 {
        self.output + (input - self.input)
    }
}

/// Levels-1 entries whose GiB is mapped with 2 MiB blocks by [`identity_map`]: the first 4 GiB,
/// where RAM and devices meet (the Pi's peripherals start at 0xFC00_0000). Above, 1 GiB blocks.
pub const IDENTITY_FINE_GIB: u64 = 4;
/// Pool pages [`identity_map`] uses: the root and one level-2 table per fine GiB.
pub const IDENTITY_MAP_PAGES: u64 = 1 + IDENTITY_FINE_GIB;

/// KCore's own EL2 stage-1 at boot: an identity map of the whole input range, Normal memory where
/// `is_ram` says RAM may be and Device (never executable) elsewhere. It uses no lock and no heap,
/// so it runs with the MMU off; its root is the pool's first page.
pub fn identity_map(
    machine: &impl Machine,
    pool: PagePool,
    is_ram: impl Fn(u64) -> bool,
) -> Result<PageTable, PtError> {
    let mut table = PageTable::new(machine, Regime::El2, pool)?;
    let attrs = |pa| if is_ram(pa) { Attrs::RAM } else { Attrs::DEVICE };
    for gib in 0..INPUT_LIMIT / level_size(1) {
        let base = gib * level_size(1);
        if gib < IDENTITY_FINE_GIB {
            for block in (base..base + level_size(1)).step_by(level_size(2) as usize) {
                table.map(machine, block, block, 2, attrs(block))?;
            }
        } else {
            table.map(machine, base, base, 1, attrs(base))?;
        }
    }
    Ok(table)
}

/// One principal's translation table and the pool its table pages come from.
pub struct PageTable {
    regime: Regime,
    root: u64,
    pool: PagePool,
}

/// Where a walk stopped: the entry's physical address, its level, and what it holds.
struct Slot {
    at: u64,
    level: u8,
    entry: Entry,
}

impl PageTable {
    /// An empty table whose root comes from `pool`.
    pub fn new(machine: &impl Machine, regime: Regime, mut pool: PagePool) -> Result<PageTable, PtError> {
        let root = pool.alloc(machine)?;
        Ok(PageTable { regime, root, pool })
    }

    /// The root table's physical address (for TTBR/VTTBR).
    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn pool(&self) -> &PagePool {
        &self.pool
    }

    /// Follows the table towards `addr`, stopping at the first leaf, invalid entry, or `stop`.
    fn descend(&self, machine: &impl Machine, addr: u64, stop: u8) -> Slot {
        let mut base = self.root;
        let mut level = FIRST_LEVEL;
        loop {
            let at = base + index(addr, level) * 8;
            let entry = decode(self.regime, level, machine.read_u64(at));
            match entry {
                Entry::Table(next) if level < stop => {
                    base = next;
                    level += 1;
                }
                _ => return Slot { at, level, entry },
            }
        }
    }

    /// The leaf that translates `addr`, if any (SeKVM `walk_npt`).
    pub fn walk(&self, machine: &impl Machine, addr: u64) -> Option<Leaf> {
        if addr >= INPUT_LIMIT {
            return None;
        }
        match self.descend(machine, addr, LAST_LEVEL) {
            Slot { level, entry: Entry::Leaf(output, attrs), .. } => {
                Some(Leaf { input: addr & !(level_size(level) - 1), output, level, attrs })
            }
            _ => None,
        }
    }

    /// The physical address `addr` translates to, if anything maps it: [`walk`](Self::walk)
    /// without building the leaf, for the share calls' hot path (`cargo xtask bench`).
    #[inline(always)]
    pub fn output_of(&self, machine: &impl Machine, addr: u64) -> Option<u64> {
        if addr >= INPUT_LIMIT {
            return None;
        }
        match self.descend(machine, addr, LAST_LEVEL) {
            Slot { level, entry: Entry::Leaf(output, _), .. } => Some(output | addr & (level_size(level) - 1)),
            _ => None,
        }
    }

    /// Maps `[addr, addr + level_size(level))` to `pa` (SeKVM `set_npt`/`map_s2pt`). The slot
    /// must be empty: nothing may be mapped there, and no table may hang there.
    pub fn map(&mut self, machine: &impl Machine, addr: u64, pa: u64, level: u8, attrs: Attrs) -> Result<(), PtError> {
        self.map_leaf(machine, addr, pa, level, attrs).map(|_| ())
    }

    /// [`map`](Self::map), returning the new leaf. Inlined: it is the host stage-2 fault's hot
    /// path (`cargo xtask bench`).
    #[inline(always)]
    pub fn map_leaf(
        &mut self,
        machine: &impl Machine,
        addr: u64,
        pa: u64,
        level: u8,
        attrs: Attrs,
    ) -> Result<Leaf, PtError> {
        let slot = self.map_slot(machine, addr, pa, level)?;
        let mut at = slot.at;
        for table_level in slot.level..level {
            let next = self.pool.alloc(machine)?;
            machine.publish();
            machine.write_u64(at, table(next));
            at = next + index(addr, table_level + 1) * 8;
        }
        machine.publish();
        machine.write_u64(at, leaf(self.regime, level, pa, attrs));
        machine.publish();
        Ok(Leaf { input: addr, output: pa, level, attrs })
    }

    /// Whether [`map`](Self::map) of the same arguments would succeed, without changing anything:
    /// for callers that must know before they commit to anything else (a 2 MiB block given to a
    /// VM).
    pub fn can_map(&self, machine: &impl Machine, addr: u64, pa: u64, level: u8) -> Result<(), PtError> {
        self.map_slot(machine, addr, pa, level).map(drop)
    }

    /// [`map`](Self::map)'s checks, before it allocates anything (a refused map must not consume
    /// pool pages): the slot where the walk stops, if the mapping may go there.
    #[inline(always)]
    fn map_slot(&self, machine: &impl Machine, addr: u64, pa: u64, level: u8) -> Result<Slot, PtError> {
        if !(FIRST_LEVEL..=LAST_LEVEL).contains(&level) {
            return Err(PtError::BadRange);
        }
        let size = level_size(level);
        if !addr.is_multiple_of(size)
            || !pa.is_multiple_of(size)
            || addr >= INPUT_LIMIT
            || pa >= descriptor::OUTPUT_LIMIT
        {
            return Err(PtError::BadRange);
        }
        let slot = self.descend(machine, addr, level);
        match slot.entry {
            Entry::Leaf(..) => return Err(PtError::Occupied),
            Entry::Table(_) if slot.level == level => return Err(PtError::Occupied),
            _ => {}
        }
        if self.pool.free() < (level - slot.level) as u64 {
            return Err(PtError::PoolExhausted);
        }
        Ok(slot)
    }

    /// Removes the leaf that translates `addr` (the whole block), with break-before-make, and
    /// returns it.
    pub fn unmap(&mut self, machine: &impl Machine, addr: u64) -> Result<Leaf, PtError> {
        let found = self.walk(machine, addr).ok_or(PtError::NotMapped)?;
        let slot = self.descend(machine, addr, LAST_LEVEL);
        self.break_entry(machine, slot.at, found.input);
        Ok(found)
    }

    /// Replaces the block that translates `addr` by a next-level table of blocks (or pages) with
    /// the same output and attributes. Translation is unchanged; the TLB is flushed between the
    /// break and the make.
    pub fn split(&mut self, machine: &impl Machine, addr: u64) -> Result<(), PtError> {
        let found = self.walk(machine, addr).ok_or(PtError::NotMapped)?;
        if found.level == LAST_LEVEL {
            return Err(PtError::BadRange);
        }
        let next = self.pool.alloc(machine)?;
        let child = found.level + 1;
        for i in 0..512 {
            let shift = if i == 511 && planted(Mutation::SplitShiftsLastPage) { level_size(LAST_LEVEL) } else { 0 };
            let entry = leaf(self.regime, child, found.output + i * level_size(child) + shift, found.attrs);
            machine.write_u64(next + i * 8, entry);
        }
        let slot = self.descend(machine, addr, LAST_LEVEL);
        self.break_entry(machine, slot.at, found.input);
        machine.write_u64(slot.at, table(next));
        machine.publish();
        Ok(())
    }

    /// Makes sure the 4 KiB page at `addr` is not mapped, splitting any block around it so the
    /// rest stays mapped (SeKVM `clear_pfn_host`). Returns whether it had been mapped.
    pub fn clear_page(&mut self, machine: &impl Machine, addr: u64) -> Result<bool, PtError> {
        let addr = addr & !0xfff;
        loop {
            match self.walk(machine, addr) {
                None => return Ok(false),
                Some(found) if found.level == LAST_LEVEL => {
                    self.unmap(machine, addr)?;
                    return Ok(true);
                }
                Some(_) => self.split(machine, addr)?,
            }
        }
    }

    /// Break: invalidate the entry, then flush the TLB for the input address it mapped.
    fn break_entry(&self, machine: &impl Machine, at: u64, input: u64) {
        machine.write_u64(at, 0);
        match self.regime {
            Regime::Stage2 { .. } if planted(Mutation::MissingTlbInvalidation) => {}
            Regime::Stage2 { vmid } => machine.flush_stage2_ipa(vmid, input),
            Regime::Smmu { .. } if planted(Mutation::MissingSmmuTlbInvalidation) => {}
            Regime::Smmu { vmid } => machine.smmu_flush_ipa(vmid, input),
            Regime::El2 => machine.flush_el2_all(),
        }
    }

    /// Every leaf, in input-address order (the abstraction used by the specs and the invariant
    /// checker).
    pub fn leaves(&self, machine: &impl Machine) -> alloc::vec::Vec<Leaf> {
        let mut out = alloc::vec::Vec::new();
        self.collect(machine, self.root, FIRST_LEVEL, 0, &mut out);
        out
    }

    fn collect(&self, machine: &impl Machine, base: u64, level: u8, input: u64, out: &mut alloc::vec::Vec<Leaf>) {
        self.visit(machine, base, level, input, &mut |leaf| out.push(leaf), &mut |_, _, _| {});
    }

    /// Every table below the root as `(level, first input address, physical address)`.
    pub fn tables(&self, machine: &impl Machine) -> alloc::vec::Vec<(u8, u64, u64)> {
        let mut out = alloc::vec::Vec::new();
        self.visit(machine, self.root, FIRST_LEVEL, 0, &mut |_| {}, &mut |level, input, pa| {
            out.push((level, input, pa))
        });
        out
    }

    fn visit(
        &self,
        machine: &impl Machine,
        base: u64,
        level: u8,
        input: u64,
        on_leaf: &mut dyn FnMut(Leaf),
        on_table: &mut dyn FnMut(u8, u64, u64),
    ) {
        for i in 0..512 {
            let addr = input + i * level_size(level);
            match decode(self.regime, level, machine.read_u64(base + i * 8)) {
                Entry::Invalid => {}
                Entry::Table(next) => {
                    on_table(level + 1, addr, next);
                    self.visit(machine, next, level + 1, addr, on_leaf, on_table);
                }
                Entry::Leaf(output, attrs) => on_leaf(Leaf { input: addr, output, level, attrs }),
            }
        }
    }
}

//! Specs of the page-table layers (SeKVM PTAlloc/PTWalk/NPTWalk/NPTOps) over the abstract view
//! SeKVM's `relate_npt` relates the concrete pools to: the leaves `gfn ↦ (pfn, level, attrs)`,
//! the set of tables present (SeKVM's `pgd_t/pud_t/pmd_t`), and the pool's free pages. Each spec
//! is a pure function in SeKVM's style, `Option<(state, result)>`; `None` would mark a broken
//! caller precondition, and none of these has one: every bad argument is an error result.

use super::descriptor::{level_size, Attrs, FIRST_LEVEL, INPUT_LIMIT, LAST_LEVEL, OUTPUT_LIMIT};
use super::{Leaf, PageTable, PtError};
use crate::machine::Machine;
use std::collections::{BTreeMap, BTreeSet};

/// One translation table, abstractly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AbsNpt {
    /// Leaf start ↦ (output, level, attributes).
    pub leaves: BTreeMap<u64, (u64, u8, Attrs)>,
    /// `(level, first input address)` of every table below the root.
    pub tables: BTreeSet<(u8, u64)>,
    /// Free pages left in the table's pool.
    pub free: u64,
}

fn align(addr: u64, level: u8) -> u64 {
    addr & !(level_size(level) - 1)
}

impl AbsNpt {
    /// The abstraction function: the concrete table seen through `relate_npt`.
    pub fn of(table: &PageTable, m: &impl Machine) -> AbsNpt {
        AbsNpt {
            leaves: table.leaves(m).into_iter().map(|l| (l.input, (l.output, l.level, l.attrs))).collect(),
            tables: table.tables(m).into_iter().map(|(level, input, _)| (level, input)).collect(),
            free: table.pool().free(),
        }
    }

    fn leaf_at(&self, level: u8, addr: u64) -> Option<Leaf> {
        let base = align(addr, level);
        self.leaves.get(&base).filter(|(_, l, _)| *l == level).map(|&(output, level, attrs)| Leaf {
            input: base,
            output,
            level,
            attrs,
        })
    }
}

/// `walk_npt_spec`: the leaf covering `addr`.
pub fn walk_spec(npt: &AbsNpt, addr: u64) -> Option<Leaf> {
    if addr >= INPUT_LIMIT {
        return None;
    }
    (FIRST_LEVEL..=LAST_LEVEL).find_map(|level| npt.leaf_at(level, addr))
}

/// `map_s2pt_spec`: maps `[addr, addr + level_size(level))` to `pa` into an empty slot.
pub fn map_spec(npt: &AbsNpt, addr: u64, pa: u64, level: u8, attrs: Attrs) -> Option<(AbsNpt, Result<(), PtError>)> {
    let unchanged = |e| Some((npt.clone(), Err(e)));
    if !(FIRST_LEVEL..=LAST_LEVEL).contains(&level) {
        return unchanged(PtError::BadRange);
    }
    let size = level_size(level);
    if !addr.is_multiple_of(size) || !pa.is_multiple_of(size) || addr >= INPUT_LIMIT || pa >= OUTPUT_LIMIT {
        return unchanged(PtError::BadRange);
    }
    // Descend: a leaf on the way is in the way; the walk stops at the first missing table.
    let mut slot = level;
    for l in FIRST_LEVEL..=level {
        if npt.leaf_at(l, addr).is_some() {
            return unchanged(PtError::Occupied);
        }
        if l == level {
            if l < LAST_LEVEL && npt.tables.contains(&(l + 1, align(addr, l))) {
                return unchanged(PtError::Occupied);
            }
            break;
        }
        if !npt.tables.contains(&(l + 1, align(addr, l))) {
            slot = l;
            break;
        }
    }
    let needed = (level - slot) as u64;
    if npt.free < needed {
        return unchanged(PtError::PoolExhausted);
    }
    let mut next = npt.clone();
    for l in slot..level {
        next.tables.insert((l + 1, align(addr, l)));
    }
    next.free -= needed;
    next.leaves.insert(addr, (pa, level, attrs));
    Some((next, Ok(())))
}

/// `unmap_spec`: removes the leaf covering `addr`; tables stay.
pub fn unmap_spec(npt: &AbsNpt, addr: u64) -> Option<(AbsNpt, Result<Leaf, PtError>)> {
    let Some(leaf) = walk_spec(npt, addr) else { return Some((npt.clone(), Err(PtError::NotMapped))) };
    let mut next = npt.clone();
    next.leaves.remove(&leaf.input);
    Some((next, Ok(leaf)))
}

/// `split_spec`: replaces the block covering `addr` by 512 next-level leaves with the same
/// translation, in a new table.
pub fn split_spec(npt: &AbsNpt, addr: u64) -> Option<(AbsNpt, Result<(), PtError>)> {
    let leaf = match walk_spec(npt, addr) {
        None => return Some((npt.clone(), Err(PtError::NotMapped))),
        Some(l) if l.level == LAST_LEVEL => return Some((npt.clone(), Err(PtError::BadRange))),
        Some(_) if npt.free == 0 => return Some((npt.clone(), Err(PtError::PoolExhausted))),
        Some(l) => l,
    };
    let mut next = npt.clone();
    let child = leaf.level + 1;
    next.leaves.remove(&leaf.input);
    for i in 0..512 {
        let offset = i * level_size(child);
        next.leaves.insert(leaf.input + offset, (leaf.output + offset, child, leaf.attrs));
    }
    next.tables.insert((child, leaf.input));
    next.free -= 1;
    Some((next, Ok(())))
}

/// `clear_pfn_host_spec`: the 4 KiB page at `addr` ends unmapped, blocks around it split.
pub fn clear_page_spec(npt: &AbsNpt, addr: u64) -> Option<(AbsNpt, Result<bool, PtError>)> {
    let addr = addr & !0xfff;
    let mut state = npt.clone();
    loop {
        match walk_spec(&state, addr) {
            None => return Some((state, Ok(false))),
            Some(l) if l.level == LAST_LEVEL => {
                let (next, _) = unmap_spec(&state, addr)?;
                return Some((next, Ok(true)));
            }
            Some(_) => match split_spec(&state, addr)? {
                (next, Ok(())) => state = next,
                (next, Err(e)) => return Some((next, Err(e))),
            },
        }
    }
}

//! KCore's first EL2 stage-1 table: an identity map of the physical address space, RAM as Normal
//! write-back and everything else as Device, decided by the board's RAM window. It is written
//! with the MMU off, so it uses no locks and no heap; its pages come first in the page-table
//! pool, where secondary cores find the root.

use crate::machine::{layout, mmu, phys, PAGE_SIZE};
use corevisor_boards::Board;

const ENTRIES: u64 = 512;
const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
/// The first 4 GiB are mapped with 2 MiB blocks, where RAM and devices meet (the Pi's
/// peripherals start at 0xFC00_0000); above, 1 GiB blocks.
const FINE_GIB: u64 = 4;

const VALID_BLOCK: u64 = 0b01;
const VALID_TABLE: u64 = 0b11;
const ACCESS_FLAG: u64 = 1 << 10;
const INNER_SHAREABLE: u64 = 0b11 << 8;
const EXECUTE_NEVER: u64 = 1 << 54;

/// A block descriptor mapping `pa` with the attributes its memory type needs.
fn block(board: &Board, pa: u64) -> u64 {
    if board.in_ram_window(pa) {
        pa | ACCESS_FLAG | INNER_SHAREABLE | mmu::ATTR_NORMAL << 2 | VALID_BLOCK
    } else {
        pa | ACCESS_FLAG | EXECUTE_NEVER | mmu::ATTR_DEVICE << 2 | VALID_BLOCK
    }
}

/// Pool pages the boot map uses: the root and one level-2 table per fine GiB.
pub const PAGES_USED: u64 = 1 + FINE_GIB;

/// Writes the table into the pool and returns the root's physical address.
pub fn build(board: &Board) -> u64 {
    let pool = layout::page_table_pool();
    let root = pool.start;
    let used = PAGES_USED * PAGE_SIZE;
    assert!(pool.start + used <= pool.end, "page-table pool too small for the boot map");
    phys::zero(root, used);
    for l1 in 0..ENTRIES {
        let base = l1 * GIB;
        let entry = if l1 < FINE_GIB {
            let table = root + (1 + l1) * PAGE_SIZE;
            for l2 in 0..ENTRIES {
                let pa = base + l2 * MIB2;
                phys::write_u64(table + l2 * 8, block(board, pa));
            }
            table | VALID_TABLE
        } else {
            block(board, base)
        };
        phys::write_u64(root + l1 * 8, entry);
    }
    // Written with caches off; make sure no stale line hides it from the table walker.
    phys::clean_invalidate_dcache(root, used);
    root
}

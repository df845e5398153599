//! KCore's first EL2 stage-1 table, built by the page-table layer (`identity_map`) from the
//! board's RAM window, with the MMU still off. Its pages come first in the page-table pool, where
//! secondary cores find the root.

use crate::machine::{layout, phys, Aarch64, PAGE_SIZE};
use crate::page_table::{identity_map, pool::PagePool, IDENTITY_MAP_PAGES};
use corevisor_boards::Board;

/// Pool pages the boot map uses; the host's stage-2 pool starts after them.
pub const PAGES_USED: u64 = IDENTITY_MAP_PAGES;

/// Writes the table into the pool and returns the root's physical address.
pub fn build(board: &Board) -> u64 {
    let pool = layout::page_table_pool();
    let table = identity_map(&Aarch64, PagePool::new(pool.start, PAGES_USED), |pa| board.in_ram_window(pa))
        .expect("the boot map fits its pages");
    // Written with caches off; make sure no stale line hides it from the table walker.
    phys::clean_invalidate_dcache(pool.start, PAGES_USED * PAGE_SIZE);
    table.root()
}

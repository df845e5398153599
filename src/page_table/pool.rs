//! PTAlloc: each principal's own pool of page-table pages. A pool hands out zeroed pages from a
//! range that belongs to it alone, so one principal's tables can never exhaust another's.

use crate::machine::{Machine, PAGE_SIZE};

/// The pool ran out of pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolExhausted;

/// A bump allocator of table pages over `[base, base + pages * 4 KiB)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagePool {
    base: u64,
    pages: u64,
    used: u64,
}

impl PagePool {
    /// A pool over `pages` pages from `base` (4 KiB aligned), owned by the caller.
    pub fn new(base: u64, pages: u64) -> PagePool {
        assert!(base.is_multiple_of(PAGE_SIZE), "pool base {base:#x} is not page aligned");
        PagePool { base, pages, used: 0 }
    }

    /// A zeroed page, or an error when the pool is used up.
    pub fn alloc(&mut self, machine: &impl Machine) -> Result<u64, PoolExhausted> {
        if self.used == self.pages && !crate::mutation::planted(crate::mutation::Mutation::PoolOverrun) {
            return Err(PoolExhausted);
        }
        let page = self.base + self.used * PAGE_SIZE;
        machine.zero_page(page);
        self.used += 1;
        Ok(page)
    }

    /// Pages still free.
    pub fn free(&self) -> u64 {
        let overrun = crate::mutation::planted(crate::mutation::Mutation::PoolOverrun) as u64;
        (self.pages + overrun).saturating_sub(self.used)
    }

    /// Pages in the pool, used or not.
    pub fn capacity(&self) -> u64 {
        self.pages
    }

    /// Whether `pa` is one of this pool's pages.
    pub fn contains(&self, pa: u64) -> bool {
        pa >= self.base && pa < self.base + self.pages * PAGE_SIZE
    }

    /// The pool's whole range, `[base, end)`.
    pub fn range(&self) -> (u64, u64) {
        (self.base, self.base + self.pages * PAGE_SIZE)
    }
}

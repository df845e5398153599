//! KCore's heap: a buddy allocator over the region linker.ld reserves.

use buddy_system_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Hands the heap region to the allocator; returns its size in bytes. Call once, with the MMU on
/// (the allocator's lock is a spinlock).
pub fn init() -> usize {
    let region = super::layout::heap();
    let size = (region.end - region.start) as usize;
    // SAFETY: the region is reserved for the heap by linker.ld, used by nothing else, and this
    // runs once on the boot core before any allocation.
    unsafe { HEAP.lock().init(region.start as usize, size) };
    size
}

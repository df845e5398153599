//! KServ's heap: a 1 MiB static region (in .bss) behind a buddy allocator, for what is sized at
//! run time (a Linux VM's device tree, its device models).

use buddy_system_allocator::LockedHeap;

const HEAP_SIZE: usize = 1 << 20;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// The heap's memory: 16-byte aligned, as the allocator's smallest blocks are.
#[repr(align(16))]
struct Space([u8; HEAP_SIZE]);
static mut SPACE: Space = Space([0; HEAP_SIZE]);

/// Hands the region to the allocator. Once, on the boot core, after the MMU is on (the
/// allocator's lock needs exclusive loads and stores, which need cacheable memory).
pub fn init() {
    // SAFETY: `SPACE` is used by nothing else, and `init` runs once, before any allocation:
    // taking its address creates no reference, and the allocator is its only user from now on.
    unsafe { HEAP.lock().init((&raw mut SPACE.0).cast::<u8>() as usize, HEAP_SIZE) }
}

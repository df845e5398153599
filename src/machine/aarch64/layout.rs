//! Where the linker put KCore's pieces (symbols from linker.ld).

use core::ptr::addr_of;

extern "C" {
    static __kcore_start: u8;
    static __kcore_end: u8;
    static __heap_start: u8;
    static __heap_end: u8;
    static __pt_pool_start: u8;
    static __pt_pool_end: u8;
    static _secondary_start: u8;
    static __stacks_start: u8;
    static __canary_start: u8;
    static __smmu_start: u8;
    static __smmu_end: u8;
}

/// Size of each core's EL2 stack; must match linker.ld and boot.S.
const STACK_SIZE: u64 = 64 * 1024;

/// The top of core `core`'s EL2 stack (boot.S gives core i the i-th slot).
pub fn stack_top(core: usize) -> u64 {
    addr_of!(__stacks_start) as u64 + (core as u64 + 1) * STACK_SIZE
}

/// A physical range `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

/// Everything KCore owns: image, BSS, stacks, heap and page-table pool.
pub fn kcore() -> Region {
    Region { start: addr_of!(__kcore_start) as u64, end: addr_of!(__kcore_end) as u64 }
}

/// The heap's backing memory.
pub fn heap() -> Region {
    Region { start: addr_of!(__heap_start) as u64, end: addr_of!(__heap_end) as u64 }
}

/// The pages reserved for KCore's own stage-1 tables.
pub fn page_table_pool() -> Region {
    Region { start: addr_of!(__pt_pool_start) as u64, end: addr_of!(__pt_pool_end) as u64 }
}

/// KCore's memory for the SMMU: its stream table and queues, then the host's SMMU table pool
/// (`smmu::Memory`). Inside KCore's slot, so never the host's.
pub fn smmu() -> Region {
    Region { start: addr_of!(__smmu_start) as u64, end: addr_of!(__smmu_end) as u64 }
}

/// The physical address where secondary cores enter KCore.
pub fn secondary_entry() -> u64 {
    addr_of!(_secondary_start) as u64
}

/// KCore's canary page (linker.ld puts it at `KCORE_BASE + corevisor_abi::KCORE_CANARY_OFFSET`).
pub fn canary() -> u64 {
    addr_of!(__canary_start) as u64
}

//! Raw physical memory (SeKVM's `pt_load`/`pt_store`, `clear_phys_page`, cache maintenance).
//!
//! KCore's EL2 stage-1 is an identity map, so a physical address is also KCore's virtual address.
//! These are trusted primitives: the layers above decide which addresses are theirs to touch
//! (KCore's own region, the page-table pool, memory the ownership table gives them), and pass
//! only those. Before the MMU is on they go straight to memory.

use core::arch::asm;

/// Stores a 64-bit word at physical address `pa` (8-byte aligned).
pub fn write_u64(pa: u64, value: u64) {
    debug_assert!(pa.is_multiple_of(8));
    // SAFETY: the caller owns `pa` (module contract); it is aligned and mapped (identity map, or
    // MMU off).
    unsafe { core::ptr::write_volatile(pa as *mut u64, value) }
}

/// Loads the 64-bit word at physical address `pa` (8-byte aligned).
pub fn read_u64(pa: u64) -> u64 {
    debug_assert!(pa.is_multiple_of(8));
    // SAFETY: as for `write_u64`.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// Copies `bytes` to physical address `pa`.
pub fn copy_to(pa: u64, bytes: &[u8]) {
    // SAFETY: the caller owns `[pa, pa + bytes.len())`, which does not overlap KCore's image
    // (module contract), so it cannot alias `bytes`.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), pa as *mut u8, bytes.len()) }
}

/// Fills `[pa, pa + len)` with zeros, 8 bytes at a time (both 8-byte aligned).
pub fn zero(pa: u64, len: u64) {
    debug_assert!(pa.is_multiple_of(8) && len.is_multiple_of(8));
    (pa..pa + len).step_by(8).for_each(|word| write_u64(word, 0));
}

/// Reads `len` bytes at physical address `pa` as a byte slice that lives as long as KCore
/// does. Used for firmware tables (the DTB) that nothing writes after boot.
pub fn static_bytes(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: the caller names a range of RAM that stays mapped and unwritten while KCore runs
    // (module contract).
    unsafe { core::slice::from_raw_parts(pa as *const u8, len) }
}

/// The smallest data cache line of any cache this core's maintenance reaches, in bytes
/// (CTR_EL0.DminLine, log2 of the line in words): stepping by it leaves no line out.
fn dcache_line() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Cleans and invalidates the data cache over `[pa, pa + len)` to the point of coherency: every
/// dirty line is written back to memory and every line, clean or dirty, is dropped, in every
/// cache of the shareability domain. Afterwards memory holds what was last written through any
/// cacheable mapping, and a non-cacheable view (a table walker or a CPU with caches off, a
/// device) reads the same bytes as a cacheable one.
pub fn clean_invalidate_dcache(pa: u64, len: u64) {
    let step = dcache_line();
    let mut line = pa & !(step - 1);
    while line < pa + len {
        // SAFETY: cache maintenance by address changes no memory contents.
        unsafe { asm!("dc civac, {}", in(reg) line, options(nostack)) };
        line += step;
    }
    // SAFETY: a barrier has no memory effects of its own; it completes the maintenance before
    // the caller goes on.
    unsafe { asm!("dsb sy", options(nostack)) };
}

/// Makes newly written code visible to instruction fetch on every core.
pub fn sync_icache() {
    // SAFETY: invalidating the instruction caches changes no memory contents.
    unsafe { asm!("dsb ish", "ic ialluis", "dsb ish", "isb", options(nostack)) };
}

/// Reads the device register at physical `pa`, `1 << size_log2` bytes wide (1, 2, 4 or 8), with
/// one access of that size, zero-extended. For KCore's own devices and the registers it
/// accesses on the host's behalf (the GICv3 redistributors' control pages).
pub fn mmio_read(pa: u64, size_log2: u8) -> u64 {
    // SAFETY: the caller names a device register that exists (module contract: KCore's EL2 map
    // maps everything outside the RAM window as Device memory), aligned to its size; a volatile
    // access of exactly that width is what the device expects.
    unsafe {
        match size_log2 {
            0 => u64::from(core::ptr::read_volatile(pa as *const u8)),
            1 => u64::from(core::ptr::read_volatile(pa as *const u16)),
            2 => u64::from(core::ptr::read_volatile(pa as *const u32)),
            _ => core::ptr::read_volatile(pa as *const u64),
        }
    }
}

/// Writes the low `1 << size_log2` bytes of `value` to the device register at physical `pa`, with
/// one access of that size.
pub fn mmio_write(pa: u64, size_log2: u8, value: u64) {
    // SAFETY: as for `mmio_read`.
    unsafe {
        match size_log2 {
            0 => core::ptr::write_volatile(pa as *mut u8, value as u8),
            1 => core::ptr::write_volatile(pa as *mut u16, value as u16),
            2 => core::ptr::write_volatile(pa as *mut u32, value as u32),
            _ => core::ptr::write_volatile(pa as *mut u64, value),
        }
    }
}

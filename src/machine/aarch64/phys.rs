//! Raw physical memory (SeKVM's `pt_load`/`pt_store`, `clear_phys_page`, cache maintenance).
//!
//! KCore's EL2 stage-1 is an identity map, so a physical address is also KCore's virtual address.
//! The accessors here work on any address, so they are `unsafe fn`: each caller states in its
//! `// SAFETY:` comment why the address is its to touch (KCore's own region, the page-table pool,
//! memory the ownership table gives it, a device the boot sequence checked). The layers above
//! reach memory through the `Machine` trait, whose contract is the same, and reach device
//! registers through a [`DeviceWindow`] the boot sequence built. Before the MMU is on they go
//! straight to memory.

use core::arch::asm;

/// Stores a 64-bit word at physical address `pa` (8-byte aligned).
///
/// # Safety
/// The caller owns the word at `pa` (no other owner, and no Rust reference, sees it change), and
/// it is mapped (identity map, or MMU off).
pub unsafe fn write_u64(pa: u64, value: u64) {
    debug_assert!(pa.is_multiple_of(8));
    // SAFETY: the caller's contract; `pa` is aligned.
    unsafe { core::ptr::write_volatile(pa as *mut u64, value) }
}

/// Loads the 64-bit word at physical address `pa` (8-byte aligned).
///
/// # Safety
/// `pa` is mapped RAM the caller may read (not a device register, whose reads may act).
pub unsafe fn read_u64(pa: u64) -> u64 {
    debug_assert!(pa.is_multiple_of(8));
    // SAFETY: the caller's contract; `pa` is aligned.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// Copies `bytes` to physical address `pa`.
///
/// # Safety
/// The caller owns `[pa, pa + bytes.len())`, which is mapped and does not overlap KCore's image
/// or anything a Rust reference points at (so it cannot alias `bytes`).
pub unsafe fn copy_to(pa: u64, bytes: &[u8]) {
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), pa as *mut u8, bytes.len()) }
}

/// Fills `[pa, pa + len)` with zeros (both 8-byte aligned): a block at a time with `DC ZVA`
/// where the architecture allows it, 8 bytes at a time elsewhere. `DC ZVA` acts as stores of
/// zeros to its whole block (Arm ARM, "Data cache zero by VA"), so what the page-table walker
/// and later maintenance see is the same as after the word stores; it is one instruction per
/// block (64 bytes on the Cortex-A72) instead of eight.
///
/// # Safety
/// As for [`write_u64`], over the whole range.
pub unsafe fn zero(pa: u64, len: u64) {
    debug_assert!(pa.is_multiple_of(8) && len.is_multiple_of(8));
    let end = pa + len;
    let mut at = pa;
    if let Some(block) = zva_block() {
        while at < end && !at.is_multiple_of(block) {
            // SAFETY: the word lies in the range the caller owns.
            unsafe { write_u64(at, 0) };
            at += 8;
        }
        while end - at >= block {
            // SAFETY: zeroes the aligned block at `at`, which lies in the range the caller owns;
            // Normal memory (the MMU is on, `zva_block`), so no alignment fault.
            unsafe { asm!("dc zva, {}", in(reg) at, options(nostack)) };
            at += block;
        }
    }
    while at < end {
        // SAFETY: the word lies in the range the caller owns.
        unsafe { write_u64(at, 0) };
        at += 8;
    }
}

/// The block `DC ZVA` zeroes, in bytes, if it may be used now: DCZID_EL0.DZP clear, and the
/// EL2 MMU on (with it off, memory is Device, where `DC ZVA` faults).
fn zva_block() -> Option<u64> {
    let (dczid, sctlr): (u64, u64);
    // SAFETY: reading DCZID_EL0 and SCTLR_EL2 has no side effects.
    unsafe { asm!("mrs {}, dczid_el0", "mrs {}, sctlr_el2", out(reg) dczid, out(reg) sctlr, options(nomem, nostack)) };
    let prohibited = dczid & (1 << 4) != 0;
    (!prohibited && sctlr & 1 != 0).then(|| 4 << (dczid & 0xf))
}

/// Reads `len` bytes at physical address `pa` as a byte slice that lives as long as KCore
/// does. Used for firmware tables (the DTB) that nothing writes after boot.
///
/// # Safety
/// `[pa, pa + len)` is RAM that stays mapped and that nothing writes while KCore runs (not
/// KCore, not the host: the caller keeps it out of the host's reach or copies what it needs
/// before the host runs).
pub unsafe fn static_bytes(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: the caller's contract.
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
///
/// # Safety
/// `pa` is a device register that exists, aligned to the access size, mapped as Device memory
/// in KCore's EL2 map (everything outside the RAM window is), and reading it has no effect the
/// caller has not accounted for.
pub unsafe fn mmio_read(pa: u64, size_log2: u8) -> u64 {
    // SAFETY: the caller's contract; a volatile access of exactly that width is what the device
    // expects.
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
///
/// # Safety
/// As for [`mmio_read`]; and the write is one the caller means the device to act on.
pub unsafe fn mmio_write(pa: u64, size_log2: u8, value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        match size_log2 {
            0 => core::ptr::write_volatile(pa as *mut u8, value as u8),
            1 => core::ptr::write_volatile(pa as *mut u16, value as u16),
            2 => core::ptr::write_volatile(pa as *mut u32, value as u32),
            _ => core::ptr::write_volatile(pa as *mut u64, value),
        }
    }
}

/// Device registers the trap handler may access on the host's behalf (the GICv3
/// redistributors' control pages): a capability the boot sequence builds once, Tock-style, from
/// ranges it checked, so that the layers above need no `unsafe` for them.
pub struct DeviceWindow {
    ranges: alloc::vec::Vec<corevisor_boards::PhysRange>,
}

impl DeviceWindow {
    /// # Safety
    /// Every range is device registers (not RAM), mapped as Device memory in KCore's EL2 map,
    /// and any aligned read or write of 1, 2, 4 or 8 bytes in it is one KCore may perform for
    /// the host (the caller filters what must not reach the device).
    pub unsafe fn new(ranges: alloc::vec::Vec<corevisor_boards::PhysRange>) -> DeviceWindow {
        DeviceWindow { ranges }
    }

    fn holds(&self, pa: u64, size_log2: u8) -> bool {
        let size = 1u64 << size_log2.min(3);
        pa.is_multiple_of(size)
            && self.ranges.iter().any(|r| pa >= r.base && pa - r.base <= r.size.saturating_sub(size))
    }

    /// Reads the register at `pa` (as [`mmio_read`]); `None` if it is outside the window or
    /// not aligned.
    pub fn read(&self, pa: u64, size_log2: u8) -> Option<u64> {
        // SAFETY: `pa` lies in a range `new`'s caller vouched for, aligned to the access.
        self.holds(pa, size_log2).then(|| unsafe { mmio_read(pa, size_log2) })
    }

    /// Writes the register at `pa` (as [`mmio_write`]); `false` if it is outside the window or
    /// not aligned.
    pub fn write(&self, pa: u64, size_log2: u8, value: u64) -> bool {
        let inside = self.holds(pa, size_log2);
        if inside {
            // SAFETY: as for `read`.
            unsafe { mmio_write(pa, size_log2, value) };
        }
        inside
    }
}

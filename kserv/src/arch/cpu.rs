//! Core identity and waiting.

use core::arch::asm;

/// The exception level KServ runs at (1 when KCore set things up right).
pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
    el >> 2 & 3
}

/// Waits for an event, forever.
pub fn park() -> ! {
    loop {
        // SAFETY: wfe only waits.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// The physical address of the secondary entry point in boot.S.
pub fn secondary_entry() -> u64 {
    extern "C" {
        static kserv_secondary_start: u8;
    }
    core::ptr::addr_of!(kserv_secondary_start) as u64
}

/// Reads a 64-bit word of physical memory (KServ's EL1 map is the identity).
pub fn read_phys_u64(pa: u64) -> u64 {
    // SAFETY: callers pass 8-byte aligned addresses of RAM that the firmware left readable (the
    // DTB header); the EL1 map is an identity map.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// A byte slice of physical memory that nothing writes while KServ runs (the DTB).
pub fn phys_slice(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: as for `read_phys_u64`; the DTB stays in place and unwritten.
    unsafe { core::slice::from_raw_parts(pa as *const u8, len) }
}

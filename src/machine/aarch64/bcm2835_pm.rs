//! The BCM2835/BCM2711 power-management block's watchdog (Linux `bcm2835_wdt.c`): the Pi's only
//! way to reset the whole machine. KCore keeps it (the host's stage-2 never maps it), so only
//! KCore can reset the board, and only after its power-down scrub.

/// Reset control: WRCFG (bits 5:4) selects what the watchdog does when it expires.
const PM_RSTC: u64 = 0x1c;
/// Reset status; bits 0, 2, 4, 6, 8, 10 hold the partition the firmware boots next.
const PM_RSTS: u64 = 0x20;
/// Watchdog timeout, in ticks of 1/65536 s.
const PM_WDOG: u64 = 0x24;
/// Every write must carry this in bits 31:24, or the block ignores it.
const PASSWORD: u32 = 0x5a00_0000;
const RSTC_WRCFG_CLEAR: u32 = 0xffff_ffcf;
const RSTC_WRCFG_FULL_RESET: u32 = 0x20;
/// Keeps every bit of PM_RSTS but the partition (Linux's PM_RSTS_PARTITION_CLR).
const RSTS_PARTITION_CLEAR: u32 = 0xffff_faaa;
/// The register bits below the password byte.
const VALUE: u32 = 0x00ff_ffff;
/// About 150 µs.
const TIMEOUT_TICKS: u32 = 10;

fn read(base: u64, offset: u64) -> u32 {
    // SAFETY: `full_reset`'s caller guarantees `base` names the PM block, identity-mapped as
    // Device memory in KCore's stage-1; a 32-bit load of its registers has no side effect.
    unsafe { ((base + offset) as *const u32).read_volatile() }
}

fn write(base: u64, offset: u64, value: u32) {
    // SAFETY: as for `read`; the caller is resetting the machine, which is what these writes do.
    unsafe { ((base + offset) as *mut u32).write_volatile(PASSWORD | value) }
}

/// Resets the machine through the watchdog at `base`: boot partition 0, a full reset after
/// about 150 µs. Returns only if the reset did not happen within a generous wait.
///
/// # Safety
/// `base` is the PM block's physical address (from the DTB or the board description),
/// identity-mapped as Device memory in KCore's stage-1: the writes go to whatever is there.
pub unsafe fn full_reset(base: u64) {
    write(base, PM_RSTS, read(base, PM_RSTS) & RSTS_PARTITION_CLEAR & VALUE);
    write(base, PM_WDOG, TIMEOUT_TICKS);
    write(base, PM_RSTC, (read(base, PM_RSTC) & RSTC_WRCFG_CLEAR & VALUE) | RSTC_WRCFG_FULL_RESET);
    // 150 µs is a few hundred thousand instructions even on a slow core; wait far longer.
    for _ in 0..100_000_000u64 {
        core::hint::spin_loop();
    }
}

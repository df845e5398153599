//! Core identity, waiting and entering a lower exception level.

use super::super::features::{field, fields, IdRegisters};
use super::super::TrapFrame;
use aarch64_cpu::{asm, registers::*};
use core::sync::atomic::AtomicU32;
use tock_registers::interfaces::Readable;

/// This core's index, MPIDR_EL1.Aff0 (boot.S gives each index its own stack).
pub fn index() -> usize {
    (MPIDR_EL1.get() & 0xff) as usize
}

/// This core's MPIDR_EL1 affinity value (Aff3..Aff0), as PSCI names cores.
pub fn mpidr_affinity() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// The current exception level (2 for KCore).
pub fn current_el() -> u64 {
    CurrentEL.get() >> 2 & 3
}

/// Waits for an event (`sev` from another core, or an interrupt).
pub fn wait_for_event() {
    asm::wfe();
}

/// Waits, asleep in `wfe`, until `word` holds `value` (the Arm ARM's event-based wait, as
/// Linux's arm64 ticket spinlock did it): `sevl` sets this core's event register so the first
/// `wfe` falls through; each turn then reads `word` with a load-acquire exclusive (`ldaxr`),
/// which arms this core's exclusive monitor on `word`'s granule, and sleeps in `wfe` while the
/// value is not `value`. Another core's store to the granule clears the monitor, and clearing it
/// is a wake-up event (Arm ARM D1.16.1, "Wait for Event mechanism and Send event"), so the
/// writer needs no `sev`; a store that lands between the `ldaxr` and the `wfe` has already set
/// the event register, and that `wfe` falls through. Any other event (an exception return, an
/// unrelated `sev`) only costs a turn of the loop. Only on Normal memory (MMU on): exclusives on
/// Device memory hang on real Cortex-A72 cores. On QEMU's round-robin TCG `wfe` ends the core's
/// turn, as `yield` does, so the holder runs while this core waits.
#[inline(always)]
pub fn wait_until_equals(word: &AtomicU32, value: u32) {
    // SAFETY: `word` is a live `AtomicU32`, valid and aligned for a 32-bit `ldaxr`; the loop only
    // reads it (the exclusive arms the monitor, no store pairs with it) and changes only the flags
    // and the event register. Without `nomem`/`readonly` the compiler keeps every later memory
    // access after it, as the acquire requires.
    unsafe {
        core::arch::asm!(
            "sevl",
            "2:",
            "wfe",
            "ldaxr {seen:w}, [{word}]",
            "cmp {seen:w}, {value:w}",
            "b.ne 2b",
            word = in(reg) word.as_ptr(),
            value = in(reg) value,
            seen = out(reg) _,
            options(nostack),
        )
    };
}

/// Wakes every core waiting in [`wait_for_event`]; the stores before it are made visible first.
pub fn send_event() {
    asm::barrier::dsb(asm::barrier::ISH);
    asm::sev();
}

/// Stops this core for good: interrupts masked, waiting forever.
pub fn park() -> ! {
    loop {
        asm::wfe();
    }
}

extern "C" {
    fn enter_lower_el(frame: *const TrapFrame, stack_top: u64) -> !;
}

/// Leaves KCore on this core: restores `frame` into the registers and `eret`s into the exception
/// level its SPSR names. This core's EL2 stack starts afresh, so nothing of the caller's stack
/// survives; the next trap on this core pushes its frame just below the top.
///
/// # Safety
/// `frame.spsr` must name a lower exception level (EL1 or EL0): an EL2 SPSR would run
/// `frame.elr` at EL2, with all of KCore's rights. The code at `frame.elr` then runs with the
/// EL2 controls loaded on this core, which must confine it (stage-2 on for EL1).
pub unsafe fn enter_lower(frame: &TrapFrame) -> ! {
    let stack_top = super::layout::stack_top(index());
    // SAFETY: `enter_lower_el` copies the 33 words of `frame` to the top of this core's own stack
    // (copying downwards, so an overlapping source below it is read before it is overwritten),
    // and never returns; the caller guarantees the frame's SPSR selects a lower EL, so eret
    // leaves EL2.
    unsafe { enter_lower_el(frame, stack_top) }
}

/// Enters EL1 at `entry` with `x0`, interrupts masked, behind the stage-2 that HCR_EL2.VM has
/// turned on: whatever `entry` is, EL1 reaches only what that stage-2 maps. Halts if stage-2 is
/// off (a KCore bug: EL1 would see all of memory).
pub fn enter_el1(entry: u64, x0: u64) -> ! {
    const HCR_VM: u64 = 1;
    assert!(HCR_EL2.get() & HCR_VM != 0, "entering EL1 with stage-2 off");
    // SAFETY: `TrapFrame::el1_entry` sets SPSR to EL1h, a lower EL; HCR_EL2.VM (checked above)
    // puts EL1 behind the stage-2 that VTTBR_EL2 names.
    unsafe { enter_lower(&TrapFrame::el1_entry(entry, x0)) }
}

macro_rules! read_id {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading an ID register has no side effects.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack)) };
        value
    }};
}

/// This core's ID registers, as the hardware reports them to EL2.
pub fn id_registers() -> IdRegisters {
    let dfr0 = read_id!("id_aa64dfr0_el1");
    // PMCR_EL0 exists only with an architected PMU (PMUVer 1..=14).
    let pmcr = match field(dfr0, fields::dfr0::PMU_VER) {
        0 | 0xf => 0,
        _ => read_id!("pmcr_el0"),
    };
    IdRegisters {
        midr: read_id!("midr_el1"),
        pfr0: read_id!("id_aa64pfr0_el1"),
        pfr1: read_id!("id_aa64pfr1_el1"),
        dfr0,
        isar0: read_id!("id_aa64isar0_el1"),
        isar1: read_id!("id_aa64isar1_el1"),
        isar2: read_id!("S3_0_C0_C6_2"),
        mmfr0: read_id!("id_aa64mmfr0_el1"),
        mmfr1: read_id!("id_aa64mmfr1_el1"),
        mmfr2: read_id!("id_aa64mmfr2_el1"),
        pmcr,
    }
}

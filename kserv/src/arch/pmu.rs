//! The PMU, for exact EL2 instruction counts: event 0x08 (INST_RETIRED) on counter 0, filtered
//! to count at EL2 only. QEMU implements the event only under `-icount`.

use core::arch::asm;

const INST_RETIRED: u64 = 0x08;
/// PMEVTYPER filter bits: P (don't count EL1), U (don't count EL0), NSH (count EL2).
const FILTER_EL2_ONLY: u64 = 1 << 31 | 1 << 30 | 1 << 27;

/// Whether the PMU counts retired instructions.
pub fn inst_retired_supported() -> bool {
    let ceid0: u64;
    // SAFETY: reading PMCEID0_EL0 has no side effects (KCore lets EL1 use the PMU).
    unsafe { asm!("mrs {}, pmceid0_el0", out(reg) ceid0, options(nomem, nostack)) };
    ceid0 >> INST_RETIRED & 1 == 1
}

/// Starts counter 0 on instructions retired at EL2.
pub fn start_el2_instruction_counter() {
    // SAFETY: programming counter 0 and enabling the PMU changes only PMU state.
    unsafe {
        asm!(
            "msr pmevtyper0_el0, {ty}",
            "msr pmcntenset_el0, {one}",
            "mrs {tmp}, pmcr_el0",
            "orr {tmp}, {tmp}, #3", // E (enable) and P (reset event counters)
            "msr pmcr_el0, {tmp}",
            "isb",
            ty = in(reg) INST_RETIRED | FILTER_EL2_ONLY, one = in(reg) 1u64, tmp = out(reg) _,
            options(nostack)
        );
    }
}

/// PMEVTYPER filter bits for counter 1: U (don't count EL0), NSH (count EL2): EL1 and EL2.
const FILTER_EL1_AND_EL2: u64 = 1 << 30 | 1 << 27;

/// Starts counter 1 on instructions retired at EL1 and EL2 (host, guests and KCore together).
pub fn start_all_el_instruction_counter() {
    // SAFETY: programming counter 1 changes only PMU state.
    unsafe {
        asm!(
            "msr pmevtyper1_el0, {ty}",
            "msr pmcntenset_el0, {two}",
            "isb",
            ty = in(reg) INST_RETIRED | FILTER_EL1_AND_EL2, two = in(reg) 2u64,
            options(nostack)
        );
    }
}

/// Counter 1's value.
pub fn read_all_el_counter() -> u64 {
    let value: u64;
    // SAFETY: as for `read_counter`.
    unsafe { asm!("isb", "mrs {}, pmevcntr1_el0", out(reg) value, options(nomem, nostack)) };
    value
}

/// Counter 0's value.
pub fn read_counter() -> u64 {
    let value: u64;
    // SAFETY: reading a PMU counter has no side effects; the isb orders it after what came before.
    unsafe { asm!("isb", "mrs {}, pmevcntr0_el0", out(reg) value, options(nomem, nostack)) };
    value
}

/// PMEVTYPER filter bits for counter 2: NSH (count EL2) and nothing excluded: every EL.
const FILTER_ALL_ELS: u64 = 1 << 27;

/// Starts counter 2 on instructions retired at every EL (EL0 included: a Linux guest's user space).
pub fn start_every_el_instruction_counter() {
    // SAFETY: programming counter 2 changes only PMU state.
    unsafe {
        asm!(
            "msr pmevtyper2_el0, {ty}",
            "msr pmcntenset_el0, {four}",
            "isb",
            ty = in(reg) INST_RETIRED | FILTER_ALL_ELS, four = in(reg) 4u64,
            options(nostack)
        );
    }
}

/// Counter 2's value.
pub fn read_every_el_counter() -> u64 {
    let value: u64;
    // SAFETY: as for `read_counter`.
    unsafe { asm!("isb", "mrs {}, pmevcntr2_el0", out(reg) value, options(nomem, nostack)) };
    value
}

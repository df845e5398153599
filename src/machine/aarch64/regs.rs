//! System registers KCore reads and writes, named after the architecture.

use aarch64_cpu::{asm::barrier, registers::*};
use tock_registers::interfaces::{Readable, Writeable};

/// The syndrome of the current trap.
pub fn esr_el2() -> u64 {
    ESR_EL2.get()
}
/// The faulting virtual address of the current abort.
pub fn far_el2() -> u64 {
    FAR_EL2.get()
}
/// The faulting IPA page of the current stage-2 abort.
pub fn hpfar_el2() -> u64 {
    HPFAR_EL2.get()
}
pub fn elr_el2() -> u64 {
    ELR_EL2.get()
}
pub fn spsr_el2() -> u64 {
    SPSR_EL2.get()
}
pub fn vbar_el1() -> u64 {
    VBAR_EL1.get()
}
pub fn sctlr_el1() -> u64 {
    SCTLR_EL1.get()
}

/// The EL1 registers that an exception injected into EL1 sets.
pub fn set_el1_exception_state(esr: u64, elr: u64, spsr: u64) {
    ESR_EL1.set(esr);
    ELR_EL1.set(elr);
    SPSR_EL1.set(spsr);
}

/// The faulting address an injected abort reports.
pub fn set_far_el1(far: u64) {
    FAR_EL1.set(far);
}

/// Turns on stage-2 translation for EL1 with `vttbr` (table root and VMID): VTCR_EL2 for a
/// 39-bit IPA space starting at level 1, 4 KiB granule, inner-shareable write-back walks, 40-bit
/// output addresses.
pub fn enable_stage2(vttbr: u64) {
    const VTCR_RES1: u64 = 1 << 31;
    const VTCR_PS_40_BITS: u64 = 0b010 << 16;
    const VTCR_SH0_INNER: u64 = 0b11 << 12;
    const VTCR_ORGN0_WB: u64 = 0b01 << 10;
    const VTCR_IRGN0_WB: u64 = 0b01 << 8;
    const VTCR_SL0_LEVEL1: u64 = 0b01 << 6;
    const VTCR_T0SZ_39_BITS: u64 = 25;
    VTCR_EL2.set(
        VTCR_RES1
            | VTCR_PS_40_BITS
            | VTCR_SH0_INNER
            | VTCR_ORGN0_WB
            | VTCR_IRGN0_WB
            | VTCR_SL0_LEVEL1
            | VTCR_T0SZ_39_BITS,
    );
    VTTBR_EL2.set(vttbr);
    barrier::isb(barrier::SY);
}

/// EL2 controls for running the host: HCR_EL2, the timer and PMU access, FP not trapped,
/// identity ID registers, and (on GICv3) system-register access to the GIC for EL1.
pub fn configure_host_traps(hcr: u64, gic_v3: bool) {
    HCR_EL2.set(hcr);
    // EL1 may use the physical counter and timer.
    const CNTHCTL_EL1PCTEN: u64 = 1 << 0;
    const CNTHCTL_EL1PCEN: u64 = 1 << 1;
    CNTHCTL_EL2.set(CNTHCTL_EL1PCTEN | CNTHCTL_EL1PCEN);
    CNTVOFF_EL2.set(0);
    // No FP/SIMD or trace traps (TFP = 0); RES1 bits 13:12 and 9:0.
    CPTR_EL2.set(0x33FF);
    // EL1 may use every PMU counter: HPMN = PMCR_EL0.N, TPM = TPMCR = 0.
    let pmcr = read_pmcr_el0();
    MDCR_EL2.set(pmcr >> 11 & 0x1f);
    write_vpidr_el2(MIDR_EL1.get());
    VMPIDR_EL2.set(MPIDR_EL1.get());
    // SCTLR_EL1 starts in a known state: MMU off, RES1 bits set.
    SCTLR_EL1.set(0x30D0_0800);
    if gic_v3 {
        // SRE (system registers) and Enable (EL1 may set ICC_SRE_EL1.SRE).
        ICC_SRE_EL2.set(0b1001);
    }
    barrier::isb(barrier::SY);
}

fn read_pmcr_el0() -> u64 {
    let value: u64;
    // SAFETY: reading PMCR_EL0 at EL2 has no side effects.
    unsafe { core::arch::asm!("mrs {}, pmcr_el0", out(reg) value, options(nomem, nostack)) };
    value
}

fn write_vpidr_el2(value: u64) {
    // SAFETY: VPIDR_EL2 only changes what EL1 reads from MIDR_EL1.
    unsafe { core::arch::asm!("msr vpidr_el2, {}", in(reg) value, options(nomem, nostack)) };
}

/// All general and EL2 registers worth printing when KCore halts.
pub fn snapshot() -> [(&'static str, u64); 8] {
    [
        ("ESR_EL2", ESR_EL2.get()),
        ("ELR_EL2", ELR_EL2.get()),
        ("FAR_EL2", FAR_EL2.get()),
        ("HPFAR_EL2", HPFAR_EL2.get()),
        ("SPSR_EL2", SPSR_EL2.get()),
        ("HCR_EL2", HCR_EL2.get()),
        ("SCTLR_EL2", SCTLR_EL2.get()),
        ("VBAR_EL2", VBAR_EL2.get()),
    ]
}

//! System registers KCore reads and writes, named after the architecture.

use super::super::guest_regs::El2Controls;
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

/// Sets this core up for running the host: its EL2 `controls` (from `vcpu::controls`), stage-2
/// with the host's root in `controls.vttbr`, identity ID registers, a known SCTLR_EL1, and (on
/// GICv3) system-register access to the GIC for EL1.
/// ACTLR_EL2: which IMPLEMENTATION DEFINED control registers EL1 may write (on the cores
/// `vcpu::controls::actlr_el2` knows).
pub fn set_actlr_el2(value: u64) {
    // SAFETY: ACTLR_EL2 only gates EL1's access to the core's IMPLEMENTATION DEFINED control
    // registers; KCore writes it only on cores whose layout of it the caller knows.
    unsafe { core::arch::asm!("msr actlr_el2, {}", "isb", in(reg) value, options(nostack)) };
}

pub fn configure_host(controls: &El2Controls, gic_v3: bool) {
    enable_stage2(controls.vttbr);
    super::world_switch::set_el2_controls(controls);
    write_vpidr_el2(MIDR_EL1.get());
    // SCTLR_EL1 starts in a known state: MMU off, RES1 bits set.
    SCTLR_EL1.set(0x30D0_0800);
    if gic_v3 {
        // SRE (system registers) and Enable (EL1 may set ICC_SRE_EL1.SRE).
        ICC_SRE_EL2.set(0b1001);
    }
    barrier::isb(barrier::SY);
}

/// MPIDR_EL1 of this core, which the host sees unchanged (VMPIDR_EL2).
pub fn mpidr_el1() -> u64 {
    MPIDR_EL1.get()
}

/// Cleans and invalidates the data-cache line that the set/way `operand` of a `DC ISW`, `DC CSW`
/// or `DC CISW` names (level in bits 3:1, set and way above; RES0 bits cleared): what KCore does
/// instead of a lower EL's set/way maintenance, so that no dirty line is dropped unwritten.
pub fn clean_invalidate_dcache_set_way(operand: u64) {
    // SAFETY: DC CISW writes a dirty line back before invalidating it, so it never loses data;
    // a set, way or level beyond the caches is CONSTRAINED UNPREDICTABLE between a no-op and the
    // same clean and invalidate of some line, which loses nothing either.
    unsafe {
        core::arch::asm!("dc cisw, {}", "dsb sy", in(reg) operand & 0xFFFF_FFFE, options(nostack));
    }
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

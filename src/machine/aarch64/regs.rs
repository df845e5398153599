//! System registers KCore reads and writes, named after the architecture.

use super::super::guest_regs::CoreControls;
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

/// Sets the EL2 state that stays the same in both worlds (`vcpu::controls::core_controls`).
/// Called before this core first runs the host; the world switch then changes only
/// [`El2Controls`](super::super::guest_regs::El2Controls).
pub fn set_core_controls(c: &CoreControls) {
    VTCR_EL2.set(c.vtcr);
    write_vpidr_el2(c.vpidr);
    SCTLR_EL1.set(c.host_sctlr_el1);
    if let Some(sre) = c.icc_sre_el2 {
        ICC_SRE_EL2.set(sre);
    }
    if let Some(actlr) = c.actlr_el2 {
        // SAFETY: ACTLR_EL2 only gates EL1's access to the core's IMPLEMENTATION DEFINED control
        // registers; `vcpu::controls::actlr_el2` gives a value only for cores whose layout of it
        // it knows.
        unsafe { core::arch::asm!("msr actlr_el2, {}", in(reg) actlr, options(nostack)) };
    }
    barrier::isb(barrier::SY);
}

/// The guest's live virtual timer, CNTV_CTL_EL0 and CNTV_CVAL_EL0 (its EL1 state is loaded).
pub fn virtual_timer() -> (u64, u64) {
    (CNTV_CTL_EL0.get(), CNTV_CVAL_EL0.get())
}

/// Masks the guest's live virtual timer (CNTV_CTL_EL0.IMASK). Masking lowers the timer's
/// output, and its PPI is level-sensitive: the GIC's pending state follows the level, so the
/// physical interrupt stops being pending without anyone acknowledging it (the host owns the
/// physical CPU interface).
pub fn mask_virtual_timer() {
    const IMASK: u64 = 1 << 1;
    CNTV_CTL_EL0.set(CNTV_CTL_EL0.get() | IMASK);
}

/// MIDR_EL1 of this core, which the host sees unchanged (VPIDR_EL2).
pub fn midr_el1() -> u64 {
    MIDR_EL1.get()
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

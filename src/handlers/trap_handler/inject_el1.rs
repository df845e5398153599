//! Exceptions injected into whichever EL1 is loaded on this core (the host's, or a running
//! guest's), written into its registers.

use super::super::inject;
use crate::machine::{features, regs, TrapFrame};

/// The EL1 loaded on this core, as an injection target.
pub fn loaded_el1() -> inject::El1Target<'static> {
    inject::El1Target { vbar: regs::vbar_el1(), sctlr: regs::sctlr_el1(), cpu: features::boot() }
}

/// Injects an UNDEF for the instruction at `pc`.
pub fn undef(frame: &mut TrapFrame, pc: u64) {
    let injected = inject::undef(frame, pc, loaded_el1());
    regs::set_el1_exception_state(injected.esr, injected.elr, injected.spsr);
}

/// Injects a synchronous external abort for the access at `frame.elr` that faulted at `far`.
pub fn external_abort(frame: &mut TrapFrame, instruction: bool, esr: u64, far: u64) {
    let pc = frame.elr;
    let injected = inject::external_abort(frame, pc, instruction, esr, loaded_el1());
    regs::set_el1_exception_state(injected.esr, injected.elr, injected.spsr);
    regs::set_far_el1(far);
}

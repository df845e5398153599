//! Injecting a synchronous exception into EL1, the way the hardware would have taken it: the
//! EL1 exception registers describe the fault, and the return to EL1 lands on the right entry
//! of the EL1 vector table with interrupts masked.

use crate::machine::TrapFrame;

/// ESR_EL1 of an UNDEF: EC 0 (unknown reason), IL set (32-bit instruction).
pub const ESR_UNDEF: u64 = 1 << 25;

/// What an injected exception writes into the EL1 registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct El1Exception {
    pub esr: u64,
    pub elr: u64,
    pub spsr: u64,
}

/// PSTATE.M values of the interrupted context, from SPSR.
const M_EL0T: u64 = 0b0000;
const M_EL1T: u64 = 0b0100;
const M_EL1H: u64 = 0b0101;
/// SPSR.M[4]: the context was AArch32.
const M_AARCH32: u64 = 0b1_0000;
/// D, A, I and F masked, EL1h: the state the hardware enters an EL1 handler in.
const SPSR_HANDLER: u64 = 0x3C0 | M_EL1H;

/// Injects an UNDEF for the instruction at `pc` into the EL1 context saved in `frame`, whose
/// vector base is `vbar_el1`. Updates `frame` to enter the EL1 handler and returns what the EL1
/// exception registers must hold.
pub fn undef(frame: &mut TrapFrame, pc: u64, vbar_el1: u64) -> El1Exception {
    enter_el1(frame, ESR_UNDEF, pc, vbar_el1)
}

/// DFSC/IFSC of a synchronous external abort, not on a translation table walk.
const FSC_EXTERNAL_ABORT: u64 = 0b01_0000;
/// ESR ISS.WnR: the aborted access was a write.
const ISS_WNR: u64 = 1 << 6;
const EC_IABT_LOWER: u64 = 0x20;
const EC_IABT_SAME: u64 = 0x21;
const EC_DABT_LOWER: u64 = 0x24;
const EC_DABT_SAME: u64 = 0x25;

/// Injects a synchronous external abort for the access at `pc` (an instruction fetch if
/// `instruction`), the way a bus error would have been taken at EL1. `esr_el2` is the trapped
/// syndrome, whose WnR bit carries over. The caller also sets FAR_EL1 to the faulting address.
pub fn external_abort(frame: &mut TrapFrame, pc: u64, instruction: bool, esr_el2: u64, vbar_el1: u64) -> El1Exception {
    let from_el0 = frame.spsr & 0x1f == M_EL0T;
    let class = match (instruction, from_el0) {
        (true, true) => EC_IABT_LOWER,
        (true, false) => EC_IABT_SAME,
        (false, true) => EC_DABT_LOWER,
        (false, false) => EC_DABT_SAME,
    };
    let wnr = if instruction { 0 } else { esr_el2 & ISS_WNR };
    enter_el1(frame, class << 26 | ESR_UNDEF | wnr | FSC_EXTERNAL_ABORT, pc, vbar_el1)
}

fn enter_el1(frame: &mut TrapFrame, esr: u64, pc: u64, vbar_el1: u64) -> El1Exception {
    let m = frame.spsr & 0x1f;
    let offset = match m {
        M_EL1T => 0x000,
        M_EL1H => 0x200,
        M_EL0T => 0x400,
        _ if m & M_AARCH32 != 0 => 0x600,
        _ => 0x200,
    };
    let injected = El1Exception { esr, elr: pc, spsr: frame.spsr };
    frame.elr = vbar_el1 + offset;
    frame.spsr = SPSR_HANDLER;
    injected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undef_from_el1h_enters_the_current_el_spx_vector() {
        let mut frame = TrapFrame { elr: 0x4400_2004, spsr: 0x3C5, ..TrapFrame::default() };
        let injected = undef(&mut frame, 0x4400_2000, 0x4400_8000);
        assert_eq!(injected, El1Exception { esr: ESR_UNDEF, elr: 0x4400_2000, spsr: 0x3C5 });
        assert_eq!(frame.elr, 0x4400_8200);
        assert_eq!(frame.spsr, 0x3C5);
    }

    #[test]
    fn a_denied_host_write_becomes_a_data_abort_at_el1() {
        let mut frame = TrapFrame { elr: 0x4400_3000, spsr: 0x3C5, ..TrapFrame::default() };
        // DABT_LOW, WnR, stage-2 translation fault level 1.
        let injected = external_abort(&mut frame, 0x4400_3000, false, 0x9200_0045, 0x4400_8000);
        assert_eq!(injected.esr, 0x9600_0050);
        assert_eq!(injected.elr, 0x4400_3000);
        assert_eq!(frame.elr, 0x4400_8200);
        let mut frame = TrapFrame { spsr: 0x3C5, ..TrapFrame::default() };
        assert_eq!(external_abort(&mut frame, 0, true, 0x8200_0005, 0).esr, 0x8600_0010);
    }

    #[test]
    fn undef_from_el0_enters_the_lower_el_vector() {
        let mut frame = TrapFrame { spsr: 0x0, ..TrapFrame::default() };
        undef(&mut frame, 0x1000, 0x8000);
        assert_eq!(frame.elr, 0x8400);
        let mut frame = TrapFrame { spsr: 0x4, ..TrapFrame::default() };
        undef(&mut frame, 0x1000, 0x8000);
        assert_eq!(frame.elr, 0x8000);
    }
}

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
    let m = frame.spsr & 0x1f;
    let offset = match m {
        M_EL1T => 0x000,
        M_EL1H => 0x200,
        M_EL0T => 0x400,
        _ if m & M_AARCH32 != 0 => 0x600,
        _ => 0x200,
    };
    let injected = El1Exception { esr: ESR_UNDEF, elr: pc, spsr: frame.spsr };
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
    fn undef_from_el0_enters_the_lower_el_vector() {
        let mut frame = TrapFrame { spsr: 0x0, ..TrapFrame::default() };
        undef(&mut frame, 0x1000, 0x8000);
        assert_eq!(frame.elr, 0x8400);
        let mut frame = TrapFrame { spsr: 0x4, ..TrapFrame::default() };
        undef(&mut frame, 0x1000, 0x8000);
        assert_eq!(frame.elr, 0x8000);
    }
}

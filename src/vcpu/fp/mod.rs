//! Which vCPU's FP/SIMD values a core's registers still hold, so that the world switch reloads
//! a guest's q0-q31, FPSR and FPCR only when they are not there already (issue 13, round 18).
//!
//! Every guest exit saves the registers into the vCPU's context (a vCPU may run next on another
//! core: its saved values must always be its latest) and stamps both the context and the core's
//! record with one new [`FpMark`]. A mark is unique for the life of the machine: a core's stamp
//! count in its high bits, the core's index in the low byte, and no count ever repeats (64 bits
//! do not wrap). So a context whose mark is the one the core holds was saved from these very
//! registers at its last exit, and neither has changed since:
//! - the context: KCore writes a context's FP/SIMD values only at its exit (with a new mark) and
//!   when it starts it afresh ([`super::VcpuContext::start`], a new VM's context: the mark is
//!   [`FpMark::NONE`] then, which no core ever holds);
//! - the registers: another vCPU's run on the core stamps the core with its own mark; the host
//!   touches them only after its trap has put its own back ([`CoreFp::forget`]); a core entering
//!   the host afresh zeroes them and forgets; KCore's SHA-256 routine puts back what it uses.
//!
//! [`spec`] is the layer's view (a guest always runs with exactly the values it last left); the
//! refinement property in `vcpu::fp::tests` runs random schedules of runs, host FP/SIMD use, resets,
//! re-created VMs and fresh cores against it.

use crate::machine::guest_regs::FpRegs;
use crate::mutation::{planted, Mutation};

/// One version of a vCPU's saved FP/SIMD values, as a core stamped it at the vCPU's exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpMark(u64);

impl FpMark {
    /// Values in memory only (a context started afresh): no core holds them.
    pub const NONE: FpMark = FpMark(0);
}

/// What one core's FP/SIMD registers hold, as far as a guest's reload goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreFp {
    /// The next mark this core stamps: a count in the high bits, the core's index in the low
    /// byte, the count one more at every stamp.
    next: u64,
    /// The mark of the guest values the registers hold, or NONE (anything else).
    holds: FpMark,
}

impl CoreFp {
    /// Core `core`, its registers holding nothing any context has (`core` < 256).
    pub const fn new(core: usize) -> CoreFp {
        CoreFp { next: 1 << 8 | (core as u64 & 0xff), holds: FpMark::NONE }
    }

    /// Whether the registers hold exactly the values of a context marked `mark`.
    #[inline]
    pub fn holds(&self, mark: FpMark) -> bool {
        if planted(Mutation::FpReloadSkippedForAnotherCoresMark) {
            return mark != FpMark::NONE && mark.0 >> 8 == self.holds.0 >> 8;
        }
        mark != FpMark::NONE && mark == self.holds
    }

    /// A guest's values were just saved from the registers: their new mark, for the context.
    #[inline]
    pub fn stamp(&mut self) -> FpMark {
        self.holds = FpMark(self.next);
        self.next += 1 << 8;
        self.holds
    }

    /// The registers were given other values (the host's, zeros).
    #[inline]
    pub fn forget(&mut self) {
        self.holds = FpMark::NONE;
    }
}

/// The FP/SIMD registers of one core (the CPU's in the world switch, a model in tests).
pub trait FpBank {
    fn load(&mut self, regs: &FpRegs);
    fn save(&mut self, out: &mut FpRegs);
}

/// A guest is about to run on the core `core` with registers `bank`: its values `fp` (marked
/// `mark`) go in, unless the registers hold them already.
#[inline]
pub fn enter_guest(core: &CoreFp, fp: &FpRegs, mark: FpMark, bank: &mut impl FpBank) {
    if !core.holds(mark) {
        bank.load(fp);
    }
}

/// The guest has left: its values are saved into `fp` (always: it may run next on another core)
/// and `mark` becomes their new mark, which the core holds.
#[inline]
pub fn exit_guest(core: &mut CoreFp, fp: &mut FpRegs, mark: &mut FpMark, bank: &mut impl FpBank) {
    bank.save(fp);
    *mark = core.stamp();
}

/// The layer's spec (`Option<state>`, SeKVM style): each vCPU's FP/SIMD values are what it
/// last left, zero once started afresh; a guest runs with exactly its own, whatever ran on the
/// core before it (the host, another vCPU, the same vCPU elsewhere).
#[cfg(test)]
pub mod spec {
    use super::FpRegs;

    /// Every vCPU's own FP/SIMD values.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Fp {
        pub vcpus: Vec<FpRegs>,
    }

    /// vCPU `vcpu` runs and leaves `left` in the registers: the values it ran with, and the new
    /// state. `None` for a vCPU that does not exist.
    pub fn run(s: &Fp, vcpu: usize, left: FpRegs) -> Option<(FpRegs, Fp)> {
        let ran_with = *s.vcpus.get(vcpu)?;
        let mut s = s.clone();
        s.vcpus[vcpu] = left;
        Some((ran_with, s))
    }

    /// vCPU `vcpu` starts afresh (reset, or its VM destroyed and created again): zero.
    pub fn start(s: &Fp, vcpu: usize) -> Option<Fp> {
        let mut s = s.clone();
        *s.vcpus.get_mut(vcpu)? = FpRegs::ZERO;
        Some(s)
    }
}

#[cfg(test)]
mod tests;

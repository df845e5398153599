//! The register frame that the vector assembly saves on every trap.

/// General-purpose registers of the interrupted context plus its ELR_EL2 and SPSR_EL2.
/// The layout is fixed by `vectors.S` (`save_frame`): x0..x30, elr, spsr.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapFrame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 33 * 8);

/// The host's registers as its SMCCC-call entry saves them (`vectors.S`, `host_sync_entry`):
/// x0..x18, x30, ELR_EL2 and SPSR_EL2. x19..x29 are not saved: a call's arguments and results
/// live in x0..x17 (SMCCC), and the Rust handler preserves x19..x29 itself (AAPCS64), so this
/// type cannot name them. x0..x3 sit where a [`TrapFrame`] has them (the entry stores them
/// before it knows which frame it builds).
#[repr(C)]
pub struct CallFrame {
    x: [u64; 19],
    x30: u64,
    elr: u64,
    spsr: u64,
}

const _: () = assert!(core::mem::size_of::<CallFrame>() == 22 * 8);

/// How many registers a host call reads and writes: x0 (function id, then status) .. x5.
pub const CALL_REGS: usize = 6;

/// How many registers a host call may return results in (SMCCC 1.2): x0..x17. Only VCPU_RUN
/// writes past x5 (`corevisor_abi::console`).
pub const RESULT_REGS: usize = 18;

impl CallFrame {
    /// x0..x5: the call's function id and arguments in, its status and results out.
    #[inline]
    pub fn call_regs(&mut self) -> &mut [u64; CALL_REGS] {
        let (regs, _) = self.x.split_first_chunk_mut::<CALL_REGS>().unwrap_or_else(|| unreachable!());
        regs
    }

    /// x0..x17: a call's function id and arguments in, everything it returns out.
    #[inline]
    pub fn result_regs(&mut self) -> &mut [u64; RESULT_REGS] {
        let (regs, _) = self.x.split_first_chunk_mut::<RESULT_REGS>().unwrap_or_else(|| unreachable!());
        regs
    }
}

/// Which vector entry was taken; the numbering is fixed by `vectors.S`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    Sync,
    Irq,
    Fiq,
    SError,
}

impl TrapKind {
    /// Decodes the kind number that `vectors.S` passes in x1.
    pub fn from_vector(kind: u64) -> TrapKind {
        match kind {
            0 => TrapKind::Sync,
            1 => TrapKind::Irq,
            2 => TrapKind::Fiq,
            _ => TrapKind::SError,
        }
    }
}

/// Added to the kind a guest exit reports (world_switch.S, `KIND_SERROR_AT_EXIT`): an SError
/// was pending when the guest left, and KCore took it in the exit's abort window.
pub const SERROR_AT_EXIT: u64 = 0x10;

/// How a guest left: the vector it took, and whether it left an SError behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestExit {
    pub kind: TrapKind,
    pub serror: bool,
}

impl GuestExit {
    /// Decodes what `__guest_enter` returns.
    pub fn from_world_switch(value: u64) -> GuestExit {
        GuestExit { kind: TrapKind::from_vector(value & !SERROR_AT_EXIT), serror: value & SERROR_AT_EXIT != 0 }
    }
}

impl TrapFrame {
    /// x0..x5, as a host call reads and writes them (a full frame holds them too).
    #[inline]
    pub fn call_regs(&mut self) -> &mut [u64; CALL_REGS] {
        let (regs, _) = self.x.split_first_chunk_mut::<CALL_REGS>().unwrap_or_else(|| unreachable!());
        regs
    }

    /// x0..x17, as [`CallFrame::result_regs`].
    #[inline]
    pub fn result_regs(&mut self) -> &mut [u64; RESULT_REGS] {
        let (regs, _) = self.x.split_first_chunk_mut::<RESULT_REGS>().unwrap_or_else(|| unreachable!());
        regs
    }

    /// x0..x5, read only.
    #[inline]
    pub fn call_args(&self) -> &[u64; CALL_REGS] {
        let (regs, _) = self.x.split_first_chunk::<CALL_REGS>().unwrap_or_else(|| unreachable!());
        regs
    }

    /// A frame that enters EL1h at `entry` with all interrupts masked and `x0 = arg`.
    pub fn el1_entry(entry: u64, arg: u64) -> TrapFrame {
        /// SPSR_EL2: EL1h (M = 0b0101) with D, A, I, F masked.
        const SPSR_EL1H_MASKED: u64 = 0x3C5;
        let mut frame = TrapFrame { elr: entry, spsr: SPSR_EL1H_MASKED, ..TrapFrame::default() };
        frame.x[0] = arg;
        frame
    }
}

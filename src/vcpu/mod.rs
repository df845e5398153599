//! vCPUs (SeKVM VCPUOpsAux and VCPUOps): a vCPU's saved context, how it starts, and how KCore
//! finishes an exit once the host has answered it. The host never sees this context: it learns
//! only the exit record, and it answers with one value that KCore applies itself (an MMIO load's
//! value, a page for a stage-2 fault, a call's result), so it cannot set a guest register or the
//! guest's PC.

pub mod controls;
pub mod fp;
#[cfg(test)]
pub(crate) mod tests;
pub mod vgic;
#[cfg(target_os = "none")]
pub mod world_switch;

use crate::machine::guest_regs::{El1Regs, FpRegs, GuestGprs};
use crate::machine::TrapFrame;
use alloc::boxed::Box;
use vgic::VgicState;

/// SPSR of a vCPU's first instruction: EL1h, D, A, I and F masked (what a reset gives).
pub const SPSR_EL1H_MASKED: u64 = 0x3C5;

/// What KCore must do with the host's answer before the vCPU runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Nothing: the vCPU resumes where it stopped.
    Nothing,
    /// An MMIO load: the answer goes into register `reg` (31: discarded), cut to `1 << size_log2`
    /// bytes, sign-extended if `sign_extend`, and cut to 32 bits unless `wide`; then the PC skips
    /// the load.
    MmioRead { reg: u8, size_log2: u8, sign_extend: bool, wide: bool },
    /// An MMIO store: the PC skips it.
    MmioWrite,
    /// A stage-2 fault on guest RAM page `gfn`: the answer is the host page to give it.
    PageFault { gfn: u64 },
    /// A call the host served: the answer is the guest's x0.
    CallResult,
}

/// The exit record VCPU_RUN returns (`corevisor_abi::exit`): reason, then details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    pub reason: u64,
    pub details: [u64; 4],
}

/// A vCPU's whole saved state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuContext {
    pub gprs: GuestGprs,
    pub el1: El1Regs,
    pub fp: FpRegs,
    /// The version of `fp` (`fp::FpMark`): the core whose registers still hold exactly these
    /// values skips their reload.
    pub fp_mark: fp::FpMark,
    pub pending: Pending,
    /// Whether the vCPU has run (its registers are its own, not a reset state).
    pub started: bool,
    /// Where a PSCI CPU_ON from a sibling vCPU asked this one to start: (entry, context id).
    pub power_on: Option<(u64, u64)>,
    /// Which vCPU of its VM this is (its MPIDR affinity).
    pub index: u8,
    /// A virtual SError is pending for this vCPU (an asynchronous abort the guest caused, issue
    /// 11 finding 8): the world switch sets HCR_EL2.VSE on every entry while this is set, and
    /// clears it once the guest has taken it.
    pub virtual_serror: bool,
    /// Its virtual CPU interface and the virtual interrupts waiting for it (kept across
    /// `start`: the host may inject before the vCPU first runs).
    pub vgic: VgicState,
    /// The console bytes the guest wrote since its last exit to the host (empty outside a run:
    /// every exit to the host takes them).
    pub console: ConsoleBuffer,
}

/// A vCPU's console output on its way to the host (`corevisor_abi::console`): the PL011 DR
/// bytes KCore took in place since the vCPU's last exit to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleBuffer {
    len: usize,
    bytes: [u8; ConsoleBuffer::CAPACITY],
}

impl Default for ConsoleBuffer {
    fn default() -> ConsoleBuffer {
        ConsoleBuffer { len: 0, bytes: [0; ConsoleBuffer::CAPACITY] }
    }
}

impl ConsoleBuffer {
    /// As many bytes as one VCPU_RUN returns.
    pub const CAPACITY: usize = corevisor_abi::console::BYTES;

    /// Appends `byte`; returns whether the buffer must go to the host now (full, or a newline
    /// ended a line). Never called on a full buffer: the push that filled it sent it.
    #[inline]
    pub fn push(&mut self, byte: u8) -> bool {
        let filling = self.len + 1 == Self::CAPACITY;
        if !(filling && crate::mutation::planted(crate::mutation::Mutation::ConsoleDropsByteWhenFull)) {
            self.bytes[self.len] = byte;
            self.len += 1;
        }
        byte == b'\n' || filling
    }

    /// The bytes waiting for the host.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Empties the buffer into `regs` (x6..x17 of VCPU_RUN's result): the count, then the bytes
    /// packed little-endian, the rest of x7..x17 zero. An empty buffer writes the count alone
    /// (x7..x17 keep the host's own values: the host reads no byte past the count).
    #[inline]
    pub fn drain_into(&mut self, regs: &mut [u64; 1 + corevisor_abi::console::BYTE_REGS]) {
        regs[0] = self.len as u64;
        if self.len == 0 {
            return;
        }
        for (reg, chunk) in regs[1..].iter_mut().zip(self.bytes.chunks_exact(8)) {
            *reg = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
        self.bytes = [0; Self::CAPACITY];
        self.len = 0;
    }
}

impl VcpuContext {
    pub fn new(index: u8) -> Box<VcpuContext> {
        Box::new(VcpuContext {
            gprs: GuestGprs::default(),
            el1: El1Regs::reset(),
            fp: FpRegs::default(),
            fp_mark: fp::FpMark::NONE,
            pending: Pending::Nothing,
            started: false,
            power_on: None,
            index,
            virtual_serror: false,
            vgic: VgicState::default(),
            console: ConsoleBuffer::default(),
        })
    }

    /// Resets the vCPU to start at `entry` with `x0 = arg` (SeKVM `reset_gp_regs` and
    /// `reset_sys_regs`): every other register zero, EL1h with interrupts masked, MMU off.
    pub fn start(&mut self, entry: u64, arg: u64) {
        self.gprs = GuestGprs::default();
        self.gprs.frame.elr = entry;
        self.gprs.frame.spsr = SPSR_EL1H_MASKED;
        self.gprs.frame.x[0] = arg;
        self.el1 = El1Regs::reset();
        self.fp = FpRegs::default();
        if !crate::mutation::planted(crate::mutation::Mutation::FpMarkKeptOnStart) {
            self.fp_mark = fp::FpMark::NONE;
        }
        self.pending = Pending::Nothing;
        self.virtual_serror = false;
        self.console = ConsoleBuffer::default();
        self.started = true;
    }

    /// Applies the host's `answer` to a pending MMIO access or call. A page fault's answer needs
    /// the memory layers: the caller serves it and then clears `pending`.
    pub fn complete(&mut self, answer: u64) {
        let frame = &mut self.gprs.frame;
        match self.pending {
            Pending::MmioRead { reg, size_log2, sign_extend, wide } => {
                DataAccess { write: false, size_log2, sign_extend, reg, wide }.complete_load(frame, answer);
            }
            Pending::MmioWrite => frame.elr = frame.elr.wrapping_add(4),
            Pending::CallResult => frame.x[0] = answer,
            Pending::Nothing | Pending::PageFault { .. } => return,
        }
        self.pending = Pending::Nothing;
    }
}

/// A data abort's instruction syndrome (ESR ISS with ISV set), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAccess {
    pub write: bool,
    pub size_log2: u8,
    pub sign_extend: bool,
    /// The transfer register (31 is xzr).
    pub reg: u8,
    /// A 64-bit register (SF).
    pub wide: bool,
}

impl DataAccess {
    /// Decodes the ISS of a data abort; `None` if the syndrome carries no instruction details
    /// (ISV clear: a load/store pair, an exclusive, a write-back form...).
    pub fn decode(esr: u64) -> Option<DataAccess> {
        const ISV: u64 = 1 << 24;
        if esr & ISV == 0 {
            return None;
        }
        Some(DataAccess {
            size_log2: (esr >> 22 & 3) as u8,
            sign_extend: esr >> 21 & 1 == 1,
            reg: (esr >> 16 & 0x1f) as u8,
            wide: esr >> 15 & 1 == 1,
            write: esr >> 6 & 1 == 1,
        })
    }

    /// The value a store writes, from the guest's registers.
    pub fn store_value(&self, gprs: &GuestGprs) -> u64 {
        self.store_value_in(&gprs.frame)
    }

    /// The value a store writes, from the registers in `frame` (a guest's, or the host's).
    pub fn store_value_in(&self, frame: &TrapFrame) -> u64 {
        let value = if self.reg < 31 { frame.x[self.reg as usize] } else { 0 };
        match self.size_log2 {
            3 => value,
            n => value & ((1u64 << (8u32 << n)) - 1),
        }
    }

    /// Finishes a load in `frame` with the `answer` read for it: cut to the access size,
    /// sign-extended if the load does, cut to 32 bits unless the register is 64-bit, written to
    /// the transfer register (xzr: dropped); the PC moves past the load.
    pub fn complete_load(&self, frame: &mut TrapFrame, answer: u64) {
        let bits = 8u32 << self.size_log2;
        let mut value = if bits == 64 { answer } else { answer & ((1u64 << bits) - 1) };
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            value = (((value << shift) as i64) >> shift) as u64;
        }
        if !self.wide {
            value &= 0xffff_ffff;
        }
        if self.reg < 31 {
            frame.x[self.reg as usize] = value;
        }
        frame.elr = frame.elr.wrapping_add(4);
    }

    /// The exit record flags (`corevisor_abi::exit::mmio_flags`).
    pub fn flags(&self) -> u64 {
        use corevisor_abi::exit::mmio_flags;
        (self.write as u64 * mmio_flags::WRITE) | ((self.size_log2 as u64) << mmio_flags::SIZE_SHIFT)
    }

    /// What the vCPU waits for after this access exits to the host.
    pub fn pending(&self) -> Pending {
        if self.write {
            Pending::MmioWrite
        } else {
            Pending::MmioRead {
                reg: self.reg,
                size_log2: self.size_log2,
                sign_extend: self.sign_extend,
                wide: self.wide,
            }
        }
    }
}

//! The register state of a vCPU that the world switch moves in and out of the CPU. The layouts
//! are fixed by `world_switch.S`; the types are architecture-independent so that the vCPU layers
//! above build and are tested on the host.

use super::TrapFrame;

/// What `world_switch.S` loads into the CPU on guest entry and saves on guest exit: the guest's
/// general registers, ELR and SPSR, then KCore's own callee-saved registers, stack pointer and
/// in-place hook while the guest runs. 16-byte aligned: SP_EL2 points here while the guest runs.
///
/// After an exit KCore served in place (`world_switch::GuestWorld::serve_in_place`), x19..x29 in
/// `frame` are stale: the guest's live values never left the CPU.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestGprs {
    pub frame: TrapFrame,
    /// x19..x30 and sp of the KCore code that entered the guest, the hook (function, data) for
    /// the synchronous exits it serves in place, and the IRQ hook's function.
    kcore_callee: [u64; 16],
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 264);
// 264 + 16 * 8 = 392, padded to the 16-byte alignment.
const _: () = assert!(core::mem::size_of::<GuestGprs>() == 400);

/// EL1 system registers and the virtual timer, in the order `world_switch.S` saves them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El1Regs(pub [u64; El1Regs::COUNT]);

impl El1Regs {
    pub const COUNT: usize = 26;
    pub const SCTLR: usize = 0;
    pub const CPACR: usize = 1;
    pub const ESR: usize = 5;
    pub const FAR: usize = 8;
    pub const VBAR: usize = 10;
    pub const ELR: usize = 17;
    pub const SPSR: usize = 18;
    pub const CNTV_CTL: usize = 24;
    pub const CNTV_CVAL: usize = 25;
    /// SCTLR_EL1 out of reset: MMU and caches off, RES1 bits set.
    pub const SCTLR_RESET: u64 = 0x30D0_0800;

    /// The registers of a vCPU that has never run.
    pub fn reset() -> El1Regs {
        let mut regs = El1Regs::default();
        regs.0[Self::SCTLR] = Self::SCTLR_RESET;
        regs
    }
}

/// FP/SIMD state: q0..q31, FPSR, FPCR.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpRegs {
    pub q: [u128; 32],
    pub fpsr: u64,
    pub fpcr: u64,
}

impl FpRegs {
    pub const ZERO: FpRegs = FpRegs { q: [0; 32], fpsr: 0, fpcr: 0 };
}

/// The EL2 controls that differ between the host and a guest (computed by `vcpu::controls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El2Controls {
    pub hcr: u64,
    pub vttbr: u64,
    pub vmpidr: u64,
    pub cntvoff: u64,
    pub mdcr: u64,
    pub cnthctl: u64,
    pub cptr: u64,
    /// ICH_HCR_EL2, on CPUs with the GICv3 system registers (others ignore it).
    pub ich_hcr: u64,
}

/// The EL2 state a core sets before it first runs the host, the same in both worlds (computed
/// by `vcpu::controls::core_controls`; only [`El2Controls`] changes at a world switch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreControls {
    /// VTCR_EL2: the stage-2 translation regime of every VMID.
    pub vtcr: u64,
    /// VPIDR_EL2: what EL1 reads from MIDR_EL1.
    pub vpidr: u64,
    /// SCTLR_EL1 that the host starts with.
    pub host_sctlr_el1: u64,
    /// ICC_SRE_EL2 on a GICv3 with system-register access.
    pub icc_sre_el2: Option<u64>,
    /// ACTLR_EL2 on the cores whose layout of it KCore knows.
    pub actlr_el2: Option<u64>,
}

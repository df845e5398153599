//! The EL2 controls of each world, and what a guest sees of the CPU (SeKVM's CtxtSwitch
//! configuration). Everything here is computed from [`CpuFeatures`], so the host tests check it
//! for any CPU one describes, and the world switch only loads what this module says.
//!
//! The rule for guests: a guest sees in its ID registers only features whose state the world
//! switch moves ([`GuestAccess::Switched`]); everything else it could reach traps to KCore
//! ([`GuestAccess::Trapped`]), which hides it and answers with an UNDEF. [`GUEST_FEATURES`] is
//! that table; [`guest_id_register`] is the allow-list of ID fields a guest may see.
//!
//! Trap bits that only exist with a feature are set only when the CPU has it (they are RES0
//! otherwise). Bit positions are the Arm ARM's (DDI 0487, D19).

use crate::machine::features::{field, fields, CpuFeatures, IdReg};
use crate::machine::guest_regs::{CoreControls, El1Regs, El2Controls};
use crate::mutation::{planted, Mutation};

/// HCR_EL2 bits.
pub mod hcr {
    /// Stage-2 translation for EL1&0.
    pub const VM: u64 = 1 << 0;
    pub const FMO: u64 = 1 << 3;
    pub const IMO: u64 = 1 << 4;
    pub const AMO: u64 = 1 << 5;
    /// TLB and I-cache maintenance broadcast to the inner-shareable domain.
    pub const FB: u64 = 1 << 9;
    pub const BSU_INNER: u64 = 1 << 10;
    pub const TWI: u64 = 1 << 13;
    pub const TWE: u64 = 1 << 14;
    /// ID registers (the `S3_0_C0_<1..7>_<op2>` space).
    pub const TID3: u64 = 1 << 18;
    pub const TSC: u64 = 1 << 19;
    /// IMPLEMENTATION DEFINED registers.
    pub const TIDCP: u64 = 1 << 20;
    /// Auxiliary control registers (ACTLR_EL1).
    pub const TACR: u64 = 1 << 21;
    /// Data-cache maintenance by set/way.
    pub const TSW: u64 = 1 << 22;
    /// EL1 is AArch64.
    pub const RW: u64 = 1 << 31;
    /// LORegion registers (FEAT_LOR).
    pub const TLOR: u64 = 1 << 35;
    /// RAS error record registers (FEAT_RAS).
    pub const TERR: u64 = 1 << 36;
    /// Pointer authentication: 0 traps the key registers (FEAT_PAuth).
    pub const APK: u64 = 1 << 40;
    /// Pointer authentication: 0 traps the PAC instructions (FEAT_PAuth).
    pub const API: u64 = 1 << 41;
    /// Allocation tags: 0 traps the MTE registers and disables tag access (FEAT_MTE2).
    pub const ATA: u64 = 1 << 56;
}

/// MDCR_EL2 bits.
pub mod mdcr {
    /// HPMN: how many event counters belong to EL1&0 (bits 4:0).
    pub const HPMN_MASK: u64 = 0x1f;
    pub const TPMCR: u64 = 1 << 5;
    pub const TPM: u64 = 1 << 6;
    pub const TDA: u64 = 1 << 9;
    pub const TDOSA: u64 = 1 << 10;
    pub const TDRA: u64 = 1 << 11;
    /// Profiling buffer owner (bits 13:12): 0b00 is EL2, with EL1's accesses to it trapped.
    pub const E2PB_MASK: u64 = 3 << 12;
    /// Profiling control registers (FEAT_SPE).
    pub const TPMS: u64 = 1 << 14;
    /// No event counting at EL2 (FEAT_PMUv3p1).
    pub const HPMD: u64 = 1 << 17;
    /// Trace filter control (FEAT_TRF).
    pub const TTRF: u64 = 1 << 19;
    /// No cycle counting at EL2 (FEAT_PMUv3p5).
    pub const HCCD: u64 = 1 << 23;
    /// Trace buffer owner (bits 25:24): 0b00 is EL2, with EL1's accesses to it trapped.
    pub const E2TB_MASK: u64 = 3 << 24;
}

/// CPTR_EL2 bits (HCR_EL2.E2H = 0 layout).
pub mod cptr {
    /// RES1 bits 13, 9 and 7:0, with TZ (bit 8) and TSM (bit 12) set, which are RES1 without
    /// SVE and SME and trap them with: SVE and SME stay trapped in both worlds.
    pub const BASE: u64 = 0x33FF;
    pub const TZ: u64 = 1 << 8;
    /// FP/SIMD: 0 in both worlds' controls (the world switch moves q0-q31, FPSR and FPCR); set
    /// in the host's while its registers are parked (`world_switch::HostFp`).
    pub const TFP: u64 = 1 << 10;
    pub const TSM: u64 = 1 << 12;
    /// Trace unit system registers (when the CPU has them).
    pub const TTA: u64 = 1 << 20;
    /// Activity monitors (FEAT_AMUv1).
    pub const TAM: u64 = 1 << 30;
}

/// CNTHCTL_EL2 bits.
pub mod cnthctl {
    /// EL1 may read the physical counter.
    pub const EL1PCTEN: u64 = 1 << 0;
    /// EL1 may use the physical timer.
    pub const EL1PCEN: u64 = 1 << 1;
}

/// What the host's PMU may count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPmu {
    /// Nothing at EL2 (where the CPU can prohibit it: MDCR_EL2.HPMD, HCCD), and nothing while a
    /// guest runs (KCore stops the host's counters on guest entry).
    Confined,
    /// `pmu-bench` builds only: the host's counters run at EL2 and across guest runs, so that
    /// `cargo xtask bench` can count KCore's instructions.
    CountsEl2,
}

impl HostPmu {
    /// What this build does: [`HostPmu::CountsEl2`] only with the `pmu-bench` feature.
    pub const fn of_build() -> HostPmu {
        if cfg!(feature = "pmu-bench") {
            HostPmu::CountsEl2
        } else {
            HostPmu::Confined
        }
    }
}

/// CPTR_EL2 of both worlds: FP/SIMD free, SVE, SME and system-register trace trapped.
fn common_cptr(cpu: &CpuFeatures) -> u64 {
    cptr::BASE | if cpu.trace_sysregs() { cptr::TTA } else { 0 }
}

/// MDCR_EL2 of both worlds: every event counter is EL1's (HPMN = PMCR_EL0.N); the profiling
/// and trace buffers belong to EL2, which never turns them on (E2PB = E2TB = 0: EL1's accesses
/// trap); and, unless the host may count EL2, no counting at EL2.
fn common_mdcr(cpu: &CpuFeatures, pmu: HostPmu) -> u64 {
    let mut mdcr = u64::from(cpu.pmu_counters()) & mdcr::HPMN_MASK;
    if pmu == HostPmu::Confined {
        if cpu.pmu_v3p1() {
            mdcr |= mdcr::HPMD;
        }
        if cpu.pmu_v3p5() {
            mdcr |= mdcr::HCCD;
        }
    }
    mdcr
}

/// ACTLR_EL2 for the cores whose IMPLEMENTATION DEFINED control registers KCore knows: on the
/// Cortex-A35/A53/A57/A72/A73, bits [6:0] let EL1 write CPUACTLR_EL1, CPUECTLR_EL1, L2CTLR_EL1,
/// L2ECTLR_EL1 and L2ACTLR_EL1 (the TRMs' "Auxiliary Control Register, EL2"). Those registers
/// switch off prefetchers, coherency and the branch-predictor behaviour the entry mitigations
/// rely on, and a firmware may have left EL1 write access on: KCore takes it away (0) from the
/// host and every guest. `None` for other cores, whose ACTLR_EL2 KCore leaves as it found it.
pub fn actlr_el2(cpu: &CpuFeatures) -> Option<u64> {
    const ARM: u8 = 0x41;
    const A35: u16 = 0xd04;
    const A53: u16 = 0xd03;
    const A57: u16 = 0xd07;
    const A72: u16 = 0xd08;
    const A73: u16 = 0xd09;
    match cpu.part() {
        (ARM, A35 | A53 | A57 | A72 | A73) => Some(0),
        _ => None,
    }
}

/// VTCR_EL2 of every world: a 39-bit IPA space starting at level 1, 4 KiB granule,
/// inner-shareable write-back table walks, 40-bit output addresses.
pub const VTCR: u64 = {
    const RES1: u64 = 1 << 31;
    const PS_40_BITS: u64 = 0b010 << 16;
    const SH0_INNER: u64 = 0b11 << 12;
    const ORGN0_WB: u64 = 0b01 << 10;
    const IRGN0_WB: u64 = 0b01 << 8;
    const SL0_LEVEL1: u64 = 0b01 << 6;
    const T0SZ_39_BITS: u64 = 25;
    RES1 | PS_40_BITS | SH0_INNER | ORGN0_WB | IRGN0_WB | SL0_LEVEL1 | T0SZ_39_BITS
};

/// The EL2 state a core sets once before it runs the host: [`VTCR`], its real `midr` for EL1,
/// SCTLR_EL1 out of reset, on a GICv3 (`gic_v3`) system-register access to the GIC for EL1
/// (ICC_SRE_EL2.SRE and Enable), and [`actlr_el2`].
pub fn core_controls(cpu: &CpuFeatures, midr: u64, gic_v3: bool) -> CoreControls {
    const ICC_SRE_SRE_AND_ENABLE: u64 = 0b1001;
    CoreControls {
        vtcr: VTCR,
        vpidr: midr,
        host_sctlr_el1: El1Regs::SCTLR_RESET,
        icc_sre_el2: gic_v3.then_some(ICC_SRE_SRE_AND_ENABLE),
        actlr_el2: actlr_el2(cpu),
    }
}

/// The host's EL2 controls: stage-2 on (`vttbr`: its root, VMID 0), EL1 is AArch64, SMCs trap
/// so that PSCI is mediated, set/way cache maintenance traps (KCore performs it as clean and
/// invalidate, so the host cannot discard lines KCore has not written back), pointer
/// authentication is the host's own (its keys stay in the CPU while a guest runs, which cannot
/// reach them). Interrupts go straight to EL1; the physical timer and counter are the host's.
pub fn host_controls(cpu: &CpuFeatures, pmu: HostPmu, vttbr: u64, vmpidr: u64) -> El2Controls {
    let mut hcr = hcr::VM | hcr::RW | hcr::TSC | hcr::TSW;
    if cpu.pauth() {
        hcr |= hcr::APK | hcr::API;
    }
    El2Controls {
        hcr,
        vttbr,
        vmpidr,
        cntvoff: 0,
        mdcr: common_mdcr(cpu, pmu),
        cnthctl: cnthctl::EL1PCTEN | cnthctl::EL1PCEN,
        cptr: common_cptr(cpu),
        ich_hcr: 0,
    }
}

/// A guest's EL2 controls: stage-2 on (`vttbr`), EL1 is AArch64, physical interrupts and
/// SErrors come to EL2, and every feature of [`GUEST_FEATURES`] that is not switched traps:
/// SMC, WFI/WFE, ID registers, set/way maintenance, ACTLR and IMPLEMENTATION DEFINED registers,
/// pointer authentication (API = APK = 0), allocation tags (ATA = 0), LORegions, RAS error
/// records, the PMU, debug, trace, profiling, activity monitors, SVE and SME, and the physical
/// timer, and the GIC's (virtual) CPU interface. TLB and I-cache maintenance is broadcast to the inner-shareable domain, so a VM's
/// vCPUs on different cores stay coherent.
pub fn guest_controls(cpu: &CpuFeatures, pmu: HostPmu, vttbr: u64, vmpidr: u64, cntvoff: u64) -> El2Controls {
    for_vcpu(&guest_template(cpu, pmu), vttbr, vmpidr, cntvoff)
}

/// What [`guest_controls`] gives every vCPU on `cpu` alike: all but its stage-2, affinity and
/// counter offset (zero here). A core computes it once (`host_cores`), so that a VCPU_RUN only
/// fills in those three ([`for_vcpu`]) instead of deriving the rest from the CPU's features.
pub fn guest_template(cpu: &CpuFeatures, pmu: HostPmu) -> El2Controls {
    let mut hcr = hcr::VM
        | hcr::FMO
        | hcr::IMO
        | hcr::AMO
        | hcr::FB
        | hcr::BSU_INNER
        | hcr::TWI
        | hcr::TWE
        | hcr::TID3
        | hcr::TSC
        | hcr::TIDCP
        | hcr::TACR
        | hcr::TSW
        | hcr::RW;
    if planted(Mutation::GuestHcrDropsTid3) {
        hcr &= !hcr::TID3;
    }
    if cpu.lor() {
        hcr |= hcr::TLOR;
    }
    if cpu.ras() {
        hcr |= hcr::TERR;
    }
    let mut mdcr = common_mdcr(cpu, pmu) | mdcr::TPM | mdcr::TPMCR | mdcr::TDA | mdcr::TDOSA | mdcr::TDRA;
    if cpu.spe() {
        mdcr |= mdcr::TPMS;
    }
    if cpu.trace_filter() {
        mdcr |= mdcr::TTRF;
    }
    let mut cptr = common_cptr(cpu);
    if cpu.amu() {
        cptr |= cptr::TAM;
    }
    // The GIC system registers reach the virtual CPU interface (IMO/FMO), whose state the world
    // switch moves (`vcpu::vgic`): ICH_HCR_EL2 is the vCPU's, loaded after these controls.
    El2Controls { hcr, vttbr: 0, vmpidr: 0, cntvoff: 0, mdcr, cnthctl: cnthctl::EL1PCTEN, cptr, ich_hcr: 0 }
}

/// A vCPU's EL2 controls: the CPU's [`guest_template`] with the vCPU's stage-2 (`vttbr`),
/// affinity (`vmpidr`) and counter offset (`cntvoff`).
#[inline]
pub fn for_vcpu(template: &El2Controls, vttbr: u64, vmpidr: u64, cntvoff: u64) -> El2Controls {
    El2Controls { vttbr, vmpidr, cntvoff, ..*template }
}

/// Whether KCore stops the host's PMU counters while a guest runs (PMCNTENSET_EL0 saved and
/// cleared on guest entry, restored on exit): whenever the CPU has an architected PMU, except in
/// `pmu-bench` builds.
pub fn stops_host_pmu_in_guest(cpu: &CpuFeatures, pmu: HostPmu) -> bool {
    cpu.pmu_version().is_some() && pmu == HostPmu::Confined
}

/// An EL2 control register, for [`Control`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum El2Reg {
    Hcr,
    Mdcr,
    Cptr,
    Cnthctl,
    IchHcr,
}

impl El2Reg {
    pub fn of(self, c: &El2Controls) -> u64 {
        match self {
            El2Reg::Hcr => c.hcr,
            El2Reg::Mdcr => c.mdcr,
            El2Reg::Cptr => c.cptr,
            El2Reg::Cnthctl => c.cnthctl,
            El2Reg::IchHcr => c.ich_hcr,
        }
    }
}

/// The control that traps a feature: `bits` of `reg` all set (`set`), or all clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub reg: El2Reg,
    pub bits: u64,
    pub set: bool,
}

impl Control {
    const fn set(reg: El2Reg, bits: u64) -> Control {
        Control { reg, bits, set: true }
    }
    const fn clear(reg: El2Reg, bits: u64) -> Control {
        Control { reg, bits, set: false }
    }
    /// Whether `c` has this control in force.
    pub fn holds(&self, c: &El2Controls) -> bool {
        let value = self.reg.of(c) & self.bits;
        if self.set {
            value == self.bits
        } else {
            value == 0
        }
    }
}

/// What a guest can reach of the CPU, feature by feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// AArch64 at EL0/EL1: general registers, the EL1 system registers, stage-1 translation.
    Aarch64,
    /// FP and Advanced SIMD (q0-q31, FPSR, FPCR).
    FpSimd,
    /// Instructions that work only on general, FP/SIMD registers and PSTATE (crypto, atomics,
    /// CRC, dot product, BTI, SSBS, DIT, PAN, UAO, speculation barriers, ...).
    Instructions,
    /// Properties of the CPU with no state (speculation guarantees, TLB behaviour).
    Properties,
    /// The virtual timer (CNTV_*, CNTKCTL_EL1, the VM's CNTVOFF).
    VirtualTimer,
    PhysicalTimer,
    Smc,
    WaitForInterrupt,
    IdRegisters,
    SetWay,
    /// ACTLR_EL1 and the IMPLEMENTATION DEFINED registers (the core's own configuration).
    ImplementationDefined,
    Debug,
    Pmu,
    PointerAuth,
    LoRegions,
    Ras,
    ActivityMonitors,
    Sve,
    Sme,
    /// The trace unit's system registers.
    Trace,
    TraceFilter,
    TraceBuffer,
    Profiling,
    MemoryTagging,
    /// GICv3 CPU interface system registers: with IMO/FMO they reach the virtual CPU interface,
    /// whose state (ICH_LR<n>, ICH_VMCR_EL2, ICH_AP0R0/AP1R0, ICH_HCR) the world switch moves
    /// (`vcpu::vgic`). ICC_SRE_EL1 is not trapped (README, known limitations).
    GicSysregs,
    Mpam,
    BranchRecords,
}

/// How a guest meets a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestAccess {
    /// The world switch moves its state (or it has none): the guest may see it.
    Switched,
    /// It traps to KCore with these controls in force: hidden from the guest's ID registers,
    /// and an UNDEF (or an exit KCore serves) when the guest tries it.
    Trapped(&'static [Control]),
    /// Hidden from the guest's ID registers, but neither switched nor trapped: KCore warns at
    /// boot when the CPU has it.
    Unhandled,
}

use El2Reg::{Cnthctl, Cptr, Hcr, Mdcr};

/// The table of the rule above: every feature a guest could reach, and how corevisor keeps it
/// the guest's or keeps the guest from it.
pub const GUEST_FEATURES: &[(Feature, GuestAccess)] = &[
    (Feature::Aarch64, GuestAccess::Switched),
    (Feature::FpSimd, GuestAccess::Switched),
    (Feature::Instructions, GuestAccess::Switched),
    (Feature::Properties, GuestAccess::Switched),
    (Feature::VirtualTimer, GuestAccess::Switched),
    (Feature::PhysicalTimer, GuestAccess::Trapped(&[Control::clear(Cnthctl, cnthctl::EL1PCEN)])),
    (Feature::Smc, GuestAccess::Trapped(&[Control::set(Hcr, hcr::TSC)])),
    (Feature::WaitForInterrupt, GuestAccess::Trapped(&[Control::set(Hcr, hcr::TWI | hcr::TWE)])),
    (Feature::IdRegisters, GuestAccess::Trapped(&[Control::set(Hcr, hcr::TID3)])),
    (Feature::SetWay, GuestAccess::Trapped(&[Control::set(Hcr, hcr::TSW)])),
    (Feature::ImplementationDefined, GuestAccess::Trapped(&[Control::set(Hcr, hcr::TACR | hcr::TIDCP)])),
    (Feature::Debug, GuestAccess::Trapped(&[Control::set(Mdcr, mdcr::TDA | mdcr::TDOSA | mdcr::TDRA)])),
    (Feature::Pmu, GuestAccess::Trapped(&[Control::set(Mdcr, mdcr::TPM | mdcr::TPMCR)])),
    (Feature::PointerAuth, GuestAccess::Trapped(&[Control::clear(Hcr, hcr::API | hcr::APK)])),
    (Feature::LoRegions, GuestAccess::Trapped(&[Control::set(Hcr, hcr::TLOR)])),
    // DISR_EL1 reaches VDISR_EL2 (AMO is set), which KCore clears on every guest entry.
    (Feature::Ras, GuestAccess::Trapped(&[Control::set(Hcr, hcr::TERR | hcr::AMO)])),
    (Feature::ActivityMonitors, GuestAccess::Trapped(&[Control::set(Cptr, cptr::TAM)])),
    (Feature::Sve, GuestAccess::Trapped(&[Control::set(Cptr, cptr::TZ)])),
    (Feature::Sme, GuestAccess::Trapped(&[Control::set(Cptr, cptr::TSM)])),
    (Feature::Trace, GuestAccess::Trapped(&[Control::set(Cptr, cptr::TTA)])),
    (Feature::TraceFilter, GuestAccess::Trapped(&[Control::set(Mdcr, mdcr::TTRF)])),
    (Feature::TraceBuffer, GuestAccess::Trapped(&[Control::clear(Mdcr, mdcr::E2TB_MASK)])),
    (
        Feature::Profiling,
        GuestAccess::Trapped(&[Control::set(Mdcr, mdcr::TPMS), Control::clear(Mdcr, mdcr::E2PB_MASK)]),
    ),
    (Feature::MemoryTagging, GuestAccess::Trapped(&[Control::clear(Hcr, hcr::ATA)])),
    (Feature::GicSysregs, GuestAccess::Switched),
    (Feature::Mpam, GuestAccess::Unhandled),
    (Feature::BranchRecords, GuestAccess::Unhandled),
];

/// How a guest meets `feature`.
pub fn guest_access(feature: Feature) -> GuestAccess {
    GUEST_FEATURES.iter().find(|(f, _)| *f == feature).map_or(GuestAccess::Unhandled, |(_, a)| *a)
}

/// Whether the CPU has `feature` (the always-present ones are always there).
pub fn cpu_has(cpu: &CpuFeatures, feature: Feature) -> bool {
    match feature {
        Feature::Pmu => cpu.pmu_version().is_some(),
        Feature::PointerAuth => cpu.pauth(),
        Feature::LoRegions => cpu.lor(),
        Feature::Ras => cpu.ras(),
        Feature::ActivityMonitors => cpu.amu(),
        Feature::Sve => cpu.sve(),
        Feature::Sme => cpu.sme(),
        Feature::Trace => cpu.trace_sysregs(),
        Feature::TraceFilter => cpu.trace_filter(),
        Feature::TraceBuffer => cpu.trace_buffer(),
        Feature::Profiling => cpu.spe(),
        Feature::MemoryTagging => cpu.mte2(),
        Feature::GicSysregs => cpu.gic_sysregs(),
        Feature::Mpam => cpu.mpam(),
        Feature::BranchRecords => cpu.brbe(),
        _ => true,
    }
}

/// The features of the CPU that guests can reach and KCore neither switches nor traps (for the
/// boot warning).
pub fn unhandled(cpu: &CpuFeatures) -> impl Iterator<Item = Feature> + '_ {
    GUEST_FEATURES
        .iter()
        .filter(move |(f, access)| *access == GuestAccess::Unhandled && cpu_has(cpu, *f))
        .map(|(f, _)| *f)
}

/// What a guest may see of one ID field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// The hardware's value.
    AsIs,
    /// The hardware's value, capped (an unsigned field whose higher values add state).
    AtMost(u64),
    /// This value whatever the hardware has: an architectural floor for a trapped feature that
    /// cannot read as absent (the v8.0 debug architecture).
    Fixed(u64),
}

/// One ID field a guest may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestIdField {
    pub reg: IdReg,
    pub shift: u32,
    pub feature: Feature,
    pub shown: Shown,
}

const fn f(reg: IdReg, shift: u32, feature: Feature, shown: Shown) -> GuestIdField {
    GuestIdField { reg, shift, feature, shown }
}

/// The allow-list: the only ID fields a guest sees non-zero. Everything not listed (every other
/// field, every other register of the TID3 space, the AArch32 ID registers) reads as 0.
pub const GUEST_ID_FIELDS: &[GuestIdField] = {
    use fields::{dfr0, isar1, isar2, mmfr1, pfr0, pfr1};
    use Feature::*;
    use Shown::*;
    const I: Feature = Instructions;
    const P: Feature = Properties;
    const M: Feature = Aarch64;
    &[
        // ID_AA64PFR0_EL1: AArch64-only EL0 and EL1 (AArch32 EL0 hidden), FP and SIMD, DIT,
        // CSV2 (without the SCXTNUM registers of CSV2 >= 2, which HCR_EL2.EnSCXT = 0 traps), CSV3.
        f(IdReg::PFR0, pfr0::EL0, M, AtMost(1)),
        f(IdReg::PFR0, pfr0::EL1, M, AtMost(1)),
        f(IdReg::PFR0, pfr0::FP, FpSimd, AsIs),
        f(IdReg::PFR0, pfr0::ADVSIMD, FpSimd, AsIs),
        f(IdReg::PFR0, pfr0::DIT, I, AsIs),
        f(IdReg::PFR0, pfr0::CSV2, P, AtMost(1)),
        f(IdReg::PFR0, pfr0::CSV3, P, AsIs),
        // ID_AA64PFR1_EL1: BTI and SSBS (PSTATE bits, in SPSR).
        f(IdReg::PFR1, pfr1::BT, I, AsIs),
        f(IdReg::PFR1, pfr1::SSBS, I, AsIs),
        // ID_AA64DFR0_EL1: the v8.0 debug architecture with its minimum of breakpoints and
        // watchpoints (its registers trap and read as zero: `handlers::trap_dispatcher`), no OS
        // double lock; no PMU, trace or profiling.
        f(IdReg::DFR0, dfr0::DEBUG_VER, Debug, Fixed(6)),
        f(IdReg::DFR0, dfr0::BRPS, Debug, Fixed(1)),
        f(IdReg::DFR0, dfr0::WRPS, Debug, Fixed(1)),
        f(IdReg::DFR0, dfr0::DOUBLE_LOCK, Debug, Fixed(0xf)),
        // ID_AA64ISAR0_EL1: AES, SHA1, SHA2, CRC32, atomics, RDM, SHA3, SM3, SM4, DP, FHM, TS,
        // TLB (range and outer-shareable TLBI), RNDR; not TME (bits 27:24).
        f(IdReg::ISAR0, 4, I, AsIs),
        f(IdReg::ISAR0, 8, I, AsIs),
        f(IdReg::ISAR0, 12, I, AsIs),
        f(IdReg::ISAR0, 16, I, AsIs),
        f(IdReg::ISAR0, 20, I, AsIs),
        f(IdReg::ISAR0, 28, I, AsIs),
        f(IdReg::ISAR0, 32, I, AsIs),
        f(IdReg::ISAR0, 36, I, AsIs),
        f(IdReg::ISAR0, 40, I, AsIs),
        f(IdReg::ISAR0, 44, I, AsIs),
        f(IdReg::ISAR0, 48, I, AsIs),
        f(IdReg::ISAR0, 52, I, AsIs),
        f(IdReg::ISAR0, 56, I, AsIs),
        f(IdReg::ISAR0, 60, I, AsIs),
        // ID_AA64ISAR1_EL1: no pointer authentication (APA, API, GPA, GPI) and no LS64.
        f(IdReg::ISAR1, isar1::DPB, I, AsIs),
        f(IdReg::ISAR1, isar1::JSCVT, I, AsIs),
        f(IdReg::ISAR1, isar1::FCMA, I, AsIs),
        f(IdReg::ISAR1, isar1::LRCPC, I, AsIs),
        f(IdReg::ISAR1, isar1::FRINTTS, I, AsIs),
        f(IdReg::ISAR1, isar1::SB, I, AsIs),
        f(IdReg::ISAR1, isar1::SPECRES, I, AsIs),
        f(IdReg::ISAR1, isar1::BF16, I, AsIs),
        f(IdReg::ISAR1, isar1::DGH, I, AsIs),
        f(IdReg::ISAR1, isar1::I8MM, I, AsIs),
        f(IdReg::ISAR1, isar1::XS, I, AsIs),
        // ID_AA64ISAR2_EL1: no APA3/GPA3/PAC_frac, no WFxT (its timeout is not honoured), no MOPS.
        f(IdReg::ISAR2, isar2::RPRES, I, AsIs),
        f(IdReg::ISAR2, isar2::BC, I, AsIs),
        f(IdReg::ISAR2, isar2::CLRBHB, I, AsIs),
        // ID_AA64MMFR0_EL1: stage-1 translation as the hardware has it, a physical address
        // range no larger than the VM's 39-bit IPA space rounds up to (40 bits); not the
        // stage-2 granules, FGT or ECV (EL2 features).
        f(IdReg::MMFR0, 0, M, AtMost(2)),
        f(IdReg::MMFR0, 4, M, AsIs),
        f(IdReg::MMFR0, 8, M, AsIs),
        f(IdReg::MMFR0, 12, M, AsIs),
        f(IdReg::MMFR0, 16, M, AsIs),
        f(IdReg::MMFR0, 20, M, AsIs),
        f(IdReg::MMFR0, 24, M, AsIs),
        f(IdReg::MMFR0, 28, M, AsIs),
        f(IdReg::MMFR0, 44, M, AsIs),
        // ID_AA64MMFR1_EL1: not VMIDBits, VH, LO, XNX, TWED, HCX, TIDCP1 (EL2 features and
        // LORegions).
        f(IdReg::MMFR1, mmfr1::HAFDBS, M, AsIs),
        f(IdReg::MMFR1, mmfr1::HPDS, M, AsIs),
        f(IdReg::MMFR1, mmfr1::PAN, I, AsIs),
        f(IdReg::MMFR1, mmfr1::SPEC_SEI, P, AsIs),
        f(IdReg::MMFR1, mmfr1::ETS, P, AsIs),
        f(IdReg::MMFR1, mmfr1::AFP, FpSimd, AsIs),
        f(IdReg::MMFR1, mmfr1::NTLBPA, P, AsIs),
        f(IdReg::MMFR1, mmfr1::CMOW, M, AsIs),
        f(IdReg::MMFR1, mmfr1::ECBHB, P, AsIs),
        // ID_AA64MMFR2_EL1: CnP, UAO, LSM, VARange, CCIDX, ST, AT, IDS, TTL, BBM, E0PD; not
        // IESB (RAS), NV, FWB, EVT (EL2 features).
        f(IdReg::MMFR2, 0, M, AsIs),
        f(IdReg::MMFR2, 4, I, AsIs),
        f(IdReg::MMFR2, 8, M, AsIs),
        f(IdReg::MMFR2, 16, M, AsIs),
        f(IdReg::MMFR2, 20, P, AsIs),
        f(IdReg::MMFR2, 28, M, AsIs),
        f(IdReg::MMFR2, 32, M, AsIs),
        f(IdReg::MMFR2, 36, P, AsIs),
        f(IdReg::MMFR2, 48, P, AsIs),
        f(IdReg::MMFR2, 52, M, AsIs),
        f(IdReg::MMFR2, 60, M, AsIs),
    ]
};

/// The value a guest reads from the ID register `S3_0_C0_<crm>_<op2>` (HCR_EL2.TID3): the
/// allow-listed fields of the hardware's value, everything else 0.
pub fn guest_id_register(cpu: &CpuFeatures, reg: IdReg) -> u64 {
    let hardware = cpu.ids.get(reg);
    let mut value = 0;
    for entry in GUEST_ID_FIELDS.iter().filter(|e| e.reg == reg) {
        let raw = field(hardware, entry.shift);
        let shown = match entry.shown {
            Shown::AsIs => raw,
            Shown::AtMost(max) => raw.min(max),
            Shown::Fixed(v) => v,
        };
        value |= shown << entry.shift;
    }
    if planted(Mutation::GuestIdShowsPauth) && reg == IdReg::ISAR1 {
        value |= hardware & (0xff << fields::isar1::APA);
    }
    value
}

#[cfg(test)]
mod tests;

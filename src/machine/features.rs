//! What the CPU implements, decoded once from its ID registers. Architecture-independent so that
//! the layers that depend on it (EL2 controls, the guest's ID registers, exception injection,
//! the entry mitigations) are tested on the host with any CPU one cares to describe.
//!
//! Field positions are the Arm ARM's (DDI 0487, D19 "AArch64 System Register Descriptions").

/// The raw ID registers KCore reads at boot (`machine::cpu::id_registers` on the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRegisters {
    pub midr: u64,
    pub pfr0: u64,
    pub pfr1: u64,
    pub dfr0: u64,
    pub isar0: u64,
    pub isar1: u64,
    pub isar2: u64,
    pub mmfr0: u64,
    pub mmfr1: u64,
    pub mmfr2: u64,
    /// PMCR_EL0, read for its N field (how many event counters the PMU has); 0 without an
    /// architected PMU.
    pub pmcr: u64,
}

/// Where an ID register lives in the `S3_0_C0_<crm>_<op2>` space that HCR_EL2.TID3 traps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdReg {
    pub crm: u8,
    pub op2: u8,
}

impl IdReg {
    pub const PFR0: IdReg = IdReg { crm: 4, op2: 0 };
    pub const PFR1: IdReg = IdReg { crm: 4, op2: 1 };
    pub const ZFR0: IdReg = IdReg { crm: 4, op2: 4 };
    pub const SMFR0: IdReg = IdReg { crm: 4, op2: 5 };
    pub const DFR0: IdReg = IdReg { crm: 5, op2: 0 };
    pub const DFR1: IdReg = IdReg { crm: 5, op2: 1 };
    pub const ISAR0: IdReg = IdReg { crm: 6, op2: 0 };
    pub const ISAR1: IdReg = IdReg { crm: 6, op2: 1 };
    pub const ISAR2: IdReg = IdReg { crm: 6, op2: 2 };
    pub const MMFR0: IdReg = IdReg { crm: 7, op2: 0 };
    pub const MMFR1: IdReg = IdReg { crm: 7, op2: 1 };
    pub const MMFR2: IdReg = IdReg { crm: 7, op2: 2 };
}

impl IdRegisters {
    /// The value of the ID register at `reg`, for the ones KCore reads (0 for the others).
    pub fn get(&self, reg: IdReg) -> u64 {
        match reg {
            IdReg::PFR0 => self.pfr0,
            IdReg::PFR1 => self.pfr1,
            IdReg::DFR0 => self.dfr0,
            IdReg::ISAR0 => self.isar0,
            IdReg::ISAR1 => self.isar1,
            IdReg::ISAR2 => self.isar2,
            IdReg::MMFR0 => self.mmfr0,
            IdReg::MMFR1 => self.mmfr1,
            IdReg::MMFR2 => self.mmfr2,
            _ => 0,
        }
    }
}

/// ID field positions (bit shifts), by register, as the Arm ARM names them.
pub mod fields {
    pub mod pfr0 {
        pub const EL0: u32 = 0;
        pub const EL1: u32 = 4;
        pub const EL2: u32 = 8;
        pub const EL3: u32 = 12;
        pub const FP: u32 = 16;
        pub const ADVSIMD: u32 = 20;
        pub const GIC: u32 = 24;
        pub const RAS: u32 = 28;
        pub const SVE: u32 = 32;
        pub const SEL2: u32 = 36;
        pub const MPAM: u32 = 40;
        pub const AMU: u32 = 44;
        pub const DIT: u32 = 48;
        pub const RME: u32 = 52;
        pub const CSV2: u32 = 56;
        pub const CSV3: u32 = 60;
    }
    pub mod pfr1 {
        pub const BT: u32 = 0;
        pub const SSBS: u32 = 4;
        pub const MTE: u32 = 8;
        pub const RAS_FRAC: u32 = 12;
        pub const MPAM_FRAC: u32 = 16;
        pub const SME: u32 = 24;
        pub const RNDR_TRAP: u32 = 28;
        pub const CSV2_FRAC: u32 = 32;
        pub const NMI: u32 = 36;
        pub const GCS: u32 = 44;
    }
    pub mod dfr0 {
        pub const DEBUG_VER: u32 = 0;
        pub const TRACE_VER: u32 = 4;
        pub const PMU_VER: u32 = 8;
        pub const BRPS: u32 = 12;
        pub const WRPS: u32 = 20;
        pub const CTX_CMPS: u32 = 28;
        pub const PMS_VER: u32 = 32;
        pub const DOUBLE_LOCK: u32 = 36;
        pub const TRACE_FILT: u32 = 40;
        pub const TRACE_BUFFER: u32 = 44;
        pub const MTPMU: u32 = 48;
        pub const BRBE: u32 = 52;
    }
    pub mod isar0 {
        pub const SHA2: u32 = 12;
    }
    pub mod isar1 {
        pub const DPB: u32 = 0;
        pub const APA: u32 = 4;
        pub const API: u32 = 8;
        pub const JSCVT: u32 = 12;
        pub const FCMA: u32 = 16;
        pub const LRCPC: u32 = 20;
        pub const GPA: u32 = 24;
        pub const GPI: u32 = 28;
        pub const FRINTTS: u32 = 32;
        pub const SB: u32 = 36;
        pub const SPECRES: u32 = 40;
        pub const BF16: u32 = 44;
        pub const DGH: u32 = 48;
        pub const I8MM: u32 = 52;
        pub const XS: u32 = 56;
        pub const LS64: u32 = 60;
    }
    pub mod isar2 {
        pub const WFXT: u32 = 0;
        pub const RPRES: u32 = 4;
        pub const GPA3: u32 = 8;
        pub const APA3: u32 = 12;
        pub const MOPS: u32 = 16;
        pub const BC: u32 = 20;
        pub const PAC_FRAC: u32 = 24;
        pub const CLRBHB: u32 = 28;
    }
    pub mod mmfr1 {
        pub const HAFDBS: u32 = 0;
        pub const VMIDBITS: u32 = 4;
        pub const VH: u32 = 8;
        pub const HPDS: u32 = 12;
        pub const LO: u32 = 16;
        pub const PAN: u32 = 20;
        pub const SPEC_SEI: u32 = 24;
        pub const XNX: u32 = 28;
        pub const TWED: u32 = 32;
        pub const ETS: u32 = 36;
        pub const HCX: u32 = 40;
        pub const AFP: u32 = 44;
        pub const NTLBPA: u32 = 48;
        pub const TIDCP1: u32 = 52;
        pub const CMOW: u32 = 56;
        pub const ECBHB: u32 = 60;
    }
    pub mod mmfr2 {
        pub const UAO: u32 = 4;
    }
}

/// The unsigned 4-bit ID field at bit `shift` of `reg`.
pub const fn field(reg: u64, shift: u32) -> u64 {
    reg >> shift & 0xf
}

/// What KCore needs to know about the CPU it runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub ids: IdRegisters,
    /// Physical address size in bits (ID_AA64MMFR0_EL1.PARange).
    pub pa_bits: u8,
}

impl CpuFeatures {
    pub fn from_id_registers(ids: IdRegisters) -> CpuFeatures {
        let pa_bits = match field(ids.mmfr0, 0) {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            _ => 52,
        };
        CpuFeatures { ids, pa_bits }
    }

    /// ID_AA64DFR0_EL1.PMUVer of an architected PMUv3 (1 = PMUv3, 4 = PMUv3p1, 6 = PMUv3p5, ...);
    /// `None` without one (0) or with an IMPLEMENTATION DEFINED PMU (0xf).
    pub fn pmu_version(&self) -> Option<u8> {
        match field(self.ids.dfr0, fields::dfr0::PMU_VER) {
            0 | 0xf => None,
            v => Some(v as u8),
        }
    }
    /// FEAT_PMUv3p1: MDCR_EL2.HPMD can prohibit counting at EL2.
    pub fn pmu_v3p1(&self) -> bool {
        self.pmu_version().is_some_and(|v| v >= 4)
    }
    /// FEAT_PMUv3p5: MDCR_EL2.HCCD can stop the cycle counter at EL2.
    pub fn pmu_v3p5(&self) -> bool {
        self.pmu_version().is_some_and(|v| v >= 6)
    }
    /// How many event counters the PMU has (PMCR_EL0.N).
    pub fn pmu_counters(&self) -> u8 {
        if self.pmu_version().is_some() {
            (self.ids.pmcr >> 11 & 0x1f) as u8
        } else {
            0
        }
    }
    /// FEAT_PAuth (any algorithm, address or generic): HCR_EL2.API and APK exist.
    pub fn pauth(&self) -> bool {
        use fields::{isar1, isar2};
        let (i1, i2) = (self.ids.isar1, self.ids.isar2);
        [field(i1, isar1::APA), field(i1, isar1::API), field(i1, isar1::GPA), field(i1, isar1::GPI)]
            .into_iter()
            .chain([field(i2, isar2::APA3), field(i2, isar2::GPA3)])
            .any(|f| f != 0)
    }
    /// FEAT_LOR: LORegions, and HCR_EL2.TLOR.
    pub fn lor(&self) -> bool {
        field(self.ids.mmfr1, fields::mmfr1::LO) != 0
    }
    /// FEAT_RAS: error records, DISR_EL1/VDISR_EL2, and HCR_EL2.TERR/TEA.
    pub fn ras(&self) -> bool {
        field(self.ids.pfr0, fields::pfr0::RAS) != 0
    }
    /// FEAT_AMUv1: the activity monitors, and CPTR_EL2.TAM.
    pub fn amu(&self) -> bool {
        field(self.ids.pfr0, fields::pfr0::AMU) != 0
    }
    /// FEAT_SVE (CPTR_EL2.TZ traps it).
    pub fn sve(&self) -> bool {
        field(self.ids.pfr0, fields::pfr0::SVE) != 0
    }
    /// FEAT_SME (CPTR_EL2.TSM traps it).
    pub fn sme(&self) -> bool {
        field(self.ids.pfr1, fields::pfr1::SME) != 0
    }
    /// FEAT_MTE2: allocation tags in memory, and HCR_EL2.ATA.
    pub fn mte2(&self) -> bool {
        field(self.ids.pfr1, fields::pfr1::MTE) >= 2
    }
    /// FEAT_MPAM (either ID field).
    pub fn mpam(&self) -> bool {
        field(self.ids.pfr0, fields::pfr0::MPAM) != 0 || field(self.ids.pfr1, fields::pfr1::MPAM_FRAC) != 0
    }
    /// FEAT_SPE: the statistical profiling extension (MDCR_EL2.TPMS, E2PB).
    pub fn spe(&self) -> bool {
        field(self.ids.dfr0, fields::dfr0::PMS_VER) != 0
    }
    /// System-register access to a trace unit (ID_AA64DFR0_EL1.TraceVer): CPTR_EL2.TTA exists.
    pub fn trace_sysregs(&self) -> bool {
        field(self.ids.dfr0, fields::dfr0::TRACE_VER) != 0
    }
    /// The GICv3 CPU interface's system registers (ID_AA64PFR0_EL1.GIC).
    pub fn gic_sysregs(&self) -> bool {
        field(self.ids.pfr0, fields::pfr0::GIC) != 0
    }
    /// FEAT_TRF: trace filter controls (MDCR_EL2.TTRF).
    pub fn trace_filter(&self) -> bool {
        field(self.ids.dfr0, fields::dfr0::TRACE_FILT) != 0
    }
    /// FEAT_TRBE: the trace buffer (MDCR_EL2.E2TB).
    pub fn trace_buffer(&self) -> bool {
        field(self.ids.dfr0, fields::dfr0::TRACE_BUFFER) != 0
    }
    /// FEAT_BRBE: the branch record buffer.
    pub fn brbe(&self) -> bool {
        field(self.ids.dfr0, fields::dfr0::BRBE) != 0
    }

    /// FEAT_SHA256: the SHA256H, SHA256H2, SHA256SU0 and SHA256SU1 instructions
    /// (ID_AA64ISAR0_EL1.SHA2, bits 15:12: 1, or 2 with SHA-512 too).
    pub fn sha256(&self) -> bool {
        field(self.ids.isar0, fields::isar0::SHA2) != 0
    }

    /// The MIDR_EL1 implementer and part number, e.g. `(0x41, 0xd08)` for a Cortex-A72.
    pub fn part(&self) -> (u8, u16) {
        ((self.ids.midr >> 24) as u8, (self.ids.midr >> 4 & 0xfff) as u16)
    }
}

/// The features that change what exception entry and the entry mitigations do (issue 11,
/// findings 8, 9 and 11). Each reads one ID field; a field at 0 means "not implemented".
impl CpuFeatures {
    /// FEAT_PAN: PSTATE.PAN exists (ID_AA64MMFR1_EL1.PAN, bits 23:20).
    pub fn has_pan(&self) -> bool {
        field(self.ids.mmfr1, fields::mmfr1::PAN) != 0
    }
    /// FEAT_SSBS: PSTATE.SSBS exists (ID_AA64PFR1_EL1.SSBS, bits 7:4).
    pub fn has_ssbs(&self) -> bool {
        field(self.ids.pfr1, fields::pfr1::SSBS) != 0
    }
    /// FEAT_MTE: PSTATE.TCO exists (ID_AA64PFR1_EL1.MTE, bits 11:8).
    pub fn has_mte(&self) -> bool {
        field(self.ids.pfr1, fields::pfr1::MTE) != 0
    }
    /// FEAT_NMI: PSTATE.ALLINT exists (ID_AA64PFR1_EL1.NMI, bits 39:36).
    pub fn has_nmi(&self) -> bool {
        field(self.ids.pfr1, fields::pfr1::NMI) != 0
    }
    /// ID_AA64PFR0_EL1.CSV2 (bits 59:56): 1 or more, branch targets trained in one context
    /// cannot steer another (not affected by Spectre-v2); 3 (FEAT_CSV2_3), branch history
    /// cannot either (not affected by Spectre-BHB).
    pub fn csv2(&self) -> u64 {
        field(self.ids.pfr0, fields::pfr0::CSV2)
    }
    /// FEAT_ECBHB: branch history from one context does not steer another
    /// (ID_AA64MMFR1_EL1.ECBHB, bits 63:60).
    pub fn has_ecbhb(&self) -> bool {
        field(self.ids.mmfr1, fields::mmfr1::ECBHB) != 0
    }
    /// FEAT_CLRBHB: the CLRBHB instruction clears the branch history
    /// (ID_AA64ISAR2_EL1.CLRBHB, bits 31:28).
    pub fn has_clrbhb(&self) -> bool {
        field(self.ids.isar2, fields::isar2::CLRBHB) != 0
    }
}

/// The boot core's features, decoded once (`init`) before anything needs them.
static BOOT: spin::Once<CpuFeatures> = spin::Once::new();

/// Decodes and keeps the boot core's ID registers; later calls return the first decoding.
pub fn init(ids: IdRegisters) -> &'static CpuFeatures {
    BOOT.call_once(|| CpuFeatures::from_id_registers(ids))
}

/// The boot core's features. KCore calls `init` first thing at boot, so every trap sees them.
pub fn boot() -> &'static CpuFeatures {
    BOOT.get().expect("machine::features::init runs at boot, before any trap")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cortex_a72_has_40_bit_physical_addresses() {
        let ids = IdRegisters { midr: 0x410f_d083, mmfr0: 0x1124, ..IdRegisters::default() };
        let f = CpuFeatures::from_id_registers(ids);
        assert_eq!(f.pa_bits, 44);
        assert_eq!(f.part(), (0x41, 0xd08));
        let f = CpuFeatures::from_id_registers(IdRegisters { mmfr0: 0x1122, ..ids });
        assert_eq!(f.pa_bits, 40);
    }
}

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
        field(self.ids.mmfr1, 20) != 0
    }
    /// FEAT_SSBS: PSTATE.SSBS exists (ID_AA64PFR1_EL1.SSBS, bits 7:4).
    pub fn has_ssbs(&self) -> bool {
        field(self.ids.pfr1, 4) != 0
    }
    /// FEAT_UAO: PSTATE.UAO exists (ID_AA64MMFR2_EL1.UAO, bits 7:4).
    pub fn has_uao(&self) -> bool {
        field(self.ids.mmfr2, 4) != 0
    }
    /// FEAT_MTE: PSTATE.TCO exists (ID_AA64PFR1_EL1.MTE, bits 11:8).
    pub fn has_mte(&self) -> bool {
        field(self.ids.pfr1, 8) != 0
    }
    /// FEAT_NMI: PSTATE.ALLINT exists (ID_AA64PFR1_EL1.NMI, bits 39:36).
    pub fn has_nmi(&self) -> bool {
        field(self.ids.pfr1, 36) != 0
    }
    /// FEAT_RAS: ESB synchronises errors, DISR_EL1 and VSESR_EL2 exist (ID_AA64PFR0_EL1.RAS,
    /// bits 31:28).
    pub fn has_ras(&self) -> bool {
        field(self.ids.pfr0, 28) != 0
    }
    /// ID_AA64PFR0_EL1.CSV2 (bits 59:56): 1 or more, branch targets trained in one context
    /// cannot steer another (not affected by Spectre-v2); 3 (FEAT_CSV2_3), branch history
    /// cannot either (not affected by Spectre-BHB).
    pub fn csv2(&self) -> u64 {
        field(self.ids.pfr0, 56)
    }
    /// FEAT_ECBHB: branch history from one context does not steer another
    /// (ID_AA64MMFR1_EL1.ECBHB, bits 63:60).
    pub fn has_ecbhb(&self) -> bool {
        field(self.ids.mmfr1, 60) != 0
    }
    /// FEAT_CLRBHB: the CLRBHB instruction clears the branch history
    /// (ID_AA64ISAR2_EL1.CLRBHB, bits 31:28).
    pub fn has_clrbhb(&self) -> bool {
        field(self.ids.isar2, 28) != 0
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

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

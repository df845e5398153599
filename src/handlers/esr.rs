//! Decoding ESR_EL2, the syndrome of a trap to EL2 (Arm ARM D19.2.46).

/// Exception classes KCore knows.
pub mod ec {
    pub const UNKNOWN: u8 = 0x00;
    pub const WFX: u8 = 0x01;
    /// FP/SIMD access trapped by CPTR_EL2.TFP (the host's, while its registers are parked).
    pub const FP_ACCESS: u8 = 0x07;
    pub const HVC32: u8 = 0x12;
    pub const SMC32: u8 = 0x13;
    pub const HVC64: u8 = 0x16;
    pub const SMC64: u8 = 0x17;
    pub const SYS64: u8 = 0x18;
    pub const IABT_LOW: u8 = 0x20;
    pub const DABT_LOW: u8 = 0x24;
}

/// The exception class, ESR[31:26].
pub const fn class(esr: u64) -> u8 {
    (esr >> 26 & 0x3f) as u8
}

/// The immediate of an HVC or SMC, ISS[15:0].
pub const fn imm16(esr: u64) -> u16 {
    esr as u16
}

/// A readable name for an exception class, for logs.
pub fn class_name(class: u8) -> &'static str {
    match class {
        ec::UNKNOWN => "unknown",
        ec::WFX => "WFI/WFE",
        ec::HVC32 => "HVC32",
        ec::SMC32 => "SMC32",
        ec::HVC64 => "HVC64",
        ec::SMC64 => "SMC64",
        ec::SYS64 => "MSR/MRS",
        ec::IABT_LOW => "instruction abort",
        ec::DABT_LOW => "data abort",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_class_and_immediate() {
        // hvc #0 from AArch64: EC 0x16, IL set.
        let esr = 0x5a00_0000;
        assert_eq!(class(esr), ec::HVC64);
        assert_eq!(imm16(esr), 0);
        assert_eq!(imm16(0x5e00_0001), 1);
        assert_eq!(class(0x5e00_0001), ec::SMC64);
        assert_eq!(class_name(ec::SMC64), "SMC64");
    }
}

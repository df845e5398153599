//! Branch-predictor attacks on entry to EL2 (issue 11, finding 11): which cores are open to
//! Spectre-v2 (CVE-2017-5715) and Spectre-BHB (CVE-2022-23960), and what every entry from a
//! lower EL must run before its first indirect branch so that the host or a guest cannot steer
//! KCore's speculation.
//!
//! Sources: Arm's "Spectre-BHB" whitepaper (Arm Security Center, 2022) for the affected cores,
//! the branch-history loop and its count k per core; the SMC Calling Convention (DEN0028, 1.1+)
//! for SMCCC_ARCH_WORKAROUND_1/3; the Arm ARM for ID_AA64PFR0_EL1.CSV2, ID_AA64MMFR1_EL1.ECBHB
//! and ID_AA64ISAR2_EL1.CLRBHB. The per-core tables agree with Linux's
//! `arch/arm64/kernel/proton-pack.c`.
//!
//! The choice is made once per core at boot and applied by pointing VBAR_EL2 at one of several
//! vector tables (`machine::aarch64::mitigation`), so an unaffected core pays nothing.

use super::features::CpuFeatures;

/// SMCCC function ids (DEN0028).
pub mod smccc {
    pub const VERSION: u32 = 0x8000_0000;
    pub const ARCH_FEATURES: u32 = 0x8000_0001;
    pub const ARCH_WORKAROUND_1: u32 = 0x8000_8000;
    pub const ARCH_WORKAROUND_3: u32 = 0x8000_3FFF;
    /// SMCCC 1.1, the first version with the ARCH_* calls.
    pub const VERSION_1_1: u64 = 0x0001_0001;
    /// ARCH_FEATURES answer for a workaround: "this PE does not need it".
    pub const WORKAROUND_NOT_REQUIRED: i64 = 1;
}

/// What the firmware answered for one workaround call on this core (SMCCC_ARCH_FEATURES).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FirmwareAnswer {
    /// No firmware, no SMCCC 1.1, or the call is not implemented.
    #[default]
    Absent,
    /// The call exists and mitigates this core.
    Mitigates,
    /// The firmware says this core is not affected.
    NotRequired,
}

/// The firmware's workaround calls, as probed at boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirmwareOffer {
    pub workaround_1: FirmwareAnswer,
    pub workaround_3: FirmwareAnswer,
}

impl FirmwareOffer {
    /// Asks the firmware through `call(function, arg) -> x0`, in the order SMCCC requires:
    /// PSCI_VERSION ≥ 1.0 (so PSCI_FEATURES exists), PSCI_FEATURES(SMCCC_VERSION) = 0,
    /// SMCCC_VERSION ≥ 1.1, then SMCCC_ARCH_FEATURES for each workaround. Nothing is called that
    /// an earlier answer did not promise (an unknown SMC may be UNDEFINED).
    pub fn probe(call: &mut dyn FnMut(u32, u64) -> u64) -> FirmwareOffer {
        use corevisor_abi::psci;
        let psci_version = call(psci::VERSION, 0);
        if (psci_version as i64) < 0x1_0000
            || call(psci::FEATURES, smccc::VERSION.into()) != 0
            || (call(smccc::VERSION, 0) as i64) < smccc::VERSION_1_1 as i64
        {
            return FirmwareOffer::default();
        }
        let mut answer = |id: u32| match call(smccc::ARCH_FEATURES, id.into()) as i64 {
            0 => FirmwareAnswer::Mitigates,
            smccc::WORKAROUND_NOT_REQUIRED => FirmwareAnswer::NotRequired,
            _ => FirmwareAnswer::Absent,
        };
        FirmwareOffer { workaround_1: answer(smccc::ARCH_WORKAROUND_1), workaround_3: answer(smccc::ARCH_WORKAROUND_3) }
    }
}

/// How an entry clears the branch history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BhbClear {
    None,
    /// `k` taken branches, then `dsb nsh; isb` (the whitepaper's loop).
    Loop(u8),
    /// `clearbhb; isb` (FEAT_CLRBHB).
    Instruction,
}

/// What every entry from a lower EL runs on this core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMitigation {
    /// SMCCC_ARCH_WORKAROUND_1 or _3, called on every entry.
    pub firmware_call: Option<u32>,
    pub bhb: BhbClear,
}

impl EntryMitigation {
    pub const NONE: EntryMitigation = EntryMitigation { firmware_call: None, bhb: BhbClear::None };
}

/// The choice for one core, with what it leaves open (for the boot warning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub mitigation: EntryMitigation,
    /// Affected by Spectre-v2, and the firmware has no workaround.
    pub v2_open: bool,
    /// Affected by Spectre-BHB, and nothing on this core is known to clear the history.
    pub bhb_open: bool,
    /// A part no table knows: the BHB loop runs with the largest known count, as a guess.
    pub unknown_part: bool,
}

const ARM: u8 = 0x41;
const BROADCOM: u8 = 0x42;

/// The largest loop count any known core needs (Cortex-X3, Neoverse V2).
pub const MAX_LOOP_K: u8 = 132;

/// Cortex-A53 (0xd03), A35 (0xd04), A55 (0xd05).
const IN_ORDER_A5X: core::ops::RangeInclusive<u16> = 0xd03..=0xd05;

/// Cores that Arm lists as unaffected by Spectre-BHB (in-order cores: Cortex-A35/A53/A55,
/// A510 (0xd46), A520 (0xd80), Brahma-B53).
fn bhb_safe((implementer, part): (u8, u16)) -> bool {
    match implementer {
        ARM => IN_ORDER_A5X.contains(&part) || part == 0xd46 || part == 0xd80,
        BROADCOM => part == 0x100,
        _ => false,
    }
}

/// Cores unaffected by Spectre-v2 that do not say so with CSV2 (Cortex-A35/A53/A55,
/// Brahma-B53).
fn v2_safe((implementer, part): (u8, u16)) -> bool {
    match implementer {
        ARM => IN_ORDER_A5X.contains(&part),
        BROADCOM => part == 0x100,
        _ => false,
    }
}

/// The whitepaper's loop count for a core, if the loop mitigates it.
pub fn bhb_loop_k(part: (u8, u16)) -> Option<u8> {
    let k = match part {
        // Cortex-X3, Neoverse V2.
        (ARM, 0xd4e | 0xd4f) => 132,
        // Cortex-A715, A720.
        (ARM, 0xd4d | 0xd81) => 38,
        // Cortex-A78, A78AE, A78C, X1, A710, X2, Neoverse N2, V1.
        (ARM, 0xd41 | 0xd42 | 0xd4b | 0xd44 | 0xd47 | 0xd48 | 0xd49 | 0xd40) => 32,
        // Cortex-A76 (0xd0b), Neoverse N1 (0xd0c), A77 (0xd0d), A76AE (0xd0e).
        (ARM, 0xd0b..=0xd0e) => 24,
        // Ampere-1.
        (0xc0, 0xac3) => 11,
        // Cortex-A72, A57.
        (ARM, 0xd08 | 0xd07) => 8,
        _ => return None,
    };
    if crate::mutation::planted(crate::mutation::Mutation::BhbLoopTooShort) {
        return Some(8);
    }
    Some(k)
}

/// Cores that only the firmware can mitigate against Spectre-BHB (Cortex-A73, A75).
fn bhb_firmware_only(part: (u8, u16)) -> bool {
    matches!(part, (ARM, 0xd09 | 0xd0a))
}

/// Chooses the entry mitigation for a core with features `cpu`, whose firmware offers `fw`.
/// Prefers what the core does itself (CLRBHB, the loop) for Spectre-BHB, the firmware for
/// Spectre-v2, and WORKAROUND_3 alone where it covers both.
pub fn select(cpu: &CpuFeatures, fw: FirmwareOffer) -> Selection {
    use FirmwareAnswer::*;
    let part = cpu.part();
    let v2_affected = cpu.csv2() == 0 && !v2_safe(part) && fw.workaround_1 != NotRequired;
    let bhb_affected = !(cpu.has_ecbhb() || cpu.csv2() >= 3 || bhb_safe(part)) && fw.workaround_3 != NotRequired;
    let known_loop = bhb_loop_k(part);
    let unknown_part = bhb_affected && known_loop.is_none() && !bhb_firmware_only(part) && !cpu.has_clrbhb();

    let mut bhb = match (bhb_affected, cpu.has_clrbhb(), known_loop) {
        (false, _, _) => BhbClear::None,
        (true, true, _) => BhbClear::Instruction,
        (true, false, Some(k)) => BhbClear::Loop(k),
        (true, false, None) => BhbClear::None,
    };
    let bhb_needs_firmware = bhb_affected && bhb == BhbClear::None;
    let firmware_call = if (bhb_needs_firmware || v2_affected)
        && fw.workaround_3 == Mitigates
        && (bhb_needs_firmware || fw.workaround_1 != Mitigates)
    {
        // WORKAROUND_3 mitigates Spectre-v2 as well as Spectre-BHB.
        Some(smccc::ARCH_WORKAROUND_3)
    } else if v2_affected && fw.workaround_1 == Mitigates {
        Some(smccc::ARCH_WORKAROUND_1)
    } else {
        None
    };
    let bhb_by_firmware = firmware_call == Some(smccc::ARCH_WORKAROUND_3);
    if bhb_needs_firmware && !bhb_by_firmware && unknown_part {
        // Nothing known fits: the longest loop any known core needs is the best guess.
        bhb = BhbClear::Loop(MAX_LOOP_K);
    }
    Selection {
        mitigation: EntryMitigation { firmware_call, bhb },
        v2_open: v2_affected && firmware_call.is_none(),
        bhb_open: bhb_needs_firmware && !bhb_by_firmware && !unknown_part,
        unknown_part: unknown_part && !bhb_by_firmware,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::features::IdRegisters;
    use proptest::prelude::*;

    fn cpu(implementer: u8, part: u16, pfr0: u64, mmfr1: u64, isar2: u64) -> CpuFeatures {
        let midr = u64::from(implementer) << 24 | 0xf << 16 | u64::from(part) << 4;
        CpuFeatures::from_id_registers(IdRegisters { midr, pfr0, mmfr1, isar2, ..IdRegisters::default() })
    }
    const CSV2_1: u64 = 1 << 56;
    const CSV2_3: u64 = 3 << 56;
    const ECBHB: u64 = 1 << 60;
    const CLRBHB: u64 = 1 << 28;
    const NO_FIRMWARE: FirmwareOffer =
        FirmwareOffer { workaround_1: FirmwareAnswer::Absent, workaround_3: FirmwareAnswer::Absent };
    const FULL_FIRMWARE: FirmwareOffer =
        FirmwareOffer { workaround_1: FirmwareAnswer::Mitigates, workaround_3: FirmwareAnswer::Mitigates };

    #[test]
    fn a_cortex_a72_without_firmware_runs_the_loop_8_times_and_says_v2_is_open() {
        // The Pi 4's core (no PSCI firmware) and QEMU's `-cpu cortex-a72` (no SMCCC 1.1).
        let s = select(&cpu(ARM, 0xd08, 0, 0, 0), NO_FIRMWARE);
        assert_eq!(s.mitigation, EntryMitigation { firmware_call: None, bhb: BhbClear::Loop(8) });
        assert!(s.v2_open && !s.bhb_open && !s.unknown_part);
    }

    #[test]
    fn a_cortex_a72_with_workaround_1_calls_it_and_runs_the_loop() {
        let fw = FirmwareOffer { workaround_1: FirmwareAnswer::Mitigates, ..NO_FIRMWARE };
        let s = select(&cpu(ARM, 0xd08, 0, 0, 0), fw);
        assert_eq!(
            s.mitigation,
            EntryMitigation { firmware_call: Some(smccc::ARCH_WORKAROUND_1), bhb: BhbClear::Loop(8) }
        );
        assert!(!s.v2_open && !s.bhb_open);
        // Both calls offered: WORKAROUND_1 for v2, the loop (cheaper than a second call) for BHB.
        let s = select(&cpu(ARM, 0xd07, 0, 0, 0), FULL_FIRMWARE);
        assert_eq!(
            s.mitigation,
            EntryMitigation { firmware_call: Some(smccc::ARCH_WORKAROUND_1), bhb: BhbClear::Loop(8) }
        );
    }

    #[test]
    fn a_cortex_a76_runs_the_loop_24_times_and_needs_nothing_for_v2() {
        let s = select(&cpu(ARM, 0xd0b, CSV2_1, 0, 0), NO_FIRMWARE);
        assert_eq!(s.mitigation, EntryMitigation { firmware_call: None, bhb: BhbClear::Loop(24) });
        assert!(!s.v2_open && !s.bhb_open);
        let s = select(&cpu(ARM, 0xd44, CSV2_1, 0, 0), NO_FIRMWARE);
        assert_eq!(s.mitigation.bhb, BhbClear::Loop(32), "Cortex-X1");
    }

    #[test]
    fn a_core_with_ecbhb_or_csv2_3_needs_nothing() {
        assert_eq!(select(&cpu(ARM, 0xd4f, CSV2_1, ECBHB, 0), NO_FIRMWARE).mitigation, EntryMitigation::NONE);
        assert_eq!(select(&cpu(ARM, 0xd4f, CSV2_3, 0, 0), FULL_FIRMWARE).mitigation, EntryMitigation::NONE);
        // An unknown part that says so is believed too.
        let s = select(&cpu(0x61, 0x22, CSV2_1, ECBHB, 0), NO_FIRMWARE);
        assert_eq!(s.mitigation, EntryMitigation::NONE);
        assert!(!s.v2_open && !s.bhb_open && !s.unknown_part);
    }

    #[test]
    fn in_order_cores_need_nothing() {
        for part in [0xd03, 0xd04, 0xd05] {
            let s = select(&cpu(ARM, part, 0, 0, 0), NO_FIRMWARE);
            assert_eq!(s.mitigation, EntryMitigation::NONE, "part {part:#x}");
            assert!(!s.v2_open && !s.bhb_open);
        }
    }

    #[test]
    fn clrbhb_is_preferred_to_the_loop() {
        let s = select(&cpu(ARM, 0xd08, CSV2_1, 0, CLRBHB), NO_FIRMWARE);
        assert_eq!(s.mitigation, EntryMitigation { firmware_call: None, bhb: BhbClear::Instruction });
    }

    #[test]
    fn an_unknown_affected_part_is_treated_conservatively() {
        let s = select(&cpu(0x51, 0x123, 0, 0, 0), NO_FIRMWARE);
        assert_eq!(s.mitigation, EntryMitigation { firmware_call: None, bhb: BhbClear::Loop(MAX_LOOP_K) });
        assert!(s.v2_open && s.unknown_part);
        // With WORKAROUND_3, the firmware covers both.
        let s = select(&cpu(0x51, 0x123, 0, 0, 0), FULL_FIRMWARE);
        assert_eq!(
            s.mitigation,
            EntryMitigation { firmware_call: Some(smccc::ARCH_WORKAROUND_3), bhb: BhbClear::None }
        );
        assert!(!s.v2_open && !s.bhb_open && !s.unknown_part);
    }

    #[test]
    fn a_cortex_a73_needs_workaround_3() {
        let s = select(&cpu(ARM, 0xd09, 0, 0, 0), FULL_FIRMWARE);
        assert_eq!(
            s.mitigation,
            EntryMitigation { firmware_call: Some(smccc::ARCH_WORKAROUND_3), bhb: BhbClear::None }
        );
        let s = select(&cpu(ARM, 0xd09, 0, 0, 0), NO_FIRMWARE);
        assert!(s.v2_open && s.bhb_open, "no firmware: the warning must say both are open");
    }

    #[test]
    fn firmware_that_says_not_required_is_believed() {
        let fw = FirmwareOffer { workaround_1: FirmwareAnswer::NotRequired, workaround_3: FirmwareAnswer::NotRequired };
        assert_eq!(select(&cpu(ARM, 0xd08, 0, 0, 0), fw).mitigation, EntryMitigation::NONE);
    }

    #[test]
    fn the_probe_asks_only_what_earlier_answers_promise() {
        // PSCI 0.2: PSCI_FEATURES does not exist, so nothing else is asked.
        let mut calls = alloc::vec::Vec::new();
        let offer = FirmwareOffer::probe(&mut |f, _| {
            calls.push(f);
            0x2
        });
        assert_eq!((offer, calls.as_slice()), (FirmwareOffer::default(), &[corevisor_abi::psci::VERSION][..]));
        // PSCI 1.1 without SMCCC_VERSION (QEMU's): stops after PSCI_FEATURES.
        let mut calls = alloc::vec::Vec::new();
        let offer = FirmwareOffer::probe(&mut |f, _| {
            calls.push(f);
            if f == corevisor_abi::psci::VERSION {
                0x1_0001
            } else {
                u64::MAX
            }
        });
        assert_eq!(offer, FirmwareOffer::default());
        assert_eq!(calls.len(), 2);
        // TF-A with both workarounds.
        let offer = FirmwareOffer::probe(&mut |f, arg| match (f, arg as u32) {
            (corevisor_abi::psci::VERSION, _) => 0x1_0001,
            (corevisor_abi::psci::FEATURES, _) => 0,
            (smccc::VERSION, _) => 0x1_0002,
            (smccc::ARCH_FEATURES, smccc::ARCH_WORKAROUND_1) => 0,
            (smccc::ARCH_FEATURES, _) => 1,
            _ => u64::MAX,
        });
        assert_eq!(
            offer,
            FirmwareOffer { workaround_1: FirmwareAnswer::Mitigates, workaround_3: FirmwareAnswer::NotRequired }
        );
    }

    /// The whitepaper's table, stated apart from `bhb_loop_k`: (part, k).
    const WHITEPAPER: [(u16, u8); 20] = [
        (0xd07, 8),
        (0xd08, 8),
        (0xd0b, 24),
        (0xd0e, 24),
        (0xd0d, 24),
        (0xd0c, 24),
        (0xd41, 32),
        (0xd42, 32),
        (0xd4b, 32),
        (0xd44, 32),
        (0xd47, 32),
        (0xd48, 32),
        (0xd49, 32),
        (0xd40, 32),
        (0xd4d, 38),
        (0xd81, 38),
        (0xd4e, 132),
        (0xd4f, 132),
        (0xd09, 0),
        (0xd0a, 0),
    ];

    fn any_case() -> impl Strategy<Value = (CpuFeatures, FirmwareOffer)> {
        let answer = prop_oneof![
            Just(FirmwareAnswer::Absent),
            Just(FirmwareAnswer::Mitigates),
            Just(FirmwareAnswer::NotRequired)
        ];
        let part = prop_oneof![
            3 => proptest::sample::select(WHITEPAPER.to_vec()).prop_map(|(p, _)| (ARM, p)),
            1 => (any::<u8>(), 0u16..0x1000),
        ];
        (part, 0u64..4, any::<bool>(), any::<bool>(), answer.clone(), answer).prop_map(
            |((imp, p), csv2, ecbhb, clrbhb, a1, a3)| {
                let f = cpu(imp, p, csv2 << 56, if ecbhb { ECBHB } else { 0 }, if clrbhb { CLRBHB } else { 0 });
                (f, FirmwareOffer { workaround_1: a1, workaround_3: a3 })
            },
        )
    }

    /// Every core that the architecture or Arm's table calls affected is either mitigated as
    /// the whitepaper says (CLRBHB, a loop at least k long, or WORKAROUND_3) or reported open;
    /// Spectre-v2 on a core without CSV2 is either a firmware call or reported open.
    fn protected((f, fw): (CpuFeatures, FirmwareOffer)) -> Result<(), TestCaseError> {
        let s = select(&f, fw);
        let m = s.mitigation;
        let (imp, part) = f.part();
        let bhb_immune = f.has_ecbhb() || f.csv2() >= 3 || fw.workaround_3 == FirmwareAnswer::NotRequired;
        let wa3 = m.firmware_call == Some(smccc::ARCH_WORKAROUND_3);
        if let (ARM, Some(&(_, k))) = (imp, WHITEPAPER.iter().find(|(p, _)| *p == part)) {
            if !bhb_immune && !wa3 && !s.bhb_open {
                let ok = match m.bhb {
                    BhbClear::Instruction => f.has_clrbhb(),
                    BhbClear::Loop(n) => k > 0 && n >= k,
                    BhbClear::None => false,
                };
                prop_assert!(ok, "part {:#x}: {:?} does not clear the history (k = {})", part, m, k);
            }
        }
        let v2_immune = f.csv2() >= 1 || fw.workaround_1 == FirmwareAnswer::NotRequired || (imp, part) == (ARM, 0xd03);
        if !v2_immune && !s.v2_open {
            prop_assert!(m.firmware_call.is_some(), "part {:#x}: Spectre-v2 neither mitigated nor reported", part);
        }
        if let Some(call) = m.firmware_call {
            let answer = if call == smccc::ARCH_WORKAROUND_3 { fw.workaround_3 } else { fw.workaround_1 };
            prop_assert_eq!(answer, FirmwareAnswer::Mitigates, "a call the firmware did not offer");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn every_affected_core_is_mitigated_or_reported(case in any_case()) {
            protected(case)?;
        }
    }

    /// Companion: a selection that runs the A72's 8 iterations on every core is caught.
    #[test]
    fn the_property_catches_a_loop_too_short_for_the_core() {
        use crate::mutation::{catches, Mutation};
        catches(Mutation::BhbLoopTooShort, 1024, any_case(), protected);
    }
}

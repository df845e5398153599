//! The EL2 controls and the guest's ID registers, checked against the Arm ARM for several CPUs.
//! The expected values are written out here from the architecture (bit by bit), not taken from
//! the module's constants.

use super::*;
use crate::machine::features::IdRegisters;

/// A Cortex-A72 as the Pi 4 has it (GIC-400: no GIC system registers): PMUv3 with 6 counters,
/// AArch32 at every EL, no PAuth/LOR/RAS/AMU/SVE/MTE, no system-register trace.
fn cortex_a72() -> CpuFeatures {
    CpuFeatures::from_id_registers(IdRegisters {
        midr: 0x410f_d083,
        pfr0: 0x0000_0000_0000_2222,
        pfr1: 0,
        dfr0: 0x1030_5106,
        isar0: 0x0001_1120,
        isar1: 0,
        isar2: 0,
        mmfr0: 0x0000_1124,
        mmfr1: 0,
        mmfr2: 0,
        pmcr: 0x4102_3000,
    })
}

/// The same core under QEMU `virt` with a GICv3: the GIC system registers are there.
fn cortex_a72_gicv3() -> CpuFeatures {
    let mut ids = cortex_a72().ids;
    ids.pfr0 |= 1 << 24;
    CpuFeatures::from_id_registers(ids)
}

/// A recent core (Armv9.0-like): PAuth (QARMA), LOR, RAS, AMU, PMUv3p5 (20 counters), SVE,
/// MTE2, system-register trace with trace filter and trace buffer, SPE.
fn armv9_core() -> CpuFeatures {
    CpuFeatures::from_id_registers(IdRegisters {
        midr: 0x410f_d490,
        // CSV3 1, CSV2 1, DIT 1, AMU 1, SVE 1, RAS 1, GIC 1, AdvSIMD 1, FP 1, EL3..EL0 AArch64.
        pfr0: 0x1101_1001_1111_1111,
        // MTE 2, SSBS 2, BT 1.
        pfr1: 0x0000_0000_0000_0221,
        // TraceBuffer 1, TraceFilt 1, PMSVer 1, DebugVer 8, TraceVer 1, PMUVer 6, 6 BRPs/4 WRPs.
        dfr0: 0x0000_1101_f031_5618,
        isar0: 0x0221_1111_2111_2120,
        // I8MM, BF16, SPECRES, SB, FRINTTS 1, GPI 0, GPA 1, LRCPC 2, FCMA 1, JSCVT 1, API 0,
        // APA 5 (QARMA5 with FPACCombine), DPB 1.
        isar1: 0x0010_1111_0121_1051,
        isar2: 0x0000_0000_0000_0000,
        mmfr0: 0x0000_0000_0010_1125,
        // LO 1, PAN 3, HPDS 2, VH 1, VMIDBits 2, HAFDBS 2.
        mmfr1: 0x0000_0000_0031_2122,
        mmfr2: 0x1221_1011_0011_1011,
        pmcr: 20 << 11,
    })
}

/// A CPU whose ID registers announce everything: every field 2, PMUv3p5, MTE2, debug v8.4.
fn announces_everything() -> CpuFeatures {
    let all = 0x2222_2222_2222_2222;
    let dfr0 = (all & !(0xf << 8) & !0xf) | 6 << 8 | 9;
    CpuFeatures::from_id_registers(IdRegisters {
        midr: 0x410f_0000,
        pfr0: all,
        pfr1: all,
        dfr0,
        isar0: all,
        isar1: all,
        isar2: all,
        mmfr0: all,
        mmfr1: all,
        mmfr2: all,
        pmcr: 31 << 11,
    })
}

fn cpus() -> Vec<(&'static str, CpuFeatures)> {
    vec![
        ("Cortex-A72", cortex_a72()),
        ("Cortex-A72 with GICv3", cortex_a72_gicv3()),
        ("Armv9 core", armv9_core()),
        ("a CPU announcing everything", announces_everything()),
    ]
}

const VTTBR: u64 = 0x0001_0000_4123_4000;

fn guest(cpu: &CpuFeatures) -> El2Controls {
    guest_controls(cpu, HostPmu::Confined, VTTBR, 1 << 31 | 1, 0x1234)
}

fn host(cpu: &CpuFeatures) -> El2Controls {
    host_controls(cpu, HostPmu::Confined, 0x4120_0000, 0x8000_0000)
}

#[test]
fn a_cortex_a72_host_traps_smc_and_set_way_and_leaves_the_rest_to_el1() {
    let c = host(&cortex_a72());
    // VM (0), TSC (19), TSW (22), RW (31); API/APK are RES0 without PAuth.
    assert_eq!(c.hcr, 1 | 1 << 19 | 1 << 22 | 1 << 31, "{:#x}", c.hcr);
    // HPMN = PMCR_EL0.N = 6; HPMD does not exist on PMUv3.
    assert_eq!(c.mdcr, 6, "{:#x}", c.mdcr);
    // RES1 bits and TZ/TSM (RES1 here); TFP, TTA (RES0 without sysreg trace), TAM clear.
    assert_eq!(c.cptr, 0x33FF);
    assert_eq!(c.cnthctl, 0b11);
    assert_eq!((c.vttbr, c.vmpidr, c.cntvoff), (0x4120_0000, 0x8000_0000, 0));
}

#[test]
fn a_cortex_a72_guest_traps_everything_it_does_not_switch() {
    let c = guest(&cortex_a72());
    // VM, FMO, IMO, AMO, FB, BSU=IS, TWI, TWE, TID3, TSC, TIDCP, TACR, TSW, RW; nothing above
    // bit 31 (no PAuth, LOR, RAS or MTE to trap, and API/APK must stay clear).
    let expected = 1
        | 1 << 3
        | 1 << 4
        | 1 << 5
        | 1 << 9
        | 1 << 10
        | 1 << 13
        | 1 << 14
        | 1 << 18
        | 1 << 19
        | 1 << 20
        | 1 << 21
        | 1 << 22
        | 1 << 31;
    assert_eq!(c.hcr, expected, "{:#x}", c.hcr);
    // HPMN 6, TPMCR, TPM, TDA, TDOSA, TDRA.
    assert_eq!(c.mdcr, 6 | 1 << 5 | 1 << 6 | 1 << 9 | 1 << 10 | 1 << 11, "{:#x}", c.mdcr);
    assert_eq!(c.cptr, 0x33FF);
    // Physical counter readable, physical timer trapped.
    assert_eq!(c.cnthctl, 0b01);
    assert_eq!((c.vttbr, c.vmpidr, c.cntvoff), (VTTBR, 1 << 31 | 1, 0x1234));
    assert_eq!(c.ich_hcr, 0, "no GICv3 CPU interface on the Pi");
    // Under QEMU with a GICv3: EL1's ICV accesses reach the vCPU's virtual interface untrapped.
    let cpu = cortex_a72_gicv3();
    assert_eq!(guest(&cpu).ich_hcr, 0, "the vCPU's own ICH_HCR (vcpu::vgic) is loaded after the controls");
    assert_eq!(host(&cpu).ich_hcr, 0);
}

#[test]
fn an_armv9_core_traps_pauth_lor_ras_amu_trace_and_the_pmu_at_el2() {
    let cpu = armv9_core();
    let (h, g) = (host(&cpu), guest(&cpu));
    // The host keeps its pointer authentication; a guest's traps (API = APK = 0).
    assert_eq!(h.hcr & (3 << 40), 3 << 40);
    assert_eq!(g.hcr & (3 << 40), 0);
    // Guests: TLOR (35), TERR (36); MTE tag access off (ATA, 56, clear) in both worlds.
    assert_eq!(g.hcr & (1 << 35 | 1 << 36), 1 << 35 | 1 << 36);
    assert_eq!((g.hcr | h.hcr) & 1 << 56, 0);
    assert_eq!(h.hcr & (1 << 35 | 1 << 36), 0);
    // Set/way traps in both worlds.
    assert_eq!(h.hcr & g.hcr & 1 << 22, 1 << 22);
    // The host's PMU counts nothing at EL2: HPMD (17), HCCD (23); HPMN = 20.
    for c in [h, g] {
        assert_eq!(c.mdcr & (1 << 17 | 1 << 23 | 0x1f), 1 << 17 | 1 << 23 | 20, "{:#x}", c.mdcr);
        // Profiling and trace buffers owned by EL2 (E2PB = E2TB = 0b00).
        assert_eq!(c.mdcr & (3 << 12 | 3 << 24), 0);
        // Trace system registers trapped (TTA, 20); SVE (TZ, 8) trapped.
        assert_eq!(c.cptr & (1 << 20 | 1 << 8), 1 << 20 | 1 << 8);
        assert_eq!(c.cptr & 1 << 10, 0, "FP/SIMD is switched, not trapped");
    }
    // Guests: profiling controls (TPMS, 14) and trace filter (TTRF, 19) trapped; AMU (TAM, 30).
    assert_eq!(g.mdcr & (1 << 14 | 1 << 19), 1 << 14 | 1 << 19);
    assert_eq!(g.cptr & 1 << 30, 1 << 30);
    assert_eq!(h.cptr & 1 << 30, 0, "the host keeps its activity monitors");
    assert!(stops_host_pmu_in_guest(&cpu, HostPmu::Confined));
}

#[test]
fn the_bench_build_lets_the_host_count_el2_and_across_guest_runs() {
    let cpu = armv9_core();
    let h = host_controls(&cpu, HostPmu::CountsEl2, 0, 0);
    let g = guest_controls(&cpu, HostPmu::CountsEl2, 0, 0, 0);
    assert_eq!((h.mdcr | g.mdcr) & (1 << 17 | 1 << 23), 0);
    assert!(!stops_host_pmu_in_guest(&cpu, HostPmu::CountsEl2));
    assert!(stops_host_pmu_in_guest(&cortex_a72(), HostPmu::Confined));
    // Only the PMU differs from a confined build.
    let confined = guest(&cpu);
    assert_eq!((g.hcr, g.cptr, g.cnthctl), (confined.hcr, confined.cptr, confined.cnthctl));
    assert_eq!(HostPmu::of_build(), HostPmu::Confined, "test builds never have pmu-bench");
}

/// ID fields (register, shift, name) that announce a feature a guest must not see: written
/// from the Arm ARM, independently of the allow-list.
const HIDDEN_FIELDS: &[(IdReg, u32, &str)] = &[
    (IdReg::PFR0, 8, "EL2"),
    (IdReg::PFR0, 24, "GIC"),
    (IdReg::PFR0, 28, "RAS"),
    (IdReg::PFR0, 32, "SVE"),
    (IdReg::PFR0, 36, "SEL2"),
    (IdReg::PFR0, 40, "MPAM"),
    (IdReg::PFR0, 44, "AMU"),
    (IdReg::PFR0, 52, "RME"),
    (IdReg::PFR1, 8, "MTE"),
    (IdReg::PFR1, 12, "RAS_frac"),
    (IdReg::PFR1, 16, "MPAM_frac"),
    (IdReg::PFR1, 24, "SME"),
    (IdReg::PFR1, 32, "CSV2_frac"),
    (IdReg::PFR1, 36, "NMI"),
    (IdReg::PFR1, 44, "GCS"),
    (IdReg::DFR0, 4, "TraceVer"),
    (IdReg::DFR0, 8, "PMUVer"),
    (IdReg::DFR0, 32, "PMSVer"),
    (IdReg::DFR0, 40, "TraceFilt"),
    (IdReg::DFR0, 44, "TraceBuffer"),
    (IdReg::DFR0, 52, "BRBE"),
    (IdReg::ISAR0, 24, "TME"),
    (IdReg::ISAR1, 4, "APA"),
    (IdReg::ISAR1, 8, "API"),
    (IdReg::ISAR1, 24, "GPA"),
    (IdReg::ISAR1, 28, "GPI"),
    (IdReg::ISAR1, 60, "LS64"),
    (IdReg::ISAR2, 8, "GPA3"),
    (IdReg::ISAR2, 12, "APA3"),
    (IdReg::ISAR2, 16, "MOPS"),
    (IdReg::ISAR2, 24, "PAC_frac"),
    (IdReg::MMFR1, 4, "VMIDBits"),
    (IdReg::MMFR1, 8, "VH"),
    (IdReg::MMFR1, 16, "LO"),
    (IdReg::MMFR2, 12, "IESB"),
    (IdReg::MMFR2, 24, "NV"),
];

/// Every register of the TID3 space: `S3_0_C0_<1..7>_<0..7>`.
fn tid3_space() -> impl Iterator<Item = IdReg> {
    (1..=7u8).flat_map(|crm| (0..8u8).map(move |op2| IdReg { crm, op2 }))
}

/// The rule of issue 11 for one CPU: what a guest sees of it is switched state only, and every
/// trapped feature the CPU has is trapped by the guest's controls.
fn check_the_rule(name: &str, cpu: &CpuFeatures) -> Result<(), String> {
    let controls = guest(cpu);
    for reg in tid3_space() {
        let value = guest_id_register(cpu, reg);
        for shift in (0..64).step_by(4) {
            let shown = field(value, shift);
            let entry = GUEST_ID_FIELDS.iter().find(|e| e.reg == reg && e.shift == shift);
            match entry {
                None if shown != 0 => {
                    return Err(format!("{name}: {reg:?} bits {shift}+ read {shown:#x} and are not allow-listed"))
                }
                None => {}
                Some(e) => {
                    let floor = matches!(e.shown, Shown::Fixed(_));
                    if shown != 0 && !floor && guest_access(e.feature) != GuestAccess::Switched {
                        return Err(format!(
                            "{name}: {reg:?} bits {shift}+ show {:?}, which is not switched",
                            e.feature
                        ));
                    }
                }
            }
        }
        for (hidden_reg, shift, field_name) in HIDDEN_FIELDS {
            if *hidden_reg == reg && field(value, *shift) != 0 {
                return Err(format!("{name}: the guest sees {field_name} = {:#x}", field(value, *shift)));
            }
        }
    }
    for (feature, access) in GUEST_FEATURES {
        if let GuestAccess::Trapped(traps) = access {
            if !cpu_has(cpu, *feature) {
                continue;
            }
            if let Some(trap) = traps.iter().find(|t| !t.holds(&controls)) {
                return Err(format!("{name}: {feature:?} is not trapped: {trap:?} does not hold in {controls:x?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn guests_see_only_switched_features_and_every_trapped_feature_traps() {
    for (name, cpu) in cpus() {
        check_the_rule(name, &cpu).unwrap();
    }
}

#[test]
fn every_feature_of_a_cpu_that_announces_everything_is_in_the_table() {
    let cpu = announces_everything();
    for (feature, _) in GUEST_FEATURES {
        assert!(cpu_has(&cpu, *feature), "{feature:?}");
    }
    // The table is the rule: no feature is listed twice.
    for (i, (a, _)) in GUEST_FEATURES.iter().enumerate() {
        assert!(GUEST_FEATURES[i + 1..].iter().all(|(b, _)| a != b), "{a:?} twice");
    }
    let unhandled: Vec<Feature> = unhandled(&cpu).collect();
    assert_eq!(unhandled, [Feature::Mpam, Feature::BranchRecords]);
    assert_eq!(unhandled_of(&cortex_a72()), []);
    assert_eq!(unhandled_of(&cortex_a72_gicv3()), []);
}

fn unhandled_of(cpu: &CpuFeatures) -> Vec<Feature> {
    unhandled(cpu).collect()
}

#[test]
fn a_cortex_a72_guest_sees_its_isa_and_memory_model_without_pmu_or_aarch32() {
    let cpu = cortex_a72();
    let g = |reg| guest_id_register(&cpu, reg);
    // EL0 and EL1 AArch64 only; EL2, EL3 hidden; FP and AdvSIMD (0) as they are.
    assert_eq!(g(IdReg::PFR0), 0x11);
    assert_eq!(g(IdReg::PFR1), 0);
    // Debug v8.0, 2 breakpoints and watchpoints, no OS double lock; no PMU, no trace.
    assert_eq!(g(IdReg::DFR0), 0xf << 36 | 1 << 20 | 1 << 12 | 6);
    assert_eq!(g(IdReg::ISAR0), 0x0001_1120);
    assert_eq!(g(IdReg::MMFR0), 0x0000_1122, "PARange capped at 40 bits");
    for reg in tid3_space().filter(|r| r.crm < 4) {
        assert_eq!(g(reg), 0, "AArch32 ID register {reg:?}");
    }
}

#[test]
fn an_armv9_guest_sees_no_pauth_lor_ras_amu_sve_or_mte() {
    let cpu = armv9_core();
    let g = |reg| guest_id_register(&cpu, reg);
    // CSV3 1, CSV2 1, DIT 1; AdvSIMD 1, FP 1, EL1 1, EL0 1.
    assert_eq!(g(IdReg::PFR0), 0x1101_0000_0011_0011, "{:#x}", g(IdReg::PFR0));
    // SSBS 2, BT 1; no MTE.
    assert_eq!(g(IdReg::PFR1), 0x21);
    // ISAR1 without APA and GPA.
    assert_eq!(g(IdReg::ISAR1), 0x0010_1111_0021_1001, "{:#x}", g(IdReg::ISAR1));
    // MMFR1 without LO, VH, VMIDBits: PAN 3, HPDS 2, HAFDBS 2.
    assert_eq!(g(IdReg::MMFR1), 0x0030_2002, "{:#x}", g(IdReg::MMFR1));
}

/// Companions: a guest HCR without TID3, and an ISAR1 that shows PAuth, each break the rule.
#[test]
fn the_rule_catches_a_dropped_tid3_and_a_shown_pauth() {
    use crate::mutation::{catches, Mutation};
    let inputs = proptest::sample::select(cpus());
    let property = |(name, cpu): (&str, CpuFeatures)| {
        check_the_rule(name, &cpu).map_err(proptest::test_runner::TestCaseError::fail)
    };
    catches(Mutation::GuestHcrDropsTid3, 8, inputs.clone(), property);
    catches(Mutation::GuestIdShowsPauth, 16, inputs, property);
}

/// The Pi 4's Cortex-A72: EL1 loses write access to the core's IMPLEMENTATION DEFINED control
/// registers (CPUACTLR_EL1 and friends); a core KCore does not know keeps what it had.
#[test]
fn el1_cannot_write_the_a72s_implementation_defined_controls() {
    let a72 = CpuFeatures::from_id_registers(IdRegisters { midr: 0x410f_d083, ..IdRegisters::default() });
    assert_eq!(actlr_el2(&a72), Some(0));
    let unknown = CpuFeatures::from_id_registers(IdRegisters { midr: 0x610f_0220, ..IdRegisters::default() });
    assert_eq!(actlr_el2(&unknown), None);
}

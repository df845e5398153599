//! `vcpu::fp` refines its spec: random schedules of vCPU runs on several cores, the host's
//! FP/SIMD use, vCPU resets, VMs created again and cores entering the host afresh; every guest
//! entry must find exactly the values the spec says the vCPU runs with.

use super::*;
use crate::mutation::{self, Mutation};
use crate::vcpu::VcpuContext;
use alloc::boxed::Box;
use alloc::vec::Vec;
use proptest::prelude::*;

const CORES: usize = 3;
const VCPUS: usize = 3;

#[derive(Clone, Debug)]
enum Step {
    /// vCPU `vcpu` runs on `core` and leaves new values in the registers.
    Run { vcpu: usize, core: usize },
    /// The host on `core` uses FP/SIMD: its trap puts its own values back, and it writes them.
    HostUses { core: usize },
    /// vCPU `vcpu` is reset (PSCI CPU_ON, a VM's first run).
    Start { vcpu: usize },
    /// vCPU `vcpu`'s VM is destroyed and created again: a new context.
    Recreate { vcpu: usize },
    /// `core` enters the host afresh (PSCI CPU_ON, a reset): zeroed registers.
    FreshCore { core: usize },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => (0..VCPUS, 0..CORES).prop_map(|(vcpu, core)| Step::Run { vcpu, core }),
        1 => (0..CORES).prop_map(|core| Step::HostUses { core }),
        1 => (0..VCPUS).prop_map(|vcpu| Step::Start { vcpu }),
        1 => (0..VCPUS).prop_map(|vcpu| Step::Recreate { vcpu }),
        1 => (0..CORES).prop_map(|core| Step::FreshCore { core }),
    ];
    proptest::collection::vec(step, 1..40)
}

/// One core as the world switch keeps it (`vcpu::world_switch::HostFp`): its registers, the
/// host's parked values, and what `CoreFp` says the registers hold.
struct Core {
    regs: FpRegs,
    host: FpRegs,
    parked: bool,
    guest: CoreFp,
}

impl FpBank for FpRegs {
    fn load(&mut self, regs: &FpRegs) {
        *self = *regs;
    }
    fn save(&mut self, out: &mut FpRegs) {
        *out = *self;
    }
}

/// Values no other step leaves: step `n`'s writer `who` in every register.
fn values(n: usize, who: u64) -> FpRegs {
    let mut v = FpRegs::ZERO;
    v.q.iter_mut().enumerate().for_each(|(i, q)| *q = (n as u128) << 64 | u128::from(who) << 8 | i as u128);
    v.fpsr = n as u64;
    v
}

fn refines(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut cores: Vec<Core> = (0..CORES)
        .map(|c| Core { regs: FpRegs::ZERO, host: FpRegs::ZERO, parked: false, guest: CoreFp::new(c) })
        .collect();
    let mut vcpus: Vec<Box<VcpuContext>> = (0..VCPUS).map(|i| VcpuContext::new(i as u8)).collect();
    let mut s = spec::Fp { vcpus: vec![FpRegs::ZERO; VCPUS] };
    for (n, step) in steps.into_iter().enumerate() {
        match step {
            Step::Run { vcpu, core } => {
                let (c, ctx) = (&mut cores[core], &mut vcpus[vcpu]);
                // `run_vcpu`: the host's parked first (its values leave the registers).
                if !c.parked {
                    c.host = c.regs;
                    c.parked = true;
                }
                enter_guest(&c.guest, &ctx.fp, ctx.fp_mark, &mut c.regs);
                let left = values(n, 0x100 + vcpu as u64);
                let (ran_with, next) = spec::run(&s, vcpu, left).ok_or_else(|| TestCaseError::fail("no vCPU"))?;
                prop_assert_eq!(
                    c.regs,
                    ran_with,
                    "step {}: vCPU {} on core {} ran with another world's values",
                    n,
                    vcpu,
                    core
                );
                c.regs = left;
                exit_guest(&mut c.guest, &mut ctx.fp, &mut ctx.fp_mark, &mut c.regs);
                s = next;
            }
            Step::HostUses { core } => {
                let c = &mut cores[core];
                // `unpark_host_fp`: the host's values back, the guest's forgotten.
                if c.parked {
                    c.regs = c.host;
                    c.parked = false;
                    c.guest.forget();
                }
                c.regs = values(n, core as u64);
            }
            Step::Start { vcpu } => {
                vcpus[vcpu].start(0x4000_0000, 0);
                s = spec::start(&s, vcpu).ok_or_else(|| TestCaseError::fail("no vCPU"))?;
            }
            Step::Recreate { vcpu } => {
                vcpus[vcpu] = VcpuContext::new(vcpu as u8);
                s = spec::start(&s, vcpu).ok_or_else(|| TestCaseError::fail("no vCPU"))?;
            }
            Step::FreshCore { core } => {
                // `fresh_host_fp`.
                let c = &mut cores[core];
                c.regs = FpRegs::ZERO;
                c.parked = false;
                c.guest.forget();
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn fp_reload_skips_refine_the_spec(steps in steps()) {
        refines(steps)?;
    }
}

#[test]
fn a_run_on_the_core_that_still_holds_its_values_skips_the_reload() {
    let mut core = CoreFp::new(1);
    let mut ctx = VcpuContext::new(0);
    let (mut regs, left) = (FpRegs::ZERO, values(1, 7));
    enter_guest(&core, &ctx.fp, ctx.fp_mark, &mut regs);
    regs = left;
    exit_guest(&mut core, &mut ctx.fp, &mut ctx.fp_mark, &mut regs);
    assert!(core.holds(ctx.fp_mark));
    assert!(!CoreFp::new(0).holds(ctx.fp_mark), "a mark names its core");
    core.forget();
    assert!(!core.holds(ctx.fp_mark));
    assert!(!core.holds(FpMark::NONE));
}

#[test]
fn the_fp_property_catches_a_skip_on_another_cores_mark() {
    mutation::catches(Mutation::FpReloadSkippedForAnotherCoresMark, 512, steps(), refines);
}

#[test]
fn the_fp_property_catches_a_reset_that_keeps_the_mark() {
    mutation::catches(Mutation::FpMarkKeptOnStart, 512, steps(), refines);
}

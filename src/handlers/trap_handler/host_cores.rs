//! Cores entering the host: a core's EL2 state for the host's world, set whenever it enters the
//! host (the boot core once, a secondary at every PSCI CPU_ON), and the wait of a core the host
//! does not use.

use super::principal::{self, Principal};
use super::state;
use crate::cpus::CORES;
use crate::machine::guest_regs::El2Controls;
use crate::machine::{cpu, features, regs, MAX_CPUS};
use crate::vcpu::controls::{self, HostPmu};
use crate::vcpu::world_switch::{self, HostFp};
use log::info;

/// A core's EL2 controls for both worlds, computed when it first enters the host.
pub struct WorldControls {
    /// The host's, as `enter_host` loaded them.
    pub host: El2Controls,
    /// The host's with its FP/SIMD registers parked (`world_switch::parked_host_controls`), for
    /// the world switch back from a guest.
    pub host_parked: El2Controls,
    /// What every vCPU's share (`controls::guest_template`), less each vCPU's own three.
    pub guest_template: El2Controls,
}

static WORLD_CONTROLS: [spin::Once<WorldControls>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

/// Each core's host FP/SIMD registers while guests run on it (`world_switch::HostFp`). Only the
/// core itself takes its own: during a VCPU_RUN, and when the host's FP/SIMD access traps.
static HOST_FP: [spin::Mutex<HostFp>; MAX_CPUS] = {
    let mut each = [const { spin::Mutex::new(HostFp::new(0)) }; MAX_CPUS];
    let mut core = 0;
    while core < MAX_CPUS {
        each[core] = spin::Mutex::new(HostFp::new(core));
        core += 1;
    }
    each
};

/// `core`'s parked host FP/SIMD registers.
#[inline]
pub fn host_fp(core: usize) -> spin::MutexGuard<'static, HostFp> {
    HOST_FP[core].lock()
}

/// The host's FP/SIMD access trapped on `core` (ESR class FP_ACCESS): its parked registers come
/// back and the instruction runs again. False when none were parked (not the world switch's trap).
pub fn unpark_host_fp(core: usize) -> bool {
    world_switch::unpark_host_fp(host_controls(core), &mut host_fp(core))
}

/// Both worlds' EL2 controls on `core` (after it entered the host).
#[inline]
pub fn world_controls(core: usize) -> &'static WorldControls {
    WORLD_CONTROLS[core].get().expect("a core runs a guest only for the host, after entering it")
}

/// The host's EL2 controls on `core` (after it entered the host).
#[inline]
pub fn host_controls(core: usize) -> &'static El2Controls {
    &world_controls(core).host
}

/// Sets this core up for the host's world (`vcpu::controls`: the EL2 state of both worlds, then
/// the host's controls behind its stage-2) and enters the host at `entry` with `x0`.
pub fn enter_host(core: usize, entry: u64, x0: u64) -> ! {
    let host = state::host();
    let cpu = features::boot();
    let core_controls = controls::core_controls(cpu, regs::midr_el1(), host.gic_v3);
    let worlds = WORLD_CONTROLS[core].call_once(|| {
        let host_controls = controls::host_controls(cpu, HostPmu::of_build(), host.vttbr, regs::mpidr_el1());
        WorldControls {
            host: host_controls,
            host_parked: world_switch::parked_host_controls(&host_controls),
            guest_template: controls::guest_template(cpu, HostPmu::of_build()),
        }
    });
    world_switch::enter_host_world(&core_controls, &worlds.host);
    world_switch::fresh_host_fp(&mut host_fp(core));
    principal::set(core, Principal::Host);
    cpu::enter_el1(entry, x0)
}

/// Waits in KCore until the host gives this core work (PSCI CPU_ON), then enters the host.
pub fn wait_for_work(core: usize) -> ! {
    principal::set(core, Principal::Kcore);
    loop {
        if let Some(work) = CORES.take_work(core) {
            info!("cpu{core} enters the host at {:#x}", work.entry);
            enter_host(core, work.entry, work.context);
        }
        cpu::wait_for_event();
    }
}

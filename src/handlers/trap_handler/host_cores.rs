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

/// The host world's EL2 controls on each core, as `enter_host` loaded them, for the world switch
/// back from a guest.
static HOST_CONTROLS: [spin::Once<El2Controls>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

/// Each core's host FP/SIMD registers while guests run on it (`world_switch::HostFp`). Only the
/// core itself takes its own: during a VCPU_RUN, and when the host's FP/SIMD access traps.
static HOST_FP: [spin::Mutex<HostFp>; MAX_CPUS] = [const { spin::Mutex::new(HostFp::new()) }; MAX_CPUS];

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

/// The guest world's EL2 controls on each core, less each vCPU's own three
/// (`controls::guest_template`), computed when the core first entered the host.
static GUEST_TEMPLATES: [spin::Once<El2Controls>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];

/// The guest controls every vCPU shares on `core` (after it entered the host).
#[inline]
pub fn guest_template(core: usize) -> &'static El2Controls {
    GUEST_TEMPLATES[core].get().expect("a core runs a guest only for the host, after entering it")
}

/// The host's EL2 controls on `core` (after it entered the host).
#[inline]
pub fn host_controls(core: usize) -> &'static El2Controls {
    HOST_CONTROLS[core].get().expect("a core runs a guest only for the host, after entering it")
}

/// Sets this core up for the host's world (`vcpu::controls`: the EL2 state of both worlds, then
/// the host's controls behind its stage-2) and enters the host at `entry` with `x0`.
pub fn enter_host(core: usize, entry: u64, x0: u64) -> ! {
    let host = state::host();
    let cpu = features::boot();
    let core_controls = controls::core_controls(cpu, regs::midr_el1(), host.gic_v3);
    let host_controls = controls::host_controls(cpu, HostPmu::of_build(), host.vttbr, regs::mpidr_el1());
    GUEST_TEMPLATES[core].call_once(|| controls::guest_template(cpu, HostPmu::of_build()));
    world_switch::enter_host_world(&core_controls, HOST_CONTROLS[core].call_once(|| host_controls));
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

//! The world switch (SeKVM CtxtSwitch, layer 29): moves a core from the host's world into a
//! vCPU's and back. Out go the host's EL1 registers, FP/SIMD and EL2 controls (and its PMU
//! counters stop), in come the guest's; the guest runs until an exit KCore cannot serve in
//! place; then the same in reverse. The EL2 controls of each world are one [`El2Controls`]
//! value from `vcpu::controls`, loaded by [`load_controls`].

use super::VcpuContext;
use crate::machine::guest_regs::{CoreControls, El2Controls, GuestGprs};
use crate::machine::{features, regs, world_switch as cpu, GuestExit};

/// Loads one world's EL2 controls (the guest's about to run, or the host's again).
#[inline]
pub fn load_controls(controls: &El2Controls) {
    cpu::set_el2_controls(controls)
}

/// Sets this core up to run the host: the EL2 state of both worlds, then the host's controls.
pub fn enter_host_world(core: &CoreControls, host: &El2Controls) {
    regs::set_core_controls(core);
    load_controls(host);
}

/// Runs `vcpu` on this core, whose host world has the EL2 controls `host`, with the guest's EL2
/// controls `guest`, until `serve` returns a value for an exit; `serve` gets every exit first
/// and returns `None` for those it served in place (the guest runs on). `in_place` sees the
/// synchronous exits the machine's fast path offers it (`GuestWorld::serve_in_place`, with the
/// syndrome) before any of that: it serves them without leaving the guest's world, or declines
/// having changed nothing, and then `serve` gets the exit. `stop_host_pmu`: the host's PMU
/// counters stop while the guest runs (`controls::stops_host_pmu_in_guest`).
#[inline]
pub fn run_vcpu<R>(
    vcpu: &mut VcpuContext,
    host: &El2Controls,
    guest: &El2Controls,
    stop_host_pmu: bool,
    mut in_place: impl FnMut(&mut VcpuContext, u64) -> bool,
    mut serve: impl FnMut(&mut VcpuContext, GuestExit) -> Option<R>,
) -> R {
    let ras = features::boot().ras();
    let host_el1 = cpu::saved_el1();
    let host_fp = cpu::saved_fp();
    let host_pmu_counters = stop_host_pmu.then(cpu::stop_pmu_counters);
    cpu::restore_el1(&vcpu.el1);
    cpu::restore_fp(&vcpu.fp);
    load_controls(guest);
    if ras {
        // Nothing passes through DISR_EL1 from one vCPU to the next.
        cpu::clear_vdisr();
    }
    let answer = loop {
        cpu::set_virtual_serror(vcpu.virtual_serror, ras);
        let exit = cpu::run_guest(&mut Running { vcpu, in_place: &mut in_place });
        vcpu.virtual_serror = cpu::virtual_serror_pending();
        if let Some(answer) = serve(vcpu, exit) {
            break answer;
        }
    };
    cpu::save_el1(&mut vcpu.el1);
    cpu::save_fp(&mut vcpu.fp);
    cpu::restore_el1(&host_el1);
    cpu::restore_fp(&host_fp);
    load_controls(host);
    if let Some(running) = host_pmu_counters {
        cpu::restart_pmu_counters(running);
    }
    answer
}

/// A vCPU in the guest's world, as the machine's world switch runs it.
struct Running<'a, F> {
    vcpu: &'a mut VcpuContext,
    in_place: &'a mut F,
}

impl<F: FnMut(&mut VcpuContext, u64) -> bool> cpu::GuestWorld for Running<'_, F> {
    #[inline]
    fn gprs(&mut self) -> &mut GuestGprs {
        &mut self.vcpu.gprs
    }

    #[inline]
    fn serve_in_place(&mut self, esr: u64) -> bool {
        (self.in_place)(self.vcpu, esr)
    }
}

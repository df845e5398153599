//! TrapHandler (SeKVM layers 33-34): the Rust side of KCore's vectors. It decodes each trap once
//! at the edge (`super::decode`), asks the dispatchers what it means, and carries out their
//! answer: writing registers back, injecting an exception, switching worlds, waking cores, or
//! powering off.

mod el2_fault;
mod host_cores;
mod host_fault;
mod inject_el1;
mod invariants;
mod power_down;
mod principal;
mod smmu;
mod state;
mod vcpu_run;

pub use host_cores::{enter_host, wait_for_work};
pub use principal::{halt_all_cores, principal_name};
pub use smmu::install as install_smmu;
pub use state::{install, HostSetup};

use super::decode::{HostCall, HostTrap, VmCall};
use super::trap_dispatcher::{host_hvc_dispatcher, host_trap_dispatcher, CallExit, HostEnv, HostExit};
use super::vm_calls;
use crate::cpus::CORES;
use crate::machine::{cpu, regs, Aarch64, CallFrame, TrapFrame, TrapKind, CALL_REGS, RESULT_REGS};
use host_fault::Outcome;
use log::{info, warn};
use principal::Principal;

/// Entry for the host's synchronous traps other than SMCCC calls (vectors.S `host_sync_entry`),
/// with the syndrome the vector read.
#[no_mangle]
extern "C" fn host_sync_trap_handler(frame: &mut TrapFrame, esr: u64) {
    if principal::needs_attention() {
        return attended(move || host_sync_trap(frame, esr));
    }
    host_sync_trap(frame, esr)
}

#[inline(always)]
fn host_sync_trap(frame: &mut TrapFrame, esr: u64) {
    // As in `lower_el_trap_handler`, the principal already names the host.
    let outcome = host_sync(cpu::index(), frame, esr);
    invariants::check_after_host_trap(outcome == Outcome::Refused);
}

/// The rare entry from the host when something needs attention first (`principal::attend`:
/// the halt flag, the SMMU's events), then the trap as usual: a separate copy of the handler, so
/// that the common entry stays one load and a branch, and keeps its arguments in their registers.
#[cold]
#[inline(never)]
fn attended(trap: impl FnOnce()) {
    principal::attend();
    trap()
}

/// Entry for every other exception from a lower EL (vectors.S): interrupts and SErrors taken
/// while the host runs, and AArch32 traps.
#[no_mangle]
extern "C" fn lower_el_trap_handler(frame: &mut TrapFrame, kind: u64) {
    if principal::needs_attention() {
        principal::attend();
    }
    // Only the host traps through KCore's vectors: a guest's traps go through the guest half of the
    // core's vector set (`__guest_exit`) back into `vcpu_run`. The principal already names the
    // host: every way into the host's world sets it (`enter_host`, and `vcpu_run` on its way back).
    let core = cpu::index();
    match TrapKind::from_vector(kind) {
        TrapKind::Sync => {
            let outcome = host_sync(core, frame, regs::esr_el2());
            invariants::check_after_host_trap(outcome == Outcome::Refused);
        }
        other => warn!("unexpected {other:?} exception from EL1 (ESR {:#x}); ignored", regs::esr_el2()),
    }
    // The principal keeps naming the last trap's: after the host is up, KCore runs only in
    // traps (and in `wait_for_work`, which resets it).
}

/// Entry for the host's SMCCC calls (`hvc #0`), which vectors.S sends here with only the
/// registers a call uses saved ([`CallFrame`]): decoded once, dispatched, the answer carried out.
#[no_mangle]
extern "C" fn host_call_trap_handler(frame: &mut CallFrame) {
    if principal::needs_attention() {
        return attended(move || host_call(frame));
    }
    host_call(frame)
}

#[inline(always)]
fn host_call(frame: &mut CallFrame) {
    // As in `lower_el_trap_handler`, the principal already names the host.
    let regs = frame.call_regs();
    let function = regs[0];
    let exit = host_hvc_dispatcher(HostCall::decode(regs), regs);
    if exit != CallExit::Resume {
        finish_call(cpu::index(), exit, frame.result_regs());
    }
    invariants::check_after_call(function);
}

/// Carries out a host call's answer; x0..x5 get its result (VCPU_RUN's: x0..x17).
#[inline(always)]
fn finish_call(core: usize, exit: CallExit, results: &mut [u64; RESULT_REGS]) {
    let (regs, _) = results.split_first_chunk_mut::<CALL_REGS>().unwrap_or_else(|| unreachable!());
    match exit {
        CallExit::Resume => {}
        CallExit::SystemOff { status } => system_off(core, status),
        CallExit::VmCall(call) => serve_vm_call(call, regs),
        CallExit::VcpuRun { vm, vcpu, answer } => vcpu_run::vcpu_run(core, results, vm, vcpu, answer),
        CallExit::SmmuCall(call) => smmu::serve_call(call, regs),
    }
}

/// The host's SYSTEM_OFF: the power-down scrub, then off.
#[inline(never)]
fn system_off(core: usize, status: u8) -> ! {
    info!("host SYSTEM_OFF, status {status}");
    power_down::power_down(core, "power-off");
    state::host().power.system_off(status.into())
}

/// A VM call, served by the VM layer under the locks it takes; x0..x3 get its result.
#[inline(never)]
fn serve_vm_call(call: VmCall, regs: &mut [u64; CALL_REGS]) {
    let result = vm_calls::serve(&Aarch64, state::kcore(), regs[0] as u32, call);
    regs[0] = result.status;
    regs[1..4].copy_from_slice(&result.values);
}

/// A synchronous trap from the host: decoded once, dispatched, and the answer carried out.
fn host_sync(core: usize, frame: &mut TrapFrame, esr: u64) -> Outcome {
    // The host's first FP/SIMD instruction since a guest ran here: its registers come back.
    if super::esr::class(esr) == super::esr::ec::FP_ACCESS && host_cores::unpark_host_fp(core) {
        return Outcome::Served;
    }
    // Only a PSCI CPU_ON asks where the host may run: the setup is looked up then, not on
    // every trap (nothing stands between the decode and the dispatcher's match on it).
    let host_may_run_at = |pa| (state::host().may_run_at)(pa);
    let env = HostEnv { cores: &CORES, host_may_run_at: &host_may_run_at };
    let trap = HostTrap::decode(esr, frame, || (regs::far_el2(), regs::hpfar_el2()));
    match host_trap_dispatcher(trap, frame, &env) {
        HostExit::Resume => {}
        HostExit::ResumeAndWake => cpu::send_event(),
        HostExit::Undef { pc, reason } => {
            warn!("host trap {reason} at {pc:#x}: injecting UNDEF into the host");
            inject_el1::undef(frame, pc);
        }
        HostExit::SystemOff => system_off(core, 0),
        HostExit::SystemReset => {
            info!("host SYSTEM_RESET");
            power_down::power_down(core, "reset");
            state::host().power.system_reset()
        }
        HostExit::Stage2Fault(abort) => return host_fault::host_stage2_fault(frame, abort),
        HostExit::CleanInvalidateSetWay { operand } => {
            let pc = frame.elr.wrapping_sub(4);
            info!("host set/way maintenance at {pc:#x} (operand {operand:#x}): done as clean and invalidate");
            regs::clean_invalidate_dcache_set_way(operand)
        }
        HostExit::Call(exit) => finish_call(core, exit, frame.result_regs()),
        HostExit::CpuOff => {
            info!("cpu{core} leaves the host (PSCI CPU_OFF)");
            principal::set(core, Principal::Kcore);
            CORES.host_cpu_off(core);
            wait_for_work(core)
        }
    }
    Outcome::Served
}

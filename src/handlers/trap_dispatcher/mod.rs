//! TrapDispatcher (SeKVM layer 32): decides what every trap to EL2 means.
//!
//! `host_trap_dispatcher` takes a synchronous trap from the host: an HVC goes to
//! `host_hvc_dispatcher`, whose handlers are a static table keyed by SMCCC function id; a PSCI SMC
//! is mediated; anything else the host may not do gets an UNDEF. `vm_exit_dispatcher` takes a
//! guest's exits. Both are pure: they read and write the saved registers and return what the
//! machine must do next, which `trap_handler` carries out.

pub mod spec;
#[cfg(test)]
mod tests;

use super::esr::{self, ec};
use super::psci::{self, PsciOutcome};
use crate::cpus::CoreTable;
use crate::machine::TrapFrame;
use corevisor_abi::{host_call, HypResult, Status, ABI_VERSION, HYP_CALL_BASE};

/// Why the host's trap is refused with an UNDEF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forbidden {
    /// An HVC whose immediate is not 0 (not an SMCCC call).
    HvcImmediate(u16),
    /// An SMC that is not a PSCI call.
    Smc(u32),
    /// An exception class the host has no business raising.
    Class(u8),
}

/// What the machine does after a host trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostExit {
    /// Return to the host; the frame holds its registers.
    Resume,
    /// Return to the host, and wake the parked cores: a CPU_ON was posted.
    ResumeAndWake,
    /// Inject an UNDEF for the instruction at `pc` into the host.
    Undef {
        pc: u64,
        reason: Forbidden,
    },
    /// Power the machine off; `status` is the host's exit status.
    SystemOff {
        status: u64,
    },
    SystemReset,
    /// This core leaves the host and waits in KCore again.
    CpuOff,
    /// The host touched memory its stage-2 does not map: the FaultHandler decides.
    Stage2Fault,
}

/// What the host dispatcher needs to know about the rest of KCore.
pub struct HostEnv<'a> {
    pub cores: &'a CoreTable,
    /// Whether the host may start a core at this physical address.
    pub host_may_run_at: &'a dyn Fn(u64) -> bool,
}

/// Decides a synchronous trap from the host with syndrome `esr`.
pub fn host_trap_dispatcher(esr: u64, frame: &mut TrapFrame, env: &HostEnv) -> HostExit {
    match esr::class(esr) {
        ec::HVC64 if esr::imm16(esr) == 0 => host_hvc_dispatcher(frame),
        // ELR_EL2 points after an HVC; the UNDEF belongs to the HVC itself.
        ec::HVC64 => {
            HostExit::Undef { pc: frame.elr.wrapping_sub(4), reason: Forbidden::HvcImmediate(esr::imm16(esr)) }
        }
        ec::SMC64 => {
            // A trapped SMC leaves ELR_EL2 on the SMC.
            let function = frame.x[0] as u32;
            if esr::imm16(esr) != 0 || !psci::is_psci(function) {
                return HostExit::Undef { pc: frame.elr, reason: Forbidden::Smc(function) };
            }
            frame.elr = frame.elr.wrapping_add(4);
            match psci::host_psci(function, [frame.x[1], frame.x[2], frame.x[3]], env.cores, env.host_may_run_at) {
                PsciOutcome::Return(x0) => {
                    frame.x[0] = x0;
                    HostExit::Resume
                }
                PsciOutcome::CpuOnPosted => {
                    frame.x[0] = Status::Success.as_reg();
                    HostExit::ResumeAndWake
                }
                PsciOutcome::CpuOff => HostExit::CpuOff,
                PsciOutcome::SystemOff => HostExit::SystemOff { status: 0 },
                PsciOutcome::SystemReset => HostExit::SystemReset,
            }
        }
        ec::DABT_LOW | ec::IABT_LOW => HostExit::Stage2Fault,
        class => HostExit::Undef { pc: frame.elr, reason: Forbidden::Class(class) },
    }
}

/// A host hypercall handler: reads its arguments from x1..x6 and writes its results.
type HostHvcHandler = fn(&mut TrapFrame) -> HostExit;

/// Host hypercalls, indexed by function number (`function id - HYP_CALL_BASE`).
static HOST_HVC_TABLE: [HostHvcHandler; 4] = [hvc_version, hvc_null, hvc_system_off, hvc_host_stats];

const _: () = assert!(host_call::VERSION - HYP_CALL_BASE == 0);
const _: () = assert!(host_call::NULL - HYP_CALL_BASE == 1);
const _: () = assert!(host_call::SYSTEM_OFF - HYP_CALL_BASE == 2);
const _: () = assert!(host_call::HOST_STATS - HYP_CALL_BASE == 3);

/// Serves the host's hypercall in x0 (SeKVM `host_hvc_dispatcher`). SMCCC passes the function
/// id in w0, so the upper half of x0 is ignored. An unknown id gets NOT_SUPPORTED.
pub fn host_hvc_dispatcher(frame: &mut TrapFrame) -> HostExit {
    let function = frame.x[0] as u32;
    match HOST_HVC_TABLE.get(function.wrapping_sub(HYP_CALL_BASE) as usize) {
        Some(handler) => handler(frame),
        None => {
            log::warn!("unknown host hypercall {function:#x}: NOT_SUPPORTED");
            set_result(frame, HypResult::status(Status::NotSupported))
        }
    }
}

fn set_result(frame: &mut TrapFrame, result: HypResult) -> HostExit {
    frame.x[0] = result.status;
    frame.x[1..4].copy_from_slice(&result.values);
    HostExit::Resume
}

fn hvc_version(frame: &mut TrapFrame) -> HostExit {
    set_result(frame, HypResult::success([ABI_VERSION, 0, 0]))
}

fn hvc_null(frame: &mut TrapFrame) -> HostExit {
    frame.x[0] = Status::Success.as_reg();
    HostExit::Resume
}

/// Counts the host's stage-2 faults that KCore served (mapped) and refused (aborted).
pub struct HostStats {
    pub mapped: core::sync::atomic::AtomicU64,
    pub refused: core::sync::atomic::AtomicU64,
}

/// The host's own fault statistics: what it did, nothing about anyone else.
pub static HOST_STATS: HostStats =
    HostStats { mapped: core::sync::atomic::AtomicU64::new(0), refused: core::sync::atomic::AtomicU64::new(0) };

fn hvc_host_stats(frame: &mut TrapFrame) -> HostExit {
    use core::sync::atomic::Ordering::Relaxed;
    set_result(frame, HypResult::success([HOST_STATS.mapped.load(Relaxed), HOST_STATS.refused.load(Relaxed), 0]))
}

/// The largest exit status SYSTEM_OFF carries: a process exit status is one byte.
pub const MAX_EXIT_STATUS: u64 = 255;

fn hvc_system_off(frame: &mut TrapFrame) -> HostExit {
    let status = frame.x[1];
    if status > MAX_EXIT_STATUS && !crate::mutation::planted(crate::mutation::Mutation::SkipSystemOffRangeCheck) {
        return set_result(frame, HypResult::status(Status::InvalidParameters));
    }
    HostExit::SystemOff { status }
}

/// What the machine does after a guest exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// Inject an UNDEF for the instruction at `pc` into the guest.
    Undef { pc: u64 },
}

/// Decides a synchronous exit from a guest (SeKVM `vm_exit_dispatcher`). No guest can run yet;
/// until the VM layers exist every exit class is one corevisor does not serve, and a guest's
/// unknown trap gets an UNDEF, never a panic.
pub fn vm_exit_dispatcher(esr: u64, frame: &mut TrapFrame) -> VmExit {
    match esr::class(esr) {
        ec::HVC64 => VmExit::Undef { pc: frame.elr.wrapping_sub(4) },
        _ => VmExit::Undef { pc: frame.elr },
    }
}

//! TrapDispatcher (SeKVM layer 32): decides what every trap to EL2 means.
//!
//! Both dispatchers take a trap already decoded at the edge (`super::decode`): one exhaustive
//! `match` routes each host call to its operation, a PSCI SMC is mediated, anything else the
//! host may not do gets an UNDEF; `vm_exit_dispatcher` takes a guest's exits. Both are pure:
//! they write the saved registers and return what the machine must do next, which
//! `trap_handler` carries out.

#[cfg(test)]
pub mod spec;
#[cfg(test)]
mod tests;

use super::decode::{
    BadCall, ConsoleAccess, Forbidden, GuestCall, GuestCause, GuestTrap, HostCall, HostTrap, Stage2Abort,
    SysInstruction, VmCall,
};
use super::psci::{self, PsciOutcome};
use super::smmu_calls::SmmuCall;
use crate::addr::{Ipa, IpaRange};
use crate::cpus::CoreTable;
use crate::ids::{VcpuId, VmId};
use crate::machine::features::IdReg;
use crate::machine::{TrapFrame, CALL_REGS};
use crate::vcpu::{ExitRecord, Pending, VcpuContext};
use corevisor_abi::{exit, HypResult, Status, ABI_VERSION};

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
    /// The host's PSCI SYSTEM_OFF.
    SystemOff,
    SystemReset,
    /// This core leaves the host and waits in KCore again.
    CpuOff,
    /// The host touched memory its stage-2 does not map: the FaultHandler decides.
    Stage2Fault(Stage2Abort),
    /// The host's `DC ISW`, `DC CSW` or `DC CISW` (HCR_EL2.TSW), with its set/way operand: KCore
    /// cleans and invalidates that line (`DC CISW`), so that the host cannot drop a line KCore
    /// wrote and has not written back; the host resumes after the instruction.
    CleanInvalidateSetWay {
        operand: u64,
    },
    /// A host call (`hvc #0`) the trap handler carries on with.
    Call(CallExit),
}

/// What the machine does after a host call (`hvc #0`); x0..x5 hold what the dispatcher wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallExit {
    /// Return to the host.
    Resume,
    /// Power the machine off; `status` is the host's exit status.
    SystemOff { status: u8 },
    /// A VM hypercall for the VM layer (`vm_calls::serve`); x0..x3 get its result.
    VmCall(VmCall),
    /// VCPU_RUN: the trap handler switches to the guest's world.
    VcpuRun { vm: VmId, vcpu: VcpuId, answer: u64 },
    /// An SMMU call: the trap handler serves it on the SMMU; x0 gets its status.
    SmmuCall(SmmuCall),
}

/// What the host dispatcher needs to know about the rest of KCore.
pub struct HostEnv<'a> {
    pub cores: &'a CoreTable,
    /// Whether the host may start a core at this physical address.
    pub host_may_run_at: &'a dyn Fn(u64) -> bool,
}

/// Decides a synchronous trap from the host (SeKVM `host_trap_dispatcher`).
#[inline]
pub fn host_trap_dispatcher(trap: HostTrap, frame: &mut TrapFrame, env: &HostEnv) -> HostExit {
    match trap {
        HostTrap::Call(call) => match host_hvc_dispatcher(call, frame.call_regs()) {
            CallExit::Resume => HostExit::Resume,
            exit => HostExit::Call(exit),
        },
        HostTrap::Psci { function, args } => {
            // A trapped SMC leaves ELR_EL2 on the SMC.
            frame.elr = frame.elr.wrapping_add(4);
            match psci::host_psci(function, args, env.cores, env.host_may_run_at) {
                PsciOutcome::Return(x0) => {
                    frame.x[0] = x0;
                    HostExit::Resume
                }
                PsciOutcome::CpuOnPosted => {
                    frame.x[0] = Status::Success.as_reg();
                    HostExit::ResumeAndWake
                }
                PsciOutcome::CpuOff => HostExit::CpuOff,
                PsciOutcome::SystemOff => HostExit::SystemOff,
                PsciOutcome::SystemReset => HostExit::SystemReset,
            }
        }
        HostTrap::Stage2Abort(abort) => HostExit::Stage2Fault(abort),
        HostTrap::SetWay { operand } => {
            // A trapped system instruction leaves ELR_EL2 on it.
            if !crate::mutation::planted(crate::mutation::Mutation::HostSetWayRepeats) {
                frame.elr = frame.elr.wrapping_add(4);
            }
            HostExit::CleanInvalidateSetWay { operand }
        }
        HostTrap::Forbidden { pc, reason } => HostExit::Undef { pc, reason },
    }
}

/// Routes the host's hypercall, decoded at the edge, to its operation (SeKVM
/// `host_hvc_dispatcher`): the one match over every host call. `regs` are the caller's x0..x5.
#[inline(always)]
pub fn host_hvc_dispatcher(call: Result<HostCall, BadCall>, regs: &mut [u64; CALL_REGS]) -> CallExit {
    let call = match call {
        Ok(call) => call,
        Err(bad) => return refuse(bad, regs),
    };
    match call {
        HostCall::Version => set_result(regs, HypResult::success([ABI_VERSION, 0, 0])),
        HostCall::Null => {
            regs[0] = Status::Success.as_reg();
            CallExit::Resume
        }
        HostCall::SystemOff { status } => CallExit::SystemOff { status },
        HostCall::HostStats => {
            use core::sync::atomic::Ordering::Relaxed;
            if cfg!(feature = "pmu-bench") {
                bench_trace_mark();
            }
            let stats = [HOST_STATS.mapped.load(Relaxed), HOST_STATS.refused.load(Relaxed), 0];
            set_result(regs, HypResult::success(stats))
        }
        HostCall::VcpuRun { vm, vcpu, answer } => CallExit::VcpuRun { vm, vcpu, answer },
        HostCall::Vm(call) => CallExit::VmCall(call),
        HostCall::SmmuAttach { stream, principal } => CallExit::SmmuCall(SmmuCall::Attach { stream, principal }),
        HostCall::SmmuDetach { stream } => CallExit::SmmuCall(SmmuCall::Detach { stream }),
    }
}

/// `pmu-bench` builds: a PC that only HOST_STATS runs, by which `cargo xtask bench`'s execution
/// trace (xtask `el2_trace`) cuts a run into windows; the contention bench calls HOST_STATS
/// between its rounds. Never inlined, so that the symbol is there to be found.
#[inline(never)]
fn bench_trace_mark() {
    core::hint::black_box(());
}

/// A host call refused at the edge: its status in x0, the host runs on.
#[cold]
fn refuse(bad: BadCall, regs: &mut [u64; CALL_REGS]) -> CallExit {
    let name = super::decode::call_name(bad.function);
    match bad.argument {
        None => log::warn!("unknown host hypercall {:#x}: NOT_SUPPORTED", bad.function),
        Some(argument) => log::info!(
            "{name} refused: the {argument} does not fit (args {:#x} {:#x} {:#x} {:#x})",
            regs[1],
            regs[2],
            regs[3],
            regs[4]
        ),
    }
    set_result(regs, HypResult::status(bad.status))
}

fn set_result(regs: &mut [u64; CALL_REGS], result: HypResult) -> CallExit {
    regs[0] = result.status;
    regs[1..4].copy_from_slice(&result.values);
    CallExit::Resume
}

/// Counts the host's stage-2 faults that KCore served (mapped) and refused (aborted).
pub struct HostStats {
    pub mapped: core::sync::atomic::AtomicU64,
    pub refused: core::sync::atomic::AtomicU64,
}

/// The host's own fault statistics: what it did, nothing about anyone else.
pub static HOST_STATS: HostStats =
    HostStats { mapped: core::sync::atomic::AtomicU64::new(0), refused: core::sync::atomic::AtomicU64::new(0) };

/// What the machine does after a guest exit. Every record it carries is final: nothing is
/// added to it after the dispatcher returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// KCore handled it: the guest runs on.
    Resume,
    /// Inject an UNDEF for the instruction at `pc` into the guest.
    Undef { pc: u64 },
    /// A share call KCore serves (`grant`: SET_DESC_PFN): x0 gets its status, then the guest runs on.
    Share { grant: bool, gpa: Ipa, size: u64 },
    /// The host must act: VCPU_RUN returns this record.
    ToHost(ExitRecord),
    /// A guest's PSCI CPU_ON: the host answers it with `record`, and KCore remembers that vCPU
    /// `target` starts at `entry` with `arg`.
    CpuOn { record: ExitRecord, target: VcpuId, entry: Ipa, arg: u64 },
}

/// What the guest exit dispatcher needs to know about the VM and the machine.
pub struct GuestEnv<'a> {
    /// The VM's RAM window (its stage-2 faults there are page faults, elsewhere MMIO).
    pub ram: IpaRange,
    /// What the guest reads from an ID register (`vcpu::controls::guest_id_register`).
    pub id_register: &'a dyn Fn(IdReg) -> u64,
    /// The guest's live virtual timer, CNTV_CTL_EL0 and CNTV_CVAL_EL0 (still loaded at an exit).
    pub virtual_timer: &'a dyn Fn() -> (u64, u64),
    /// The VM's counter offset (CNTVOFF_EL2).
    pub cntvoff: u64,
    /// The VM's PL011 page, whose transmit side KCore serves (`host_call::VM_CONSOLE`), outside
    /// its RAM.
    pub console: Option<Ipa>,
}

/// When a virtual timer with control `ctl` and compare value `cval` fires, in physical counter
/// ticks (the virtual count is the physical one less `cntvoff`); `u64::MAX` if it is off or
/// masked.
#[inline]
pub fn timer_deadline((ctl, cval): (u64, u64), cntvoff: u64) -> u64 {
    const ENABLE: u64 = 1;
    const IMASK: u64 = 2;
    let cntvoff =
        if crate::mutation::planted(crate::mutation::Mutation::WfiDeadlineIgnoresCntvoff) { 0 } else { cntvoff };
    if ctl & (ENABLE | IMASK) == ENABLE {
        cval.saturating_add(cntvoff)
    } else {
        u64::MAX
    }
}

/// Decides a guest's exit (SeKVM `vm_exit_dispatcher`), decoded at the edge. Nothing a guest does
/// can make KCore panic: every class KCore does not serve is an UNDEF for the guest.
///
/// An SError is the guest's own (issue 11, finding 8): one taken from it (HCR_EL2.AMO routes it
/// to EL2) or found pending as it left becomes a virtual SError pending for the vCPU, which the
/// world switch delivers on its next entry, as the hardware would have without a hypervisor.
/// The host is not told: the error came from the guest's own accesses (its RAM or the devices
/// mapped into it), and stopping the VM would hand every guest a way to make the host act.
/// The exit itself is then served as usual.
#[inline(always)]
pub fn vm_exit_dispatcher(trap: GuestTrap, vcpu: &mut VcpuContext, env: &GuestEnv) -> VmExit {
    let to_host = |reason, details| VmExit::ToHost(ExitRecord { reason, details });
    if trap.serror && !crate::mutation::planted(crate::mutation::Mutation::SErrorAtExitIgnored) {
        vcpu.virtual_serror = true;
    }
    let frame = &mut vcpu.gprs.frame;
    match trap.cause {
        GuestCause::Interrupt => to_host(exit::IRQ, [0; 4]),
        GuestCause::SError => VmExit::Resume,
        GuestCause::CallImmediate { pc } => VmExit::Undef { pc },
        GuestCause::Call { smc, call } => {
            if smc {
                // A trapped SMC leaves ELR_EL2 on the SMC.
                frame.elr = frame.elr.wrapping_add(4);
            }
            match call {
                GuestCall::Share { grant, gpa, size } => VmExit::Share { grant, gpa, size },
                GuestCall::CpuOn { target, entry, arg, regs } => {
                    vcpu.pending = Pending::CallResult;
                    VmExit::CpuOn { record: ExitRecord { reason: exit::HVC, details: regs }, target, entry, arg }
                }
                GuestCall::Host { regs } => {
                    vcpu.pending = Pending::CallResult;
                    to_host(exit::HVC, regs)
                }
            }
        }
        GuestCause::Wait { event } => {
            frame.elr = frame.elr.wrapping_add(4);
            if event && !crate::mutation::planted(crate::mutation::Mutation::WfeReportedAsWfi) {
                to_host(exit::WFE, [0; 4])
            } else {
                to_host(exit::WFI, [timer_deadline((env.virtual_timer)(), env.cntvoff), 0, 0, 0])
            }
        }
        GuestCause::SgiWrite { value } => {
            frame.elr = frame.elr.wrapping_add(4);
            to_host(exit::SGI, [value, 0, 0, 0])
        }
        GuestCause::Sysreg(op) => match emulate_sysreg(op, frame, env) {
            Some(()) => {
                frame.elr = frame.elr.wrapping_add(4);
                VmExit::Resume
            }
            None => VmExit::Undef { pc: frame.elr },
        },
        GuestCause::Abort { abort, access } => {
            let ipa = abort.ipa;
            if env.ram.contains(ipa.raw()) {
                vcpu.pending = Pending::PageFault { gfn: ipa.gfn().raw() };
                return to_host(exit::PAGE_FAULT, [ipa.raw(), 0, 0, 0]);
            }
            // The PL011's transmit side: a DR byte joins the vCPU's console buffer, which goes to
            // the host with this exit when it is full or the byte is a newline (and with any other
            // exit to the host: `trap_handler::vcpu_run`); FR reads as idle.
            match trap.console_access(env.console, frame) {
                Some(ConsoleAccess::Transmit(byte)) => {
                    frame.elr = frame.elr.wrapping_add(4);
                    return if vcpu.console.push(byte) { to_host(exit::CONSOLE, [0; 4]) } else { VmExit::Resume };
                }
                Some(ConsoleAccess::ReadFlags(access)) => {
                    access.complete_load(frame, corevisor_abi::console::PL011_FR_IDLE);
                    return VmExit::Resume;
                }
                None => {}
            }
            match access {
                Some(access) => {
                    let value = if access.write { access.store_value(&vcpu.gprs) } else { 0 };
                    vcpu.pending = access.pending();
                    to_host(exit::MMIO, [ipa.raw(), access.flags(), value, 0])
                }
                None => to_host(exit::BAD_ACCESS, [ipa.raw(), abort.esr, 0, 0]),
            }
        }
        GuestCause::Other => VmExit::Undef { pc: frame.elr },
    }
}

/// Emulates a trapped MSR/MRS/SYS (EC 0x18); `None` means it gets an UNDEF. Served: reads of the
/// ID registers (HCR_EL2.TID3), which show what `vcpu::controls` lets a guest see; the debug and
/// OS lock registers ([`guest_debug_register`]); and data-cache maintenance by set/way
/// (HCR_EL2.TSW), which is a no-op for a guest: KCore keeps memory coherent itself. Everything
/// else (PMU, pointer authentication keys, LORegions, RAS error records, MTE registers, ...) is
/// an UNDEF.
fn emulate_sysreg(op: SysInstruction, frame: &mut TrapFrame, env: &GuestEnv) -> Option<()> {
    let value = match (op.id_register_read(), guest_debug_register(&op)) {
        (Some(reg), _) => (env.id_register)(reg),
        (None, Some(value)) => value,
        (None, None) => return op.is_set_way_maintenance().then_some(()),
    };
    if op.read && op.rt < 31 {
        frame.x[op.rt] = value;
    }
    Some(())
}

/// What a guest reads from a debug or OS lock register (MDCR_EL2.TDA, TDOSA and TDRA trap them
/// all), or `None` for an access KCore does not serve (an UNDEF). As Xen does, they read as zero
/// and ignore writes, so nothing a guest writes reaches the hardware or another vCPU, and a
/// guest sees no breakpoint, watchpoint, single step or debug channel work; OSLSR_EL1 reads
/// `OSLM = 0b10` (the OS lock is implemented, and unlocked), which Linux expects. A read of a
/// write-only register or a write of a read-only one is an UNDEF.
fn guest_debug_register(op: &SysInstruction) -> Option<u64> {
    const OSLSR_OSLM_IMPLEMENTED: u64 = 1 << 3;
    let (read, write) = (op.read, !op.read);
    match (op.op0, op.op1, op.crn, op.crm, op.op2) {
        // DBGBVR<n>_EL1, DBGBCR<n>_EL1, DBGWVR<n>_EL1, DBGWCR<n>_EL1 (n = CRm).
        (2, 0, 0, _, 4..=7)
        // OSDTRRX_EL1, MDSCR_EL1, OSDTRTX_EL1, OSECCR_EL1.
        | (2, 0, 0, 0 | 2 | 3 | 6, 2)
        // MDCCINT_EL1.
        | (2, 0, 0, 2, 0)
        // OSDLR_EL1, DBGPRCR_EL1; DBGCLAIMSET_EL1, DBGCLAIMCLR_EL1.
        | (2, 0, 1, 3 | 4, 4)
        | (2, 0, 7, 8 | 9, 6)
        // DBGDTR_EL0, DBGDTRRX_EL0 (read) / DBGDTRTX_EL0 (write).
        | (2, 3, 0, 4 | 5, 0) => Some(0),
        // OSLSR_EL1 (read-only).
        (2, 0, 1, 1, 4) if read => {
            Some(if crate::mutation::planted(crate::mutation::Mutation::OsLockStatusReadsZero) {
                0
            } else {
                OSLSR_OSLM_IMPLEMENTED
            })
        }
        // OSLAR_EL1 (write-only).
        (2, 0, 1, 0, 4) if write => Some(0),
        // MDRAR_EL1, DBGAUTHSTATUS_EL1, MDCCSR_EL0 (read-only).
        (2, 0, 1, 0, 0) | (2, 0, 7, 14, 6) | (2, 3, 0, 1, 0) if read => Some(0),
        _ => None,
    }
}

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
use crate::machine::features::IdReg;
use crate::machine::{GuestExit, TrapFrame, TrapKind};
use crate::vcpu::{DataAccess, ExitRecord, Pending, VcpuContext};
use corevisor_abi::{exit, guest_call, host_call, HypResult, Status, ABI_VERSION, HYP_CALL_BASE};

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
    /// The host's `DC ISW`, `DC CSW` or `DC CISW` (HCR_EL2.TSW), with its set/way operand: KCore
    /// cleans and invalidates that line (`DC CISW`), so that the host cannot drop a line KCore
    /// wrote and has not written back; the host resumes after the instruction.
    CleanInvalidateSetWay {
        operand: u64,
    },
    /// A VM hypercall (`host_call::REGISTER_VM ..= DESTROY_VM`) with its arguments x1..x4: the
    /// VM layer checks them against KCore's state and serves it.
    VmCall {
        function: u32,
        args: [u64; 4],
    },
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
        // A trapped system instruction leaves ELR_EL2 on it.
        ec::SYS64 => match SysInstruction::decode(esr) {
            Some(op) if op.is_set_way_maintenance() => {
                let operand = if op.rt < 31 { frame.x[op.rt] } else { 0 };
                if !crate::mutation::planted(crate::mutation::Mutation::HostSetWayRepeats) {
                    frame.elr = frame.elr.wrapping_add(4);
                }
                HostExit::CleanInvalidateSetWay { operand }
            }
            _ => HostExit::Undef { pc: frame.elr, reason: Forbidden::Class(ec::SYS64) },
        },
        class => HostExit::Undef { pc: frame.elr, reason: Forbidden::Class(class) },
    }
}

/// A trapped MSR, MRS or system instruction (EC 0x18), from its syndrome's ISS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SysInstruction {
    op0: u8,
    op1: u8,
    crn: u8,
    crm: u8,
    op2: u8,
    rt: usize,
    /// MRS or SYSL (the register is written); otherwise MSR or SYS.
    read: bool,
}

impl SysInstruction {
    fn decode(esr: u64) -> Option<SysInstruction> {
        (esr::class(esr) == ec::SYS64).then_some(SysInstruction {
            op0: (esr >> 20 & 3) as u8,
            op2: (esr >> 17 & 7) as u8,
            op1: (esr >> 14 & 7) as u8,
            crn: (esr >> 10 & 0xf) as u8,
            rt: (esr >> 5 & 0x1f) as usize,
            crm: (esr >> 1 & 0xf) as u8,
            read: esr & 1 == 1,
        })
    }

    /// DC ISW, DC CSW or DC CISW: `SYS #0, C7, C6|C10|C14, #2, Xt`.
    fn is_set_way_maintenance(&self) -> bool {
        (self.op0, self.op1, self.crn, self.op2, self.read) == (1, 0, 7, 2, false) && matches!(self.crm, 6 | 10 | 14)
    }

    /// A read of the ID register space HCR_EL2.TID3 traps: `MRS Xt, S3_0_C0_<1..7>_<op2>`.
    fn id_register_read(&self) -> Option<IdReg> {
        ((self.op0, self.op1, self.crn) == (3, 0, 0) && (1..=7).contains(&self.crm) && self.read)
            .then_some(IdReg { crm: self.crm, op2: self.op2 })
    }
}

/// A host hypercall handler: reads its arguments from x1..x6 and writes its results.
type HostHvcHandler = fn(&mut TrapFrame) -> HostExit;

/// Host hypercalls, indexed by function number (`function id - HYP_CALL_BASE`).
static HOST_HVC_TABLE: [HostHvcHandler; host_call::COUNT as usize] = [
    hvc_version,
    hvc_null,
    hvc_system_off,
    hvc_host_stats,
    hvc_vm_call, // REGISTER_VM
    hvc_vm_call, // REGISTER_VCPU
    hvc_vm_call, // SET_BOOT_INFO
    hvc_vm_call, // REMAP_VM_IMAGE
    hvc_vm_call, // VERIFY_VM_IMAGE
    hvc_vm_call, // VCPU_RUN
    hvc_vm_call, // CLEAR_VM_S2_RANGE
    hvc_vm_call, // PHYS_ADDR_IOREMAP
    hvc_vm_call, // TIMER_SET_CNTVOFF
    hvc_vm_call, // VM_POWER_OFF
    hvc_vm_call, // DESTROY_VM
];

const _: () = assert!(host_call::VERSION - HYP_CALL_BASE == 0);
const _: () = assert!(host_call::NULL - HYP_CALL_BASE == 1);
const _: () = assert!(host_call::SYSTEM_OFF - HYP_CALL_BASE == 2);
const _: () = assert!(host_call::HOST_STATS - HYP_CALL_BASE == 3);
const _: () = assert!(host_call::REGISTER_VM - HYP_CALL_BASE == 4);
const _: () = assert!(host_call::DESTROY_VM - HYP_CALL_BASE == 14);

/// Hands a VM hypercall to the VM layer with its arguments.
fn hvc_vm_call(frame: &mut TrapFrame) -> HostExit {
    HostExit::VmCall { function: frame.x[0] as u32, args: [frame.x[1], frame.x[2], frame.x[3], frame.x[4]] }
}

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
    /// KCore handled it: the guest runs on.
    Resume,
    /// Inject an UNDEF for the instruction at `pc` into the guest.
    Undef { pc: u64 },
    /// A share call KCore serves (`grant`: SET_DESC_PFN): x0 gets its status, then the guest runs on.
    Share { grant: bool, gpa: u64, size: u64 },
    /// The host must act: VCPU_RUN returns this record.
    ToHost(ExitRecord),
}

/// What the guest exit dispatcher needs to know about the VM and the machine.
pub struct GuestEnv<'a> {
    /// Whether a guest-physical address is in the VM's RAM.
    pub in_ram: &'a dyn Fn(u64) -> bool,
    /// What the guest reads from an ID register (`vcpu::controls::guest_id_register`).
    pub id_register: &'a dyn Fn(IdReg) -> u64,
}

/// Decides a guest's exit (SeKVM `vm_exit_dispatcher`). `exit` is the vector taken (and whether
/// an SError was pending as the guest left), `esr` the syndrome and `ipa` the faulting
/// guest-physical address of an abort. Nothing a guest does can make KCore panic: every class
/// KCore does not serve is an UNDEF for the guest.
///
/// An SError is the guest's own (issue 11, finding 8): one taken from it (HCR_EL2.AMO routes it
/// to EL2) or found pending as it left becomes a virtual SError pending for the vCPU, which the
/// world switch delivers on its next entry, as the hardware would have without a hypervisor.
/// The host is not told: the error came from the guest's own accesses (its RAM or the devices
/// mapped into it), and stopping the VM would hand every guest a way to make the host act.
/// The exit itself is then served as usual.
pub fn vm_exit_dispatcher(exit: GuestExit, esr: u64, ipa: u64, vcpu: &mut VcpuContext, env: &GuestEnv) -> VmExit {
    let to_host = |reason, details| VmExit::ToHost(ExitRecord { reason, details });
    let guest_serror = exit.serror || exit.kind == TrapKind::SError;
    if guest_serror && !crate::mutation::planted(crate::mutation::Mutation::SErrorAtExitIgnored) {
        vcpu.virtual_serror = true;
    }
    match exit.kind {
        TrapKind::Irq | TrapKind::Fiq => return to_host(exit::IRQ, [0; 4]),
        TrapKind::SError => return VmExit::Resume,
        TrapKind::Sync => {}
    }
    let frame = &mut vcpu.gprs.frame;
    match esr::class(esr) {
        ec::HVC64 if esr::imm16(esr) != 0 => VmExit::Undef { pc: frame.elr.wrapping_sub(4) },
        ec::SMC64 if esr::imm16(esr) != 0 => VmExit::Undef { pc: frame.elr },
        class @ (ec::HVC64 | ec::SMC64) => {
            if class == ec::SMC64 {
                // A trapped SMC leaves ELR_EL2 on the SMC.
                frame.elr = frame.elr.wrapping_add(4);
            }
            match frame.x[0] as u32 {
                guest_call::SET_DESC_PFN => VmExit::Share { grant: true, gpa: frame.x[1], size: frame.x[2] },
                guest_call::UNSET_DESC_PFN => VmExit::Share { grant: false, gpa: frame.x[1], size: frame.x[2] },
                _ => {
                    let details = [frame.x[0], frame.x[1], frame.x[2], frame.x[3]];
                    vcpu.pending = Pending::CallResult;
                    to_host(exit::HVC, details)
                }
            }
        }
        ec::WFX => {
            frame.elr = frame.elr.wrapping_add(4);
            to_host(exit::WFI, [u64::MAX, 0, 0, 0])
        }
        ec::SYS64 => match emulate_sysreg(esr, frame, env) {
            Some(()) => {
                frame.elr = frame.elr.wrapping_add(4);
                VmExit::Resume
            }
            None => VmExit::Undef { pc: frame.elr },
        },
        class @ (ec::DABT_LOW | ec::IABT_LOW) => {
            if (env.in_ram)(ipa) {
                vcpu.pending = Pending::PageFault { gfn: ipa >> 12 };
                return to_host(exit::PAGE_FAULT, [ipa, 0, 0, 0]);
            }
            match DataAccess::decode(esr).filter(|_| class == ec::DABT_LOW) {
                Some(access) => {
                    let value = if access.write { access.store_value(&vcpu.gprs) } else { 0 };
                    vcpu.pending = access.pending();
                    to_host(exit::MMIO, [ipa, access.flags(), value, 0])
                }
                None => to_host(exit::BAD_ACCESS, [ipa, esr, 0, 0]),
            }
        }
        _ => VmExit::Undef { pc: frame.elr },
    }
}

/// Emulates a trapped MSR/MRS/SYS (EC 0x18); `None` means it gets an UNDEF. Served: reads of the
/// ID registers (HCR_EL2.TID3), which show what `vcpu::controls` lets a guest see, and data-cache
/// maintenance by set/way (HCR_EL2.TSW), which is a no-op for a guest: KCore keeps memory
/// coherent itself. Everything else (PMU, debug, pointer authentication keys, LORegions, RAS
/// error records, MTE registers, ...) is an UNDEF.
fn emulate_sysreg(esr: u64, frame: &mut TrapFrame, env: &GuestEnv) -> Option<()> {
    let op = SysInstruction::decode(esr)?;
    if let Some(reg) = op.id_register_read() {
        if op.rt < 31 {
            frame.x[op.rt] = (env.id_register)(reg);
        }
        return Some(());
    }
    op.is_set_way_maintenance().then_some(())
}

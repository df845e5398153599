//! The trap edge: every trap to EL2 becomes ONE typed value here, and nothing after this module
//! reads the syndrome, the fault registers or the caller's argument registers again.
//!
//! A host hypercall's function id is matched once, in [`HostCall::decode`], and its arguments
//! are checked into their types (`VmId`, `VcpuId`, `Ipa`, `Pa`, `Pfn`, `IpaRange`) in argument
//! order: the first that does not fit refuses the call with the status the VM layer gave it
//! before (a bad vmid or vcpu: INVALID_PARAMETERS; a page number or physical address beyond the
//! 40-bit limit: INVALID_ADDRESS). Guest exits are decoded the same way ([`GuestTrap`]).

use super::esr::{self, ec};
use crate::addr::{Ipa, IpaRange, Pa, Pfn};
use crate::ids::{VcpuId, VmId};
use crate::machine::features::IdReg;
use crate::machine::{GuestExit, TrapFrame, TrapKind, CALL_REGS};
use crate::mutation::{planted, Mutation};
use crate::vcpu::vgic::{Intid, Virq};
use crate::vcpu::DataAccess;
use corevisor_abi::console::{PL011_DR, PL011_FR};
use corevisor_abi::{guest_call, host_call, psci, Status};

/// The largest exit status SYSTEM_OFF carries: a process exit status is one byte.
pub const MAX_EXIT_STATUS: u64 = 255;

/// A host hypercall (`hvc #0`), its arguments checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCall {
    Version,
    Null,
    SystemOff {
        status: u8,
    },
    HostStats,
    /// VCPU_RUN: switches worlds, so the trap handler runs it, not the VM layer alone.
    VcpuRun {
        vm: VmId,
        vcpu: VcpuId,
        answer: u64,
    },
    /// A call the VM layer serves inside the host's trap.
    Vm(VmCall),
    /// SMMU_ATTACH_STREAM: the trap handler serves it on the SMMU.
    SmmuAttach {
        stream: u64,
        principal: u64,
    },
    /// SMMU_DETACH_STREAM: the same.
    SmmuDetach {
        stream: u64,
    },
}

/// The VM hypercalls the VM layer serves (`vm_calls::serve`), as the VM layer's API takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmCall {
    RegisterVm {
        ram: IpaRange,
    },
    RegisterVcpu {
        vm: VmId,
        vcpu: VcpuId,
    },
    SetBootInfo {
        vm: VmId,
        gpa: Ipa,
        size: u64,
    },
    RemapVmImage {
        vm: VmId,
        index: u64,
        pfn: Pfn,
    },
    VerifyVmImage {
        vm: VmId,
    },
    ClearVmS2Range {
        vm: VmId,
        base: Pa,
        size: u64,
    },
    PhysAddrIoremap {
        vm: VmId,
        gpa: Ipa,
        pa: Pa,
        size: u64,
    },
    TimerSetCntvoff {
        vm: VmId,
        offset: u64,
    },
    VmPowerOff {
        vm: VmId,
    },
    DestroyVm {
        vm: VmId,
    },
    BootData {
        vm: VmId,
        gpa: Ipa,
        pfn: Pfn,
    },
    InjectIrq {
        vm: VmId,
        vcpu: VcpuId,
        virq: Virq,
    },
    /// VM_CONSOLE: `page` is the guest address of the VM's PL011 (0: none).
    VmConsole {
        vm: VmId,
        page: Ipa,
    },
}

/// A host hypercall refused at the edge: an unknown id, or an argument that does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadCall {
    pub function: u32,
    pub status: Status,
    /// Which argument did not fit (`None`: the id is unknown).
    pub argument: Option<&'static str>,
}

/// The log name of host call `function` (the one place that names them).
pub fn call_name(function: u32) -> &'static str {
    const NAMES: [&str; host_call::COUNT as usize] = [
        "VERSION",
        "NULL",
        "SYSTEM_OFF",
        "HOST_STATS",
        "REGISTER_VM",
        "REGISTER_VCPU",
        "SET_BOOT_INFO",
        "REMAP_VM_IMAGE",
        "VERIFY_VM_IMAGE",
        "VCPU_RUN",
        "CLEAR_VM_S2_RANGE",
        "PHYS_ADDR_IOREMAP",
        "TIMER_SET_CNTVOFF",
        "VM_POWER_OFF",
        "DESTROY_VM",
        "INJECT_IRQ",
        "BOOT_DATA",
        "SMMU_ATTACH_STREAM",
        "SMMU_DETACH_STREAM",
        "VM_CONSOLE",
    ];
    NAMES.get(function.wrapping_sub(corevisor_abi::HYP_CALL_BASE) as usize).copied().unwrap_or("unknown host call")
}

impl HostCall {
    /// Decodes the host call in w0 (SMCCC: the upper half of x0 is ignored) with arguments
    /// x1..x4, from the caller's x0..x5. Always inlined, so that the dispatcher's match on the
    /// call folds into this one (`cargo xtask bench`: the null call).
    #[inline(always)]
    pub fn decode(x: &[u64; CALL_REGS]) -> Result<HostCall, BadCall> {
        let function = x[0] as u32;
        let [a1, a2, a3, a4] = [x[1], x[2], x[3], x[4]];
        let bad = |argument, status| BadCall { function, status, argument: Some(argument) };
        let vm = |raw| VmId::new(raw).ok_or(bad("vmid", Status::InvalidParameters));
        let vcpu = |raw| VcpuId::new(raw).ok_or(bad("vcpu", Status::InvalidParameters));
        let pa = |raw| Pa::new(raw).ok_or(bad("physical address", Status::InvalidAddress));
        Ok(match function {
            host_call::VERSION => HostCall::Version,
            host_call::NULL => HostCall::Null,
            host_call::SYSTEM_OFF => match u8::try_from(a1) {
                Ok(status) => HostCall::SystemOff { status },
                Err(_) if planted(Mutation::SkipSystemOffRangeCheck) => HostCall::SystemOff { status: a1 as u8 },
                Err(_) => return Err(bad("exit status", Status::InvalidParameters)),
            },
            host_call::HOST_STATS => HostCall::HostStats,
            host_call::VCPU_RUN => HostCall::VcpuRun { vm: vm(a1)?, vcpu: vcpu(a2)?, answer: a3 },
            host_call::REGISTER_VM => HostCall::Vm(VmCall::RegisterVm {
                ram: IpaRange::new(a1, a2).ok_or(bad("RAM window", Status::InvalidParameters))?,
            }),
            host_call::REGISTER_VCPU => HostCall::Vm(VmCall::RegisterVcpu { vm: vm(a1)?, vcpu: vcpu(a2)? }),
            host_call::SET_BOOT_INFO => HostCall::Vm(VmCall::SetBootInfo { vm: vm(a1)?, gpa: Ipa(a2), size: a3 }),
            host_call::REMAP_VM_IMAGE => HostCall::Vm(VmCall::RemapVmImage {
                vm: vm(a1)?,
                index: a2,
                pfn: Pfn::new(if planted(Mutation::EdgeTruncatesPfn) { a3 & ((1 << 28) - 1) } else { a3 })
                    .ok_or(bad("page number", Status::InvalidAddress))?,
            }),
            host_call::VERIFY_VM_IMAGE => HostCall::Vm(VmCall::VerifyVmImage { vm: vm(a1)? }),
            host_call::CLEAR_VM_S2_RANGE => {
                HostCall::Vm(VmCall::ClearVmS2Range { vm: vm(a1)?, base: pa(a2)?, size: a3 })
            }
            host_call::PHYS_ADDR_IOREMAP => {
                HostCall::Vm(VmCall::PhysAddrIoremap { vm: vm(a1)?, gpa: Ipa(a2), pa: pa(a3)?, size: a4 })
            }
            host_call::TIMER_SET_CNTVOFF => HostCall::Vm(VmCall::TimerSetCntvoff { vm: vm(a1)?, offset: a2 }),
            host_call::VM_POWER_OFF => HostCall::Vm(VmCall::VmPowerOff { vm: vm(a1)? }),
            host_call::DESTROY_VM => HostCall::Vm(VmCall::DestroyVm { vm: vm(a1)? }),
            host_call::INJECT_IRQ => HostCall::Vm(VmCall::InjectIrq {
                vm: vm(a1)?,
                vcpu: vcpu(a2)?,
                virq: Virq {
                    intid: Intid::new(a3).ok_or(bad("INTID", Status::InvalidParameters))?,
                    priority: u8::try_from(a4).map_err(|_| bad("priority", Status::InvalidParameters))?,
                },
            }),
            host_call::BOOT_DATA => HostCall::Vm(VmCall::BootData {
                vm: vm(a1)?,
                gpa: Ipa(a2),
                pfn: Pfn::new(a3).ok_or(bad("page number", Status::InvalidAddress))?,
            }),
            host_call::SMMU_ATTACH_STREAM => HostCall::SmmuAttach { stream: a1, principal: a2 },
            host_call::SMMU_DETACH_STREAM => HostCall::SmmuDetach { stream: a1 },
            host_call::VM_CONSOLE => HostCall::Vm(VmCall::VmConsole { vm: vm(a1)?, page: Ipa(a2) }),
            _ => return Err(BadCall { function, status: Status::NotSupported, argument: None }),
        })
    }
}

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

impl core::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match *self {
            Forbidden::HvcImmediate(imm) => write!(f, "HVC #{imm:#x}"),
            Forbidden::Smc(function) => write!(f, "SMC {function:#x}"),
            Forbidden::Class(class) => write!(f, "{} (EC {class:#x})", esr::class_name(class)),
        }
    }
}

/// A stage-2 abort (the host's or a guest's), with its fault registers read once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Abort {
    pub esr: u64,
    /// FAR_EL2: the faulting virtual address (what an injected abort reports).
    pub far: u64,
    /// The faulting intermediate physical address (HPFAR_EL2 with FAR's page offset).
    pub ipa: Ipa,
    /// An instruction fetch (EC 0x20), not a data access.
    pub instruction: bool,
}

impl Stage2Abort {
    #[inline]
    fn new(esr: u64, (far, hpfar): (u64, u64)) -> Stage2Abort {
        Stage2Abort { esr, far, ipa: Ipa(fault_ipa(hpfar, far)), instruction: esr::class(esr) == ec::IABT_LOW }
    }
}

/// The faulting IPA of a stage-2 abort: HPFAR_EL2.FIPA (bits 43:4 hold IPA bits 47:12) plus the
/// page offset from FAR_EL2.
#[inline]
pub fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    (hpfar & 0x0000_0FFF_FFFF_FFF0) << 8 | (far & 0xfff)
}

/// A synchronous trap from the host, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostTrap {
    /// `hvc #0`: a host call, or why it is refused.
    Call(Result<HostCall, BadCall>),
    /// `smc #0` with a PSCI function id, and x1..x3.
    Psci { function: u32, args: [u64; 3] },
    /// An access the host's stage-2 does not map.
    Stage2Abort(Stage2Abort),
    /// `DC ISW`, `DC CSW` or `DC CISW` (HCR_EL2.TSW) with its operand.
    SetWay { operand: u64 },
    /// Anything else: an UNDEF for the instruction at `pc`.
    Forbidden { pc: u64, reason: Forbidden },
}

impl HostTrap {
    /// Decodes the host's synchronous trap with syndrome `esr` and registers `frame`;
    /// `fault_registers` reads FAR_EL2 and HPFAR_EL2, only for an abort.
    #[inline]
    pub fn decode(esr: u64, frame: &TrapFrame, fault_registers: impl FnOnce() -> (u64, u64)) -> HostTrap {
        match esr::class(esr) {
            ec::HVC64 if esr::imm16(esr) == 0 => HostTrap::Call(HostCall::decode(frame.call_args())),
            // ELR_EL2 points after an HVC; the UNDEF belongs to the HVC itself.
            ec::HVC64 => {
                HostTrap::Forbidden { pc: frame.elr.wrapping_sub(4), reason: Forbidden::HvcImmediate(esr::imm16(esr)) }
            }
            // A trapped SMC leaves ELR_EL2 on the SMC.
            ec::SMC64 => {
                let function = frame.x[0] as u32;
                if esr::imm16(esr) == 0 && is_psci(function) {
                    HostTrap::Psci { function, args: [frame.x[1], frame.x[2], frame.x[3]] }
                } else {
                    HostTrap::Forbidden { pc: frame.elr, reason: Forbidden::Smc(function) }
                }
            }
            ec::DABT_LOW | ec::IABT_LOW => HostTrap::Stage2Abort(Stage2Abort::new(esr, fault_registers())),
            // A trapped system instruction leaves ELR_EL2 on it.
            ec::SYS64 => match SysInstruction::decode(esr) {
                Some(op) if op.is_set_way_maintenance() => HostTrap::SetWay { operand: op.source(frame) },
                _ => HostTrap::Forbidden { pc: frame.elr, reason: Forbidden::Class(ec::SYS64) },
            },
            class => HostTrap::Forbidden { pc: frame.elr, reason: Forbidden::Class(class) },
        }
    }
}

/// PSCI function ids are SMCCC standard-secure-service calls, 0x8400_0000..0x8400_001F
/// (SMC32) and 0xC400_0000..0xC400_001F (SMC64).
pub fn is_psci(function: u32) -> bool {
    function & !0x4000_001F == 0x8400_0000
}

/// A trapped MSR, MRS or system instruction (EC 0x18), from its syndrome's ISS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysInstruction {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
    pub rt: usize,
    /// MRS or SYSL (the register is written); otherwise MSR or SYS.
    pub read: bool,
}

impl SysInstruction {
    #[inline]
    pub fn decode(esr: u64) -> Option<SysInstruction> {
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
    pub fn is_set_way_maintenance(&self) -> bool {
        (self.op0, self.op1, self.crn, self.op2, self.read) == (1, 0, 7, 2, false) && matches!(self.crm, 6 | 10 | 14)
    }

    /// A read of the ID register space HCR_EL2.TID3 traps: `MRS Xt, S3_0_C0_<1..7>_<op2>`.
    pub fn id_register_read(&self) -> Option<IdReg> {
        ((self.op0, self.op1, self.crn) == (3, 0, 0) && (1..=7).contains(&self.crm) && self.read)
            .then_some(IdReg { crm: self.crm, op2: self.op2 })
    }

    /// `MSR ICC_SGI1R_EL1, Xt` (`S3_0_C12_C11_5`): a GICv3 guest sends an SGI. (A read is
    /// UNDEFINED: the register is write-only.)
    pub fn is_sgi1r_write(&self) -> bool {
        let sgi1r = (self.op0, self.op1, self.crn, self.crm, self.op2) == (3, 0, 12, 11, 5);
        sgi1r && (!self.read || planted(Mutation::SgiReadLeaksRegister))
    }

    /// The value of Xt in `frame` (XZR reads as 0).
    fn source(&self, frame: &TrapFrame) -> u64 {
        if self.rt < 31 {
            frame.x[self.rt]
        } else {
            0
        }
    }
}

/// A guest's exit, decoded: the vector it took, whether an SError was pending as it left, and
/// what the trap is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTrap {
    /// An SError was taken from the guest or found pending as it left: the guest's own.
    pub serror: bool,
    pub cause: GuestCause,
}

/// What a guest's exit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestCause {
    /// A physical IRQ or FIQ: the host's.
    Interrupt,
    /// An SError exit: nothing else to it.
    SError,
    /// `hvc #0` or `smc #0` (`smc`: ELR_EL2 is on the instruction, not after it).
    Call { smc: bool, call: GuestCall },
    /// `hvc` or `smc` with a non-zero immediate: an UNDEF at `pc`.
    CallImmediate { pc: u64 },
    /// WFI, or WFE (`event`: ESR ISS.TI bit 0).
    Wait { event: bool },
    /// A trapped MSR, MRS or system instruction.
    Sysreg(SysInstruction),
    /// A GICv3 guest's write of ICC_SGI1R_EL1 (HCR_EL2.IMO traps it), with the value written.
    SgiWrite { value: u64 },
    /// A stage-2 abort, with the instruction syndrome of a data access when it has one.
    Abort { abort: Stage2Abort, access: Option<DataAccess> },
    /// Any other class: an UNDEF.
    Other,
}

/// A guest's call (`hvc #0`/`smc #0`), from its x0..x3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestCall {
    /// SET_DESC_PFN (`grant`) or UNSET_DESC_PFN over `[gpa, gpa + size)`: KCore serves it.
    Share { grant: bool, gpa: Ipa, size: u64 },
    /// PSCI CPU_ON for sibling vCPU `target` (MPIDR Aff0) at `entry` with `arg`: the host
    /// answers the call, KCore remembers where the sibling starts.
    CpuOn { target: VcpuId, entry: Ipa, arg: u64, regs: [u64; 4] },
    /// Any other call: the host serves it.
    Host { regs: [u64; 4] },
}

impl GuestCall {
    #[inline]
    pub fn decode(x: &[u64; 31]) -> GuestCall {
        let regs = [x[0], x[1], x[2], x[3]];
        match x[0] as u32 {
            guest_call::SET_DESC_PFN => GuestCall::Share { grant: true, gpa: Ipa(x[1]), size: x[2] },
            guest_call::UNSET_DESC_PFN => GuestCall::Share { grant: false, gpa: Ipa(x[1]), size: x[2] },
            psci::CPU_ON_64 | psci::CPU_ON_32 if x[0] >> 32 == 0 => match VcpuId::new(x[1] & 0xff) {
                Some(target) => GuestCall::CpuOn { target, entry: Ipa(x[2]), arg: x[3], regs },
                None => GuestCall::Host { regs },
            },
            _ => GuestCall::Host { regs },
        }
    }
}

impl GuestTrap {
    /// Decodes a guest's exit: `exit` as the world switch returned it, `esr` the syndrome,
    /// `fault_registers` reads FAR_EL2 and HPFAR_EL2 (only for an abort), `frame` the guest's
    /// registers.
    #[inline]
    pub fn decode(
        exit: GuestExit,
        esr: u64,
        frame: &TrapFrame,
        fault_registers: impl FnOnce() -> (u64, u64),
    ) -> GuestTrap {
        let cause = match exit.kind {
            TrapKind::Irq | TrapKind::Fiq => GuestCause::Interrupt,
            TrapKind::SError => GuestCause::SError,
            TrapKind::Sync => match esr::class(esr) {
                ec::HVC64 if esr::imm16(esr) != 0 => GuestCause::CallImmediate { pc: frame.elr.wrapping_sub(4) },
                ec::SMC64 if esr::imm16(esr) != 0 => GuestCause::CallImmediate { pc: frame.elr },
                class @ (ec::HVC64 | ec::SMC64) => {
                    GuestCause::Call { smc: class == ec::SMC64, call: GuestCall::decode(&frame.x) }
                }
                ec::WFX => GuestCause::Wait { event: esr & 1 == 1 },
                ec::SYS64 => match SysInstruction::decode(esr) {
                    Some(op) if op.is_sgi1r_write() => GuestCause::SgiWrite { value: op.source(frame) },
                    Some(op) => GuestCause::Sysreg(op),
                    None => GuestCause::Other,
                },
                class @ (ec::DABT_LOW | ec::IABT_LOW) => GuestCause::Abort {
                    abort: Stage2Abort::new(esr, fault_registers()),
                    access: DataAccess::decode(esr).filter(|_| class == ec::DABT_LOW),
                },
                _ => GuestCause::Other,
            },
        };
        GuestTrap { serror: exit.serror || exit.kind == TrapKind::SError, cause }
    }
}

/// A guest's access to the transmit side of its PL011 (`host_call::VM_CONSOLE`), which KCore
/// serves itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleAccess {
    /// A store of 32 bits or fewer to DR: its low byte goes out.
    Transmit(u8),
    /// A load of FR, into the access's register.
    ReadFlags(DataAccess),
}

impl GuestTrap {
    /// The console access this exit is, if it is a data abort with a syndrome on `console` (the
    /// VM's PL011 page, outside its RAM: `vm::Kcore::set_console`) that KCore serves: a store of
    /// at most 32 bits to DR, or a load of FR. Every other access to the page goes to the host.
    /// The store's value comes from `frame`: the caller has x[rt].
    #[inline]
    pub fn console_access(&self, console: Option<Ipa>, frame: &TrapFrame) -> Option<ConsoleAccess> {
        let GuestCause::Abort { abort, access: Some(access) } = self.cause else { return None };
        let page = console?.raw();
        if abort.ipa.raw() & !0xfff != page && !planted(Mutation::ConsoleServesAnyPage) {
            return None;
        }
        match (access.write, abort.ipa.raw() & 0xfff) {
            (true, PL011_DR) if access.size_log2 <= 2 => {
                Some(ConsoleAccess::Transmit(access.store_value_in(frame) as u8))
            }
            (false, PL011_FR) => Some(ConsoleAccess::ReadFlags(access)),
            _ => None,
        }
    }

    /// A synchronous exit with syndrome `esr` (no SError pending), decoded exactly as
    /// [`Self::decode`] decodes it, if it is a call or a system-register access the fast path
    /// serves ([`Self::in_place`]); `None` otherwise. The hot case, a share call, is told from
    /// the syndrome and x0 alone, without building the general decode (`cargo xtask bench`).
    /// Data aborts take the full exit.
    #[inline(always)]
    pub fn decode_in_place(esr: u64, frame: &TrapFrame) -> Option<GuestTrap> {
        let trap = if esr::class(esr) == ec::HVC64 && esr::imm16(esr) == 0 {
            GuestTrap { serror: false, cause: GuestCause::Call { smc: false, call: GuestCall::decode(&frame.x) } }
        } else {
            // An abort is not served here, so its fault registers need not be read.
            Self::decode(GuestExit { kind: TrapKind::Sync, serror: false }, esr, frame, || (0, 0))
        };
        trap.in_place().then_some(trap)
    }

    /// Whether KCore serves this exit without the host and without any guest register but
    /// x0..x18, x30, ELR and SPSR, so that the world switch's fast path may serve it in place,
    /// where x19..x29 stay in the CPU (`machine::world_switch::GuestWorld`): a share call, an
    /// `hvc`/`smc` with a non-zero immediate (an UNDEF), and a trapped MSR/MRS/SYS whose
    /// register is none of x19..x29 (emulated, or an UNDEF). The dispatcher answers each of
    /// them with `Resume`, `Share` or `Undef`. Never a data abort: the console's accesses are
    /// served in place by the full exit's loop (`trap_handler::vcpu_run`).
    #[inline]
    pub fn in_place(&self) -> bool {
        !self.serror
            && match self.cause {
                GuestCause::Call { call: GuestCall::Share { .. }, .. } | GuestCause::CallImmediate { .. } => true,
                GuestCause::Sysreg(op) => {
                    !(19..=29).contains(&op.rt) || planted(Mutation::InPlaceTakesCalleeSavedRegister)
                }
                _ => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_call_has_a_name_and_unknown_ids_do_not() {
        let base = corevisor_abi::HYP_CALL_BASE;
        assert!((0..u32::from(host_call::COUNT)).all(|n| call_name(base + n) != "unknown host call"));
        assert_eq!(call_name(host_call::DESTROY_VM), "DESTROY_VM");
        assert_eq!(call_name(host_call::SMMU_ATTACH_STREAM), "SMMU_ATTACH_STREAM");
        assert_eq!(call_name(host_call::SMMU_DETACH_STREAM), "SMMU_DETACH_STREAM");
        assert_eq!(call_name(host_call::VM_CONSOLE), "VM_CONSOLE");
        assert_eq!(call_name(base + u32::from(host_call::COUNT)), "unknown host call");
        assert_eq!(call_name(0), "unknown host call");
    }

    #[test]
    fn ipa_comes_from_hpfar_and_the_far_page_offset() {
        assert_eq!(fault_ipa(0x0040_0100, 0xffff_0000_1234_5678), 0x4001_0678);
    }

    #[test]
    fn psci_ids_are_recognised_in_both_conventions() {
        assert!(is_psci(psci::CPU_ON_64) && is_psci(psci::CPU_ON_32) && is_psci(psci::SYSTEM_OFF));
        assert!(!is_psci(0xC200_0001) && !is_psci(0xC600_0000) && !is_psci(0x8400_0020));
    }

    #[test]
    fn host_numbers_that_do_not_fit_are_refused_at_the_edge() {
        let call = |f: u32, args: [u64; 4]| {
            let mut x = [0; CALL_REGS];
            x[0] = f as u64;
            x[1..5].copy_from_slice(&args);
            HostCall::decode(&x)
        };
        let status = |r: Result<HostCall, BadCall>| r.err().map(|b| b.status);
        assert_eq!(status(call(host_call::REGISTER_VCPU, [0, 0, 0, 0])), Some(Status::InvalidParameters));
        assert_eq!(status(call(host_call::REGISTER_VCPU, [1, 8, 0, 0])), Some(Status::InvalidParameters));
        assert_eq!(status(call(host_call::REMAP_VM_IMAGE, [1, 0, 1 << 28, 0])), Some(Status::InvalidAddress));
        assert_eq!(status(call(host_call::CLEAR_VM_S2_RANGE, [1, 1 << 40, 4096, 0])), Some(Status::InvalidAddress));
        assert_eq!(status(call(host_call::REGISTER_VM, [u64::MAX, 2, 0, 0])), Some(Status::InvalidParameters));
        assert_eq!(status(call(host_call::SYSTEM_OFF, [256, 0, 0, 0])), Some(Status::InvalidParameters));
        assert_eq!(status(call(host_call::INJECT_IRQ, [1, 0, 1020, 0])), Some(Status::InvalidParameters));
        assert_eq!(status(call(host_call::INJECT_IRQ, [1, 0, 1019, 256])), Some(Status::InvalidParameters));
        assert_eq!(status(call(host_call::INJECT_IRQ, [1, 8, 27, 0])), Some(Status::InvalidParameters));
        assert!(call(host_call::INJECT_IRQ, [1, 7, 1019, 255]).is_ok());
        assert_eq!(
            status(call(host_call::COUNT as u32 + corevisor_abi::HYP_CALL_BASE, [0; 4])),
            Some(Status::NotSupported)
        );
        assert_eq!(
            call(host_call::VCPU_RUN, [16, 7, 9, 0]),
            Ok(HostCall::VcpuRun { vm: VmId::new(16).unwrap(), vcpu: VcpuId::new(7).unwrap(), answer: 9 })
        );
        // The SMMU calls carry their arguments raw: what fits depends on the SMMU.
        assert_eq!(
            call(host_call::SMMU_ATTACH_STREAM, [0x10, 0, 0, 0]),
            Ok(HostCall::SmmuAttach { stream: 0x10, principal: 0 })
        );
        assert_eq!(
            call(host_call::SMMU_DETACH_STREAM, [u64::MAX, 5, 0, 0]),
            Ok(HostCall::SmmuDetach { stream: u64::MAX })
        );
        // SMCCC: only w0 names the call.
        assert_eq!(call(host_call::NULL, [0; 4]), call(host_call::NULL, [0; 4]));
    }
}

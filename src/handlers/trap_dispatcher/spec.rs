//! The executable spec of TrapDispatcher, in SeKVM's style (`TrapDispatcher/Spec.v`): a pure
//! function from an abstract state to `Option<state>`. `None` means the caller broke the
//! dispatcher's precondition (it was called while the host was not running); bad host input is
//! never `None`: it is an SMCCC error in x0, or an UNDEF. Once `halt` is set, nothing changes.
//!
//! The spec is written against the architecture and the ABI (explicit function-id ranges, PSCI
//! rules) rather than against the implementation's table, so the refinement tests in `tests.rs`
//! compare two independent statements of the same behaviour.

use crate::cpus::{CoreState, HostEntry};
use crate::handlers::esr::{class, ec, imm16};
use crate::machine::features::IdReg;
use crate::machine::{TrapKind, MAX_CPUS};
use crate::vcpu::Pending;
use corevisor_abi::{exit, guest_call, host_call, psci, Status, ABI_VERSION};

/// What happens next on the trapping core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The host runs on.
    Host,
    /// An UNDEF is injected into the host for the instruction at this address.
    UndefAt(u64),
    PowerOff(u64),
    Reset,
    CpuOff,
    /// The host's access missed its stage-2: the FaultHandler maps it or aborts it.
    Stage2Fault,
    /// The machine cleans and invalidates the data-cache line of this set/way operand, then the
    /// host runs on.
    CleanInvalidateSetWay(u64),
    /// A VM hypercall, with x1..x4, for the VM layer.
    VmCall(u32, [u64; 4]),
    /// An SMMU call with x1 and x2 (detach: x2 reads as 0), for the trap handler: its
    /// arguments are checked against the SMMU there (`handlers::smmu_calls`).
    SmmuCall(u32, [u64; 2]),
}

/// One core as the spec sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbsCore {
    pub state: CoreState,
    pub posted: Option<HostEntry>,
}

/// The part of SeKVM's `RData` that TrapDispatcher reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsState {
    pub halt: bool,
    /// The host's general registers.
    pub x: [u64; 31],
    /// Where the host resumes.
    pub pc: u64,
    pub cores: [AbsCore; MAX_CPUS],
    pub next: Next,
    /// Parked cores are woken to look for work.
    pub wake: bool,
}

fn ret(mut s: AbsState, x0: u64, values: [u64; 3]) -> AbsState {
    s.x[0] = x0;
    s.x[1..4].copy_from_slice(&values);
    s
}

fn ret_status(s: AbsState, status: Status) -> AbsState {
    ret(s, status.as_reg(), [0; 3])
}

/// `host_trap_dispatcher_spec`: the host trapped with syndrome `esr`.
pub fn host_trap_spec(esr: u64, s: &AbsState, host_may_run_at: &dyn Fn(u64) -> bool) -> Option<AbsState> {
    if s.halt {
        return Some(s.clone());
    }
    if s.next != Next::Host {
        return None;
    }
    let mut s = s.clone();
    match (class(esr), imm16(esr)) {
        (ec::HVC64, 0) => Some(host_hvc_spec(s)),
        (ec::HVC64, _) => {
            s.next = Next::UndefAt(s.pc.wrapping_sub(4));
            Some(s)
        }
        (ec::SMC64, 0) if is_psci_id(s.x[0] as u32) => {
            s.pc = s.pc.wrapping_add(4);
            Some(psci_spec(s, host_may_run_at))
        }
        (ec::DABT_LOW | ec::IABT_LOW, _) => {
            s.next = Next::Stage2Fault;
            Some(s)
        }
        // Issue 11, finding 4: the host's HCR_EL2 traps set/way maintenance (TSW). The three
        // data-cache set/way instructions (Arm ARM C5.3: DC ISW = SYS #0, C7, C6, #2; DC CSW =
        // C7, C10, #2; DC CISW = C7, C14, #2) all become a clean and invalidate of the line
        // their operand Xt names (XZR reads as 0), and the host resumes after the instruction.
        (ec::SYS64, _) if set_way_operand_register(esr).is_some() => {
            let rt = set_way_operand_register(esr).unwrap_or(31);
            let operand = if rt == 31 { 0 } else { s.x[rt] };
            s.pc = s.pc.wrapping_add(4);
            s.next = Next::CleanInvalidateSetWay(operand);
            Some(s)
        }
        _ => {
            s.next = Next::UndefAt(s.pc);
            Some(s)
        }
    }
}

/// `host_hvc_dispatcher_spec`: the host's hypercall in w0.
pub fn host_hvc_spec(s: AbsState) -> AbsState {
    let (function, status_arg) = (s.x[0] as u32, s.x[1]);
    match function {
        host_call::VERSION => ret(s, 0, [ABI_VERSION, 0, 0]),
        host_call::NULL => {
            let keep = [s.x[1], s.x[2], s.x[3]];
            ret(s, 0, keep)
        }
        host_call::SYSTEM_OFF if status_arg <= 255 => AbsState { next: Next::PowerOff(status_arg), ..s },
        host_call::SYSTEM_OFF => ret_status(s, Status::InvalidParameters),
        // The statistics are not part of the abstract state: the spec only fixes the status.
        host_call::HOST_STATS => {
            let keep = [s.x[1], s.x[2], s.x[3]];
            ret(s, 0, keep)
        }
        f if (host_call::REGISTER_VM..=host_call::BOOT_DATA).contains(&f) => match vm_call_spec(f, &s.x) {
            Ok(args) => AbsState { next: Next::VmCall(f, args), ..s },
            Err(status) => ret_status(s, status),
        },
        host_call::SMMU_ATTACH_STREAM => AbsState { next: Next::SmmuCall(function, [s.x[1], s.x[2]]), ..s },
        host_call::SMMU_DETACH_STREAM => AbsState { next: Next::SmmuCall(function, [s.x[1], 0]), ..s },
        host_call::VM_CONSOLE => match vm_call_spec(function, &s.x) {
            Ok(args) => AbsState { next: Next::VmCall(function, args), ..s },
            Err(status) => ret_status(s, status),
        },
        _ => ret_status(s, Status::NotSupported),
    }
}

/// A VM hypercall's arguments as the ABI lists them (`corevisor_abi::host_call`), the registers it
/// does not use read as 0; or the status of the first argument, in register order, that cannot
/// name what the ABI says it names: a vmid outside 1..=16 or a vcpu outside 0..8 is
/// INVALID_PARAMETERS, as is a RAM window that wraps around; a page number at or above 2^28 or a
/// physical address at or above 2^40 (40-bit physical addresses) is INVALID_ADDRESS; so is, for
/// INJECT_IRQ, an INTID past 1019 (1020-1023 are special) or a priority past 255. Whether
/// the VM exists, and every other check, is the VM layer's.
fn vm_call_spec(function: u32, x: &[u64; 31]) -> Result<[u64; 4], Status> {
    let [a1, a2, a3, a4] = [x[1], x[2], x[3], x[4]];
    let vm = |v: u64| if (1..=16).contains(&v) { Ok(()) } else { Err(Status::InvalidParameters) };
    let vcpu = |v: u64| if v < 8 { Ok(()) } else { Err(Status::InvalidParameters) };
    let pa = |v: u64| if v < 1 << 40 { Ok(()) } else { Err(Status::InvalidAddress) };
    match function {
        host_call::REGISTER_VM if a1.checked_add(a2).is_none() => Err(Status::InvalidParameters),
        host_call::REGISTER_VM => Ok([a1, a2, 0, 0]),
        host_call::REGISTER_VCPU => vm(a1).and(vcpu(a2)).map(|()| [a1, a2, 0, 0]),
        host_call::SET_BOOT_INFO => vm(a1).map(|()| [a1, a2, a3, 0]),
        host_call::REMAP_VM_IMAGE if a3 >= 1 << 28 => vm(a1).and(Err(Status::InvalidAddress)),
        host_call::REMAP_VM_IMAGE => vm(a1).map(|()| [a1, a2, a3, 0]),
        host_call::BOOT_DATA if a3 >= 1 << 28 => vm(a1).and(Err(Status::InvalidAddress)),
        host_call::BOOT_DATA => vm(a1).map(|()| [a1, a2, a3, 0]),
        host_call::VCPU_RUN => vm(a1).and(vcpu(a2)).map(|()| [a1, a2, a3, 0]),
        host_call::CLEAR_VM_S2_RANGE => vm(a1).and(pa(a2)).map(|()| [a1, a2, a3, 0]),
        host_call::PHYS_ADDR_IOREMAP => vm(a1).and(pa(a3)).map(|()| [a1, a2, a3, a4]),
        host_call::TIMER_SET_CNTVOFF | host_call::VM_CONSOLE => vm(a1).map(|()| [a1, a2, 0, 0]),
        host_call::INJECT_IRQ if a3 > 1019 || a4 > 255 => vm(a1).and(vcpu(a2)).and(Err(Status::InvalidParameters)),
        host_call::INJECT_IRQ => vm(a1).and(vcpu(a2)).map(|()| [a1, a2, a3, a4]),
        // VERIFY_VM_IMAGE, VM_POWER_OFF, DESTROY_VM.
        _ => vm(a1).map(|()| [a1, 0, 0, 0]),
    }
}

/// The operand register of a set/way data-cache maintenance instruction with syndrome `esr`
/// (ISS of EC 0x18: Op0 21:20, Op2 19:17, Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1, Direction 0).
fn set_way_operand_register(esr: u64) -> Option<usize> {
    let iss = esr & 0x1ff_ffff;
    let without_rt = iss & !(0x1f << 5);
    // Op0 = 1, Op2 = 2, Op1 = 0, CRn = 7, Direction = 0 (SYS), CRm = 6, 10 or 14.
    let encodings = [6u64, 10, 14].map(|crm| 1 << 20 | 2 << 17 | 7 << 10 | crm << 1);
    (class(esr) == ec::SYS64 && encodings.contains(&without_rt)).then_some((iss >> 5 & 0x1f) as usize)
}

fn is_psci_id(function: u32) -> bool {
    (0x8400_0000..=0x8400_001F).contains(&function) || (0xC400_0000..=0xC400_001F).contains(&function)
}

fn psci_spec(mut s: AbsState, host_may_run_at: &dyn Fn(u64) -> bool) -> AbsState {
    let function = s.x[0] as u32;
    let (a1, a2, a3) = (s.x[1], s.x[2], s.x[3]);
    let keep = [a1, a2, a3];
    let implemented = [
        psci::VERSION,
        psci::FEATURES,
        psci::CPU_ON_32,
        psci::CPU_ON_64,
        psci::CPU_OFF,
        psci::AFFINITY_INFO_32,
        psci::AFFINITY_INFO_64,
        psci::SYSTEM_OFF,
        psci::SYSTEM_RESET,
    ];
    let target = (a1 < MAX_CPUS as u64).then_some(a1 as usize);
    match function {
        psci::VERSION => ret(s, psci::PSCI_VERSION_1_1, keep),
        psci::FEATURES if a1 <= u32::MAX as u64 && implemented.contains(&(a1 as u32)) => ret(s, 0, keep),
        psci::FEATURES => ret(s, Status::NotSupported.as_reg(), keep),
        psci::CPU_ON_32 | psci::CPU_ON_64 => {
            let Some(core) = target else {
                return ret(s, Status::InvalidParameters.as_reg(), keep);
            };
            if !a2.is_multiple_of(4) || !host_may_run_at(a2) {
                return ret(s, Status::InvalidAddress.as_reg(), keep);
            }
            let x0 = match s.cores[core].state {
                CoreState::Parked => {
                    s.cores[core] =
                        AbsCore { state: CoreState::OnPending, posted: Some(HostEntry { entry: a2, context: a3 }) };
                    s.wake = true;
                    Status::Success
                }
                CoreState::Host => Status::AlreadyOn,
                CoreState::Claimed | CoreState::OnPending => Status::OnPending,
                CoreState::Offline => Status::InvalidParameters,
            };
            ret(s, x0.as_reg(), keep)
        }
        psci::AFFINITY_INFO_32 | psci::AFFINITY_INFO_64 => match target {
            Some(core) if a2 == 0 => {
                let x0 = match s.cores[core].state {
                    CoreState::Host => 0,
                    CoreState::Claimed | CoreState::OnPending => 2,
                    CoreState::Offline | CoreState::Parked => 1,
                };
                ret(s, x0, keep)
            }
            _ => ret(s, Status::InvalidParameters.as_reg(), keep),
        },
        psci::CPU_OFF => AbsState { next: Next::CpuOff, ..s },
        psci::SYSTEM_OFF => AbsState { next: Next::PowerOff(0), ..s },
        psci::SYSTEM_RESET => AbsState { next: Next::Reset, ..s },
        _ => ret(s, Status::NotSupported.as_reg(), keep),
    }
}

/// A guest's vCPU as `vm_exit_spec` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsVcpu {
    pub x: [u64; 31],
    pub pc: u64,
    pub pending: Pending,
    /// A virtual SError waits for the guest.
    pub virtual_serror: bool,
    /// The console bytes the guest wrote since its last exit to the host.
    pub console: Vec<u8>,
}

/// What happens after a guest exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmNext {
    Guest,
    UndefAt(u64),
    Share {
        grant: bool,
        gpa: u64,
        size: u64,
    },
    Host {
        reason: u64,
        details: [u64; 4],
    },
    /// A PSCI CPU_ON for a sibling vCPU: the host gets the HVC exit, and KCore records that vCPU
    /// `target` starts at `entry` with `arg`.
    HostCpuOn {
        details: [u64; 4],
        target: u64,
        entry: u64,
        arg: u64,
    },
}

/// What `vm_exit_spec` knows of the VM and the machine at a guest's exit.
pub struct AbsGuestEnv<'a> {
    /// Whether a guest-physical address is in the VM's RAM.
    pub in_ram: &'a dyn Fn(u64) -> bool,
    /// What the guest reads from an ID register.
    pub id_register: &'a dyn Fn(IdReg) -> u64,
    /// The live virtual timer: CNTV_CTL_EL0, CNTV_CVAL_EL0, and the VM's CNTVOFF_EL2.
    pub timer: (u64, u64, u64),
    /// The guest address of the VM's PL011 page (VM_CONSOLE), if it has one.
    pub console: Option<u64>,
}

/// `vm_exit_dispatcher_spec`, stated from the architecture's syndrome layout (Arm ARM D19.2.46)
/// and the ABI: a guest's exit of `kind` with syndrome `esr` at guest-physical `ipa`;
/// `serror_at_exit`: an SError was pending as the guest left.
///
/// Issue 11 (finding 8): an asynchronous abort the guest caused goes to the guest, not the host.
/// Without a hypervisor the guest's EL1 would have taken it; with one, it becomes a virtual
/// SError pending for the vCPU, whatever else the exit was. An SError exit has nothing else to
/// it: the guest runs on (and takes the virtual SError when it unmasks PSTATE.A).
pub fn vm_exit_spec(
    kind: TrapKind,
    serror_at_exit: bool,
    esr: u64,
    ipa: u64,
    v: &AbsVcpu,
    env: &AbsGuestEnv,
) -> Option<(AbsVcpu, VmNext)> {
    let AbsGuestEnv { in_ram, id_register, timer: (cntv_ctl, cntv_cval, cntvoff), console } = *env;
    let mut v = v.clone();
    if serror_at_exit || kind == TrapKind::SError {
        v.virtual_serror = true;
    }
    let host = |reason, details| VmNext::Host { reason, details };
    let next = match (kind, class(esr)) {
        (TrapKind::Irq | TrapKind::Fiq, _) => host(exit::IRQ, [0; 4]),
        (TrapKind::SError, _) => VmNext::Guest,
        (_, ec::HVC64 | ec::SMC64) => {
            let is_smc = class(esr) == ec::SMC64;
            let call_pc = if is_smc { v.pc } else { v.pc.wrapping_sub(4) };
            if imm16(esr) != 0 {
                return Some((v, VmNext::UndefAt(call_pc)));
            }
            v.pc = call_pc.wrapping_add(4);
            let function = v.x[0] as u32;
            let cpu_on = v.x[0] == u64::from(psci::CPU_ON_64) || v.x[0] == u64::from(psci::CPU_ON_32);
            if function == guest_call::SET_DESC_PFN || function == guest_call::UNSET_DESC_PFN {
                VmNext::Share { grant: function == guest_call::SET_DESC_PFN, gpa: v.x[1], size: v.x[2] }
            } else if cpu_on && v.x[1] & 0xff < 8 {
                // PSCI names the target by MPIDR; a vCPU's is its index in Aff0 (MAX_VCPUS = 8).
                v.pending = Pending::CallResult;
                VmNext::HostCpuOn {
                    details: [v.x[0], v.x[1], v.x[2], v.x[3]],
                    target: v.x[1] & 0xff,
                    entry: v.x[2],
                    arg: v.x[3],
                }
            } else {
                v.pending = Pending::CallResult;
                host(exit::HVC, [v.x[0], v.x[1], v.x[2], v.x[3]])
            }
        }
        // ISS.TI (bits 1:0) of EC 0x01: 0b00 WFI, 0b01 WFE, 0b10 WFIT, 0b11 WFET. Issue 13: a WFE
        // (or WFET) is its own exit, so that the host yields instead of idling the vCPU.
        (_, ec::WFX) if esr & 1 == 1 => {
            v.pc = v.pc.wrapping_add(4);
            host(exit::WFE, [0; 4])
        }
        (_, ec::WFX) => {
            v.pc = v.pc.wrapping_add(4);
            // The virtual timer fires when CNTVCT = CNTPCT - CNTVOFF reaches CVAL, if it is
            // enabled (CTL bit 0) and not masked (bit 1): in physical ticks, at CVAL + CNTVOFF.
            let deadline = if cntv_ctl & 3 == 1 { cntv_cval.saturating_add(cntvoff) } else { u64::MAX };
            host(exit::WFI, [deadline, 0, 0, 0])
        }
        (_, ec::SYS64) => {
            let (op0, op1, crn, crm, op2) =
                (esr >> 20 & 3, esr >> 14 & 7, esr >> 10 & 15, esr >> 1 & 15, esr >> 17 & 7);
            let is_read = esr & 1 == 1;
            let rt = (esr >> 5 & 31) as usize;
            let id_space = op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm);
            let set_way = set_way_operand_register(esr).is_some();
            let debug = debug_register_spec([op0, op1, crn, crm, op2], is_read);
            if (op0, op1, crn, crm, op2) == (3, 0, 12, 11, 5) && !is_read {
                // Issue 13: MSR ICC_SGI1R_EL1, Xt (trapped by HCR_EL2.IMO on GICv3) goes to the
                // host with the value of Xt, past the MSR. A read (the register is write-only)
                // falls through to the UNDEF below.
                v.pc = v.pc.wrapping_add(4);
                let value = if rt == 31 { 0 } else { v.x[rt] };
                return Some((v, host(exit::SGI, [value, 0, 0, 0])));
            }
            if id_space && is_read {
                // What the guest may see of the CPU is `vcpu::controls`' allow-list, checked
                // against the feature table there; here the read lands in Xt (XZR: nowhere).
                if rt != 31 {
                    v.x[rt] = id_register(IdReg { crm: crm as u8, op2: op2 as u8 });
                }
            } else if let Some(value) = debug {
                if is_read && rt != 31 {
                    v.x[rt] = value;
                }
            } else if !set_way {
                return Some((v.clone(), VmNext::UndefAt(v.pc)));
            }
            v.pc = v.pc.wrapping_add(4);
            VmNext::Guest
        }
        (_, c @ (ec::DABT_LOW | ec::IABT_LOW)) => {
            let isv = esr >> 24 & 1 == 1;
            let (write, sas, rt) = (esr >> 6 & 1 == 1, esr >> 22 & 3, (esr >> 16 & 31) as usize);
            let on_console = console == Some(ipa - ipa % 4096) && c == ec::DABT_LOW && isv;
            if in_ram(ipa) {
                v.pending = Pending::PageFault { gfn: ipa / 4096 };
                host(exit::PAGE_FAULT, [ipa, 0, 0, 0])
            } else if on_console && write && ipa.is_multiple_of(4096) && sas <= 2 {
                // Issue 13: a store to the PL011's DR (at most a word): its low byte joins the
                // vCPU's console buffer, which goes to the host when a newline or the byte that
                // fills it comes (`corevisor_abi::console`); past the store.
                let byte = if rt == 31 { 0 } else { v.x[rt] as u8 };
                v.console.push(byte);
                v.pc = v.pc.wrapping_add(4);
                if byte == b'\n' || v.console.len() == corevisor_abi::console::BYTES {
                    host(exit::CONSOLE, [0; 4])
                } else {
                    VmNext::Guest
                }
            } else if on_console && !write && ipa % 4096 == 0x18 {
                // A load of its FR: TXFE | RXFE, as the load's size, sign extension and register
                // width make it (Arm ARM: ISS.SAS, SSE, SF); past the load.
                let bits = 8 << sas;
                let mut value = 0x90u64 % (1u64 << bits.min(63));
                if esr >> 21 & 1 == 1 && bits < 64 && value >> (bits - 1) & 1 == 1 {
                    value |= !0u64 << bits;
                }
                if esr >> 15 & 1 == 0 {
                    value &= 0xffff_ffff;
                }
                if rt != 31 {
                    v.x[rt] = value;
                }
                v.pc = v.pc.wrapping_add(4);
                VmNext::Guest
            } else if c == ec::DABT_LOW && isv {
                let reg = rt as u8;
                let bytes = 1u64 << sas;
                let value = match (write, reg) {
                    (false, _) | (true, 31) => 0,
                    (true, r) if bytes == 8 => v.x[r as usize],
                    (true, r) => v.x[r as usize] % (1u64 << (8 * bytes)),
                };
                v.pending = if write {
                    Pending::MmioWrite
                } else {
                    Pending::MmioRead {
                        reg,
                        size_log2: sas as u8,
                        sign_extend: esr >> 21 & 1 == 1,
                        wide: esr >> 15 & 1 == 1,
                    }
                };
                host(exit::MMIO, [ipa, write as u64 | sas << 1, value, 0])
            } else {
                host(exit::BAD_ACCESS, [ipa, esr, 0, 0])
            }
        }
        _ => VmNext::UndefAt(v.pc),
    };
    Some((v, next))
}

/// How a debug register may be accessed (Arm ARM D19.3).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ReadWrite,
    ReadOnly,
    WriteOnly,
}

/// Issue 13: the debug and OS lock registers, by name and encoding (Op0, Op1, CRn, CRm, Op2) as
/// the Arm ARM lists them (D19.3, "Debug registers"), that a guest reads as zero and writes
/// without effect, as Xen does; MDCR_EL2.TDA, TDOSA and TDRA trap every one of them.
const DEBUG_REGISTERS: &[(&str, [u64; 5], Direction)] = {
    use Direction::*;
    &[
        ("OSDTRRX_EL1", [2, 0, 0, 0, 2], ReadWrite),
        ("MDCCINT_EL1", [2, 0, 0, 2, 0], ReadWrite),
        ("MDSCR_EL1", [2, 0, 0, 2, 2], ReadWrite),
        ("OSDTRTX_EL1", [2, 0, 0, 3, 2], ReadWrite),
        ("OSECCR_EL1", [2, 0, 0, 6, 2], ReadWrite),
        ("MDRAR_EL1", [2, 0, 1, 0, 0], ReadOnly),
        ("OSLAR_EL1", [2, 0, 1, 0, 4], WriteOnly),
        ("OSLSR_EL1", [2, 0, 1, 1, 4], ReadOnly),
        ("OSDLR_EL1", [2, 0, 1, 3, 4], ReadWrite),
        ("DBGPRCR_EL1", [2, 0, 1, 4, 4], ReadWrite),
        ("DBGCLAIMSET_EL1", [2, 0, 7, 8, 6], ReadWrite),
        ("DBGCLAIMCLR_EL1", [2, 0, 7, 9, 6], ReadWrite),
        ("DBGAUTHSTATUS_EL1", [2, 0, 7, 14, 6], ReadOnly),
        ("MDCCSR_EL0", [2, 3, 0, 1, 0], ReadOnly),
        ("DBGDTR_EL0", [2, 3, 0, 4, 0], ReadWrite),
        ("DBGDTRRX_EL0", [2, 3, 0, 5, 0], ReadOnly),
        ("DBGDTRTX_EL0", [2, 3, 0, 5, 0], WriteOnly),
    ]
};

/// What a guest's access to debug register `encoding` gives (`Some(value read)`; a write is
/// ignored), or `None` if it is not one of them or goes the wrong way (an UNDEF). The
/// breakpoint and watchpoint registers DBGBVR<n>, DBGBCR<n>, DBGWVR<n>, DBGWCR<n> (n = 0..15)
/// are `[2, 0, 0, n, 4..=7]`. OSLSR_EL1 reads `OSLM[1]` (bit 3): the OS lock is implemented
/// (OSLM = 0b10, the only value ARMv8 allows) and unlocked (OSLK = 0).
fn debug_register_spec(encoding: [u64; 5], is_read: bool) -> Option<u64> {
    let breakpoint_or_watchpoint = (0..16).any(|n| (4..=7).any(|op2| encoding == [2, 0, 0, n, op2]));
    if breakpoint_or_watchpoint {
        return Some(0);
    }
    let allowed = |d: Direction| if is_read { d != Direction::WriteOnly } else { d != Direction::ReadOnly };
    let (name, _, _) = DEBUG_REGISTERS.iter().find(|&&(_, e, d)| e == encoding && allowed(d))?;
    Some(if *name == "OSLSR_EL1" { 1 << 3 } else { 0 })
}

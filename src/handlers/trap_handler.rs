//! TrapHandler (SeKVM layers 33-34): the Rust side of KCore's vectors. It records whose trap is
//! being handled, asks the dispatchers what the trap means, and carries out their answer: writing
//! registers back, injecting an exception, waking cores, or powering off.

use super::fault_handler::{fault_ipa, handle_host_stage2_fault};
use super::inject;
use super::trap_dispatcher::{
    host_trap_dispatcher, vm_exit_dispatcher, Forbidden, HostEnv, HostExit, VmExit, HOST_STATS,
};
use crate::init::{power, wait_for_work, CORES};
use crate::machine::{cpu, regs, sync::TicketLock, Aarch64, TrapFrame, TrapKind, MAX_CPUS};
use crate::memory::HostMemory;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use log::{error, info, warn};

/// Principal ids for [`HANDLING`]: KCore itself, the host, and guests from `FIRST_VM` on.
const KCORE: u8 = 0;
const HOST: u8 = 1;
const FIRST_VM: u8 = 2;

/// Whose trap each core is handling (KCORE when it is not in a trap), for panic reports.
static HANDLING: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(KCORE) }; MAX_CPUS];
/// Which principal runs at EL1 on each core: HOST, or a VM once the vCPU layers run guests.
static RUNNING: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(HOST) }; MAX_CPUS];
/// Set by a panic: every core stops at its next trap.
static HALTED: AtomicBool = AtomicBool::new(false);
static HOST_MAY_RUN_AT: spin::Once<fn(u64) -> bool> = spin::Once::new();

/// The `s2page` lock: the ownership table together with the host's stage-2 table.
///
/// Lock order (a core holding one lock only takes locks below it in this list):
/// 1. `s2page` (this lock);
/// 2. a VM's page-table lock (when VMs exist);
/// 3. the console lock (logging is allowed under any lock).
static S2PAGE: TicketLock<Option<HostMemory>> = TicketLock::new(None);

/// Tells the trap handler where the host may start cores, and hands it the host's memory
/// state. Called once before the host runs.
pub fn install(host_may_run_at: fn(u64) -> bool, host_memory: HostMemory) {
    HOST_MAY_RUN_AT.call_once(|| host_may_run_at);
    *S2PAGE.lock() = Some(host_memory);
}

/// Stops every core at its next entry to KCore.
pub fn halt_all_cores() {
    HALTED.store(true, Ordering::SeqCst);
}

/// Who was being served on `core`, in words.
pub fn principal_name(core: usize) -> &'static str {
    match HANDLING[core].load(Ordering::Relaxed) {
        KCORE => "KCore itself (no trap)",
        HOST => "a trap from the host",
        vm => match vm.checked_sub(FIRST_VM) {
            Some(_) => "an exit from a guest",
            None => "an unknown principal",
        },
    }
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Forbidden::HvcImmediate(imm) => write!(f, "HVC #{imm:#x}"),
            Forbidden::Smc(function) => write!(f, "SMC {function:#x}"),
            Forbidden::Class(class) => {
                write!(f, "{} (EC {class:#x})", super::esr::class_name(class))
            }
        }
    }
}

/// Entry for every exception from a lower EL (vectors.S).
#[no_mangle]
extern "C" fn lower_el_trap_handler(frame: &mut TrapFrame, kind: u64) {
    let core = cpu::index();
    if HALTED.load(Ordering::Relaxed) {
        cpu::park();
    }
    let running = RUNNING[core].load(Ordering::Relaxed);
    HANDLING[core].store(running, Ordering::Relaxed);
    match (TrapKind::from_vector(kind), running) {
        (TrapKind::Sync, HOST) => {
            host_sync(core, frame);
            check_invariants();
        }
        (TrapKind::Sync, _) => guest_sync(frame),
        (other, _) => warn!("unexpected {other:?} exception from EL1 (ESR {:#x}); ignored", regs::esr_el2()),
    }
    // HANDLING keeps naming the last trap's principal: after the host is up, KCore runs only in
    // traps (and in `wait_for_work`, which resets it).
}

fn host_sync(core: usize, frame: &mut TrapFrame) {
    let host_may_run_at = HOST_MAY_RUN_AT.get().copied().unwrap_or(|_| false);
    let env = HostEnv { cores: &CORES, host_may_run_at: &host_may_run_at };
    match host_trap_dispatcher(regs::esr_el2(), frame, &env) {
        HostExit::Resume => {}
        HostExit::ResumeAndWake => cpu::send_event(),
        HostExit::Undef { pc, reason } => {
            warn!("host trap {reason} at {pc:#x}: injecting UNDEF into the host");
            inject_undef(frame, pc);
        }
        HostExit::SystemOff { status } => {
            info!("host SYSTEM_OFF, status {status}");
            power::system_off(status)
        }
        HostExit::SystemReset => {
            info!("host SYSTEM_RESET");
            power::system_reset()
        }
        HostExit::Stage2Fault => host_stage2_fault(frame),
        HostExit::CpuOff => {
            info!("cpu{core} leaves the host (PSCI CPU_OFF)");
            HANDLING[core].store(KCORE, Ordering::Relaxed);
            CORES.host_cpu_off(core);
            wait_for_work(core)
        }
    }
}

/// Maps the host's access on demand, or refuses it with an external abort.
fn host_stage2_fault(frame: &mut TrapFrame) {
    use core::sync::atomic::Ordering::Relaxed;
    let (esr, far) = (regs::esr_el2(), regs::far_el2());
    let ipa = fault_ipa(regs::hpfar_el2(), far);
    let result = match S2PAGE.lock().as_mut() {
        Some(memory) => handle_host_stage2_fault(&Aarch64, memory, ipa),
        None => panic!("host stage-2 fault at {ipa:#x} before the host's memory was set up"),
    };
    match result {
        Ok(leaf) => {
            log::trace!("host stage-2 fault at {ipa:#x}: mapped {:#x} at level {}", leaf.input, leaf.level);
            HOST_STATS.mapped.fetch_add(1, Relaxed);
        }
        Err(e) => {
            HOST_STATS.refused.fetch_add(1, Relaxed);
            let instruction = super::esr::class(esr) == super::esr::ec::IABT_LOW;
            let pc = frame.elr;
            warn!("host access to {ipa:#x} at {pc:#x} refused ({e:?}): injecting an external abort into the host");
            let injected = inject::external_abort(frame, pc, instruction, esr, regs::vbar_el1());
            regs::set_el1_exception_state(injected.esr, injected.elr, injected.spsr);
            regs::set_far_el1(far);
        }
    }
}

/// Debug builds (and `check-invariants` builds) check SeKVM's invariants after every host trap;
/// a violation is a KCore bug and halts.
fn check_invariants() {
    if cfg!(any(debug_assertions, feature = "check-invariants")) {
        if let Some(memory) = S2PAGE.lock().as_ref() {
            if let Err(violation) = crate::memory::invariants::check(&Aarch64, memory, &[]) {
                panic!("invariant broken after a host trap: {violation:?}");
            }
        }
    }
}

fn guest_sync(frame: &mut TrapFrame) {
    let esr = regs::esr_el2();
    match vm_exit_dispatcher(esr, frame) {
        VmExit::Undef { pc } => {
            warn!("guest exit EC {:#x} at {pc:#x}: injecting UNDEF into the guest", super::esr::class(esr));
            inject_undef(frame, pc);
        }
    }
}

fn inject_undef(frame: &mut TrapFrame, pc: u64) {
    let injected = inject::undef(frame, pc, regs::vbar_el1());
    regs::set_el1_exception_state(injected.esr, injected.elr, injected.spsr);
}

/// Entry for an exception taken from EL2 itself: a KCore bug. Prints the interrupted registers
/// and halts.
#[no_mangle]
extern "C" fn kcore_fault_handler(frame: &mut TrapFrame, kind: u64) -> ! {
    error!("KCore took a {:?} exception at EL2", TrapKind::from_vector(kind));
    for (i, pair) in frame.x.chunks(2).enumerate() {
        match pair {
            [a, b] => error!("  x{:<2} = {a:#018x}  x{:<2} = {b:#018x}", 2 * i, 2 * i + 1),
            [a] => error!("  x{:<2} = {a:#018x}", 2 * i),
            _ => {}
        }
    }
    error!("  elr = {:#018x}  spsr = {:#018x}", frame.elr, frame.spsr);
    panic!(
        "exception inside KCore (ESR {:#x}, ELR {:#x}, FAR {:#x})",
        regs::esr_el2(),
        regs::elr_el2(),
        regs::far_el2()
    );
}

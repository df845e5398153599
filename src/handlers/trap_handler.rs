//! TrapHandler (SeKVM layers 33-34): the Rust side of KCore's vectors. It records whose trap is
//! being handled, asks the dispatchers what the trap means, and carries out their answer: writing
//! registers back, injecting an exception, waking cores, or powering off.

use super::fault_handler::{emulate_gicr_access, fault_ipa, handle_host_stage2_fault, GicrDecision, HostRefusal};
use super::inject;
use super::trap_dispatcher::{
    host_trap_dispatcher, vm_exit_dispatcher, Forbidden, GuestEnv, HostEnv, HostExit, VmExit, HOST_STATS,
};
use super::vm_calls;
use crate::init::{power, wait_for_work, CORES};
use crate::machine::guest_regs::{El1Regs, FpRegs};
use crate::machine::{
    cpu, features, layout, phys, regs, sync::TicketLock, world_switch, Aarch64, TrapFrame, TrapKind, MAX_CPUS,
};
use crate::memory::MemError;
use crate::vcpu::controls::{self, HostPmu};
use crate::vcpu::ExitRecord;
use crate::vm::{Kcore, RunTicket};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use corevisor_abi::{exit, host_call, psci, Status};
use corevisor_boards::PhysRange;
use log::{error, info, warn};

/// Principal ids for [`HANDLING`]: KCore itself, the host, and guests from `FIRST_VM` on.
const KCORE: u8 = 0;
const HOST: u8 = 1;
const FIRST_VM: u8 = 2;

/// Whose trap each core is handling (KCORE when it is not in a trap), for panic reports.
static HANDLING: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(KCORE) }; MAX_CPUS];
/// Set by a panic or a power-down: every core stops at its next trap.
static HALTED: AtomicBool = AtomicBool::new(false);
/// Per core: it holds a vCPU's context out of KCore's state (a VCPU_RUN in progress) and may
/// still write it. Set only under the state lock; cleared before the core waits for that lock
/// again, and when it parks. A power-down waits for every flag to clear before it scrubs the heap
/// the contexts live in.
static HOLDS_CONTEXT: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// How long a power-down waits for the other cores to let go of the vCPU contexts, in polls (a
/// count, not a clock: load on the machine cannot make it run out early). A core holding one is
/// either running a guest, whose stage-2 was just revoked so that its next access exits, or
/// about to take the state lock; either takes a few thousand instructions.
const CONTEXT_RELEASE_POLLS: u64 = 100_000_000;
static HOST_MAY_RUN_AT: spin::Once<fn(u64) -> bool> = spin::Once::new();

/// KCore's state: the ownership table with the host's stage-2 (SeKVM's `s2page`) and the VMs.
///
/// One lock guards it all. Lock order (a core holding one lock only takes locks below it):
/// 1. this lock;
/// 2. the console lock (logging is allowed under any lock).
///
/// It is never held while a guest runs: VCPU_RUN takes the vCPU's context out under the lock,
/// runs the guest without it, and puts the context back under it.
static STATE: TicketLock<Option<Kcore>> = TicketLock::new(None);

/// Runs `f` on KCore's state, under its lock.
fn with_kcore<R>(f: impl FnOnce(&mut Kcore) -> R) -> R {
    match STATE.lock().as_mut() {
        Some(kcore) => f(kcore),
        None => panic!("a trap needs KCore's state before the host's memory was set up"),
    }
}

/// Tells the trap handler where the host may start cores, and hands it KCore's state. Called
/// once before the host runs.
pub fn install(host_may_run_at: fn(u64) -> bool, kcore: Kcore) {
    HOST_MAY_RUN_AT.call_once(|| host_may_run_at);
    *STATE.lock() = Some(kcore);
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
        park_halted(core);
    }
    // Only the host traps through KCore's vectors: a guest's traps go through the guest half of the
    // core's vector set (`__guest_exit`) back into `vcpu_run`.
    HANDLING[core].store(HOST, Ordering::Relaxed);
    match TrapKind::from_vector(kind) {
        TrapKind::Sync => {
            host_sync(core, frame);
            check_invariants();
        }
        other => warn!("unexpected {other:?} exception from EL1 (ESR {:#x}); ignored", regs::esr_el2()),
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
            power_down(core, "power-off");
            power::system_off(status)
        }
        HostExit::SystemReset => {
            info!("host SYSTEM_RESET");
            power_down(core, "reset");
            power::system_reset()
        }
        HostExit::Stage2Fault => host_stage2_fault(frame),
        HostExit::CleanInvalidateSetWay { operand } => {
            let pc = frame.elr.wrapping_sub(4);
            info!("host set/way maintenance at {pc:#x} (operand {operand:#x}): done as clean and invalidate");
            regs::clean_invalidate_dcache_set_way(operand)
        }
        HostExit::VmCall { function: host_call::VCPU_RUN, args } => vcpu_run(core, frame, args),
        HostExit::VmCall { function, args } => {
            let result = with_kcore(|kcore| vm_calls::serve(&Aarch64, kcore, function, args));
            frame.x[0] = result.status;
            frame.x[1..4].copy_from_slice(&result.values);
        }
        HostExit::CpuOff => {
            info!("cpu{core} leaves the host (PSCI CPU_OFF)");
            HANDLING[core].store(KCORE, Ordering::Relaxed);
            CORES.host_cpu_off(core);
            wait_for_work(core)
        }
    }
}

/// Parks this core for good after the halt flag was raised, letting go of any vCPU context.
fn park_halted(core: usize) -> ! {
    HOLDS_CONTEXT[core].store(false, Ordering::Release);
    cpu::park()
}

/// Before the machine resets or powers off: stops every other core and scrubs every page that is
/// not the host's (`Kcore::scrub_for_power_down`), since the next boot hands all of RAM to the
/// host. Keeps KCore's state lock for good: nothing of KCore runs after this but the power call.
fn power_down(core: usize, what: &str) {
    // Every other core parks at its next entry to KCore, a running guest at its next exit.
    HALTED.store(true, Ordering::SeqCst);
    let mut state = STATE.lock();
    let Some(kcore) = state.as_mut() else { return };
    // A guest still running elsewhere loses its memory now: its next access exits, and it parks.
    kcore.revoke_vm_stage2s(&Aarch64);
    HOLDS_CONTEXT[core].store(false, Ordering::Relaxed);
    let released = (0..CONTEXT_RELEASE_POLLS).any(|_| {
        core::hint::spin_loop();
        HOLDS_CONTEXT.iter().all(|held| !held.load(Ordering::Acquire))
    });
    if !released {
        warn!("a core still holds a vCPU context; scrubbing anyway");
    }
    let heap = crate::machine::layout::heap();
    let scrubbed = kcore.scrub_for_power_down(&Aarch64, PhysRange::new(heap.start, heap.end - heap.start));
    // KCore's heap is gone: `kcore` must not be touched again (the guard is never dropped).
    core::mem::forget(state);
    info!(
        "scrubbed {} VM pages, {} pages of VM page tables and KCore's heap ({} KiB) before {what}",
        scrubbed.vm_pages,
        scrubbed.table_pages,
        scrubbed.heap_bytes / 1024
    );
}

/// Maps the host's access on demand, performs it for the host on a page KCore emulates, or
/// refuses it with an external abort.
fn host_stage2_fault(frame: &mut TrapFrame) {
    use core::sync::atomic::Ordering::Relaxed;
    let (esr, far) = (regs::esr_el2(), regs::far_el2());
    let ipa = fault_ipa(regs::hpfar_el2(), far);
    let result = with_kcore(|kcore| handle_host_stage2_fault(&Aarch64, &mut kcore.mem, ipa));
    let result = match result {
        Err(MemError::Emulated) => match emulate_gicr_access(frame, esr, ipa, phys::mmio_read, phys::mmio_write) {
            Ok(GicrDecision::Pass) => return,
            Ok(GicrDecision::Mask(value)) => {
                warn!("host write {value:#x} to GICR_CTLR at {ipa:#x}: EnableLPIs kept off (the LPI tables would be written by the GIC)");
                return;
            }
            Ok(GicrDecision::Ignore) => {
                warn!("host write to GICR_PROPBASER/PENDBASER at {ipa:#x} ignored: it would point the GIC at memory");
                return;
            }
            Err(why) => Err(HostRefusal::from(why)),
        },
        other => other.map_err(HostRefusal::from),
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
            let injected = inject::external_abort(frame, pc, instruction, esr, loaded_el1());
            regs::set_el1_exception_state(injected.esr, injected.elr, injected.spsr);
            regs::set_far_el1(far);
        }
    }
}

/// Debug builds (and `check-invariants` builds) check SeKVM's invariants after every host trap;
/// a violation is a KCore bug and halts.
fn check_invariants() {
    if cfg!(any(debug_assertions, feature = "check-invariants")) {
        if let Some(kcore) = STATE.lock().as_ref() {
            check_invariants_of(kcore);
        }
    }
}

/// [`check_invariants`] for a caller that holds the state lock.
fn check_invariants_of(kcore: &Kcore) {
    if cfg!(any(debug_assertions, feature = "check-invariants")) {
        if let Err(violation) = crate::memory::invariants::check(&Aarch64, &kcore.mem, &kcore.vm_tables()) {
            panic!("invariant broken after a trap: {violation:?}");
        }
        if let Err(violation) = crate::memory::invariants::check_canary(&Aarch64, layout::canary()) {
            panic!("invariant broken after a trap: KCore's canary changed: {violation:x?}");
        }
    }
}

/// VCPU_RUN: runs vCPU x2 of VM x1 until an exit the host must see, serving every other exit
/// (share calls, emulated registers, UNDEFs) inside KCore without leaving the guest's world.
fn vcpu_run(core: usize, frame: &mut TrapFrame, args: [u64; 4]) {
    let [vmid, vcpu, answer, _] = args;
    let prepared = with_kcore(|kcore| {
        let prepared = kcore.vcpu_run_prepare(&Aarch64, vmid, vcpu, answer);
        HOLDS_CONTEXT[core].store(prepared.is_ok(), Ordering::Relaxed);
        prepared
    });
    let mut ticket = match prepared {
        Ok(ticket) => ticket,
        Err(e) => {
            info!("VCPU_RUN vm {vmid} vcpu {vcpu} refused: {e:?}");
            frame.x[0] = e.status().as_reg();
            return;
        }
    };
    let cpu = features::boot();
    let pmu = HostPmu::of_build();
    let host_controls = world_switch::el2_controls();
    let guest = controls::guest_controls(cpu, pmu, ticket.vttbr, 1 << 31 | u64::from(ticket.ctx.index), ticket.cntvoff);
    let mut host_el1 = El1Regs::default();
    let mut host_fp = FpRegs::default();
    world_switch::save_el1(&mut host_el1);
    world_switch::save_fp(&mut host_fp);
    // The host's PMU does not count the guest (nor KCore serving it).
    let host_pmu_counters = controls::stops_host_pmu_in_guest(cpu, pmu).then(world_switch::stop_pmu_counters);
    world_switch::restore_el1(&ticket.ctx.el1);
    world_switch::restore_fp(&ticket.ctx.fp);
    world_switch::set_el2_controls(&guest);
    if cpu.ras() {
        world_switch::clear_vdisr();
    }
    HANDLING[core].store(FIRST_VM.saturating_add(ticket.vmid as u8), Ordering::Relaxed);
    let mut record = run_until_host_exit(core, &mut ticket);
    world_switch::save_el1(&mut ticket.ctx.el1);
    world_switch::save_fp(&mut ticket.ctx.fp);
    world_switch::restore_el1(&host_el1);
    world_switch::restore_fp(&host_fp);
    world_switch::set_el2_controls(&host_controls);
    if let Some(running) = host_pmu_counters {
        world_switch::restart_pmu_counters(running);
    }
    HANDLING[core].store(HOST, Ordering::Relaxed);

    if record.reason == exit::WFI {
        record.details[0] = ticket.ctx.timer_deadline(ticket.cntvoff);
    }
    let cpu_on = record.reason == exit::HVC
        && matches!(record.details[0] as u32, psci::CPU_ON_64 | psci::CPU_ON_32)
        && record.details[0] >> 32 == 0;
    let vmid = ticket.vmid;
    HOLDS_CONTEXT[core].store(false, Ordering::Release);
    with_kcore(|kcore| {
        if cpu_on {
            kcore.guest_cpu_on(vmid, record.details[1], record.details[2], record.details[3]);
        }
        kcore.vcpu_run_finish(ticket)
    });
    frame.x[0] = Status::Success.as_reg();
    frame.x[1] = record.reason;
    frame.x[2..6].copy_from_slice(&record.details);
}

/// Runs the loaded guest, serving the exits KCore handles itself, until one is for the host.
fn run_until_host_exit(core: usize, ticket: &mut RunTicket) -> ExitRecord {
    let (vmid, ram_base, ram_size) = (ticket.vmid, ticket.ram_base, ticket.ram_size);
    let in_ram = move |gpa: u64| gpa >= ram_base && gpa - ram_base < ram_size;
    let cpu = features::boot();
    let id_register = |reg| controls::guest_id_register(cpu, reg);
    let env = GuestEnv { in_ram: &in_ram, id_register: &id_register };
    let ras = cpu.ras();
    loop {
        world_switch::set_virtual_serror(ticket.ctx.virtual_serror, ras);
        let guest_exit = world_switch::run_guest(&mut ticket.ctx.gprs);
        ticket.ctx.virtual_serror = world_switch::virtual_serror_pending();
        if HALTED.load(Ordering::Relaxed) {
            park_halted(core);
        }
        let esr = regs::esr_el2();
        let ipa = fault_ipa(regs::hpfar_el2(), regs::far_el2());
        if guest_exit.serror || guest_exit.kind == TrapKind::SError {
            log::debug!("vm {vmid}: an SError the guest caused (ESR {esr:#x}): a virtual SError for the guest");
        }
        match vm_exit_dispatcher(guest_exit, esr, ipa, &mut ticket.ctx, &env) {
            VmExit::Resume => {}
            VmExit::Undef { pc } => {
                log::debug!("vm {vmid}: guest exit EC {:#x} at {pc:#x}: UNDEF", super::esr::class(esr));
                inject_undef(&mut ticket.ctx.gprs.frame, pc);
            }
            VmExit::Share { grant, gpa, size } => {
                HOLDS_CONTEXT[core].store(false, Ordering::Release);
                let result = with_kcore(|kcore| {
                    HOLDS_CONTEXT[core].store(true, Ordering::Relaxed);
                    let result = kcore.guest_share(&Aarch64, vmid, grant, gpa, size);
                    // A share call changes ownership records without leaving the guest's world.
                    check_invariants_of(kcore);
                    result
                });
                if let Err(e) = result {
                    info!(
                        "vm {vmid}: {} {gpa:#x}+{size:#x} refused: {e:?}",
                        if grant { "SET_DESC_PFN" } else { "UNSET_DESC_PFN" }
                    );
                }
                ticket.ctx.gprs.frame.x[0] = result.map_or_else(|e| e.status(), |()| Status::Success).as_reg();
            }
            VmExit::ToHost(record) => return record,
        }
    }
}

/// The EL1 loaded on this core (the host's, or a running guest's), as an injection target.
fn loaded_el1() -> inject::El1Target<'static> {
    inject::El1Target { vbar: regs::vbar_el1(), sctlr: regs::sctlr_el1(), cpu: features::boot() }
}

/// Injects an UNDEF into whichever EL1 context is loaded (the host's, or a running guest's).
fn inject_undef(frame: &mut TrapFrame, pc: u64) {
    let injected = inject::undef(frame, pc, loaded_el1());
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

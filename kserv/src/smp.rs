//! KServ on every core: cores 1-3 started with PSCI CPU_ON (through KCore, as `boot` does) and a
//! run queue that all four cores take vCPUs from. The VMs, the scenario's hooks and the queue
//! sit behind one KServ spin lock; a core holds it to pick a vCPU (marking it as its own, so no
//! other core runs it) and to handle the vCPU's exit, never during the VCPU_RUN itself. A VM
//! whose vCPU stopped it is torn down once none of its vCPUs is running on any core.
//!
//! [`Manager::run_all`] stays the single-core path of every other scenario. [`on_every_core`]
//! has the four cores run one scenario's own script instead (`hvc-fuzz`, `smp-race`).

use crate::arch::sync::SpinLock;
use crate::arch::{cpu, gic, hvc, mmu};
use crate::dtb::GicInfo;
use crate::kprintln;
use crate::vmm::{self, Hooks, Manager, MAX_VCPUS, MAX_VMS};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::any::Any;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use corevisor_abi::bundle::VmEntry;
use corevisor_abi::{host_call, psci, Status};

/// The cores KServ runs on (QEMU's `-smp 4`, the Pi 4's four).
pub const CORES: usize = 4;
/// The context value of a core started to take vCPUs from the queue, its number in the low bits
/// (`boot`'s cpu1 gets another value).
pub const WORKER_CONTEXT: u64 = 0x5350_0000;
/// Bounds the waits for other cores (loop counts, not a clock).
const POLLS: u64 = 200_000_000;

static STARTED: AtomicBool = AtomicBool::new(false);
/// Cores 1.. that reached KServ and enabled their timer's interrupt.
static UP: AtomicUsize = AtomicUsize::new(0);
/// Bumped when a run is published in [`WORK`]: workers wait for it to change.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Workers that found the current run finished.
static FINISHED: AtomicUsize = AtomicUsize::new(0);
static GIC: SpinLock<Option<GicInfo>> = SpinLock::new(None);
static WORK: SpinLock<Option<Work>> = SpinLock::new(None);
/// A script every core runs, given its core number ([`on_every_core`]); when none is published,
/// workers take vCPUs from [`WORK`].
type Job = Arc<dyn Fn(usize) + Send + Sync>;
static JOB: SpinLock<Option<Job>> = SpinLock::new(None);

/// VCPU_RUN calls started so far, and how many are in progress on all cores: what tells a core
/// that another core was inside VCPU_RUN during its own run (events, never time).
static RUNS_STARTED: AtomicU64 = AtomicU64::new(0);
static INSIDE: AtomicUsize = AtomicUsize::new(0);

/// A scenario's hooks, shared by the cores (and handed back to it afterwards).
pub trait SharedHooks: Hooks + Send {
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Hooks + Send + 'static> SharedHooks for T {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Who ran what: counted by the core that made each VCPU_RUN.
pub struct Report {
    /// The VM in each slot (slots empty at teardown).
    pub vms: [Option<VmEntry>; MAX_VMS],
    /// Per slot and vCPU: the runs each core made of it.
    pub runs: [[[u64; CORES]; MAX_VCPUS]; MAX_VMS],
    /// Per core: its runs, and those during which another core was inside VCPU_RUN too.
    pub core_runs: [u64; CORES],
    pub overlapped: [u64; CORES],
}

struct Work {
    mgr: Manager,
    hooks: Box<dyn SharedHooks>,
    /// The core running each vCPU, if one is.
    running: [[Option<usize>; MAX_VCPUS]; MAX_VMS],
    /// Where the next search for a runnable vCPU starts, so that no VM is always first.
    turn: usize,
    report: Report,
}

/// What a core does next.
enum Next {
    Run {
        slot: usize,
        vcpu: usize,
        vmid: u64,
        answer: u64,
    },
    /// Nothing to run: wait for the counter to reach this (`u64::MAX`: for another core's exit).
    Wait(u64),
    /// No VM is alive and no vCPU runs.
    Done,
}

impl Work {
    fn next(&mut self, core: usize) -> Next {
        let (mut earliest, mut busy) = (u64::MAX, false);
        self.turn = (self.turn + 1) % (MAX_VMS * MAX_VCPUS);
        for i in 0..MAX_VMS * MAX_VCPUS {
            let at = (self.turn + i) % (MAX_VMS * MAX_VCPUS);
            let (slot, vcpu) = (at / MAX_VCPUS, at % MAX_VCPUS);
            if self.running[slot][vcpu].is_some() {
                busy = true;
                continue;
            }
            let Some(vm) = self.mgr.vms[slot].as_mut().filter(|vm| vm.alive) else { continue };
            if !vm.ready(vcpu, &mut earliest) {
                continue;
            }
            self.running[slot][vcpu] = Some(core);
            self.report.vms[slot] = Some(vm.entry);
            let answer = vmm::begin_run(vm, vcpu);
            return Next::Run { slot, vcpu, vmid: vm.vmid, answer };
        }
        match (earliest, busy) {
            (u64::MAX, false) => Next::Done,
            (t, _) => Next::Wait(t),
        }
    }

    fn finish(&mut self, core: usize, slot: usize, vcpu: usize, record: [u64; 6], overlapped: bool) {
        self.running[slot][vcpu] = None;
        self.report.runs[slot][vcpu][core] += 1;
        self.report.core_runs[core] += 1;
        self.report.overlapped[core] += u64::from(overlapped);
        let Some(vm) = self.mgr.vms[slot].as_mut() else {
            // A VM is torn down only when none of its vCPUs runs: this one did.
            panic!("vm slot {slot} emptied while its vcpu {vcpu} ran on core {core}");
        };
        vmm::end_run(vm, vcpu, record, &mut *self.hooks);
        if vm.alive {
            self.hooks.after_exit(vm);
        } else if self.running[slot].iter().all(Option::is_none) {
            self.mgr.retire(slot);
        }
    }
}

/// Starts cores 1..[`CORES`] in KServ (PSCI CPU_ON through KCore) and has each, and this core,
/// enable its physical timer's interrupt so that it can idle in WFI. Once per boot.
pub fn start_cores(gic: &GicInfo) -> Result<(), &'static str> {
    if STARTED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    *GIC.lock() = Some(*gic);
    gic::enable_ppi(gic, gic::TIMER_PPI);
    for core in 1..CORES as u64 {
        let on = hvc::psci(psci::CPU_ON_64, [core, cpu::secondary_entry(), WORKER_CONTEXT | core]);
        if on != Status::Success.as_reg() {
            kprintln!("smp: PSCI CPU_ON of cpu{core} failed ({on:#x})");
            return Err("PSCI CPU_ON of a core failed");
        }
    }
    wait_for(|| UP.load(Ordering::Acquire) == CORES - 1).ok_or("a core never reached KServ")?;
    kprintln!("smp: cores 1-{} up in KServ, each with its timer interrupt enabled", CORES - 1);
    Ok(())
}

/// Whether `context` is one [`start_cores`] gives.
pub fn is_worker(context: u64) -> bool {
    context & !0xff == WORKER_CONTEXT
}

/// A core started by [`start_cores`], from boot.S: takes vCPUs from each published run.
pub fn worker_main() -> ! {
    mmu::enable();
    let core = cpu::core_index();
    let gic = *GIC.lock();
    if let Some(gic) = gic {
        gic::enable_ppi(&gic, gic::TIMER_PPI);
    }
    UP.fetch_add(1, Ordering::Release);
    let mut seen = 0;
    loop {
        while GENERATION.load(Ordering::Acquire) == seen {
            cpu::wait_for_event();
        }
        seen = GENERATION.load(Ordering::Acquire);
        let job = JOB.lock().clone();
        match job {
            Some(job) => job(core),
            None => take_vcpus(core),
        }
        FINISHED.fetch_add(1, Ordering::Release);
    }
}

/// Runs every live VM of `mgr` on all cores until none is left ([`start_cores`] first). Returns
/// the manager, the hooks and who ran what.
pub fn run_all<H: Hooks + Send + 'static>(mgr: Manager, hooks: H) -> Result<(Manager, H, Report), &'static str> {
    if UP.load(Ordering::Acquire) != CORES - 1 {
        return Err("smp::run_all before start_cores");
    }
    let report = Report {
        vms: [None; MAX_VMS],
        runs: [[[0; CORES]; MAX_VCPUS]; MAX_VMS],
        core_runs: [0; CORES],
        overlapped: [0; CORES],
    };
    let work = Work { mgr, hooks: Box::new(hooks), running: [[None; MAX_VCPUS]; MAX_VMS], turn: 0, report };
    FINISHED.store(0, Ordering::SeqCst);
    *WORK.lock() = Some(work);
    GENERATION.fetch_add(1, Ordering::Release);
    cpu::send_event();
    take_vcpus(cpu::core_index());
    wait_for(|| FINISHED.load(Ordering::Acquire) == CORES - 1).ok_or("a core never finished the run")?;
    let work = WORK.lock().take().ok_or("the run's state is gone")?;
    let hooks = work.hooks.into_any().downcast::<H>().map_err(|_| "the run's hooks changed type")?;
    Ok((work.mgr, *hooks, work.report))
}

/// Runs `job(core)` on all [`CORES`] cores at once ([`start_cores`] first), this one included,
/// and returns once every core has finished it.
pub fn on_every_core(job: impl Fn(usize) + Send + Sync + 'static) -> Result<(), &'static str> {
    if UP.load(Ordering::Acquire) != CORES - 1 {
        return Err("smp::on_every_core before start_cores");
    }
    let job: Job = Arc::new(job);
    FINISHED.store(0, Ordering::SeqCst);
    *JOB.lock() = Some(job.clone());
    GENERATION.fetch_add(1, Ordering::Release);
    cpu::send_event();
    job(cpu::core_index());
    let finished = wait_for(|| FINISHED.load(Ordering::Acquire) == CORES - 1);
    *JOB.lock() = None;
    finished.ok_or("a core never finished its script")
}

/// Where the cores of an [`on_every_core`] script meet: a core's n-th [`Rendezvous::meet`]
/// returns once every core has made its n-th (arrivals counted, no clock). Every core must meet
/// as often as the others, failures included.
pub struct Rendezvous(AtomicUsize);

impl Rendezvous {
    pub const fn new() -> Rendezvous {
        Rendezvous(AtomicUsize::new(0))
    }

    pub fn meet(&self) -> Result<(), &'static str> {
        let arrived = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let everyone = arrived.div_ceil(CORES) * CORES;
        wait_for(|| self.0.load(Ordering::SeqCst) >= everyone).ok_or("a core never reached a rendezvous")
    }
}

impl Default for Rendezvous {
    fn default() -> Rendezvous {
        Rendezvous::new()
    }
}

/// Takes vCPUs from the run until it is done.
fn take_vcpus(core: usize) {
    loop {
        let next = WORK.lock().as_mut().map_or(Next::Done, |work| work.next(core));
        match next {
            Next::Run { slot, vcpu, vmid, answer } => {
                let started = RUNS_STARTED.fetch_add(1, Ordering::SeqCst);
                let others_inside = INSIDE.fetch_add(1, Ordering::SeqCst) != 0;
                let record = hvc::hyp_call_wide(host_call::VCPU_RUN, [vmid, vcpu as u64, answer, 0]);
                INSIDE.fetch_sub(1, Ordering::SeqCst);
                let others_started = RUNS_STARTED.load(Ordering::SeqCst) != started + 1;
                if let Some(work) = WORK.lock().as_mut() {
                    work.finish(core, slot, vcpu, record, others_inside || others_started);
                }
            }
            // Every core's timer interrupt is enabled: WFI until the earliest vCPU deadline.
            Next::Wait(deadline) if deadline != u64::MAX => gic::idle_until(deadline),
            // Every vCPU that could run is running on another core: look again soon.
            Next::Wait(_) => cpu::relax(),
            Next::Done => return,
        }
    }
}

/// Polls `done` a bounded number of times; `None` if it never held.
fn wait_for(done: impl Fn() -> bool) -> Option<()> {
    (0..POLLS).find(|_| {
        cpu::relax();
        done()
    })?;
    Some(())
}

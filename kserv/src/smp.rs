//! KServ on every core: cores 1-3 started with PSCI CPU_ON (through KCore, as `boot` does) and a
//! run queue that all four cores take vCPUs from. The VMs, the scenario's hooks and the queue
//! sit behind one KServ spin lock; a core holds it to pick a vCPU (marking it as its own, so no
//! other core runs it) and to handle the vCPU's exit, never during the VCPU_RUN itself. A VM
//! whose vCPU stopped it is torn down once none of its vCPUs is running on any core.
//!
//! With [`Placement::VcpuPerCore`] (a Linux VM) vCPU i runs on core i only, for as long as it
//! does not exit by itself. What another core does for it (an interrupt its GIC model makes
//! pending for it, a PSCI CPU_ON of it, its VM stopping) then reaches it by a cross-core kick:
//! that core sends [`gic::KICK_SGI`] to core i, whose guest exits to KCore (the SGI is a physical
//! IRQ that no guest state explains) and so back to KServ on core i, which injects what waits
//! before the next VCPU_RUN; a core idling in WFI wakes the same way. The SGI stays pending until
//! its core takes it ([`gic::take_kicks`]), after which that core looks at its vCPU again under
//! the lock: a kick sent after the look finds the SGI pending at the next WFI or VCPU_RUN, so
//! none is lost.
//!
//! [`Manager::run_all`] stays the single-core path of every other scenario. [`on_every_core`]
//! has the four cores run one scenario's own script instead (`hvc-fuzz`, `smp-race`), and
//! [`run_on_cores`] a bench's job on some of them (`bench-contention`).

use crate::arch::sync::SpinLock;
use crate::arch::{cpu, gic, hvc, mmu};
use crate::dtb::GicInfo;
use crate::exit_meter::ExitMeter;
use crate::kprintln;
use crate::vmm::{self, Hooks, Manager, VcpuRun, MAX_VCPUS, MAX_VMS};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::any::Any;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use corevisor_abi::bundle::VmEntry;
use corevisor_abi::{exit, psci, Status};

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
/// The GIC, and the private interrupts every core enables for itself (besides the kick).
static GIC: SpinLock<Option<(GicInfo, &'static [u64])>> = SpinLock::new(None);
static WORK: SpinLock<Option<Work>> = SpinLock::new(None);
/// A script every core runs, given its core number ([`on_every_core`]); when none is published,
/// workers take vCPUs from [`WORK`].
type Job = Arc<dyn Fn(usize) + Send + Sync>;
static JOB: SpinLock<Option<Job>> = SpinLock::new(None);
/// Cores that run the current [`run_on_cores`] job.
static JOB_CORES: AtomicUsize = AtomicUsize::new(0);
/// Cores that reached the current job's start ([`job_start`]).
static JOB_ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// Samples finished so far by every core of the current job ([`job_sample`]).
static JOB_SAMPLES: AtomicU64 = AtomicU64::new(0);
/// Whether the current job's samples end their core's turn inside them ([`job_sample`]).
static FORCE_TURNS: AtomicBool = AtomicBool::new(false);

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
    /// Cross-core kicks sent to a core while its vCPU ran there, and to a core idling for its
    /// vCPU (in WFI, or between runs); kicks each core took (acknowledged).
    pub kicks_to_running: u64,
    pub kicks_to_idle: u64,
    pub kicks_taken: [u64; CORES],
    /// Each core's PMU readings around its VCPU_RUNs, in a metered run ([`run_all`]).
    pub meters: [Option<ExitMeter>; CORES],
}

/// Which core runs which vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Any core takes any runnable vCPU from the queue (`smp-vms`).
    Shared,
    /// vCPU i runs on core i only, until it exits by itself (no time slice: it has the core to
    /// itself); other cores kick it (a Linux VM of up to [`CORES`] vCPUs, `linux-smp`).
    VcpuPerCore,
}

struct Work {
    mgr: Manager,
    placement: Placement,
    metered: bool,
    gic: GicInfo,
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
        if self.placement == Placement::VcpuPerCore {
            return self.next_of_own_core(core);
        }
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
            return self.start(core, slot, vcpu);
        }
        match (earliest, busy) {
            (u64::MAX, false) => Next::Done,
            (t, _) => Next::Wait(t),
        }
    }

    /// [`Placement::VcpuPerCore`]: vCPU `core` of a live VM if it may run; else done once no VM
    /// is alive and no vCPU runs (a VM whose vCPU is off may still power it on), else wait.
    fn next_of_own_core(&mut self, core: usize) -> Next {
        let mut earliest = u64::MAX;
        for slot in 0..MAX_VMS {
            let Some(vm) = self.mgr.vms[slot].as_mut().filter(|vm| vm.alive) else { continue };
            if core < MAX_VCPUS && self.running[slot][core].is_none() && vm.ready(core, &mut earliest) {
                return self.start(core, slot, core);
            }
        }
        let alive = self.mgr.vms.iter().flatten().any(|vm| vm.alive);
        let busy = self.running.iter().flatten().any(Option::is_some);
        match (alive, busy) {
            (false, false) => Next::Done,
            _ => Next::Wait(earliest),
        }
    }

    /// Marks `vcpu` of `slot` as running on `core` and prepares its run.
    fn start(&mut self, core: usize, slot: usize, vcpu: usize) -> Next {
        let Some(vm) = self.mgr.vms[slot].as_mut() else { return Next::Wait(u64::MAX) };
        self.running[slot][vcpu] = Some(core);
        self.report.vms[slot] = Some(vm.entry);
        let answer = vmm::begin_run(vm, vcpu, self.placement == Placement::Shared);
        Next::Run { slot, vcpu, vmid: vm.vmid, answer }
    }

    fn finish(&mut self, core: usize, slot: usize, vcpu: usize, record: [u64; 18], overlapped: bool) {
        self.running[slot][vcpu] = None;
        self.report.runs[slot][vcpu][core] += 1;
        self.report.core_runs[core] += 1;
        self.report.overlapped[core] += u64::from(overlapped);
        let Some(vm) = self.mgr.vms[slot].as_mut() else {
            // A VM is torn down only when none of its vCPUs runs: this one did.
            panic!("vm slot {slot} emptied while its vcpu {vcpu} ran on core {core}");
        };
        let off_before = vm.vcpus.map(|v| v == VcpuRun::Off);
        vmm::end_run(vm, vcpu, record, &mut *self.hooks);
        // The vCPUs this exit gave something to do: an interrupt made pending for them, a
        // power-on; all of them when the VM stopped (they must exit so that it can go).
        let raised = vm.linux.as_mut().map_or(0, |devices| devices.sink.take_raised());
        let mut woken = 0u32;
        for (v, was_off) in off_before.iter().enumerate() {
            let powered_on = *was_off && vm.vcpus[v] != VcpuRun::Off;
            if raised & 1 << v != 0 || powered_on || !vm.alive {
                woken |= 1 << v;
            }
        }
        if vm.alive {
            self.hooks.after_exit(vm);
        } else if self.running[slot].iter().all(Option::is_none) {
            self.mgr.retire(slot);
        }
        if self.placement == Placement::VcpuPerCore {
            let done = self.mgr.vms[slot].is_none();
            for v in (0..MAX_VCPUS).filter(|&v| done || woken & 1 << v != 0) {
                self.kick(core, slot, v);
            }
        }
    }

    /// Kicks the core of vCPU `vcpu` of `slot` ([`Placement::VcpuPerCore`]: core `vcpu`) unless
    /// it is this core, which looks at its vCPU again anyway.
    fn kick(&mut self, core: usize, slot: usize, vcpu: usize) {
        if vcpu == core || vcpu >= CORES {
            return;
        }
        match self.running[slot][vcpu] {
            Some(_) => self.report.kicks_to_running += 1,
            None => self.report.kicks_to_idle += 1,
        }
        gic::kick(&self.gic, vcpu);
    }
}

/// Starts cores 1..[`CORES`] in KServ (PSCI CPU_ON through KCore) and has each, and this core,
/// enable the private interrupts `ppis` (the physical timer's at least, so that it can idle in
/// WFI) and the kick. Once per boot.
pub fn start_cores(gic: &GicInfo, ppis: &'static [u64]) -> Result<(), &'static str> {
    if STARTED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    *GIC.lock() = Some((*gic, ppis));
    enable_interrupts(gic, ppis);
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

/// This core's share of [`start_cores`]: `ppis` and the kick enabled at its GIC interface.
fn enable_interrupts(gic: &GicInfo, ppis: &[u64]) {
    for &ppi in ppis {
        gic::enable_ppi(gic, ppi);
    }
    gic::enable_kick(gic);
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
    if let Some((gic, ppis)) = gic {
        enable_interrupts(&gic, ppis);
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

/// Runs every live VM of `mgr` on all cores, placed as `placement` says, until none is left
/// ([`start_cores`] first). Returns the manager, the hooks and who ran what. When `metered`,
/// each core starts its PMU counters and reads them around its every VCPU_RUN
/// ([`Report::meters`]).
pub fn run_all<H: Hooks + Send + 'static>(
    mgr: Manager,
    hooks: H,
    placement: Placement,
    metered: bool,
) -> Result<(Manager, H, Report), &'static str> {
    let gic = match *GIC.lock() {
        Some((gic, _)) if UP.load(Ordering::Acquire) == CORES - 1 => gic,
        _ => return Err("smp::run_all before start_cores"),
    };
    let report = Report {
        vms: [None; MAX_VMS],
        runs: [[[0; CORES]; MAX_VCPUS]; MAX_VMS],
        core_runs: [0; CORES],
        overlapped: [0; CORES],
        kicks_to_running: 0,
        kicks_to_idle: 0,
        kicks_taken: [0; CORES],
        meters: [const { None }; CORES],
    };
    let running = [[None; MAX_VCPUS]; MAX_VMS];
    let work = Work { mgr, placement, metered, gic, hooks: Box::new(hooks), running, turn: 0, report };
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

/// Runs `job` on cores 0..`cores` ([`start_cores`] first), this core (0) included, and returns
/// once every core has finished it. The job calls [`job_start`] to begin with the others, and
/// [`job_sample`] for each sample, which with `force_turns` ends the core's turn inside it.
pub fn run_on_cores(job: fn(usize), cores: usize, force_turns: bool) -> Result<(), &'static str> {
    if UP.load(Ordering::Acquire) != CORES - 1 {
        return Err("smp::run_on_cores before start_cores");
    }
    if !(1..=CORES).contains(&cores) || cpu::core_index() != 0 {
        return Err("smp::run_on_cores: 1 to 4 cores, from core 0");
    }
    FINISHED.store(0, Ordering::SeqCst);
    JOB_ARRIVED.store(0, Ordering::SeqCst);
    JOB_SAMPLES.store(0, Ordering::SeqCst);
    FORCE_TURNS.store(force_turns, Ordering::SeqCst);
    JOB_CORES.store(cores, Ordering::SeqCst);
    on_every_core(move |core| {
        if core < cores {
            job(core)
        }
    })
}

/// Waits until every core of the current job has called this: the cores start their measured
/// part together. Bounded; `false` if some core never came.
pub fn job_start() -> bool {
    let cores = JOB_CORES.load(Ordering::SeqCst);
    JOB_ARRIVED.fetch_add(1, Ordering::AcqRel);
    wait_for(|| JOB_ARRIVED.load(Ordering::Acquire) >= cores).is_some()
}

/// Runs one measured sample of a job; also says whether another core finished a sample while
/// this one ran: that its work overlapped another core's (events, never time).
///
/// Under QEMU's icount a core runs until its turn ends; a turn is long enough for a core to make
/// every sample before the next core starts. So in a job run with `force_turns`, each sample
/// first arms this core's timer, masked, to go off `ticks` into it: its turn ends there and the
/// next core's begins, in the middle of this core's work.
pub fn job_sample<T>(ticks: u64, sample: impl FnOnce() -> T) -> (T, bool) {
    let force = FORCE_TURNS.load(Ordering::SeqCst);
    let before = JOB_SAMPLES.load(Ordering::SeqCst);
    if force {
        gic::arm_masked_timer(ticks);
    }
    let result = sample();
    if force {
        gic::disarm_physical_timer();
    }
    let overlapped = JOB_SAMPLES.fetch_add(1, Ordering::SeqCst) != before;
    (result, overlapped)
}

/// The timer ticks [`job_sample`] arms for sample `sample` of core `core`: spread over
/// `1..=span`, differently for each core, so that turns end all over the measured work.
pub fn turn_ticks(core: usize, sample: usize, span: u64) -> u64 {
    1 + (sample as u64 * 7 + core as u64 * 13) % span.max(1)
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
    // The GIC, when this run's cores kick each other.
    let kickable = WORK.lock().as_ref().and_then(|work| (work.placement == Placement::VcpuPerCore).then_some(work.gic));
    let mut meter = WORK.lock().as_ref().and_then(|work| work.metered.then(ExitMeter::new));
    if meter.is_some() {
        crate::arch::pmu::start_el2_instruction_counter();
        crate::arch::pmu::start_all_el_instruction_counter();
        crate::arch::pmu::start_every_el_instruction_counter();
    }
    loop {
        let next = WORK.lock().as_mut().map_or(Next::Done, |work| work.next(core));
        match next {
            Next::Run { slot, vcpu, vmid, answer } => {
                let started = RUNS_STARTED.fetch_add(1, Ordering::SeqCst);
                let others_inside = INSIDE.fetch_add(1, Ordering::SeqCst) != 0;
                if let Some(meter) = meter.as_mut() {
                    meter.before_run(vmm::pmu_counts());
                }
                let record = hvc::vcpu_run(vmid, vcpu as u64, answer);
                if let Some(meter) = meter.as_mut() {
                    meter.after_run(vmm::pmu_counts(), record[1], record[2]);
                }
                INSIDE.fetch_sub(1, Ordering::SeqCst);
                let others_started = RUNS_STARTED.load(Ordering::SeqCst) != started + 1;
                // A kick ends the run as a physical IRQ: taken here, before the exit is handled.
                let kicks = match kickable {
                    Some(gic) if record[1] == exit::IRQ => gic::take_kicks(&gic),
                    _ => 0,
                };
                if let Some(work) = WORK.lock().as_mut() {
                    work.report.kicks_taken[core] += kicks;
                    work.finish(core, slot, vcpu, record, others_inside || others_started);
                }
            }
            // Sleep until this core's vCPU's deadline or a kick, then look again.
            Next::Wait(deadline) if kickable.is_some() => {
                let Some(gic) = kickable else { continue };
                // The PMU counts the whole machine: what the other cores run while this one
                // waits is kept apart from this core's exit costs.
                let before = meter.as_ref().map(|_| vmm::pmu_counts());
                gic::wait_for_kick(deadline);
                if let (Some(meter), Some(before)) = (meter.as_mut(), before) {
                    meter.idle(before, vmm::pmu_counts());
                }
                let kicks = gic::take_kicks(&gic);
                if let Some(work) = WORK.lock().as_mut() {
                    work.report.kicks_taken[core] += kicks;
                }
            }
            // Every core's timer interrupt is enabled: WFI until the earliest vCPU deadline.
            Next::Wait(deadline) if deadline != u64::MAX => gic::idle_until(deadline),
            // Every vCPU that could run is running on another core: look again soon.
            Next::Wait(_) => cpu::relax(),
            Next::Done => {
                if let Some(work) = WORK.lock().as_mut() {
                    work.report.meters[core] = meter;
                }
                return;
            }
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

//! Host concurrency tests (issue 14, part 4): threads stand for cores. They share one `Kcore`
//! and the model machine as the trap handler's cores share KCore's state: through its own locks
//! (the VM's, then `Kcore::mem`), each call taking those it needs. Each thread makes a random
//! sequence of the calls the specs cover, each for one of two VMs: VCPU_RUN (prepare and finish,
//! two calls with the guest running in between, no lock held) with page answers, guest shares
//! and unshares, host stage-2 faults, power-off, CLEAR_VM_S2_RANGE and destroy. Calls for the two
//! VMs take different VM locks and meet only at the ownership lock; calls for one VM race on its
//! lock. Every call is recorded with its invocation and response on a shared clock.
//!
//! At the quiescent point after the threads join: SeKVM's invariants hold, and the history is
//! linearizable: some serial order of the calls that respects real time (a call that returned
//! before another was invoked comes first) reproduces every result on the specs and ends in the
//! spec state that the concrete state abstracts to. Planted bugs: a host fault handler whose
//! ownership check and mapping are two critical sections (`Kcore::host_stage2_fault`), and a
//! lock-order inversion.
//!
//! The threads take turns ([`Turns`]): one runs at a time, and at every point where a core could
//! be overtaken the next thread is the one a drawn schedule names. Those points are a call's
//! invocation and return, the guest's run, and every lock KCore takes (`machine::sync::turns`,
//! so a call's critical sections interleave with other threads' calls); a thread spinning on a
//! lock that a descheduled thread holds gives its turn to another thread. The interleaving is
//! then part of the test's input: it does not depend on how many CPUs the test machine has or
//! how its OS schedules (on one CPU, free-running threads hardly ever met), and a failing case
//! replays.

use super::refinement::{boot_vm1, refined_run, relate, run_ops, VOp, FAULTED_GFN, GUEST_RAM, GUEST_RAM_SIZE};
use super::spec::*;
use super::*;
use crate::machine::model::ModelMachine;
use crate::machine::sync::{turns, LockRank, TicketLock};
use crate::memory::spec::map_page_host_spec;
use crate::memory::HostMapPolicy;
use crate::mutation::{catches, planted, with, Mutation};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};

/// Threads (cores) per history.
const THREADS: usize = 3;
/// The VMs the histories run: VM 1 booted with two vCPUs, each waiting for a page; VM 2 with one,
/// waiting for a page.
const VMS: [u16; 2] = [1, 2];
/// VM 2's image page, and its image's length: short, so that the spec's memory (which the
/// linearizability search fingerprints at every state) stays small.
const VM2_IMAGE: (u64, u64) = (0x48001, 16);
/// Free host pages that the calls offer to the guests and fault on; and a page VM 1 has.
const PAGES: [u64; 3] = [0x48102, 0x48103, 0x48104];
const VM_PAGE: u64 = 0x48100;
/// The 2 MiB of RAM that CLEAR_VM_S2_RANGE returns: every page above.
const CLEARED: (u64, u64) = (0x4800_0000, 0x20_0000);

/// One call a thread makes; `vm` is the VM's id.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// VCPU_RUN of VM `vm`'s vCPU `vcpu` answering `answer`; if it runs, the guest exits waiting
    /// for `exit`.
    Run {
        vm: u16,
        vcpu: u64,
        answer: u64,
        exit: Pending,
    },
    /// The guest's share (or unshare) of its page `gfn`.
    Share {
        vm: u16,
        grant: bool,
        gfn: u64,
    },
    /// A host stage-2 fault on page `pfn`.
    HostFault {
        pfn: u64,
    },
    PowerOff {
        vm: u16,
    },
    /// CLEAR_VM_S2_RANGE over the 2 MiB of RAM that holds the pages above.
    Clear {
        vm: u16,
    },
    Destroy {
        vm: u16,
    },
    /// REGISTER_VM of a new VM (with the others' RAM window): vmid allocation under `core`.
    Register,
}

/// One atomic step of KCore, as a history records it.
#[derive(Clone, Copy, Debug)]
enum Step {
    Prepare { vm: u16, vcpu: u64, answer: u64 },
    Finish { vm: u16, vcpu: u64, exit: Pending },
    Share { vm: u16, grant: bool, gfn: u64 },
    HostFault { pfn: u64 },
    PowerOff { vm: u16 },
    Clear { vm: u16 },
    Destroy { vm: u16 },
    Register,
}

impl Step {
    /// The VM whose lock the step takes (a host fault takes none).
    fn vm(self) -> Option<u16> {
        match self {
            Step::Prepare { vm, .. } | Step::Finish { vm, .. } | Step::Share { vm, .. } => Some(vm),
            Step::PowerOff { vm } | Step::Clear { vm } | Step::Destroy { vm } => Some(vm),
            Step::HostFault { .. } | Step::Register => None,
        }
    }
}

#[derive(Clone, Debug)]
struct Event {
    thread: usize,
    step: Step,
    /// The result, as `Debug` prints it (the specs' results print the same).
    result: String,
    invoked: u64,
    returned: u64,
}

/// The bugs a history may plant (read on the test's thread: `planted` is per thread).
#[derive(Clone, Copy)]
struct Bugs {
    /// A bug in KCore's calls, planted on every thread.
    in_kcore: Option<Mutation>,
    inverted: bool,
}

/// What the threads hold in common: KCore's state (with its locks) and the machine it runs on.
struct Shared {
    m: ModelMachine,
    k: Kcore,
    /// The history, logged as the console is: under any lock, so ranked last.
    history: TicketLock<Vec<Event>>,
    clock: AtomicU64,
    bugs: Bugs,
    turns: Turns,
}

/// Turn-taking for the threads of one history: exactly one runs between hand-overs, and each
/// hand-over goes to the runnable thread that the schedule's next entry names.
struct Turns {
    state: Mutex<TurnState>,
    changed: Condvar,
}

struct TurnState {
    current: usize,
    finished: [bool; THREADS],
    schedule: Vec<u8>,
    next: usize,
}

impl Turns {
    fn new(schedule: Vec<u8>) -> Self {
        let state = TurnState { current: 0, finished: [false; THREADS], schedule, next: 0 };
        Turns { state: Mutex::new(state), changed: Condvar::new() }
    }

    /// Blocks until it is `me`'s turn.
    fn wait(&self, me: usize) {
        let mut state = self.state.lock().unwrap();
        while state.current != me {
            state = self.changed.wait(state).unwrap();
        }
    }

    /// A point where another core could overtake `me`: hands the turn over as the schedule says
    /// (possibly back to `me`) and waits for it to come back.
    fn point(&self, me: usize) {
        self.hand_over(me, false);
        self.wait(me);
    }

    /// `me` spins on a lock that another thread holds: the turn goes to another thread (the
    /// holder is among them, descheduled), as the schedule says, and comes back later.
    fn spin(&self, me: usize) {
        self.hand_over(me, true);
        self.wait(me);
    }

    /// `me` has finished: the others take their turns without it.
    fn finish(&self, me: usize) {
        self.hand_over_from(me, true, true);
    }

    fn hand_over(&self, me: usize, skip_me: bool) {
        self.hand_over_from(me, false, skip_me);
    }

    /// Hands the turn to a runnable thread (other than `me` if `skip_me`): the schedule's next
    /// entry picks it; past the schedule's end, the next runnable thread after `me` does, so a
    /// spinning thread always lets the holder run eventually.
    fn hand_over_from(&self, me: usize, finished: bool, skip_me: bool) {
        let mut state = self.state.lock().unwrap();
        state.finished[me] |= finished;
        let runnable: Vec<usize> = (0..THREADS).filter(|&t| !(state.finished[t] || skip_me && t == me)).collect();
        if runnable.is_empty() {
            return;
        }
        let after_me = runnable.iter().position(|&t| t > me).unwrap_or(0);
        let pick = state.schedule.get(state.next).map_or(after_me, |&c| usize::from(c) % runnable.len());
        state.next += 1;
        state.current = runnable[pick];
        self.changed.notify_all();
    }
}

/// Hands the turn on when its thread ends, also when it ends by halting, so the others run on.
struct Finished<'a>(&'a Turns, usize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

fn id(vm: u16) -> VmId {
    VmId::new(vm.into()).unwrap()
}

/// Every VM's RAM window.
fn ram() -> IpaRange {
    IpaRange::new(GUEST_RAM, GUEST_RAM_SIZE).unwrap()
}

impl Shared {
    /// Makes every lock this thread takes a point of `me`'s ([`Turns::point`] before the ticket,
    /// [`Turns::spin`] while waiting for it).
    fn hook_locks(self: &Arc<Self>, me: usize) {
        let (at_point, at_spin) = (Arc::clone(self), Arc::clone(self));
        turns::set(Some(turns::Hooks {
            point: Box::new(move || at_point.turns.point(me)),
            waiting: Box::new(move || at_spin.turns.spin(me)),
        }));
    }

    /// Runs call `f` (which takes KCore's locks as the trap handler's does) and logs it.
    fn call<R>(&self, thread: usize, step: Step, f: impl FnOnce(&Shared) -> R, show: impl Fn(&R) -> String) -> R {
        let invoked = self.clock.fetch_add(1, SeqCst);
        self.turns.point(thread);
        let log = |r: &R| {
            let returned = self.clock.fetch_add(1, SeqCst);
            Event { thread, step, result: show(r), invoked, returned }
        };
        let r = if self.bugs.inverted {
            // The history's console-ranked lock held across the call's KCore locks.
            let mut history = self.history.lock();
            let r = f(self);
            history.push(log(&r));
            r
        } else {
            let r = f(self);
            let event = log(&r);
            self.history.lock().push(event);
            r
        };
        self.turns.point(thread);
        r
    }

    fn run(&self, thread: usize, calls: &[Call]) {
        let unit = |r: &Result<(), VmError>| format!("{r:?}");
        for &call in calls {
            match call {
                Call::Run { vm, vcpu, answer, exit } => {
                    let vcpu_id = VcpuId::new(vcpu).unwrap();
                    let prepared = self.call(
                        thread,
                        Step::Prepare { vm, vcpu, answer },
                        |w| w.k.vcpu_run_prepare(&w.m, id(vm), vcpu_id, answer),
                        |r| unit(&r.as_ref().map(|_| ()).map_err(|e| *e)),
                    );
                    if let Ok(mut ticket) = prepared {
                        // The guest runs, with no lock held, and exits.
                        self.turns.point(thread);
                        ticket.ctx.pending = exit;
                        let finish = |w: &Shared| w.k.vcpu_run_finish(ticket);
                        self.call(thread, Step::Finish { vm, vcpu, exit }, finish, |_| "()".into());
                    }
                }
                Call::Share { vm, grant, gfn } => {
                    let share = |w: &Shared| w.k.guest_share(&w.m, id(vm), grant, Ipa(gfn << 12), PAGE_SIZE);
                    let _ = self.call(thread, Step::Share { vm, grant, gfn }, share, unit);
                }
                Call::HostFault { pfn } => {
                    let fault = |w: &Shared| w.k.host_stage2_fault(&w.m, pfn << 12);
                    let _ = self.call(thread, Step::HostFault { pfn }, fault, |r| format!("{r:?}"));
                }
                Call::PowerOff { vm } => {
                    let _ = self.call(thread, Step::PowerOff { vm }, |w| w.k.power_off(id(vm)), unit);
                }
                Call::Clear { vm } => {
                    let clear = |w: &Shared| w.k.clear_vm_range(&w.m, id(vm), Pa::new(CLEARED.0).unwrap(), CLEARED.1);
                    let _ = self.call(thread, Step::Clear { vm }, clear, |r| format!("{r:?}"));
                }
                Call::Destroy { vm } => {
                    let destroy = |w: &Shared| w.k.destroy(&w.m, id(vm));
                    let _ = self.call(thread, Step::Destroy { vm }, destroy, |r| format!("{r:?}"));
                }
                Call::Register => {
                    let register = |w: &Shared| w.k.register_vm(&w.m, ram());
                    let _ = self.call(thread, Step::Register, register, |r| format!("{r:?}"));
                }
            }
        }
    }
}

/// The step on the spec: the next state and the result as `Debug` prints it; `None` if the
/// step cannot come next (a precondition of the spec's is broken).
fn spec_step(s: &AbsKcore, step: Step) -> Option<(AbsKcore, String)> {
    let vcpu_id = |vcpu: u64| VcpuId::new(vcpu).unwrap();
    match step {
        Step::Prepare { vm, vcpu, answer } => {
            vcpu_run_prepare_spec(s, id(vm), vcpu_id(vcpu), answer).map(|(s, r)| (s, format!("{r:?}")))
        }
        Step::Finish { vm, vcpu, exit } => {
            vcpu_run_finish_spec(s, id(vm), vcpu_id(vcpu), exit).map(|s| (s, "()".into()))
        }
        Step::Share { vm, grant, gfn } => {
            guest_share_spec(s, id(vm), grant, Ipa(gfn << 12), PAGE_SIZE).map(|(s, r)| (s, format!("{r:?}")))
        }
        Step::HostFault { pfn } => {
            let (r, result) = map_page_host_spec(&s.r, pfn << 12)?;
            Some((AbsKcore { r, ..s.clone() }, format!("{result:?}")))
        }
        Step::PowerOff { vm } => power_off_spec(s, id(vm)).map(|(s, r)| (s, format!("{r:?}"))),
        Step::Clear { vm } => {
            clear_vm_range_spec(s, id(vm), Pa::new(CLEARED.0).unwrap(), CLEARED.1).map(|(s, r)| (s, format!("{r:?}")))
        }
        Step::Destroy { vm } => destroy_spec(s, id(vm)).map(|(s, r)| (s, format!("{r:?}"))),
        Step::Register => register_vm_spec(s, ram()).map(|(s, r)| (s, format!("{r:?}"))),
    }
}

fn fingerprint(next: &[usize], s: &AbsKcore) -> (Vec<usize>, u64) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{s:?}").hash(&mut h);
    (next.to_vec(), h.finish())
}

/// Searches for a serial order of `threads`' events (each thread's in its order) that respects
/// real time, reproduces every result on the spec from `s`, and ends in a state `end` accepts.
fn linearizable(
    s: &AbsKcore,
    threads: &[Vec<Event>],
    next: &mut Vec<usize>,
    seen: &mut HashSet<(Vec<usize>, u64)>,
    end: &dyn Fn(&AbsKcore) -> bool,
) -> bool {
    let heads: Vec<&Event> = threads.iter().zip(next.iter()).filter_map(|(t, &i)| t.get(i)).collect();
    if heads.is_empty() {
        return end(s);
    }
    if !seen.insert(fingerprint(next, s)) {
        return false;
    }
    // A step may come next only if no step still to come returned before it was invoked (each
    // thread's head returned first among its own).
    let first_return = heads.iter().map(|e| e.returned).min().unwrap();
    for t in 0..threads.len() {
        let Some(e) = threads[t].get(next[t]) else { continue };
        if e.invoked > first_return {
            continue;
        }
        let Some((after, result)) = spec_step(s, e.step) else { continue };
        if result != e.result {
            continue;
        }
        next[t] += 1;
        let found = linearizable(&after, threads, next, seen, end);
        next[t] -= 1;
        if found {
            return true;
        }
    }
    false
}

/// VM 1 booted with two vCPUs, pages +8 and +9 faulted in, vCPU 0 waiting for page +10 and
/// vCPU 1 (powered on by vCPU 0) for page +11; VM 2 booted with one vCPU, waiting for page +10.
fn booted() -> Vec<VOp> {
    let fault = |i| Pending::PageFault { gfn: FAULTED_GFN + i };
    let mut ops = boot_vm1();
    ops.extend([
        VOp::Run(1, 0, 0, fault(0)),
        VOp::Run(1, 0, VM_PAGE, fault(1)),
        VOp::Run(1, 0, VM_PAGE + 1, fault(2)),
        VOp::CpuOn(1, 1, GUEST_RAM + 0x100),
        VOp::Run(1, 1, 0, fault(3)),
        VOp::LayOut(VM2_IMAGE.0, VM2_IMAGE.1),
        VOp::RegisterVm(GUEST_RAM, GUEST_RAM_SIZE),
        VOp::RegisterVcpu(2, 0),
        VOp::SetBootInfo(2, GUEST_RAM, VM2_IMAGE.1),
        VOp::Remap(2, 0, VM2_IMAGE.0),
        VOp::Verify(2),
        VOp::Run(2, 0, 0, fault(2)),
    ]);
    ops
}

fn any_call() -> impl Strategy<Value = Call> {
    let page = proptest::sample::select(PAGES.to_vec());
    let exit = prop_oneof![
        3 => (2u64..6).prop_map(|i| Pending::PageFault { gfn: FAULTED_GFN + i }),
        1 => Just(Pending::Nothing),
    ];
    let vm = || proptest::sample::select(VMS.to_vec());
    prop_oneof![
        6 => (vm(), 0u64..2, prop_oneof![4 => page.clone(), 1 => Just(0u64), 1 => Just(VM_PAGE)], exit)
            // VM 2 has vCPU 0 only.
            .prop_map(|(vm, vcpu, answer, exit)| Call::Run { vm, vcpu: if vm == 2 { 0 } else { vcpu }, answer, exit }),
        3 => (vm(), any::<bool>(), FAULTED_GFN..FAULTED_GFN + 2)
            .prop_map(|(vm, grant, gfn)| Call::Share { vm, grant, gfn }),
        5 => prop_oneof![4 => page, 1 => Just(VM_PAGE)].prop_map(|pfn| Call::HostFault { pfn }),
        1 => vm().prop_map(|vm| Call::PowerOff { vm }),
        1 => vm().prop_map(|vm| Call::Clear { vm }),
        1 => vm().prop_map(|vm| Call::Destroy { vm }),
        1 => Just(Call::Register),
    ]
}

/// A history: each thread's calls, and the schedule of turns they run by.
type History = (Vec<Vec<Call>>, Vec<u8>);

fn any_history() -> impl Strategy<Value = History> {
    let calls = proptest::collection::vec(proptest::collection::vec(any_call(), 3..=4), THREADS);
    // Enough entries for every hand-over of the longest history; past its end, turns go to the
    // first runnable thread.
    (calls, proptest::collection::vec(any::<u8>(), 240))
}

/// What the histories reached: how many had steps that overlapped in real time across threads,
/// how many had steps of the two VMs overlap (so that both VMs' locks were held at once or
/// contended for), and the page answers taken.
#[derive(Clone, Copy, Default)]
struct Reached {
    overlapped: u32,
    vms_overlapped: u32,
    answers: u32,
}

std::thread_local! {
    static REACHED: std::cell::Cell<Reached> = std::cell::Cell::new(Reached::default());
}

/// One history: the threads run their calls at once; then the invariants and linearizability.
fn concurrent_run((calls, schedule): History) -> Result<(), TestCaseError> {
    // The setup, checked step by step once (`the_setup_refines`), is only related at its end here.
    let (m, mut k, mut s) = run_ops(&booted(), false)?;
    // Pages only, in both worlds: the check-then-act bug maps a page as the real handler would.
    k.mem.get_mut().policy = HostMapPolicy::PagesOnly;
    s.r.pages_only = true;
    let bugs = Bugs {
        in_kcore: [Mutation::HostFaultCheckThenAct, Mutation::VmidNotRecheckedUnderLock]
            .into_iter()
            .find(|&m| planted(m)),
        inverted: planted(Mutation::LockOrderInverted),
    };
    let shared = Arc::new(Shared {
        m,
        k,
        history: TicketLock::new(LockRank::Console, Vec::new()),
        clock: AtomicU64::new(0),
        bugs,
        turns: Turns::new(schedule),
    });
    let threads: Vec<_> = calls
        .into_iter()
        .enumerate()
        .map(|(thread, calls)| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let _finished = Finished(&shared.turns, thread);
                shared.turns.wait(thread);
                shared.hook_locks(thread);
                // `planted` is per thread: the test's bug, planted on this one too.
                match bugs.in_kcore {
                    Some(bug) => with(bug, || shared.run(thread, &calls)),
                    None => shared.run(thread, &calls),
                }
                turns::set(None);
            })
        })
        .collect();
    for thread in threads {
        if let Err(panic) = thread.join() {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(TestCaseError::fail(format!("a thread halted: {message}")));
        }
    }
    let world = &*shared;
    let history = shared.history.lock().clone();
    world
        .k
        .check_invariants(&world.m)
        .map_err(|v| TestCaseError::fail(format!("invariant broken: {v:?}\nhistory: {history:#?}")))?;

    let overlap = |a: &Event, b: &Event| a.thread != b.thread && a.invoked < b.returned && b.invoked < a.returned;
    let overlapped = history.iter().any(|a| history.iter().any(|b| overlap(a, b)));
    let vms_overlapped = history
        .iter()
        .any(|a| history.iter().any(|b| overlap(a, b) && a.step.vm().zip(b.step.vm()).is_some_and(|(x, y)| x != y)));
    let answers = history
        .iter()
        .filter(|e| matches!(e.step, Step::Prepare { answer, .. } if answer != 0) && e.result == "Ok(())")
        .count();
    REACHED.with(|r| {
        let was = r.get();
        r.set(Reached {
            overlapped: was.overlapped + u32::from(overlapped),
            vms_overlapped: was.vms_overlapped + u32::from(vms_overlapped),
            answers: was.answers + answers as u32,
        })
    });

    let mut by_thread = vec![Vec::new(); THREADS];
    history.iter().for_each(|e| by_thread[e.thread].push(e.clone()));
    let end = |spec: &AbsKcore| relate(&world.m, &world.k, &BTreeMap::new(), spec).is_ok();
    let mut seen = HashSet::new();
    if !linearizable(&s, &by_thread, &mut vec![0; THREADS], &mut seen, &end) {
        return Err(TestCaseError::fail(format!("no serial order explains the history: {history:#?}")));
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, max_shrink_iters: 0, ..Config::default() })
}

/// Threads sharing one `Kcore` through its locks: the invariants hold at the end, and every
/// history is linearizable against the specs.
#[test]
fn concurrent_calls_keep_the_invariants_and_are_linearizable() {
    REACHED.with(|r| r.set(Reached::default()));
    runner(200).run(&any_history(), concurrent_run).unwrap();
    // Not vacuous: threads met, calls of the two VMs met, and guests got pages.
    let Reached { overlapped, vms_overlapped, answers } = REACHED.with(|r| r.get());
    assert!(
        overlapped >= 50 && vms_overlapped >= 100 && answers >= 50,
        "{overlapped} histories overlapped ({vms_overlapped} across VMs), {answers} page answers taken"
    );
}

/// A host fault handler that checks ownership and maps under two takes of the ownership lock
/// (`Kcore::host_stage2_fault`): some history maps a page the host no longer owns (a guest got it
/// in between).
#[test]
fn concurrency_catches_a_check_then_act_split() {
    catches(Mutation::HostFaultCheckThenAct, 400, any_history(), concurrent_run);
}

/// REGISTER_VM reading the free vmid under `core`, then taking that VM's lock and `core` again
/// without reading it again: two threads registering at once both get the same vmid, which no
/// serial order explains.
#[test]
fn concurrency_catches_a_vmid_not_rechecked_under_the_vm_lock() {
    catches(Mutation::VmidNotRecheckedUnderLock, 400, any_history(), concurrent_run);
}

/// A thread that takes one of KCore's locks while holding the history's console-ranked lock
/// halts, naming both locks, instead of risking a deadlock with a thread that takes them in order.
#[test]
fn a_lock_order_inversion_between_threads_halts() {
    let mut runner = runner(1);
    let result = with(Mutation::LockOrderInverted, || runner.run(&any_history(), concurrent_run));
    let message = format!("{result:?}");
    let named = ["Vm(1)", "Vm(2)", "S2Page"].iter().any(|lock| {
        message.contains(&format!("lock order violated: taking the {lock} lock while holding the Console lock"))
    });
    assert!(named, "{message}");
}

/// The histories' setup (both VMs booted, their vCPUs waiting for pages) refines the spec step
/// by step, so that each history may skip those checks.
#[test]
fn the_setup_refines() {
    refined_run(&booted()).unwrap();
}

/// The checker can fail: two VCPU_RUNs of one vCPU that both won, with no finish between them,
/// fit no serial order (the second must find the vCPU running), overlapping or not.
#[test]
fn the_checker_refuses_two_winning_runs_of_one_vcpu() {
    let (_, _, s) = refined_run(&booted()).unwrap();
    let prepare = |thread, invoked, returned, result: &str| Event {
        thread,
        step: Step::Prepare { vm: 1, vcpu: 0, answer: PAGES[0] },
        result: result.into(),
        invoked,
        returned,
    };
    // Only the results are in question here.
    let end = |_: &AbsKcore| true;
    let check = |a: Event, b: Event| linearizable(&s, &[vec![a], vec![b]], &mut vec![0; 2], &mut HashSet::new(), &end);
    let denied = format!("{:?}", Err::<(), _>(VmError::State));
    assert!(check(prepare(0, 0, 3, "Ok(())"), prepare(1, 1, 2, &denied)), "one wins, the other is denied");
    assert!(!check(prepare(0, 0, 3, "Ok(())"), prepare(1, 1, 2, "Ok(())")), "both won, overlapping");
    assert!(!check(prepare(0, 0, 1, "Ok(())"), prepare(1, 2, 3, "Ok(())")), "both won, one after the other");
    // Real time: the denied run returned before the winner was invoked, so it cannot come second.
    assert!(!check(prepare(0, 2, 3, "Ok(())"), prepare(1, 0, 1, &denied)), "denied before anyone ran");
}

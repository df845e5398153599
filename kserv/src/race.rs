//! `smp-race`: the host races against itself through KCore on all four cores. Every core runs
//! the same script ([`script`]); the cores meet at rendezvous points (arrivals counted, no clock)
//! so that the calls of a round really coincide, and the cores change roles from round to round,
//! so that each order of a race happens. The guests are RACE test guests, which stay in a run
//! (their vCPU Running) until the host writes the run's number into the page they share.
//! Every outcome is counted and printed; the scenario passes only if the counts are what
//! KCore's rules say, and each race that can go both ways went both ways.
//!
//! A RACE guest gives up waiting after `guest_role::RACE_SPINS` rounds (a loop count), so that a
//! KCore that let two cores run one vCPU ends in failed counts, not a hang. Under qemu-test's
//! `-icount` the cores take turns and a correct KCore never reaches the bound; `cargo xtask run`
//! (no `-icount`, QEMU's threads in parallel) can reach it when the host machine deschedules a
//! core's thread, and then the counts fail: the scenario is only a test under `-icount`.

use crate::arch::{cpu, exceptions, hvc};
use crate::dtb::GicInfo;
use crate::kprintln;
use crate::smp::{self, Rendezvous, CORES};
use crate::vm_scenarios::VmEnv;
use crate::vmm::{self, Hooks, Layout, Manager, Tamper, Vm};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
use corevisor_abi::{exit, guest_dev, guest_role, host_call, Status};

type Outcome = Result<(), &'static str>;

/// Rounds of a second VCPU_RUN while the vCPU is seen running, and of two at once.
const WHILE_RUNNING: usize = 8;
const AT_ONCE: usize = 16;
/// Rounds of a VCPU_RUN against a VM_POWER_OFF and DESTROY_VM at once: a VM each.
const DESTROY_AT_ONCE: usize = 4;
/// Rounds of one host page offered to two VMs' faults at once.
const PAGE_ROUNDS: usize = 8;
/// The bundle's VMs: `r` for the VCPU_RUN races, `s` for the staggered teardown, one per
/// [`DESTROY_AT_ONCE`] round, then `x` and `y`, which are offered the same pages.
const VMS: usize = 2 + DESTROY_AT_ONCE + 2;
/// Where in guest RAM the page-offer rounds fault (a RACE guest never touches it otherwise),
/// and in the region of `r` the pages offered to both (`r` never has them).
const OFFER_OFFSET: u64 = 10 << 20;
const PAGE: u64 = 4096;

/// What the cores know of a RACE guest, set up on core 0 before the races.
#[derive(Clone, Copy)]
struct Target {
    vmid: u64,
    slot: usize,
    /// The host page behind the page the guest shares: word 0 is the run it is in, word 1 the
    /// run the host ends.
    shared: u64,
    /// The host page behind the page the guest shares and unshares in a RACE_FLIP run.
    flipped: u64,
    region: u64,
    ram_size: u64,
}

impl Target {
    /// One VCPU_RUN of vCPU 0 whose answer is run number `run`.
    fn run(&self, run: u64) -> [u64; 6] {
        hvc::hyp_call_wide(host_call::VCPU_RUN, [self.vmid, 0, run, 0])
    }

    /// Whether the guest is in run `run`, polled a bounded number of times.
    fn wait_running(&self, run: u64) -> bool {
        (0..WAIT_POLLS).any(|_| {
            cpu::relax();
            cpu::read_phys_u64(self.shared) == run
        })
    }

    /// Ends the guest's run `run`.
    fn release(&self, run: u64) {
        cpu::write_phys_u64(self.shared + 8, run);
    }

    fn call(&self, function: u32, args: [u64; 2]) -> corevisor_abi::HypResult {
        hvc::hyp_call(function, [self.vmid, args[0], args[1], 0, 0, 0])
    }
}

/// Polls for a guest to show that it runs: far more than a run takes to start.
const WAIT_POLLS: u64 = 10_000_000;

/// Whether VCPU_RUN's `record` is a run that ended as a RACE guest's runs end: asking for the
/// next run number (a read of the test device's ANSWER register).
fn asked_again(record: &[u64; 6]) -> bool {
    record[0] == Status::Success.as_reg()
        && record[1] == exit::MMIO
        && record[2] == guest_dev::TEST_DEV_ANSWER
        && record[3] & exit::mmio_flags::WRITE == 0
}

fn denied(status: u64) -> bool {
    status == Status::Denied.as_reg()
}

/// A recorded status: `NONE` until a core stores one.
const NONE: u64 = u64::MAX;

/// What the cores share: the guests and every outcome, stored by the core that saw it.
struct Race {
    meet: Rendezvous,
    r: Target,
    s: Target,
    d: [Target; DESTROY_AT_ONCE],
    /// Per round: whether the run completed, and the second VCPU_RUN's status (`NONE`: it
    /// never saw the guest running).
    while_running: [[AtomicU64; 2]; WHILE_RUNNING],
    /// Per round, the two cores' VCPU_RUN outcomes: 0 denied, 1 a completed run, else the
    /// status (`NONE` for a run that ended otherwise).
    at_once: [[AtomicU64; 2]; AT_ONCE],
    /// POWER_OFF, DESTROY_VM and CLEAR_VM_S2_RANGE during `s`'s run, whether the run completed,
    /// then CLEAR_VM_S2_RANGE's and DESTROY_VM's page counts after it (`NONE` if refused).
    destroy_while_running: [AtomicU64; 6],
    /// Per round: the run's outcome (1 a completed run, 0 refused), the first DESTROY_VM's
    /// page count (`NONE` if refused), then the retry's (`NONE` if refused or not needed).
    destroy_at_once: [[AtomicU64; 3]; DESTROY_AT_ONCE],
    x: Target,
    y: Target,
    /// Per round: the faults on the page both are offered (0..=2 as expected), then `x`'s and
    /// `y`'s VCPU_RUN with it (1 took it and ran on, else the status), then whether the loser
    /// ran on with a page of its own.
    page_offer: [[AtomicU64; 4]; PAGE_ROUNDS],
    /// Whether `r`'s RACE_FLIP run completed; per core, its accesses to the flipped page
    /// ([`Probes`]); how many cores finished theirs.
    flip_run: AtomicU64,
    probes: [[AtomicU64; Probes::KINDS]; CORES],
    probers_done: AtomicU64,
}

/// What a core's accesses to a page the guest shares and unshares found, by kind.
struct Probes;

impl Probes {
    const READ: usize = 0;
    const READ_ABORTED: usize = 1;
    const WRITTEN: usize = 2;
    const WRITE_ABORTED: usize = 3;
    /// Reads that returned the guest's secret, and accesses whose abort was not the one KCore
    /// must inject (one external abort, at the address).
    const SECRET: usize = 4;
    const WRONG: usize = 5;
    const KINDS: usize = 6;
    /// Accesses per core, reads and writes taking turns, over the page's words.
    const PER_CORE: u64 = 200;
    /// What the host writes when it can.
    const HOST_WORD: u64 = 0x4057_4057_4057_4057;

    /// Accesses `page` [`Probes::PER_CORE`] times and counts what happened into `tally`.
    fn run(page: u64, tally: &[AtomicU64; Probes::KINDS]) {
        exceptions::expect_abort(true);
        for i in 0..Probes::PER_CORE {
            let pa = page + (i / 2 % (PAGE / 8)) * 8;
            let (before, _, _) = exceptions::aborts();
            let (read, value) = match i % 2 {
                0 => (true, hvc::probe_read(pa).0),
                _ => {
                    hvc::probe_write(pa, Probes::HOST_WORD);
                    (false, 0)
                }
            };
            let (after, _, far) = exceptions::aborts();
            let kind = match (after - before, read) {
                (1, _) if far != pa => Probes::WRONG,
                (1, true) => Probes::READ_ABORTED,
                (1, false) => Probes::WRITE_ABORTED,
                (0, true) if value == guest_role::RACE_SECRET => Probes::SECRET,
                (0, true) => Probes::READ,
                (0, false) => Probes::WRITTEN,
                _ => Probes::WRONG,
            };
            tally[kind].fetch_add(1, SeqCst);
            cpu::relax();
        }
        exceptions::expect_abort(false);
    }
}

impl Race {
    /// The guest page round `rep` of the page offers faults on, and the host page both VMs are
    /// offered for it.
    fn offer(&self, rep: usize) -> (u64, u64) {
        let offset = OFFER_OFFSET + rep as u64 * PAGE;
        (guest_dev::RAM_BASE + offset, self.r.region + offset)
    }
}

/// A fresh table of `NONE`s.
fn nones<const N: usize>() -> [AtomicU64; N] {
    core::array::from_fn(|_| AtomicU64::new(NONE))
}

/// Run numbers: never 0 (which powers a RACE guest off), never the same twice for a guest.
fn run_number(round: u64, rep: usize) -> u64 {
    round << 16 | (rep as u64 + 1)
}

/// A core's share of the races. Every core meets at every rendezvous, whatever happened.
fn script(race: &Race, core: usize) -> Outcome {
    // 1. A second VCPU_RUN of a vCPU that a core is running: DENIED, every time.
    for rep in 0..WHILE_RUNNING {
        let (runner, challenger) = (rep % CORES, (rep + 1) % CORES);
        let run = run_number(1, rep);
        race.meet.meet()?;
        if core == runner {
            let done = asked_again(&race.r.run(run));
            race.while_running[rep][0].store(u64::from(done), SeqCst);
        }
        if core == challenger && race.r.wait_running(run) {
            race.while_running[rep][1].store(race.r.run(run)[0], SeqCst);
            race.r.release(run);
        }
        race.meet.meet()?;
    }
    // 2. Two VCPU_RUNs of the same vCPU at once: one runs, the other is DENIED (and ends the
    //    winner's run). Cores pair differently and wait a different number of `yield`s first.
    for rep in 0..AT_ONCE {
        let first = rep % CORES;
        let second = (first + 1 + (rep / CORES) % (CORES - 1)) % CORES;
        let run = run_number(2, rep);
        race.meet.meet()?;
        for (role, (me, delay)) in [(first, rep % 3), (second, (rep / 3) % 3)].into_iter().enumerate() {
            if core != me {
                continue;
            }
            (0..delay).for_each(|_| cpu::relax());
            let record = race.r.run(run);
            let outcome = match record[0] {
                s if denied(s) => {
                    race.r.release(run);
                    0
                }
                s if s == Status::Success.as_reg() => match asked_again(&record) {
                    true => 1,
                    false => NONE,
                },
                s => s,
            };
            race.at_once[rep][role].store(outcome, SeqCst);
        }
        race.meet.meet()?;
    }
    // 3. Teardown calls while a vCPU of the VM runs: VM_POWER_OFF is taken (the run goes on),
    //    DESTROY_VM and CLEAR_VM_S2_RANGE are DENIED; once the run ended both succeed.
    let (runner, destroyer) = (1, 2);
    let run = run_number(3, 0);
    let s = &race.s;
    let outcomes = &race.destroy_while_running;
    race.meet.meet()?;
    if core == runner {
        outcomes[3].store(u64::from(asked_again(&s.run(run))), SeqCst);
    }
    if core == destroyer && s.wait_running(run) {
        outcomes[0].store(s.call(host_call::VM_POWER_OFF, [0, 0]).status, SeqCst);
        outcomes[1].store(s.call(host_call::DESTROY_VM, [0, 0]).status, SeqCst);
        outcomes[2].store(s.call(host_call::CLEAR_VM_S2_RANGE, [s.region, s.ram_size]).status, SeqCst);
        s.release(run);
    }
    race.meet.meet()?;
    if core == destroyer {
        outcomes[4].store(pages(s.call(host_call::CLEAR_VM_S2_RANGE, [s.region, s.ram_size])), SeqCst);
        outcomes[5].store(pages(s.call(host_call::DESTROY_VM, [0, 0])), SeqCst);
    }
    // 4. A VCPU_RUN against VM_POWER_OFF + DESTROY_VM at once, a fresh VM each round: either the
    //    run comes first (DESTROY_VM is DENIED until it ends) or the power-off (the run is
    //    refused, DESTROY_VM succeeds at once).
    for (rep, d) in race.d.iter().enumerate() {
        let (runner, destroyer) = (rep % CORES, (rep + 2) % CORES);
        let run = run_number(4, rep);
        let outcomes = &race.destroy_at_once[rep];
        race.meet.meet()?;
        if core == runner {
            (0..rep % 2).for_each(|_| cpu::relax());
            outcomes[0].store(u64::from(asked_again(&d.run(run))), SeqCst);
        }
        if core == destroyer {
            (0..(rep + 1) % 2).for_each(|_| cpu::relax());
            d.call(host_call::VM_POWER_OFF, [0, 0]);
            let destroyed = pages(d.call(host_call::DESTROY_VM, [0, 0]));
            outcomes[1].store(destroyed, SeqCst);
            if destroyed == NONE {
                d.release(run);
            }
        }
        race.meet.meet()?;
        if core == destroyer && outcomes[1].load(SeqCst) == NONE {
            outcomes[2].store(pages(d.call(host_call::DESTROY_VM, [0, 0])), SeqCst);
        }
    }
    // 5. One host page as the answer to a fault of `x` and of `y`, from two cores at once: one
    //    VM takes it, the other's VCPU_RUN is refused (the page is no longer the host's), and
    //    that VM then runs on with a page of its own.
    for rep in 0..PAGE_ROUNDS {
        let (gpa, offered) = race.offer(rep);
        let first = rep % CORES;
        let second = (first + 1 + (rep / CORES) % (CORES - 1)) % CORES;
        let outcomes = &race.page_offer[rep];
        let pair = [(first, &race.x, rep % 3), (second, &race.y, (rep / 3) % 3)];
        race.meet.meet()?;
        for &(me, vm, _) in &pair {
            if core == me {
                let record = vm.run(guest_role::RACE_TOUCH | gpa);
                let faulted =
                    record[0] == Status::Success.as_reg() && record[1] == exit::PAGE_FAULT && record[2] == gpa;
                if faulted {
                    outcomes[0].fetch_add(1, SeqCst);
                }
            }
        }
        race.meet.meet()?;
        for (role, &(me, vm, delay)) in pair.iter().enumerate() {
            if core == me {
                (0..delay).for_each(|_| cpu::relax());
                let record = vm.run(offered >> 12);
                let outcome = match asked_again(&record) {
                    true => 1,
                    false if record[0] == Status::Success.as_reg() => NONE,
                    false => record[0],
                };
                outcomes[1 + role].store(outcome, SeqCst);
            }
        }
        race.meet.meet()?;
        for (role, &(me, vm, _)) in pair.iter().enumerate() {
            if core == me && outcomes[1 + role].load(SeqCst) != 1 {
                let own = vm.region + (gpa - guest_dev::RAM_BASE);
                outcomes[3].store(u64::from(asked_again(&vm.run(own >> 12))), SeqCst);
            }
        }
    }
    // 6. The guest shares and unshares a page over and over while cores 1-3 read and write it:
    //    every access either reaches the page while it is shared or aborts at its address, and
    //    none ever reads what the guest writes into it once it is unshared.
    let r = &race.r;
    let run = guest_role::RACE_FLIP | run_number(6, 0);
    race.meet.meet()?;
    if core == 0 {
        race.flip_run.store(u64::from(asked_again(&r.run(run))), SeqCst);
    } else if r.wait_running(run) {
        Probes::run(r.flipped, &race.probes[core]);
        if race.probers_done.fetch_add(1, SeqCst) + 1 == CORES as u64 - 1 {
            r.release(run);
        }
    }
    race.meet.meet()
}

/// The page count a CLEAR_VM_S2_RANGE or DESTROY_VM returned, `NONE` if refused.
fn pages(r: corevisor_abi::HypResult) -> u64 {
    if r.status == Status::Success.as_reg() {
        r.values[0]
    } else {
        NONE
    }
}

/// Setup and the final run: learns the guest's two pages (the one it shares, the one it flips),
/// and notices when it asks for its next run number.
#[derive(Default)]
struct Guide {
    pages: [Option<u64>; 2],
    asked: bool,
}

impl Hooks for Guide {
    fn notify(&mut self, _vm: &Vm, value: u64) {
        if let Some(free) = self.pages.iter_mut().find(|p| p.is_none()) {
            *free = Some(value);
        }
    }
    fn answer(&mut self, _vm: &Vm) -> u64 {
        self.asked = true;
        0
    }
}

/// Runs vCPU 0 of `vm` on this core until the guest asks for a run number or stops; the first
/// run answers with `first`, if given.
fn drive(vm: &mut Vm, mut first: Option<u64>, guide: &mut Guide) {
    guide.asked = false;
    while vm.alive && !guide.asked {
        let stored = vmm::begin_run(vm, 0, false);
        let answer = first.take().unwrap_or(stored);
        let record = hvc::vcpu_run(vm.vmid, 0, answer);
        vmm::end_run(vm, 0, record, guide);
    }
}

/// Creates the bundle's VMs (all RACE guests) and runs each to its first question.
fn set_up(mgr: &mut Manager, env: &VmEnv) -> Result<[Target; VMS], &'static str> {
    let bundle = env.bundle.ok_or("no boot bundle (pass one with -initrd)")?;
    let mut targets = [None; VMS];
    for (i, entry) in bundle.vms().enumerate().take(VMS) {
        if entry.role != guest_role::RACE || entry.vcpus != 1 {
            return Err("smp-race needs 1-vCPU RACE guests only");
        }
        let slot = mgr.create(&entry, &Layout::of(&bundle, &entry), Tamper::None).map_err(|(_, e)| {
            kprintln!("vm {}: {} failed: {:?}", entry.name(), e.step, e.status());
            "a VM from the bundle could not be created"
        })?;
        let vm = mgr.vms[slot].as_mut().ok_or("a created VM is missing")?;
        let mut guide = Guide::default();
        drive(vm, None, &mut guide);
        let [shared, flipped] = guide.pages.map(|gpa| gpa.and_then(|gpa| vm.host_page(gpa)).filter(|_| guide.asked));
        let (Some(shared), Some(flipped)) = (shared, flipped) else {
            return Err("a RACE guest did not share its page and ask for a run");
        };
        let (vmid, region, ram_size) = (vm.vmid, vm.region, vm.entry.ram_size);
        targets[i] = Some(Target { vmid, slot, shared, flipped, region, ram_size });
    }
    let mut out = [targets[0].ok_or("the bundle has too few VMs")?; VMS];
    for (target, found) in out.iter_mut().zip(targets) {
        *target = found.ok_or("the bundle has too few VMs")?;
    }
    Ok(out)
}

/// `smp-race`: see the module's documentation.
pub fn smp_race(env: &VmEnv, gic: &GicInfo) -> Outcome {
    smp::start_cores(gic, &[crate::arch::gic::TIMER_PPI])?;
    let mut mgr = Manager::new(env.regions);
    let targets = set_up(&mut mgr, env)?;
    kprintln!("smp-race: {VMS} RACE guests created, each sharing a page and waiting for a run");
    let race = Arc::new(Race {
        meet: Rendezvous::new(),
        r: targets[0],
        s: targets[1],
        d: core::array::from_fn(|i| targets[2 + i]),
        while_running: core::array::from_fn(|_| nones()),
        at_once: core::array::from_fn(|_| nones()),
        destroy_while_running: nones(),
        destroy_at_once: core::array::from_fn(|_| nones()),
        x: targets[2 + DESTROY_AT_ONCE],
        y: targets[3 + DESTROY_AT_ONCE],
        page_offer: core::array::from_fn(|_| {
            let [faults, x, y, loser] = nones::<4>();
            faults.store(0, SeqCst);
            [faults, x, y, loser]
        }),
        flip_run: AtomicU64::new(0),
        probes: core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0))),
        probers_done: AtomicU64::new(0),
    });
    let failures = Arc::new(AtomicU64::new(0));
    let (shared, failed) = (race.clone(), failures.clone());
    smp::on_every_core(move |core| {
        if let Err(why) = script(&shared, core) {
            kprintln!("smp-race: core {core}: {why}");
            failed.fetch_add(1, SeqCst);
        }
    })?;
    if failures.load(SeqCst) != 0 {
        return Err("a core's script failed");
    }
    let mut verdict = Ok(());
    let mut expect = |holds: bool, why: &'static str| {
        if !holds && verdict.is_ok() {
            verdict = Err(why);
        }
    };

    let load = |a: &AtomicU64| a.load(SeqCst);
    let completed = race.while_running.iter().filter(|o| load(&o[0]) == 1).count();
    let refused = race.while_running.iter().filter(|o| denied(load(&o[1]))).count();
    kprintln!(
        "smp-race: vcpu-run while running: {WHILE_RUNNING} rounds, {refused} second VCPU_RUNs DENIED while the \
         vCPU ran, {completed} runs completed"
    );
    expect(completed == WHILE_RUNNING && refused == WHILE_RUNNING, "a VCPU_RUN of a running vCPU was not DENIED");

    let one_winner = race.at_once.iter().filter(|o| matches!((load(&o[0]), load(&o[1])), (1, 0) | (0, 1))).count();
    let first_won = race.at_once.iter().filter(|o| load(&o[0]) == 1).count();
    let second_won = race.at_once.iter().filter(|o| load(&o[1]) == 1).count();
    kprintln!(
        "smp-race: vcpu-run at once: {AT_ONCE} rounds, exactly one winner in {one_winner}, the other DENIED; \
         the first core won {first_won}, the second {second_won}"
    );
    expect(one_winner == AT_ONCE, "two VCPU_RUNs at once did not give exactly one winner");
    expect(first_won != 0 && second_won != 0, "two VCPU_RUNs at once always came in the same order");

    let o = &race.destroy_while_running;
    let ok = |a: &AtomicU64| load(a) == Status::Success.as_reg();
    let during = ok(&o[0]) && denied(load(&o[1])) && denied(load(&o[2])) && load(&o[3]) == 1;
    let (cleared, left) = (load(&o[4]), load(&o[5]));
    kprintln!(
        "smp-race: destroy while running: VM_POWER_OFF {}, DESTROY_VM {}, CLEAR_VM_S2_RANGE {}; after the run \
         CLEAR_VM_S2_RANGE returned {cleared} pages, DESTROY_VM {left}",
        status_name(load(&o[0])),
        status_name(load(&o[1])),
        status_name(load(&o[2])),
    );
    expect(during, "a teardown call during a run was not refused (or the run did not complete)");
    expect(cleared != NONE && left != NONE, "the teardown after the run was refused");
    let s_returned = cleared.wrapping_add(left);

    let (mut run_first, mut destroy_first) = (0, 0);
    for o in &race.destroy_at_once {
        match (load(&o[0]), load(&o[1]), load(&o[2])) {
            (1, NONE, retry) if retry != NONE => run_first += 1,
            (0, first, NONE) if first != NONE => destroy_first += 1,
            _ => {}
        }
    }
    kprintln!(
        "smp-race: destroy at once: {DESTROY_AT_ONCE} rounds, exactly one of VCPU_RUN and DESTROY_VM first in {}: \
         the run {run_first} (DESTROY_VM DENIED until it ended), the destroy {destroy_first} (VCPU_RUN refused)",
        run_first + destroy_first
    );
    expect(run_first + destroy_first == DESTROY_AT_ONCE, "a VCPU_RUN against a DESTROY_VM broke the rules");
    expect(run_first != 0 && destroy_first != 0, "VCPU_RUN against DESTROY_VM always came in the same order");

    let (mut one_took, mut took) = (0, [0; 2]);
    let (mut loser_status, mut mixed) = (NONE, false);
    for o in &race.page_offer {
        let (faults, x, y, loser_ran_on) = (load(&o[0]), load(&o[1]), load(&o[2]), load(&o[3]));
        let refused = |s: u64| s != 1 && s != NONE && s != Status::Success.as_reg();
        if faults == 2 && loser_ran_on == 1 && ((x == 1 && refused(y)) || (y == 1 && refused(x))) {
            one_took += 1;
            took[usize::from(y == 1)] += 1;
            let status = if x == 1 { y } else { x };
            mixed |= loser_status != NONE && status != loser_status;
            loser_status = status;
        }
    }
    kprintln!(
        "smp-race: page offered twice: {PAGE_ROUNDS} rounds, exactly one VM took the page in {one_took}, the \
         other's VCPU_RUN refused ({}) and it ran on with a page of its own; vm x took it {}, vm y {}",
        status_name(loser_status),
        took[0],
        took[1]
    );
    expect(one_took == PAGE_ROUNDS, "a host page offered to two VMs at once did not go to exactly one");
    expect(took[0] != 0 && took[1] != 0, "the page offers always came in the same order");
    expect(!mixed, "the refused page offers were refused with different statuses");
    // The page each round's loser ran on with is its own region's: counted in its teardown.
    // The page the winner took is `r`'s: given back by CLEAR_VM_S2_RANGE once the VM is off.
    let mut borrowed_back = 0;
    for (rep, o) in race.page_offer.iter().enumerate() {
        let (gpa, offered) = race.offer(rep);
        let (winner, loser) = if load(&o[1]) == 1 { (race.x, race.y) } else { (race.y, race.x) };
        if let Some(vm) = mgr.vms[loser.slot].as_mut() {
            vm.given.set((gpa - guest_dev::RAM_BASE) / PAGE);
        }
        winner.call(host_call::VM_POWER_OFF, [0, 0]);
        let back = pages(winner.call(host_call::CLEAR_VM_S2_RANGE, [offered, PAGE]));
        let zero = (0..PAGE).step_by(8).all(|at| cpu::read_phys_u64(offered + at) == 0);
        borrowed_back += u64::from(back == 1 && zero);
    }
    kprintln!(
        "smp-race: page offered twice: {borrowed_back} of {PAGE_ROUNDS} taken pages back from the winner, scrubbed"
    );
    expect(borrowed_back == PAGE_ROUNDS as u64, "a page a VM took from a double offer did not come back scrubbed");

    let kind = |k: usize| race.probes.iter().map(|p| load(&p[k])).sum::<u64>();
    let (flips, refused) = (cpu::read_phys_u64(race.r.shared + 16), cpu::read_phys_u64(race.r.shared + 24));
    let accesses = (CORES as u64 - 1) * Probes::PER_CORE;
    kprintln!(
        "smp-race: share against host access: the guest shared and unshared its page {flips} times ({refused} \
         calls refused) while cores 1-3 made {accesses} accesses: {} reads and {} writes reached it while shared, \
         {} reads and {} writes aborted at its address, {} other outcomes; the secret was read {} times",
        kind(Probes::READ),
        kind(Probes::WRITTEN),
        kind(Probes::READ_ABORTED),
        kind(Probes::WRITE_ABORTED),
        kind(Probes::WRONG),
        kind(Probes::SECRET),
    );
    let reached = kind(Probes::READ) + kind(Probes::WRITTEN);
    let aborted = kind(Probes::READ_ABORTED) + kind(Probes::WRITE_ABORTED);
    expect(load(&race.flip_run) == 1 && refused == 0, "the sharing guest's run failed");
    expect(kind(Probes::SECRET) == 0, "the host read what the guest wrote after unsharing");
    expect(kind(Probes::WRONG) == 0 && reached + aborted == accesses, "a host access aborted wrongly");
    expect(reached != 0 && aborted != 0, "the host's accesses never met the page both shared and unshared");

    // Teardown: `s` and the `d`s were destroyed by the races; `r`, `x` and `y` are torn down.
    let mut guide = Guide::default();
    if let Some(vm) = mgr.vms[race.r.slot].as_mut() {
        drive(vm, Some(0), &mut guide);
    }
    if mgr.vms[race.r.slot].as_ref().is_some_and(|vm| vm.alive) {
        expect(false, "the RACE guest did not power off");
    } else {
        mgr.retire(race.r.slot);
    }
    mgr.retire(race.x.slot);
    mgr.retire(race.y.slot);
    let mut destroyed = [(race.s.slot, s_returned); 1 + DESTROY_AT_ONCE];
    for (i, o) in race.destroy_at_once.iter().enumerate() {
        let returned = if load(&o[1]) != NONE { load(&o[1]) } else { load(&o[2]) };
        destroyed[1 + i] = (race.d[i].slot, returned);
    }
    for (slot, returned) in destroyed {
        // A refused teardown was reported above; its VM's pages stay the VM's.
        if returned < NONE / 2 {
            let _ = mgr.forget_destroyed(slot, returned);
        }
    }
    verdict?;
    mgr.result()?;
    if mgr.powered_off != VMS as u32 || mgr.vms.iter().any(Option::is_some) {
        return Err("not every VM was torn down");
    }
    kprintln!("smp-race: {VMS} VMs torn down, every page back scrubbed");
    Ok(())
}

fn status_name(status: u64) -> &'static str {
    match Status::from_reg(status) {
        Some(Status::Success) => "SUCCESS",
        Some(Status::NotSupported) => "NOT_SUPPORTED",
        Some(Status::InvalidParameters) => "INVALID_PARAMETERS",
        Some(Status::Denied) => "DENIED",
        Some(Status::AlreadyOn) => "ALREADY_ON",
        Some(Status::OnPending) => "ON_PENDING",
        Some(Status::InternalFailure) => "INTERNAL_FAILURE",
        Some(Status::NotPresent) => "NOT_PRESENT",
        Some(Status::Disabled) => "DISABLED",
        Some(Status::InvalidAddress) => "INVALID_ADDRESS",
        None if status == NONE => "never made",
        None => "not a status",
    }
}

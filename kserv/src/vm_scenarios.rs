//! The scenarios that run VMs from the boot bundle. Each one checks what KServ can see for
//! itself (statuses, aborts, the guests' console lines, scrubbed pages) and fails with a reason;
//! `cargo xtask qemu-test` checks the console on top.

use crate::arch::{exceptions, hvc};
use crate::dtb::GicInfo;
use crate::exit_meter::{ExitClass, ExitMeter};
use crate::kprintln;
use crate::scenario::{Attempt, DmaRoute, Target};
use crate::smp;
use crate::vm_plan::Rng;
use crate::vmm::{attack_page, Hooks, Layout, Manager, Tamper, Vm, MAX_VMS};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use corevisor_abi::bundle::{Bundle, VmEntry};
use corevisor_abi::{guest_call, host_call, Status, HYP_CALL_BASE};

type Outcome = Result<(), &'static str>;

/// What the VM scenarios need from KServ's environment.
pub struct VmEnv<'a> {
    pub bundle: Option<Bundle<'a>>,
    /// Host RAM for VMs, `(base, size)`: the first sized for the bundle's largest VM.
    pub regions: [Option<(u64, u64)>; MAX_VMS],
    pub kcore_base: u64,
    /// The console UART's physical address (the host's own device).
    pub uart_base: u64,
    pub bootargs: &'a str,
    /// The board's reset watchdog, which must be KCore's (the Pi's PM block).
    pub pm_watchdog: Option<u64>,
}

impl VmEnv<'_> {
    fn bundle(&self) -> Result<Bundle<'_>, &'static str> {
        self.bundle.ok_or("no boot bundle (pass one with -initrd)")
    }

    fn entry(&self, index: usize) -> Result<VmEntry, &'static str> {
        self.bundle()?.vms().nth(index).ok_or("the boot bundle has too few VMs")
    }
}

/// Creates the bundle's first `count` VMs (all must verify).
pub(crate) fn create_all(mgr: &mut Manager, env: &VmEnv, count: usize) -> Outcome {
    let bundle = env.bundle()?;
    for i in 0..count {
        let entry = env.entry(i)?;
        match mgr.create(&entry, &Layout::of(&bundle, &entry), Tamper::None) {
            Ok(_) => kprintln!("vm {}: created, image verified by KCore", entry.name()),
            Err((_, e)) => {
                kprintln!("vm {}: {} failed: {:?}", entry.name(), e.step, e.status());
                return Err("a VM from the bundle could not be created");
            }
        }
    }
    Ok(())
}

/// Checks each guest console line against what the scenario expects to see.
struct Expect {
    seen: [bool; Expect::MAX],
    lines: &'static [&'static str],
}

impl Expect {
    const MAX: usize = 16;

    fn new(lines: &'static [&'static str]) -> Expect {
        assert!(lines.len() <= Expect::MAX, "too many expected lines");
        Expect { seen: [false; Expect::MAX], lines }
    }

    fn line(&mut self, line: &str) {
        if let Some(i) = self.lines.iter().position(|&l| line.starts_with(l)) {
            self.seen[i] = true;
        }
    }

    fn all_seen(&self) -> bool {
        (0..self.lines.len()).all(|i| self.seen[i])
    }
}

struct Watch(Expect);

impl Hooks for Watch {
    /// `vm-hello`'s guest asks whether its passthrough UART is mapped.
    fn answer(&mut self, _vm: &Vm) -> u64 {
        1
    }
    fn console_line(&mut self, _vm: &Vm, line: &str) {
        self.0.line(line);
    }
}

/// The demo: two guests from the bundle print, interleaved, and power off.
pub fn demo(env: &VmEnv) -> Outcome {
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, env.bundle()?.len())?;
    mgr.run_all(&mut crate::vmm::Plain);
    mgr.result()
}

/// `vm-hello`: one guest prints, uses RAM, trapped registers and its timer, and powers off; its
/// pages come back scrubbed.
pub fn vm_hello(env: &VmEnv) -> Outcome {
    let mut mgr = Manager::new(env.regions);
    // KCore hashes the images with the SHA-256 instructions where the CPU has them, in the
    // host's FP/SIMD registers: it must give every one of them back.
    let pattern = crate::arch::cpu::fp_pattern(0x5eed_f00d_c0de_cafe);
    crate::arch::cpu::fill_fp_registers(&pattern);
    create_all(&mut mgr, env, 1)?;
    if crate::arch::cpu::read_fp_registers() != pattern {
        return Err("VERIFY_VM_IMAGE changed the host's FP/SIMD registers");
    }
    kprintln!("vm-hello: the host's q0-q31 are intact across VERIFY_VM_IMAGE");
    // The guest gets the board's UART page itself at PASSTHROUGH_UART; RAM is refused.
    let vmid = mgr.vms.iter().flatten().next().map(|vm| vm.vmid).ok_or("no VM")?;
    let ioremap = |pa| {
        hvc::hyp_call(host_call::PHYS_ADDR_IOREMAP, [vmid, corevisor_abi::guest_dev::PASSTHROUGH_UART, pa, 4096, 0, 0])
    };
    if ioremap(env.uart_base & !0xfff).status != Status::Success.as_reg() {
        return Err("PHYS_ADDR_IOREMAP of the UART failed");
    }
    if ioremap(mgr.vms.iter().flatten().next().map_or(0, |vm| vm.region)).status != Status::InvalidAddress.as_reg() {
        return Err("PHYS_ADDR_IOREMAP of RAM was not refused");
    }
    kprintln!(
        "vm hello: the board's UART is mapped at {:#x}; mapping RAM was refused",
        corevisor_abi::guest_dev::PASSTHROUGH_UART
    );
    let mut watch = Watch(Expect::new(&[
        "hello from a corevisor guest",
        "touched 64 pages: ok",
        "dc isw: ok",
        "PMCR_EL0: UNDEF",
        "ACTLR_EL1: UNDEF",
        "hvc #1: UNDEF",
        "timer fired after wfi",
        "hello from vcpu 1, context 0x5ec0",
        "vcpu 1 said hello and is off again",
        "bye",
    ]));
    mgr.run_all(&mut watch);
    mgr.result()?;
    if !watch.0.all_seen() {
        return Err("the guest did not print everything it should have");
    }
    if mgr.powered_off != 1 {
        return Err("the guest did not power itself off");
    }
    Ok(())
}

/// `vm-two-guests`: alpha and delta tick, interleaved, each with its own FP/SIMD pattern; beta
/// reaches for alpha's memory and gamma for KCore's. Both are stopped at their first reach;
/// alpha finishes with its memory and registers intact.
pub fn vm_two_guests(env: &VmEnv) -> Outcome {
    struct Reach {
        alpha_page: u64,
        kcore: u64,
        watch: Expect,
    }
    impl Hooks for Reach {
        fn answer(&mut self, vm: &Vm) -> u64 {
            let target = match vm.name() {
                // The ticking guests ask for the seed of their FP/SIMD pattern.
                "alpha" => return 0xa1,
                "delta" => return 0xd1,
                "beta" => self.alpha_page,
                _ => self.kcore,
            };
            kprintln!("vm {}: told to reach for {target:#x}", vm.name());
            target
        }
        fn console_line(&mut self, vm: &Vm, line: &str) {
            if vm.name() == "alpha" {
                self.watch.line(line);
            }
        }
    }
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 4)?;
    let alpha_page = mgr.vms.iter().flatten().find(|vm| vm.name() == "alpha").ok_or("no VM alpha")?.region;
    let mut hooks = Reach {
        alpha_page,
        kcore: env.kcore_base,
        watch: Expect::new(&["memory intact", "fp registers intact", "bye"]),
    };
    // KCore parks the host's FP/SIMD registers at the first VCPU_RUN and leaves the last guest's
    // in them, behind a trap: the host's first access after the guests ran must find its own.
    let pattern = crate::arch::cpu::fp_pattern(0x4057_f9f9_0bad_cafe);
    crate::arch::cpu::fill_fp_registers(&pattern);
    mgr.run_all(&mut hooks);
    if crate::arch::cpu::read_fp_registers() != pattern {
        return Err("the host's FP/SIMD registers changed across its guests' runs");
    }
    kprintln!("vm-two-guests: the host's q0-q31 are its own after its guests ran in theirs");
    mgr.result()?;
    if mgr.stopped != 2 || mgr.powered_off != 2 {
        return Err("expected beta and gamma stopped, alpha and delta powered off");
    }
    if !hooks.watch.all_seen() {
        return Err("alpha did not finish with its memory intact");
    }
    kprintln!("vm-two-guests: both reaching guests stopped, alpha unaffected");
    Ok(())
}

/// The host's side of a guest in the SHARE role: it shares page A and keeps page B (NOTIFY A, B),
/// asks for the host's verdict (the host reads its message in A, B aborts), unshares A (NOTIFY A),
/// and asks again (A aborts).
struct ShareChecks {
    /// The scenario its lines start with; `named`: the VM's name follows (several share).
    scenario: &'static str,
    named: bool,
    notified: [u64; 3],
    count: usize,
    verdicts: [u64; 2],
    answers: usize,
}

impl ShareChecks {
    const MESSAGE: &[u8] = b"corevisor shared page: hello host";

    fn new(scenario: &'static str, named: bool) -> ShareChecks {
        ShareChecks { scenario, named, notified: [0; 3], count: 0, verdicts: [0; 2], answers: 0 }
    }

    /// `scenario: ` or `scenario: vm NAME: `, where the host's findings are printed.
    fn label<'a>(&self, vm: &'a Vm) -> impl core::fmt::Display + 'a {
        struct Label<'a>(&'static str, Option<&'a str>);
        impl core::fmt::Display for Label<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                match self.1 {
                    Some(name) => write!(f, "{}: vm {name}: ", self.0),
                    None => write!(f, "{}: ", self.0),
                }
            }
        }
        Label(self.scenario, self.named.then(|| vm.name()))
    }

    /// Whether the guest went through share, check, unshare, check, and the host saw what it
    /// should.
    fn passed(&self) -> Outcome {
        if self.count != 3 || self.answers != 2 || self.notified[2] != self.notified[0] {
            return Err("the guest did not go through share, check, unshare, check");
        }
        if self.verdicts != [1, 1] {
            return Err("the host saw what it should not, or missed the shared message");
        }
        Ok(())
    }
}

impl Hooks for ShareChecks {
    fn notify(&mut self, _vm: &Vm, value: u64) {
        if self.count < 3 {
            self.notified[self.count] = value;
        }
        self.count += 1;
    }
    fn answer(&mut self, vm: &Vm) -> u64 {
        let verdict = match self.answers {
            // Before the unshare: A holds the message, B aborts.
            0 => {
                let a = vm.host_page(self.notified[0]).unwrap_or(0);
                let b = vm.host_page(self.notified[1]).unwrap_or(0);
                exceptions::expect_abort(true);
                let (aborts_before, _, _) = exceptions::aborts();
                let message_ok = Self::MESSAGE.iter().enumerate().all(|(i, &c)| hvc::read_u8(a + i as u64) == c);
                let a_aborted = exceptions::aborts().0 != aborts_before;
                let (b_tried, b_aborted) = attack_page(b);
                exceptions::expect_abort(false);
                kprintln!(
                    "{}shared page {:#x}: message {}; private page {:#x}: {} of {} accesses aborted",
                    self.label(vm),
                    self.notified[0],
                    if message_ok && !a_aborted { "read" } else { "NOT read" },
                    self.notified[1],
                    b_aborted,
                    b_tried
                );
                u64::from(message_ok && !a_aborted && b_aborted == b_tried)
            }
            // After the unshare: A aborts.
            _ => {
                let a = vm.host_page(self.notified[2]).unwrap_or(0);
                let (tried, aborted) = attack_page(a);
                kprintln!(
                    "{}after unshare, page {:#x}: {aborted} of {tried} accesses aborted",
                    self.label(vm),
                    self.notified[2]
                );
                u64::from(tried == aborted)
            }
        };
        if self.answers < 2 {
            self.verdicts[self.answers] = verdict;
        }
        self.answers += 1;
        verdict
    }
}

/// `vm-share`: the guest shares page A and keeps page B; the host reads its message in A, B
/// aborts; after the unshare A aborts too.
pub fn vm_share(env: &VmEnv) -> Outcome {
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    let mut hooks = ShareChecks::new("vm-share", false);
    mgr.run_all(&mut hooks);
    mgr.result()?;
    hooks.passed()?;
    kprintln!("vm-share: PASS checks done");
    Ok(())
}

/// `share-atomic`: the guest makes three share calls that KCore must refuse on their last page
/// (a range past the end of its RAM, a share over a page at its limit, an unshare of a partly
/// shared range) and after each the host checks that none of the pages before it changed: the
/// pages the refused shares named abort, the page the refused unshare named still reads.
pub fn share_atomic(env: &VmEnv) -> Outcome {
    /// The page X's text, as the guest writes it.
    const PAGE_X: &[u8] = b"share-atomic: page X";
    #[derive(Default)]
    struct Checks {
        /// The guest pages named since the last verdict.
        named: [u64; 2],
        count: usize,
        verdicts: [u64; 3],
        answers: usize,
    }
    impl Hooks for Checks {
        fn notify(&mut self, _vm: &Vm, value: u64) {
            if self.count < self.named.len() {
                self.named[self.count] = value;
            }
            self.count += 1;
        }
        fn answer(&mut self, vm: &Vm) -> u64 {
            let named = &self.named[..self.count.min(self.named.len())];
            let verdict = match self.answers {
                // After the refused shares: every access to the named pages aborts.
                0 | 1 => {
                    let (mut tried, mut aborted) = (0, 0);
                    for &gpa in named {
                        let (t, a) = attack_page(vm.host_page(gpa).unwrap_or(0));
                        (tried, aborted) = (tried + t, aborted + a);
                    }
                    kprintln!(
                        "share-atomic: after refused share {}: {aborted} of {tried} accesses to {} pages aborted",
                        self.answers + 1,
                        named.len()
                    );
                    u64::from(tried > 0 && tried == aborted)
                }
                // After the refused unshare: page X still reads, and holds the guest's text.
                _ => {
                    let x = vm.host_page(named.first().copied().unwrap_or(0)).unwrap_or(0);
                    let (aborts_before, _, _) = exceptions::aborts();
                    exceptions::expect_abort(true);
                    let text_ok = PAGE_X.iter().enumerate().all(|(i, &c)| hvc::read_u8(x + i as u64) == c);
                    exceptions::expect_abort(false);
                    let read = text_ok && exceptions::aborts().0 == aborts_before;
                    kprintln!(
                        "share-atomic: after the refused unshare, page X {}",
                        if read { "still reads as shared" } else { "is NOT readable" }
                    );
                    u64::from(read)
                }
            };
            if self.answers < self.verdicts.len() {
                self.verdicts[self.answers] = verdict;
            }
            (self.answers, self.count) = (self.answers + 1, 0);
            verdict
        }
    }
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    let mut hooks = Checks::default();
    mgr.run_all(&mut hooks);
    mgr.result()?;
    if hooks.answers != 3 {
        return Err("the guest did not make its three refused share calls");
    }
    if hooks.verdicts != [1, 1, 1] {
        return Err("a refused share call changed a page of its range");
    }
    kprintln!("share-atomic: PASS no refused call changed a page");
    Ok(())
}

/// `host-attacks-vm`: between the runs of a ticking guest, the host reads and writes the guest's
/// image page and a page it faulted in; every access aborts and the guest finishes intact. The
/// host also loads its own FP/SIMD pattern between the runs: the guest, which runs again on the
/// same core with nothing else in between (so KCore skips its reload), must still find its own.
pub fn host_attacks_vm(env: &VmEnv) -> Outcome {
    #[derive(Default)]
    struct Attack {
        tried: u64,
        aborted: u64,
        intact: bool,
        fp_intact: bool,
    }
    impl Hooks for Attack {
        fn after_exit(&mut self, vm: &Vm) {
            for page in vm.given.pages().take(4) {
                let (tried, aborted) = attack_page(vm.region + page * 4096);
                self.tried += tried;
                self.aborted += aborted;
            }
            crate::arch::cpu::fill_fp_registers(&crate::arch::cpu::fp_pattern(0x4057_a77a_c4ed_f9f9 ^ self.tried));
        }
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            self.intact |= line == "memory intact";
            self.fp_intact |= line == "fp registers intact";
        }
    }
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    let mut hooks = Attack::default();
    mgr.run_all(&mut hooks);
    mgr.result()?;
    kprintln!("host-attacks-vm: {} of {} host accesses to the running VM's pages aborted", hooks.aborted, hooks.tried);
    if hooks.tried == 0 || hooks.aborted != hooks.tried {
        return Err("the host reached a running VM's memory");
    }
    if !hooks.intact || !hooks.fp_intact || mgr.powered_off != 1 {
        return Err("the VM did not keep running to the end with its memory intact");
    }
    Ok(())
}

/// Creates a VM from `entry` with its images laid out as `layout` says and changed as `tamper`
/// says, which KCore must refuse: VERIFY_VM_IMAGE denied, then VCPU_RUN denied. Prints
/// `{scenario}: {what}: VERIFY denied, VCPU_RUN denied` and tears the VM down (its pages must come
/// back scrubbed).
fn expect_refused(
    mgr: &mut Manager,
    entry: &VmEntry,
    layout: &Layout,
    tamper: Tamper,
    scenario: &str,
    what: &str,
) -> Outcome {
    let slot = match mgr.create(entry, layout, tamper) {
        Ok(_) => {
            kprintln!("{scenario}: {what}: VERIFY succeeded");
            return Err("KCore verified a VM it should have refused");
        }
        Err((Some(slot), e)) if e.step == "VERIFY_VM_IMAGE" && e.status() == Some(Status::Denied) => slot,
        Err((_, e)) => {
            kprintln!("{} failed with {:?}", e.step, e.status());
            return Err("the refused VM failed before verification");
        }
    };
    let vmid = mgr.vms[slot].as_ref().map_or(0, |vm| vm.vmid);
    let run = hvc::hyp_call(host_call::VCPU_RUN, [vmid, 0, 0, 0, 0, 0]);
    if run.status != Status::Denied.as_reg() {
        return Err("VCPU_RUN of a rejected VM was not denied");
    }
    kprintln!("{scenario}: {what}: VERIFY denied, VCPU_RUN denied");
    mgr.teardown(slot)?;
    Ok(())
}

/// `vm-bad-image`: one flipped byte of the image, then of the signature: VERIFY is denied and
/// VCPU_RUN refused, and the pages come back scrubbed. The unmodified image still runs.
pub fn vm_bad_image(env: &VmEnv) -> Outcome {
    let bundle = env.bundle()?;
    let entry = env.entry(0)?;
    let layout = Layout::of(&bundle, &entry);
    let mut mgr = Manager::new(env.regions);
    let image_size = layout.loads[0].size;
    for (what, tamper) in [
        ("one byte of the image flipped", Tamper::ImageByte(image_size / 2)),
        ("one byte of the signature flipped", Tamper::SignatureByte(17)),
    ] {
        expect_refused(&mut mgr, &entry, &layout, tamper, "vm-bad-image", what)?;
    }
    create_all(&mut mgr, env, 1)?;
    mgr.run_all(&mut crate::vmm::Plain);
    mgr.result()?;
    if mgr.powered_off != 1 {
        return Err("the untouched image did not run to its end");
    }
    Ok(())
}

/// `signed-binding`: the bundle's first VM has two signed images (the test guest, the entry, and
/// a line of data) and its second VM the same guest with other data. Each correctly signed image
/// laid out otherwise is refused: the data image at another address, the two swapped (the data
/// as the entry), the data image of the other VM's set. The layout as signed verifies, and the
/// guest prints its data image and powers off.
pub fn signed_binding(env: &VmEnv) -> Outcome {
    const SCENARIO: &str = "signed-binding";
    let bundle = env.bundle()?;
    let (entry, other) = (env.entry(0)?, env.entry(1)?);
    let signed = Layout::of(&bundle, &entry);
    let theirs = Layout::of(&bundle, &other);
    if signed.count != 2 || theirs.count != 2 {
        return Err("signed-binding needs two VMs with two images each");
    }
    let mut mgr = Manager::new(env.regions);
    let mut moved = signed;
    moved.loads[1].gpa += 0x10_0000;
    let mut swapped = signed;
    swapped.loads.swap(0, 1);
    let mut mixed = signed;
    mixed.loads[1] = theirs.loads[1];
    for (what, layout) in [
        ("image at another address", moved),
        ("images swapped, the data image as the entry", swapped),
        ("image from another VM's set", mixed),
    ] {
        expect_refused(&mut mgr, &entry, &layout, Tamper::None, SCENARIO, what)?;
    }
    match mgr.create(&entry, &signed, Tamper::None) {
        Ok(_) => kprintln!("{SCENARIO}: the signed layout: verified"),
        Err((_, e)) => {
            kprintln!("{SCENARIO}: the signed layout: {} failed: {:?}", e.step, e.status());
            return Err("the signed layout was refused");
        }
    }
    let mut watch = Watch(Expect::new(&["data image: signed data for ", "bye"]));
    mgr.run_all(&mut watch);
    mgr.result()?;
    if !watch.0.all_seen() || mgr.powered_off != 1 {
        return Err("the verified guest did not print its data image and power off");
    }
    Ok(())
}

/// `vm-irq`: the host's physical timer fires while a guest spins without exiting: the interrupt
/// takes the CPU back to KCore, which returns it to the host as an IRQ exit; the host silences its
/// timer and the guest runs on to its end.
pub fn vm_irq(env: &VmEnv, gic: &crate::dtb::GicInfo) -> Outcome {
    use crate::arch::gic;
    struct Irq(u64, bool);
    impl Hooks for Irq {
        fn interrupt(&mut self, vm: &Vm) {
            self.0 += 1;
            self.1 |= gic::physical_timer_fired();
            gic::disarm_physical_timer();
            kprintln!("vm {}: IRQ exit (the host's physical timer), timer silenced", vm.name());
        }
    }
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    gic::enable_ppi(gic, gic::TIMER_PPI);
    // 5 ms from now: well inside the guest's 50 ms of spinning.
    gic::arm_physical_timer(hvc::counter_frequency() / 200);
    let mut hooks = Irq(0, false);
    mgr.run_all(&mut hooks);
    gic::disarm_physical_timer();
    mgr.result()?;
    if hooks.0 == 0 || !hooks.1 {
        return Err("no IRQ exit came while the guest spun");
    }
    if mgr.powered_off != 1 {
        return Err("the guest did not run on to its end");
    }
    Ok(())
}

/// `guest-fuzz`: a guest throws 2,000 random hypercalls, SMCs, trapped system registers, share
/// calls and WFEs at KCore (seeded by KServ; the seed is printed). KCore must survive them all,
/// with its invariants checked after each share call and each VCPU_RUN, and the guest must get to
/// power itself off.
pub fn guest_fuzz(env: &VmEnv) -> Outcome {
    struct Seed(u64, Expect);
    impl Hooks for Seed {
        fn answer(&mut self, _vm: &Vm) -> u64 {
            self.0
        }
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            self.1.line(line);
        }
    }
    let seed = fuzz_seed(env);
    kprintln!("guest-fuzz: seed {seed:#x} (rerun with fuzz.seed={seed:x})");
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    let mut hooks = Seed(seed, Expect::new(&["fuzzed 2000 operations", "PMU hidden from ID_AA64DFR0_EL1", "bye"]));
    mgr.run_all(&mut hooks);
    mgr.result()?;
    if mgr.powered_off != 1 || !hooks.1.all_seen() {
        return Err("the fuzzing guest did not finish its run");
    }
    Ok(())
}

/// The fuzzers' seed: `fuzz.seed=HEX` from the boot arguments, else the counter.
fn fuzz_seed(env: &VmEnv) -> u64 {
    corevisor_abi::bootargs::value(env.bootargs, "fuzz.seed")
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(hvc::counter)
}

/// `hvc-fuzz`: on each of the four cores at once, 10,000 hypercalls with random ids and
/// arguments, each core seeded from the base seed ([`core_seed`]). KCore checks its invariants
/// after each (the test build); every call must come back with an SMCCC status, and each core
/// checks that KCore still answers afterwards.
pub fn hvc_fuzz(env: &VmEnv, gic: &GicInfo) -> Outcome {
    use crate::arch::sync::SpinLock;
    use crate::smp::{self, CORES};
    use crate::vm_plan::core_seed;
    use alloc::sync::Arc;
    const CALLS: u64 = 10_000;
    let base = fuzz_seed(env);
    kprintln!("hvc-fuzz: base seed {base:#x} (rerun with fuzz.seed={base:x}), {CALLS} calls on each of {CORES} cores");
    let scratch = env.regions[0].map(|(base, _)| base).ok_or("no scratch region")?;
    let kcore_base = env.kcore_base;
    smp::start_cores(gic, &[crate::arch::gic::TIMER_PPI])?;
    let outcomes: Arc<SpinLock<[Option<Outcome>; CORES]>> = Arc::new(SpinLock::new([None; CORES]));
    let results = outcomes.clone();
    smp::on_every_core(move |core| {
        let seed = core_seed(base, core);
        kprintln!("hvc-fuzz: core {core}: seed {seed:#x}");
        let outcome = fuzz_calls(Rng::new(seed), CALLS, scratch, kcore_base).map(|(ok, refused)| {
            kprintln!("hvc-fuzz: core {core}: {CALLS} calls, {ok} succeeded, {refused} refused; KCore still answers");
        });
        results.lock()[core] = Some(outcome);
    })?;
    let outcomes = *outcomes.lock();
    for outcome in outcomes {
        outcome.ok_or("a core did not finish its calls")??;
    }
    Ok(())
}

/// `calls` random hypercalls from `rng`, then VERSION; returns how many succeeded and how many
/// were refused, or why the run failed.
fn fuzz_calls(mut rng: Rng, calls: u64, scratch: u64, kcore_base: u64) -> Result<(u64, u64), &'static str> {
    let arg = |rng: &mut Rng| match rng.below(8) {
        0 => rng.below(20),
        1 => scratch + rng.below(4096) * 4096,
        2 => (scratch >> 12) + rng.below(4096),
        3 => kcore_base + rng.below(64) * 4096,
        4 => kcore_base >> 12,
        5 => corevisor_abi::guest_dev::RAM_BASE + rng.below(4096) * 4096,
        6 => rng.below(1 << 20) * 4096,
        _ => rng.next(),
    };
    let (mut ok, mut refused) = (0u64, 0u64);
    for _ in 0..calls {
        let function = match rng.below(10) {
            0 => rng.next() as u32,
            1 => guest_call::SET_DESC_PFN + rng.below(2) as u32,
            2 => HYP_CALL_BASE + rng.below(0x1_0000) as u32,
            _ => HYP_CALL_BASE + rng.below(u64::from(host_call::COUNT) + 2) as u32,
        };
        // Powering the machine off would end the run.
        let function = if function == host_call::SYSTEM_OFF { host_call::NULL } else { function };
        let args = [arg(&mut rng), arg(&mut rng), arg(&mut rng), arg(&mut rng), arg(&mut rng), arg(&mut rng)];
        let r = hvc::hyp_call(function, args);
        match Status::from_reg(r.status) {
            Some(Status::Success) => ok += 1,
            Some(_) => refused += 1,
            None => return Err("a hypercall returned something that is not an SMCCC status"),
        }
    }
    let version = hvc::hyp_call(host_call::VERSION, [0; 6]);
    if version.status != Status::Success.as_reg() {
        return Err("KCore no longer answers VERSION");
    }
    Ok((ok, refused))
}

/// The VM figures of `cargo xtask bench`, from the bundle's BENCH guest: a VCPU_RUN that ends in
/// the guest's next MMIO read (world switch both ways), the share calls KCore serves without
/// leaving the guest's world, and an MMIO exit handled by KServ over all ELs.
pub fn bench_vm(env: &VmEnv, gic: &GicInfo) -> Outcome {
    use crate::arch::pmu;
    use crate::scenario::stats;
    use corevisor_abi::exit;
    const SAMPLES: usize = 16;
    const PAIRS: u64 = 16;
    let bundle = env.bundle()?;
    let entry = env.entry(0)?;
    let mut mgr = Manager::new(env.regions);
    // Image verification (issue 13): the bench guest's image is padded to a few MiB, so that
    // the per-byte cost shows past the signature check's fixed one.
    pmu::start_el2_instruction_counter();
    mgr.verify_counter = Some(pmu::read_counter);
    let layout = Layout::of(&bundle, &entry);
    let slot = mgr.create(&entry, &layout, Tamper::None).map_err(|_| "the bench VM could not be created")?;
    let bytes: u64 = layout.loads().iter().map(|load| load.size).sum();
    let cost = mgr.verify_cost;
    let chunk_bytes = host_call::VERIFY_CHUNK_PAGES * 4096;
    kprintln!(
        "bench image-verify el2_instructions={} bytes={bytes} calls={} chunk_el2={} chunk_bytes={chunk_bytes}",
        cost.total,
        cost.calls,
        cost.first_call
    );
    let vmid = start_bench_guest(&mut mgr, slot)?;
    let run = |answer: u64| hvc::hyp_call_wide(host_call::VCPU_RUN, [vmid, 0, answer, 0]);
    pmu::start_el2_instruction_counter();
    pmu::start_all_el_instruction_counter();
    let measure = |command: u64| measure_bench_run(vmid, command);
    let (mut run_el2, mut run_all, mut share) = ([0u64; SAMPLES], [0u64; SAMPLES], [0u64; SAMPLES]);
    for i in 0..SAMPLES {
        (run_all[i], run_el2[i]) = measure(1)?;
        let (_, with_shares) = measure(1 + PAIRS)?;
        share[i] = with_shares.saturating_sub(run_el2[i]) / (2 * PAIRS);
    }
    let print = |name: &str, key: &str, samples: &mut [u64]| -> Outcome {
        let s = stats(samples).ok_or("no samples")?;
        kprintln!("bench {name} {key}={} min={} max={} samples={SAMPLES}", s.median, s.min, s.max);
        Ok(())
    };
    print("vcpu-run", "el2_instructions", &mut run_el2.clone())?;
    print("guest-share-call", "el2_instructions", &mut share)?;
    let el2 = stats(&mut run_el2).ok_or("no samples")?.median;
    let all = stats(&mut run_all).ok_or("no samples")?.median;
    kprintln!("bench mmio-exit total_instructions={all} el2_instructions={el2} samples={SAMPLES}");
    // Issue 13: a PL011 DR store that KCore serves in place once the UART is the VM's console
    // (VM_CONSOLE): a run with STORES of them less a run without, per store. Fewer than a
    // buffer's worth, so none of them exits; the bytes come with the run's MMIO exit.
    const STORES: u64 = 64;
    let console = |page| hvc::hyp_call(host_call::VM_CONSOLE, [vmid, page, 0, 0, 0, 0]).status;
    if console(corevisor_abi::guest_dev::UART) != Status::Success.as_reg() {
        return Err("VM_CONSOLE refused the bench guest's UART");
    }
    let mut store = [0u64; SAMPLES];
    for sample in &mut store {
        let (_, without) = measure(1)?;
        let (_, with) = measure(corevisor_abi::guest_role::BENCH_CONSOLE | STORES)?;
        *sample = with.saturating_sub(without) / STORES;
    }
    print("guest-console-store", "el2_instructions", &mut store)?;
    if console(0) != Status::Success.as_reg() {
        return Err("VM_CONSOLE refused to turn the console off");
    }
    if gic.v3 {
        // A VCPU_RUN that ends in the guest's ICC_SGI1R_EL1 write (issue 13), then one back to
        // the guest's read of ANSWER.
        use corevisor_abi::guest_role::{BENCH_SGI, SYSREGS_SGI1R};
        let (mut sgi_el2, mut sgi_all) = ([0u64; SAMPLES], [0u64; SAMPLES]);
        for i in 0..SAMPLES {
            let (all_before, el2_before) = (pmu::read_all_el_counter(), pmu::read_counter());
            let [status, reason, a, ..] = run(BENCH_SGI);
            (sgi_all[i], sgi_el2[i]) = (pmu::read_all_el_counter() - all_before, pmu::read_counter() - el2_before);
            if status != Status::Success.as_reg() || reason != exit::SGI || a != SYSREGS_SGI1R {
                return Err("the bench guest's ICC_SGI1R_EL1 write did not come as an SGI exit");
            }
            measure(0)?;
        }
        let el2 = stats(&mut sgi_el2).ok_or("no samples")?.median;
        let all = stats(&mut sgi_all).ok_or("no samples")?.median;
        kprintln!("bench sgi-exit total_instructions={all} el2_instructions={el2} samples={SAMPLES}");
    }
    // The virtual timer delivered in KCore: a run with one timer interrupt against one without,
    // both once the vCPU's virtual interface is on (its LRs move on every run from then on).
    crate::arch::gic::enable_ppi(gic, crate::arch::gic::VIRTUAL_TIMER_PPI);
    let bench_vtimer = corevisor_abi::guest_role::BENCH_VTIMER;
    measure(bench_vtimer)?;
    let (mut vtimer, mut run_vgic_on) = ([0u64; SAMPLES], [0u64; SAMPLES]);
    for i in 0..SAMPLES {
        let (_, with_timer) = measure(bench_vtimer)?;
        (_, run_vgic_on[i]) = measure(1)?;
        vtimer[i] = with_timer.saturating_sub(run_vgic_on[i]);
    }
    print("vtimer-delivery", "el2_instructions", &mut vtimer)?;
    print("vcpu-run-vgic", "el2_instructions", &mut run_vgic_on)?;
    // Issue 15: one page moved from the host to the VM. The guest touches a page it never has
    // (BENCH_TOUCH); the run that carries KServ's page answer is counted: the move (with the
    // SMMU, the page also leaves the host's SMMU table and the SMMU's TLB), the guest's store
    // and its next read of ANSWER. `cargo xtask bench` runs this with and without the SMMU.
    let (region, ram_base) = mgr.vms[slot].as_ref().map(|vm| (vm.region, vm.entry.ram_base)).ok_or("no VM")?;
    let mut moves = [0u64; SAMPLES];
    for (i, sample) in moves.iter_mut().enumerate() {
        use corevisor_abi::guest_role::{BENCH_TOUCH, BENCH_TOUCH_BASE};
        let gpa = BENCH_TOUCH_BASE + i as u64 * 4096;
        let [status, reason, a, ..] = run(BENCH_TOUCH | gpa);
        if status != Status::Success.as_reg() || reason != exit::PAGE_FAULT || a & !0xfff != gpa {
            return Err("the bench guest's touch of a fresh page did not fault");
        }
        let page = (gpa - ram_base) >> 12;
        let before = pmu::read_counter();
        let [status, reason, a, ..] = run((region >> 12) + page);
        *sample = pmu::read_counter() - before;
        if status != Status::Success.as_reg() || reason != exit::MMIO || a != corevisor_abi::guest_dev::TEST_DEV_ANSWER
        {
            return Err("the bench guest did not take the page and come back to ANSWER");
        }
        if let Some(vm) = mgr.vms[slot].as_mut() {
            vm.given.set(page);
        }
    }
    print("page-answer", "el2_instructions", &mut moves)?;
    // Command 0: the guest powers off.
    let [status, reason, a, ..] = run(0);
    if status != Status::Success.as_reg() || reason != exit::HVC || a as u32 != corevisor_abi::psci::SYSTEM_OFF {
        return Err("the bench guest did not power off");
    }
    mgr.teardown(slot).map(|_| ())
}

/// Runs the freshly created BENCH guest in `slot` until it waits on ANSWER, serving CONFIG and
/// its page faults on the way. Returns its vmid.
fn start_bench_guest(mgr: &mut Manager, slot: usize) -> Result<u64, &'static str> {
    use corevisor_abi::{exit, guest_dev};
    let (vmid, region, ram_base, role) =
        mgr.vms[slot].as_ref().map(|vm| (vm.vmid, vm.region, vm.entry.ram_base, vm.entry.role)).ok_or("no VM")?;
    let mut answer = 0;
    loop {
        let [status, reason, a, _, _, _] = hvc::hyp_call_wide(host_call::VCPU_RUN, [vmid, 0, answer, 0]);
        if status != Status::Success.as_reg() {
            return Err("VCPU_RUN failed while the bench guest started");
        }
        answer = match (reason, a) {
            (exit::MMIO, guest_dev::TEST_DEV_CONFIG) => u64::from(role),
            (exit::MMIO, guest_dev::TEST_DEV_ANSWER) => return Ok(vmid),
            (exit::PAGE_FAULT, gpa) if gpa >= ram_base => {
                // KCore takes the page on the next run; teardown checks it comes back scrubbed.
                let page = (gpa - ram_base) >> 12;
                if let Some(vm) = mgr.vms[slot].as_mut() {
                    vm.given.set(page);
                }
                (region >> 12) + page
            }
            (exit::MMIO, guest_dev::UART) | (exit::WFI, _) => 0,
            _ => return Err("unexpected exit while the bench guest started"),
        };
    }
}

/// One VCPU_RUN of a BENCH guest waiting on ANSWER with `command`, back to its next ANSWER:
/// the instructions at every EL and at EL2, counted by this core's PMU (both counters started).
fn measure_bench_run(vmid: u64, command: u64) -> Result<(u64, u64), &'static str> {
    use crate::arch::pmu;
    use corevisor_abi::{exit, guest_dev};
    let (all_before, el2_before) = (pmu::read_all_el_counter(), pmu::read_counter());
    let [status, reason, a, _, _, _] = hvc::hyp_call_wide(host_call::VCPU_RUN, [vmid, 0, command, 0]);
    let ok = status == Status::Success.as_reg() && reason == exit::MMIO && a == guest_dev::TEST_DEV_ANSWER;
    let (all_after, el2_after) = (pmu::read_all_el_counter(), pmu::read_counter());
    if !ok {
        return Err("the bench guest did not come back to ANSWER");
    }
    Ok((all_after - all_before, el2_after - el2_before))
}

/// Share/unshare pairs per measured run and samples per core of `bench-contention`, as in
/// [`bench_vm`].
const SHARE_PAIRS: u64 = 16;
const SHARE_SAMPLES: usize = 16;
/// Each core's bench guest (its vmid) and its share-call samples.
static SHARE_VMIDS: [AtomicU64; crate::smp::CORES] = [const { AtomicU64::new(0) }; crate::smp::CORES];
static SHARE_CALL_SAMPLES: [[AtomicU64; SHARE_SAMPLES]; crate::smp::CORES] =
    [const { [const { AtomicU64::new(0) }; SHARE_SAMPLES] }; crate::smp::CORES];
static SHARE_JOB_FAILED: AtomicBool = AtomicBool::new(false);
/// Samples of a share round during which another core finished one.
static SHARES_OVERLAPPED: AtomicU64 = AtomicU64::new(0);
/// Where a share sample's turn may end: within its first 640 timer ticks (some 10,000
/// instructions), about the two runs of a sample.
const SHARE_TURN_TICKS: u64 = 640;

/// One core's part of a share round: its own bench guest's share calls, measured as
/// [`bench_vm`] measures them (a run with the pairs less a run without, per call).
fn share_job(core: usize) {
    use crate::arch::pmu;
    pmu::start_el2_instruction_counter();
    pmu::start_all_el_instruction_counter();
    let vmid = SHARE_VMIDS[core].load(Ordering::Acquire);
    if !crate::smp::job_start() {
        SHARE_JOB_FAILED.store(true, Ordering::Release);
        return;
    }
    for (i, sample) in SHARE_CALL_SAMPLES[core].iter().enumerate() {
        let ticks = crate::smp::turn_ticks(core, i, SHARE_TURN_TICKS);
        let (pair, overlapped) = crate::smp::job_sample(ticks, || {
            measure_bench_run(vmid, 1).and_then(|(_, plain)| {
                measure_bench_run(vmid, 1 + SHARE_PAIRS).map(|(_, with_shares)| with_shares.saturating_sub(plain))
            })
        });
        SHARES_OVERLAPPED.fetch_add(u64::from(overlapped), Ordering::Relaxed);
        match pair {
            Ok(el2) => sample.store(el2 / (2 * SHARE_PAIRS), Ordering::Relaxed),
            Err(_) => SHARE_JOB_FAILED.store(true, Ordering::Release),
        }
    }
}

/// `bench-contention`'s guest share calls: the bundle's four BENCH guests started, then the
/// first one's share calls on core 0 alone, then each core's guest's at once
/// ([`crate::run::CONTENTION_ROUNDS`]).
pub fn bench_contention_vms(env: &VmEnv) -> Outcome {
    use crate::smp::{self, CORES};
    let bundle = env.bundle()?;
    let mut mgr = Manager::new(env.regions);
    let mut slots = [0usize; CORES];
    for (core, slot) in slots.iter_mut().enumerate() {
        let entry = env.entry(core)?;
        if entry.role != corevisor_abi::guest_role::BENCH {
            return Err("bench-contention needs four BENCH guests");
        }
        *slot = mgr
            .create(&entry, &Layout::of(&bundle, &entry), Tamper::None)
            .map_err(|_| "a bench VM could not be created")?;
        SHARE_VMIDS[core].store(start_bench_guest(&mut mgr, *slot)?, Ordering::Release);
    }
    for (cores, forced) in crate::run::CONTENTION_ROUNDS {
        SHARES_OVERLAPPED.store(0, Ordering::Release);
        crate::run::mark_round()?;
        smp::run_on_cores(share_job, cores, forced)?;
        crate::run::mark_round()?;
        if SHARE_JOB_FAILED.load(Ordering::Acquire) {
            return Err("a core's bench guest failed in the share round");
        }
        let mut samples: alloc::vec::Vec<u64> =
            SHARE_CALL_SAMPLES[..cores].iter().flatten().map(|s| s.load(Ordering::Relaxed)).collect();
        let s = crate::scenario::stats(&mut samples).ok_or("no samples")?;
        kprintln!(
            "bench contention-guest-share-call cores={cores} forced={} el2_instructions={} min={} max={} samples={} \
             overlapped={}",
            u8::from(forced),
            s.median,
            s.min,
            s.max,
            samples.len(),
            SHARES_OVERLAPPED.load(Ordering::Acquire)
        );
    }
    for (core, &slot) in slots.iter().enumerate() {
        let vmid = SHARE_VMIDS[core].load(Ordering::Acquire);
        // Command 0: the guest powers off.
        let [status, reason, a, ..] = hvc::hyp_call_wide(host_call::VCPU_RUN, [vmid, 0, 0, 0]);
        if status != Status::Success.as_reg()
            || reason != corevisor_abi::exit::HVC
            || a as u32 != corevisor_abi::psci::SYSTEM_OFF
        {
            return Err("a bench guest did not power off");
        }
        mgr.teardown(slot)?;
    }
    Ok(())
}

/// `reset-scrub`'s marker: the machine was reset by the scenario, and this many pattern words were
/// in the guest's memory then.
const RESET_MARKER: u64 = 0x7265_7365_742d_7363;

/// `reset-scrub`, over two boots. First boot: a guest fills 256 pages with a pattern it can
/// recognise anywhere and says so; KServ leaves a marker at `marker` (a host page QEMU does not
/// load anything into, so it survives the reset) and resets the machine with PSCI SYSTEM_RESET
/// while the guest holds its pattern. Second boot (the marker is there): KServ reads every word
/// of RAM it owns, `host_pages`, which is all of RAM but KCore's slot, and passes only if no
/// word of the pattern survived.
pub fn reset_scrub(env: &VmEnv, marker: u64, host_pages: impl Iterator<Item = u64>) -> Outcome {
    use crate::arch::cpu;
    use corevisor_abi::guest_role;
    if cpu::read_phys_u64(marker) == RESET_MARKER {
        let written = cpu::read_phys_u64(marker + 8);
        let (mut found, mut pages) = (0u64, 0u64);
        for page in host_pages {
            found += (page..page + 4096)
                .step_by(8)
                .filter(|&pa| guest_role::is_pattern_word(cpu::read_phys_u64(pa)))
                .count() as u64;
            pages += 1;
        }
        cpu::write_phys_u64(marker, 0);
        cpu::write_phys_u64(marker + 8, 0);
        kprintln!(
            "reset-scrub: after the reset, {found} of {written} guest pattern words found in {} MiB of host RAM",
            pages / 256
        );
        return if written == 0 {
            Err("the guest wrote no pattern before the reset")
        } else if found != 0 {
            Err("the guest's memory survived the reset")
        } else {
            Ok(())
        };
    }
    if let Some(pm) = env.pm_watchdog {
        let (tried, aborted) = attack_page(pm);
        kprintln!("reset-scrub: the PM watchdog at {pm:#x} is KCore's: {aborted} of {tried} host accesses aborted");
        if aborted != tried {
            return Err("the host reached the reset watchdog");
        }
    }
    struct Reset(u64);
    impl Hooks for Reset {
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            let Some(words) = line.strip_prefix("filled ").and_then(|l| l.split(' ').next()) else { return };
            let words = words.parse().unwrap_or(0);
            crate::arch::cpu::write_phys_u64(self.0 + 8, words);
            crate::arch::cpu::write_phys_u64(self.0, RESET_MARKER);
            kprintln!("reset-scrub: the guest holds {words} pattern words; resetting the machine");
            hvc::psci(corevisor_abi::psci::SYSTEM_RESET, [0; 3]);
            kprintln!("reset-scrub: SYSTEM_RESET returned");
        }
    }
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    mgr.run_all(&mut Reset(marker));
    cpu::write_phys_u64(marker, 0);
    Err("the machine was not reset while the guest held its pattern")
}

/// `host-dma`: while a ticking guest runs, the host tries every route by which a device (or the
/// GIC) it programs could write memory behind the stage-2, aimed at KCore's canary page or at
/// one of the VM's pages. Each must be refused: the register aborts (the device is not the
/// host's), or KCore's redistributor filter leaves it unchanged. KCore checks its canary after
/// every host trap; the guest checks its own memory at the end.
pub fn host_dma(env: &VmEnv, gic: &GicInfo, routes: &'static [DmaRoute]) -> Outcome {
    struct Dma {
        routes: &'static [DmaRoute],
        canary: u64,
        gicr: Option<u64>,
        tried: u64,
        refused: u64,
        intact: bool,
    }
    impl Hooks for Dma {
        fn after_exit(&mut self, vm: &Vm) {
            if self.tried > 0 {
                return;
            }
            let Some(vm_page) = vm.given.pages().next().map(|page| vm.region + page * 4096) else { return };
            for route in self.routes {
                let target = match route.attempt.target() {
                    Target::Canary => self.canary,
                    Target::VmPage => vm_page,
                };
                self.tried += 1;
                let refused = try_route(route.attempt, target, self.gicr);
                self.refused += u64::from(refused);
                let verdict = if refused { "refused" } else { "NOT REFUSED" };
                kprintln!("host-dma: {} ({target:#x}): {verdict}", route.name);
            }
        }
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            self.intact |= line == "memory intact";
        }
    }
    let canary = env.kcore_base + corevisor_abi::KCORE_CANARY_OFFSET;
    let gicr = gic.v3.then_some(gic.second);
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    let mut hooks = Dma { routes, canary, gicr, tried: 0, refused: 0, intact: false };
    mgr.run_all(&mut hooks);
    mgr.result()?;
    kprintln!("host-dma: {} of {} DMA routes refused", hooks.refused, hooks.tried);
    if hooks.tried != routes.len() as u64 || hooks.refused != hooks.tried {
        return Err("a DMA route was not refused");
    }
    if !hooks.intact || mgr.powered_off != 1 {
        return Err("the VM did not run to its end with its memory intact");
    }
    if let Some(rd) = gicr {
        gicr_waker_still_works(rd)?;
    }
    Ok(())
}

/// One DMA attempt at `target`; whether it was refused.
fn try_route(attempt: Attempt, target: u64, gicr: Option<u64>) -> bool {
    let (aborts_before, _, _) = exceptions::aborts();
    exceptions::expect_abort(true);
    let aborted_at = |pa: u64, store_at: u64| {
        let (count, elr, far) = exceptions::aborts();
        count == aborts_before + 1 && elr == store_at && far == pa
    };
    let refused = match attempt {
        Attempt::Store { pa, .. } => aborted_at(pa, hvc::probe_write_u32(pa, target as u32)),
        Attempt::FwCfgDma { register, .. } => {
            let descriptor = dma_descriptors::fw_cfg(target);
            aborted_at(register, hvc::probe_write(register, descriptor.to_be()))
        }
        Attempt::Bcm2835Dma { conblk_ad, .. } => {
            let block = dma_descriptors::bcm2835(target);
            aborted_at(conblk_ad, hvc::probe_write_u32(conblk_ad, block as u32 | BCM2835_BUS_ALIAS))
        }
        Attempt::GicrTableBase { offset, .. } => gicr.is_some_and(|rd| {
            let before = hvc::read_mmio_u64(rd + offset);
            hvc::probe_write(rd + offset, target | 0x7 << 56 | 0x13);
            let after = hvc::read_mmio_u64(rd + offset);
            exceptions::aborts().0 == aborts_before && after == before
        }),
        Attempt::GicrEnableLpis => gicr.is_some_and(|rd| {
            let ctlr = hvc::read_mmio_u32(rd);
            hvc::probe_write_u32(rd, ctlr | 1);
            exceptions::aborts().0 == aborts_before && hvc::read_mmio_u32(rd) & 1 == 0
        }),
    };
    exceptions::expect_abort(false);
    refused
}

/// The VideoCore's view of ARM memory: bus address = physical | 0xC000_0000.
const BCM2835_BUS_ALIAS: u32 = 0xC000_0000;

/// The descriptors a DMA engine would read from host memory.
mod dma_descriptors {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    #[repr(C, align(32))]
    struct Block<T, const N: usize>([T; N]);

    static FW_CFG: Block<AtomicU64, 2> = Block([AtomicU64::new(0), AtomicU64::new(0)]);
    static CONTROL_BLOCK: Block<AtomicU32, 8> = Block([const { AtomicU32::new(0) }; 8]);
    static SOURCE: Block<AtomicU64, 4> = Block([const { AtomicU64::new(0x0bad_d0a0_0bad_d0a0) }; 4]);

    /// A `FWCfgDmaAccess` (big-endian: control, length, address) that reads the signature item
    /// (key 0: SELECT | READ) into `target`. Returns its address.
    pub fn fw_cfg(target: u64) -> u64 {
        const SELECT: u32 = 0x08;
        const READ: u32 = 0x02;
        let (control, length) = (SELECT | READ, 4096u32);
        FW_CFG.0[0].store(u64::from(control.to_be()) | u64::from(length.to_be()) << 32, Ordering::SeqCst);
        FW_CFG.0[1].store(target.to_be(), Ordering::SeqCst);
        FW_CFG.0.as_ptr() as u64
    }

    /// A BCM2835 DMA control block copying 32 bytes of KServ's data to `target`. Returns its
    /// address.
    pub fn bcm2835(target: u64) -> u64 {
        const SRC_INC: u32 = 1 << 8;
        const DEST_INC: u32 = 1 << 4;
        let bus = |pa: u64| pa as u32 | super::BCM2835_BUS_ALIAS;
        let fields = [SRC_INC | DEST_INC, bus(SOURCE.0.as_ptr() as u64), bus(target), 32, 0, 0, 0, 0];
        for (slot, value) in CONTROL_BLOCK.0.iter().zip(fields) {
            slot.store(value, Ordering::SeqCst);
        }
        CONTROL_BLOCK.0.as_ptr() as u64
    }
}

/// The redistributor's other registers in its control page stay the host's: GICR_WAKER, which
/// wakes the redistributor, is performed by KCore on the host's behalf.
fn gicr_waker_still_works(rd: u64) -> Outcome {
    const PROCESSOR_SLEEP: u32 = 1 << 1;
    const CHILDREN_ASLEEP: u32 = 1 << 2;
    let waker = rd + 0x14;
    hvc::probe_write_u32(waker, hvc::read_mmio_u32(waker) & !PROCESSOR_SLEEP);
    let mut polls = 0;
    while hvc::read_mmio_u32(waker) & CHILDREN_ASLEEP != 0 {
        polls += 1;
        if polls > 1_000_000 {
            return Err("GICR_WAKER did not wake the redistributor");
        }
    }
    if hvc::read_mmio_u32(waker) & PROCESSOR_SLEEP != 0 {
        return Err("GICR_WAKER did not take the host's write");
    }
    kprintln!("host-dma: GICR_WAKER still answers the host (redistributor awake)");
    Ok(())
}

/// `guest-sysregs` (issue 13): a guest touches the system registers a Linux boot touches first:
/// MDSCR_EL1 with no vectors set up, the OS lock, its breakpoint and watchpoint registers (read
/// as zero by KCore), executes WFE (on hardware a WFE exit, resumed at once: the guest checks it
/// is back well before its timer; QEMU does not trap WFE), and on GICv3 writes ICC_SGI1R_EL1,
/// which must reach KServ as one SGI exit with the exact value.
pub fn guest_sysregs(env: &VmEnv, gic_v3: bool) -> Outcome {
    use corevisor_abi::guest_role::SYSREGS_SGI1R;
    struct Sysregs {
        gic_v3: bool,
        wfe_exits: u64,
        sgis: u64,
        sgi_value: u64,
        lines: Expect,
    }
    impl Hooks for Sysregs {
        /// The guest asks whether it may write ICC_SGI1R_EL1.
        fn answer(&mut self, _vm: &Vm) -> u64 {
            self.gic_v3 as u64
        }
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            self.lines.line(line);
        }
        fn wfe(&mut self, vm: &Vm, vcpu: usize) {
            self.wfe_exits += 1;
            kprintln!("vm {}: vcpu {vcpu} WFE exit, resumed at once", vm.name());
        }
        fn sgi(&mut self, vm: &Vm, vcpu: usize, value: u64) {
            self.sgis += 1;
            self.sgi_value = value;
            kprintln!("vm {}: vcpu {vcpu} SGI exit, ICC_SGI1R_EL1 = {value:#x}", vm.name());
        }
    }
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    let lines = Expect::new(&[
        "MDSCR_EL1 with no vectors: reads 0x0",
        "OSLSR_EL1 = 0x8",
        "debug registers: all read as zero, 0 UNDEFs",
        "wfe: back before its timer",
        "bye",
    ]);
    let mut hooks = Sysregs { gic_v3, wfe_exits: 0, sgis: 0, sgi_value: 0, lines };
    mgr.run_all(&mut hooks);
    mgr.result()?;
    if mgr.powered_off != 1 || !hooks.lines.all_seen() {
        return Err("the guest did not get through its system registers");
    }
    // QEMU (TCG, up to 10.0 at least) never traps WFE to EL2: there are no WFE exits to see
    // there, and the guest's own check (back well before its timer) is what this run shows.
    kprintln!("guest-sysregs: {} WFE exit(s), {} SGI exit(s)", hooks.wfe_exits, hooks.sgis);
    match (gic_v3, hooks.sgis) {
        (true, 1) if hooks.sgi_value == SYSREGS_SGI1R => Ok(()),
        (true, _) => Err("the guest's ICC_SGI1R_EL1 write did not come as one SGI exit with its value"),
        (false, 0) => Ok(()),
        (false, _) => Err("an SGI exit on a GICv2 machine"),
    }
}

/// `vm-large` (issue 13): a guest with 128 MiB of RAM writes a word into every page above its
/// first 8 MiB and checks them; KServ answers its faults with 2 MiB blocks wherever a block is
/// wholly free, so the faults number a few dozen, not one per page. Teardown finds every page
/// back and scrubbed.
pub fn vm_large(env: &VmEnv) -> Outcome {
    /// Records the VM's fault counts (blocks, pages) when the guest reports its pages.
    struct Faults(Option<(u64, u64)>);
    impl crate::vmm::Hooks for Faults {
        fn console_line(&mut self, vm: &Vm, line: &str) {
            if line.starts_with("large: touched") {
                self.0 = Some((vm.block_faults, vm.faults));
            }
        }
    }
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    let mut faults = Faults(None);
    mgr.run_all(&mut faults);
    mgr.result()?;
    let (blocks, pages) = faults.0.ok_or("the guest never reported its pages")?;
    // The guest touches 120 MiB above its first 8 MiB: 60 whole blocks. Its first 8 MiB (image,
    // .bss, stacks) share a block with the image pages, so they fault page by page.
    kprintln!("vm-large: {blocks} stage-2 faults answered with a 2 MiB block");
    kprintln!("vm-large: {pages} with a 4 KiB page (beside the image)");
    if pages >= 512 {
        return Err("too many faults answered page by page");
    }
    Ok(())
}

/// `vm-vgic`: KCore's virtual interrupts. The host's injections are refused for a bad INTID, a
/// vCPU the VM lacks and a VM not yet verified; a guest that turned its virtual CPU interface on
/// (GICv2: the GICV frame mapped at its GICC) acknowledges and ends an SGI and five SPIs the host
/// injects, the higher priority first, the last two after KCore refilled the list registers on
/// the underflow maintenance interrupt; then its own virtual timer's interrupts. KCore serves both
/// interrupts in place: the host sees no IRQ exit.
pub fn vm_vgic(env: &VmEnv, gic: &GicInfo) -> Outcome {
    use crate::arch::gic;
    use corevisor_abi::guest_role::VGIC_READY;
    const SGI: u64 = 3;
    const SPI: u64 = 40;
    let inject =
        |vmid, vcpu, intid, priority| hvc::hyp_call(host_call::INJECT_IRQ, [vmid, vcpu, intid, priority, 0, 0]);
    // A VM that is registered but not verified takes no interrupt.
    let unverified = hvc::hyp_call(host_call::REGISTER_VM, [corevisor_abi::guest_dev::RAM_BASE, 1 << 20, 0, 0, 0, 0]);
    if unverified.status != Status::Success.as_reg() {
        return Err("REGISTER_VM failed");
    }
    let vmid = unverified.values[0];
    hvc::hyp_call(host_call::REGISTER_VCPU, [vmid, 0, 0, 0, 0, 0]);
    let refused_unverified = inject(vmid, 0, SPI, 0xa0).status == Status::Denied.as_reg();
    hvc::hyp_call(host_call::DESTROY_VM, [vmid, 0, 0, 0, 0, 0]);
    if !refused_unverified {
        return Err("INJECT_IRQ into an unverified VM was not refused");
    }
    kprintln!("vm-vgic: injection into an unverified VM: DENIED");

    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, 1)?;
    let vmid = mgr.vms.iter().flatten().next().map(|vm| vm.vmid).ok_or("no VM")?;
    for (what, vcpu, intid, priority) in [
        ("INTID 1020", 0, 1020, 0xa0),
        ("vCPU 1 (not registered)", 1, SPI, 0xa0),
        ("vCPU 8", 8, SPI, 0xa0),
        ("priority 256", 0, SPI, 256),
    ] {
        if inject(vmid, vcpu, intid, priority).status != Status::InvalidParameters.as_reg() {
            return Err("a malformed INJECT_IRQ was not refused");
        }
        kprintln!("vm-vgic: injection with {what}: INVALID_PARAMETERS");
    }
    if !gic.v3 {
        let gicv = gic.gicv.filter(|&g| g != 0).ok_or("no GICV frame in the DT")?;
        let at = corevisor_abi::guest_dev::GUEST_GICC;
        if hvc::hyp_call(host_call::PHYS_ADDR_IOREMAP, [vmid, at, gicv, 0x2000, 0, 0]).status
            != Status::Success.as_reg()
        {
            return Err("PHYS_ADDR_IOREMAP of the GICV frame failed");
        }
        kprintln!("vm-vgic: GICV {gicv:#x} mapped at the guest's GICC {at:#x}");
    }
    gic::enable_ppi(gic, gic::VIRTUAL_TIMER_PPI);
    gic::enable_ppi(gic, gic::MAINTENANCE_PPI);

    struct Injector {
        expect: Expect,
        v2: bool,
        injected: Result<(), &'static str>,
        irq_exits: u64,
    }
    impl Hooks for Injector {
        fn answer(&mut self, _vm: &Vm) -> u64 {
            self.v2 as u64
        }
        fn notify(&mut self, vm: &Vm, value: u64) {
            if value != VGIC_READY {
                return;
            }
            let inject = |intid, priority| hvc::hyp_call(host_call::INJECT_IRQ, [vm.vmid, 0, intid, priority, 0, 0]);
            // The SPIs first, at the lower priority; the SGI twice: it stays pending once. Six
            // INTIDs for 4 list registers: two wait for the underflow refill.
            for (intid, priority) in
                [(SPI, 0xa0), (SGI, 0x80), (SGI, 0x80), (41, 0xa0), (42, 0xa0), (43, 0xa0), (44, 0xa0)]
            {
                if inject(intid, priority).status != Status::Success.as_reg() {
                    self.injected = Err("INJECT_IRQ of a valid interrupt was refused");
                }
            }
            kprintln!("vm {}: injected SPIs {SPI}-44 (priority 0xa0) and SGI {SGI} (0x80, twice)", vm.name());
        }
        fn interrupt(&mut self, _vm: &Vm) {
            self.irq_exits += 1;
        }
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            self.expect.line(line);
        }
    }
    let mut hooks = Injector {
        expect: Expect::new(&[
            "vgic: interface on",
            "vgic: INTID 3 first (the highest priority), then 40-44, each once",
            "vgic: 5 virtual timer interrupts",
            "bye",
        ]),
        v2: !gic.v3,
        injected: Ok(()),
        irq_exits: 0,
    };
    mgr.run_all(&mut hooks);
    mgr.result()?;
    hooks.injected?;
    if !hooks.expect.all_seen() || mgr.powered_off != 1 {
        return Err("the guest did not take its interrupts and power off");
    }
    // Every timer interrupt was KCore's to deliver: none went through the host.
    kprintln!("vm-vgic: {} IRQ exits reached the host", hooks.irq_exits);
    if hooks.irq_exits != 0 {
        return Err("the guest's timer interrupts made host round trips");
    }
    Ok(())
}

/// `linux`: the bundle's Linux VM (`cargo xtask run --guest-kernel`) runs until it powers itself
/// off, each vCPU on its own core ([`run_linux`]). A reset (Linux's panic with `panic=-1`), a
/// stop or a failed teardown fails the run.
pub fn linux(env: &VmEnv, gic: &GicInfo) -> Outcome {
    run_linux(env, gic, crate::vmm::Plain, "linux", false).map(drop)
}

/// Runs the bundle's Linux VM with `hooks` until it powers itself off (see [`linux`]). With a core
/// per vCPU (KServ runs on [`smp::CORES`]), vCPU i runs on core i with no time slice
/// ([`smp::Placement::VcpuPerCore`]): a vCPU that spins on a sibling spins while the sibling
/// runs, and no host timer interrupts it. Only a VM with more vCPUs than cores shares this core,
/// each run a time slice at most. With a core per vCPU, prints where each vCPU ran as `name`
/// (failing if one ran elsewhere) and returns the run's report, whose meters are set when
/// `metered`; returns the hooks either way.
fn run_linux<H: Hooks + Send + 'static>(
    env: &VmEnv,
    gic: &GicInfo,
    mut hooks: H,
    name: &str,
    metered: bool,
) -> Result<(H, Option<smp::Report>), &'static str> {
    let vcpus = env.entry(0)?.vcpus as usize;
    if vcpus <= smp::CORES {
        smp::start_cores(gic, &LINUX_PPIS)?;
        let mgr = create_linux_vm(env, gic)?;
        let (mgr, hooks, report) = smp::run_all(mgr, hooks, smp::Placement::VcpuPerCore, metered)?;
        check_placement(name, vcpus, &report)?;
        mgr.result()?;
        return match (mgr.powered_off, mgr.stopped) {
            (1, 0) => Ok((hooks, Some(report))),
            _ => Err("the Linux VM did not power itself off"),
        };
    }
    // KCore delivers a running vCPU's virtual timer and refills its list registers itself, on
    // the physical IRQ exits these two PPIs cause; the host's physical timer ends a time slice.
    for ppi in LINUX_PPIS {
        crate::arch::gic::enable_ppi(gic, ppi);
    }
    let mut mgr = create_linux_vm(env, gic)?;
    mgr.meter = metered.then(ExitMeter::new);
    mgr.timer_wakes = true;
    mgr.run_all(&mut hooks);
    mgr.result()?;
    match (mgr.powered_off, mgr.stopped) {
        (1, 0) => Ok((hooks, None)),
        _ => Err("the Linux VM did not power itself off"),
    }
}

/// Prints, as `name`, the runs each core made of each vCPU of the Linux VM and the cross-core
/// kicks; fails unless every one of its `vcpus` ran, each only on its own core.
fn check_placement(name: &str, vcpus: usize, report: &smp::Report) -> Outcome {
    let mut elsewhere = false;
    for (slot, entry) in report.vms.iter().enumerate() {
        let Some(entry) = entry else { continue };
        for (vcpu, by_core) in report.runs[slot].iter().enumerate() {
            for (core, &runs) in by_core.iter().enumerate().filter(|(_, &runs)| runs != 0) {
                kprintln!("{name}: vm {} vcpu {vcpu} ran on core {core} ({runs} runs)", entry.name());
                elsewhere |= core != vcpu;
            }
        }
    }
    let kicks_taken: u64 = report.kicks_taken.iter().sum();
    kprintln!(
        "{name}: cross-core kicks sent: {} ({} to a running vCPU, {} to an idle core); {kicks_taken} taken",
        report.kicks_to_running + report.kicks_to_idle,
        report.kicks_to_running,
        report.kicks_to_idle
    );
    let slot = report.vms.iter().position(Option::is_some).ok_or("the Linux VM never ran")?;
    let ran = (0..vcpus).filter(|&v| report.runs[slot][v][v] != 0).count();
    if elsewhere || ran != vcpus {
        return Err("a vCPU did not run, or ran on another vCPU's core");
    }
    kprintln!("{name}: each of the {vcpus} vCPUs ran on its own core");
    Ok(())
}

/// The PPIs a core that runs Linux vCPUs enables: the two KCore serves in place (a running
/// vCPU's virtual timer, the list registers' maintenance) and the host's physical timer (a
/// time slice's end, or an idle core's wake-up).
const LINUX_PPIS: [u64; 3] =
    [crate::arch::gic::VIRTUAL_TIMER_PPI, crate::arch::gic::MAINTENANCE_PPI, crate::arch::gic::TIMER_PPI];

/// A VM manager holding the bundle's Linux VM, created and verified.
fn create_linux_vm(env: &VmEnv, gic: &GicInfo) -> Result<Manager, &'static str> {
    let bundle = env.bundle()?;
    let entry = env.entry(0)?;
    if !entry.is_linux() {
        return Err("the bundle's first VM is not a Linux VM");
    }
    let mut mgr = Manager::new(env.regions);
    if let Err((_, e)) = mgr.create_linux(&bundle, &entry, gic) {
        kprintln!("vm {}: {} failed: {:?}", entry.name(), e.step, e.status());
        return Err("the Linux VM could not be created");
    }
    kprintln!(
        "vm {}: created, {} vCPUs, {} MiB, kernel and initrd verified by KCore",
        entry.name(),
        entry.vcpus,
        entry.ram_size >> 20
    );
    Ok(mgr)
}

/// `linux-smp`: the bundle's Linux VM (4 vCPUs) with vCPU i on core i, as in [`linux`]. What
/// one core's exit makes pending for a vCPU on another core (an IPI through the GIC model, a
/// PSCI CPU_ON) reaches it by a cross-core kick. Passes if every vCPU ran, each only on its own
/// core, kicks were sent (with more than one vCPU), and the VM powered off and came back
/// scrubbed.
pub fn linux_smp(env: &VmEnv, gic: &GicInfo) -> Outcome {
    let vcpus = env.entry(0)?.vcpus as usize;
    if vcpus > smp::CORES {
        return Err("linux-smp gives each vCPU a core: at most 4 vCPUs");
    }
    let (_, report) = run_linux(env, gic, crate::vmm::Plain, "linux-smp", false)?;
    let report = report.ok_or("the Linux VM did not get a core per vCPU")?;
    if vcpus > 1 && report.kicks_to_running + report.kicks_to_idle == 0 {
        return Err("no cross-core kick was sent");
    }
    Ok(())
}

/// `linux-bench` (`cargo xtask bench`): [`linux`], each vCPU on its own core, with every core
/// reading the PMU's three instruction counters (EL2; EL1 and EL2; every EL) around its
/// VCPU_RUNs. Under `-icount` QEMU's PMU counts QEMU's own instruction count, which is the
/// whole machine's (every core's instructions, not the time it skips while every core idles):
/// core 0's every-EL counter from vCPU 0's first VCPU_RUN to the return of the one that carried
/// the guest's SYSTEM_OFF (Linux powers off from CPU 0) is the run phase over every core, the
/// same count as the bare boot's `query-replay`. Prints it (`bench linux-run`) and each exit
/// class's count and instructions over all cores, those of exits that held other cores' work
/// left out ([`crate::exit_meter::POLLUTED`]; `bench linux-exit-NAME`).
pub fn linux_bench(env: &VmEnv, gic: &GicInfo) -> Outcome {
    use crate::arch::pmu;
    if !pmu::inst_retired_supported() {
        return Err("the PMU does not count INST_RETIRED (run QEMU with -icount shift=0,sleep=off)");
    }
    let (_, report) = run_linux(env, gic, crate::vmm::Plain, "linux-bench", true)?;
    let meters = report.ok_or("the bench gives each vCPU a core: at most 4 vCPUs")?.meters;
    let run = match &meters[0] {
        Some(meter) if meter.done => meter.run,
        _ => return Err("core 0's meter never saw the guest's SYSTEM_OFF (Linux powers off from vCPU 0)"),
    };
    let mut classes = [crate::exit_meter::ClassCost::default(); ExitClass::ALL.len()];
    for meter in meters.iter().flatten() {
        for (sum, cost) in classes.iter_mut().zip(meter.classes) {
            (sum.exits, sum.el2, sum.host_el1, sum.polluted) = (
                sum.exits + cost.exits,
                sum.el2 + cost.el2,
                sum.host_el1 + cost.host_el1,
                sum.polluted + cost.polluted,
            );
        }
    }
    // Core 0's waits are part of the run phase: the other cores ran meanwhile.
    kprintln!(
        "bench linux-run every_el={} core0_waiting={} polluted_above={}",
        run.every_el + run.idle,
        run.idle,
        crate::exit_meter::POLLUTED
    );
    for class in ExitClass::ALL {
        let cost = classes[class as usize];
        kprintln!(
            "bench linux-exit-{} exits={} el2={} host_el1={} polluted={} code={}",
            class.name(),
            cost.exits,
            cost.el2,
            cost.host_el1,
            cost.polluted,
            class as usize
        );
    }
    // Each core's exits in order, a letter each, now that the measured phase is over: xtask
    // lines them up with the core's VCPU_RUNs in QEMU's execution trace.
    for (core, meter) in meters.iter().enumerate() {
        let Some(meter) = meter else { continue };
        kprintln!("bench linux-classes core={core} exits={}", meter.sequence.len());
        for (chunk, classes) in meter.sequence.chunks(CLASSES_PER_LINE).enumerate() {
            let letters: alloc::string::String = classes.iter().map(|class| class.letter()).collect();
            kprintln!("bench linux-classes core={core} from={} seq={letters}", chunk * CLASSES_PER_LINE);
        }
    }
    Ok(())
}

/// Exit classes per `bench linux-classes` line.
const CLASSES_PER_LINE: usize = 100;

/// The Linux console lines after which `host-attacks-linux` attacks, besides the VM's first
/// exit (early in its boot, its kernel image just verified): its MMU is on; both vCPUs are up;
/// its init memory is freed; init runs; it powers off. Console lines, like exit counts under
/// `-icount`, come at the same point of every boot.
const LINUX_ATTACK_LINES: [&str; 5] = [
    "Booting Linux on physical CPU",
    "smp: Brought up",
    "Freeing unused kernel memory",
    LINUX_ATTACK_EVERY_PAGE_AFTER,
    "linux-guest: powering off",
];

/// The round that attacks every given page of the kernel's image, its page tables among them,
/// comes after this line; the others take every [`LINUX_ATTACK_STRIDE`]th page.
const LINUX_ATTACK_EVERY_PAGE_AFTER: &str = "linux-guest: init started";
const LINUX_ATTACK_STRIDE: u64 = 32;

/// `host-attacks-linux`: the `linux` scenario's VM, and at six points of its boot the host reads,
/// writes and reads back pages it gave it ([`crate::vm_plan::attack_targets`]): its kernel's
/// image, text and data and its page tables (`swapper_pg_dir`, `init_pg_dir` and the idmap's lie
/// inside `image_size`; the tables Linux allocates later lie in the faulted-in RAM, sampled), in
/// one round every page of it; the RAM it faulted in, 2 MiB blocks and 4 KiB pages (those past the
/// image's signed bytes lie in it); its initrd and device tree. Every access must abort with
/// nothing read, and Linux must boot to its end as in `linux`.
pub fn host_attacks_linux(env: &VmEnv, gic: &GicInfo) -> Outcome {
    use crate::vm_plan::{attack_targets, Attacked};
    const PAGE: u64 = 4096;
    #[derive(Default)]
    struct Attack {
        /// The kernel image's pages, as indices into the VM's region.
        kernel: core::ops::Range<u64>,
        /// The first of them past its signed bytes (BSS, initial page tables): KServ gives those
        /// in answer to the guest's stage-2 faults.
        faulted_from: u64,
        /// The console line that asked for the next round.
        after_line: Option<&'static str>,
        rounds: u64,
        /// Why a round failed: an access did not abort, or it missed a kind of page.
        failure: Option<&'static str>,
        tried: u64,
        aborted: u64,
    }
    impl Hooks for Attack {
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            if let Some(&after) = LINUX_ATTACK_LINES.iter().find(|&&l| line.contains(l)) {
                self.after_line = Some(after);
            }
        }
        fn after_exit(&mut self, vm: &Vm) {
            let after_line = self.after_line.take();
            if after_line.is_none() && vm.runs != 1 {
                return;
            }
            let stride = if after_line == Some(LINUX_ATTACK_EVERY_PAGE_AFTER) { 1 } else { LINUX_ATTACK_STRIDE };
            let (mut tried, mut aborted, mut pages, mut faulted) = (0, 0, [0u64; 3], 0);
            for (page, kind) in attack_targets(&vm.given, self.kernel.clone(), stride) {
                let (t, a) = crate::vmm::attack_page_and_read_back(vm.region + page * PAGE);
                (tried, aborted) = (tried + t, aborted + a);
                faulted += u64::from(kind == Attacked::Kernel && page >= self.faulted_from);
                pages[match kind {
                    Attacked::Kernel => 0,
                    Attacked::Block => 1,
                    Attacked::Page => 2,
                }] += 1;
            }
            self.rounds += 1;
            let [kernel, block, page] = pages;
            kprintln!(
                "host-attacks-linux: round {} (exit {}, after {:?}): {aborted} of {tried} accesses aborted: {kernel} \
                 of the kernel image's {} pages (1 in {stride}; {faulted} past its signed bytes), {block} sampled \
                 from whole 2 MiB blocks, {page} other pages",
                self.rounds,
                vm.runs,
                after_line.unwrap_or("its first exit"),
                self.kernel.end - self.kernel.start,
            );
            if aborted != tried {
                self.failure.get_or_insert("the host reached a running Linux VM's memory");
            }
            // The round of every page reaches each kind: the image, its 4 KiB fault answers, the
            // blocks (by then Linux has faulted in RAM beyond its image).
            if kernel == 0 || (stride == 1 && (faulted == 0 || block == 0)) {
                self.failure.get_or_insert("a round missed the kernel image, its faulted-in pages or the blocks");
            }
            (self.tried, self.aborted) = (self.tried + tried, self.aborted + aborted);
        }
    }
    let bundle = env.bundle()?;
    let entry = env.entry(0)?;
    let kernel = entry.images().first().ok_or("the Linux VM has no kernel")?;
    let image_size = crate::linux::image_size(&bundle, &entry).ok_or("the Linux VM's kernel has no header")?;
    let first = kernel.gpa.checked_sub(entry.ram_base).ok_or("the kernel lies below the VM's RAM")? / PAGE;
    let signed_pages = (bundle.signed_image(kernel).len() as u64).div_ceil(PAGE);
    let hooks = Attack {
        kernel: first..first + image_size.div_ceil(PAGE),
        faulted_from: first + signed_pages,
        ..Attack::default()
    };
    let (hooks, _) = run_linux(env, gic, hooks, "host-attacks-linux", false)?;
    kprintln!(
        "host-attacks-linux: {} of {} accesses to the running Linux VM's pages aborted (kernel text, page tables, \
         faulted-in RAM)",
        hooks.aborted,
        hooks.tried
    );
    if hooks.rounds != 1 + LINUX_ATTACK_LINES.len() as u64 {
        return Err("the host did not attack at every point of the boot");
    }
    hooks.failure.map_or(Ok(()), Err)
}

/// `smp-vms`: KServ on all four cores. Four 1-vCPU test guests (two STEADY: fault in 16 pages,
/// tick 20 times on their timers, check their memory and FP/SIMD registers; two SHARE: share a
/// page, have the host check it, unshare it) run from one queue that every core takes vCPUs
/// from. Each core counts its runs and those during which another core was inside VCPU_RUN.
/// Passes if every core ran a vCPU, runs overlapped, every guest finished intact and every
/// teardown gave back every page scrubbed.
pub fn smp_vms(env: &VmEnv, gic: &GicInfo) -> Outcome {
    use crate::smp::{self, CORES};
    use corevisor_abi::guest_role::{SHARE, STEADY};
    struct Smp {
        /// Each SHARE guest's checks, by vmid.
        shares: [Option<(u64, ShareChecks)>; MAX_VMS],
        intact: u32,
        fp_intact: u32,
    }
    impl Smp {
        fn share(&mut self, vm: &Vm) -> &mut ShareChecks {
            let at = match self.shares.iter().position(|s| s.as_ref().is_some_and(|(id, _)| *id == vm.vmid)) {
                Some(at) => at,
                None => {
                    let free = self.shares.iter().position(Option::is_none).expect("a slot per VM");
                    self.shares[free] = Some((vm.vmid, ShareChecks::new("smp-vms", true)));
                    free
                }
            };
            &mut self.shares[at].as_mut().expect("just found").1
        }
    }
    impl Hooks for Smp {
        fn notify(&mut self, vm: &Vm, value: u64) {
            self.share(vm).notify(vm, value);
        }
        fn answer(&mut self, vm: &Vm) -> u64 {
            match vm.entry.role {
                // A STEADY guest asks for the seed of its FP/SIMD pattern: one per VM, so that
                // another guest's registers showing through a world switch would be seen.
                STEADY => 0x5e_ed00 | vm.vmid,
                _ => self.share(vm).answer(vm),
            }
        }
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            self.intact += u32::from(line == "memory intact");
            self.fp_intact += u32::from(line == "fp registers intact");
        }
    }
    const VMS: usize = 4;
    smp::start_cores(gic, &[crate::arch::gic::TIMER_PPI])?;
    let mut mgr = Manager::new(env.regions);
    create_all(&mut mgr, env, VMS)?;
    let (steady, sharing) = mgr.vms.iter().flatten().fold((0, 0), |(st, sh), vm| match vm.entry.role {
        STEADY => (st + 1, sh),
        SHARE => (st, sh + 1),
        _ => (st, sh),
    });
    if steady + sharing != VMS {
        return Err("smp-vms needs STEADY and SHARE guests only");
    }
    let hooks = Smp { shares: [const { None }; MAX_VMS], intact: 0, fp_intact: 0 };
    let (mgr, hooks, report) = smp::run_all(mgr, hooks, smp::Placement::Shared, false)?;
    for (slot, entry) in report.vms.iter().enumerate() {
        let Some(entry) = entry else { continue };
        for (vcpu, by_core) in report.runs[slot].iter().enumerate() {
            for (core, &runs) in by_core.iter().enumerate().filter(|(_, &runs)| runs != 0) {
                kprintln!("smp-vms: vm {} vcpu {vcpu} ran on core {core} ({runs} runs)", entry.name());
            }
        }
    }
    for core in 0..CORES {
        kprintln!(
            "smp-vms: core {core}: {} runs, {} of them while another core was inside VCPU_RUN",
            report.core_runs[core],
            report.overlapped[core]
        );
    }
    mgr.result()?;
    if report.core_runs.contains(&0) {
        return Err("a core ran no vCPU");
    }
    kprintln!("smp-vms: every core ran a vCPU");
    if report.overlapped.iter().sum::<u64>() == 0 {
        return Err("no two vCPUs ran at the same time");
    }
    kprintln!("smp-vms: vCPUs ran at the same time on different cores");
    for (_, checks) in hooks.shares.iter().flatten() {
        checks.passed()?;
    }
    if hooks.shares.iter().flatten().count() != sharing {
        return Err("a SHARE guest never shared its page");
    }
    if hooks.intact != steady as u32 || hooks.fp_intact != steady as u32 {
        return Err("a ticking guest did not finish with its memory and FP/SIMD registers intact");
    }
    if mgr.powered_off != VMS as u32 || mgr.stopped != 0 {
        return Err("not every guest powered itself off");
    }
    kprintln!("smp-vms: {VMS} guests finished intact, every page back scrubbed");
    Ok(())
}

//! KServ's life on hardware: boot, run the scenario named in the boot arguments, report, and
//! power off with the result.

use crate::arch::{console, cpu, exceptions, heap, hvc, mmu, pmu};
use crate::dtb::{BootInfo, GicInfo, MAX_RAM_REGIONS};
use crate::kprintln;
use crate::scenario::{dma_routes, kcore_probes, stats, Scenario};
use crate::smp;
use crate::vm_plan::{choose_regions, MAX_GUEST_RAM, REGION_SIZE};
use crate::vm_scenarios::{self, VmEnv};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use corevisor_abi::bundle::Bundle;
use corevisor_abi::{bootargs, host_call, psci, HypResult, Status, ABI_VERSION, HYP_CALL_BASE};
use corevisor_boards::Gic;

#[cfg(feature = "rpi4")]
const BOARD: &corevisor_boards::Board = &corevisor_boards::rpi4::BOARD;
#[cfg(not(feature = "rpi4"))]
const BOARD: &corevisor_boards::Board = &corevisor_boards::qemu_virt::BOARD;

type Outcome = Result<(), &'static str>;

/// The boot core's entry, from boot.S, with the DTB address KCore passed (or 0).
#[no_mangle]
extern "C" fn kserv_main(dtb_pa: u64) -> ! {
    cpu::set_stack_canary();
    mmu::build(BOARD);
    mmu::enable();
    heap::init();
    let info = read_dtb(dtb_pa);
    console::init(info.as_ref().and_then(|i| i.uart).unwrap_or(BOARD.uart_base));
    let args = info.as_ref().map_or("", |i| i.bootargs);
    let name = bootargs::value(args, bootargs::SCENARIO).unwrap_or("demo");

    if cpu::current_el() != 1 {
        finish(name, Err("KServ is not running at EL1"));
    }
    kprintln!("running at EL1 on {}", BOARD.name);
    let env = Env::new(info.as_ref(), args, dtb_pa);
    let outcome = match Scenario::from_name(name) {
        Some(scenario) => run(scenario, &env),
        None => Err("unknown scenario"),
    };
    finish(name, outcome)
}

/// What the scenarios know about the machine: from the DTB, else from the board.
struct Env<'a> {
    ram: [Option<(u64, u64)>; MAX_RAM_REGIONS],
    /// What QEMU or the firmware loaded (the DTB and the bundle), and KCore's and KServ's slots.
    avoid: [(u64, u64); 4],
    gic: GicInfo,
    bootargs: &'a str,
    vm: VmEnv<'a>,
    /// The PCIe host and the SMMUv3, from the DTB (issue 15's DMA scenarios).
    pci: Option<crate::dtb::PciHost>,
    smmu: Option<u64>,
}

impl<'a> Env<'a> {
    fn new(info: Option<&BootInfo>, bootargs: &'a str, dtb_pa: u64) -> Env<'a> {
        let mut ram = info.map_or([None; MAX_RAM_REGIONS], |i| i.ram);
        if ram[0].is_none() {
            for (slot, r) in ram.iter_mut().zip(BOARD.ram_fallback) {
                *slot = Some((r.base, r.size));
            }
        }
        let gic = info.and_then(|i| i.gic).unwrap_or(match BOARD.gic {
            Gic::V2 { gicd, gicc, gich, gicv } => {
                GicInfo { v3: false, gicd, second: gicc, gich: Some(gich), gicv: Some(gicv) }
            }
            Gic::V3 { gicd, gicr } => GicInfo { v3: true, gicd, second: gicr, gich: None, gicv: None },
        });
        let initrd = info.and_then(|i| i.initrd);
        let bundle = initrd.and_then(|(start, end)| {
            let bytes = cpu::phys_slice(start, (end - start) as usize);
            match Bundle::parse(bytes) {
                Ok(bundle) => {
                    kprintln!("boot bundle at {start:#x}: {} VM(s)", bundle.len());
                    Some(bundle)
                }
                Err(e) => {
                    kprintln!("the initrd at {start:#x} is not a boot bundle: {e:?}");
                    None
                }
            }
        });
        let dtb_size = crate::dtb::total_size(cpu::read_phys_u64(dtb_pa).to_ne_bytes()).unwrap_or(0) as u64;
        let avoid = [
            (BOARD.kcore_base, BOARD.kcore_base + BOARD.kcore_size),
            (BOARD.kserv_base, BOARD.kserv_base + BOARD.kserv_size),
            (dtb_pa, dtb_pa + dtb_size.max(1)),
            initrd.unwrap_or((0, 0)),
        ];
        // The first region fits the bundle's largest VM (issue 13: up to 1 GiB), the rest 16 MiB.
        let largest = bundle.as_ref().map_or(0, |b| b.vms().map(|vm| vm.ram_size).max().unwrap_or(0));
        let mut sizes = [REGION_SIZE; crate::vmm::MAX_VMS];
        sizes[0] = largest.clamp(REGION_SIZE, MAX_GUEST_RAM);
        let regions = choose_regions(&ram, &avoid, sizes);
        let uart_base = info.and_then(|i| i.uart).unwrap_or(BOARD.uart_base);
        let pm_watchdog = BOARD.pm_watchdog;
        let vm = VmEnv { bundle, regions, kcore_base: BOARD.kcore_base, uart_base, bootargs, pm_watchdog };
        let (pci, smmu) = (info.and_then(|i| i.pci), info.and_then(|i| i.smmu));
        Env { ram, avoid, gic, bootargs, vm, pci, smmu }
    }

    /// Every page of RAM that is the host's: all of RAM but KCore's slot.
    fn host_pages(&self) -> impl Iterator<Item = u64> + '_ {
        let kcore = BOARD.kcore_base..BOARD.kcore_base + BOARD.kcore_size;
        self.ram
            .iter()
            .flatten()
            .flat_map(|&(base, size)| (base..base + size).step_by(4096))
            .filter(move |pa| !kcore.contains(pa))
    }
}

/// The host's stage-2 fault counts so far: (mapped, refused).
fn host_stats() -> Result<(u64, u64), &'static str> {
    let r = hvc::hyp_call(host_call::HOST_STATS, [0; 6]);
    if r.status != Status::Success.as_reg() {
        return Err("HOST_STATS failed");
    }
    Ok((r.values[0], r.values[1]))
}

/// Marks a round's start or end for the traced contention bench: a HOST_STATS call, which the
/// bench build of KCore marks by PC (xtask `el2_trace`); `bench-contention` makes one before and
/// after each round and no other.
pub fn mark_round() -> Result<(), &'static str> {
    host_stats().map(|_| ())
}

fn read_dtb(dtb_pa: u64) -> Option<crate::dtb::BootInfo<'static>> {
    if dtb_pa == 0 || !dtb_pa.is_multiple_of(8) {
        return None;
    }
    let size = crate::dtb::total_size(cpu::read_phys_u64(dtb_pa).to_ne_bytes())?;
    crate::dtb::read(cpu::phys_slice(dtb_pa, size))
}

/// Reports the outcome and ends the run through KCore's SYSTEM_OFF.
pub fn finish(name: &str, outcome: Outcome) -> ! {
    // An overflowed stack has written over KServ's statics: nothing it reports can be trusted.
    let outcome = if cpu::stack_canary_intact() { outcome } else { Err("KServ's stack overflowed") };
    let status = match outcome {
        Ok(()) => {
            kprintln!("scenario {name}: PASS");
            0
        }
        Err(reason) => {
            kprintln!("scenario {name}: FAIL: {reason}");
            1
        }
    };
    hvc::hyp_call(host_call::SYSTEM_OFF, [status, 0, 0, 0, 0, 0]);
    kprintln!("SYSTEM_OFF returned");
    cpu::park()
}

fn run(scenario: Scenario, env: &Env) -> Outcome {
    match scenario {
        Scenario::Demo => {
            kprintln!("hello from the host; KCore's ABI is {}", version()?);
            match env.vm.bundle {
                Some(_) => vm_scenarios::demo(&env.vm),
                None => Ok(()),
            }
        }
        Scenario::VmHello => vm_scenarios::vm_hello(&env.vm),
        Scenario::VmTwoGuests => vm_scenarios::vm_two_guests(&env.vm),
        Scenario::VmShare => vm_scenarios::vm_share(&env.vm),
        Scenario::ShareAtomic => vm_scenarios::share_atomic(&env.vm),
        Scenario::VmLarge => vm_scenarios::vm_large(&env.vm),
        Scenario::LinuxBench => vm_scenarios::linux_bench(&env.vm, &env.gic),
        Scenario::Linux => vm_scenarios::linux(&env.vm, &env.gic),
        Scenario::HostAttacksLinux => vm_scenarios::host_attacks_linux(&env.vm, &env.gic),
        Scenario::HostAttacksVm => vm_scenarios::host_attacks_vm(&env.vm),
        Scenario::VmBadImage => vm_scenarios::vm_bad_image(&env.vm),
        Scenario::SignedBinding => vm_scenarios::signed_binding(&env.vm),
        Scenario::HvcFuzz => vm_scenarios::hvc_fuzz(&env.vm, &env.gic),
        Scenario::GuestFuzz => vm_scenarios::guest_fuzz(&env.vm),
        Scenario::VmIrq => vm_scenarios::vm_irq(&env.vm, &env.gic),
        Scenario::GuestSysregs => vm_scenarios::guest_sysregs(&env.vm, env.gic.v3),
        Scenario::VmVgic => vm_scenarios::vm_vgic(&env.vm, &env.gic),
        Scenario::ResetScrub => {
            let marker = BOARD.kserv_base + BOARD.kserv_size - 4096;
            // Past KServ's own image, and clear of what QEMU loads again on a reset (DTB, bundle).
            if marker < cpu::image_end() || env.avoid[2..].iter().any(|&(b, e)| b < marker + 4096 && marker < e) {
                return Err("the reset marker page is not free host RAM");
            }
            vm_scenarios::reset_scrub(&env.vm, marker, env.host_pages())
        }
        Scenario::SmpVms => vm_scenarios::smp_vms(&env.vm, &env.gic),
        Scenario::LinuxSmp => vm_scenarios::linux_smp(&env.vm, &env.gic),
        Scenario::SmpRace => crate::race::smp_race(&env.vm, &env.gic),
        Scenario::DmaHost => crate::dma::dma_host(&env.vm, &env.gic, env.pci),
        Scenario::DmaAttacks => crate::dma::dma_attacks(&env.vm, &env.gic, env.pci),
        Scenario::SmmuTamper => crate::dma::smmu_tamper(&env.vm, &env.gic, env.pci, env.smmu),
        Scenario::HostDma => vm_scenarios::host_dma(&env.vm, &env.gic, dma_routes(BOARD, env.gic.v3)),
        Scenario::Boot => boot(),
        Scenario::HvcVersion => {
            kprintln!("VERSION returned {}", version()?);
            Ok(())
        }
        Scenario::HvcUnknown => hvc_unknown(),
        Scenario::HostUndef => host_undef(),
        Scenario::HostReadsKcore => host_reads_kcore(),
        Scenario::HostMapsAllRam => {
            let (pages, faults) = touch_all_host_ram(env)?;
            kprintln!("touched {pages} pages of host RAM with {faults} stage-2 faults, none refused");
            Ok(())
        }
        Scenario::HostDeviceAccess => host_device_access(env),
        Scenario::Bench => bench(env),
        Scenario::BenchContention => bench_contention(env),
    }
}

/// Reads and writes all over KCore's slot: every access must come back as an external abort at
/// the accessing instruction, with FAR naming the address, and KCore must count each refusal.
fn host_reads_kcore() -> Outcome {
    let (_, refused_before) = host_stats()?;
    exceptions::expect_abort(true);
    let mut attempts = 0;
    for pa in kcore_probes(BOARD.kcore_base, BOARD.kcore_size) {
        let (value, load_at) = hvc::probe_read(pa);
        attempts += 1;
        let (count, elr, far) = exceptions::aborts();
        if count != attempts || elr != load_at || far != pa || value != 0 {
            exceptions::expect_abort(false);
            kprintln!("read of KCore at {pa:#x} was not aborted (value {value:#x})");
            return Err("the host read KCore's memory");
        }
        let store_at = hvc::probe_write(pa, 0x5a5a_5a5a_5a5a_5a5a);
        attempts += 1;
        let (count, elr, far) = exceptions::aborts();
        if count != attempts || elr != store_at || far != pa {
            exceptions::expect_abort(false);
            kprintln!("write to KCore at {pa:#x} was not aborted");
            return Err("the host wrote KCore's memory");
        }
    }
    exceptions::expect_abort(false);
    let (_, refused_after) = host_stats()?;
    if refused_after - refused_before != attempts {
        return Err("KCore's count of refused accesses does not match");
    }
    kprintln!("{attempts} of {attempts} accesses to KCore's code, data, stacks, heap and page tables aborted");
    version().map(|_| ())
}

/// Reads and writes back one word of every page the host owns. Returns (pages, faults).
fn touch_all_host_ram(env: &Env) -> Result<(u64, u64), &'static str> {
    let (mapped_before, refused_before) = host_stats()?;
    let mut pages = 0;
    for pa in env.host_pages() {
        let (value, _) = hvc::probe_read(pa);
        hvc::probe_write(pa, value);
        pages += 1;
    }
    let (mapped_after, refused_after) = host_stats()?;
    if refused_after != refused_before {
        return Err("KCore refused an access to host RAM");
    }
    Ok((pages, mapped_after - mapped_before))
}

/// The host drives its devices directly: the GIC's distributor and CPU interface (or
/// redistributor and system registers) answer, and the UART prints every line. On GICv2 the
/// virtual interface control frame is KCore's and must abort.
fn host_device_access(env: &Env) -> Outcome {
    const ARM_IMPLEMENTER: u32 = 0x43b;
    let gicd_iidr = hvc::read_mmio_u32(env.gic.gicd + 0x008);
    if gicd_iidr & 0xfff != ARM_IMPLEMENTER {
        return Err("GICD_IIDR does not read as an Arm GIC");
    }
    if env.gic.v3 {
        let gicr_iidr = hvc::read_mmio_u32(env.gic.second + 0x004);
        let sre = hvc::icc_sre_el1();
        kprintln!("GICv3: GICD_IIDR {gicd_iidr:#x}, GICR_IIDR {gicr_iidr:#x}, ICC_SRE_EL1 {sre:#x}");
        if gicr_iidr & 0xfff != ARM_IMPLEMENTER {
            return Err("GICR_IIDR does not read as an Arm GIC");
        }
    } else {
        let gicc_iidr = hvc::read_mmio_u32(env.gic.second + 0x0fc);
        kprintln!("GICv2: GICD_IIDR {gicd_iidr:#x}, GICC_IIDR {gicc_iidr:#x}");
        if gicc_iidr & 0xfff != ARM_IMPLEMENTER {
            return Err("GICC_IIDR does not read as an Arm GIC");
        }
        if let Some(gich) = env.gic.gich.filter(|&g| g != 0) {
            exceptions::expect_abort(true);
            let (_, at) = hvc::probe_read(gich);
            let (count, elr, _) = exceptions::aborts();
            exceptions::expect_abort(false);
            if count != 1 || elr != at {
                return Err("the host reached the GICv2 virtual interface control");
            }
            kprintln!("GICH at {gich:#x} is KCore's: access aborted");
        }
    }
    kprintln!("UART and GIC reachable from the host");
    Ok(())
}

struct Version(u64);

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{}.{}", self.0 >> 16, self.0 & 0xffff)
    }
}

/// Asks KCore's ABI version and checks it is the one KServ was built for.
fn version() -> Result<Version, &'static str> {
    let r = hvc::hyp_call(host_call::VERSION, [0; 6]);
    if r.status != Status::Success.as_reg() {
        return Err("VERSION did not return SUCCESS");
    }
    if r.values[0] != ABI_VERSION {
        return Err("VERSION returned another ABI version");
    }
    Ok(Version(r.values[0]))
}

fn hvc_unknown() -> Outcome {
    for function in [HYP_CALL_BASE + 0xFFF, 0xC700_0001] {
        let HypResult { status, .. } = hvc::hyp_call(function, [1, 2, 3, 4, 5, 6]);
        if status != Status::NotSupported.as_reg() {
            return Err("an unknown hypercall did not return NOT_SUPPORTED");
        }
        kprintln!("hypercall {function:#x} returned NOT_SUPPORTED");
    }
    version().map(|_| ())
}

fn host_undef() -> Outcome {
    exceptions::expect_undef(true);
    let smc_at = hvc::forbidden_smc(0xC200_0001);
    let (count, at) = exceptions::undefs();
    if count != 1 || at != smc_at {
        return Err("the forbidden SMC did not come back as an UNDEF at the SMC");
    }
    let hvc_at = hvc::forbidden_hvc_immediate();
    let (count, at) = exceptions::undefs();
    if count != 2 || at != hvc_at {
        exceptions::expect_undef(false);
        return Err("hvc #1 did not come back as an UNDEF at the HVC");
    }
    // Set/way maintenance traps to KCore, which cleans and invalidates instead: no UNDEF.
    cpu::set_way_maintenance();
    let (count, _) = exceptions::undefs();
    exceptions::expect_undef(false);
    if count != 2 {
        return Err("set/way maintenance came back as an UNDEF");
    }
    kprintln!("dc isw, dc csw, dc cisw: performed by KCore, no UNDEF");
    version().map(|_| ())
}

/// Set by core 1 once it runs KServ; the context value it was started with.
static CPU1_UP: AtomicBool = AtomicBool::new(false);
static CPU1_CONTEXT: AtomicU64 = AtomicU64::new(0);
const CPU1_CONTEXT_VALUE: u64 = 0xC0DE_0001;
/// Bounds the wait for core 1 (a loop count, not a clock).
const CPU_ON_POLLS: u64 = 200_000_000;

/// A core started by PSCI CPU_ON enters here (boot.S), with its context value.
#[no_mangle]
extern "C" fn kserv_secondary_main(context: u64) -> ! {
    if crate::smp::is_worker(context) {
        crate::smp::worker_main();
    }
    mmu::enable();
    kprintln!("cpu1 up at EL1 (context {context:#x})");
    CPU1_CONTEXT.store(context, Ordering::Relaxed);
    CPU1_UP.store(true, Ordering::Release);
    cpu::park()
}

fn boot() -> Outcome {
    let on = hvc::psci(psci::CPU_ON_64, [1, cpu::secondary_entry(), CPU1_CONTEXT_VALUE]);
    if on != Status::Success.as_reg() {
        return Err("PSCI CPU_ON of cpu1 failed");
    }
    let mut polls = 0;
    while !CPU1_UP.load(Ordering::Acquire) {
        polls += 1;
        if polls > CPU_ON_POLLS {
            return Err("cpu1 never reached KServ");
        }
        core::hint::spin_loop();
    }
    if CPU1_CONTEXT.load(Ordering::Relaxed) != CPU1_CONTEXT_VALUE {
        return Err("cpu1 started with the wrong context value");
    }
    if hvc::psci(psci::AFFINITY_INFO_64, [1, 0, 0]) != psci::AFFINITY_ON {
        return Err("AFFINITY_INFO does not report cpu1 on");
    }
    if hvc::psci(psci::CPU_ON_64, [1, cpu::secondary_entry(), 0]) != Status::AlreadyOn.as_reg() {
        return Err("a second CPU_ON of cpu1 was not refused with ALREADY_ON");
    }
    if hvc::psci(psci::VERSION, [0; 3]) != psci::PSCI_VERSION_1_1 {
        return Err("PSCI_VERSION is not 1.1");
    }
    version().map(|_| ())
}

const BENCH_SAMPLES: usize = 16;

fn bench(env: &Env) -> Outcome {
    if !pmu::inst_retired_supported() {
        return Err("the PMU does not count INST_RETIRED (run QEMU with -icount shift=0,sleep=off)");
    }
    pmu::start_el2_instruction_counter();
    let mut samples = [0u64; BENCH_SAMPLES];
    for sample in samples.iter_mut() {
        let before = pmu::read_counter();
        let r = hvc::hyp_call(host_call::NULL, [0; 6]);
        let after = pmu::read_counter();
        if r.status != Status::Success.as_reg() {
            return Err("the null hypercall failed");
        }
        *sample = after - before;
    }
    let s = stats(&mut samples).ok_or("no samples")?;
    if s.min == 0 {
        return Err("the EL2 counter did not move");
    }
    kprintln!("bench null-hvc el2_instructions={} min={} max={} samples={BENCH_SAMPLES}", s.median, s.min, s.max);

    // One host stage-2 fault each: the first access to 2 MiB blocks at the top of RAM, which
    // nothing has touched yet.
    let (top_base, top_size) = env.ram.iter().flatten().copied().max_by_key(|r| r.0).ok_or("no RAM")?;
    for (i, sample) in samples.iter_mut().enumerate() {
        let pa = top_base + top_size - (i as u64 + 1) * (2 << 20);
        let (mapped_before, _) = host_stats()?;
        let before = pmu::read_counter();
        hvc::probe_read(pa);
        let after = pmu::read_counter();
        let (mapped_after, _) = host_stats()?;
        if mapped_after != mapped_before + 1 {
            return Err("a bench access to fresh host RAM did not take exactly one stage-2 fault");
        }
        *sample = after - before;
    }
    let s = stats(&mut samples).ok_or("no samples")?;
    kprintln!("bench host-s2-fault el2_instructions={} min={} max={} samples={BENCH_SAMPLES}", s.median, s.min, s.max);

    let (pages, faults) = touch_all_host_ram(env)?;
    let policy = bootargs::value(env.bootargs, "corevisor.host_s2").unwrap_or("blocks");
    kprintln!("bench host-ram-faults faults={faults} pages={pages} policy={policy}");
    match env.vm.bundle {
        Some(_) => vm_scenarios::bench_vm(&env.vm, &env.gic),
        None => Err("no boot bundle: the VM figures need the bench guest"),
    }
}

/// `bench-contention`'s host stage-2 faults: the top of host RAM, the first 2 MiB block (counted
/// down from the top) of the current round, and each core's samples.
static FAULT_TOP: AtomicU64 = AtomicU64::new(0);
static FAULT_FIRST_BLOCK: AtomicU64 = AtomicU64::new(0);
static FAULT_SAMPLES: [[AtomicU64; BENCH_SAMPLES]; smp::CORES] =
    [const { [const { AtomicU64::new(0) }; BENCH_SAMPLES] }; smp::CORES];
static JOB_FAILED: AtomicBool = AtomicBool::new(false);
/// Samples of a round during which another core finished one ([`smp::job_sample`]).
static FAULTS_OVERLAPPED: AtomicU64 = AtomicU64::new(0);
/// Where a fault sample's turn may end: within its first 24 timer ticks (some 400 instructions at
/// QEMU virt's 62.5 MHz under `shift=0`), about one fault.
const FAULT_TURN_TICKS: u64 = 24;

/// One core's part of a round: the first access to [`BENCH_SAMPLES`] fresh 2 MiB blocks of its
/// own, each one host stage-2 fault, EL2 instructions counted by this core's PMU.
fn fault_job(core: usize) {
    pmu::start_el2_instruction_counter();
    let top = FAULT_TOP.load(Ordering::Acquire);
    let first = FAULT_FIRST_BLOCK.load(Ordering::Acquire) + (core * BENCH_SAMPLES) as u64;
    if !smp::job_start() {
        JOB_FAILED.store(true, Ordering::Release);
        return;
    }
    for (i, sample) in FAULT_SAMPLES[core].iter().enumerate() {
        let pa = top - (first + i as u64 + 1) * (2 << 20);
        let (el2, overlapped) = smp::job_sample(smp::turn_ticks(core, i, FAULT_TURN_TICKS), || {
            let before = pmu::read_counter();
            hvc::probe_read(pa);
            pmu::read_counter() - before
        });
        sample.store(el2, Ordering::Relaxed);
        FAULTS_OVERLAPPED.fetch_add(u64::from(overlapped), Ordering::Relaxed);
    }
}

/// Runs [`fault_job`] on `cores` cores from block `first` on; the median, minimum and maximum
/// over every core's samples, and how many samples overlapped another core's. Its HOST_STATS
/// calls before and after the round are also the round's marks ([`mark_round`]).
fn fault_round(cores: usize, first: u64, force_turns: bool) -> Result<(crate::scenario::Stats, u64), &'static str> {
    FAULT_FIRST_BLOCK.store(first, Ordering::Release);
    FAULTS_OVERLAPPED.store(0, Ordering::Release);
    let (mapped_before, _) = host_stats()?;
    smp::run_on_cores(fault_job, cores, force_turns)?;
    let (mapped_after, _) = host_stats()?;
    if JOB_FAILED.load(Ordering::Acquire) {
        return Err("a core never started the fault round");
    }
    if mapped_after != mapped_before + (cores * BENCH_SAMPLES) as u64 {
        return Err("a contention bench access to fresh host RAM did not take exactly one stage-2 fault");
    }
    let mut samples: alloc::vec::Vec<u64> =
        FAULT_SAMPLES[..cores].iter().flatten().map(|s| s.load(Ordering::Relaxed)).collect();
    Ok((stats(&mut samples).ok_or("no samples")?, FAULTS_OVERLAPPED.load(Ordering::Acquire)))
}

/// `bench-contention`'s rounds: (cores, whether turns are forced inside the samples). One core
/// alone; four at once, each core making its samples in its own turns (exact counts, but no
/// core ever waits for another); four with turns ended inside the samples, so that a core may
/// wait for another's lock (QEMU's counter then counts the other cores' instructions too:
/// README, Performance).
pub const CONTENTION_ROUNDS: [(usize, bool); 3] = [(1, false), (smp::CORES, false), (smp::CORES, true)];

/// `bench-contention`: EL2 instructions per host stage-2 fault and per guest share call, on one
/// core alone and then on four cores at once, each core on its own blocks and its own VM.
fn bench_contention(env: &Env) -> Outcome {
    if !pmu::inst_retired_supported() {
        return Err("the PMU does not count INST_RETIRED (run QEMU with -icount shift=0,sleep=off)");
    }
    smp::start_cores(&env.gic, &[crate::arch::gic::TIMER_PPI])?;
    let (top_base, top_size) = env.ram.iter().flatten().copied().max_by_key(|r| r.0).ok_or("no RAM")?;
    FAULT_TOP.store(top_base + top_size, Ordering::Release);
    let per_round = (smp::CORES * BENCH_SAMPLES) as u64;
    for (at, (cores, forced)) in CONTENTION_ROUNDS.into_iter().enumerate() {
        let (s, overlapped) = fault_round(cores, at as u64 * per_round, forced)?;
        kprintln!(
            "bench contention-host-s2-fault cores={cores} forced={} el2_instructions={} min={} max={} samples={} \
             overlapped={overlapped}",
            u8::from(forced),
            s.median,
            s.min,
            s.max,
            cores * BENCH_SAMPLES
        );
    }
    match env.vm.bundle {
        Some(_) => vm_scenarios::bench_contention_vms(&env.vm),
        None => Err("no boot bundle: the share figures need four bench guests"),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    kprintln!("panicked: {info}");
    finish("panic", Err("KServ panicked"))
}

//! KServ's life on hardware: boot, run the scenario named in the boot arguments, report, and
//! power off with the result.

use crate::arch::{console, cpu, exceptions, hvc, mmu, pmu};
use crate::kprintln;
use crate::scenario::{stats, Scenario};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use corevisor_abi::{bootargs, host_call, psci, HypResult, Status, ABI_VERSION, HYP_CALL_BASE};

#[cfg(feature = "rpi4")]
const BOARD: &corevisor_boards::Board = &corevisor_boards::rpi4::BOARD;
#[cfg(not(feature = "rpi4"))]
const BOARD: &corevisor_boards::Board = &corevisor_boards::qemu_virt::BOARD;

type Outcome = Result<(), &'static str>;

/// The boot core's entry, from boot.S, with the DTB address KCore passed (or 0).
#[no_mangle]
extern "C" fn kserv_main(dtb_pa: u64) -> ! {
    mmu::build(BOARD);
    mmu::enable();
    let info = read_dtb(dtb_pa);
    console::init(info.as_ref().and_then(|i| i.uart).unwrap_or(BOARD.uart_base));
    let args = info.as_ref().map_or("", |i| i.bootargs);
    let name = bootargs::value(args, bootargs::SCENARIO).unwrap_or("demo");

    if cpu::current_el() != 1 {
        finish(name, Err("KServ is not running at EL1"));
    }
    kprintln!("running at EL1 on {}", BOARD.name);
    let outcome = match Scenario::from_name(name) {
        Some(scenario) => run(scenario),
        None => Err("unknown scenario"),
    };
    finish(name, outcome)
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

fn run(scenario: Scenario) -> Outcome {
    match scenario {
        Scenario::Demo => {
            kprintln!("hello from the host; KCore's ABI is {}", version()?);
            Ok(())
        }
        Scenario::Boot => boot(),
        Scenario::HvcVersion => {
            kprintln!("VERSION returned {}", version()?);
            Ok(())
        }
        Scenario::HvcUnknown => hvc_unknown(),
        Scenario::HostUndef => host_undef(),
        Scenario::Bench => bench(),
    }
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
    exceptions::expect_undef(false);
    if count != 2 || at != hvc_at {
        return Err("hvc #1 did not come back as an UNDEF at the HVC");
    }
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

fn bench() -> Outcome {
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
    Ok(())
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    kprintln!("panicked: {info}");
    finish("panic", Err("KServ panicked"))
}

//! KCore's boot sequence, on every core. Outside the layer stack: it builds the machine state the
//! layers start from, then hands the boot core to the host and parks the others.
//!
//! Order matters on the boot core: the EL2 MMU goes on before anything takes a lock (exclusives
//! on Device memory hang on real Cortex-A72s), then the heap, the DTB, the console, the
//! secondary cores, and finally the host.

//!
//! `init` is the top of KCore's stack: it may use every module, and none uses it. Like the
//! machine layer it may use `unsafe`, as the boot glue that vouches for what the firmware handed
//! over (the DTB, the UART, the PM block, KServ's slot) when it builds the capabilities the
//! layers use.

mod el2_map;
mod host;
mod panic;
mod secondaries;

use crate::board::BOARD;
use crate::cpus::CORES;
use crate::handlers::trap_handler::wait_for_work;
use crate::machine::features::CpuFeatures;
use crate::machine::power::Power;
use crate::machine::spectre::{self, FirmwareOffer, Selection};
use crate::machine::{cpu, firmware, heap, layout, mitigation, mmu, phys, pl011::Pl011};
use crate::platform::{dtb_total_size, Platform, Source};
use alloc::{boxed::Box, vec::Vec};
use log::{error, info, warn};

/// The machine as discovered at boot; read-only afterwards.
static PLATFORM: spin::Once<Platform> = spin::Once::new();

/// The platform description (after boot).
pub fn platform() -> &'static Platform {
    PLATFORM.get().expect("the platform is discovered before any trap")
}

/// How this machine powers off and resets.
fn power(platform: &Platform) -> Power {
    // SAFETY: the board description says whether the firmware has PSCI; the PM block's address
    // comes from the DTB or the board description and is Device memory in KCore's EL2 map (and
    // protected from the host and every VM: `host::host_mmio`).
    unsafe { Power::new(BOARD.name, BOARD.firmware_psci, platform.pm_watchdog) }
}

/// The boot core's Rust entry, from boot.S, with the DTB address the firmware passed in x0.
#[no_mangle]
extern "C" fn kcore_primary_main(dtb_pa: u64) -> ! {
    // SAFETY: `el2_map::build` writes the identity map of the board's RAM window (KCore's image,
    // stacks, heap and pool included) into the pool's first pages and cleans it to memory.
    unsafe { mmu::enable_el2(el2_map::build(BOARD)) };
    crate::machine::features::init(cpu::id_registers());
    let entry = choose_entry_mitigation();
    let heap_bytes = heap::init();
    let (platform, dtb_problem) = discover(dtb_pa);
    let (level, bad_level) = crate::console::level_from_bootargs(&platform.bootargs);
    let bad_level = bad_level.map(alloc::string::String::from);
    // SAFETY: the UART's address comes from the DTB (or the board description) and is Device
    // memory in KCore's EL2 map; no board lists KCore's console for the host.
    crate::console::init(unsafe { Pl011::new(platform.uart_base) }, level);
    let platform = PLATFORM.call_once(|| platform);

    info!("corevisor {} (KCore) on {}: running at EL{}", env!("CARGO_PKG_VERSION"), BOARD.name, cpu::current_el());
    if let Some(problem) = dtb_problem {
        warn!("{problem}; using the {} board description", BOARD.name);
    }
    if let Some(name) = bad_level {
        warn!("unknown loglevel={name}; using info");
    }
    report_platform(platform);
    report_entry_mitigation(0, &entry);
    report_image_hash();
    check_heap(heap_bytes);
    check_layout(platform);

    crate::memory::invariants::fill_canary(&crate::machine::Aarch64, layout::canary());
    CORES.mark_parked(0);
    info!("cpu0 online at EL2, MMU on");
    secondaries::start_all(platform);
    host::enter_kserv(platform, &CORES)
}

/// A secondary core's Rust entry, from boot.S.
#[no_mangle]
extern "C" fn kcore_secondary_main(core: usize) -> ! {
    // SAFETY: the boot core wrote KCore's identity map at the start of the pool before it
    // started this core.
    unsafe { mmu::enable_el2(layout::page_table_pool().start) };
    let entry = choose_entry_mitigation();
    CORES.mark_parked(core);
    info!("cpu{core} online at EL2, MMU on");
    report_entry_mitigation(core, &entry);
    wait_for_work(core)
}

/// Chooses how boot verification computes SHA-256 (the instructions need a known-answer test
/// first) and says which: a distribution's kernel is 35 MB, hashed on every VM boot.
fn report_image_hash() {
    use crate::machine::sha256_instructions::{select, Sha256Path};
    match select(crate::machine::features::boot()) {
        Sha256Path::Instructions => {
            info!("image hashing: SHA-256 with the ARMv8 SHA-256 instructions (known-answer test passed)")
        }
        Sha256Path::Portable => {
            info!("image hashing: portable SHA-256, the CPU has no SHA-256 instructions (known-answer test passed)")
        }
    }
}

/// The firmware's Spectre workaround calls, asked once on the boot core (the answers are the
/// same for every core of the boards KCore knows).
static FIRMWARE_OFFER: spin::Once<FirmwareOffer> = spin::Once::new();

/// Chooses this core's entry mitigation against Spectre-v2 and Spectre-BHB (issue 11, finding
/// 11) from its MIDR, its ID registers and the firmware's offer, and installs it: from here on
/// every entry from a lower EL runs it. Runs before this core ever enters a lower EL.
fn choose_entry_mitigation() -> (CpuFeatures, Selection) {
    let offer = *FIRMWARE_OFFER.call_once(|| {
        if BOARD.firmware_psci {
            // SAFETY: the probe asks only SMCCC_ARCH_FEATURES and SMCCC_VERSION, which act on
            // nothing.
            FirmwareOffer::probe(&mut |function, arg| unsafe { firmware::smc(function, [arg, 0, 0]) }[0])
        } else {
            FirmwareOffer::default()
        }
    });
    let cpu = CpuFeatures::from_id_registers(cpu::id_registers());
    let selection = spectre::select(&cpu, offer);
    mitigation::install(&selection.mitigation, cpu.ras());
    (cpu, selection)
}

/// Says what this core's lower-EL entries run; the boot core warns once about what is left open.
fn report_entry_mitigation(core: usize, (cpu, s): &(CpuFeatures, Selection)) {
    let (implementer, part) = cpu.part();
    let m = s.mitigation;
    let firmware = match m.firmware_call {
        Some(spectre::smccc::ARCH_WORKAROUND_3) => "SMCCC_ARCH_WORKAROUND_3, ",
        Some(_) => "SMCCC_ARCH_WORKAROUND_1, ",
        None => "",
    };
    let bhb = match m.bhb {
        spectre::BhbClear::None => alloc::string::String::from("no branch-history clearing"),
        spectre::BhbClear::Loop(k) => alloc::format!("the branch-history loop (k = {k})"),
        spectre::BhbClear::Instruction => alloc::string::String::from("CLRBHB"),
    };
    if core != 0 {
        log::debug!("cpu{core} (MIDR {implementer:#x}:{part:#x}): lower-EL entries run {firmware}{bhb}");
        return;
    }
    info!("cpu{core} (MIDR {implementer:#x}:{part:#x}): lower-EL entries run {firmware}{bhb}");
    if s.v2_open {
        warn!("cpu{core} is open to Spectre-v2 and the firmware offers no SMCCC_ARCH_WORKAROUND_1/3");
    }
    if s.bhb_open {
        warn!(
            "cpu{core} is open to Spectre-BHB: only the firmware's SMCCC_ARCH_WORKAROUND_3 helps it, and there is none"
        );
    }
    if s.unknown_part {
        warn!("cpu{core} is a part no Spectre-BHB table knows: running the longest known loop as a guess");
    }
}

/// Reads the DTB at `dtb_pa` if there is one; otherwise, or if it is unusable, the board's
/// description. The second value says why the DTB was not used, for the log.
fn discover(dtb_pa: u64) -> (Platform, Option<alloc::string::String>) {
    let fallback = |why| (Platform::from_board(BOARD), Some(why));
    if dtb_pa == 0 || !dtb_pa.is_multiple_of(8) || !BOARD.in_ram_window(dtb_pa) {
        return fallback(alloc::format!("no DTB passed (x0 = {dtb_pa:#x})"));
    }
    // SAFETY: `dtb_pa` is in the board's RAM window (checked above), where the firmware left the
    // DTB; nothing writes it before `Platform::from_dtb` has copied what KCore keeps (the host
    // runs later, and gets the DTB's pages only then).
    let header: [u8; 8] = unsafe { phys::static_bytes(dtb_pa, 8) }.try_into().unwrap_or_default();
    let Some(size) = dtb_total_size(&header) else {
        return fallback(alloc::format!("no DTB at {dtb_pa:#x} (bad magic)"));
    };
    if !BOARD.in_ram_window(dtb_pa.saturating_add(size as u64).saturating_sub(1)) {
        return fallback(alloc::format!("the DTB at {dtb_pa:#x} runs past the RAM window"));
    }
    // SAFETY: as for the header; the whole DTB lies in the RAM window (checked above).
    match Platform::from_dtb(unsafe { phys::static_bytes(dtb_pa, size) }, dtb_pa, BOARD) {
        Ok(platform) => (platform, None),
        Err(e) => fallback(alloc::format!("the DTB at {dtb_pa:#x} is unusable: {e:?}")),
    }
}

fn report_platform(p: &Platform) {
    let source = match p.source {
        Source::Dtb => "DTB",
        Source::BoardFallback => "board description",
    };
    info!("platform from the {source}: {} cpus, uart {:#x}, gic {:x?}", p.cpus.len(), p.uart_base, p.gic);
    for r in &p.ram {
        info!("RAM {:#x}..{:#x} ({} MiB)", r.base, r.end(), r.size >> 20);
    }
    if let Some(initrd) = p.initrd {
        info!("initrd {:#x}..{:#x}", initrd.base, initrd.end());
    }
    if !p.bootargs.is_empty() {
        info!("bootargs: {}", p.bootargs);
    }
}

/// Allocates, writes and frees through the heap, and checks what comes back.
fn check_heap(heap_bytes: usize) {
    let values: Vec<u64> = (0..4096u64).map(|i| i * 3).collect();
    let boxed = Box::new(values.iter().sum::<u64>());
    let expected = 3 * 4095 * 4096 / 2;
    if *boxed != expected || values.len() != 4096 {
        panic!("heap check failed: sum {} != {expected}", *boxed);
    }
    info!("heap ok: {} KiB", heap_bytes / 1024);
}

/// KCore's slot must not overlap what the firmware handed over (DTB, initrd): the host needs
/// those, and KCore keeps the whole slot.
fn check_layout(p: &Platform) {
    let kcore = layout::kcore();
    let slot_end = BOARD.kcore_base + BOARD.kcore_size;
    info!("KCore occupies {:#x}..{:#x} of its slot {:#x}..{slot_end:#x}", kcore.start, kcore.end, BOARD.kcore_base);
    if layout::canary() != BOARD.kcore_base + corevisor_abi::KCORE_CANARY_OFFSET {
        panic!("boot layout: the canary page is at {:#x}, not where KServ looks for it", layout::canary());
    }
    for (what, range) in [("DTB", p.dtb), ("initrd", p.initrd)] {
        if let Some(r) = range {
            if r.base < slot_end && BOARD.kcore_base < r.end() {
                error!("the {what} at {:#x}..{:#x} overlaps KCore", r.base, r.end());
                panic!("boot layout: the {what} overlaps KCore's region");
            }
        }
    }
}

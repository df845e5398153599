//! Bringing the secondary cores up at EL2: PSCI CPU_ON where the firmware has it (QEMU virt),
//! the spin table where it has not (the Pi 4 and QEMU raspi4b).

use crate::board::BOARD;
use crate::cpus::{index_of_mpidr, CoreState, CORES};
use crate::machine::{cpu, firmware, layout, phys};
use crate::platform::Platform;
use corevisor_abi::psci;
use corevisor_boards::CpuBringUp;
use log::{info, warn};

/// How long the boot core waits for the others to report, in polls (not a clock: the count only
/// bounds the wait so that a core that never comes up cannot hang the boot).
const ONLINE_POLLS: u64 = 50_000_000;

/// Starts every secondary core the platform lists and waits until they report online.
pub fn start_all(platform: &Platform) {
    let entry = layout::secondary_entry();
    let mut started = 0;
    for cpu in platform.cpus.iter().filter(|c| c.mpidr != cpu::mpidr_affinity()) {
        let Some(core) = index_of_mpidr(cpu.mpidr) else {
            warn!("cpu with MPIDR {:#x} is beyond KCore's {} cores; left off", cpu.mpidr, crate::machine::MAX_CPUS);
            continue;
        };
        let ok = match (BOARD.cpu_bring_up, cpu.release_addr) {
            (CpuBringUp::Psci, _) => {
                // SAFETY: the core starts at KCore's own secondary entry (boot.S), at EL2.
                let ret = unsafe { firmware::smc(psci::CPU_ON_64, [cpu.mpidr, entry, core as u64]) }[0];
                if ret != 0 {
                    warn!("PSCI CPU_ON of cpu{core} failed: {}", ret as i64);
                }
                ret == 0
            }
            (CpuBringUp::SpinTable { .. }, Some(release)) => {
                // SAFETY: the spin table's release address comes from the DTB (or the board
                // description) and lies in the firmware's reserved low memory, which nothing else
                // uses while the cores are released.
                unsafe { phys::write_u64(release, entry) };
                phys::clean_invalidate_dcache(release, 8);
                cpu::send_event();
                true
            }
            (CpuBringUp::SpinTable { .. }, None) => {
                warn!("cpu{core} has no cpu-release-addr; left off");
                false
            }
        };
        started += ok as usize;
    }
    let expected = 1 + started;
    let mut polls = 0;
    while CORES.online() < expected && polls < ONLINE_POLLS {
        core::hint::spin_loop();
        polls += 1;
    }
    let online = CORES.online();
    if online < expected {
        let missing: alloc::vec::Vec<usize> =
            (0..crate::machine::MAX_CPUS).filter(|&c| CORES.state(c) == CoreState::Offline).collect();
        warn!("only {online} of {expected} cpus came online; offline: {missing:?}");
    } else {
        info!("all {online} cpus online");
    }
}

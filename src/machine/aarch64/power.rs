//! Powering off and resetting the machine, after the trap handler's power-down scrub. Under QEMU
//! (`semihosting` builds) a power-off ends the run with a real exit status; otherwise the request
//! goes to the firmware's PSCI where the board has it, and the cores park where it has none. A
//! reset goes to PSCI, or to the board's power-management watchdog (the Pi's), which only KCore
//! can reach.

use super::firmware;
use corevisor_abi::psci;
use log::error;

/// Exit status of a QEMU run that ended in a KCore panic.
pub const PANIC_EXIT_STATUS: u32 = 101;

/// What this machine offers to power off and reset: a capability the boot sequence builds once
/// from what it checked (the board says the firmware has PSCI; the DTB or the board names the
/// PM block).
#[derive(Clone, Copy, Debug)]
pub struct Power {
    board: &'static str,
    psci: bool,
    pm_watchdog: Option<u64>,
}

impl Power {
    /// # Safety
    /// `psci`: the firmware implements PSCI behind `smc #0`. `pm_watchdog`: the physical
    /// address of a BCM2835-style power-management block, mapped as Device memory in KCore's
    /// EL2 map; [`Power::system_reset`] writes its watchdog registers.
    pub const unsafe fn new(board: &'static str, psci: bool, pm_watchdog: Option<u64>) -> Power {
        Power { board, psci, pm_watchdog }
    }

    /// Ends the machine's run; `status` is the host's exit status (0 = success).
    pub fn system_off(&self, status: u64) -> ! {
        log::logger().flush();
        #[cfg(feature = "semihosting")]
        super::semihosting::exit(status as u32);
        #[cfg(not(feature = "semihosting"))]
        {
            let _ = status;
            if self.psci {
                // SAFETY: SYSTEM_OFF takes no argument; the constructor's caller vouched for PSCI.
                unsafe { firmware::smc(psci::SYSTEM_OFF, [0; 3]) };
            }
            error!("{} cannot power off; halting this core", self.board);
            super::cpu::park()
        }
    }

    /// Resets the machine.
    pub fn system_reset(&self) -> ! {
        log::logger().flush();
        if self.psci {
            // SAFETY: SYSTEM_RESET takes no argument; the constructor's caller vouched for PSCI.
            unsafe { firmware::smc(psci::SYSTEM_RESET, [0; 3]) };
        }
        if let Some(pm) = self.pm_watchdog {
            // SAFETY: the constructor's caller vouched that `pm` is the PM block.
            unsafe { super::bcm2835_pm::full_reset(pm) };
        }
        error!("{} has no reset KCore can use; powering off instead", self.board);
        self.system_off(0)
    }
}

/// Stops the machine after a broken invariant: the QEMU run fails, a board parks the core.
pub fn halt_after_panic() -> ! {
    #[cfg(feature = "semihosting")]
    super::semihosting::exit(PANIC_EXIT_STATUS);
    #[cfg(not(feature = "semihosting"))]
    super::cpu::park()
}

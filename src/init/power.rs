//! Powering off and resetting, after the trap handler's power-down scrub. Under QEMU
//! (`semihosting` builds) a power-off ends the run with a real exit status; otherwise the request
//! goes to the firmware's PSCI where the board has it, and the cores park where it has none. A
//! reset goes to PSCI, or to the board's power-management watchdog (the Pi's), which only KCore
//! can reach.

use crate::board::BOARD;
#[cfg(not(feature = "semihosting"))]
use crate::machine::cpu;
use crate::machine::firmware;
use corevisor_abi::psci;
use log::error;

/// Exit status of a QEMU run that ended in a KCore panic.
#[cfg(feature = "semihosting")]
pub const PANIC_EXIT_STATUS: u32 = 101;

/// Ends the machine's run; `status` is the host's exit status (0 = success).
pub fn system_off(status: u64) -> ! {
    log::logger().flush();
    #[cfg(feature = "semihosting")]
    crate::machine::semihosting::exit(status as u32);
    #[cfg(not(feature = "semihosting"))]
    {
        let _ = status;
        if BOARD.firmware_psci {
            firmware::smc(psci::SYSTEM_OFF, [0; 3]);
        }
        error!("{} cannot power off; halting this core", BOARD.name);
        cpu::park()
    }
}

/// Resets the machine.
pub fn system_reset() -> ! {
    log::logger().flush();
    if BOARD.firmware_psci {
        firmware::smc(psci::SYSTEM_RESET, [0; 3]);
    }
    if let Some(pm) = super::platform().pm_watchdog {
        crate::machine::bcm2835_pm::full_reset(pm);
    }
    error!("{} has no reset KCore can use; powering off instead", BOARD.name);
    system_off(0)
}

/// Stops the machine after a broken invariant: the QEMU run fails, a board parks the core.
pub fn halt_after_panic() -> ! {
    #[cfg(feature = "semihosting")]
    crate::machine::semihosting::exit(PANIC_EXIT_STATUS);
    #[cfg(not(feature = "semihosting"))]
    cpu::park()
}

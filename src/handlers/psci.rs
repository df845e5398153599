//! The host's PSCI calls, mediated by KCore. KCore owns every core from boot, so CPU_ON and
//! AFFINITY_INFO are answered from the core table on both boards; SYSTEM_OFF and SYSTEM_RESET
//! go to the firmware where it has PSCI (QEMU virt) and are emulated where it has none (the Pi).

use crate::cpus::{index_of_mpidr, CoreTable, CpuOnError, HostEntry};
use corevisor_abi::{psci, Status};

/// What a PSCI call asks of the machine once its registers are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciOutcome {
    /// x0 gets this value; the host goes on.
    Return(u64),
    /// A CPU_ON was posted: return SUCCESS and wake the parked cores.
    CpuOnPosted,
    /// The calling core leaves the host.
    CpuOff,
    SystemOff,
    SystemReset,
}

/// Answers the host's PSCI `function` with arguments x1..x3. `host_may_run_at(pa)` says whether
/// the host may start a core at `pa` (host memory, not KCore's).
pub fn host_psci(
    function: u32,
    args: [u64; 3],
    cores: &CoreTable,
    host_may_run_at: &dyn Fn(u64) -> bool,
) -> PsciOutcome {
    use PsciOutcome::Return;
    let status = |s: Status| Return(s.as_reg());
    match function {
        psci::VERSION => Return(psci::PSCI_VERSION_1_1),
        psci::FEATURES => match args[0] as u32 {
            psci::VERSION
            | psci::FEATURES
            | psci::CPU_ON_32
            | psci::CPU_ON_64
            | psci::CPU_OFF
            | psci::AFFINITY_INFO_32
            | psci::AFFINITY_INFO_64
            | psci::SYSTEM_OFF
            | psci::SYSTEM_RESET
                if args[0] >> 32 == 0 =>
            {
                status(Status::Success)
            }
            _ => status(Status::NotSupported),
        },
        psci::CPU_ON_32 | psci::CPU_ON_64 => {
            let (target, entry, context) = (args[0], args[1], args[2]);
            let Some(core) = index_of_mpidr(target) else {
                return status(Status::InvalidParameters);
            };
            if !entry.is_multiple_of(4) || !host_may_run_at(entry) {
                return status(Status::InvalidAddress);
            }
            match cores.request_on(core, HostEntry { entry, context }) {
                Ok(()) => PsciOutcome::CpuOnPosted,
                Err(CpuOnError::AlreadyOn) => status(Status::AlreadyOn),
                Err(CpuOnError::OnPending) => status(Status::OnPending),
                Err(CpuOnError::Offline) => status(Status::InvalidParameters),
            }
        }
        psci::AFFINITY_INFO_32 | psci::AFFINITY_INFO_64 => {
            let (target, level) = (args[0], args[1]);
            match index_of_mpidr(target) {
                Some(core) if level == 0 => Return(match cores.state(core) {
                    crate::cpus::CoreState::Host => psci::AFFINITY_ON,
                    crate::cpus::CoreState::Claimed | crate::cpus::CoreState::OnPending => 2, // ON_PENDING
                    _ => psci::AFFINITY_OFF,
                }),
                _ => status(Status::InvalidParameters),
            }
        }
        psci::CPU_OFF => PsciOutcome::CpuOff,
        psci::SYSTEM_OFF => PsciOutcome::SystemOff,
        psci::SYSTEM_RESET => PsciOutcome::SystemReset,
        _ => status(Status::NotSupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_ram(pa: u64) -> bool {
        (0x4400_0000..0x8000_0000).contains(&pa)
    }

    #[test]
    fn cpu_on_checks_target_and_entry_then_posts() {
        let cores = CoreTable::new();
        cores.mark_parked(1);
        let on = |target, entry| host_psci(psci::CPU_ON_64, [target, entry, 9], &cores, &host_ram);
        assert_eq!(on(0x100, 0x4400_0000), PsciOutcome::Return(Status::InvalidParameters.as_reg()));
        assert_eq!(on(2, 0x4400_0000), PsciOutcome::Return(Status::InvalidParameters.as_reg()));
        assert_eq!(on(1, 0x4008_0000), PsciOutcome::Return(Status::InvalidAddress.as_reg()));
        assert_eq!(on(1, 0x4400_0002), PsciOutcome::Return(Status::InvalidAddress.as_reg()));
        assert_eq!(on(1, 0x4400_0000), PsciOutcome::CpuOnPosted);
        assert_eq!(on(1, 0x4400_0000), PsciOutcome::Return(Status::OnPending.as_reg()));
        let info = |target| host_psci(psci::AFFINITY_INFO_64, [target, 0, 0], &cores, &host_ram);
        assert_eq!(info(1), PsciOutcome::Return(2));
        cores.take_work(1);
        assert_eq!(info(1), PsciOutcome::Return(psci::AFFINITY_ON));
        assert_eq!(on(1, 0x4400_0000), PsciOutcome::Return(Status::AlreadyOn.as_reg()));
        assert_eq!(info(3), PsciOutcome::Return(psci::AFFINITY_OFF));
    }

    #[test]
    fn unknown_psci_functions_are_not_supported() {
        let cores = CoreTable::new();
        let r = host_psci(0x8400_0011, [0; 3], &cores, &host_ram);
        assert_eq!(r, PsciOutcome::Return(Status::NotSupported.as_reg()));
        let f = host_psci(psci::FEATURES, [0x8400_0011, 0, 0], &cores, &host_ram);
        assert_eq!(f, PsciOutcome::Return(Status::NotSupported.as_reg()));
    }
}

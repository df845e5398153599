//! Which core runs what. KCore owns every core from boot: each one comes online at EL2, reports,
//! and waits in KCore until the host asks for it with PSCI CPU_ON. This table is the single
//! place that records those states, so PSCI answers (CPU_ON, AFFINITY_INFO) cannot disagree with
//! what the cores actually do.

use crate::machine::MAX_CPUS;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// The life of one core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CoreState {
    /// Not brought up (absent, or failed to start).
    Offline = 0,
    /// Online at EL2, waiting in KCore for work.
    Parked = 1,
    /// A CPU_ON request is being written into the mailbox.
    Claimed = 2,
    /// The host asked for this core; it has not entered the host yet.
    OnPending = 3,
    /// Running the host.
    Host = 4,
}

impl CoreState {
    fn from_u8(v: u8) -> CoreState {
        match v {
            1 => CoreState::Parked,
            2 => CoreState::Claimed,
            3 => CoreState::OnPending,
            4 => CoreState::Host,
            _ => CoreState::Offline,
        }
    }
}

/// Why CPU_ON was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuOnError {
    /// The core is running the host already.
    AlreadyOn,
    /// A CPU_ON for this core is in flight.
    OnPending,
    /// The core never came online.
    Offline,
}

/// Where the host wants a core to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostEntry {
    pub entry: u64,
    pub context: u64,
}

/// Every core's state, shared by the boot sequence and the PSCI mediation.
pub static CORES: CoreTable = CoreTable::new();

/// Per-core state and the CPU_ON mailbox.
pub struct CoreTable {
    state: [AtomicU8; MAX_CPUS],
    entry: [AtomicU64; MAX_CPUS],
    context: [AtomicU64; MAX_CPUS],
}

impl Default for CoreTable {
    fn default() -> Self {
        Self::new()
    }
}

impl CoreTable {
    pub const fn new() -> CoreTable {
        CoreTable {
            state: [const { AtomicU8::new(CoreState::Offline as u8) }; MAX_CPUS],
            entry: [const { AtomicU64::new(0) }; MAX_CPUS],
            context: [const { AtomicU64::new(0) }; MAX_CPUS],
        }
    }

    pub fn state(&self, core: usize) -> CoreState {
        CoreState::from_u8(self.state[core].load(Ordering::Acquire))
    }

    /// Core `core` is online in KCore and waits for work.
    pub fn mark_parked(&self, core: usize) {
        self.state[core].store(CoreState::Parked as u8, Ordering::Release);
    }

    /// Core `core` enters the host (the boot core, at hand-off).
    pub fn mark_host(&self, core: usize) {
        self.state[core].store(CoreState::Host as u8, Ordering::Release);
    }

    /// How many cores are online (in KCore or in the host).
    pub fn online(&self) -> usize {
        (0..MAX_CPUS).filter(|&c| self.state(c) != CoreState::Offline).count()
    }

    /// Posts a host entry for a parked core. The caller then wakes the cores (`sev`).
    pub fn request_on(&self, core: usize, request: HostEntry) -> Result<(), CpuOnError> {
        let claim = self.state[core].compare_exchange(
            CoreState::Parked as u8,
            CoreState::Claimed as u8,
            Ordering::Acquire,
            Ordering::Acquire,
        );
        match claim.map_err(CoreState::from_u8) {
            Ok(_) => {
                self.entry[core].store(request.entry, Ordering::Relaxed);
                self.context[core].store(request.context, Ordering::Relaxed);
                self.state[core].store(CoreState::OnPending as u8, Ordering::Release);
                Ok(())
            }
            Err(CoreState::Host) => Err(CpuOnError::AlreadyOn),
            Err(CoreState::Claimed | CoreState::OnPending) => Err(CpuOnError::OnPending),
            Err(CoreState::Offline | CoreState::Parked) => Err(CpuOnError::Offline),
        }
    }

    /// The host entry posted for `core`, if any; the core is then the host's.
    pub fn take_work(&self, core: usize) -> Option<HostEntry> {
        (self.state(core) == CoreState::OnPending).then(|| {
            let work = HostEntry {
                entry: self.entry[core].load(Ordering::Relaxed),
                context: self.context[core].load(Ordering::Relaxed),
            };
            self.mark_host(core);
            work
        })
    }

    /// The host entry posted for `core` and not yet taken, without taking it.
    pub fn pending_entry(&self, core: usize) -> Option<HostEntry> {
        (self.state(core) == CoreState::OnPending).then(|| HostEntry {
            entry: self.entry[core].load(Ordering::Relaxed),
            context: self.context[core].load(Ordering::Relaxed),
        })
    }

    /// Core `core` leaves the host (PSCI CPU_OFF) and waits in KCore again.
    pub fn host_cpu_off(&self, core: usize) {
        self.mark_parked(core);
    }
}

/// The core index of a PSCI target MPIDR: Aff0, with every higher affinity zero.
pub fn index_of_mpidr(mpidr: u64) -> Option<usize> {
    let aff0 = (mpidr & 0xff) as usize;
    (mpidr & !0xff == 0 && aff0 < MAX_CPUS).then_some(aff0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: HostEntry = HostEntry { entry: 0x4400_1000, context: 7 };

    #[test]
    fn cpu_on_hands_a_parked_core_its_entry_once() {
        let cores = CoreTable::new();
        assert_eq!(cores.request_on(1, ENTRY), Err(CpuOnError::Offline));
        cores.mark_parked(1);
        assert_eq!(cores.take_work(1), None);
        assert_eq!(cores.request_on(1, ENTRY), Ok(()));
        assert_eq!(cores.request_on(1, ENTRY), Err(CpuOnError::OnPending));
        assert_eq!(cores.take_work(1), Some(ENTRY));
        assert_eq!(cores.state(1), CoreState::Host);
        assert_eq!(cores.request_on(1, ENTRY), Err(CpuOnError::AlreadyOn));
        cores.host_cpu_off(1);
        assert_eq!(cores.request_on(1, ENTRY), Ok(()));
        assert_eq!(cores.online(), 1);
    }

    #[test]
    fn mpidr_maps_to_aff0_only() {
        assert_eq!(index_of_mpidr(3), Some(3));
        assert_eq!(index_of_mpidr(0x100), None);
        assert_eq!(index_of_mpidr(MAX_CPUS as u64), None);
    }
}

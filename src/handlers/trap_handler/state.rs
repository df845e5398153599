//! KCore's state and what the boot sequence hands the trap handler once, before the host runs.

use crate::machine::phys::DeviceWindow;
use crate::machine::power::Power;
use crate::machine::sync::{LockRank, TicketGuard, TicketLock};
use crate::vm::Kcore;

/// What the trap handler needs to know about the host, from the boot sequence.
pub struct HostSetup {
    /// Whether the host may start a core at this physical address (RAM that is not KCore's).
    pub may_run_at: fn(u64) -> bool,
    /// VTTBR_EL2 while the host runs: its stage-2 root, VMID 0.
    pub vttbr: u64,
    /// The GIC is a GICv3 (EL1 gets system-register access to it).
    pub gic_v3: bool,
    /// The device pages KCore accesses for the host (the redistributors' control pages).
    pub emulated_mmio: DeviceWindow,
    /// How the machine powers off and resets.
    pub power: Power,
}

static HOST: spin::Once<HostSetup> = spin::Once::new();

/// KCore's state: the ownership table with the host's stage-2 (SeKVM's `s2page`) and the VMs.
///
/// One lock guards it all. Lock order (a core holding one lock only takes locks below it;
/// `LockRank`, checked in debug and `check-invariants` builds; docs/locks.md):
/// 1. this lock;
/// 2. the console lock (logging is allowed under any lock).
///
/// It is never held while a guest runs: VCPU_RUN takes the vCPU's context out under the lock,
/// runs the guest without it, and puts the context back under it.
pub(super) static STATE: TicketLock<Option<Kcore>> = TicketLock::new(LockRank::State, None);

/// Hands the trap handler the host's setup and KCore's state. Called once before the host runs.
pub fn install(host: HostSetup, kcore: Kcore) {
    HOST.call_once(|| host);
    *STATE.lock() = Some(kcore);
}

/// The host's setup (after [`install`]).
#[inline]
pub(super) fn host() -> &'static HostSetup {
    HOST.get().expect("the host's setup is installed before the host runs")
}

/// KCore's state, locked until the guard drops: for a caller that wants the work inline (the
/// share call).
#[inline(always)]
pub(super) fn locked() -> TicketGuard<'static, Option<Kcore>> {
    STATE.lock()
}

/// Runs `f` on KCore's state, under its lock.
#[inline]
pub(super) fn with_kcore<R>(f: impl FnOnce(&mut Kcore) -> R) -> R {
    match STATE.lock().as_mut() {
        Some(kcore) => f(kcore),
        None => panic!("a trap needs KCore's state before the host's memory was set up"),
    }
}

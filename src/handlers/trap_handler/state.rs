//! KCore's state and what the boot sequence hands the trap handler once, before the host runs.

use crate::machine::phys::DeviceWindow;
use crate::machine::power::Power;
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

/// KCore's state, set once before the host runs. It holds its own locks (`vm::Kcore`: a VM's
/// lock, then `core`, then the ownership lock; `LockRank`, checked in debug and
/// `check-invariants` builds; docs/locks.md), and each trap takes only those its work needs. None
/// is held while a guest runs: VCPU_RUN takes the vCPU's context out under its VM's lock, runs
/// the guest without it, and puts the context back under it.
static KCORE: spin::Once<Kcore> = spin::Once::new();

/// Hands the trap handler the host's setup and KCore's state. Called once before the host runs.
pub fn install(host: HostSetup, kcore: Kcore) {
    HOST.call_once(|| host);
    KCORE.call_once(|| kcore);
}

/// The host's setup (after [`install`]).
#[inline]
pub(super) fn host() -> &'static HostSetup {
    HOST.get().expect("the host's setup is installed before the host runs")
}

/// KCore's state (after [`install`]); the caller takes the locks its work needs.
#[inline]
pub(super) fn kcore() -> &'static Kcore {
    match KCORE.get() {
        Some(kcore) => kcore,
        None => panic!("a trap needs KCore's state before the host's memory was set up"),
    }
}

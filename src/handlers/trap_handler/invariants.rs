//! Debug builds (and `check-invariants` builds) check SeKVM's invariants after every host trap
//! and every share call; a violation is a KCore bug and halts.
//!
//! `sampled-invariants` builds (the Linux scenarios) sample two kinds of trap after which no
//! ownership record changed: a VCPU_RUN or an INJECT_IRQ, and a host access that KCore refused.
//! A Linux boot makes tens of thousands of the first, `host-attacks-linux` tens of thousands of
//! the second; a full check walks every stage-2 table, and neither changes a page's owner or a
//! table (a page answer does, and moves a record; a refusal only injects an abort into the host,
//! and that nothing was read is what the attacking scenario itself checks): every [`SAMPLE`]th
//! of them is checked. Every other trap, every share call and every call that moved a record is
//! checked as in a test build, and KCore's canary after every trap.

use super::state;
use crate::machine::{layout, Aarch64};
use crate::memory::HostMemory;
use crate::vm::{vm_tables, VmRecords};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use corevisor_abi::host_call;

/// Whether this build checks invariants.
const ON: bool = cfg!(any(debug_assertions, feature = "check-invariants"));
/// Whether this build samples the checks after record-preserving VCPU_RUNs and injections.
const SAMPLED: bool = cfg!(feature = "sampled-invariants");
/// One in this many sampled traps gets the full check.
const SAMPLE: u64 = 64;

/// The ownership table's change count at the last full check.
static CHECKED_AT: AtomicU64 = AtomicU64::new(u64::MAX);
/// Sampled traps seen.
static SAMPLED_TRAPS: AtomicU64 = AtomicU64::new(0);
/// Full checks made.
static FULL_CHECKS: AtomicU64 = AtomicU64::new(0);

/// The invariant check after a host call whose x0 was `function`: sampled in
/// `sampled-invariants` builds for VCPU_RUN and INJECT_IRQ (see the module). A call refused at
/// the edge changed nothing.
#[inline(always)]
pub fn check_after_call(function: u64) {
    if ON {
        check_sampled_if(SAMPLED && [host_call::VCPU_RUN, host_call::INJECT_IRQ].contains(&(function as u32)));
    }
}

/// The invariant check after a synchronous host trap: sampled in `sampled-invariants` builds if
/// it was an access KCore refused (see the module).
#[inline(always)]
pub fn check_after_host_trap(refused_access: bool) {
    if ON {
        check_sampled_if(SAMPLED && refused_access);
    }
}

/// The full check, or for a trap of a `sampleable` kind after which no record changed, the
/// canary alone on all but every [`SAMPLE`]th.
fn check_sampled_if(sampleable: bool) {
    let kcore = state::kcore();
    let unchanged = CHECKED_AT.load(Relaxed) == kcore.mem.lock().db.changes();
    if sampleable && unchanged && !SAMPLED_TRAPS.fetch_add(1, Relaxed).is_multiple_of(SAMPLE) {
        return canary();
    }
    let (vms, mem) = kcore.lock_all();
    check_of(&vms, &mem);
}

/// The full check after a guest's share call, which held only its VM's lock and the ownership
/// lock (the check needs every lock, and the VMs' below the one it held). The core gives up the
/// vCPU context while it waits for the locks, and takes it back under them, as the share did: a
/// power-down that holds them for good must not wait for this core.
#[inline(always)]
pub fn check_after_share(core: usize) {
    if ON {
        super::principal::holds_context(core, false);
        let (vms, mem) = state::kcore().lock_all();
        super::principal::holds_context(core, true);
        check_of(&vms, &mem);
    }
}

/// The full check, for a caller that holds every lock of KCore's state (`Kcore::lock_all`), so
/// that it sees no call half done.
pub fn check_of(vms: &VmRecords, mem: &HostMemory) {
    if ON {
        if let Err(violation) = crate::memory::invariants::check(&Aarch64, mem, &vm_tables(vms)) {
            panic!("invariant broken after a trap: {violation:?}");
        }
        CHECKED_AT.store(mem.db.changes(), Relaxed);
        FULL_CHECKS.fetch_add(1, Relaxed);
        canary();
    }
}

/// The canary half of [`check_of`]: one page, cheap enough for every trap.
fn canary() {
    if let Err(violation) = crate::memory::invariants::check_canary(&Aarch64, layout::canary()) {
        panic!("invariant broken after a trap: KCore's canary changed: {violation:x?}");
    }
}

/// Logs how many full checks ran, so a run's log shows what its checks covered.
pub fn report() {
    if ON {
        let (full, sampled) = (FULL_CHECKS.load(Relaxed), SAMPLED_TRAPS.load(Relaxed));
        match SAMPLED {
            true => log::info!("invariants: {full} full checks; {sampled} traps sampled one in {SAMPLE}"),
            false => log::info!("invariants: {full} full checks, one after every host trap"),
        }
    }
}

//! Per-core bookkeeping for panics and power-downs: whose trap each core is handling, the halt
//! flag every core obeys at its next entry, and which cores hold a vCPU context out of KCore's
//! state.

use crate::machine::{cpu, MAX_CPUS};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Whose trap a core is handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Principal {
    /// KCore itself: no trap.
    Kcore = 0,
    Host = 1,
    Guest = 2,
}

/// Whose trap each core is handling, for panic reports.
static HANDLING: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(Principal::Kcore as u8) }; MAX_CPUS];
/// What every core looks at when it enters KCore from the host, in one byte, so that the common
/// case (nothing) costs one load and one branch: [`HALTED`] (a panic or a power-down: every core
/// stops at its next trap) and [`SMMU_EVENTS`] (KCore owns an SMMU: drain its event queue).
static ATTENTION: AtomicU8 = AtomicU8::new(0);
const HALTED: u8 = 1 << 0;
const SMMU_EVENTS: u8 = 1 << 1;
/// Per core: it holds a vCPU's context out of KCore's state (a VCPU_RUN in progress) and may
/// still write it. Set only under KCore's VMs lock; cleared before the core waits for KCore's locks
/// again, and when it parks. A power-down waits for every flag to clear before it scrubs the heap
/// the contexts live in.
static HOLDS_CONTEXT: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

#[inline]
pub fn set(core: usize, principal: Principal) {
    HANDLING[core].store(principal as u8, Ordering::Relaxed);
}

/// Stops every core at its next entry to KCore.
pub fn halt_all_cores() {
    ATTENTION.fetch_or(HALTED, Ordering::SeqCst);
}

/// From now on every entry from the host drains the SMMU's event queue (set once at boot, when
/// KCore took an SMMU).
pub fn drain_smmu_events_on_entry() {
    ATTENTION.fetch_or(SMMU_EVENTS, Ordering::SeqCst);
}

/// Whether the halt flag is up (every core stops at its next entry to KCore).
#[inline]
pub fn halted() -> bool {
    ATTENTION.load(Ordering::Relaxed) & HALTED != 0
}

/// Parks this core for good if the halt flag was raised, letting go of any vCPU context (a
/// guest's exit: the SMMU's events wait for the host's next entry).
#[inline]
pub fn park_if_halted() {
    if halted() {
        attend_to(HALTED)
    }
}

/// Whether an entry from the host must [`attend`] first: one load and one branch (`cargo xtask
/// bench`: the null call is 90 EL2 instructions, 89 before there was an SMMU: a register move the
/// compiler hoists, not the check). With an SMMU every host entry attends, and the drain takes
/// the event queue's lock even when the queue is empty.
#[inline(always)]
pub fn needs_attention() -> bool {
    ATTENTION.load(Ordering::Relaxed) != 0
}

/// On an entry from the host that [`needs_attention`]: parks this core for good if the halt
/// flag was raised, letting go of any vCPU context; drains the SMMU's event queue if KCore owns
/// one (so a DMA the SMMU refused is in the log before the host's call returns).
pub fn attend() {
    attend_to(ATTENTION.load(Ordering::Relaxed))
}

fn attend_to(attention: u8) {
    if attention & HALTED != 0 {
        HOLDS_CONTEXT[cpu::index()].store(false, Ordering::Release);
        cpu::park()
    }
    if let Some(smmu) = crate::machine::smmu::get() {
        super::smmu::drain_events(smmu);
    }
}

/// Records whether `core` holds a vCPU context (`Release` when it lets go: its writes to the
/// context are done).
#[inline]
pub fn holds_context(core: usize, holds: bool) {
    HOLDS_CONTEXT[core].store(holds, if holds { Ordering::Relaxed } else { Ordering::Release });
}

/// Whether no core holds a vCPU context.
pub fn no_context_held() -> bool {
    HOLDS_CONTEXT.iter().all(|held| !held.load(Ordering::Acquire))
}

/// Who was being served on `core`, in words.
pub fn principal_name(core: usize) -> &'static str {
    match HANDLING[core].load(Ordering::Relaxed) {
        0 => "KCore itself (no trap)",
        1 => "a trap from the host",
        2 => "an exit from a guest",
        _ => "an unknown principal",
    }
}

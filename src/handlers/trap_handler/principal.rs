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
/// Set by a panic or a power-down: every core stops at its next trap.
static HALTED: AtomicBool = AtomicBool::new(false);
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
    HALTED.store(true, Ordering::SeqCst);
}

/// Whether the halt flag is up (every core stops at its next entry to KCore).
#[inline]
pub fn halted() -> bool {
    HALTED.load(Ordering::Relaxed)
}

/// Parks this core for good if the halt flag was raised, letting go of any vCPU context.
#[inline]
pub fn park_if_halted() {
    if HALTED.load(Ordering::Relaxed) {
        HOLDS_CONTEXT[cpu::index()].store(false, Ordering::Release);
        cpu::park()
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

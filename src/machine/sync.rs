//! The ticket spinlock: the lock primitive of the `locks` layer (SeKVM's LockOps). Tickets make
//! the lock fair, so no core starves another. Only used with the MMU on: exclusives on Device
//! memory hang on real Cortex-A72 cores.
//!
//! Every lock has a [`LockRank`], and a core takes locks in increasing rank only, which rules out
//! deadlock between cores (docs/locks.md has the table). Debug and `check-invariants` builds keep
//! a per-core record of the ranks held and halt on a lock taken out of order; other builds
//! compile the check away.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

/// A waiting core's pause: `yield` on the machine (see `cpu::relax`), the portable hint in tests.
#[cfg(target_os = "none")]
use super::cpu::relax;
#[cfg(not(target_os = "none"))]
use core::hint::spin_loop as relax;

/// Where a lock sits in KCore's lock order: a core holding a lock of rank `r` takes only locks of
/// a higher rank. Each variant names the SeKVM lock (`acquire_lock_*`, sekvm-kcore.md layer 4) it
/// stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LockRank {
    /// KCore's whole state (`trap_handler::state::STATE`): for now SeKVM's `vm` (per-VM info),
    /// `core` (vmid and remap allocation), `s2page` (ownership) and `pt` (per-principal stage-2)
    /// locks in one.
    State = 0,
    /// The SMMU's command queue, and its event queue (two locks of this rank, never nested):
    /// SeKVM's `smmu` lock. Taken under the state lock (a page leaving a device's table is
    /// invalidated in the SMMU while the ownership change is under way) or alone (the event
    /// drain when the host enters KCore).
    Smmu = 1,
    /// The console's UART: no SeKVM counterpart (its prints are unverified); logging is allowed
    /// under any lock, so it is last.
    Console = 2,
}

impl LockRank {
    /// Every rank, lowest first.
    const ALL: [LockRank; 3] = [LockRank::State, LockRank::Smmu, LockRank::Console];
}

/// Whether this build records the ranks each core holds and checks the order.
const ORDER_CHECKED: bool = cfg!(any(debug_assertions, feature = "check-invariants"));

/// A fair spinlock that owns the data it protects.
pub struct TicketLock<T> {
    next_ticket: AtomicU32,
    now_serving: AtomicU32,
    rank: LockRank,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one guard at a time (ticket order), so `&TicketLock<T>` only
// ever gives exclusive access to `T`; sending `T` between cores is fine when `T: Send`.
unsafe impl<T: Send> Sync for TicketLock<T> {}
// SAFETY: moving the lock moves the `T` it owns.
unsafe impl<T: Send> Send for TicketLock<T> {}

impl<T> TicketLock<T> {
    pub const fn new(rank: LockRank, data: T) -> Self {
        TicketLock { next_ticket: AtomicU32::new(0), now_serving: AtomicU32::new(0), rank, data: UnsafeCell::new(data) }
    }

    /// Takes a ticket and spins until it is served (SeKVM `wait_lock`). Halts, in builds that
    /// check the order, if this core holds a lock of this rank or above.
    #[inline]
    pub fn lock(&self) -> TicketGuard<'_, T> {
        if ORDER_CHECKED {
            held::check_order(self.rank);
        }
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        while self.now_serving.load(Ordering::Acquire) != ticket {
            relax();
        }
        if ORDER_CHECKED {
            held::record(self.rank, true);
        }
        TicketGuard { lock: self }
    }

    /// The lock only if nobody holds or waits for it. Never waits, so it cannot close a cycle of
    /// waiting cores: the order is not checked (the panic path takes the console this way under
    /// any lock), but the rank is recorded while held.
    pub fn try_lock(&self) -> Option<TicketGuard<'_, T>> {
        let serving = self.now_serving.load(Ordering::Acquire);
        self.next_ticket
            .compare_exchange(serving, serving.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| {
                if ORDER_CHECKED {
                    held::record(self.rank, true);
                }
                TicketGuard { lock: self }
            })
    }
}

/// The ranks each core holds, one bit per rank. Guards never move between cores: a lock is
/// taken and released within one trap.
mod held {
    use super::LockRank;

    /// Halts if this core holds a lock of rank `rank` or above.
    pub(super) fn check_order(rank: LockRank) {
        let above = get() >> rank as u32;
        if above != 0 {
            let highest = u32::BITS - 1 - (above << rank as u32).leading_zeros();
            panic!("lock order violated: taking the {rank:?} lock while holding the {:?} lock", of_bit(highest));
        }
    }

    /// Notes that this core took (`true`) or released rank `rank`.
    pub(super) fn record(rank: LockRank, taken: bool) {
        let bit = 1 << rank as u32;
        set(if taken { get() | bit } else { get() & !bit });
    }

    fn of_bit(bit: u32) -> LockRank {
        LockRank::ALL[bit as usize]
    }

    #[cfg(test)]
    std::thread_local! {
        /// On the host a thread stands for a core.
        static HELD: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
    }

    #[cfg(test)]
    fn get() -> u32 {
        HELD.with(|h| h.get())
    }

    #[cfg(test)]
    fn set(ranks: u32) {
        HELD.with(|h| h.set(ranks));
    }

    /// Only a core writes its own entry: plain loads and stores, no exclusives.
    #[cfg(target_os = "none")]
    static HELD: [core::sync::atomic::AtomicU32; crate::machine::MAX_CPUS] =
        [const { core::sync::atomic::AtomicU32::new(0) }; crate::machine::MAX_CPUS];

    #[cfg(target_os = "none")]
    fn get() -> u32 {
        HELD.get(crate::machine::cpu::index()).map_or(0, |h| h.load(core::sync::atomic::Ordering::Relaxed))
    }

    #[cfg(target_os = "none")]
    fn set(ranks: u32) {
        if let Some(h) = HELD.get(crate::machine::cpu::index()) {
            h.store(ranks, core::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A host build outside tests (clippy) has no cores to record.
    #[cfg(not(any(test, target_os = "none")))]
    fn get() -> u32 {
        0
    }

    #[cfg(not(any(test, target_os = "none")))]
    fn set(_ranks: u32) {}
}

/// Exclusive access to the data of a [`TicketLock`]; dropping it serves the next ticket
/// (SeKVM `pass_lock`).
pub struct TicketGuard<'a, T> {
    lock: &'a TicketLock<T>,
}

impl<T> Deref for TicketGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the served ticket, so no other reference to the data exists.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for TicketGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for TicketGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if ORDER_CHECKED {
            held::record(self.lock.rank, false);
        }
        // Only the holder writes `now_serving`: a plain load and a release store serve the next
        // ticket (no exclusive pair needed).
        let serving = self.lock.now_serving.load(Ordering::Relaxed);
        self.lock.now_serving.store(serving.wrapping_add(1), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lock_excludes_and_serves_in_ticket_order() {
        let lock = Arc::new(TicketLock::new(LockRank::State, 0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let mut guard = lock.lock();
                        let v = *guard;
                        *guard = v + 1;
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*lock.lock(), 40_000);
    }

    #[test]
    fn try_lock_fails_while_held() {
        let lock = TicketLock::new(LockRank::State, ());
        let guard = lock.lock();
        assert!(lock.try_lock().is_none());
        drop(guard);
        assert!(lock.try_lock().is_some());
    }

    /// The console under the state lock is the documented order.
    #[test]
    fn locks_taken_in_rank_order_pass() {
        let (state, console) = (TicketLock::new(LockRank::State, ()), TicketLock::new(LockRank::Console, ()));
        let outer = state.lock();
        drop(console.lock());
        drop(outer);
        // Released: either may be taken alone again.
        drop(console.lock());
        drop(state.lock());
    }

    /// The state lock taken under the console lock inverts the order: the core halts, naming
    /// both locks.
    #[test]
    #[should_panic(expected = "taking the State lock while holding the Console lock")]
    fn an_inverted_lock_order_halts() {
        let (state, console) = (TicketLock::new(LockRank::State, ()), TicketLock::new(LockRank::Console, ()));
        let _console = console.lock();
        let _state = state.lock();
    }

    /// Taking a lock twice on one core (it would spin for ever) is an order violation too.
    #[test]
    #[should_panic(expected = "taking the State lock while holding the State lock")]
    fn a_lock_taken_twice_on_one_core_halts() {
        let lock = TicketLock::new(LockRank::State, ());
        let _first = lock.lock();
        let _second = lock.lock();
    }
}

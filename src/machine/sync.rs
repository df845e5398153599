//! The ticket spinlock: the lock primitive of the `locks` layer (SeKVM's LockOps). Tickets make
//! the lock fair, so no core starves another. Only used with the MMU on: exclusives on Device
//! memory hang on real Cortex-A72 cores.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

/// A waiting core's pause: `yield` on the machine (see `cpu::relax`), the portable hint in tests.
#[cfg(target_os = "none")]
use super::cpu::relax;
#[cfg(not(target_os = "none"))]
use core::hint::spin_loop as relax;

/// A fair spinlock that owns the data it protects.
pub struct TicketLock<T> {
    next_ticket: AtomicU32,
    now_serving: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one guard at a time (ticket order), so `&TicketLock<T>` only
// ever gives exclusive access to `T`; sending `T` between cores is fine when `T: Send`.
unsafe impl<T: Send> Sync for TicketLock<T> {}
// SAFETY: moving the lock moves the `T` it owns.
unsafe impl<T: Send> Send for TicketLock<T> {}

impl<T> TicketLock<T> {
    pub const fn new(data: T) -> Self {
        TicketLock { next_ticket: AtomicU32::new(0), now_serving: AtomicU32::new(0), data: UnsafeCell::new(data) }
    }

    /// Takes a ticket and spins until it is served (SeKVM `wait_lock`).
    #[inline]
    pub fn lock(&self) -> TicketGuard<'_, T> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        while self.now_serving.load(Ordering::Acquire) != ticket {
            relax();
        }
        TicketGuard { lock: self }
    }

    /// The lock only if nobody holds or waits for it.
    pub fn try_lock(&self) -> Option<TicketGuard<'_, T>> {
        let serving = self.now_serving.load(Ordering::Acquire);
        self.next_ticket
            .compare_exchange(serving, serving.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| TicketGuard { lock: self })
    }
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
        let lock = Arc::new(TicketLock::new(0u64));
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
        let lock = TicketLock::new(());
        let guard = lock.lock();
        assert!(lock.try_lock().is_none());
        drop(guard);
        assert!(lock.try_lock().is_some());
    }
}

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

/// Where a lock sits in KCore's lock order: a core holding a lock of rank `r` takes only locks of
/// a higher rank. Each variant names the SeKVM lock (`acquire_lock_*`, sekvm-kcore.md layer 4) it
/// stands for. The order is the derived one: every `Vm` lock by vmid, then the rest as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockRank {
    /// VM `vmid`'s record with its stage-2 table (one of `vm::Kcore`'s per-VM locks): SeKVM's
    /// `vm(vmid)` with `pt(vmid)`. A VM call takes its VM's alone; a core that holds several
    /// (the invariant checker and the power-down, `Kcore::lock_all`) takes them by ascending vmid.
    Vm(u16),
    /// Which vmids are taken and the index of listed image pages (`vm::Kcore::core`): SeKVM's
    /// `core`. Taken under a VM's lock (REGISTER_VM, REMAP_VM_IMAGE, BOOT_DATA, DESTROY_VM).
    Core,
    /// The ownership records with the host's stage-2 table (`vm::Kcore::mem`, the whole
    /// `memory::HostMemory`): SeKVM's `s2page` with `pt(0)` under it.
    S2Page,
    /// The SMMU's command queue, and its event queue (two locks of this rank, never nested):
    /// SeKVM's `smmu` lock. Taken under the ownership lock (a page leaving a device's table is
    /// invalidated in the SMMU while the ownership change is under way) or alone (the event
    /// drain when the host enters KCore).
    Smmu,
    /// The console's UART: no SeKVM counterpart (its prints are unverified); logging is allowed
    /// under any lock, so it is last.
    Console,
}

impl LockRank {
    /// Its bit in a core's record of held ranks: vmid `v`'s lock is bit `v` (1..=`MAX_VMS`; VM
    /// ids start at 1), the others follow in order. Bits rise with the order.
    const fn bit(self) -> u32 {
        let vms = crate::ids::MAX_VMS as u32;
        match self {
            LockRank::Vm(vmid) => vmid as u32,
            LockRank::Core => vms + 1,
            LockRank::S2Page => vms + 2,
            LockRank::Smmu => vms + 3,
            LockRank::Console => vms + 4,
        }
    }

    /// The rank of bit `bit` (the inverse of [`LockRank::bit`]).
    fn of_bit(bit: u32) -> LockRank {
        let vms = crate::ids::MAX_VMS as u32;
        match bit.saturating_sub(vms) {
            0 => LockRank::Vm(bit as u16),
            1 => LockRank::Core,
            2 => LockRank::S2Page,
            3 => LockRank::Smmu,
            _ => LockRank::Console,
        }
    }
}

// Every rank has a bit of the 64-bit record.
const _: () = assert!(LockRank::Console.bit() < u64::BITS);

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

    /// Takes a ticket and waits until it is served (SeKVM `wait_lock`). Halts, in builds that
    /// check the order, if this core holds a lock of this rank or above.
    #[inline]
    pub fn lock(&self) -> TicketGuard<'_, T> {
        if ORDER_CHECKED {
            held::check_order(self.rank);
        }
        #[cfg(test)]
        turns::point();
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        if self.now_serving.load(Ordering::Acquire) != ticket {
            wait_to_be_served(&self.now_serving, ticket);
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

/// Waits until `now_serving` reaches `ticket`, out of the uncontended path. On the machine the
/// core sleeps in `wfe` ([`cpu::wait_until_equals`](super::cpu::wait_until_equals)) and retires a
/// few instructions per wake-up, however long the holders ahead of it take; the holder's release
/// store in [`TicketGuard::drop`] wakes it through the exclusive monitor, with no `sev`.
#[cfg(target_os = "none")]
fn wait_to_be_served(now_serving: &AtomicU32, ticket: u32) {
    super::cpu::wait_until_equals(now_serving, ticket);
}

/// The host's portable wait: spins with the CPU's hint, and in tests gives a drawn schedule its
/// turn on every spin ([`turns`]).
#[cfg(not(target_os = "none"))]
fn wait_to_be_served(now_serving: &AtomicU32, ticket: u32) {
    while now_serving.load(Ordering::Acquire) != ticket {
        #[cfg(test)]
        turns::waiting();
        core::hint::spin_loop();
    }
}

impl<T> TicketLock<T> {
    /// The data, without locking: the caller owns the lock outright (no other core can see it).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// Host tests only: the hooks by which a test that runs its threads by turns (a drawn schedule,
/// `vm::concurrency`) gets control at every lock. Taking a lock is a point where another core
/// could overtake this one; a thread spinning on a lock that a descheduled thread holds must give
/// its turn away, or the one-at-a-time schedule would spin for ever.
#[cfg(test)]
pub mod turns {
    use std::cell::RefCell;
    use std::rc::Rc;

    std::thread_local! {
        static HOOKS: RefCell<Option<Rc<Hooks>>> = const { RefCell::new(None) };
    }

    /// What this thread does at a lock: at `point` before taking a ticket, at `waiting` on every
    /// spin.
    pub struct Hooks {
        pub point: Box<dyn Fn()>,
        pub waiting: Box<dyn Fn()>,
    }

    /// Sets (or with `None` clears) this thread's hooks.
    pub fn set(hooks: Option<Hooks>) {
        HOOKS.with(|h| *h.borrow_mut() = hooks.map(Rc::new));
    }

    fn call(f: impl Fn(&Hooks)) {
        if let Some(hooks) = HOOKS.with(|h| h.borrow().clone()) {
            f(&hooks);
        }
    }

    pub(super) fn point() {
        call(|h| (h.point)());
    }

    pub(super) fn waiting() {
        call(|h| (h.waiting)());
    }
}

/// The ranks each core holds, one bit per rank. Guards never move between cores: a lock is
/// taken and released within one trap.
mod held {
    use super::LockRank;

    /// Halts if this core holds a lock of rank `rank` or above.
    pub(super) fn check_order(rank: LockRank) {
        let above = get() >> rank.bit();
        if above != 0 {
            let highest = u64::BITS - 1 - (above << rank.bit()).leading_zeros();
            panic!(
                "lock order violated: taking the {rank:?} lock while holding the {:?} lock",
                LockRank::of_bit(highest)
            );
        }
    }

    /// Notes that this core took (`true`) or released rank `rank`.
    pub(super) fn record(rank: LockRank, taken: bool) {
        let bit = 1u64 << rank.bit();
        set(if taken { get() | bit } else { get() & !bit });
    }

    #[cfg(test)]
    std::thread_local! {
        /// On the host a thread stands for a core.
        static HELD: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
    }

    #[cfg(test)]
    fn get() -> u64 {
        HELD.with(|h| h.get())
    }

    #[cfg(test)]
    fn set(ranks: u64) {
        HELD.with(|h| h.set(ranks));
    }

    /// Only a core writes its own entry: plain loads and stores, no exclusives.
    #[cfg(target_os = "none")]
    static HELD: [core::sync::atomic::AtomicU64; crate::machine::MAX_CPUS] =
        [const { core::sync::atomic::AtomicU64::new(0) }; crate::machine::MAX_CPUS];

    #[cfg(target_os = "none")]
    fn get() -> u64 {
        HELD.get(crate::machine::cpu::index()).map_or(0, |h| h.load(core::sync::atomic::Ordering::Relaxed))
    }

    #[cfg(target_os = "none")]
    fn set(ranks: u64) {
        if let Some(h) = HELD.get(crate::machine::cpu::index()) {
            h.store(ranks, core::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A host build outside tests (clippy) has no cores to record.
    #[cfg(not(any(test, target_os = "none")))]
    fn get() -> u64 {
        0
    }

    #[cfg(not(any(test, target_os = "none")))]
    fn set(_ranks: u64) {}
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
        // ticket (no exclusive pair needed). The store clears the exclusive monitor that every
        // waiter armed on `now_serving`, which wakes them from `wfe`: no `sev` needed.
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
        let lock = Arc::new(TicketLock::new(LockRank::S2Page, 0u64));
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
        let lock = TicketLock::new(LockRank::S2Page, ());
        let guard = lock.lock();
        assert!(lock.try_lock().is_none());
        drop(guard);
        assert!(lock.try_lock().is_some());
    }

    /// Two VMs' locks by ascending vmid, then `core`, the ownership lock and the console is the
    /// documented order (`Kcore::lock_all`'s).
    #[test]
    fn locks_taken_in_rank_order_pass() {
        let (vm1, vm16) =
            (TicketLock::new(LockRank::Vm(1), ()), TicketLock::new(LockRank::Vm(crate::ids::MAX_VMS), ()));
        let (core, s2page) = (TicketLock::new(LockRank::Core, ()), TicketLock::new(LockRank::S2Page, ()));
        let console = TicketLock::new(LockRank::Console, ());
        let held = (vm1.lock(), vm16.lock(), core.lock(), s2page.lock());
        drop(console.lock());
        drop(held);
        // Released: any may be taken alone again.
        drop(console.lock());
        drop(s2page.lock());
        drop(vm16.lock());
        drop(vm1.lock());
    }

    /// A VM's lock taken under the ownership lock inverts the order: the core halts, naming
    /// both locks (the highest one held).
    #[test]
    #[should_panic(expected = "taking the Vm(1) lock while holding the S2Page lock")]
    fn an_inverted_lock_order_halts() {
        let (vm1, s2page) = (TicketLock::new(LockRank::Vm(1), ()), TicketLock::new(LockRank::S2Page, ()));
        let _s2page = s2page.lock();
        let _vm1 = vm1.lock();
    }

    /// Two VMs' locks by descending vmid: a core doing this could wait for a core that takes
    /// them in order (`lock_all`), so it halts.
    #[test]
    #[should_panic(expected = "taking the Vm(2) lock while holding the Vm(3) lock")]
    fn vm_locks_out_of_vmid_order_halt() {
        let (vm2, vm3) = (TicketLock::new(LockRank::Vm(2), ()), TicketLock::new(LockRank::Vm(3), ()));
        let _vm3 = vm3.lock();
        let _vm2 = vm2.lock();
    }

    /// `core` under the ownership lock is out of order too.
    #[test]
    #[should_panic(expected = "taking the Core lock while holding the S2Page lock")]
    fn core_under_the_ownership_lock_halts() {
        let (core, s2page) = (TicketLock::new(LockRank::Core, ()), TicketLock::new(LockRank::S2Page, ()));
        let _s2page = s2page.lock();
        let _core = core.lock();
    }

    /// Taking a lock twice on one core (it would spin for ever) is an order violation too.
    #[test]
    #[should_panic(expected = "taking the S2Page lock while holding the S2Page lock")]
    fn a_lock_taken_twice_on_one_core_halts() {
        let lock = TicketLock::new(LockRank::S2Page, ());
        let _first = lock.lock();
        let _second = lock.lock();
    }
}

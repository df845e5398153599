//! The virtual-interrupt layer's executable spec, from the GIC architecture (Arm IHI 0069,
//! ICH_LR<n>_EL2, ICH_ELRSR_EL2, ICH_HCR_EL2.UIE, ICH_MISR_EL2.U) and issue 13, not from the
//! code: a vCPU's interrupts are a set of pending INTIDs (each once, with its priority) and a set
//! of active ones; some of them sit in list registers, an INTID in at most one, every INTID in
//! an LR pending or active. Each operation returns the new state, or `None` where the state it
//! is given breaks those rules (KCore would halt).

use super::{Virq, MAX_LRS, QUEUE_LEN};
use std::collections::{BTreeMap, BTreeSet};

/// A vCPU's virtual interrupts, abstractly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vgic {
    /// Pending INTIDs and their priorities.
    pub pending: BTreeMap<u16, u8>,
    /// Active INTIDs (acknowledged by the guest, not yet ended) and the priority they run at.
    pub active: BTreeMap<u16, u8>,
    /// Which INTID each list register holds (`None`: empty).
    pub lrs: [Option<u16>; MAX_LRS],
    /// The underflow maintenance interrupt is asked for.
    pub uie: bool,
}

impl Vgic {
    fn in_lr(&self, intid: u16) -> bool {
        self.lrs.contains(&Some(intid))
    }

    /// Pending INTIDs that no LR holds yet.
    pub fn waiting(&self) -> Vec<(u8, u16)> {
        let mut w: Vec<_> = self.pending.iter().filter(|(i, _)| !self.in_lr(**i)).map(|(i, p)| (*p, *i)).collect();
        w.sort();
        w
    }

    /// The layer's invariant: every LR holds a pending or active INTID, no INTID is in two LRs,
    /// every active INTID is in an LR (the guest can only have acknowledged it there).
    pub fn well_formed(&self) -> bool {
        let held: Vec<u16> = self.lrs.iter().flatten().copied().collect();
        let distinct: BTreeSet<u16> = held.iter().copied().collect();
        distinct.len() == held.len()
            && held.iter().all(|i| self.pending.contains_key(i) || self.active.contains_key(i))
            && self.active.keys().all(|i| self.in_lr(*i))
    }
}

fn checked(s: Vgic) -> Option<Vgic> {
    s.well_formed().then_some(s)
}

/// Whether an injection into `s` may be refused: only when [`QUEUE_LEN`] INTIDs already wait.
pub fn may_refuse(s: &Vgic) -> bool {
    s.waiting().len() >= QUEUE_LEN
}

/// The host injects `virq` (accepted): it is pending; a pending INTID stays pending once (its
/// priority as it was), and an active one becomes pending at the priority it is active at (an
/// INTID has one list register, hence one priority).
pub fn inject(s: &Vgic, virq: Virq) -> Option<Vgic> {
    let mut s = s.clone();
    let intid = virq.intid.raw();
    let priority = s.active.get(&intid).copied().unwrap_or(virq.priority);
    s.pending.entry(intid).or_insert(priority);
    checked(s)
}

/// Entry: the free LRs among the first `lr_count`, in order, take the waiting INTIDs from the
/// highest priority (lowest value; then the lowest INTID); UIE is asked for iff some still wait.
pub fn fill(s: &Vgic, lr_count: usize) -> Option<Vgic> {
    let mut s = checked(s.clone())?;
    let mut waiting = s.waiting().into_iter();
    for lr in s.lrs.iter_mut().take(lr_count) {
        if lr.is_none() {
            match waiting.next() {
                Some((_, intid)) => *lr = Some(intid),
                None => break,
            }
        }
    }
    s.uie = !s.waiting().is_empty();
    Some(s)
}

/// The guest acknowledges the interrupt in LR `n` (ICC_IAR1 returns it): pending becomes active.
/// Only a pending, not active, INTID can be acknowledged.
pub fn ack(s: &Vgic, n: usize) -> Option<Vgic> {
    let mut s = s.clone();
    let intid = s.lrs[n]?;
    if s.active.contains_key(&intid) {
        return None;
    }
    let priority = s.pending.remove(&intid)?;
    s.active.insert(intid, priority);
    checked(s)
}

/// The guest ends the interrupt in LR `n` (ICC_EOIR1): it is no longer active; the LR empties
/// unless the INTID is pending again.
pub fn eoi(s: &Vgic, n: usize) -> Option<Vgic> {
    let mut s = s.clone();
    let intid = s.lrs[n]?;
    s.active.remove(&intid)?;
    if !s.pending.contains_key(&intid) {
        s.lrs[n] = None;
    }
    checked(s)
}

/// Exit: reclaiming the empty LRs changes nothing a guest or the host could observe: no INTID is
/// lost, none appears.
pub fn reclaim(s: &Vgic) -> Option<Vgic> {
    checked(s.clone())
}

//! The virtual-interrupt layer refines its spec: random injections, fills, guest
//! acknowledgements and EOIs (the hardware's changes of LR state) and reclaims, each checked
//! against `spec` through the abstraction [`abstraction`].

use super::spec::{self, Vgic};
use super::*;
use crate::mutation::{self, Mutation};
use proptest::prelude::*;

/// What a vCPU's virtual interrupts are, abstractly: the queue and the pending LRs are pending,
/// the active LRs active; an LR holds an INTID unless it is empty.
pub fn abstraction(s: &VgicState) -> Vgic {
    let mut a = Vgic { uie: s.hcr & hcr::UIE != 0, ..Vgic::default() };
    for q in s.queued() {
        a.pending.insert(q.intid.raw(), q.priority);
    }
    for (n, lr) in s.lrs.iter().enumerate() {
        if lr.state.pending() {
            a.pending.insert(lr.intid, lr.priority);
        }
        if lr.state.active() {
            a.active.insert(lr.intid, lr.priority);
        }
        if lr.state != LrState::Invalid {
            a.lrs[n] = Some(lr.intid);
        }
    }
    a
}

#[derive(Clone, Debug)]
enum Op {
    Inject(u16, u8),
    Fill(usize),
    Ack(usize),
    Eoi(usize),
    /// The vCPU exits: the ELRSR shows the empty LRs, and KCore reclaims them.
    Exit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u16..40, prop::sample::select(vec![0u8, 0x80, 0xa0, 0xa0, 0xf0])).prop_map(|(i, p)| Op::Inject(i, p)),
        2 => (1usize..=MAX_LRS).prop_map(Op::Fill),
        2 => (0..MAX_LRS).prop_map(Op::Ack),
        2 => (0..MAX_LRS).prop_map(Op::Eoi),
        2 => Just(Op::Exit),
    ]
}

/// The ELRSR the hardware shows for these LRs: a bit per empty one.
fn elrsr(s: &VgicState) -> u64 {
    s.lrs.iter().enumerate().filter(|(_, lr)| lr.state == LrState::Invalid).map(|(n, _)| 1 << n).sum()
}

fn refines(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut s = VgicState::default();
    let mut a = Vgic::default();
    for op in ops {
        let next = match op {
            Op::Inject(intid, priority) => {
                let virq = Virq { intid: Intid::new(intid.into()).unwrap(), priority };
                match s.inject(virq) {
                    Ok(()) => spec::inject(&a, virq),
                    Err(QueueFull) => {
                        prop_assert!(spec::may_refuse(&a), "refused with room in the queue");
                        Some(a.clone())
                    }
                }
            }
            Op::Fill(lr_count) => {
                s.fill(lr_count);
                spec::fill(&a, lr_count)
            }
            Op::Ack(n) => {
                if s.lrs[n].state != LrState::Pending {
                    continue;
                }
                s.lrs[n].state = LrState::Active;
                spec::ack(&a, n)
            }
            Op::Eoi(n) => {
                let lr = &mut s.lrs[n];
                lr.state = match lr.state {
                    LrState::Active => LrState::Invalid,
                    LrState::PendingActive => LrState::Pending,
                    _ => continue,
                };
                spec::eoi(&a, n)
            }
            Op::Exit => {
                s.reclaim(elrsr(&s));
                spec::reclaim(&a)
            }
        };
        prop_assert!(next.is_some(), "the spec halts on {op:?} from {a:?}");
        a = next.unwrap();
        prop_assert_eq!(abstraction(&s), a.clone(), "after {:?}", op);
    }
    Ok(())
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..120)
}

proptest! {
    #[test]
    fn the_vgic_refines_its_spec(ops in ops()) {
        refines(ops)?;
    }
}

#[test]
fn the_vgic_property_catches_a_reclaim_that_loses_a_pending_interrupt() {
    mutation::catches(Mutation::VgicReclaimFreesPending, 256, ops(), refines);
}

/// A loaded virtual interface, as the hardware keeps it while the guest runs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelLrs([ListReg; MAX_LRS]);

impl LoadedLrs for ModelLrs {
    fn elrsr(&self) -> u64 {
        self.0.iter().enumerate().filter(|(_, lr)| lr.state == LrState::Invalid).map(|(n, _)| 1 << n).sum()
    }
    fn read(&self, n: usize) -> ListReg {
        self.0[n]
    }
    fn write(&mut self, n: usize, lr: ListReg) {
        self.0[n] = lr;
    }
}

/// The full path's way to make `virq` pending while the vCPU runs (`vcpu::world_switch`'s
/// `save_vgic`, `inject`, `load_vgic`): save the loaded LRs, reclaim, inject, fill, load.
fn inject_saved(s: &mut VgicState, hw: &mut ModelLrs, lr_count: usize, virq: Virq) -> Result<(), QueueFull> {
    let elrsr = hw.elrsr();
    s.lrs[..lr_count].copy_from_slice(&hw.0[..lr_count]);
    s.reclaim(elrsr);
    let injected = s.inject(virq);
    s.fill(lr_count);
    hw.0[..lr_count].copy_from_slice(&s.lrs[..lr_count]);
    injected
}

/// A vCPU running with its interface loaded: host injections, a fill of `lr_count` LRs on
/// entry, then the guest acknowledging and ending some (the hardware's LR state changes).
/// Host injections (INTID, priority), the LRs loaded, the guest's changes (acknowledge or end,
/// LR).
type RunningVcpu = (Vec<(u16, u8)>, usize, Vec<(bool, usize)>);

fn running_vcpu() -> impl Strategy<Value = RunningVcpu> {
    let intid = prop::sample::select(vec![27u16, 27, 3, 30, 40, 41, 42, 43, 44]);
    let injections = prop::collection::vec((intid, prop::sample::select(vec![0x80u8, 0xa0, 0xf0])), 0..7);
    let guest = prop::collection::vec((any::<bool>(), 0..MAX_LRS), 0..6);
    (injections, 1..=MAX_LRS, guest)
}

/// The IRQ fast path's timer delivery (`inject_loaded`) has exactly the effect of the full
/// path's (save, reclaim, inject, fill, load) whenever it serves, on the loaded LRs and on what
/// KCore keeps once the vCPU exits; when it declines it has changed nothing.
fn fast_timer_delivery_agrees((injections, lr_count, guest): RunningVcpu) -> Result<(), TestCaseError> {
    let mut s = VgicState::default();
    for (intid, priority) in injections {
        let _ = s.inject(Virq { intid: Intid::new(intid.into()).unwrap(), priority });
    }
    s.hcr |= hcr::EN;
    s.fill(lr_count);
    let mut hw = ModelLrs(s.lrs);
    for (ack, n) in guest {
        let lr = &mut hw.0[n];
        lr.state = match (ack, lr.state) {
            (true, LrState::Pending) => LrState::Active,
            (false, LrState::Active) => LrState::Invalid,
            (false, LrState::PendingActive) => LrState::Pending,
            (_, state) => state,
        };
    }
    let timer = Virq { intid: Intid::VTIMER, priority: VTIMER_PRIORITY };
    let (mut fast, mut fast_hw) = (s.clone(), hw.clone());
    if !fast.inject_loaded(timer, lr_count, &mut fast_hw) {
        prop_assert_eq!(&fast, &s, "declined but changed KCore's state");
        prop_assert_eq!(&fast_hw, &hw, "declined but changed the LRs");
        let room = hw.elrsr() & ((1 << lr_count) - 1) != 0
            || hw.0.iter().any(|lr| lr.intid == 27 && lr.state != LrState::Invalid);
        prop_assert!(s.queued().next().is_some() || !room, "declined with an empty queue and room");
        return Ok(());
    }
    let (mut full, mut full_hw) = (s, hw);
    prop_assert!(inject_saved(&mut full, &mut full_hw, lr_count, timer).is_ok());
    // An empty LR holds nothing, whatever its other fields say.
    let held = |hw: &ModelLrs| hw.0.map(|lr| if lr.state == LrState::Invalid { ListReg::default() } else { lr });
    prop_assert_eq!(held(&fast_hw), held(&full_hw), "the loaded LRs differ");
    // The exit saves and reclaims the loaded LRs: KCore keeps the same state either way.
    for (s, hw) in [(&mut fast, &fast_hw), (&mut full, &full_hw)] {
        s.lrs[..lr_count].copy_from_slice(&hw.0[..lr_count]);
        s.reclaim(hw.elrsr());
    }
    prop_assert_eq!(fast, full);
    Ok(())
}

proptest! {
    #[test]
    fn the_fast_timer_delivery_agrees_with_the_full_path(case in running_vcpu()) {
        fast_timer_delivery_agrees(case)?;
    }
}

#[test]
fn the_fast_delivery_property_catches_an_overwritten_list_register() {
    mutation::catches(Mutation::VgicInjectLoadedOverwritesLr0, 256, running_vcpu(), fast_timer_delivery_agrees);
}

#[test]
fn a_second_injection_does_not_duplicate_and_the_queue_is_bounded() {
    let mut s = VgicState::default();
    let virq = |i: u64| Virq { intid: Intid::new(i).unwrap(), priority: 0xa0 };
    assert!(!s.enabled());
    s.inject(virq(40)).unwrap();
    s.inject(virq(40)).unwrap();
    assert!(s.enabled());
    assert_eq!(s.queued().count(), 1);
    for i in 0..QUEUE_LEN as u64 - 1 {
        s.inject(virq(100 + i)).unwrap();
    }
    assert_eq!(s.inject(virq(99)), Err(QueueFull));
    // Four go into the LRs, the rest wait and ask for the underflow interrupt.
    s.fill(MAX_LRS);
    assert!(s.lrs.iter().all(|lr| lr.state == LrState::Pending));
    assert_eq!(s.hcr & hcr::UIE, hcr::UIE);
    s.inject(virq(99)).unwrap();
}

#[test]
fn fill_takes_the_highest_priority_first() {
    let mut s = VgicState::default();
    for (i, p) in [(33, 0xa0), (34, 0x10), (35, 0xf0), (36, 0x10), (37, 0x80)] {
        s.inject(Virq { intid: Intid::new(i).unwrap(), priority: p }).unwrap();
    }
    s.fill(2);
    assert_eq!([s.lrs[0].intid, s.lrs[1].intid], [34, 36]);
    assert_eq!(s.lrs[2].state, LrState::Invalid, "only lr_count LRs are used");
}

#[test]
fn list_registers_round_trip_and_never_carry_the_hw_bit() {
    for state in [LrState::Invalid, LrState::Pending, LrState::Active, LrState::PendingActive] {
        let lr = ListReg { intid: 1019, state, priority: 0xa8 };
        assert_eq!(ListReg::from_v3(lr.v3()), lr);
        assert_eq!(ListReg::from_v2(lr.v2()), lr);
        assert_eq!(lr.v3() >> 61 & 1, 0, "HW");
        assert_eq!(lr.v3() >> 60 & 1, 1, "group 1");
        assert_eq!(lr.v3() >> 32 & 0x3ff, 0, "no physical INTID");
        assert_eq!(lr.v2() >> 30, 0, "group 0, not HW");
        assert_eq!(lr.v2() >> 10 & 0x3ff, 0, "no physical INTID or CPU");
    }
    assert_eq!(Intid::new(1019).map(Intid::raw), Some(1019));
    assert_eq!(Intid::new(1020), None);
}

#[test]
fn the_virtual_timer_fires_only_enabled_unmasked_and_met() {
    assert!(vtimer_firing(0b101));
    assert!(!vtimer_firing(0b111), "masked");
    assert!(!vtimer_firing(0b100), "disabled");
    assert!(!vtimer_firing(0b001), "not met");
}

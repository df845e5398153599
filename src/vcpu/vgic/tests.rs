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

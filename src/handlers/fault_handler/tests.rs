//! The redistributor filter against a spec written from the GIC architecture and issue 11: the
//! host may do anything to a redistributor's control page except point the GIC at memory.

use super::*;
use crate::mutation::{catches, Mutation};
use core::cell::RefCell;
use proptest::prelude::*;

/// A data abort from EL1 with a valid syndrome.
fn dabt(size_log2: u8, reg: u8, write: bool, wide: bool) -> u64 {
    u64::from(ec::DABT_LOW) << 26
        | 1 << 25
        | 1 << 24
        | u64::from(size_log2) << 22
        | u64::from(reg) << 16
        | u64::from(wide) << 15
        | u64::from(write) << 6
}

/// The spec of one host access to a redistributor control page (`page`, its 4 KiB of registers as
/// bytes, little-endian): a load reads the registers; a store writes them, except that no byte of
/// GICR_PROPBASER or GICR_PENDBASER (0x70..0x80) ever changes, and GICR_CTLR.EnableLPIs (bit 0
/// of byte 0) is always written as 0. Returns the value loaded (0 for a store).
fn gicr_access_spec(page: &mut [u8; 4096], offset: u64, size_log2: u8, store: Option<u64>) -> u64 {
    let bytes = offset as usize..offset as usize + (1 << size_log2);
    match store {
        None => bytes.rev().fold(0u64, |acc, b| acc << 8 | u64::from(page[b])),
        Some(value) => {
            for (i, b) in bytes.enumerate() {
                let byte = (value >> (8 * i)) as u8;
                match b {
                    0x70..0x80 => {}
                    0 => page[0] = byte & !1,
                    _ => page[b] = byte,
                }
            }
            0
        }
    }
}

/// A fake redistributor page behind the accessors `emulate_gicr_access` uses.
struct Device(RefCell<[u8; 4096]>);

impl Device {
    fn read(&self, pa: u64, size_log2: u8) -> u64 {
        let page = self.0.borrow();
        (0..1usize << size_log2).rev().fold(0, |acc, i| acc << 8 | u64::from(page[(pa & 0xfff) as usize + i]))
    }
    fn write(&self, pa: u64, size_log2: u8, value: u64) {
        let mut page = self.0.borrow_mut();
        for i in 0..1usize << size_log2 {
            page[(pa & 0xfff) as usize + i] = (value >> (8 * i)) as u8;
        }
    }
}

#[derive(Clone, Debug)]
struct Access {
    offset: u64,
    size_log2: u8,
    store: Option<u64>,
}

fn any_access() -> impl Strategy<Value = Access> {
    let offset = prop_oneof![3 => 0u64..0x100, 1 => 0u64..0x1000];
    (offset, 0u8..4, proptest::option::of(any::<u64>())).prop_map(|(offset, size_log2, store)| Access {
        offset: offset & !((1 << size_log2) - 1),
        size_log2,
        store,
    })
}

/// The filter refines the spec: over random host loads and stores (through the syndrome, as
/// the hardware reports them) the device and the host's registers end as the spec says.
fn filter_refines_spec(initial: [u8; 4096], accesses: &[Access]) -> Result<(), TestCaseError> {
    let mut spec_page = initial;
    spec_page[0] &= !1;
    let device = Device(RefCell::new(spec_page));
    const FRAME: u64 = 0x080A_0000;
    for a in accesses {
        let mut frame = TrapFrame { elr: 0x4400_0000, ..TrapFrame::default() };
        frame.x[3] = a.store.unwrap_or(0);
        let esr = dabt(a.size_log2, 3, a.store.is_some(), true);
        let decided = emulate_gicr_access(
            &mut frame,
            esr,
            FRAME + a.offset,
            |p, s| device.read(p, s),
            |p, s, v| device.write(p, s, v),
        );
        prop_assert!(decided.is_ok(), "{:?}: {:?}", a, decided);
        let mask = if a.size_log2 == 3 { u64::MAX } else { (1 << (8 << a.size_log2)) - 1 };
        let loaded = gicr_access_spec(&mut spec_page, a.offset, a.size_log2, a.store.map(|v| v & mask));
        prop_assert_eq!(frame.elr, 0x4400_0004, "the host resumes after the access");
        if a.store.is_none() {
            prop_assert_eq!(frame.x[3], loaded, "{:?}", a);
        }
        prop_assert!(device.0.borrow().iter().eq(spec_page.iter()), "after {:?}", a);
    }
    Ok(())
}

fn filter_inputs() -> impl Strategy<Value = ([u8; 4096], Vec<Access>)> {
    let page = proptest::collection::vec(any::<u8>(), 4096).prop_map(|v| <[u8; 4096]>::try_from(v).unwrap());
    (page, proptest::collection::vec(any_access(), 1..60))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_redistributor_filter_refines_its_spec((page, accesses) in filter_inputs()) {
        filter_refines_spec(page, &accesses)?;
    }
}

#[test]
fn the_spec_catches_a_filter_that_lets_propbaser_through() {
    catches(Mutation::GicrFilterPassesPropbaser, 256, filter_inputs(), |(page, accesses)| {
        filter_refines_spec(page, &accesses)
    });
}

#[test]
fn decisions_for_the_registers_the_issue_names() {
    use GicrDecision::*;
    assert_eq!(gicr_decision(GICR_PROPBASER, true, 3, 0x4008_0000), Ignore);
    assert_eq!(gicr_decision(GICR_PENDBASER, true, 3, 0x4008_0000), Ignore);
    assert_eq!(gicr_decision(GICR_PROPBASER + 4, true, 2, 0x1), Ignore, "the high half too");
    assert_eq!(gicr_decision(GICR_PROPBASER, false, 3, 0), Pass, "reads pass");
    assert_eq!(gicr_decision(GICR_CTLR, true, 2, 0x7), Mask(0x6));
    assert_eq!(gicr_decision(GICR_CTLR, true, 3, 0x1), Mask(0));
    assert_eq!(gicr_decision(GICR_CTLR, true, 2, 0x6), Pass);
    assert_eq!(gicr_decision(GICR_WAKER, true, 2, 0), Pass);
    // The same offsets in any 64 KiB frame: a GICv4 VLPI frame's VPENDBASER too.
    let mut frame = TrapFrame::default();
    let vpendbaser = 0x080A_0000 + 0x2_0000 + GICR_PENDBASER;
    let never_write = |_, _, _| panic!("VPENDBASER written");
    let stored = emulate_gicr_access(&mut frame, dabt(3, 1, true, true), vpendbaser, |_, _| 0, never_write);
    assert_eq!(stored, Ok(Ignore));
}

#[test]
fn accesses_without_a_syndrome_or_misaligned_are_not_performed() {
    let mut frame = TrapFrame::default();
    let never_read = |_, _| -> u64 { panic!("read") };
    let never_write = |_, _, _| panic!("write");
    let ldp = dabt(3, 1, false, true) & !(1 << 24);
    assert_eq!(
        emulate_gicr_access(&mut frame, ldp, 0x080A_0014, never_read, never_write),
        Err(NotEmulated::NoSyndrome)
    );
    let misaligned = dabt(2, 1, true, false);
    assert_eq!(
        emulate_gicr_access(&mut frame, misaligned, 0x080A_0016, never_read, never_write),
        Err(NotEmulated::Misaligned)
    );
    let instruction = dabt(2, 1, false, false) & !(0x3f << 26) | u64::from(ec::IABT_LOW) << 26;
    assert_eq!(
        emulate_gicr_access(&mut frame, instruction, 0x080A_0000, never_read, never_write),
        Err(NotEmulated::NoSyndrome)
    );
    assert_eq!(frame.elr, 0, "a refused access leaves the host's PC alone");
}

//! Property tests of the page-table layer against a reference map: random map/unmap/split/clear
//! sequences over the model machine, probing translations after every step, with small pools so
//! that exhaustion happens often.

use super::descriptor::{level_size, Attrs, MemType, Regime};
use super::pool::PagePool;
use super::*;
use crate::machine::model::{Flush, ModelMachine};
use proptest::prelude::*;

/// The reference: mapped ranges `(input, size, output, attrs)`, never overlapping.
#[derive(Clone, Debug, Default)]
struct Reference(Vec<(u64, u64, u64, Attrs)>);

impl Reference {
    fn lookup(&self, addr: u64) -> Option<(u64, Attrs)> {
        self.0.iter().find(|r| addr >= r.0 && addr < r.0 + r.1).map(|r| (r.2 + (addr - r.0), r.3))
    }
    fn overlaps(&self, addr: u64, size: u64) -> bool {
        self.0.iter().any(|r| addr < r.0 + r.1 && r.0 < addr + size)
    }
    /// Removes every page of `[addr, addr + size)`, keeping the rest of any range it cut.
    fn remove(&mut self, addr: u64, size: u64) {
        let mut kept = Vec::new();
        for &(input, len, output, attrs) in &self.0 {
            if addr < input + len && input < addr + size {
                if input < addr {
                    kept.push((input, addr - input, output, attrs));
                }
                if addr + size < input + len {
                    kept.push((addr + size, input + len - addr - size, output + (addr + size - input), attrs));
                }
            } else {
                kept.push((input, len, output, attrs));
            }
        }
        self.0 = kept;
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map { addr: u64, pa: u64, level: u8, attrs: Attrs },
    Unmap { addr: u64 },
    Split { addr: u64 },
    ClearPage { addr: u64 },
}

const POOL_BASE: u64 = 0x7000_0000;
/// Inputs come from the first 4 GiB so that operations collide.
const SPAN: u64 = 4 << 30;

fn any_attrs() -> impl Strategy<Value = Attrs> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(device, write, exec)| Attrs {
        mem: if device { MemType::Device } else { MemType::Normal },
        write,
        exec: exec && !device,
    })
}

fn any_addr() -> impl Strategy<Value = u64> {
    // Few distinct 2 MiB regions, so maps, splits and clears hit the same blocks.
    (0u64..4, 0u64..4, 0u64..8, 0u64..512).prop_map(|(g, m, p, o)| g << 30 | m << 21 | p << 12 | o << 3)
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any_addr(), 0u64..(1 << 27), prop_oneof![1 => Just(1u8), 4 => Just(2u8), 6 => Just(3u8)], any_attrs())
            .prop_map(|(addr, pfn, level, attrs)| {
                let size = level_size(level);
                Op::Map { addr: addr & !(size - 1), pa: (pfn << 12) & !(size - 1), level, attrs }
            }),
        2 => any_addr().prop_map(|addr| Op::Unmap { addr }),
        2 => any_addr().prop_map(|addr| Op::Split { addr }),
        2 => any_addr().prop_map(|addr| Op::ClearPage { addr }),
    ]
}

fn check_translation(
    pt: &PageTable,
    m: &ModelMachine,
    reference: &Reference,
    probes: &[u64],
) -> Result<(), TestCaseError> {
    for &probe in probes {
        let actual = pt.walk(m, probe).map(|l| (l.translate(probe), l.attrs));
        prop_assert_eq!(actual, reference.lookup(probe), "probe {:#x}", probe);
        // The share calls' attribute-free walk answers the same.
        prop_assert_eq!(pt.output_of(m, probe), actual.map(|(pa, _)| pa), "output_of {:#x}", probe);
    }
    // And every leaf the table holds is in the reference, with nothing overlapping.
    let leaves = pt.leaves(m);
    for pair in leaves.windows(2) {
        prop_assert!(pair[0].input + pair[0].size() <= pair[1].input, "overlapping leaves {:?}", pair);
    }
    for l in &leaves {
        prop_assert_eq!(reference.lookup(l.input), Some((l.output, l.attrs)));
        prop_assert_eq!(reference.lookup(l.input + l.size() - 1), Some((l.output + l.size() - 1, l.attrs)));
        prop_assert!(l.input < SPAN);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operations_match_the_reference_map(pool_pages in 2u64..24, ops in proptest::collection::vec(any_op(), 50..80)) {
        let m = ModelMachine::new();
        let mut pt = PageTable::new(&m, Regime::Stage2 { vmid: 0 }, PagePool::new(POOL_BASE, pool_pages)).unwrap();
        let mut reference = Reference::default();
        let mut probes: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Map { addr, pa, level, attrs } => {
                    let size = level_size(level);
                    let result = pt.map(&m, addr, pa, level, attrs);
                    if reference.overlaps(addr, size) {
                        // A leaf covers part of it, or a table hangs where the block would go.
                        prop_assert_eq!(result, Err(PtError::Occupied));
                    } else if result.is_ok() {
                        reference.0.push((addr, size, pa, attrs));
                    } else {
                        // Also refused when an (empty) table hangs at the block's slot.
                        prop_assert!(matches!(result, Err(PtError::PoolExhausted | PtError::Occupied)), "{:?}", result);
                    }
                    probes.extend([addr, addr + size - 8, addr + size / 2]);
                }
                Op::Unmap { addr } => match (pt.unmap(&m, addr), reference.lookup(addr)) {
                    (Ok(leaf), Some(_)) => reference.remove(leaf.input, leaf.size()),
                    (Err(PtError::NotMapped), None) => {}
                    (result, expected) => prop_assert!(false, "unmap {:#x}: {:?} vs {:?}", addr, result, expected),
                },
                Op::Split { addr } => {
                    let before = pt.walk(&m, addr);
                    match pt.split(&m, addr) {
                        Ok(()) => {
                            let after = pt.walk(&m, addr).unwrap();
                            prop_assert_eq!(after.level, before.unwrap().level + 1);
                        }
                        Err(e) => prop_assert!(matches!(e, PtError::NotMapped | PtError::BadRange | PtError::PoolExhausted)),
                    }
                }
                Op::ClearPage { addr } => {
                    let page = addr & !0xfff;
                    match pt.clear_page(&m, addr) {
                        Ok(was_mapped) => {
                            prop_assert_eq!(was_mapped, reference.lookup(page).is_some());
                            reference.remove(page, 4096);
                            prop_assert!(pt.walk(&m, page).is_none());
                        }
                        Err(e) => prop_assert_eq!(e, PtError::PoolExhausted),
                    }
                    probes.extend([page, page.wrapping_sub(8), page + 4096]);
                }
            }
            probes.retain(|&p| p < SPAN);
            check_translation(&pt, &m, &reference, &probes)?;
        }
    }
}

/// Runs `ops` on the table and on its spec side by side; fails on the first step where the
/// results or the abstract states differ (SeKVM's `relate_npt` as an equality check).
fn refines(pool_pages: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    use super::spec::*;
    let m = ModelMachine::new();
    let mut pt = PageTable::new(&m, Regime::Stage2 { vmid: 1 }, PagePool::new(POOL_BASE, pool_pages)).unwrap();
    let mut abs = AbsNpt::of(&pt, &m);
    for op in ops {
        let same = match *op {
            Op::Map { addr, pa, level, attrs } => {
                let (next, expected) = map_spec(&abs, addr, pa, level, attrs).unwrap();
                abs = next;
                pt.map(&m, addr, pa, level, attrs) == expected
            }
            Op::Unmap { addr } => {
                let (next, expected) = unmap_spec(&abs, addr).unwrap();
                abs = next;
                pt.unmap(&m, addr) == expected
            }
            Op::Split { addr } => {
                let (next, expected) = split_spec(&abs, addr).unwrap();
                abs = next;
                pt.split(&m, addr) == expected
            }
            Op::ClearPage { addr } => {
                let (next, expected) = clear_page_spec(&abs, addr).unwrap();
                abs = next;
                pt.clear_page(&m, addr) == expected
            }
        };
        prop_assert!(same, "result differs from the spec at {:?}", op);
        prop_assert_eq!(&AbsNpt::of(&pt, &m), &abs, "state differs from the spec after {:?}", op);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// NPTOps refines its spec: every result and every abstract state agree, step by step.
    #[test]
    fn page_table_operations_refine_their_specs(pool_pages in 2u64..24, ops in proptest::collection::vec(any_op(), 50..80)) {
        refines(pool_pages, &ops)?;
    }
}

/// Companion: with a split that maps its last page one page off, refinement fails.
#[test]
fn refinement_catches_a_split_that_shifts_a_page() {
    use crate::mutation::{with, Mutation};
    let ops =
        [Op::Map { addr: 0x4000_0000, pa: 0x8000_0000, level: 2, attrs: Attrs::RAM }, Op::Split { addr: 0x4000_0000 }];
    assert!(refines(8, &ops).is_ok());
    assert!(with(Mutation::SplitShiftsLastPage, || refines(8, &ops)).is_err());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(256));
    let found = with(Mutation::SplitShiftsLastPage, || {
        runner.run(&(2u64..24, proptest::collection::vec(any_op(), 50..80)), |(pool, ops)| refines(pool, &ops))
    });
    assert!(found.is_err(), "the refinement property did not catch the planted bug");
}

#[test]
fn break_before_make_flushes_the_tlb_by_vmid() {
    let m = ModelMachine::new();
    let mut pt = PageTable::new(&m, Regime::Stage2 { vmid: 7 }, PagePool::new(POOL_BASE, 8)).unwrap();
    pt.map(&m, 0x4000_0000, 0x4000_0000, 2, Attrs::RAM).unwrap();
    assert!(m.take_flushes().is_empty(), "filling an empty slot needs no flush");
    pt.clear_page(&m, 0x4000_3000).unwrap();
    // Split (break the 2 MiB block) and unmap the page: both flush VMID 7 at the right IPA.
    assert_eq!(
        m.take_flushes(),
        vec![Flush::Stage2Ipa { vmid: 7, ipa: 0x4000_0000 }, Flush::Stage2Ipa { vmid: 7, ipa: 0x4000_3000 }]
    );
    assert_eq!(pt.walk(&m, 0x4000_4000).map(|l| (l.output, l.level)), Some((0x4000_4000, 3)));
}

#[test]
fn an_exhausted_pool_refuses_without_changing_the_table() {
    let m = ModelMachine::new();
    // Root only: no page left for the level-2 table a 2 MiB mapping needs.
    let mut pt = PageTable::new(&m, Regime::Stage2 { vmid: 0 }, PagePool::new(POOL_BASE, 1)).unwrap();
    assert_eq!(pt.map(&m, 0x4000_0000, 0x4000_0000, 2, Attrs::RAM), Err(PtError::PoolExhausted));
    assert!(pt.leaves(&m).is_empty());
    pt.map(&m, 0x4000_0000, 0x4000_0000, 1, Attrs::RAM).unwrap();
    assert_eq!(pt.split(&m, 0x4000_0000), Err(PtError::PoolExhausted));
    assert_eq!(pt.leaves(&m).len(), 1);
    assert_eq!(pt.walk(&m, 0x7fff_f000).unwrap().translate(0x7fff_f000), 0x7fff_f000);
}

#[test]
fn misaligned_or_out_of_range_maps_are_refused() {
    let m = ModelMachine::new();
    let mut pt = PageTable::new(&m, Regime::El2, PagePool::new(POOL_BASE, 4)).unwrap();
    assert_eq!(pt.map(&m, 0x1000, 0x1000, 2, Attrs::RAM), Err(PtError::BadRange));
    assert_eq!(pt.map(&m, 0x20_0000, 0x1000, 2, Attrs::RAM), Err(PtError::BadRange));
    assert_eq!(pt.map(&m, 1 << 39, 0, 1, Attrs::RAM), Err(PtError::BadRange));
    assert_eq!(pt.map(&m, 0, 0, 4, Attrs::RAM), Err(PtError::BadRange));
}

#[test]
fn the_boot_identity_map_uses_five_pages_and_splits_ram_from_devices() {
    let m = ModelMachine::new();
    let board = &corevisor_boards::rpi4::BOARD;
    let pt = identity_map(&m, PagePool::new(POOL_BASE, IDENTITY_MAP_PAGES), |pa| board.in_ram_window(pa)).unwrap();
    assert_eq!(pt.root(), POOL_BASE);
    assert_eq!(pt.pool().free(), 0);
    let kcore = pt.walk(&m, 0x8_0000).unwrap();
    assert_eq!((kcore.translate(0x8_0000), kcore.level, kcore.attrs), (0x8_0000, 2, Attrs::RAM));
    let uart = pt.walk(&m, 0xFE20_1000).unwrap();
    assert_eq!((uart.translate(0xFE20_1000), uart.attrs), (0xFE20_1000, Attrs::DEVICE));
    let high = pt.walk(&m, 0x1_2345_6000).unwrap();
    assert_eq!((high.level, high.attrs), (1, Attrs::RAM));
    assert_eq!(pt.walk(&m, 0x40_0000_0000).unwrap().attrs, Attrs::DEVICE);
    assert_eq!(pt.leaves(&m).len(), 4 * 512 + 508);
}

#[test]
fn the_boot_identity_map_needs_all_five_pages() {
    let m = ModelMachine::new();
    let result = identity_map(&m, PagePool::new(POOL_BASE, IDENTITY_MAP_PAGES - 1), |_| true);
    assert_eq!(result.err(), Some(PtError::PoolExhausted));
}

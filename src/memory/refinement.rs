//! Issue 6 properties of the memory layers, each with a companion that plants a known bug:
//! - refinement: every operation's result and the abstract state agree with the spec, step by
//!   step (PageManager, MemManager, FaultHandler, and the page tables under them);
//! - invariants: `host_iso`, `vm_iso`, `host_flatmap`, no page mapped by two VMs, and
//!   scrubbed-before-reuse, after every step of random sequences by every principal; and
//!   `host_iso` and `vm_iso` through every core's TLB (issue 14): no translation any core cached
//!   for the host or a VM reaches a page that principal may not access; and `smmu_iso` (issue
//!   15) in the host's SMMU table and through the SMMU's TLB: no translation a device of the
//!   host's can use reaches a page the host does not own;
//! - coherent hand-over: every page that changes owner (per the spec) reads the same through
//!   DRAM as through the caches afterwards (issue 11, finding 3), and a page whose last share
//!   the host loses keeps no line the host allocated (issue 12: cleaned only when the host's
//!   stage-2 mapped it).

use super::invariants::check;
use super::pages::Owner;
use super::spec::last_share_owes_clean;
use super::system::{
    any_op, coherent, handed_over, host_lines_left, initial_rdata, last_share_taken, relate, spec_apply, Op, Outcome,
    System,
};
use crate::machine::{Machine, PAGE_SIZE};
use crate::mutation::Mutation;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const CASES: u32 = 256;

fn sequences() -> impl Strategy<Value = (bool, Vec<Op>)> {
    (any::<bool>(), proptest::collection::vec(any_op(), 50..80))
}

/// Runs `ops` on the system and the spec together, relating them after every step.
fn refines(pages_only: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut sys = System::new(pages_only);
    let mut r = initial_rdata(pages_only);
    let mut probes: BTreeSet<u64> = BTreeSet::new();
    for op in ops {
        let (next, expected) = spec_apply(&r, op).expect("no operation here has a caller precondition");
        let actual = sys.apply(op);
        prop_assert_eq!(actual, expected, "result of {:?}", op);
        for pfn in handed_over(&r, &next) {
            prop_assert!(
                coherent(&sys.m, pfn),
                "page {:#x} changed hands with DRAM behind the caches after {:?}",
                pfn,
                op
            );
        }
        let cleaned = sys.m.take_cleaned();
        for pfn in last_share_taken(&r, &next) {
            let page = pfn << 12..(pfn + 1) << 12;
            let was_cleaned = cleaned.iter().any(|(range, _)| range.start < page.end && page.start < range.end);
            prop_assert_eq!(
                was_cleaned,
                last_share_owes_clean(&r, pfn << 12),
                "page {:#x}: cleaned on the last unshare against the rule after {:?}",
                pfn,
                op
            );
            prop_assert!(
                !host_lines_left(&sys.m, pfn),
                "page {:#x}: the host lost its last share with its lines left in the cache after {:?}",
                pfn,
                op
            );
        }
        r = next;
        probes.extend(op.pfns());
        if let Err(e) = relate(&sys, &r, &probes) {
            return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
        }
    }
    Ok(())
}

/// Every invariant after every step; scrubbed-before-reuse on every page a VM gives back.
fn invariants_hold(pages_only: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut sys = System::new(pages_only);
    for op in ops {
        let before = op.pfns().first().and_then(|&pfn| sys.mem.db.get(pfn << 12));
        let outcome = sys.apply(op);
        if let (Op::Clear { pfn, .. }, Outcome::Done(Ok(())), Some(p)) = (op, outcome, before) {
            prop_assert!(matches!(p.owner, Owner::Vm(_)));
            let dirty = (0..PAGE_SIZE).step_by(8).any(|o| sys.m.read_u64((pfn << 12) + o) != 0);
            prop_assert!(!dirty, "page {:#x} went back to the host unscrubbed", pfn);
        }
        if let Err(v) = check(&sys.m, &sys.mem, &sys.vm_tables()) {
            return Err(TestCaseError::fail(format!("after {op:?}: {v:?}")));
        }
        if let Some((core, entry, pa)) = sys.host_reach_violations().first() {
            return Err(TestCaseError::fail(format!(
                "after {op:?}: core {core}'s TLB still gives the host {entry:?}, which reaches page {pa:#x} it does not own"
            )));
        }
        if let Some((vmid, entry, pa)) = sys.smmu_reach_violations().first() {
            return Err(TestCaseError::fail(format!(
                "after {op:?}: the SMMU's TLB still gives SMMU VMID {vmid} {entry:?}, which reaches page {pa:#x} it does not own"
            )));
        }
        if let Some((vmid, core, entry, pa)) = sys.vm_reach_violations().first() {
            return Err(TestCaseError::fail(format!(
                "after {op:?}: core {core}'s TLB still gives VM {vmid} {entry:?}, which reaches page {pa:#x} it does not own"
            )));
        }
        let mut mapped_by: BTreeMap<u64, u16> = BTreeMap::new();
        for (vmid, table) in sys.vm_tables() {
            for leaf in table.leaves(&sys.m) {
                if sys.mem.db.get(leaf.output).is_none() {
                    continue; // MMIO
                }
                if let Some(other) = mapped_by.insert(leaf.output >> 12, vmid) {
                    prop_assert!(other == vmid, "page {:#x} mapped by VMs {} and {}", leaf.output >> 12, other, vmid);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn memory_layers_refine_their_specs((pages_only, ops) in sequences()) {
        refines(pages_only, &ops)?;
    }

    #[test]
    fn invariants_hold_after_every_step((pages_only, ops) in sequences()) {
        invariants_hold(pages_only, &ops)?;
    }
}

/// Runs `property` over fresh random sequences with `bug` planted: it must fail.
fn catches(bug: Mutation, property: fn(bool, &[Op]) -> Result<(), TestCaseError>) {
    crate::mutation::catches(bug, CASES, sequences(), |(pages_only, ops)| property(pages_only, &ops));
}

#[test]
fn refinement_catches_a_block_mapped_without_checking_ownership() {
    catches(Mutation::HostBlockWithoutOwnershipCheck, refines);
}

#[test]
fn refinement_catches_a_skipped_scrub() {
    catches(Mutation::SkipScrub, refines);
}

#[test]
fn host_iso_catches_a_forgotten_clear_pfn_host() {
    catches(Mutation::SkipClearPfnHost, invariants_hold);
}

#[test]
fn host_iso_through_the_tlbs_catches_a_missing_invalidation() {
    catches(Mutation::MissingTlbInvalidation, invariants_hold);
}

/// The host reads page `pfn` on core 1, so core 1's TLB caches it; on core 0 it gives the page
/// to VM 1; back on core 1 it reads the page again.
fn cross_core_hand_over(pfn: u64) -> Vec<Op> {
    vec![
        Op::HostOnCore(1),
        Op::HostLoad(pfn << 12),
        Op::HostOnCore(0),
        Op::Assign { vmid: 1, gfn: 0, pfn },
        Op::HostOnCore(1),
        Op::HostLoad(pfn << 12),
    ]
}

#[test]
fn a_page_given_away_on_one_core_is_gone_from_every_core_s_tlb() {
    let pfn = 0x40201;
    for pages_only in [false, true] {
        let ops = cross_core_hand_over(pfn);
        refines(pages_only, &ops).unwrap();
        invariants_hold(pages_only, &ops).unwrap();
        let mut sys = System::new(pages_only);
        let outcomes: Vec<Outcome> = ops.iter().map(|op| sys.apply(op)).collect();
        assert_eq!(outcomes[5], Outcome::Access(super::spec::Access::Abort), "core 1 still reached the VM's page");
        // Without the invalidation, core 1's cached translation reaches the VM's page: the
        // property fails on this very sequence.
        let planted = crate::mutation::with(Mutation::MissingTlbInvalidation, || {
            let mut sys = System::new(pages_only);
            let last = ops.iter().map(|op| sys.apply(op)).last();
            (last, invariants_hold(pages_only, &ops).is_err(), refines(pages_only, &ops).is_err())
        });
        assert!(matches!(planted.0, Some(Outcome::Access(super::spec::Access::Done(_)))));
        assert!(planted.1 && planted.2, "the missing invalidation went unnoticed: {planted:?}");
    }
}

#[test]
fn a_page_taken_back_from_a_vm_is_gone_from_its_core_s_tlb() {
    // VM 1 (on core 1) reads its page; the host, on core 0, takes the page back and writes it;
    // VM 1 reads again: an exit, not the host's data.
    let (vmid, pfn) = (1, 0x40201u64);
    assert_eq!(super::system::vm_core(vmid), 1);
    let ops = [
        Op::Assign { vmid, gfn: 0, pfn },
        Op::MapPfnVm { vmid, gfn: 0, pfn },
        Op::VmLoad { vmid, gpa: 8 },
        Op::Clear { vmid, pfn },
        Op::HostStore(pfn << 12 | 8, 7),
        Op::VmLoad { vmid, gpa: 8 },
    ];
    for pages_only in [false, true] {
        refines(pages_only, &ops).unwrap();
        invariants_hold(pages_only, &ops).unwrap();
        let planted = crate::mutation::with(Mutation::MissingTlbInvalidation, || {
            let mut sys = System::new(pages_only);
            let last = ops.iter().map(|op| sys.apply(op)).last();
            (last, invariants_hold(pages_only, &ops).is_err(), refines(pages_only, &ops).is_err())
        });
        assert_eq!(
            planted.0,
            Some(Outcome::Access(super::spec::Access::Done(7))),
            "the VM did not read the host's data"
        );
        assert!(planted.1 && planted.2, "the missing invalidation went unnoticed: {planted:?}");
    }
}

#[test]
fn host_iso_catches_a_block_that_covers_foreign_pages() {
    catches(Mutation::HostBlockWithoutOwnershipCheck, invariants_hold);
}

#[test]
fn vm_iso_catches_a_page_stolen_from_another_vm() {
    catches(Mutation::AssignStealsFromAnotherVm, invariants_hold);
}

#[test]
fn scrubbed_before_reuse_catches_a_skipped_scrub() {
    catches(Mutation::SkipScrub, invariants_hold);
}

#[test]
fn refinement_catches_an_unchecked_page_number() {
    catches(Mutation::UncheckedPfn, refines);
}

#[test]
fn refinement_catches_a_partial_share() {
    // Random sequences reach a range refused part-way only now and then; these start on its
    // edge: VM 1 maps two pages, shares the first, and takes back shares of both (refused on the
    // second, which is not shared), then go on at random.
    let (vmid, pfns) = (1, [0x40200u64, 0x40201]);
    let edge = [
        Op::Assign { vmid, gfn: 0, pfn: pfns[0] },
        Op::Assign { vmid, gfn: 1, pfn: pfns[1] },
        Op::MapPfnVm { vmid, gfn: 0, pfn: pfns[0] },
        Op::MapPfnVm { vmid, gfn: 1, pfn: pfns[1] },
        Op::Grant { vmid, pfn: pfns[0] },
        Op::ShareRange { vmid, gpa: 0, size: 2 << 12, revoke: true },
    ];
    // Without the bug, the edge itself refines (so the companion fails for the bug's sake).
    assert!(refines(false, &edge).is_ok() && refines(true, &edge).is_ok());
    let inputs = sequences().prop_map(move |(pages_only, ops)| (pages_only, [edge.to_vec(), ops].concat()));
    crate::mutation::catches(Mutation::ShareRangeNotAtomic, 16, inputs, |(pages_only, ops)| refines(pages_only, &ops));
}

#[test]
fn coherent_hand_over_catches_a_scrub_left_in_the_cache() {
    catches(Mutation::SkipCleanAfterScrub, refines);
}

#[test]
fn coherent_hand_over_catches_host_lines_left_on_a_taken_page() {
    catches(Mutation::SkipCleanOnTake, refines);
}

#[test]
fn coherent_hand_over_catches_host_lines_left_on_a_last_unshare() {
    // Random sequences reach "the host touched a shared page, then lost its last share" only
    // now and then; these start there: VM 1 maps and shares a page, the host writes it, and the
    // VM takes the share back; then go on at random.
    let (vmid, pfn) = (1, 0x40201u64);
    let edge = [
        Op::Assign { vmid, gfn: 0, pfn },
        Op::MapPfnVm { vmid, gfn: 0, pfn },
        Op::ShareRange { vmid, gpa: 0, size: 1 << 12, revoke: false },
        Op::HostStore(pfn << 12 | 8, 7),
        Op::ShareRange { vmid, gpa: 0, size: 1 << 12, revoke: true },
    ];
    assert!(refines(false, &edge).is_ok() && refines(true, &edge).is_ok());
    let inputs = sequences().prop_map(move |(pages_only, ops)| (pages_only, [edge.to_vec(), ops].concat()));
    crate::mutation::catches(Mutation::SkipCleanOnLastUnshare, 16, inputs, |(pages_only, ops)| {
        refines(pages_only, &ops)
    });
}

#[test]
fn a_last_unshare_the_host_never_mapped_leaves_the_vm_lines_alone() {
    // The VM writes its shared page; the host never maps it: taking the share back cleans
    // nothing (the VM's dirty line stays), and the refinement holds.
    let (vmid, pfn) = (1, 0x40201u64);
    let ops = [
        Op::Assign { vmid, gfn: 0, pfn },
        Op::MapPfnVm { vmid, gfn: 0, pfn },
        Op::ShareRange { vmid, gpa: 0, size: 1 << 12, revoke: false },
        Op::VmStore { vmid, gpa: 8, value: 7 },
        Op::ShareRange { vmid, gpa: 0, size: 1 << 12, revoke: true },
    ];
    refines(false, &ops).unwrap();
    let mut sys = System::new(false);
    for op in &ops[..4] {
        sys.apply(op);
    }
    sys.m.take_cleaned();
    sys.apply(&ops[4]);
    assert!(sys.m.take_cleaned().is_empty(), "an unshare the host never mapped cleaned the page");
    assert!(!coherent(&sys.m, pfn), "the VM's own dirty line was written back");
}

/// Companions of the 2 MiB block offer (issue 13): sequences that start on the edge of a
/// refused block, then go on at random. Without the bug the edge refines.
fn catches_on_block_edge(bug: Mutation, edge: Vec<Op>) {
    assert!(refines(false, &edge).is_ok() && refines(true, &edge).is_ok());
    let inputs = sequences().prop_map(move |(pages_only, ops)| (pages_only, [edge.clone(), ops].concat()));
    crate::mutation::catches(bug, 16, inputs, |(pages_only, ops)| refines(pages_only, &ops));
}

#[test]
fn refinement_catches_a_block_accepted_over_a_page_the_host_does_not_own() {
    // VM 2 owns the run's second page; VM 1 is offered the run as a block.
    let edge = vec![
        Op::Assign { vmid: 2, gfn: 0, pfn: 0x40401 },
        Op::ProtAndMap { vmid: 1, gfn: 0x200, pfn: 0x40400, level: 2 },
    ];
    catches_on_block_edge(Mutation::BlockOwnershipFirstPageOnly, edge);
}

#[test]
fn refinement_catches_a_block_over_an_already_mapped_gfn() {
    // VM 1 maps one page of the gfn block, then is offered a block over it.
    let edge = vec![
        Op::Assign { vmid: 1, gfn: 0x201, pfn: 0x40201 },
        Op::MapPfnVm { vmid: 1, gfn: 0x201, pfn: 0x40201 },
        Op::ProtAndMap { vmid: 1, gfn: 0x200, pfn: 0x40400, level: 2 },
    ];
    catches_on_block_edge(Mutation::BlockOverMappedGfn, edge);
}

/// Companions of the SMMU properties (issue 15): sequences that start on `edge` (a device
/// reaches a page, which then changes hands), then go on at random. Without the bug the edge
/// has the property.
fn catches_after(edge: Vec<Op>, bug: Mutation, property: fn(bool, &[Op]) -> Result<(), TestCaseError>) {
    assert!(property(false, &edge).is_ok() && property(true, &edge).is_ok());
    let inputs = sequences().prop_map(move |(pages_only, ops)| (pages_only, [edge.clone(), ops].concat()));
    crate::mutation::catches(bug, 16, inputs, |(pages_only, ops)| property(pages_only, &ops));
}

/// KCore takes the SMMU; a device of the host's reads page `pfn` (the SMMU's TLB caches the
/// translation), the host gives the page to VM 1, and the device reads it again.
fn dma_then_give_away(pfn: u64) -> [Op; 4] {
    [Op::EnableHostSmmu, Op::DeviceLoad(pfn << 12), Op::Assign { vmid: 1, gfn: 0, pfn }, Op::DeviceLoad(pfn << 12)]
}

#[test]
fn smmu_iso_catches_a_page_left_in_the_host_s_smmu_table() {
    catches(Mutation::SmmuPageLeftMapped, invariants_hold);
}

#[test]
fn refinement_catches_a_page_left_in_the_host_s_smmu_table() {
    catches(Mutation::SmmuPageLeftMapped, refines);
}

#[test]
fn smmu_iso_through_the_smmu_tlb_catches_a_missing_invalidation() {
    catches_after(dma_then_give_away(0x40201).to_vec(), Mutation::MissingSmmuTlbInvalidation, invariants_hold);
}

#[test]
fn refinement_catches_a_missing_smmu_tlb_invalidation() {
    catches_after(dma_then_give_away(0x40201).to_vec(), Mutation::MissingSmmuTlbInvalidation, refines);
}

#[test]
fn a_page_given_away_is_gone_from_the_smmu_tlb() {
    let pfn = 0x40201;
    let ops = dma_then_give_away(pfn);
    for pages_only in [false, true] {
        let mut sys = System::new(pages_only);
        let outcomes: Vec<Outcome> = ops.iter().map(|op| sys.apply(op)).collect();
        assert_eq!(outcomes[1], Outcome::Access(super::spec::Access::Done(0)), "the host's device reaches its page");
        assert_eq!(outcomes[3], Outcome::Access(super::spec::Access::Abort), "the device still reached the VM's page");
        // Both bugs let the device read the VM's page: through the table, or through the
        // SMMU's TLB.
        for bug in [Mutation::SmmuPageLeftMapped, Mutation::MissingSmmuTlbInvalidation] {
            let last = crate::mutation::with(bug, || {
                let mut sys = System::new(pages_only);
                ops.iter().map(|op| sys.apply(op)).last()
            });
            assert_eq!(last, Some(Outcome::Access(super::spec::Access::Done(0))), "{bug:?}");
        }
    }
}

#[test]
fn a_vm_page_comes_back_to_the_host_s_devices_only_scrubbed() {
    // VM 1 writes its page; a device of the host's cannot reach it, nor while the VM shares it
    // with the host; once the host takes the page back the device reads the scrub's zeros and
    // can write it.
    let (vmid, pfn) = (1, 0x40201u64);
    let ops = [
        Op::EnableHostSmmu,
        Op::Assign { vmid, gfn: 0, pfn },
        Op::MapPfnVm { vmid, gfn: 0, pfn },
        Op::VmStore { vmid, gpa: 8, value: 7 },
        Op::DeviceLoad(pfn << 12 | 8),
        Op::ShareRange { vmid, gpa: 0, size: 1 << 12, revoke: false },
        Op::HostLoad(pfn << 12 | 8),
        Op::DeviceLoad(pfn << 12 | 8),
        Op::ShareRange { vmid, gpa: 0, size: 1 << 12, revoke: true },
        Op::Clear { vmid, pfn },
        Op::DeviceLoad(pfn << 12 | 8),
        Op::DeviceStore(pfn << 12 | 8, 9),
        Op::HostLoad(pfn << 12 | 8),
    ];
    for pages_only in [false, true] {
        refines(pages_only, &ops).unwrap();
        invariants_hold(pages_only, &ops).unwrap();
        let mut sys = System::new(pages_only);
        let outcomes: Vec<Outcome> = ops.iter().map(|op| sys.apply(op)).collect();
        let access = |i: usize| match outcomes[i] {
            Outcome::Access(a) => a,
            other => panic!("{other:?}"),
        };
        use super::spec::Access::{Abort, Done};
        assert_eq!([access(4), access(6), access(7)], [Abort, Done(7), Abort], "a shared page is the CPU's only");
        assert_eq!([access(10), access(12)], [Done(0), Done(9)]);
    }
}

#[test]
fn without_an_smmu_the_host_has_no_device_and_the_checks_hold() {
    let ops = [Op::DeviceStore(0x4020_1008, 5), Op::HostLoad(0x4020_1008)];
    refines(false, &ops).unwrap();
    let mut sys = System::new(false);
    let outcomes: Vec<Outcome> = ops.iter().map(|op| sys.apply(op)).collect();
    use super::spec::Access::{Abort, Done};
    assert_eq!(outcomes, [Outcome::Access(Abort), Outcome::Access(Done(0))]);
    assert_eq!(sys.apply(&Op::EnableHostSmmu), Outcome::Done(Ok(())));
    let twice = sys.apply(&Op::EnableHostSmmu);
    assert_eq!(twice, Outcome::Done(Err(super::MemError::PageTable(crate::page_table::PtError::Occupied))));
}

/// A device assigned to VM 1 reads the VM's page; the host takes the page back and writes it;
/// the device reads again.
fn vm_dma_then_take_back(pfn: u64) -> [Op; 7] {
    let vmid = 1;
    [
        Op::Assign { vmid, gfn: 0, pfn },
        Op::MapPfnVm { vmid, gfn: 0, pfn },
        Op::AttachVmSmmu { vmid },
        Op::VmDeviceLoad { vmid, gpa: 8 },
        Op::Clear { vmid, pfn },
        Op::HostStore(pfn << 12 | 8, 7),
        Op::VmDeviceLoad { vmid, gpa: 8 },
    ]
}

#[test]
fn a_vm_s_devices_reach_its_pages_and_lose_them_before_the_scrub() {
    let (vmid, pfn) = (1, 0x40201u64);
    let mut ops = vm_dma_then_take_back(pfn).to_vec();
    // A page mapped after the attach reaches the device too, at its guest address.
    ops.splice(
        4..4,
        [
            Op::ProtAndMap { vmid, gfn: 1, pfn: 0x40202, level: 3 },
            Op::VmDeviceStore { vmid, gpa: 0x1010, value: 5 },
            Op::VmLoad { vmid, gpa: 0x1010 },
        ],
    );
    for pages_only in [false, true] {
        refines(pages_only, &ops).unwrap();
        invariants_hold(pages_only, &ops).unwrap();
        let mut sys = System::new(pages_only);
        let outcomes: Vec<Outcome> = ops.iter().map(|op| sys.apply(op)).collect();
        use super::spec::Access::{Abort, Done};
        let accesses: Vec<Outcome> = [3, 5, 6, 9].iter().map(|&i| outcomes[i]).collect();
        assert_eq!(accesses, [Done(0), Done(0), Done(5), Abort].map(Outcome::Access));
        // Left in the VM's SMMU table, or in its TLB, the page reaches the device with the
        // host's data.
        for bug in [Mutation::VmSmmuPageLeftOnClear, Mutation::MissingSmmuTlbInvalidation] {
            let last = crate::mutation::with(bug, || {
                let mut sys = System::new(pages_only);
                ops.iter().map(|op| sys.apply(op)).last()
            });
            assert_eq!(last, Some(Outcome::Access(Done(7))), "{bug:?}");
        }
    }
}

#[test]
fn vm_smmu_iso_catches_a_page_left_in_a_vm_s_smmu_table() {
    catches_after(vm_dma_then_take_back(0x40201).to_vec(), Mutation::VmSmmuPageLeftOnClear, invariants_hold);
}

#[test]
fn refinement_catches_a_page_left_in_a_vm_s_smmu_table() {
    catches(Mutation::VmSmmuPageLeftOnClear, refines);
}

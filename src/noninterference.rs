//! Noninterference (SeKVM `Noninterference.v`), executable: random sequences over two systems
//! that differ only in one VM's private memory.
//!
//! - Confidentiality: the same operations by the host (or by another VM) observe exactly the
//!   same things in both runs: every result, including every load and every refused access,
//!   the observer's own stage-2, the ownership records it may see, and the memory it may read.
//! - Integrity: operations by the host (or by another VM) never change what a VM observes of
//!   its private pages: their translations and their contents.
//!
//! VMs do not run yet, so "a VM's private data" is the contents of the pages it owns and has not
//! shared; vCPU registers join when the VM layers exist. Each property has a companion that
//! plants a known bug and shows the property catches it.
//!
//! Memory is observed through both of its views (issue 11, finding 3): the coherent one, and
//! DRAM, which an observer reads through a non-cacheable alias (the host's own stage-1
//! attributes, a guest with its MMU off, a device). The hardware may write dirty lines back at
//! any moment, so the secrets are in DRAM too from the start, and write-backs happen along the
//! sequences (`Op::WriteBack`).

use crate::machine::{Machine, PAGE_SIZE};
use crate::memory::pages::{Owner, PageInfo};
use crate::memory::spec::HOST;
use crate::memory::system::{any_op, any_pfn, host_op, vm_op, Op, Outcome, System, VMS};
use crate::mutation::Mutation;
use crate::page_table::spec::AbsNpt;
use proptest::prelude::*;
use std::collections::BTreeMap;

const CASES: u32 = 256;
const VICTIM: u16 = 1;
const OTHER_VM: u16 = 2;

/// The pages the strategies can name, in the order they are compared.
fn pfns() -> Vec<u64> {
    [0x40000u64, 0x40200, 0x7fe00].iter().flat_map(|&b| b..b + 4).collect()
}

/// Every VM starts with private pages mapped: gfn i ↦ a page of its own, outside `any_pfn`'s
/// range so that random sequences add to them rather than replace them.
fn prologue() -> Vec<Op> {
    VMS.iter()
        .flat_map(|&vmid| {
            (0..2u64).flat_map(move |i| {
                let (gfn, pfn) = (8 + i, 0x41000 + (vmid as u64) * 16 + i);
                [
                    Op::Assign { vmid, gfn, pfn },
                    Op::MapPfnVm { vmid, gfn, pfn },
                    Op::VmStore { vmid, gpa: gfn << 12, value: 7 },
                ]
            })
        })
        .collect()
}

/// The pages VM `vmid` owns and has not shared.
fn private_pages(sys: &System, vmid: u16) -> Vec<u64> {
    let candidates = pfns().into_iter().chain((0..48).map(|i| 0x41000 + i));
    candidates
        .filter(|&pfn| {
            sys.mem.db.get(pfn << 12)
                == Some(PageInfo { owner: Owner::Vm(vmid), count: 0, ..sys.mem.db.get(pfn << 12).unwrap() })
        })
        .collect()
}

/// The page's words through the caches, then as DRAM holds them.
fn page_words(sys: &System, pfn: u64) -> Vec<u64> {
    let coherent = (0..PAGE_SIZE).step_by(8).map(|o| sys.m.read_u64((pfn << 12) + o));
    let dram = sys.m.dram_words(pfn << 12..(pfn + 1) << 12);
    coherent.chain((0..PAGE_SIZE).step_by(8).map(|o| dram.get(&((pfn << 12) + o)).copied().unwrap_or(0))).collect()
}

/// Two systems after the same history, the second with different secrets in `victim`'s
/// private pages.
fn twins(setup: &[Op], victim: u16) -> (System, System) {
    let (mut a, mut b) = (System::new(false), System::new(false));
    for op in prologue().iter().chain(setup) {
        a.apply(op);
        b.apply(op);
    }
    for pfn in private_pages(&b, victim) {
        for word in 0..4 {
            b.m.write_u64((pfn << 12) + word * 8, 0x5ec7_0000 + pfn * 4 + word);
        }
    }
    // The worst case for whoever hands the pages on later: the secrets have reached DRAM.
    a.m.write_back_all();
    b.m.write_back_all();
    (a, b)
}

/// What `observer` (the host, or a VM) can see of the system.
fn view(sys: &System, observer: u16) -> (AbsNpt, Vec<Option<PageInfo>>, BTreeMap<u64, Vec<u64>>) {
    let npt = sys.npts().remove(&observer).unwrap();
    let candidates: Vec<u64> = pfns().into_iter().chain((0..48).map(|i| 0x41000 + i)).collect();
    let records = candidates
        .iter()
        .map(|&pfn| {
            let page = sys.mem.db.get(pfn << 12);
            // The host sees every owner record; a VM sees only whether a page is its own.
            if observer == HOST {
                page
            } else {
                page.filter(|p| p.owner == Owner::Vm(observer))
            }
        })
        .collect();
    let readable = candidates
        .iter()
        .filter(|&&pfn| {
            let page = sys.mem.db.get(pfn << 12).unwrap();
            match observer {
                HOST => page.owner == Owner::Host || page.count > 0,
                vm => page.owner == Owner::Vm(vm),
            }
        })
        .map(|&pfn| (pfn, page_words(sys, pfn)))
        .collect();
    (npt, records, readable)
}

/// What a VM observes of its private data: the translation and contents of each private page.
fn private_view(sys: &System, vmid: u16) -> Vec<(u64, Option<u64>, Vec<u64>)> {
    let table = &sys.vms[&vmid];
    private_pages(sys, vmid)
        .into_iter()
        .map(|pfn| {
            let gfn = sys.mem.db.get(pfn << 12).unwrap().gfn;
            (pfn, table.walk(&sys.m, gfn << 12).map(|l| l.translate(gfn << 12)), page_words(sys, pfn))
        })
        .collect()
}

/// Confidentiality: `observer`'s operations see the same in both twins.
fn confidential(observer: u16, victim: u16, setup: &[Op], ops: &[Op]) -> Result<(), TestCaseError> {
    let (mut a, mut b) = twins(setup, victim);
    prop_assert_eq!(view(&a, observer), view(&b, observer), "the twins differ in more than the victim's secrets");
    for op in ops {
        let (oa, ob): (Outcome, Outcome) = (a.apply(op), b.apply(op));
        let observed = op.by_host() == (observer == HOST) || op.vm() == Some(observer);
        if observed {
            prop_assert_eq!(oa, ob, "{:?} answered differently: the victim's secrets leaked", op);
        }
        prop_assert_eq!(view(&a, observer), view(&b, observer), "the observer's view diverged after {:?}", op);
    }
    Ok(())
}

/// Integrity: operations by others leave `victim`'s private data as it was.
fn integral(victim: u16, setup: &[Op], ops: &[Op]) -> Result<(), TestCaseError> {
    let (mut sys, _) = twins(setup, victim);
    let before = private_view(&sys, victim);
    for op in ops {
        sys.apply(op);
        let now = private_view(&sys, victim);
        // Pages may join the victim (assigned to it); none it had may change.
        for page in &before {
            prop_assert!(now.contains(page), "{:?} changed the victim's private page {:#x}", op, page.0);
        }
    }
    Ok(())
}

fn setups() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(any_op(), 0..30)
}

/// Host operations, without tearing the victim down (which scrubs its pages by design).
fn host_ops_sparing(victim: u16) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        host_op().prop_filter(
            "no teardown of the victim",
            move |op| !matches!(op, Op::Clear { vmid, .. } | Op::ClearRange { vmid, .. } if *vmid == victim),
        ),
        50..80,
    )
}

/// Another VM's operations, and the host giving that VM pages.
fn other_vm_ops() -> impl Strategy<Value = Vec<Op>> {
    let host_gives = (0u64..4, any_pfn()).prop_map(|(gfn, pfn)| Op::Assign { vmid: OTHER_VM, gfn, pfn });
    proptest::collection::vec(prop_oneof![3 => vm_op(Just(OTHER_VM)), 1 => host_gives], 50..80)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_host_cannot_read_a_vm(setup in setups(), ops in proptest::collection::vec(host_op(), 50..80)) {
        confidential(HOST, VICTIM, &setup, &ops)?;
    }

    #[test]
    fn the_host_cannot_change_a_vm(setup in setups(), ops in host_ops_sparing(VICTIM)) {
        integral(VICTIM, &setup, &ops)?;
    }

    #[test]
    fn a_vm_cannot_read_another_vm(setup in setups(), ops in other_vm_ops()) {
        confidential(OTHER_VM, VICTIM, &setup, &ops)?;
    }

    #[test]
    fn a_vm_cannot_change_another_vm(setup in setups(), ops in other_vm_ops()) {
        integral(VICTIM, &setup, &ops)?;
    }
}

/// Runs a noninterference property over fresh random inputs with `bug` planted: it must fail.
fn catches<S: Strategy>(bug: Mutation, inputs: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    crate::mutation::catches(bug, CASES, inputs, property);
}

#[test]
fn confidentiality_catches_a_forgotten_clear_pfn_host() {
    let inputs = (setups(), proptest::collection::vec(host_op(), 50..80));
    catches(Mutation::SkipClearPfnHost, inputs, |(setup, ops)| confidential(HOST, VICTIM, &setup, &ops));
}

#[test]
fn confidentiality_catches_a_skipped_scrub() {
    let inputs = (setups(), proptest::collection::vec(host_op(), 50..80));
    catches(Mutation::SkipScrub, inputs, |(setup, ops)| confidential(HOST, VICTIM, &setup, &ops));
}

#[test]
fn integrity_catches_a_forgotten_clear_pfn_host() {
    catches(Mutation::SkipClearPfnHost, (setups(), host_ops_sparing(VICTIM)), |(setup, ops)| {
        integral(VICTIM, &setup, &ops)
    });
}

#[test]
fn vm_confidentiality_catches_a_stolen_page() {
    catches(Mutation::AssignStealsFromAnotherVm, (setups(), other_vm_ops()), |(setup, ops)| {
        confidential(OTHER_VM, VICTIM, &setup, &ops)
    });
}

#[test]
fn vm_integrity_catches_a_stolen_page() {
    catches(Mutation::AssignStealsFromAnotherVm, (setups(), other_vm_ops()), |(setup, ops)| {
        integral(VICTIM, &setup, &ops)
    });
}

#[test]
fn confidentiality_catches_a_scrub_left_in_the_cache() {
    let inputs = (setups(), proptest::collection::vec(host_op(), 50..80));
    catches(Mutation::SkipCleanAfterScrub, inputs, |(setup, ops)| confidential(HOST, VICTIM, &setup, &ops));
}

//! Random ownership transitions and host faults over the model machine, with the invariant
//! checker after every step; and companions that plant known bugs and show the checker catches
//! them.

use super::invariants::{check, check_canary, fill_canary, Violation};
use super::pages::{Owner, PageDb, PageInfo};
use super::regions::MemRegions;
use super::*;
use crate::machine::model::{Flush, ModelMachine};
use crate::memory::spec;
use crate::page_table::descriptor::Regime;
use crate::page_table::pool::PagePool;
use crate::page_table::PtError;
use proptest::prelude::*;

const RAM: PhysRange = PhysRange::new(0x4000_0000, 0x4000_0000);
use super::system::{test_mmio, GICH};
const POOL: u64 = 0x1_0000_0000;

fn host_memory(m: &ModelMachine, policy: HostMapPolicy) -> HostMemory {
    let db = PageDb::new(MemRegions::new(&[RAM]).unwrap());
    let host_s2 = PageTable::new(m, Regime::Stage2 { vmid: 0 }, PagePool::new(POOL, 600)).unwrap();
    let mut mem = HostMemory::new(db, host_s2, test_mmio());
    mem.policy = policy;
    // KCore's own region, as at boot.
    mem.give_to_kcore(m, PhysRange::new(0x4008_0000, 0x0100_0000)).unwrap();
    mem
}

/// [`host_memory`] with KCore owning an SMMU: the host's SMMU table built after boot's
/// transitions, from a pool of exactly the worst-case size.
fn host_memory_with_smmu(m: &ModelMachine, policy: HostMapPolicy) -> HostMemory {
    let mut mem = host_memory(m, policy);
    let pages = host_smmu_table_pages(&mem.db.regions().iter().collect::<Vec<_>>());
    mem.enable_host_smmu(m, PagePool::new(SMMU_POOL, pages)).unwrap();
    mem
}

const SMMU_POOL: u64 = POOL + (8 << 30);

#[derive(Clone, Debug)]
enum Op {
    HostFault(u64),
    Assign { vmid: u16, gfn: u64, pfn: u64 },
    Clear { vmid: u16, pfn: u64 },
    Grant { vmid: u16, pfn: u64 },
    Revoke { vmid: u16, pfn: u64 },
}

/// A few 2 MiB regions of RAM, including KCore's, so transitions collide.
fn ram_pfn() -> impl Strategy<Value = u64> + Clone {
    (prop_oneof![Just(0x40000u64), Just(0x40200), Just(0x40600), Just(0x7fe00)], 0u64..16).prop_map(|(b, i)| b + i)
}

/// Page numbers as the host passes them: pages of RAM, and the same pages with high bits set,
/// which name no page (issue 11: `pfn << 12` would alias them).
fn any_pfn() -> impl Strategy<Value = u64> {
    prop_oneof![6 => ram_pfn(), 1 => (ram_pfn(), 28u32..64).prop_map(|(pfn, bit)| pfn | 1 << bit)]
}

/// The record of page `pfn` if the number names a page of RAM: the physical address space is
/// 40 bits (docs/hypercalls.md), so a number with any higher bit names none.
fn record(mem: &HostMemory, pfn: u64) -> Option<PageInfo> {
    spec::frame(pfn).ok().and_then(|pa| mem.db.get(pa))
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![
            // Fault addresses come from the hardware, inside the host's input range.
            3 => ram_pfn().prop_map(|pfn| pfn << 12),
            1 => (0x0800_0000u64..0x0a00_0000).prop_map(|a| a & !7),
            1 => (RAM.base..RAM.end()).prop_map(|a| a & !7),
        ].prop_map(Op::HostFault),
        3 => (1u16..4, 0u64..64, any_pfn()).prop_map(|(vmid, gfn, pfn)| Op::Assign { vmid, gfn, pfn }),
        1 => (1u16..4, any_pfn()).prop_map(|(vmid, pfn)| Op::Clear { vmid, pfn }),
        2 => (1u16..4, any_pfn()).prop_map(|(vmid, pfn)| Op::Grant { vmid, pfn }),
        2 => (1u16..4, any_pfn()).prop_map(|(vmid, pfn)| Op::Revoke { vmid, pfn }),
    ]
}

/// Applies `op`, checking what it must do to the ownership table.
fn apply(m: &ModelMachine, mem: &mut HostMemory, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::HostFault(ipa) => {
            let page = mem.db.get(ipa);
            let result = mem.map_page_host(m, ipa);
            let may = match page {
                Some(p) => p.owner == Owner::Host || p.count > 0,
                None => {
                    let mmio = test_mmio();
                    mmio.allowed.iter().any(|r| r.contains(ipa))
                        && !mmio
                            .emulated
                            .iter()
                            .chain(&mmio.protected)
                            .chain(&mmio.guest_only)
                            .any(|r| r.contains(ipa & !0xfff))
                }
            };
            prop_assert_eq!(result.is_ok(), may, "fault at {:#x} on {:?}: {:?}", ipa, page, result);
            if let Ok(leaf) = result {
                prop_assert_eq!(leaf.translate(ipa), ipa);
            }
        }
        Op::Assign { vmid, gfn, pfn } => {
            let before = record(mem, pfn);
            let result = mem.assign_pfn_to_vm(m, vmid, gfn, pfn);
            let allowed = before.is_some_and(|before| {
                (before.owner == Owner::Host && before.count == 0)
                    || (before.owner == Owner::Vm(vmid) && before.gfn == gfn)
            });
            prop_assert_eq!(result.is_ok(), allowed, "{:?} on {:?}: {:?}", op, before, result);
            if allowed {
                prop_assert!(mem.host_s2.walk(m, pfn << 12).is_none(), "the host still maps an assigned page");
                let devices_reach = mem.host_smmu.as_ref().is_some_and(|t| t.walk(m, pfn << 12).is_some());
                prop_assert!(!devices_reach, "the host's devices still reach an assigned page");
            }
        }
        Op::Clear { vmid, pfn } => {
            let before = record(mem, pfn);
            if before.is_some() {
                m.write_u64(pfn << 12, 0xdead_beef);
            }
            // These sequences have no VM tables: the VM maps nothing.
            let mut vm_s2 = PageTable::new(m, Regime::Stage2 { vmid }, PagePool::new(POOL + (1 << 30), 1)).unwrap();
            let result = mem.clear_vm_page(m, &mut vm_s2, vmid, pfn);
            prop_assert_eq!(result.is_ok(), before.is_some_and(|p| p.owner == Owner::Vm(vmid)));
            if result.is_ok() {
                prop_assert_eq!(m.read_u64(pfn << 12), 0, "a reclaimed page was not scrubbed");
                prop_assert!(m.dram_words(pfn << 12..(pfn + 1) << 12).is_empty(), "a scrub stayed in the cache");
                prop_assert_eq!(mem.db.get(pfn << 12).unwrap(), PageInfo { owner: Owner::Host, count: 0, gfn: pfn });
                let devices_reach = mem.host_smmu.as_ref().is_none_or(|t| t.walk(m, pfn << 12).is_some());
                prop_assert!(devices_reach, "the host's devices do not reach a page it got back");
            }
        }
        Op::Grant { vmid, pfn } => {
            let before = record(mem, pfn);
            let result = mem.grant_vm_page(vmid, pfn);
            let allowed = before.is_some_and(|p| p.owner == Owner::Vm(vmid) && p.count < MAX_SHARE_COUNT);
            prop_assert_eq!(result.is_ok(), allowed);
        }
        Op::Revoke { vmid, pfn } => {
            let before = record(mem, pfn);
            let result = mem.revoke_vm_page(m, vmid, pfn);
            prop_assert_eq!(result.is_ok(), before.is_some_and(|p| p.owner == Owner::Vm(vmid) && p.count > 0));
            if result.is_ok() && before.is_some_and(|p| p.count == 1) {
                prop_assert!(mem.host_s2.walk(m, pfn << 12).is_none(), "the host keeps an unshared page");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn transitions_keep_every_invariant(
        block in any::<bool>(),
        smmu in any::<bool>(),
        ops in proptest::collection::vec(any_op(), 50..80),
    ) {
        let m = ModelMachine::new();
        let policy = if block { HostMapPolicy::LargestBlock } else { HostMapPolicy::PagesOnly };
        let mut mem = if smmu { host_memory_with_smmu(&m, policy) } else { host_memory(&m, policy) };
        for op in &ops {
            apply(&m, &mut mem, op)?;
            prop_assert_eq!(check(&m, &mem, &[]), Ok(()), "after {:?}", op);
        }
    }
}

#[test]
fn host_faults_map_the_largest_host_owned_block() {
    let m = ModelMachine::new();
    let mut mem = host_memory(&m, HostMapPolicy::LargestBlock);
    // KCore sits in the first 2 MiB blocks: pages there, 2 MiB blocks elsewhere in that GiB.
    assert_eq!(mem.map_page_host(&m, 0x4000_1000).unwrap().level, 3);
    assert_eq!(mem.map_page_host(&m, 0x4000_0000 + (32 << 20)).unwrap().level, 2);
    assert_eq!(mem.map_page_host(&m, 0x0900_0000).unwrap().attrs, Attrs::DEVICE);
    assert_eq!(mem.map_page_host(&m, 0x0820_0000).unwrap().level, 2);
    assert_eq!(mem.map_page_host(&m, 0x4008_0000), Err(MemError::NotOwned(Owner::KCore)));
    assert_eq!(mem.map_page_host(&m, GICH.base), Err(MemError::Protected));
    // A page inside a mapped 2 MiB block changes owner: the block is split, the rest stays.
    mem.assign_pfn_to_vm(&m, 1, 0, (0x4000_0000 + (32 << 20) + 0x5000) >> 12).unwrap();
    assert!(mem.host_s2.walk(&m, 0x4000_0000 + (32 << 20) + 0x5000).is_none());
    assert_eq!(mem.host_s2.walk(&m, 0x4000_0000 + (32 << 20) + 0x6000).unwrap().level, 3);
    assert_eq!(check(&m, &mem, &[]), Ok(()));
}

#[test]
fn vm_iso_holds_for_owned_pages_and_catches_a_foreign_one() {
    let m = ModelMachine::new();
    let mut mem = host_memory(&m, HostMapPolicy::LargestBlock);
    let mut vm = PageTable::new(&m, Regime::Stage2 { vmid: 1 }, PagePool::new(POOL + (1 << 30), 8)).unwrap();
    mem.assign_pfn_to_vm(&m, 1, 0x10, 0x50000).unwrap();
    vm.map(&m, 0x10 << 12, 0x5000_0000, 3, Attrs::RAM).unwrap();
    mem.map_vm_io(&m, &mut vm, 0x0900_0000, 0x0900_0000).unwrap();
    assert_eq!(mem.map_vm_io(&m, &mut vm, 0x0a00_0000, 0x4000_0000), Err(MemError::IsRam));
    assert_eq!(check(&m, &mem, &[(1, &vm)]), Ok(()));
    // Planted bug: the VM maps a host page it was never given.
    vm.map(&m, 0x11 << 12, 0x5000_1000, 3, Attrs::RAM).unwrap();
    assert!(matches!(check(&m, &mem, &[(1, &vm)]), Err(Violation::VmIso { vmid: 1, .. })));
}

#[test]
fn the_checker_catches_a_table_page_outside_its_pool() {
    let m = ModelMachine::new();
    let mem = host_memory(&m, HostMapPolicy::LargestBlock);
    // A root and one table page: a 4 KiB mapping needs two tables below the root.
    let mut vm = PageTable::new(&m, Regime::Stage2 { vmid: 1 }, PagePool::new(POOL + (1 << 30), 2)).unwrap();
    assert!(vm.map(&m, 0x10 << 12, 0x0900_0000, 3, Attrs::DEVICE).is_err());
    assert_eq!(check(&m, &mem, &[(1, &vm)]), Ok(()));
    // Planted bug: the pool hands out the page after its end.
    crate::mutation::with(crate::mutation::Mutation::PoolOverrun, || {
        vm.map(&m, 0x10 << 12, 0x0900_0000, 3, Attrs::DEVICE).unwrap();
    });
    assert!(matches!(check(&m, &mem, &[(1, &vm)]), Err(Violation::ForeignTablePage { principal: 1, .. })));
}

#[test]
fn the_checker_catches_a_transition_that_forgets_clear_pfn_host() {
    let m = ModelMachine::new();
    let mut mem = host_memory(&m, HostMapPolicy::LargestBlock);
    let pa = 0x4200_0000;
    mem.map_page_host(&m, pa).unwrap();
    // Planted bug: assign_pfn_to_vm without unmapping the page from the host first.
    mem.db.set(pa, PageInfo { owner: Owner::Vm(2), count: 0, gfn: 0 });
    assert!(matches!(check(&m, &mem, &[]), Err(Violation::HostIso(_))));
}

#[test]
fn the_checker_catches_a_non_identity_host_mapping() {
    let m = ModelMachine::new();
    let mut mem = host_memory(&m, HostMapPolicy::LargestBlock);
    mem.host_s2.map(&m, 0x4200_0000, 0x4200_1000, 3, Attrs::RAM).unwrap();
    assert!(matches!(check(&m, &mem, &[]), Err(Violation::HostFlatmap(_))));
}

#[test]
fn memory_ops_map_a_block_share_it_and_reclaim_it() {
    let m = ModelMachine::new();
    let mut mem = host_memory(&m, HostMapPolicy::LargestBlock);
    let mut vm = PageTable::new(&m, Regime::Stage2 { vmid: 1 }, PagePool::new(POOL + (1 << 30), 8)).unwrap();
    // The host has the block mapped; giving it to the VM splits and unmaps it page by page.
    mem.map_page_host(&m, 0x4400_0000).unwrap();
    mem.prot_and_map_vm_s2pt(&m, &mut vm, 1, 0x200, 0x44000, 2).unwrap();
    assert_eq!(vm.walk(&m, 0x20_0000).map(|l| (l.translate(0x20_3000), l.level)), Some((0x4400_3000, 2)));
    assert!(mem.host_s2.walk(&m, 0x4400_3000).is_none());
    assert_eq!(
        mem.prot_and_map_vm_s2pt(&m, &mut vm, 1, 0x201, 0x44001, 2),
        Err(MemError::PageTable(PtError::BadRange))
    );
    // Share two pages, then take one share back.
    mem.grant_stage2_sg_gpa(&m, &vm, 1, 0x20_0000, 0x2000).unwrap();
    assert_eq!(mem.db.get(0x4400_1000).unwrap().count, 1);
    assert_eq!(mem.map_page_host(&m, 0x4400_1000).map(|l| l.level), Ok(3));
    mem.revoke_stage2_sg_gpa(&m, &vm, 1, 0x20_1000, 0x1000).unwrap();
    assert!(mem.host_s2.walk(&m, 0x4400_1000).is_none());
    assert_eq!(check(&m, &mem, &[(1, &vm)]), Ok(()));
    // Teardown: every page back to the host, scrubbed, and the VM maps none of them.
    m.write_u64(0x4400_0008, 42);
    mem.clear_vm_range(&m, &mut vm, 1, 0x44000, 512).unwrap();
    assert_eq!(m.read_u64(0x4400_0008), 0);
    assert!(vm.walk(&m, 0x20_0000).is_none());
    assert!(mem.db.host_owns_block(0x4400_0000, 2 << 20));
    assert_eq!(check(&m, &mem, &[(1, &vm)]), Ok(()));
}

/// Issue 11's property: over random host faults (RAM, MMIO around the allow-list, emulated and
/// KCore pages, anywhere below 2^48), a fault outside RAM is served only on an allowed page that
/// is neither emulated nor KCore's, and no Device leaf of the host's stage-2 ever holds a page
/// that is not. The pages checked in each leaf are its ends and every point where the allowed
/// set can change inside it (so a leaf that holds one bad page shows it at one of them).
fn host_mmio_stays_inside_the_allow_list(pages_only: bool, faults: &[u64]) -> Result<(), TestCaseError> {
    let m = ModelMachine::new();
    let policy = if pages_only { HostMapPolicy::PagesOnly } else { HostMapPolicy::LargestBlock };
    let mut mem = host_memory(&m, policy);
    let mmio = test_mmio();
    let good = |page: u64| {
        mmio.allowed.iter().any(|r| r.contains(page))
            && !mmio.emulated.iter().chain(&mmio.protected).chain(&mmio.guest_only).any(|r| r.contains(page))
    };
    let edges: Vec<u64> = mmio
        .allowed
        .iter()
        .chain(&mmio.emulated)
        .chain(&mmio.protected)
        .chain(&mmio.guest_only)
        .flat_map(|r| [r.base, r.end()])
        .collect();
    for &ipa in faults {
        let result = mem.map_page_host(&m, ipa);
        if mem.db.get(ipa).is_none() {
            prop_assert_eq!(result.is_ok(), good(ipa & !0xfff), "fault at {:#x}: {:?}", ipa, result);
        }
        for leaf in
            mem.host_s2.leaves(&m).into_iter().filter(|l| l.attrs.mem == crate::page_table::descriptor::MemType::Device)
        {
            let (base, end) = (leaf.output, leaf.output + leaf.size());
            let inside = edges.iter().flat_map(|&e| [e.wrapping_sub(PAGE_SIZE), e]).filter(|&p| p >= base && p < end);
            for page in [base, end - PAGE_SIZE].into_iter().chain(inside) {
                prop_assert!(
                    good(page),
                    "after a fault at {:#x} the host maps MMIO page {:#x} ({:?})",
                    ipa,
                    page,
                    leaf
                );
            }
        }
    }
    Ok(())
}

fn host_mmio_inputs() -> impl Strategy<Value = (bool, Vec<u64>)> {
    (any::<bool>(), proptest::collection::vec(super::system::any_mmio_addr(), 1..40))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_host_maps_only_allowed_mmio((pages_only, faults) in host_mmio_inputs()) {
        host_mmio_stays_inside_the_allow_list(pages_only, &faults)?;
    }
}

#[test]
fn the_allow_list_property_catches_a_host_mapping_that_ignores_it() {
    crate::mutation::catches(crate::mutation::Mutation::HostMmioIgnoresAllowList, 64, host_mmio_inputs(), |(p, f)| {
        host_mmio_stays_inside_the_allow_list(p, &f)
    });
}

#[test]
fn allowed_mmio_gets_the_largest_block_without_emulated_or_kcore_pages() {
    let m = ModelMachine::new();
    let mut mem = host_memory(&m, HostMapPolicy::LargestBlock);
    // 0x0820_0000..0x0840_0000 lies inside the allowed GIC range and holds no special page.
    assert_eq!(mem.map_page_host(&m, 0x0821_0000).unwrap().level, 2);
    // The first 2 MiB holds GICH and the emulated pages: pages only, and not those.
    assert_eq!(mem.map_page_host(&m, 0x0800_0000).unwrap().level, 3);
    assert_eq!(mem.map_page_host(&m, 0x080A_1000).unwrap().level, 3);
    assert_eq!(mem.map_page_host(&m, 0x080A_0010), Err(MemError::Emulated));
    assert_eq!(mem.map_page_host(&m, 0x0803_0000), Err(MemError::Protected));
    // The UART page alone; its neighbours and anything unlisted are refused.
    assert_eq!(mem.map_page_host(&m, 0x0900_0000).unwrap().level, 3);
    for refused in [0x0900_1000, 0x0902_0010, 0x0a00_0000, 0x40_1000_0000, 0xFE00_7000] {
        assert_eq!(mem.map_page_host(&m, refused), Err(MemError::NotAllowed), "{refused:#x}");
    }
    let mut vm = PageTable::new(&m, Regime::Stage2 { vmid: 1 }, PagePool::new(POOL + (1 << 30), 8)).unwrap();
    assert_eq!(mem.map_vm_io(&m, &mut vm, 0x1000, 0x0902_0000), Err(MemError::NotAllowed));
    assert_eq!(mem.map_vm_io(&m, &mut vm, 0x1000, 0x080B_0000), Err(MemError::Emulated));
    assert_eq!(mem.map_vm_io(&m, &mut vm, 0x1000, 0x0900_0000), Ok(()));
    // The GICv2 virtual CPU interface is a VM's (at its GICC), never the host's.
    assert_eq!(mem.map_vm_io(&m, &mut vm, 0x2000, 0x0804_1000), Ok(()));
    assert_eq!(mem.map_page_host(&m, 0x0804_0000), Err(MemError::NotAllowed));
    assert_eq!(check(&m, &mem, &[(1, &vm)]), Ok(()));
}

#[test]
fn the_canary_check_catches_one_changed_word() {
    let m = ModelMachine::new();
    let canary = 0x4008_0000 + corevisor_abi::KCORE_CANARY_OFFSET;
    assert!(check_canary(&m, canary).is_err(), "an unfilled canary is no canary");
    fill_canary(&m, canary);
    assert_eq!(check_canary(&m, canary), Ok(()));
    // What fw_cfg's DMA did to KCore's .bss before issue 11: one word overwritten.
    m.write_u64(canary + 0x7f8, 0);
    assert_eq!(check_canary(&m, canary), Err(Violation::Canary { pa: canary + 0x7f8, found: 0 }));
}

/// Finding 7 of issue 11: SET_DESC_PFN / UNSET_DESC_PFN are all or nothing. A call refused on
/// one page of its range changes no page of it: no share count, no host mapping.
#[test]
fn a_refused_share_or_unshare_changes_no_page_of_the_range() {
    let m = ModelMachine::new();
    let mut mem = host_memory(&m, HostMapPolicy::LargestBlock);
    let mut vm = PageTable::new(&m, Regime::Stage2 { vmid: 1 }, PagePool::new(POOL + (1 << 30), 8)).unwrap();
    let (a, b) = (0x50000u64, 0x50001u64);
    for (gfn, pfn) in [(0x10, a), (0x11, b)] {
        mem.assign_pfn_to_vm(&m, 1, gfn, pfn).unwrap();
        mem.map_pfn_vm(&m, &mut vm, 1, gfn, pfn).unwrap();
    }
    // A is shared and the host maps it; B is not shared.
    mem.grant_stage2_sg_gpa(&m, &vm, 1, 0x10 << 12, 0x1000).unwrap();
    mem.map_page_host(&m, a << 12).unwrap();
    // Unsharing [A, B] is refused on B: A stays shared and mapped in the host.
    assert_eq!(mem.revoke_stage2_sg_gpa(&m, &vm, 1, 0x10 << 12, 0x2000), Err(MemError::NotShared));
    assert_eq!(mem.db.get(a << 12).unwrap().count, 1, "a refused unshare took A's share back");
    assert!(mem.host_s2.walk(&m, a << 12).is_some(), "a refused unshare unmapped A from the host");
    // B at its share limit: sharing [A, B] is refused on B and A's count does not move.
    for _ in 0..MAX_SHARE_COUNT {
        mem.grant_vm_page(1, b).unwrap();
    }
    assert_eq!(mem.grant_stage2_sg_gpa(&m, &vm, 1, 0x10 << 12, 0x2000), Err(MemError::ShareLimit));
    assert_eq!(mem.db.get(a << 12).unwrap().count, 1, "a refused share shared A");
    assert_eq!(check(&m, &mem, &[(1, &vm)]), Ok(()));
}

#[test]
fn the_host_s_smmu_table_is_its_pages_and_its_pool_never_runs_out() {
    let m = ModelMachine::new();
    let mut mem = host_memory(&m, HostMapPolicy::LargestBlock);
    // 1 GiB of RAM: the root, one level-2 table, 512 level-3 tables at most.
    let pages = host_smmu_table_pages(&mem.db.regions().iter().collect::<Vec<_>>());
    assert_eq!(pages, 1 + 1 + 512);
    let small = mem.enable_host_smmu(&m, PagePool::new(SMMU_POOL, pages - 1));
    assert_eq!(small, Err(MemError::PageTable(PtError::PoolExhausted)));
    assert!(mem.host_smmu.is_none());
    let root = mem.enable_host_smmu(&m, PagePool::new(SMMU_POOL, pages)).unwrap();
    let smmu = mem.host_smmu.as_ref().unwrap();
    assert_eq!(smmu.root(), root);
    // KCore's 16 MiB from 0x4008_0000: pages around it, 2 MiB blocks elsewhere, nothing of it.
    assert_eq!(smmu.walk(&m, 0x4000_0000).map(|l| l.level), Some(3));
    assert_eq!(smmu.walk(&m, 0x4008_0000), None);
    assert_eq!(smmu.walk(&m, 0x4200_0000).map(|l| (l.level, l.attrs)), Some((2, SMMU_RAM)));
    assert_eq!(check(&m, &mem, &[]), Ok(()));

    // A 2 MiB block given to a VM leaves the SMMU table in one break and one invalidation.
    let mut vm = PageTable::new(&m, Regime::Stage2 { vmid: 1 }, PagePool::new(POOL + (1 << 30), 8)).unwrap();
    m.take_flushes();
    mem.prot_and_map_vm_s2pt(&m, &mut vm, 1, 0x200, 0x44000, 2).unwrap();
    let smmu_flushes: Vec<Flush> =
        m.take_flushes().into_iter().filter(|f| matches!(f, Flush::SmmuIpa { .. })).collect();
    assert_eq!(smmu_flushes, [Flush::SmmuIpa { vmid: HOST_SMMU_VMID, ipa: 0x4400_0000 }]);
    assert_eq!(check(&m, &mem, &[(1, &vm)]), Ok(()));
    // Back page by page: the empty 2 MiB slot gets its table.
    assert_eq!(mem.clear_vm_range(&m, &mut vm, 1, 0x44000, 512), Ok(512));
    assert_eq!(check(&m, &mem, &[(1, &vm)]), Ok(()));

    // The worst case: one page of every 2 MiB block leaves the host, so every block splits;
    // then they all come back.
    let taken: Vec<u64> = (0x40000..0x80000u64)
        .step_by(512)
        .map(|block| block + 1)
        .filter(|&pfn| mem.db.get(pfn << 12).is_some_and(|p| p.owner == Owner::Host))
        .collect();
    // Not KCore's seven whole blocks, nor its last one, whose second page is KCore's.
    assert_eq!(taken.len(), 512 - 7 - 1);
    for (gfn, &pfn) in taken.iter().enumerate() {
        mem.assign_pfn_to_vm(&m, 2, gfn as u64, pfn).unwrap();
    }
    assert_eq!(check(&m, &mem, &[]), Ok(()));
    let mut vm2 = PageTable::new(&m, Regime::Stage2 { vmid: 2 }, PagePool::new(POOL + (2 << 30), 1)).unwrap();
    for &pfn in &taken {
        mem.clear_vm_page(&m, &mut vm2, 2, pfn).unwrap();
    }
    assert_eq!(check(&m, &mem, &[]), Ok(()));
    // What is left is what KCore's seven whole blocks would need, which never come back.
    assert_eq!(mem.host_smmu.as_ref().unwrap().pool().free(), 7);
}

#[test]
fn smmu_iso_catches_a_foreign_page_and_a_missing_one() {
    let m = ModelMachine::new();
    let mut mem = host_memory_with_smmu(&m, HostMapPolicy::LargestBlock);
    // Planted bug: a page leaves the host without leaving its SMMU table.
    let pa = 0x4200_3000;
    mem.db.set(pa, PageInfo { owner: Owner::Vm(2), count: 0, gfn: 0 });
    assert!(matches!(check(&m, &mem, &[]), Err(Violation::SmmuIso(leaf)) if leaf.input == 0x4200_0000));
    mem.db.set(pa, PageInfo { owner: Owner::Host, count: 0, gfn: pa >> 12 });
    assert_eq!(check(&m, &mem, &[]), Ok(()));
    // Planted bug: a host page missing from its SMMU table (its devices cannot reach it).
    mem.host_smmu.as_mut().unwrap().clear_page(&m, pa).unwrap();
    let owned = mem.db.host_pages();
    assert_eq!(check(&m, &mem, &[]), Err(Violation::SmmuIncomplete { mapped: owned - 1, owned }));
    // Planted bug: the page back, at another address.
    mem.host_smmu.as_mut().unwrap().map(&m, pa, pa + 0x1000, 3, SMMU_RAM).unwrap();
    assert!(matches!(check(&m, &mem, &[]), Err(Violation::SmmuIso(leaf)) if leaf.input == pa));
}

#[test]
fn the_host_table_pool_covers_every_block_split() {
    // QEMU's `-m 1G`: the root, one level-2 table, 512 level-3 tables.
    assert_eq!(host_smmu_table_pages(&[PhysRange::new(0x4000_0000, 0x4000_0000)]), 514);
    // 2 GiB from 1 GiB: two GiBs.
    assert_eq!(host_smmu_table_pages(&[PhysRange::new(0x4000_0000, 0x8000_0000)]), 1 + 2 + 1024);
    // A region that straddles GiB and block boundaries counts every one it touches.
    assert_eq!(host_smmu_table_pages(&[PhysRange::new(0x7fff_f000, 0x2000)]), 1 + 2 + 2);
}

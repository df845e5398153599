//! Powering the machine down (the host's SYSTEM_OFF and SYSTEM_RESET, KCore's own SYSTEM_OFF
//! hypercall). RAM keeps its contents across a reset (QEMU never clears it, DRAM holds its charge
//! for a while, and firmware does not scrub it) and the next boot hands all of it to the host. So
//! before KCore resets or powers off the machine, every page that is not the host's is scrubbed:
//! the VMs' pages, the VMs' stage-2 tables, and KCore's heap (vCPU register contexts, boot
//! records with image hashes, the ownership table). Each is zeroed, then cleaned and invalidated
//! to the point of coherency, so that DRAM holds the zeros and not only a cache.
//!
//! Left as they are: KCore's code and static data, its own EL2 page tables (it runs on them), the
//! host's stage-2 tables (they name only host addresses), and the EL2 stacks (the caller runs on
//! one of them; the other cores' hold trap frames of the host, and guest registers only inside
//! the vCPU contexts on the heap).
//!
//! The caller stops every other core first (the halt flag): [`Kcore::scrub_for_power_down`]
//! starts by revoking every VM's stage-2, so a guest still running on another core faults into
//! KCore, which parks it, before its pages are scrubbed.

use super::{vm_tables, Kcore, VmRecords};
use crate::machine::{Machine, PAGE_SIZE};
use crate::memory::pages::Owner;
use crate::memory::HostMemory;
use crate::mutation::{planted, Mutation};
use corevisor_boards::PhysRange;

/// What the power-down scrub zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scrubbed {
    /// Pages of RAM that VMs owned.
    pub vm_pages: u64,
    /// Pages of the VMs' page-table pools.
    pub table_pages: u64,
    /// Bytes of KCore's heap.
    pub heap_bytes: u64,
}

/// 2 MiB: the ownership table counts foreign pages per block of this size, so blocks wholly
/// the host's are skipped in one step.
const BLOCK: u64 = 2 << 20;

impl Kcore {
    /// Scrubs everything that is not the host's before the machine goes down, in this order:
    /// 1. every VM's stage-2 root is emptied and the VMID's TLB entries invalidated on every
    ///    core, so no guest reaches its memory any more;
    /// 2. every page of RAM a VM owns (shared pages too) is zeroed and cleaned to the point of
    ///    coherency;
    /// 3. the VMs' page-table pools, then
    /// 4. KCore's `heap`, the same way. Last, because KCore's own state lives there: after this
    ///    call `self` must never be used again (the machine is about to go down).
    ///
    /// Ownership records are left as they are: nothing runs after this but the reset. The
    /// caller holds both locks (`vms`, then `mem`) and never lets go of them.
    pub fn scrub_for_power_down(
        &self,
        m: &impl Machine,
        vms: &VmRecords,
        mem: &HostMemory,
        heap: PhysRange,
    ) -> Scrubbed {
        Kcore::revoke_vm_stage2s(m, vms);
        let mut vm_pages = 0;
        for region in mem.db.regions().iter() {
            let mut pa = region.base;
            while pa < region.end() {
                let whole_block = pa.is_multiple_of(BLOCK) && pa + BLOCK <= region.end();
                if whole_block && mem.db.host_owns_block(pa, BLOCK) {
                    pa += BLOCK;
                    continue;
                }
                if mem.db.get(pa).is_some_and(|page| matches!(page.owner, Owner::Vm(_))) {
                    if !planted(Mutation::SkipPowerDownVmScrub) {
                        scrub(m, pa, PAGE_SIZE);
                    }
                    vm_pages += 1;
                }
                pa += PAGE_SIZE;
            }
        }
        let pools = PhysRange::new(self.vm_pools, Kcore::vm_pool_bytes());
        scrub(m, pools.base, pools.size);
        if !planted(Mutation::SkipPowerDownHeapScrub) {
            scrub(m, heap.base, heap.size);
        }
        Scrubbed { vm_pages, table_pages: pools.size / PAGE_SIZE, heap_bytes: heap.size }
    }
}

impl Kcore {
    /// Step 1 of [`Kcore::scrub_for_power_down`], also on its own so that the caller can wait
    /// for guests running on other cores to leave before the heap goes: every VM's stage-2 root
    /// is emptied and the VMID's TLB entries are invalidated on every core (the invalidation
    /// completes only once no core uses the old translations any more).
    pub fn revoke_vm_stage2s(m: &impl Machine, vms: &VmRecords) {
        for (vmid, table) in vm_tables(vms) {
            m.zero_page(table.root());
            m.clean_invalidate_to_poc(table.root(), PAGE_SIZE);
            m.publish();
            m.flush_stage2_vmid(vmid);
        }
    }
}

/// Scrubs every page of `[base, base + size)` (page-aligned) as the memory layer scrubs one:
/// zeroed, then cleaned to the point of coherency.
fn scrub(m: &impl Machine, base: u64, size: u64) {
    (base..base + size).step_by(PAGE_SIZE as usize).for_each(|pa| crate::memory::scrub(m, pa));
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::refinement::{any_sequence, refined_run, relate};
    use super::super::spec::scrub_for_power_down_spec;
    use super::*;
    use crate::machine::model::{Flush, ModelMachine};
    use crate::memory::system::{KCORE, POOLS};
    use crate::mutation::catches;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// KCore's heap in the model: four pages of KCore's slot, past its (model) image.
    pub(in crate::vm) const MODEL_HEAP: PhysRange = PhysRange::new(KCORE.base + 0x8_0000, 4 * PAGE_SIZE);
    /// The VMs' table pools in the model (as `Kcore::new` is given them in the VM tests).
    const MODEL_VM_POOLS: u64 = POOLS + (1 << 32);

    /// Stands in for what KCore's heap holds of VM `vmid`: its vCPUs' saved registers.
    pub(in crate::vm) fn plant_contexts(m: &ModelMachine, vmid: u64, secret: u64) {
        for (i, pa) in (MODEL_HEAP.base..MODEL_HEAP.end()).step_by(512).enumerate() {
            m.write_u64(pa, secret ^ vmid ^ i as u64);
        }
    }

    /// Random VM hypercall sequences (checked against the spec step by step), then the power-down
    /// scrub on both sides: the results agree, the state still abstracts to the spec's, the VMs'
    /// table pools and the heap are zero, every scrubbed range was cleaned to the point of
    /// coherency when it held zeros, and every VM's TLB entries were invalidated.
    fn power_down_refines(ops: Vec<super::super::refinement::VOp>) -> Result<(), TestCaseError> {
        let (m, k, mut s) = refined_run(&ops)?;
        // Each VM has written into every page it owns, and its vCPUs' registers are saved.
        for (&pfn, page) in &s.r.s2page {
            if let Owner::Vm(vmid) = page.owner {
                m.write_u64(pfn << 12, 0x600d_0000 ^ pfn ^ u64::from(vmid));
                s.r.flatmem.insert(pfn << 12, 0x600d_0000 ^ pfn ^ u64::from(vmid));
            }
        }
        plant_contexts(&m, 1, 0x5ec2_e7aa);
        let vms: Vec<u16> = vm_tables(&k.vms()).iter().map(|&(vmid, _)| vmid).collect();
        m.take_flushes();
        m.take_cleaned();
        let (after, expected) = scrub_for_power_down_spec(&s).unwrap();
        let scrubbed = {
            let (vms, mem) = k.lock_all();
            k.scrub_for_power_down(&m, &vms, &mem, MODEL_HEAP)
        };
        prop_assert_eq!(scrubbed.vm_pages, expected, "VM pages scrubbed");
        relate(&m, &k, &BTreeMap::new(), &after).map_err(TestCaseError::fail)?;
        let pools = MODEL_VM_POOLS..MODEL_VM_POOLS + Kcore::vm_pool_bytes();
        prop_assert!(m.words(pools).is_empty(), "a VM table pool kept data");
        prop_assert!(m.words(MODEL_HEAP.base..MODEL_HEAP.end()).is_empty(), "KCore's heap kept data");
        let cleaned = m.take_cleaned();
        prop_assert!(cleaned.iter().all(|(_, words)| words.is_empty()), "a range was cleaned before it was zero");
        let covered = |pa: u64| cleaned.iter().any(|(range, _)| range.contains(&pa) && range.contains(&(pa + 4095)));
        for (&pfn, page) in &s.r.s2page {
            if matches!(page.owner, Owner::Vm(_)) {
                prop_assert!(covered(pfn << 12), "VM page {:#x} was not cleaned to the point of coherency", pfn);
            }
        }
        prop_assert!(covered(MODEL_HEAP.base) && covered(MODEL_HEAP.end() - PAGE_SIZE), "heap not cleaned");
        let flushes = m.take_flushes();
        for vmid in vms {
            prop_assert!(flushes.contains(&Flush::Stage2Vmid { vmid }), "vm {}'s TLB entries survive", vmid);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn the_power_down_scrub_refines_its_spec(ops in any_sequence()) {
            power_down_refines(ops)?;
        }
    }

    /// The companion: a power-down that leaves the VMs' pages as they are.
    #[test]
    fn power_down_refinement_catches_unscrubbed_vm_pages() {
        catches(Mutation::SkipPowerDownVmScrub, 256, any_sequence(), power_down_refines);
    }

    /// The companion: a power-down that leaves KCore's heap (the vCPU contexts) as it is.
    #[test]
    fn power_down_refinement_catches_an_unscrubbed_heap() {
        catches(Mutation::SkipPowerDownHeapScrub, 16, any_sequence(), power_down_refines);
    }

    /// A directed case: a VM's page in the middle of a 2 MiB block the host otherwise owns, and
    /// one in a block of its own, are both found (the block skip must not skip them).
    #[test]
    fn pages_inside_host_blocks_are_found() {
        use crate::memory::pages::PageInfo;
        let crate::memory::system::System { m, mem, .. } = crate::memory::system::System::new(false);
        let k = Kcore::new(mem, MODEL_VM_POOLS, super::super::refinement::key().verifying_key());
        for (pfn, vmid) in [(0x48123, 2), (0x7ffff, 3)] {
            k.mem.lock().db.set(pfn << 12, PageInfo { owner: Owner::Vm(vmid), count: 0, gfn: 5 });
            m.write_u64(pfn << 12, 0xfeed);
        }
        m.write_u64(0x4820_0000, 0xbeef);
        let scrubbed = {
            let (vms, mem) = k.lock_all();
            k.scrub_for_power_down(&m, &vms, &mem, MODEL_HEAP)
        };
        assert_eq!(scrubbed.vm_pages, 2);
        assert_eq!(m.read_u64(0x48123 << 12), 0);
        assert_eq!(m.read_u64(0x7ffff << 12), 0);
        assert_eq!(m.read_u64(0x4820_0000), 0xbeef, "a host page was scrubbed");
    }
}

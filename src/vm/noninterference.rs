//! Noninterference through the VM hypercalls: two machines that differ only in what VM 1 keeps in
//! its private pages run the same random hypercall sequences (boots, runs with page offers,
//! shares by other VMs, teardown, the host writing its own pages). Every result the host gets,
//! and every page the host can read (its own, or one a VM shares), must be the same in both.
//! VM 1 never shares a page here: a share is the guest's own choice to declassify.
//!
//! The host reads its pages both through the caches and, with a non-cacheable alias, straight
//! from DRAM (issue 11, finding 3); the hardware may write VM 1's dirty lines back at any time,
//! so its secrets reach DRAM as soon as it writes them.

use super::refinement::{any_sequence, key, lay_out, VOp, PROBES};
use super::*;
use crate::addr::{Ipa, IpaRange};
use crate::machine::model::ModelMachine;
use crate::memory::system::{initial_rdata, System};
use crate::mutation::{catches, Mutation};
use proptest::prelude::*;

/// A probed page as the host sees it: its frame, its record, and its words if it can read them
/// (through the caches, then in DRAM).
type PageView = (u64, Option<crate::memory::pages::PageInfo>, Option<(Vec<(u64, u64)>, Vec<(u64, u64)>)>);

/// One machine: the model memory and KCore's state.
struct World {
    m: ModelMachine,
    k: Kcore,
}

impl World {
    fn new() -> World {
        let System { m, mem, .. } = System::new(false);
        lay_out(&m, &mut initial_rdata(false));
        let k = Kcore::new(mem, crate::memory::system::POOLS + (1 << 32), key().verifying_key());
        World { m, k }
    }

    /// Carries out one operation and says what the host sees of it.
    fn apply(&mut self, op: VOp) -> String {
        let (m, k) = (&self.m, &mut self.k);
        match op {
            // The host's numbers pass the trap edge (`host_vm` and friends) as KServ's would.
            VOp::RegisterVm(b, z) => {
                format!("{:?}", IpaRange::new(b, z).ok_or(VmError::BadArgument).and_then(|ram| k.register_vm(m, ram)))
            }
            VOp::RegisterVcpu(v, c) => format!("{:?}", host_vm(v).and_then(|vm| k.register_vcpu(vm, host_vcpu(c)?))),
            VOp::SetBootInfo(v, g, z) => format!("{:?}", host_vm(v).and_then(|vm| k.set_boot_info(vm, Ipa(g), z))),
            VOp::Remap(v, i, p) => format!("{:?}", host_vm(v).and_then(|vm| k.remap_vm_image(vm, i, host_pfn(p)?))),
            VOp::Verify(v) => format!("{:?}", host_vm(v).and_then(|vm| k.verify_vm_image(m, vm))),
            VOp::Run(v, c, answer, exit) => {
                match host_vm(v).and_then(|vm| k.vcpu_run_prepare(m, vm, host_vcpu(c)?, answer)) {
                    Ok(mut ticket) => {
                        ticket.ctx.pending = exit;
                        k.vcpu_run_finish(ticket);
                        "ran".into()
                    }
                    Err(e) => format!("{e:?}"),
                }
            }
            // VM 1 keeps its pages to itself.
            VOp::Share(1, ..) => "skipped".into(),
            VOp::Share(v, g, a, z) => {
                format!("{:?}", host_vm(v.into()).and_then(|vm| k.guest_share(m, vm, g, Ipa(a), z)))
            }
            VOp::CpuOn(v, t, e) => {
                if let (Ok(vm), Some(target)) = (host_vm(v.into()), VcpuId::new(t & 0xff)) {
                    k.guest_cpu_on(vm, target, Ipa(e), 7);
                }
                String::new()
            }
            VOp::Clear(v, b, z) => format!("{:?}", host_vm(v).and_then(|vm| k.clear_vm_range(m, vm, host_pa(b)?, z))),
            VOp::Ioremap(v, g, p, z) => {
                format!("{:?}", host_vm(v).and_then(|vm| k.ioremap(m, vm, Ipa(g), host_pa(p)?, z)))
            }
            VOp::SetConsole(v, page) => format!("{:?}", host_vm(v).and_then(|vm| k.set_console(vm, Ipa(page)))),
            VOp::Cntvoff(v, o) => format!("{:?}", host_vm(v).and_then(|vm| k.set_cntvoff(vm, o))),
            VOp::PowerOff(v) => format!("{:?}", host_vm(v).and_then(|vm| k.power_off(vm))),
            VOp::Destroy(v) => format!("{:?}", host_vm(v).and_then(|vm| k.destroy(m, vm))),
            VOp::LayOut(..) => unreachable!("only the concurrency tests' setup lays out a second image"),
            VOp::HostStore(pa, value) => {
                // A real access: through the host's stage-2, faulting the page in first.
                let mapped = k.mem.lock().host_s2.walk(m, pa).is_some() || k.mem.lock().map_page_host(m, pa).is_ok();
                if mapped {
                    m.write_u64(pa, value);
                }
                format!("{mapped}")
            }
        }
    }

    /// VM 1 writes its secret into the first word of each private page it owns.
    fn guest_writes_secret(&mut self, secret: u64) {
        for pfn in PROBES {
            if self.k.mem.lock().db.get(pfn << 12).is_some_and(|p| p.owner == Owner::Vm(1) && p.count == 0) {
                self.m.write_u64(pfn << 12, secret ^ pfn);
            }
        }
        self.m.write_back_all();
    }

    /// What the host can read: the record of every probed page, and the contents of those its
    /// stage-2 maps or would map on a fault.
    fn host_view(&self) -> Vec<PageView> {
        PROBES
            .iter()
            .map(|&pfn| {
                let page = self.k.mem.lock().db.get(pfn << 12);
                let pa = pfn << 12;
                let readable = self.k.mem.lock().host_s2.walk(&self.m, pa).is_some()
                    || page.is_some_and(|p| p.owner == Owner::Host || p.count > 0);
                let range = pfn << 12..(pfn + 1) << 12;
                let words = readable.then(|| {
                    (self.m.words(range.clone()).into_iter().collect(), self.m.dram_words(range).into_iter().collect())
                });
                (pfn, page, words)
            })
            .collect()
    }
}

fn host_cannot_tell(ops: &[VOp]) -> Result<(), TestCaseError> {
    let (mut a, mut b) = (World::new(), World::new());
    for &op in ops {
        // The guest writes its secrets, and they reach DRAM, before each operation.
        a.guest_writes_secret(0x5ec2_e7aa);
        b.guest_writes_secret(0x5ec2_e7bb);
        let (seen_a, seen_b) = (a.apply(op), b.apply(op));
        prop_assert_eq!(&seen_a, &seen_b, "the host's results differ after {:?}", op);
        prop_assert!(a.host_view() == b.host_view(), "the host can tell the secrets apart after {:?}", op);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_host_cannot_read_a_vm_through_the_hypercalls(ops in any_sequence()) {
        host_cannot_tell(&ops)?;
    }
}

/// The companion: a teardown that hands pages back unscrubbed leaks the secret.
#[test]
fn noninterference_catches_an_unscrubbed_teardown() {
    catches(Mutation::SkipScrub, 512, any_sequence(), |ops| host_cannot_tell(&ops));
}

/// The companion: a page taken from the host without unmapping it there stays readable.
#[test]
fn noninterference_catches_a_forgotten_clear_pfn_host() {
    catches(Mutation::SkipClearPfnHost, 512, any_sequence(), |ops| host_cannot_tell(&ops));
}

/// Noninterference across a reset: the twin machines run the same sequence while VM 1 keeps a
/// different secret in its private pages and its vCPU contexts (in KCore's heap), then power
/// down. Every word of memory outside KCore's image must then be the same in both, through the
/// caches and in DRAM (a reset may drop or write back dirty lines): that is all the next boot's
/// host could read.
fn reset_cannot_tell(ops: &[VOp]) -> Result<(), TestCaseError> {
    use super::power_down::tests::{plant_contexts, MODEL_HEAP};
    let (mut a, mut b) = (World::new(), World::new());
    for &op in ops {
        let (seen_a, seen_b) = (a.apply(op), b.apply(op));
        prop_assert_eq!(&seen_a, &seen_b, "the host's results differ after {:?}", op);
        a.guest_writes_secret(0x5ec2_e7aa);
        b.guest_writes_secret(0x5ec2_e7bb);
    }
    if a.k.vms().get(VmId::new(1).unwrap()).is_some() {
        plant_contexts(&a.m, 1, 0x5ec2_e7aa);
        plant_contexts(&b.m, 1, 0x5ec2_e7bb);
    }
    let (scrubbed_a, scrubbed_b) = (
        {
            let (vms, mem) = a.k.lock_all();
            a.k.scrub_for_power_down(&a.m, &vms, &mem, MODEL_HEAP)
        },
        {
            let (vms, mem) = b.k.lock_all();
            b.k.scrub_for_power_down(&b.m, &vms, &mem, MODEL_HEAP)
        },
    );
    prop_assert_eq!(scrubbed_a, scrubbed_b);
    // KCore's image: its (model) slot up to the heap. Nothing in the model writes there.
    let image = crate::memory::system::KCORE.base..MODEL_HEAP.base;
    let outside_image = |words: std::collections::BTreeMap<u64, u64>| -> Vec<(u64, u64)> {
        words.into_iter().filter(|(pa, _)| !image.contains(pa)).collect()
    };
    let cached = |w: &World| outside_image(w.m.words(0..u64::MAX));
    let dram = |w: &World| outside_image(w.m.dram_words(0..u64::MAX));
    prop_assert!(cached(&a) == cached(&b), "a VM's secret survives the power-down");
    prop_assert!(dram(&a) == dram(&b), "a VM's secret survives the power-down in DRAM");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn nothing_of_a_vm_survives_a_power_down(ops in any_sequence()) {
        reset_cannot_tell(&ops)?;
    }
}

/// The companion: a power-down that leaves the VMs' pages as they are.
#[test]
fn power_down_noninterference_catches_unscrubbed_vm_pages() {
    catches(Mutation::SkipPowerDownVmScrub, 256, any_sequence(), |ops| reset_cannot_tell(&ops));
}

/// The companion: a power-down that leaves the vCPU contexts in KCore's heap.
#[test]
fn power_down_noninterference_catches_an_unscrubbed_heap() {
    catches(Mutation::SkipPowerDownHeapScrub, 256, any_sequence(), |ops| reset_cannot_tell(&ops));
}

/// The companion: a teardown that zeroes a page only in the cache leaves the secret in DRAM,
/// where a non-cacheable alias of the host reads it.
#[test]
fn noninterference_catches_a_scrub_left_in_the_cache() {
    catches(Mutation::SkipCleanAfterScrub, 512, any_sequence(), |ops| host_cannot_tell(&ops));
}

/// The companion: a power-down scrub whose zeros stay in the cache leaves the secret in DRAM.
#[test]
fn power_down_noninterference_catches_a_scrub_left_in_the_cache() {
    catches(Mutation::SkipCleanAfterScrub, 256, any_sequence(), |ops| reset_cannot_tell(&ops));
}

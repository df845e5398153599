//! A model of the machine for host tests: physical memory (DRAM) as a sparse map of words, a
//! write-back data cache in front of it, and a log of the TLB maintenance the layers asked for.
//! The page-table and memory layers run on it unchanged, so their specs and property tests run
//! under `cargo test`.
//!
//! Two views of memory, as on the hardware (docs/cache-coherency.md):
//! - the *coherent view* ([`Machine::read_u64`], [`ModelMachine::words`]): what KCore, the host
//!   and a guest read through cacheable mappings, dirty lines first;
//! - the *DRAM view* ([`ModelMachine::dram_words`]): what a non-cacheable alias reads, such as a
//!   guest with its MMU off, the host through a non-cacheable stage-1 mapping, or a DMA device.
//!
//! Each core has a TLB of stage-2 translations by VMID ([`ModelMachine::tlb_translate`]),
//! filled on a walk by whoever models an access and dropped only by the TLB maintenance calls,
//! which are broadcast to every core (inner shareable, as `src/machine/aarch64/tlb.rs` issues
//! them): so an access on one core after another core's unmap sees a stale entry exactly when
//! KCore left out the invalidation.
//!
//! The SMMU has a TLB of its own, of stage-2 translations by SMMU VMID
//! ([`ModelMachine::smmu_tlb_translate`]), filled by whoever models a device's access (a walk of
//! the stream's SMMU table, `memory::system`) and dropped only by `smmu_flush_ipa` and
//! `smmu_flush_vmid` (CMD_TLBI_* then CMD_SYNC on the hardware): a device's access after an
//! unmap reaches the page through a stale entry exactly when KCore left out the invalidation.
//!
//! The cache holds dirty lines only (a clean line equals memory). It never evicts on its own:
//! [`ModelMachine::write_back_all`] is the hardware evicting lines whenever it likes, which tests
//! call to take the worst case, and `clean_invalidate_to_poc` is `DC CIVAC` over a range.

use super::{Machine, PAGE_SIZE};
use std::collections::BTreeMap;

/// One TLB maintenance request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    Stage2Ipa { vmid: u16, ipa: u64 },
    Stage2Vmid { vmid: u16 },
    El2All,
    SmmuIpa { vmid: u16, ipa: u64 },
    SmmuVmid { vmid: u16 },
}

/// The cores the model machine has TLBs for.
pub const CORES: usize = 4;

/// A stage-2 translation cached in a TLB: a leaf's input range and the output it starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    pub input: u64,
    pub size: u64,
    pub output: u64,
}

impl TlbEntry {
    fn covers(&self, ipa: u64) -> bool {
        ipa.wrapping_sub(self.input) < self.size
    }
}

/// A range cleaned to the point of coherency, with the non-zero words it held then.
pub type Cleaned = (std::ops::Range<u64>, BTreeMap<u64, u64>);

/// A cache line: 64 bytes, as on the Cortex-A72 and under QEMU.
const LINE: u64 = 64;
const LINE_WORDS: usize = (LINE / 8) as usize;

/// Memory is zero wherever it was never written.
/// A `RefCell` that threads may share (`vm::concurrency` runs several against one machine):
/// a read-write lock with `RefCell`'s names. Those tests run one thread at a time, by turns, so
/// it never waits; a borrow that `RefCell` would refuse deadlocks instead.
#[derive(Default)]
struct Shared<T>(std::sync::RwLock<T>);

impl<T> Shared<T> {
    fn borrow(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.0.read().unwrap()
    }

    fn borrow_mut(&self) -> std::sync::RwLockWriteGuard<'_, T> {
        self.0.write().unwrap()
    }
}

#[derive(Default)]
pub struct ModelMachine {
    /// DRAM, by word address; absent words are zero.
    dram: Shared<BTreeMap<u64, u64>>,
    /// Dirty cache lines, by line address.
    dirty: Shared<BTreeMap<u64, [u64; LINE_WORDS]>>,
    flushes: Shared<Vec<Flush>>,
    /// Ranges cleaned to the point of coherency, oldest first, each with the words it held at
    /// that moment (what DRAM then holds).
    cleaned: Shared<Vec<Cleaned>>,
    /// Lines the host has allocated (read or written through its stage-2) since they were last
    /// cleaned and invalidated, clean or dirty: the lines a late write-back or a stale read of
    /// the host's could come from. The hardware allocates lines only through a mapping
    /// (docs/cache-coherency.md, rule 2), so [`ModelMachine::host_access`] is called only for an
    /// access the host's stage-2 allows.
    host_lines: Shared<std::collections::BTreeSet<u64>>,
    /// Each core's TLB: cached stage-2 translations by (core, VMID).
    tlbs: Shared<BTreeMap<(usize, u16), Vec<TlbEntry>>>,
    /// The SMMU's TLB: cached stage-2 translations by SMMU VMID.
    smmu_tlb: Shared<BTreeMap<u16, Vec<TlbEntry>>>,
}

fn line_of(pa: u64) -> (u64, usize) {
    (pa & !(LINE - 1), ((pa % LINE) / 8) as usize)
}

fn store(map: &mut BTreeMap<u64, u64>, pa: u64, value: u64) {
    if value == 0 {
        map.remove(&pa);
    } else {
        map.insert(pa, value);
    }
}

impl ModelMachine {
    pub fn new() -> ModelMachine {
        ModelMachine::default()
    }

    /// Every non-zero word in `range` of the coherent view (dirty lines over DRAM), by address:
    /// what any cacheable access reads.
    pub fn words(&self, range: std::ops::Range<u64>) -> BTreeMap<u64, u64> {
        let mut words = self.dram_words(range.clone());
        let first = range.start & !(LINE - 1);
        for (&line, data) in self.dirty.borrow().range(first..range.end) {
            for (i, &value) in data.iter().enumerate() {
                let pa = line + 8 * i as u64;
                if range.contains(&pa) {
                    store(&mut words, pa, value);
                }
            }
        }
        words
    }

    /// Every non-zero word of DRAM in `range`: what a non-cacheable view reads (a guest with its
    /// MMU off, a non-cacheable alias, a device's DMA).
    pub fn dram_words(&self, range: std::ops::Range<u64>) -> BTreeMap<u64, u64> {
        self.dram.borrow().range(range).map(|(&a, &v)| (a, v)).collect()
    }

    /// A non-cacheable store: straight to DRAM, leaving any cached copy of the line as it is
    /// (mismatched attributes: the two views then disagree).
    pub fn dram_write_u64(&self, pa: u64, value: u64) {
        assert!(pa.is_multiple_of(8), "unaligned model write at {pa:#x}");
        store(&mut self.dram.borrow_mut(), pa, value);
    }

    /// The hardware evicts every dirty line, as it may at any moment: DRAM catches up with the
    /// coherent view.
    pub fn write_back_all(&self) {
        let lines: Vec<u64> = self.dirty.borrow().keys().copied().collect();
        lines.into_iter().for_each(|line| self.write_back(line));
    }

    fn write_back(&self, line: u64) {
        if let Some(data) = self.dirty.borrow_mut().remove(&line) {
            let mut dram = self.dram.borrow_mut();
            for (i, &value) in data.iter().enumerate() {
                store(&mut dram, line + 8 * i as u64, value);
            }
        }
    }

    /// The ranges cleaned to the point of coherency so far, with the words each held when it
    /// was cleaned; clears the log.
    pub fn take_cleaned(&self) -> Vec<Cleaned> {
        std::mem::take(&mut self.cleaned.borrow_mut())
    }

    /// The host accessed `pa` through its stage-2: from now on it may hold the line (until the
    /// line is cleaned and invalidated).
    pub fn host_access(&self, pa: u64) {
        self.host_lines.borrow_mut().insert(pa & !(LINE - 1));
    }

    /// Whether any line of `range` may be the host's (allocated by its accesses and not cleaned
    /// and invalidated since).
    pub fn host_may_hold_lines(&self, range: std::ops::Range<u64>) -> bool {
        self.host_lines.borrow().range(range.start & !(LINE - 1)..range.end).next().is_some()
    }

    /// The output address `core`'s TLB holds for `ipa` under `vmid`, if it holds an entry.
    pub fn tlb_translate(&self, core: usize, vmid: u16, ipa: u64) -> Option<u64> {
        assert!(core < CORES, "the model has no core {core}");
        let tlbs = self.tlbs.borrow();
        let entry = tlbs.get(&(core, vmid))?.iter().find(|e| e.covers(ipa))?;
        Some(entry.output + (ipa - entry.input))
    }

    /// `core`'s walk under `vmid` found `entry`: its TLB may keep it until an invalidation.
    pub fn tlb_fill(&self, core: usize, vmid: u16, entry: TlbEntry) {
        assert!(core < CORES, "the model has no core {core}");
        self.tlbs.borrow_mut().entry((core, vmid)).or_default().push(entry);
    }

    /// Every entry any core's TLB holds under `vmid`, with its core.
    pub fn tlb_entries(&self, vmid: u16) -> Vec<(usize, TlbEntry)> {
        let tlbs = self.tlbs.borrow();
        tlbs.iter()
            .filter(|((_, v), _)| *v == vmid)
            .flat_map(|(&(core, _), es)| es.iter().map(move |&e| (core, e)))
            .collect()
    }

    /// The output address the SMMU's TLB holds for `iova` under SMMU VMID `vmid`, if it holds
    /// an entry.
    pub fn smmu_tlb_translate(&self, vmid: u16, iova: u64) -> Option<u64> {
        let tlb = self.smmu_tlb.borrow();
        let entry = tlb.get(&vmid)?.iter().find(|e| e.covers(iova))?;
        Some(entry.output + (iova - entry.input))
    }

    /// The SMMU's walk of SMMU VMID `vmid`'s table found `entry`: its TLB may keep it until an
    /// invalidation.
    pub fn smmu_tlb_fill(&self, vmid: u16, entry: TlbEntry) {
        self.smmu_tlb.borrow_mut().entry(vmid).or_default().push(entry);
    }

    /// Every entry the SMMU's TLB holds, with its SMMU VMID.
    pub fn smmu_tlb_entries(&self) -> Vec<(u16, TlbEntry)> {
        let tlb = self.smmu_tlb.borrow();
        tlb.iter().flat_map(|(&vmid, es)| es.iter().map(move |&e| (vmid, e))).collect()
    }

    /// The TLB maintenance done so far, oldest first; clears the log.
    pub fn take_flushes(&self) -> Vec<Flush> {
        std::mem::take(&mut self.flushes.borrow_mut())
    }
}

impl Machine for ModelMachine {
    fn read_u64(&self, pa: u64) -> u64 {
        assert!(pa.is_multiple_of(8), "unaligned model read at {pa:#x}");
        let (line, word) = line_of(pa);
        match self.dirty.borrow().get(&line) {
            Some(data) => data[word],
            None => self.dram.borrow().get(&pa).copied().unwrap_or(0),
        }
    }

    fn write_u64(&self, pa: u64, value: u64) {
        assert!(pa.is_multiple_of(8), "unaligned model write at {pa:#x}");
        let (line, word) = line_of(pa);
        let mut dirty = self.dirty.borrow_mut();
        let data = dirty.entry(line).or_insert_with(|| {
            // A line fill: the rest of the line comes from DRAM.
            let dram = self.dram.borrow();
            std::array::from_fn(|i| dram.get(&(line + 8 * i as u64)).copied().unwrap_or(0))
        });
        data[word] = value;
    }

    fn zero_page(&self, pa: u64) {
        assert!(pa.is_multiple_of(PAGE_SIZE));
        let mut dirty = self.dirty.borrow_mut();
        for line in (pa..pa + PAGE_SIZE).step_by(LINE as usize) {
            dirty.insert(line, [0; LINE_WORDS]);
        }
    }

    fn clean_invalidate_to_poc(&self, pa: u64, len: u64) {
        let range = pa..pa + len;
        self.cleaned.borrow_mut().push((range.clone(), self.words(range)));
        for line in (pa & !(LINE - 1)..pa + len).step_by(LINE as usize) {
            self.write_back(line);
            self.host_lines.borrow_mut().remove(&line);
        }
    }

    /// Broadcast: every core drops its entries of `vmid` that translate `ipa` (a block's too).
    fn flush_stage2_ipa(&self, vmid: u16, ipa: u64) {
        self.flushes.borrow_mut().push(Flush::Stage2Ipa { vmid, ipa });
        for ((_, v), entries) in self.tlbs.borrow_mut().iter_mut() {
            if *v == vmid {
                entries.retain(|e| !e.covers(ipa));
            }
        }
    }

    /// Broadcast: every core drops every entry of `vmid`.
    fn flush_stage2_vmid(&self, vmid: u16) {
        self.flushes.borrow_mut().push(Flush::Stage2Vmid { vmid });
        self.tlbs.borrow_mut().retain(|(_, v), _| *v != vmid);
    }

    fn flush_el2_all(&self) {
        self.flushes.borrow_mut().push(Flush::El2All);
    }

    /// The SMMU drops its entries of `vmid` that translate `ipa` (a block's too), and the
    /// CMD_SYNC has completed when this returns.
    fn smmu_flush_ipa(&self, vmid: u16, ipa: u64) {
        self.flushes.borrow_mut().push(Flush::SmmuIpa { vmid, ipa });
        if let Some(entries) = self.smmu_tlb.borrow_mut().get_mut(&vmid) {
            entries.retain(|e| !e.covers(ipa));
        }
    }

    /// The SMMU drops every entry of `vmid`.
    fn smmu_flush_vmid(&self, vmid: u16) {
        self.flushes.borrow_mut().push(Flush::SmmuVmid { vmid });
        self.smmu_tlb.borrow_mut().remove(&vmid);
    }

    fn publish(&self) {}

    /// The portable code: the CPU's instructions are checked on the target (`aarch64::sha256_instructions`).
    fn sha256_blocks(&self, state: &mut [u32; 8], blocks: &[[u8; 64]]) {
        super::sha256::compress_portable(state, blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dram_view_lags_until_a_clean_and_invalidate() {
        let m = ModelMachine::new();
        m.dram_write_u64(0x1008, 5);
        m.write_u64(0x1000, 7);
        // The line was filled from DRAM: both words in the coherent view, only one in DRAM.
        assert_eq!(m.words(0x1000..0x2000), BTreeMap::from([(0x1000, 7), (0x1008, 5)]));
        assert_eq!(m.dram_words(0x1000..0x2000), BTreeMap::from([(0x1008, 5)]));
        // A non-cacheable store under a dirty line is lost to the coherent view...
        m.dram_write_u64(0x1010, 9);
        assert_eq!(m.read_u64(0x1010), 0);
        // ...and overwritten when the line is written back.
        m.zero_page(0x1000);
        assert_eq!(m.words(0x1000..0x2000), BTreeMap::new());
        assert_eq!(m.dram_words(0x1000..0x2000).len(), 2);
        m.clean_invalidate_page(0x1000);
        assert_eq!(m.dram_words(0x1000..0x2000), BTreeMap::new());
    }

    #[test]
    fn an_invalidation_on_one_core_drops_every_core_s_entry() {
        let m = ModelMachine::new();
        let block = TlbEntry { input: 0x4000_0000, size: 2 << 20, output: 0x4000_0000 };
        let page = TlbEntry { input: 0x4020_0000, size: 4096, output: 0x4020_0000 };
        m.tlb_fill(1, 0, block);
        m.tlb_fill(3, 0, page);
        m.tlb_fill(2, 5, page);
        assert_eq!(m.tlb_translate(1, 0, 0x4012_3008), Some(0x4012_3008));
        assert_eq!(m.tlb_translate(0, 0, 0x4012_3008), None, "core 0 never walked");
        // By an address inside the block: the block goes, on core 1 as on any other.
        m.flush_stage2_ipa(0, 0x4010_0000);
        assert_eq!(m.tlb_translate(1, 0, 0x4012_3008), None);
        assert_eq!(m.tlb_translate(3, 0, 0x4020_0000), Some(0x4020_0000), "another page stays");
        m.flush_stage2_vmid(0);
        assert_eq!(m.tlb_entries(0), vec![]);
        assert_eq!(m.tlb_entries(5), vec![(2, page)], "another VMID stays");
    }

    #[test]
    fn the_smmu_tlb_is_apart_from_the_cores_and_dropped_only_by_smmu_invalidations() {
        let m = ModelMachine::new();
        let block = TlbEntry { input: 0x4000_0000, size: 2 << 20, output: 0x4000_0000 };
        let page = TlbEntry { input: 0x4020_0000, size: 4096, output: 0x4020_0000 };
        m.smmu_tlb_fill(0, block);
        m.smmu_tlb_fill(0, page);
        m.smmu_tlb_fill(4, page);
        // The CPU's maintenance leaves the SMMU's entries alone, even under the same number.
        m.flush_stage2_ipa(0, 0x4010_0000);
        m.flush_stage2_vmid(0);
        assert_eq!(m.smmu_tlb_translate(0, 0x4012_3008), Some(0x4012_3008));
        m.smmu_flush_ipa(0, 0x4010_0000);
        assert_eq!(m.smmu_tlb_translate(0, 0x4012_3008), None, "the block went");
        assert_eq!(m.smmu_tlb_translate(0, 0x4020_0010), Some(0x4020_0010), "another page stays");
        m.smmu_flush_vmid(0);
        assert_eq!(m.smmu_tlb_entries(), vec![(4, page)], "another SMMU VMID stays");
        assert_eq!(
            m.take_flushes().split_off(2),
            vec![Flush::SmmuIpa { vmid: 0, ipa: 0x4010_0000 }, Flush::SmmuVmid { vmid: 0 }]
        );
    }
}

//! A model of the machine for host tests: physical memory as a sparse map of words, and a log of
//! the TLB maintenance the layers asked for. The page-table and memory layers run on it
//! unchanged, so their specs and property tests run under `cargo test`.

use super::{Machine, PAGE_SIZE};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// One TLB maintenance request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    Stage2Ipa { vmid: u16, ipa: u64 },
    Stage2Vmid { vmid: u16 },
    El2All,
}

/// A range cleaned to the point of coherency, with the non-zero words it held then.
pub type Cleaned = (std::ops::Range<u64>, BTreeMap<u64, u64>);

/// Memory is zero wherever it was never written.
#[derive(Default)]
pub struct ModelMachine {
    memory: RefCell<BTreeMap<u64, u64>>,
    flushes: RefCell<Vec<Flush>>,
    /// Ranges cleaned to the point of coherency, oldest first, each with the memory's words in
    /// it at that moment (what DRAM then holds).
    cleaned: RefCell<Vec<Cleaned>>,
}

impl ModelMachine {
    pub fn new() -> ModelMachine {
        ModelMachine::default()
    }

    /// Every non-zero word of memory in `range`, by address.
    pub fn words(&self, range: std::ops::Range<u64>) -> BTreeMap<u64, u64> {
        self.memory.borrow().range(range).map(|(&a, &v)| (a, v)).collect()
    }

    /// The ranges cleaned to the point of coherency so far, with the words each held when it
    /// was cleaned; clears the log.
    pub fn take_cleaned(&self) -> Vec<Cleaned> {
        std::mem::take(&mut self.cleaned.borrow_mut())
    }

    /// The TLB maintenance done so far, oldest first; clears the log.
    pub fn take_flushes(&self) -> Vec<Flush> {
        std::mem::take(&mut self.flushes.borrow_mut())
    }
}

impl Machine for ModelMachine {
    fn read_u64(&self, pa: u64) -> u64 {
        assert!(pa.is_multiple_of(8), "unaligned model read at {pa:#x}");
        self.memory.borrow().get(&pa).copied().unwrap_or(0)
    }

    fn write_u64(&self, pa: u64, value: u64) {
        assert!(pa.is_multiple_of(8), "unaligned model write at {pa:#x}");
        if value == 0 {
            self.memory.borrow_mut().remove(&pa);
        } else {
            self.memory.borrow_mut().insert(pa, value);
        }
    }

    fn zero_page(&self, pa: u64) {
        assert!(pa.is_multiple_of(PAGE_SIZE));
        let mut memory = self.memory.borrow_mut();
        let words: Vec<u64> = memory.range(pa..pa + PAGE_SIZE).map(|(&a, _)| a).collect();
        words.into_iter().for_each(|a| {
            memory.remove(&a);
        });
    }

    fn clean_invalidate_to_poc(&self, pa: u64, len: u64) {
        let range = pa..pa + len;
        let words = self.words(range.clone());
        self.cleaned.borrow_mut().push((range, words));
    }

    fn flush_stage2_ipa(&self, vmid: u16, ipa: u64) {
        self.flushes.borrow_mut().push(Flush::Stage2Ipa { vmid, ipa });
    }

    fn flush_stage2_vmid(&self, vmid: u16) {
        self.flushes.borrow_mut().push(Flush::Stage2Vmid { vmid });
    }

    fn flush_el2_all(&self) {
        self.flushes.borrow_mut().push(Flush::El2All);
    }

    fn publish(&self) {}
}

//! MemRegion and PageIndex (SeKVM layers 13-14): RAM as the DTB describes it, and the index of
//! every 4 KiB page of it in the ownership table. An address outside RAM has no index: it is
//! owned by nobody (MMIO).

use crate::machine::PAGE_SIZE;
use alloc::vec::Vec;
use corevisor_boards::PhysRange;

/// RAM regions, sorted, each with the index of its first page.
#[derive(Clone, Debug)]
pub struct MemRegions {
    regions: Vec<(PhysRange, usize)>,
    pages: usize,
}

impl MemRegions {
    /// The regions of `ram`, trimmed to whole pages, sorted, overlaps refused.
    pub fn new(ram: &[PhysRange]) -> Result<MemRegions, &'static str> {
        let mut sorted: Vec<PhysRange> = ram
            .iter()
            .map(|r| {
                let base = r.base.next_multiple_of(PAGE_SIZE);
                PhysRange::new(base, (r.end() & !(PAGE_SIZE - 1)).saturating_sub(base))
            })
            .filter(|r| r.size > 0)
            .collect();
        sorted.sort_by_key(|r| r.base);
        if sorted.windows(2).any(|w| w[0].end() > w[1].base) {
            return Err("overlapping RAM regions");
        }
        let mut pages = 0;
        let regions = sorted
            .into_iter()
            .map(|r| {
                let first = pages;
                pages += (r.size / PAGE_SIZE) as usize;
                (r, first)
            })
            .collect();
        Ok(MemRegions { regions, pages })
    }

    /// The region holding `pa` (SeKVM `mem_region_search`).
    pub fn search(&self, pa: u64) -> Option<PhysRange> {
        self.regions.iter().find(|(r, _)| r.contains(pa)).map(|(r, _)| *r)
    }

    /// The ownership-table index of the page holding `pa` (SeKVM `get_s2_page_index`).
    pub fn page_index(&self, pa: u64) -> Option<usize> {
        self.regions.iter().find(|(r, _)| r.contains(pa)).map(|(r, first)| first + ((pa - r.base) / PAGE_SIZE) as usize)
    }

    /// Whether all of `[base, base + size)` is RAM (inside one region).
    pub fn all_ram(&self, base: u64, size: u64) -> bool {
        self.search(base).is_some_and(|r| base + size <= r.end())
    }

    /// Whether none of `[base, base + size)` is RAM.
    pub fn no_ram(&self, base: u64, size: u64) -> bool {
        !self.regions.iter().any(|(r, _)| base < r.end() && r.base < base + size)
    }

    /// Pages of RAM in all.
    pub fn pages(&self) -> usize {
        self.pages
    }

    pub fn iter(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.regions.iter().map(|(r, _)| *r)
    }

    /// The end of the highest region.
    pub fn end(&self) -> u64 {
        self.regions.last().map_or(0, |(r, _)| r.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_run_across_regions_and_miss_outside_ram() {
        let r = MemRegions::new(&[PhysRange::new(0x8000_0000, 0x2000), PhysRange::new(0x4000_0000, 0x3000)]).unwrap();
        assert_eq!(r.pages(), 5);
        assert_eq!(r.page_index(0x4000_0000), Some(0));
        assert_eq!(r.page_index(0x4000_2fff), Some(2));
        assert_eq!(r.page_index(0x8000_1000), Some(4));
        assert_eq!(r.page_index(0x4000_3000), None);
        assert!(r.all_ram(0x4000_0000, 0x3000) && !r.all_ram(0x4000_0000, 0x4000));
        assert!(r.no_ram(0x0900_0000, 0x1000) && !r.no_ram(0x3fff_f000, 0x2000));
    }

    #[test]
    fn overlapping_regions_are_refused() {
        assert!(MemRegions::new(&[PhysRange::new(0, 0x2000), PhysRange::new(0x1000, 0x2000)]).is_err());
    }
}

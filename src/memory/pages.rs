//! PageManager (SeKVM layer 15): the owner, share count and gfn of every page of RAM, plus
//! per-2 MiB and per-1 GiB counts of pages the host does not own, so that "may the host map this
//! whole block" is answered in constant time.

use super::regions::MemRegions;
use crate::machine::PAGE_SIZE;
use alloc::vec;
use alloc::vec::Vec;
use corevisor_boards::PhysRange;

/// Who owns a page of RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Host,
    KCore,
    Vm(u16),
}

impl Owner {
    fn encode(self) -> u16 {
        match self {
            Owner::Host => 0,
            Owner::KCore => 1,
            Owner::Vm(vmid) => 2 + vmid,
        }
    }
    fn decode(raw: u16) -> Owner {
        match raw {
            0 => Owner::Host,
            1 => Owner::KCore,
            n => Owner::Vm(n - 2),
        }
    }
}

/// One page's record: owner, how many times it is shared with the host, and where its owner
/// maps it (the gfn; the identity for host pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageInfo {
    pub owner: Owner,
    pub count: u16,
    pub gfn: u64,
}

#[derive(Clone, Copy)]
struct S2Page {
    owner: u16,
    count: u16,
    gfn: u32,
}

const SHIFT_2M: u32 = 21;
const SHIFT_1G: u32 = 30;

/// The ownership table (SeKVM's `s2page` array), indexed through [`MemRegions`].
pub struct PageDb {
    regions: MemRegions,
    pages: Vec<S2Page>,
    /// Pages not owned by the host, per 2 MiB and per 1 GiB of physical address space.
    foreign_2m: Vec<u16>,
    foreign_1g: Vec<u32>,
    /// How many times [`set`](Self::set) rewrote a record: lets a caller tell that no page changed
    /// owner (sampled invariant checks). Share counts are not counted: every share call is
    /// checked anyway.
    changes: u64,
}

impl PageDb {
    /// Every page of RAM starts owned by the host, mapped at its own address.
    pub fn new(regions: MemRegions) -> PageDb {
        let mut pages = Vec::with_capacity(regions.pages());
        for r in regions.iter() {
            pages.extend((0..r.size / PAGE_SIZE).map(|i| S2Page {
                owner: 0,
                count: 0,
                gfn: ((r.base >> 12) + i) as u32,
            }));
        }
        let end = regions.end();
        PageDb {
            foreign_2m: vec![0; (end >> SHIFT_2M) as usize + 1],
            foreign_1g: vec![0; (end >> SHIFT_1G) as usize + 1],
            regions,
            pages,
            changes: 0,
        }
    }

    /// How many times [`set`](Self::set) has rewritten a record.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// How many pages of RAM the host owns.
    pub fn host_pages(&self) -> u64 {
        self.pages.len() as u64 - self.foreign_1g.iter().map(|&n| u64::from(n)).sum::<u64>()
    }

    pub fn regions(&self) -> &MemRegions {
        &self.regions
    }

    /// The record of the page at `pa`; `None` outside RAM (SeKVM owner INVALID).
    pub fn get(&self, pa: u64) -> Option<PageInfo> {
        let page = self.pages[self.regions.page_index(pa)?];
        Some(PageInfo { owner: Owner::decode(page.owner), count: page.count, gfn: page.gfn as u64 })
    }

    /// Rewrites the record of the page at `pa`, which must be RAM (SeKVM `set_pfn_owner`,
    /// `set_pfn_count`, `set_pfn_map` in one step).
    pub fn set(&mut self, pa: u64, info: PageInfo) {
        let index = self.regions.page_index(pa).expect("set() on a page of RAM");
        self.changes += 1;
        let was_host = self.pages[index].owner == 0;
        let is_host = info.owner == Owner::Host;
        self.pages[index] = S2Page { owner: info.owner.encode(), count: info.count, gfn: info.gfn as u32 };
        if was_host != is_host {
            let (m, g) = ((pa >> SHIFT_2M) as usize, (pa >> SHIFT_1G) as usize);
            if is_host {
                self.foreign_2m[m] -= 1;
                self.foreign_1g[g] -= 1;
            } else {
                self.foreign_2m[m] += 1;
                self.foreign_1g[g] += 1;
            }
        }
    }

    /// The owner of the page at `pa` and its share count, to change the count in place (owner
    /// and gfn stay, so the per-block counts do too); `None` outside RAM. One index lookup for
    /// the share call's check and update.
    pub fn share_count_mut(&mut self, pa: u64) -> Option<(Owner, &mut u16)> {
        let page = &mut self.pages[self.regions.page_index(pa)?];
        Some((Owner::decode(page.owner), &mut page.count))
    }

    /// Whether every page of the aligned block `[base, base + size)` is RAM owned by the host.
    /// `size` is 4 KiB, 2 MiB or 1 GiB.
    pub fn host_owns_block(&self, base: u64, size: u64) -> bool {
        self.regions.search(base).is_some_and(|region| self.host_owns_block_in(region, base, size))
    }

    /// [`Self::host_owns_block`] for a block around a page of `region`, which the caller has
    /// found already (the host fault tries several block sizes around one page: one search).
    pub fn host_owns_block_in(&self, region: PhysRange, base: u64, size: u64) -> bool {
        if base < region.base || base + size > region.end() {
            return false;
        }
        match size {
            s if s == 1 << SHIFT_1G => self.foreign_1g[(base >> SHIFT_1G) as usize] == 0,
            s if s == 1 << SHIFT_2M => self.foreign_2m[(base >> SHIFT_2M) as usize] == 0,
            _ => self.get(base).is_some_and(|p| p.owner == Owner::Host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corevisor_boards::PhysRange;

    #[test]
    fn block_ownership_follows_page_changes() {
        let regions = MemRegions::new(&[PhysRange::new(0x4000_0000, 0x4000_0000)]).unwrap();
        let mut db = PageDb::new(regions);
        assert!(db.host_owns_block(0x4000_0000, 1 << 30));
        assert_eq!(db.get(0x4000_5000), Some(PageInfo { owner: Owner::Host, count: 0, gfn: 0x40005 }));
        db.set(0x4020_1000, PageInfo { owner: Owner::Vm(3), count: 0, gfn: 7 });
        assert!(!db.host_owns_block(0x4000_0000, 1 << 30));
        assert!(!db.host_owns_block(0x4020_0000, 2 << 20));
        assert!(db.host_owns_block(0x4000_0000, 2 << 20));
        assert!(!db.host_owns_block(0x4020_1000, 4096) && db.host_owns_block(0x4020_2000, 4096));
        db.set(0x4020_1000, PageInfo { owner: Owner::Host, count: 0, gfn: 0x40201 });
        assert!(db.host_owns_block(0x4000_0000, 1 << 30));
        assert_eq!(db.host_pages(), 1 << 18);
        db.set(0x4020_1000, PageInfo { owner: Owner::KCore, count: 0, gfn: 0x40201 });
        assert_eq!(db.host_pages(), (1 << 18) - 1);
        assert_eq!(db.get(0x0900_0000), None);
        assert!(!db.host_owns_block(0, 1 << 30));
    }
}

//! Addresses and page numbers as types, so that a guest-physical address is never used as a
//! physical one and a page number never shifted by hand. Host and guest hand KCore bare `u64`s;
//! the trap edge turns them into these, checked once (`Pfn::new`, `Pa::new`), and the layers
//! below take them as they are.
//!
//! - [`Pa`] / [`Pfn`]: a physical address / page frame, below the 40-bit output limit that every
//!   page table of KCore's can map (`page_table::descriptor::OUTPUT_LIMIT`).
//! - [`Ipa`] / [`Gfn`]: an intermediate-physical (guest-physical) address / guest page number; a
//!   principal's stage-2 translates these. The host's IPA space is the identity of its RAM.

use core::fmt;

/// log2 of the translation granule: every page of KCore's is 4 KiB.
pub const PAGE_SHIFT: u32 = 12;
/// Bytes per page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// The physical address bits KCore's page tables can output (40: 1 TiB).
pub const PA_BITS: u32 = 40;
/// One past the highest physical address KCore can map.
pub const PA_LIMIT: u64 = 1 << PA_BITS;

/// A physical address below [`PA_LIMIT`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pa(u64);

/// A physical page frame number: `Pa >> 12`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(u64);

/// An intermediate-physical (guest-physical) address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ipa(pub u64);

/// A guest page frame number: `Ipa >> 12`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gfn(pub u64);

impl Pa {
    /// `raw` if it is below [`PA_LIMIT`]; a larger value is refused, never truncated.
    pub const fn new(raw: u64) -> Option<Pa> {
        if raw < PA_LIMIT {
            Some(Pa(raw))
        } else {
            None
        }
    }
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// The frame this address lies in.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }
    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }
    /// `self + bytes`, if still below [`PA_LIMIT`].
    pub const fn checked_add(self, bytes: u64) -> Option<Pa> {
        match self.0.checked_add(bytes) {
            Some(raw) => Pa::new(raw),
            None => None,
        }
    }
}

impl Pfn {
    /// `raw` if its page lies below [`PA_LIMIT`]: `P | k << 52` would otherwise name page `P`
    /// once shifted. (Where a host's page number enters KCore: the planted bug lets any through.)
    pub fn new(raw: u64) -> Option<Pfn> {
        if raw < PA_LIMIT >> PAGE_SHIFT || crate::mutation::planted(crate::mutation::Mutation::RemapTakesAnyPfn) {
            Some(Pfn(raw))
        } else {
            None
        }
    }
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// The page's first byte.
    pub const fn pa(self) -> Pa {
        Pa(self.0 << PAGE_SHIFT)
    }
    /// The frame `pages` further on, if still below [`PA_LIMIT`].
    pub fn checked_add(self, pages: u64) -> Option<Pfn> {
        match self.0.checked_add(pages) {
            Some(raw) => Pfn::new(raw),
            None => None,
        }
    }
}

impl Ipa {
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// The guest page this address lies in.
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }
    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }
}

impl Gfn {
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// The guest page's first byte.
    pub const fn ipa(self) -> Ipa {
        Ipa(self.0 << PAGE_SHIFT)
    }
}

/// A window of guest-physical space `[base, base + size)` that does not wrap (a VM's RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpaRange {
    base: u64,
    size: u64,
}

impl IpaRange {
    /// `[base, base + size)`, if it does not wrap around.
    pub const fn new(base: u64, size: u64) -> Option<IpaRange> {
        match base.checked_add(size) {
            Some(_) => Some(IpaRange { base, size }),
            None => None,
        }
    }
    pub const fn base(self) -> u64 {
        self.base
    }
    pub const fn size(self) -> u64 {
        self.size
    }
    /// One past the last byte.
    pub const fn end(self) -> u64 {
        self.base + self.size
    }
    pub const fn contains(self, ipa: u64) -> bool {
        ipa >= self.base && ipa - self.base < self.size
    }
    /// Whether `[ipa, ipa + bytes)` lies wholly inside (false if it wraps).
    pub const fn contains_range(self, ipa: u64, bytes: u64) -> bool {
        ipa >= self.base && bytes <= self.size && ipa - self.base <= self.size - bytes
    }
    /// Whether `[base, base + size)` overlaps this window.
    pub const fn overlaps(self, base: u64, size: u64) -> bool {
        base < self.end() && self.base < base.saturating_add(size)
    }
}

macro_rules! hex_debug {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({:#x})"), self.0)
            }
        }
        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    )*};
}
hex_debug!(Pa, Pfn, Ipa, Gfn);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_addresses_convert_without_loss() {
        let pfn = Pfn::new(0x4_0123).unwrap();
        assert_eq!(pfn.pa().raw(), 0x4012_3000);
        assert_eq!(pfn.pa().pfn(), pfn);
        assert_eq!(Ipa(0x8000_1234).gfn(), Gfn(0x8_0001));
        assert_eq!(Gfn(0x8_0001).ipa(), Ipa(0x8000_1000));
    }

    #[test]
    fn numbers_beyond_the_physical_address_size_are_refused_not_truncated() {
        assert!(Pfn::new((PA_LIMIT >> PAGE_SHIFT) - 1).is_some());
        assert_eq!(Pfn::new(PA_LIMIT >> PAGE_SHIFT), None);
        assert_eq!(Pfn::new(0x4_0000 | 1 << 52), None);
        assert_eq!(Pa::new(PA_LIMIT), None);
        assert_eq!(Pfn::new(PA_LIMIT / PAGE_SIZE - 1).unwrap().checked_add(1), None);
        assert_eq!(Pa::new(PA_LIMIT - 1).unwrap().checked_add(1), None);
    }

    #[test]
    fn ranges_check_their_ends_without_wrapping() {
        let ram = IpaRange::new(0x4000_0000, 0x10_0000).unwrap();
        assert!(ram.contains(0x4000_0000) && ram.contains(0x400f_ffff));
        assert!(!ram.contains(0x4010_0000) && !ram.contains(0x3fff_ffff));
        assert!(ram.contains_range(0x400f_f000, 0x1000));
        assert!(!ram.contains_range(0x400f_f000, 0x2000));
        assert!(!ram.contains_range(0x400f_f000, u64::MAX));
        assert!(ram.overlaps(0x3fff_f000, 0x2000) && !ram.overlaps(0x4010_0000, 0x1000));
        assert_eq!(IpaRange::new(u64::MAX, 2), None);
    }
}

//! The VM manager's arithmetic, kept apart from the hardware so that it is tested on the host:
//! where guest memory comes from, which pages a VM was given, a guest console's lines, and the
//! hypercall fuzzer's random numbers.

/// Host RAM behind one VM by default: 16 MiB, the test guests' RAM size.
pub const REGION_SIZE: u64 = 16 << 20;
/// The most guest RAM KServ backs for one VM (issue 13: Linux guests up to 1 GiB).
pub const MAX_GUEST_RAM: u64 = 1 << 30;
const PAGE: u64 = 4096;
/// A 2 MiB block: regions are aligned to it, so that KServ can offer a guest's fault a whole
/// block of host pages.
pub const BLOCK: u64 = 2 << 20;
/// Pages of the largest guest.
const MAX_PAGES: u64 = MAX_GUEST_RAM / PAGE;

/// The host page behind guest page `gpa` of a VM whose RAM `[ram_base, ram_base + ram_size)` is
/// backed by the region at `region` (at least `ram_size` long); `None` outside the VM's RAM.
pub fn region_page(region: u64, ram_base: u64, ram_size: u64, gpa: u64) -> Option<u64> {
    let offset = gpa.checked_sub(ram_base).filter(|&o| o < ram_size)?;
    Some(region + (offset & !(PAGE - 1)))
}

/// Picks one region per entry of `sizes` (rounded up to 2 MiB, each 2 MiB-aligned), from the top
/// of RAM down, avoiding `avoid` (KCore, KServ, the DTB, the bundle) and each other. Returns
/// `(base, size)` of each, `None` where none fits.
pub fn choose_regions<const N: usize>(
    ram: &[Option<(u64, u64)>],
    avoid: &[(u64, u64)],
    sizes: [u64; N],
) -> [Option<(u64, u64)>; N] {
    let mut out: [Option<(u64, u64)>; N] = [None; N];
    for (i, size) in sizes.iter().map(|s| s.next_multiple_of(BLOCK)).enumerate() {
        let free = |start: u64, chosen: &[Option<(u64, u64)>]| {
            let end = start + size;
            !avoid.iter().any(|&(b, e)| b < end && start < e)
                && !chosen.iter().flatten().any(|&(b, s)| b < end && start < b + s)
        };
        'search: for &(base, ram_size) in ram.iter().flatten() {
            let Some(mut start) = (base + ram_size).checked_sub(size).map(|s| s & !(BLOCK - 1)) else { continue };
            while start >= base {
                if free(start, &out[..i]) {
                    out[i] = Some((start, size));
                    break 'search;
                }
                let Some(lower) = start.checked_sub(BLOCK) else { break };
                start = lower;
            }
        }
    }
    out
}

/// Which pages of its region a VM was given (its image, and each page it faulted on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given([u64; (MAX_PAGES / 64) as usize]);

impl Default for Given {
    fn default() -> Self {
        Self::new()
    }
}

impl Given {
    pub const fn new() -> Given {
        Given([0; (MAX_PAGES / 64) as usize])
    }

    pub fn set(&mut self, page: u64) {
        if page < MAX_PAGES {
            self.0[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    /// Whether no page of the 2 MiB block holding page `page` was given (the block's 512 bits
    /// are 8 whole words).
    pub fn block_free(&self, page: u64) -> bool {
        let first = (page & !511) / 64;
        first + 8 <= MAX_PAGES / 64 && self.0[first as usize..first as usize + 8].iter().all(|&w| w == 0)
    }

    /// Marks the whole 2 MiB block holding page `page` given.
    pub fn set_block(&mut self, page: u64) {
        let first = (page & !511) / 64;
        if first + 8 <= MAX_PAGES / 64 {
            self.0[first as usize..first as usize + 8].fill(u64::MAX);
        }
    }

    /// Whether every page of the 2 MiB block holding page `page` was given.
    pub fn block_full(&self, page: u64) -> bool {
        let first = (page & !511) / 64;
        first + 8 <= MAX_PAGES / 64 && self.0[first as usize..first as usize + 8].iter().all(|&w| w == u64::MAX)
    }

    /// Whether page `page` was given.
    pub fn contains(&self, page: u64) -> bool {
        page < MAX_PAGES && self.0[(page / 64) as usize] >> (page % 64) & 1 == 1
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The page indices given, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        (0..MAX_PAGES).filter(|&p| self.contains(p))
    }
}

/// What a page the host attacks in a running Linux VM is (`host-attacks-linux`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attacked {
    /// A page of the kernel's image: its text, data, BSS and initial page tables.
    Kernel,
    /// A sampled page of a 2 MiB block given whole (a block answer to a stage-2 fault).
    Block,
    /// A page of a block given in part: a 4 KiB answer to a stage-2 fault, the initrd, the
    /// device tree.
    Page,
}

/// The pages (indices into the VM's region) the host attacks in one round of
/// `host-attacks-linux`: of the given pages of `kernel` (the kernel image's page indices) and of
/// the blocks given in part, those whose index is a multiple of `stride` (1: all of them); of
/// each block given whole, its first, middle and last page (unless they are the kernel's: a block
/// answer to a fault past the image's signed bytes may hold its end). Each access costs an abort and a
/// line of KCore's log: a round of every page of a 128 MiB VM would take minutes.
pub fn attack_targets(
    given: &Given,
    kernel: core::ops::Range<u64>,
    stride: u64,
) -> impl Iterator<Item = (u64, Attacked)> + '_ {
    given.pages().filter_map(move |page| {
        let sampled = page.is_multiple_of(stride);
        if kernel.contains(&page) {
            sampled.then_some((page, Attacked::Kernel))
        } else if given.block_full(page) {
            matches!(page % 512, 0 | 256 | 511).then_some((page, Attacked::Block))
        } else {
            sampled.then_some((page, Attacked::Page))
        }
    })
}

/// A console line being assembled from a guest's UART writes.
pub struct LineBuffer {
    bytes: [u8; 160],
    len: usize,
    full: [u8; 160],
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuffer {
    pub const fn new() -> LineBuffer {
        LineBuffer { bytes: [0; 160], len: 0, full: [0; 160] }
    }

    /// Adds a byte; returns the finished line at a newline (or when the buffer is full).
    /// Carriage returns are dropped and other control bytes shown as `.`.
    pub fn push(&mut self, byte: u8) -> Option<&str> {
        match byte {
            b'\r' => None,
            b'\n' => Some(self.take()),
            _ => {
                self.bytes[self.len] = if byte.is_ascii_graphic() || byte == b' ' { byte } else { b'.' };
                self.len += 1;
                (self.len == self.bytes.len()).then(|| self.take())
            }
        }
    }

    fn take(&mut self) -> &str {
        let len = core::mem::take(&mut self.len);
        self.full[..len].copy_from_slice(&self.bytes[..len]);
        core::str::from_utf8(&self.full[..len]).unwrap_or("?")
    }
}

/// The seed of core `core`'s fuzzer, from the run's base seed: core 0 keeps the base, the others
/// differ from it (and from each other) in more than the low bit, which [`Rng::new`] forces.
pub fn core_seed(base: u64, core: usize) -> u64 {
    base ^ (core as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// xorshift64*: the fuzzer's reproducible random numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_core_fuzzes_its_own_sequence() {
        for base in [0, 1, 0x1234_5678, u64::MAX] {
            assert_eq!(super::core_seed(base, 0), base);
            let firsts: Vec<u64> = (0..4).map(|core| super::Rng::new(super::core_seed(base, core)).next()).collect();
            for (i, a) in firsts.iter().enumerate() {
                assert!(firsts[i + 1..].iter().all(|b| b != a), "base {base:#x}: {firsts:x?}");
            }
        }
    }

    use super::*;

    #[test]
    fn guest_pages_map_linearly_into_the_region() {
        assert_eq!(region_page(0x7000_0000, 0x8000_0000, REGION_SIZE, 0x8000_0000), Some(0x7000_0000));
        assert_eq!(region_page(0x7000_0000, 0x8000_0000, REGION_SIZE, 0x8012_3456), Some(0x7012_3000));
        assert_eq!(region_page(0x7000_0000, 0x8000_0000, REGION_SIZE, 0x8100_0000), None);
        assert_eq!(region_page(0x7000_0000, 0x8000_0000, REGION_SIZE, 0x7fff_ffff), None);
    }

    #[test]
    fn regions_come_from_the_top_of_ram_and_avoid_what_is_in_use() {
        let ram = [Some((0x4000_0000, 0x4000_0000)), None];
        let regions = choose_regions(&ram, &[(0x7f00_0000, 0x7f00_1000)], [REGION_SIZE; 3]);
        let sized = |b| Some((b, REGION_SIZE));
        assert_eq!(regions, [sized(0x7e00_0000), sized(0x7d00_0000), sized(0x7c00_0000)]);
        let tiny = [Some((0, 0x0180_0000))];
        assert_eq!(choose_regions(&tiny, &[], [REGION_SIZE; 2]), [sized(0x0080_0000), None]);
        // A 128 MiB region first, 2 MiB-aligned, then the small ones below it.
        let big = choose_regions(&ram, &[(0x7f00_0000, 0x7f00_1000)], [128 << 20, REGION_SIZE]);
        assert_eq!(big, [Some((0x7700_0000, 128 << 20)), sized(0x7600_0000)]);
    }

    #[test]
    fn given_pages_are_counted_once() {
        let mut given = Given::new();
        for p in [0, 1, 1, 63, 64, 4095, 4096] {
            given.set(p);
        }
        assert_eq!(given.count(), 6);
        assert_eq!(given.pages().collect::<Vec<_>>(), vec![0, 1, 63, 64, 4095, 4096]);
        assert!(!given.block_free(511) && given.block_free(512) && !given.block_free(4096));
        given.set_block(1030);
        assert_eq!(given.count(), 6 + 512);
        assert!(!given.block_free(1024));
    }

    #[test]
    fn attacks_cover_the_kernel_whole_and_sample_whole_blocks() {
        let mut given = Given::new();
        // Kernel image pages 0..700 (its first block and part of the next), a 4 KiB fault answer
        // at 900, a whole block at 1024..1536.
        (0..700).chain([900]).for_each(|p| given.set(p));
        given.set_block(1100);
        let of = |stride, kind| {
            attack_targets(&given, 0..700, stride).filter(|&(_, k)| k == kind).map(|(p, _)| p).collect::<Vec<_>>()
        };
        assert_eq!(of(1, Attacked::Kernel), (0..700).collect::<Vec<_>>());
        assert_eq!(of(1, Attacked::Page), vec![900]);
        assert_eq!(of(1, Attacked::Block), vec![1024, 1280, 1535]);
        // Sampled: every 100th page of the kernel and of the blocks given in part; whole blocks
        // as before.
        assert_eq!(of(100, Attacked::Kernel), vec![0, 100, 200, 300, 400, 500, 600]);
        assert_eq!(of(100, Attacked::Page), vec![900]);
        assert_eq!(of(100, Attacked::Block), vec![1024, 1280, 1535]);
        // A whole block inside the kernel's image is attacked page by page.
        assert_eq!(attack_targets(&given, 0..2048, 1).count(), 700 + 1 + 512);
        assert!(given.block_full(0) && !given.block_full(512) && given.block_full(1535));
    }

    #[test]
    fn the_fuzzer_is_reproducible() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<u64> = (0..5).map(|_| a.next()).collect();
        assert_eq!(xs, (0..5).map(|_| b.next()).collect::<Vec<_>>());
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
        assert!((0..100).all(|_| a.below(7) < 7));
    }
}

//! The VM manager's arithmetic, kept apart from the hardware so that it is tested on the host:
//! where guest memory comes from, which pages a VM was given, the emulated PL011, and the
//! hypercall fuzzer's random numbers.

/// Host RAM behind one VM: 16 MiB, the test guests' RAM size.
pub const REGION_SIZE: u64 = 16 << 20;
const PAGE: u64 = 4096;
/// Pages in a region.
const REGION_PAGES: u64 = REGION_SIZE / PAGE;

/// The host page behind guest page `gpa` of a VM whose RAM `[ram_base, ram_base + ram_size)` is
/// backed by the region at `region`; `None` outside the VM's RAM.
pub fn region_page(region: u64, ram_base: u64, ram_size: u64, gpa: u64) -> Option<u64> {
    let offset = gpa.checked_sub(ram_base).filter(|&o| o < ram_size.min(REGION_SIZE))?;
    Some(region + (offset & !(PAGE - 1)))
}

/// Picks up to `N` regions of [`REGION_SIZE`] from the top of RAM down, avoiding `avoid`
/// (KCore, KServ, the DTB, the bundle).
pub fn choose_regions<const N: usize>(ram: &[Option<(u64, u64)>], avoid: &[(u64, u64)]) -> [Option<u64>; N] {
    let mut out = [None; N];
    let mut found = 0;
    for &(base, size) in ram.iter().flatten() {
        let mut top = (base + size) & !(REGION_SIZE - 1);
        while found < N && top >= base + REGION_SIZE {
            let start = top - REGION_SIZE;
            if !avoid.iter().any(|&(b, e)| b < top && start < e) {
                out[found] = Some(start);
                found += 1;
            }
            top = start;
        }
    }
    out
}

/// Which pages of its region a VM was given (its image, and each page it faulted on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given([u64; (REGION_PAGES / 64) as usize]);

impl Default for Given {
    fn default() -> Self {
        Self::new()
    }
}

impl Given {
    pub const fn new() -> Given {
        Given([0; (REGION_PAGES / 64) as usize])
    }

    pub fn set(&mut self, page: u64) {
        if page < REGION_PAGES {
            self.0[(page / 64) as usize] |= 1 << (page % 64);
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The page indices given, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        (0..REGION_PAGES).filter(|&p| self.0[(p / 64) as usize] >> (p % 64) & 1 == 1)
    }
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

/// The PL011 that each VM sees: transmit only, always ready.
pub mod pl011 {
    use super::LineBuffer;

    const DR: u64 = 0x00;
    const FR: u64 = 0x18;
    /// FR: transmit FIFO empty, receive FIFO empty.
    const FR_IDLE: u64 = 1 << 7 | 1 << 4;
    /// The PrimeCell and peripheral id registers, so that a driver recognises a PL011.
    const IDS: [(u64, u64); 8] = [
        (0xfe0, 0x11),
        (0xfe4, 0x10),
        (0xfe8, 0x14),
        (0xfec, 0x00),
        (0xff0, 0x0d),
        (0xff4, 0xf0),
        (0xff8, 0x05),
        (0xffc, 0xb1),
    ];

    /// A guest store at `offset`: a byte to DR may finish a line.
    pub fn write(line: &mut LineBuffer, offset: u64, value: u64) -> Option<&str> {
        (offset == DR).then(|| line.push(value as u8)).flatten()
    }

    /// A guest load at `offset`.
    pub fn read(offset: u64) -> u64 {
        match offset {
            FR => FR_IDLE,
            _ => IDS.iter().find(|&&(o, _)| o == offset).map_or(0, |&(_, v)| v),
        }
    }
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
        let regions: [Option<u64>; 3] = choose_regions(&ram, &[(0x7f00_0000, 0x7f00_1000)]);
        assert_eq!(regions, [Some(0x7e00_0000), Some(0x7d00_0000), Some(0x7c00_0000)]);
        let tiny = [Some((0, 0x0180_0000))];
        assert_eq!(choose_regions::<2>(&tiny, &[]), [Some(0), None]);
    }

    #[test]
    fn given_pages_are_counted_once() {
        let mut given = Given::new();
        for p in [0, 1, 1, 63, 64, 4095, 4096] {
            given.set(p);
        }
        assert_eq!(given.count(), 5);
        assert_eq!(given.pages().collect::<Vec<_>>(), vec![0, 1, 63, 64, 4095]);
    }

    #[test]
    fn the_uart_assembles_lines() {
        let mut line = LineBuffer::new();
        for b in b"hi\r" {
            assert_eq!(pl011::write(&mut line, 0, *b as u64), None);
        }
        assert_eq!(pl011::write(&mut line, 0x18, b'\n' as u64), None);
        assert_eq!(pl011::write(&mut line, 0, b'\n' as u64), Some("hi"));
        assert_eq!(pl011::read(0x18), 0x90);
        assert_eq!(pl011::read(0xfe0), 0x11);
        assert_eq!(pl011::read(0x24), 0);
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

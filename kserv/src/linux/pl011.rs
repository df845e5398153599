//! The PL011 every VM sees (the test guests' console, and a Linux VM's `ttyAMA0`): transmit only
//! and always ready. DR writes make lines; FR never shows the transmit FIFO full (so Linux needs
//! no TX interrupt) and always shows the receive FIFO empty; the peripheral and PrimeCell ids
//! read a PL011's, so that Linux's amba bus probes it; every other register reads as zero and
//! ignores writes.

use crate::vm_plan::LineBuffer;
use corevisor_abi::console;

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
    (offset == console::PL011_DR).then(|| line.push(value as u8)).flatten()
}

/// The console bytes a VCPU_RUN returned in x6..x17 (`corevisor_abi::console`), in the order the
/// guest wrote them; a count beyond what the registers hold is cut to them.
pub fn console_bytes(regs: &[u64; 1 + console::BYTE_REGS]) -> impl Iterator<Item = u8> + '_ {
    let count = usize::try_from(regs[0]).unwrap_or(usize::MAX).min(console::BYTES);
    regs[1..].iter().flat_map(|reg| reg.to_le_bytes()).take(count)
}

/// A guest load at `offset`.
pub fn read(offset: u64) -> u64 {
    match offset {
        console::PL011_FR => console::PL011_FR_IDLE,
        _ => IDS.iter().find(|&&(o, _)| o == offset).map_or(0, |&(_, v)| v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uart_assembles_lines() {
        let mut line = LineBuffer::new();
        for b in b"hi\r" {
            assert_eq!(write(&mut line, 0, *b as u64), None);
        }
        assert_eq!(write(&mut line, 0x18, b'\n' as u64), None);
        assert_eq!(write(&mut line, 0, b'\n' as u64), Some("hi"));
        assert_eq!(read(0x18), 0x90);
        assert_eq!(read(0xfe0), 0x11);
        assert_eq!(read(0x24), 0);
    }

    #[test]
    fn console_output_comes_out_in_the_order_written() {
        let mut regs = [0u64; 12];
        regs[0] = 10;
        regs[1] = u64::from_le_bytes(*b"hello, w");
        regs[2] = u64::from_le_bytes(*b"o\nXXXXXX");
        let bytes: Vec<u8> = console_bytes(&regs).collect();
        assert_eq!(bytes, b"hello, wo\n");
        regs[0] = 0;
        assert_eq!(console_bytes(&regs).count(), 0);
        // A full buffer: every register, in order.
        regs = core::array::from_fn(|i| if i == 0 { 88 } else { u64::from_le_bytes([i as u8; 8]) });
        let bytes: Vec<u8> = console_bytes(&regs).collect();
        assert_eq!(bytes.len(), 88);
        assert!(bytes.chunks(8).enumerate().all(|(i, c)| c == [i as u8 + 1; 8]));
        regs[0] = u64::MAX;
        assert_eq!(console_bytes(&regs).count(), 88);
    }

    #[test]
    fn linux_sees_a_pl011_that_is_never_busy() {
        const TXFF: u64 = 1 << 5;
        const RXFE: u64 = 1 << 4;
        assert!(read(console::PL011_FR) & TXFF == 0 && read(console::PL011_FR) & RXFE != 0);
        let ids: Vec<u64> = (0..8).map(|i| read(0xfe0 + 4 * i)).collect();
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        // The control and interrupt registers read as zero and ignore writes.
        let mut line = LineBuffer::new();
        assert_eq!(write(&mut line, 0x30, 0x301), None);
        assert_eq!((read(0x30), read(0x38), read(0x3c)), (0, 0, 0));
    }
}

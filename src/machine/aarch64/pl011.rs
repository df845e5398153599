//! The Arm PL011 UART, transmit side: KCore's console.

use tock_registers::{
    interfaces::{Readable, Writeable},
    register_bitfields, register_structs,
    registers::{ReadOnly, ReadWrite},
};

register_bitfields! {u32,
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// UART busy transmitting.
        BUSY OFFSET(3) NUMBITS(1) []
    ]
}

register_structs! {
    Registers {
        (0x00 => dr: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x18 => fr: ReadOnly<u32, FR::Register>),
        (0x1c => @END),
    }
}

/// A PL011 whose registers live at a fixed physical address (identity-mapped as Device).
#[derive(Clone, Copy)]
pub struct Pl011 {
    registers: &'static Registers,
}

// SAFETY: the registers are MMIO at a fixed address, not memory owned by one core; any core may
// drive the UART, and the console serialises access behind its lock.
unsafe impl Send for Pl011 {}
// SAFETY: sharing a `Pl011` only lets cores write the same MMIO registers with volatile
// accesses, which is memory-safe; the console serialises writers behind its lock, and only the
// emergency path on the way to a halt writes without it (interleaved bytes, nothing worse).
unsafe impl Sync for Pl011 {}

impl Pl011 {
    /// The PL011 at `base`. The firmware (or QEMU) has already set the baud rate and enabled it;
    /// KCore only transmits.
    ///
    /// # Safety
    /// `base` names a PL011's register block (from the DTB or the board description), mapped as
    /// Device memory in KCore's stage-1 and out of the host's reach: writing to it writes there.
    pub unsafe fn new(base: u64) -> Pl011 {
        // SAFETY: the caller's contract; the registers are only accessed through volatile MMIO
        // operations.
        let registers = unsafe { &*(base as *const Registers) };
        Pl011 { registers }
    }

    /// Sends `bytes`, turning `\n` into `\r\n`.
    pub fn write_bytes(&self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
    }

    fn write_byte(&self, byte: u8) {
        while self.registers.fr.is_set(FR::TXFF) {
            core::hint::spin_loop();
        }
        self.registers.dr.set(byte as u32);
    }

    /// Waits until every byte has left the UART.
    pub fn flush(&self) {
        while self.registers.fr.is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
    }
}

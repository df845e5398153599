//! KServ's console: the PL011, written directly (KCore does not mediate the host's devices).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static UART_BASE: AtomicU64 = AtomicU64::new(0);
static LOCK: AtomicBool = AtomicBool::new(false);

const DR: u64 = 0x00;
const FR: u64 = 0x18;
const FR_TXFF: u32 = 1 << 5;

/// Uses the PL011 at `base` from now on.
pub fn init(base: u64) {
    UART_BASE.store(base, Ordering::Release);
}

struct Uart(u64);

impl Uart {
    fn put(&self, byte: u8) {
        // SAFETY: `self.0` is the PL011 named by the DTB or the board, mapped as Device; FR and DR
        // are 32-bit registers accessed with volatile MMIO.
        unsafe {
            while core::ptr::read_volatile((self.0 + FR) as *const u32) & FR_TXFF != 0 {}
            core::ptr::write_volatile((self.0 + DR) as *mut u32, byte as u32);
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.put(b'\r');
            }
            self.put(byte);
        }
        Ok(())
    }
}

/// Prints one line, prefixed `kserv: `, as one unit.
pub fn print_line(args: fmt::Arguments) {
    let base = UART_BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    while LOCK.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    let _ = writeln!(Uart(base), "kserv: {args}");
    LOCK.store(false, Ordering::Release);
}

/// `println!` for KServ: one `kserv: ` line on the console.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => { $crate::arch::console::print_line(format_args!($($arg)*)) };
}

//! The console: KCore's `log` backend on the PL011. Lines read `[LEVEL][cpuN] message`.

use crate::machine::{
    cpu,
    pl011::Pl011,
    sync::{LockRank, TicketLock},
};
use core::fmt::Write;
use log::{LevelFilter, Log, Metadata, Record};

static UART: TicketLock<Option<Pl011>> = TicketLock::new(LockRank::Console, None);
/// The console's UART again, for writing without the lock on the way to a halt.
static UART_FALLBACK: spin::Once<Pl011> = spin::Once::new();
static LOGGER: Logger = Logger;

struct Logger;

struct UartWriter<'a>(&'a Pl011);

impl Write for UartWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.write_bytes(s.as_bytes());
        Ok(())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let uart = UART.lock();
        if let Some(uart) = uart.as_ref() {
            // Writing to the UART cannot fail; a formatting error only truncates the line.
            let _ = writeln!(UartWriter(uart), "[{}][cpu{}] {}", record.level(), cpu::index(), record.args());
        }
    }

    fn flush(&self) {
        if let Some(uart) = UART.lock().as_ref() {
            uart.flush();
        }
    }
}

/// Starts logging to `uart`. Call once, with the MMU on.
pub fn init(uart: Pl011, level: LevelFilter) {
    *UART.lock() = Some(uart);
    UART_FALLBACK.call_once(|| uart);
    // Only fails if a logger is already set, and this runs once.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// The log level named by `loglevel=` in the boot arguments; `info` when absent or unknown.
pub fn level_from_bootargs(bootargs: &str) -> (LevelFilter, Option<&str>) {
    match corevisor_abi::bootargs::value(bootargs, corevisor_abi::bootargs::LOG_LEVEL) {
        Some(name) => match name.parse() {
            Ok(level) => (level, None),
            Err(_) => (LevelFilter::Info, Some(name)),
        },
        None => (LevelFilter::Info, None),
    }
}

/// Writes a message even when the console lock is held by a core that cannot release it (a
/// panic on the lock holder), or to `no_console` before there is a console. Used only on the way
/// to halting.
pub fn emergency_write(args: core::fmt::Arguments, no_console: impl FnOnce() -> Pl011) {
    for _ in 0..1_000_000 {
        if let Some(uart) = UART.try_lock() {
            if let Some(uart) = uart.as_ref() {
                let _ = UartWriter(uart).write_fmt(args);
                uart.flush();
            }
            return;
        }
        core::hint::spin_loop();
    }
    // The lock never came free: write anyway, interleaving is better than silence.
    let fallback = UART_FALLBACK.get().copied().unwrap_or_else(no_console);
    let _ = UartWriter(&fallback).write_fmt(args);
}

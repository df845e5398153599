//! A KCore panic is a broken internal invariant: it halts loudly, with the location, the trap
//! registers and the principal whose trap was being handled.

use crate::board::BOARD;
use crate::console::emergency_write;
use crate::handlers::trap_handler;
use crate::machine::{cpu, pl011::Pl011, power, regs};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let core = cpu::index();
    // SAFETY: before the console is up, the board's UART (Device memory in KCore's EL2 map) is
    // the only place a panic can be seen.
    let early = || unsafe { Pl011::new(BOARD.uart_base) };
    emergency_write(format_args!("\n[PANIC][cpu{core}] KCore {info}\n"), early);
    emergency_write(format_args!("[PANIC][cpu{core}] while handling: {}\n", trap_handler::principal_name(core)), early);
    for (name, value) in regs::snapshot() {
        emergency_write(format_args!("[PANIC][cpu{core}]   {name:<9} = {value:#018x}\n"), early);
    }
    trap_handler::halt_all_cores();
    power::halt_after_panic()
}

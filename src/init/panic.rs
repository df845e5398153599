//! A KCore panic is a broken internal invariant: it halts loudly, with the location, the trap
//! registers and the principal whose trap was being handled.

use crate::console::emergency_write;
use crate::handlers::trap_handler;
use crate::machine::{cpu, regs};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let core = cpu::index();
    emergency_write(format_args!("\n[PANIC][cpu{core}] KCore {info}\n"));
    emergency_write(format_args!("[PANIC][cpu{core}] while handling: {}\n", trap_handler::principal_name(core)));
    for (name, value) in regs::snapshot() {
        emergency_write(format_args!("[PANIC][cpu{core}]   {name:<9} = {value:#018x}\n"));
    }
    trap_handler::halt_all_cores();
    super::power::halt_after_panic()
}

//! An exception taken from EL2 itself: a KCore bug. The interrupted registers are printed and
//! the machine halts.

use crate::machine::{regs, TrapFrame, TrapKind};
use log::error;

/// Entry for an exception taken from EL2 (vectors.S).
#[no_mangle]
extern "C" fn kcore_fault_handler(frame: &mut TrapFrame, kind: u64) -> ! {
    error!("KCore took a {:?} exception at EL2", TrapKind::from_vector(kind));
    for (i, pair) in frame.x.chunks(2).enumerate() {
        match pair {
            [a, b] => error!("  x{:<2} = {a:#018x}  x{:<2} = {b:#018x}", 2 * i, 2 * i + 1),
            [a] => error!("  x{:<2} = {a:#018x}", 2 * i),
            _ => {}
        }
    }
    error!("  elr = {:#018x}  spsr = {:#018x}", frame.elr, frame.spsr);
    panic!(
        "exception inside KCore (ESR {:#x}, ELR {:#x}, FAR {:#x})",
        regs::esr_el2(),
        regs::elr_el2(),
        regs::far_el2()
    );
}

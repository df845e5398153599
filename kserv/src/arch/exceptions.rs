//! KServ's EL1 exception handler. An UNDEF that a scenario provokes on purpose is counted and
//! skipped; anything else fails the run, with the syndrome printed.

use crate::kprintln;
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The registers boot.S saves: x0..x30, ELR_EL1, SPSR_EL1.
#[repr(C)]
pub struct Frame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
}

static EXPECT_UNDEF: AtomicBool = AtomicBool::new(false);
static UNDEF_COUNT: AtomicU64 = AtomicU64::new(0);
static LAST_UNDEF_AT: AtomicU64 = AtomicU64::new(0);
/// External aborts, per core (`smp-race` probes a page from three cores at once): whether the
/// core expects them, how many it took, and the (ELR, FAR) of its last.
static EXPECT_ABORT: [AtomicBool; CORES] = [const { AtomicBool::new(false) }; CORES];
static ABORT_COUNT: [AtomicU64; CORES] = [const { AtomicU64::new(0) }; CORES];
static LAST_ABORT: [[AtomicU64; 2]; CORES] = [const { [AtomicU64::new(0), AtomicU64::new(0)] }; CORES];
const CORES: usize = crate::smp::CORES;

/// This core's slot in the abort tables.
fn core() -> usize {
    super::cpu::core_index() % CORES
}

/// ESR class of a data abort taken at the current EL, and the external-abort status code.
const EC_DABT_SAME: u64 = 0x25;
const DFSC_EXTERNAL_ABORT: u64 = 0x10;

/// Lets this core's next external data aborts through (a scenario touches memory it may not).
pub fn expect_abort(expected: bool) {
    EXPECT_ABORT[core()].store(expected, Ordering::SeqCst);
}

/// How many external aborts this core took, and the (ELR, FAR) of its last one.
pub fn aborts() -> (u64, u64, u64) {
    let (count, last) = (&ABORT_COUNT[core()], &LAST_ABORT[core()]);
    (count.load(Ordering::SeqCst), last[0].load(Ordering::SeqCst), last[1].load(Ordering::SeqCst))
}

/// Lets the next UNDEFs through (a scenario is provoking them).
pub fn expect_undef(expected: bool) {
    EXPECT_UNDEF.store(expected, Ordering::SeqCst);
}

/// How many UNDEFs were taken, and where the last one was.
pub fn undefs() -> (u64, u64) {
    (UNDEF_COUNT.load(Ordering::SeqCst), LAST_UNDEF_AT.load(Ordering::SeqCst))
}

fn read_sysreg_esr_far() -> (u64, u64) {
    let (esr, far): (u64, u64);
    // SAFETY: reading ESR_EL1 and FAR_EL1 has no side effects.
    unsafe { asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far, options(nomem, nostack)) };
    (esr, far)
}

/// Vector index 4 is "synchronous, current EL with SP_ELx".
const SYNC_CURRENT_EL_SPX: u64 = 4;

#[no_mangle]
extern "C" fn kserv_exception(frame: &mut Frame, vector: u64) {
    let (esr, far) = read_sysreg_esr_far();
    let class = esr >> 26 & 0x3f;
    if vector == SYNC_CURRENT_EL_SPX && class == 0 && EXPECT_UNDEF.load(Ordering::SeqCst) {
        kprintln!("UNDEF taken at {:#x}", frame.elr);
        LAST_UNDEF_AT.store(frame.elr, Ordering::SeqCst);
        UNDEF_COUNT.fetch_add(1, Ordering::SeqCst);
        frame.elr += 4;
        return;
    }
    if vector == SYNC_CURRENT_EL_SPX
        && class == EC_DABT_SAME
        && esr & 0x3f == DFSC_EXTERNAL_ABORT
        && EXPECT_ABORT[core()].load(Ordering::SeqCst)
    {
        LAST_ABORT[core()][0].store(frame.elr, Ordering::SeqCst);
        LAST_ABORT[core()][1].store(far, Ordering::SeqCst);
        ABORT_COUNT[core()].fetch_add(1, Ordering::SeqCst);
        frame.elr += 4;
        return;
    }
    kprintln!("unexpected exception: vector {vector}, ESR_EL1 {esr:#x}, ELR_EL1 {:#x}, FAR_EL1 {far:#x}", frame.elr);
    crate::run::finish("exception", Err("unexpected exception"));
}

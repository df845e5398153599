//! Installs the entry mitigation a core chose (`machine::spectre::select`): VBAR_EL2 points at
//! the vector set (vectors.S) that runs it on every entry from a lower EL, host and guest alike.

use super::super::spectre::{smccc, BhbClear, EntryMitigation};
use aarch64_cpu::{asm::barrier, registers::VBAR_EL2};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use tock_registers::interfaces::Writeable;

/// The branch-history loop's count, read by the loop of every entry (vectors.S): the largest
/// any core needs, since one count serves all cores and more iterations only cost time.
#[no_mangle]
static ENTRY_BHB_LOOP_K: AtomicU64 = AtomicU64::new(0);

/// 1 if the guest exit synchronises errors with ESB and DISR_EL1 (FEAT_RAS), read by
/// `__guest_exit` (world_switch.S).
#[no_mangle]
static ENTRY_SERROR_ESB: AtomicU8 = AtomicU8::new(0);

extern "C" {
    static __entry_vector_sets: [u8; 0];
    static __entry_vector_sets_end: [u8; 0];
}

/// Size of one vector set: KCore's table and the guest's.
const SET_SIZE: u64 = 0x1000;

/// The vector set that runs `m`, in the order of vectors.S.
fn set_index(m: &EntryMitigation) -> u64 {
    let firmware = match m.firmware_call {
        None => 0,
        Some(smccc::ARCH_WORKAROUND_3) => return 6,
        Some(_) => 1,
    };
    let bhb = match m.bhb {
        BhbClear::None => 0,
        BhbClear::Loop(_) => 1,
        BhbClear::Instruction => 2,
    };
    firmware * 3 + bhb
}

/// Points this core's VBAR_EL2 at the vector set that runs `m` on every lower-EL entry, and
/// tells the guest exit whether it has FEAT_RAS. Called on each core before it enters a lower
/// EL (the loop count is shared, so every core raises it before it relies on it).
pub fn install(m: &EntryMitigation, ras: bool) {
    if let BhbClear::Loop(k) = m.bhb {
        ENTRY_BHB_LOOP_K.fetch_max(u64::from(k), Ordering::SeqCst);
    }
    ENTRY_SERROR_ESB.store(ras as u8, Ordering::SeqCst);
    // SAFETY: only the symbols' addresses are taken.
    let (sets, end) = unsafe { (__entry_vector_sets.as_ptr() as u64, __entry_vector_sets_end.as_ptr() as u64) };
    let base = sets + set_index(m) * SET_SIZE;
    assert!(base + SET_SIZE <= end, "vector set {} is not in vectors.S", set_index(m));
    VBAR_EL2.set(base);
    barrier::isb(barrier::SY);
}

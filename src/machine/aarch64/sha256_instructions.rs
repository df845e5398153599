//! SHA-256's compression function: the ARMv8 SHA-256 instructions (sha256.S) when the CPU has
//! them and they pass the known-answer test at boot, the portable code otherwise.

use super::super::features::CpuFeatures;
use super::super::sha256::{compress_portable, known_answer_holds};
use core::sync::atomic::{AtomicBool, Ordering};

extern "C" {
    fn __sha256_blocks(state: *mut [u32; 8], blocks: *const [u8; 64], count: usize);
}

/// Whether [`sha256_blocks`] uses the instructions: set once at boot by [`select`].
static INSTRUCTIONS: AtomicBool = AtomicBool::new(false);

/// The compression function with the SHA-256 instructions.
///
/// # Safety
/// The CPU implements FEAT_SHA256 (ID_AA64ISAR0_EL1.SHA2 is 1 or more); otherwise the
/// instructions are UNDEFINED at EL2 (a KCore crash).
unsafe fn compress_instructions(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    if blocks.is_empty() {
        return;
    }
    // SAFETY: `__sha256_blocks` reads `blocks.len()` whole blocks from `blocks` and reads and
    // writes the 8 words of `state`, both valid for the call; it restores every FP/SIMD register
    // it uses and CPTR_EL2 before returning, so the host's or guest's FP state is untouched;
    // the caller guarantees the instructions exist.
    unsafe { __sha256_blocks(state, blocks.as_ptr(), blocks.len()) }
}

/// `Machine::sha256_blocks` on the CPU: the instructions if [`select`] chose them.
pub fn sha256_blocks(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    if INSTRUCTIONS.load(Ordering::Relaxed) {
        // SAFETY: `select` sets INSTRUCTIONS only on a CPU whose ID registers show FEAT_SHA256.
        unsafe { compress_instructions(state, blocks) }
    } else {
        compress_portable(state, blocks)
    }
}

/// Which compression function image verification uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sha256Path {
    Instructions,
    Portable,
}

/// Chooses the compression function once, on the boot core, before the host runs (every core
/// is the same kind): the instructions if `cpu` has them. Both candidates must pass the
/// known-answer test; a path that fails it is a broken machine invariant, and KCore halts rather
/// than verify images with a wrong hash.
pub fn select(cpu: &CpuFeatures) -> Sha256Path {
    assert!(known_answer_holds(compress_portable), "the portable SHA-256 fails its known-answer test");
    if !cpu.sha256() {
        return Sha256Path::Portable;
    }
    // SAFETY: the CPU's ID registers show FEAT_SHA256.
    let instructions_hold = known_answer_holds(|state, blocks| unsafe { compress_instructions(state, blocks) });
    assert!(instructions_hold, "the SHA-256 instructions disagree with the known answer");
    INSTRUCTIONS.store(true, Ordering::Relaxed);
    Sha256Path::Instructions
}

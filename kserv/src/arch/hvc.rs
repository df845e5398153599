//! Calls into KCore: hypercalls (`hvc #0`, SMCCC) and PSCI (`smc #0`, which KCore traps).

use core::arch::asm;
use corevisor_abi::HypResult;

/// An SMCCC call through `hvc #0`: function id in w0, arguments in x1..x6, results in x0..x3.
pub fn hyp_call(function: u32, args: [u64; 6]) -> HypResult {
    let (x0, x1, x2, x3);
    // SAFETY: an SMCCC 1.1 call preserves x18..x30 and sp; x4..x17 are declared clobbered. KCore
    // touches no KServ memory.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") function as u64 => x0, inout("x1") args[0] => x1, inout("x2") args[1] => x2,
            inout("x3") args[2] => x3, inout("x4") args[3] => _, inout("x5") args[4] => _,
            inout("x6") args[5] => _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    HypResult { status: x0, values: [x1, x2, x3] }
}

/// A PSCI call through `smc #0`; returns x0.
pub fn psci(function: u32, args: [u64; 3]) -> u64 {
    let x0;
    // SAFETY: as for `hyp_call`.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") function as u64 => x0, inout("x1") args[0] => _, inout("x2") args[1] => _,
            inout("x3") args[2] => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _,
            out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
            out("x15") _, out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    x0
}

/// Executes `smc #0` with `function` in x0, a call the host may not make. Returns the address of
/// the SMC instruction, where the UNDEF that KCore injects must point.
pub fn forbidden_smc(function: u32) -> u64 {
    let pc;
    // SAFETY: KCore answers with an UNDEF, which exceptions.rs skips; registers survive the
    // exception (the vector saves and restores them all).
    unsafe { asm!("adr {pc}, 1f", "1: smc #0", pc = out(reg) pc, in("x0") function as u64, options(nostack)) };
    pc
}

/// Executes `hvc #1`, which is not an SMCCC call. Returns the HVC's address.
pub fn forbidden_hvc_immediate() -> u64 {
    let pc;
    // SAFETY: as for `forbidden_smc`.
    unsafe { asm!("adr {pc}, 1f", "1: hvc #1", pc = out(reg) pc, options(nostack)) };
    pc
}

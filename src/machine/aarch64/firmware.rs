//! Calls to the firmware below EL2 (PSCI through the SMC conduit on QEMU virt).

/// An SMCCC call through `smc #0`: function id in x0, arguments in x1..x3, results in x0..x3.
///
/// # Safety
/// The call must not hand the firmware an address or an entry point it would act on outside
/// what the caller owns: a PSCI CPU_ON starts a core at any PC, at EL2, with KCore's rights;
/// other calls may write memory at addresses they are given. The caller names a call whose
/// arguments it has checked.
pub unsafe fn smc(function: u32, args: [u64; 3]) -> [u64; 4] {
    let mut regs = [function as u64, args[0], args[1], args[2]];
    // SAFETY: an SMCCC fast call only changes x0..x17 (declared clobbered) and the firmware's own
    // state; what it does with its arguments is the caller's contract.
    unsafe {
        core::arch::asm!(
            "smc #0",
            inout("x0") regs[0], inout("x1") regs[1], inout("x2") regs[2], inout("x3") regs[3],
            out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
            out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    regs
}

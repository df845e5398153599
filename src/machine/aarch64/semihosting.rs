//! Arm semihosting: the only clean way to end a QEMU run with an exit status on every board.
//! It works only when QEMU runs with `-semihosting`; elsewhere `hlt #0xf000` is an UNDEF.

/// SYS_EXIT: ends the QEMU process with `code` as its exit status.
pub fn exit(code: u32) -> ! {
    const SYS_EXIT: u64 = 0x18;
    const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;
    let block = [ADP_STOPPED_APPLICATION_EXIT, code as u64];
    // SAFETY: the semihosting call reads the two-word block and ends the process; it does not
    // return when QEMU handles it.
    unsafe {
        core::arch::asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack));
    }
    super::cpu::park()
}

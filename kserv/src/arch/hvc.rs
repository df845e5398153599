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

/// An SMCCC call that returns six registers, x0..x5 (VCPU_RUN's exit record).
pub fn hyp_call_wide(function: u32, args: [u64; 4]) -> [u64; 6] {
    let (x0, x1, x2, x3, x4, x5);
    // SAFETY: as for `hyp_call`.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") function as u64 => x0, inout("x1") args[0] => x1, inout("x2") args[1] => x2,
            inout("x3") args[2] => x3, inout("x4") args[3] => x4, out("x5") x5, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
            out("x15") _, out("x16") _, out("x17") _,
            options(nostack)
        );
    }
    [x0, x1, x2, x3, x4, x5]
}

/// VCPU_RUN of vCPU `vcpu` of VM `vmid` answering its last exit with `answer`: x0..x5 (the exit
/// record) and x6..x17 (the console output that came before the exit, `corevisor_abi::console`).
pub fn vcpu_run(vmid: u64, vcpu: u64, answer: u64) -> [u64; 18] {
    let mut r = [0u64; 18];
    // SAFETY: as for `hyp_call`; every register KCore may write is an output.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") u64::from(corevisor_abi::host_call::VCPU_RUN) => r[0], inout("x1") vmid => r[1],
            inout("x2") vcpu => r[2], inout("x3") answer => r[3], inout("x4") 0u64 => r[4], out("x5") r[5],
            out("x6") r[6], out("x7") r[7], out("x8") r[8], out("x9") r[9], out("x10") r[10], out("x11") r[11],
            out("x12") r[12], out("x13") r[13], out("x14") r[14], out("x15") r[15], out("x16") r[16],
            out("x17") r[17],
            options(nostack)
        );
    }
    r
}

/// The physical counter, CNTPCT_EL0.
pub fn counter() -> u64 {
    let value: u64;
    // SAFETY: reading the counter has no side effects (KCore lets EL1 read it).
    unsafe { asm!("isb", "mrs {}, cntpct_el0", out(reg) value, options(nomem, nostack)) };
    value
}

/// The counter's frequency, CNTFRQ_EL0.
pub fn counter_frequency() -> u64 {
    let value: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) value, options(nomem, nostack)) };
    value
}

/// Copies `len` bytes from physical `src` to physical `dst` (KServ's map is the identity).
pub fn copy_phys(dst: u64, src: u64, len: usize) {
    // SAFETY: callers pass ranges of host RAM that KServ owns and that do not overlap (a bundle
    // image and a free guest page region).
    unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
}

/// Flips bit 6 of the byte at physical `pa` (a page KServ owns).
pub fn flip_byte(pa: u64) {
    // SAFETY: `pa` is in a page KServ owns and may write.
    unsafe { core::ptr::write_volatile(pa as *mut u8, core::ptr::read_volatile(pa as *const u8) ^ 0x40) };
}

/// Reads the byte at physical `pa`.
pub fn read_u8(pa: u64) -> u8 {
    // SAFETY: `pa` is in host RAM that KServ may read (a caller that expects an abort arms the
    // exception handler first).
    unsafe { core::ptr::read_volatile(pa as *const u8) }
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

/// Loads the word at `pa` (KServ's map is the identity). Returns the value read (0 if the load
/// aborted and was skipped) and the address of the load instruction.
pub fn probe_read(pa: u64) -> (u64, u64) {
    let (value, pc): (u64, u64);
    // SAFETY: a load from an address KServ may not own: if it aborts, exceptions.rs skips it and
    // `value` keeps the 0 it was set to; if not, it only reads.
    unsafe {
        asm!("mov {v}, #0", "adr {pc}, 1f", "1: ldr {v}, [{a}]", v = out(reg) value, pc = out(reg) pc, a = in(reg) pa, options(nostack))
    };
    (value, pc)
}

/// Stores `value` at `pa`. Returns the address of the store instruction.
pub fn probe_write(pa: u64, value: u64) -> u64 {
    let pc: u64;
    // SAFETY: a store to memory that is KServ's to write (callers write back what they read) or
    // that KCore refuses (the abort is skipped by exceptions.rs).
    unsafe {
        asm!("adr {pc}, 1f", "1: str {v}, [{a}]", pc = out(reg) pc, v = in(reg) value, a = in(reg) pa, options(nostack))
    };
    pc
}

/// Reads a 32-bit device register. Device accessors are single `ldr`/`str` instructions with a
/// plain base register (as Linux's `readl`/`writel`): KCore performs the host's accesses to the
/// redistributors' control pages itself and needs the instruction syndrome, which a load with
/// write-back (what `read_volatile` may compile to) does not give.
pub fn read_mmio_u32(pa: u64) -> u32 {
    let value: u32;
    // SAFETY: `pa` is a register of a device the host owns (the GIC), read with one load.
    unsafe { asm!("ldr {v:w}, [{a}]", v = out(reg) value, a = in(reg) pa, options(nostack)) };
    value
}

/// Writes a 32-bit device register (see [`read_mmio_u32`]).
pub fn write_mmio_u32(pa: u64, value: u32) {
    // SAFETY: `pa` is a register of a device the host owns (the GIC), written with one store.
    unsafe { asm!("str {v:w}, [{a}]", v = in(reg) value, a = in(reg) pa, options(nostack)) };
}

/// Writes an 8-bit device register (see [`read_mmio_u32`]).
pub fn write_mmio_u8(pa: u64, value: u8) {
    // SAFETY: as for `write_mmio_u32`; the register is byte-accessible.
    unsafe { asm!("strb {v:w}, [{a}]", v = in(reg) u32::from(value), a = in(reg) pa, options(nostack)) };
}

/// ICC_SRE_EL1: the GICv3 CPU interface's system-register enable, which KCore lets EL1 use.
pub fn icc_sre_el1() -> u64 {
    let value: u64;
    // SAFETY: reading ICC_SRE_EL1 has no side effects.
    unsafe { asm!("mrs {}, S3_0_C12_C12_5", out(reg) value, options(nomem, nostack)) };
    value
}

/// Stores the 32-bit `value` at `pa`. Returns the address of the store instruction.
pub fn probe_write_u32(pa: u64, value: u32) -> u64 {
    let pc: u64;
    // SAFETY: as for `probe_write`: a register of a device KCore refuses (the abort is skipped by
    // exceptions.rs) or one it emulates for the host.
    unsafe {
        asm!("adr {pc}, 1f", "1: str {v:w}, [{a}]", pc = out(reg) pc, v = in(reg) value, a = in(reg) pa, options(nostack))
    };
    pc
}

/// Reads a 64-bit device register (see [`read_mmio_u32`]).
pub fn read_mmio_u64(pa: u64) -> u64 {
    let value: u64;
    // SAFETY: `pa` is a register of a device the host owns (the GIC's redistributor), read with
    // one load.
    unsafe { asm!("ldr {v}, [{a}]", v = out(reg) value, a = in(reg) pa, options(nostack)) };
    value
}

/// Writes a 64-bit device register (see [`read_mmio_u32`]).
pub fn write_mmio_u64(pa: u64, value: u64) {
    // SAFETY: `pa` is a register of a device the host owns (edu's DMA registers), written with
    // one store.
    unsafe { asm!("str {v}, [{a}]", v = in(reg) value, a = in(reg) pa, options(nostack)) };
}

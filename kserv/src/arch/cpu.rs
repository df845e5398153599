//! Core identity and waiting.

use core::arch::asm;

/// The exception level KServ runs at (1 when KCore set things up right).
pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
    el >> 2 & 3
}

/// Waits for an event, forever.
pub fn park() -> ! {
    loop {
        // SAFETY: wfe only waits.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// This core's number: MPIDR_EL1's Aff0 (the boards' cores are 0..3 in Aff0, as boot.S's stacks
/// assume).
pub fn core_index() -> usize {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    (mpidr & 0xff) as usize
}

/// This core's affinity (MPIDR_EL1 Aff3..Aff0 packed as in GICR_TYPER's bits 63:32).
pub fn affinity() -> u32 {
    let mpidr: u64;
    // SAFETY: as for `core_index`.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    (mpidr & 0xff_ffff | (mpidr >> 32 & 0xff) << 24) as u32
}

/// The body of a wait loop: `yield`, the hint that this core is busy-waiting. QEMU's
/// round-robin TCG (every `-icount` run) switches to the next core on it, so a waiting core does
/// not spend its whole turn spinning while the core it waits for is descheduled (`isb`, which
/// `core::hint::spin_loop` issues, does not). On hardware it costs nothing.
pub fn relax() {
    // SAFETY: yield is a hint; it changes no state.
    unsafe { asm!("yield", options(nomem, nostack)) };
}

/// Wakes every core waiting in [`wait_for_event`].
pub fn send_event() {
    // SAFETY: dsb then sev: the stores before it are visible to the cores it wakes.
    unsafe { asm!("dsb ish", "sev", options(nostack)) };
}

/// Waits for an event (another core's [`send_event`]), or returns at once on a pending one.
pub fn wait_for_event() {
    // SAFETY: wfe only waits.
    unsafe { asm!("wfe", options(nomem, nostack)) };
}

/// The physical address of the secondary entry point in boot.S.
pub fn secondary_entry() -> u64 {
    extern "C" {
        static kserv_secondary_start: u8;
    }
    core::ptr::addr_of!(kserv_secondary_start) as u64
}

/// Reads a 64-bit word of physical memory (KServ's EL1 map is the identity).
pub fn read_phys_u64(pa: u64) -> u64 {
    // SAFETY: callers pass 8-byte aligned addresses of RAM that the firmware left readable (the
    // DTB header); the EL1 map is an identity map.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// Stores a 64-bit word to physical memory that KServ owns.
pub fn write_phys_u64(pa: u64, value: u64) {
    // SAFETY: callers pass 8-byte aligned addresses of host RAM outside KServ's image, stacks and
    // the firmware's data (the reset marker page); the EL1 map is an identity map.
    unsafe { core::ptr::write_volatile(pa as *mut u64, value) }
}

/// The end of KServ's image, .bss and stacks (`__kserv_end`): the stacks come last, 4 × 64 KiB.
pub fn image_end() -> u64 {
    stack_bottom() as u64 + 4 * 64 * 1024
}

/// A byte slice of physical memory that nothing writes while KServ runs (the DTB).
pub fn phys_slice(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: as for `read_phys_u64`; the DTB stays in place and unwritten.
    unsafe { core::slice::from_raw_parts(pa as *const u8, len) }
}

/// A value at the bottom of the boot core's stack: if it changes, the stack overflowed (into
/// KServ's .bss, which sits just below).
const STACK_CANARY: u64 = 0x6b73_6572_7663_616e;

fn stack_bottom() -> *mut u64 {
    extern "C" {
        static mut __stacks_start: u64;
    }
    // Taking the address of the linker symbol reads nothing.
    core::ptr::addr_of_mut!(__stacks_start)
}

/// Plants the canary (boot core, first thing in Rust).
pub fn set_stack_canary() {
    // SAFETY: the lowest word of the boot core's 64 KiB stack, far below where it runs now.
    unsafe { stack_bottom().write_volatile(STACK_CANARY) }
}

/// Whether the boot core's stack stayed within its 64 KiB.
pub fn stack_canary_intact() -> bool {
    // SAFETY: as for `set_stack_canary`.
    unsafe { stack_bottom().read_volatile() == STACK_CANARY }
}

/// Issues `DC ISW`, `DC CSW` and `DC CISW` on set 0, way 0 of level 1 (operand 0). KCore traps
/// them (HCR_EL2.TSW) and performs each as a clean and invalidate, then resumes KServ after it.
pub fn set_way_maintenance() {
    // SAFETY: set/way maintenance of one line; invalidating it could only drop KServ's own dirty
    // data, and KCore turns every one of them into a clean and invalidate anyway.
    unsafe { core::arch::asm!("dc isw, {op}", "dc csw, {op}", "dc cisw, {op}", op = in(reg) 0u64, options(nostack)) };
}

/// q0..q31 as 64-bit halves: what [`fill_fp_registers`] writes and [`read_fp_registers`] reads.
pub type FpImage = [u64; 64];

/// The FP/SIMD pattern of `seed`: every half different, none zero.
pub fn fp_pattern(seed: u64) -> FpImage {
    core::array::from_fn(|i| seed.rotate_left(i as u32) ^ (0x0101_0101_0101_0101 * (i as u64 + 1)))
}

/// Turns FP/SIMD on at EL1 (CPACR_EL1.FPEN) and loads q0..q31 from `image`. KServ is built
/// soft-float: no code of its own touches these registers until [`read_fp_registers`].
pub fn fill_fp_registers(image: &FpImage) {
    // SAFETY: CPACR_EL1.FPEN = 0b11 only stops FP/SIMD instructions from trapping at EL1; the
    // loads read the 512 bytes of `image`, and only the FP/SIMD registers change.
    unsafe {
        asm!(
            ".arch_extension fp", ".arch_extension simd",
            "mrs {t}, cpacr_el1", "orr {t}, {t}, #(3 << 20)", "msr cpacr_el1, {t}", "isb",
            "ldp q0, q1, [{p}]", "ldp q2, q3, [{p}, #32]", "ldp q4, q5, [{p}, #64]", "ldp q6, q7, [{p}, #96]",
            "ldp q8, q9, [{p}, #128]", "ldp q10, q11, [{p}, #160]", "ldp q12, q13, [{p}, #192]",
            "ldp q14, q15, [{p}, #224]", "ldp q16, q17, [{p}, #256]", "ldp q18, q19, [{p}, #288]",
            "ldp q20, q21, [{p}, #320]", "ldp q22, q23, [{p}, #352]", "ldp q24, q25, [{p}, #384]",
            "ldp q26, q27, [{p}, #416]", "ldp q28, q29, [{p}, #448]", "ldp q30, q31, [{p}, #480]",
            p = in(reg) image.as_ptr(), t = out(reg) _, options(nostack, readonly)
        )
    };
}

/// q0..q31 as they are now (FP/SIMD must be on: [`fill_fp_registers`] first).
pub fn read_fp_registers() -> FpImage {
    let mut image = [0u64; 64];
    // SAFETY: the stores write the 512 bytes of `image`; FP/SIMD is on at EL1.
    unsafe {
        asm!(
            ".arch_extension fp", ".arch_extension simd",
            "stp q0, q1, [{p}]", "stp q2, q3, [{p}, #32]", "stp q4, q5, [{p}, #64]", "stp q6, q7, [{p}, #96]",
            "stp q8, q9, [{p}, #128]", "stp q10, q11, [{p}, #160]", "stp q12, q13, [{p}, #192]",
            "stp q14, q15, [{p}, #224]", "stp q16, q17, [{p}, #256]", "stp q18, q19, [{p}, #288]",
            "stp q20, q21, [{p}, #320]", "stp q22, q23, [{p}, #352]", "stp q24, q25, [{p}, #384]",
            "stp q26, q27, [{p}, #416]", "stp q28, q29, [{p}, #448]", "stp q30, q31, [{p}, #480]",
            p = in(reg) image.as_mut_ptr(), options(nostack)
        )
    };
    image
}

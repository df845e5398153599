//! The world switch's Rust face: entering a guest, and moving EL1, FP/SIMD and EL2 control state
//! between the CPU and memory.

use super::super::guest_regs::{El1Regs, El2Controls, FpRegs, GuestGprs};
use super::super::GuestExit;
use aarch64_cpu::{asm::barrier, registers::*};
use core::ffi::c_void;
use tock_registers::interfaces::{Readable, Writeable};

extern "C" {
    fn __guest_enter(gprs: *mut GuestGprs, hook: FastExit, data: *mut c_void, irq_hook: FastIrq) -> u64;
    fn __save_el1(out: *mut El1Regs);
    fn __restore_el1(regs: *const El1Regs);
    fn __save_fp(out: *mut FpRegs);
    fn __restore_fp(regs: *const FpRegs);
}

/// The fast path's call into Rust (world_switch.S, `__guest_exit_sync`): `(data, esr) -> served`.
type FastExit = extern "C" fn(*mut c_void, u64) -> bool;
/// The IRQ fast path's call into Rust (world_switch.S, `__guest_exit_irq`): `(data) -> served`.
type FastIrq = extern "C" fn(*mut c_void) -> bool;

/// A vCPU as the world switch runs it: its registers, and the exits KCore serves for it without
/// leaving the guest's world.
pub trait GuestWorld {
    /// The registers the world switch loads and saves.
    fn gprs(&mut self) -> &mut GuestGprs;
    /// A synchronous exit of a class KCore may serve in place (ESR_EL2.EC HVC64 or SYS64, the
    /// syndrome `esr`), with only x0..x18, x30, ELR and SPSR saved in [`Self::gprs`] (x19..x29
    /// there are stale: the guest's are still in the CPU). Serve it there and return true (the
    /// guest resumes with those registers), or return false having changed nothing (the full
    /// exit follows, and `run_guest` returns it). It must decline anything that needs x19..x29.
    fn serve_in_place(&mut self, esr: u64) -> bool;
    /// A physical IRQ taken from the guest, with the same registers saved as for
    /// [`Self::serve_in_place`]: serve it in place and return true, or return false having
    /// changed nothing (the full exit follows with `TrapKind::Irq`). It acknowledges no physical
    /// interrupt.
    fn serve_irq_in_place(&mut self) -> bool;
}

/// Runs the guest whose world is `world` until it traps with an exit that `serve_in_place` or
/// `serve_irq_in_place` declines (or an FIQ or SError), and returns how it left. The guest's EL1 state, stage-2
/// and EL2 controls must be loaded; they stay loaded on return.
#[inline]
pub fn run_guest<W: GuestWorld>(world: &mut W) -> GuestExit {
    let data: *mut W = world;
    // SAFETY: `data` comes from `world`, a live exclusive reference.
    let gprs: *mut GuestGprs = unsafe { (*data).gprs() };
    // The guest's traps come back through the guest table of this core's vector set, which
    // writes only `gprs` (SP_EL2 and TPIDR_EL2 point at it), the stack below KCore's sp, and (in
    // the abort window) ESR/FAR/HPFAR_EL2, which it restores; on a fast exit it calls
    // `fast_exit::<W>` (synchronous) or `fast_irq::<W>` (IRQ) with `data`.
    // `data` points at `world`, live for the whole call; the assembly touches `gprs` only while
    // no Rust code runs, so the hook's own access to the registers through `world` never
    // overlaps it.
    // SAFETY: `__guest_enter` saves every callee-saved register and sp in `gprs`, which outlives
    // the call (it is `world`'s), and restores them before returning; the guest runs at EL1
    // behind its own stage-2, so it cannot touch KCore's memory; its traps write only what is
    // said above, and the hook runs as said above.
    let value = unsafe { __guest_enter(gprs, fast_exit::<W>, data.cast(), fast_irq::<W>) };
    GuestExit::from_world_switch(value)
}

/// The fast path's call: the vCPU's hook decides.
extern "C" fn fast_exit<W: GuestWorld>(data: *mut c_void, esr: u64) -> bool {
    // SAFETY: `data` is what `run_guest` passed to `__guest_enter`, which has not returned: it
    // points at `run_guest`'s live `W`, and nothing else uses it meanwhile.
    unsafe { (*data.cast::<W>()).serve_in_place(esr) }
}

/// The IRQ fast path's call: the vCPU's hook decides.
extern "C" fn fast_irq<W: GuestWorld>(data: *mut c_void) -> bool {
    // SAFETY: as for `fast_exit`.
    unsafe { (*data.cast::<W>()).serve_irq_in_place() }
}

/// HCR_EL2.VSE: a virtual SError is pending for EL1 (taken once the guest unmasks PSTATE.A;
/// the hardware then clears the bit).
const HCR_VSE: u64 = 1 << 8;
/// VSESR_EL2 for an injected virtual SError (FEAT_RAS): IDS set, the rest zero, an
/// implementation-defined syndrome that tells the guest nothing of the physical error.
const VSESR_IDS: u64 = 1 << 24;

/// Makes a virtual SError pending for the guest about to run (or not), on top of whatever
/// HCR_EL2 the guest's EL2 controls loaded. With FEAT_RAS (`ras`) VSESR_EL2 gives its syndrome.
pub fn set_virtual_serror(pending: bool, ras: bool) {
    let hcr = HCR_EL2.get();
    let wanted = if pending { hcr | HCR_VSE } else { hcr & !HCR_VSE };
    if wanted == hcr {
        return;
    }
    if pending && ras {
        // SAFETY: VSESR_EL2 exists with FEAT_RAS and only sets the syndrome of the virtual
        // SError that HCR_EL2.VSE makes pending for EL1.
        unsafe { core::arch::asm!("msr S3_4_C5_C2_3, {}", in(reg) VSESR_IDS, options(nomem, nostack)) };
    }
    // The eret into the guest synchronises the context: no isb needed.
    HCR_EL2.set(wanted);
}

/// Whether the virtual SError made pending by `set_virtual_serror` is still pending (the guest
/// has not taken it yet: PSTATE.A stayed set).
pub fn virtual_serror_pending() -> bool {
    HCR_EL2.get() & HCR_VSE != 0
}

/// Saves the EL1 system registers and virtual timer into `out`.
pub fn save_el1(out: &mut El1Regs) {
    // SAFETY: reads EL1 registers into `out`, which is valid for writes.
    unsafe { __save_el1(out) }
}

/// Loads the EL1 system registers and virtual timer from `regs`. EL1 runs with them next.
pub fn restore_el1(regs: &El1Regs) {
    // SAFETY: writes only EL1 registers, which KCore itself (at EL2, its own translation regime)
    // does not depend on.
    unsafe { __restore_el1(regs) }
}

/// The EL1 system registers and virtual timer, as [`save_el1`] saves them, without zeroing a
/// record first (the world switch's hot path: `cargo xtask bench`).
#[inline]
pub fn saved_el1() -> El1Regs {
    let mut out = core::mem::MaybeUninit::<El1Regs>::uninit();
    // SAFETY: `__save_el1` reads EL1 registers and writes every word of the record at `out`
    // (El1Regs is `repr(C)`, all u64), so it is initialised when `assume_init` runs.
    unsafe {
        __save_el1(out.as_mut_ptr());
        out.assume_init()
    }
}

/// Saves q0..q31, FPSR and FPCR into `out`. Only under EL2 controls with CPTR_EL2.TFP clear
/// (every world's but the parked host's, `vcpu::world_switch::HostFp`): with it set the access
/// traps at EL2, and KCore halts.
pub fn save_fp(out: &mut FpRegs) {
    // SAFETY: the registers' values are only copied into `out`, which is valid and 16-byte
    // aligned (FpRegs is `align(16)`); nothing else in memory changes.
    unsafe { __save_fp(out) }
}

/// Loads q0..q31, FPSR and FPCR from `regs` (CPTR_EL2.TFP clear, as for [`save_fp`]).
pub fn restore_fp(regs: &FpRegs) {
    // SAFETY: as for `save_fp`; KCore is built soft-float and never relies on these registers.
    unsafe { __restore_fp(regs) }
}

/// Loads EL2 controls (for the guest about to run, or for the host again): through
/// `vcpu::world_switch::load_controls`, the one loader of a world's controls. `gic_sysregs`:
/// the CPU has the GICv3 system registers (`features::CpuFeatures::gic_sysregs`), ICH_HCR_EL2
/// among them.
pub fn set_el2_controls(c: &El2Controls, gic_sysregs: bool) {
    HCR_EL2.set(c.hcr);
    VTTBR_EL2.set(c.vttbr);
    VMPIDR_EL2.set(c.vmpidr);
    CNTVOFF_EL2.set(c.cntvoff);
    MDCR_EL2.set(c.mdcr);
    CNTHCTL_EL2.set(c.cnthctl);
    // `vcpu::controls` leaves TFP clear in both worlds, which `save_fp` and `restore_fp` need;
    // only the host's controls while its FP/SIMD registers are parked set it (`HostFp`).
    CPTR_EL2.set(c.cptr);
    if gic_sysregs {
        ICH_HCR_EL2.set(c.ich_hcr);
    }
    barrier::isb(barrier::SY);
}

/// Stops every PMU counter that runs (event counters and the cycle counter) and returns which
/// ones ran (PMCNTENSET_EL0), for [`restart_pmu_counters`]. Only on a CPU with an architected PMU.
pub fn stop_pmu_counters() -> u64 {
    let running: u64;
    // SAFETY: PMCNTENSET_EL0 and PMCNTENCLR_EL0 change only which PMU counters count; KCore does
    // not use the PMU.
    unsafe {
        core::arch::asm!(
            "mrs {running}, pmcntenset_el0",
            "msr pmcntenclr_el0, {running}",
            "isb",
            running = out(reg) running,
            options(nostack)
        )
    };
    running
}

/// Restarts the PMU counters that [`stop_pmu_counters`] stopped.
pub fn restart_pmu_counters(running: u64) {
    // SAFETY: as for `stop_pmu_counters`.
    unsafe { core::arch::asm!("msr pmcntenset_el0, {}", "isb", in(reg) running, options(nostack)) };
}

/// Clears VDISR_EL2, which a guest reads and writes as DISR_EL1 (HCR_EL2.AMO is set), so that
/// nothing passes through it from one vCPU to the next. Only on a CPU with FEAT_RAS.
pub fn clear_vdisr() {
    // SAFETY: VDISR_EL2 (S3_4_C12_C1_1) only holds the deferred virtual SError syndrome EL1 sees;
    // KCore never injects virtual SErrors.
    unsafe { core::arch::asm!("msr S3_4_C12_C1_1, xzr", options(nomem, nostack)) };
}

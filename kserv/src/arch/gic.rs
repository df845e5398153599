//! Just enough of the GIC for the host to route a PPI to this core (its physical timer's, PPI 30,
//! or a guest's virtual timer's, 27), and the physical timer to raise it: `vm-irq` uses them to
//! interrupt a running guest, `vm-vgic` to let a guest's timer exit to KCore, `smp-vms` to let
//! every core idle in WFI.
//! Interrupts stay masked in KServ (PSTATE.I): the interrupt only ever ends a guest's run.

use crate::dtb::GicInfo;
use core::arch::asm;

/// The non-secure EL1 physical timer's PPI.
pub const TIMER_PPI: u64 = 30;
/// The virtual timer's PPI.
pub const VIRTUAL_TIMER_PPI: u64 = 27;
/// The GIC's virtual interface maintenance interrupt.
pub const MAINTENANCE_PPI: u64 = 25;
/// The SGI one KServ core sends another to make it look at its vCPU again (`smp`'s cross-core
/// kick): a guest running there exits to KCore and back to KServ, a core idling in WFI wakes.
pub const KICK_SGI: u64 = 8;
/// The kick's priority: above every PPI KServ enables (0x80), so that [`take_kicks`]
/// acknowledges it before them.
const KICK_PRIORITY: u8 = 0x40;

// The GIC's registers go through the single-instruction accessors: KCore emulates the first
// page of each redistributor frame and needs the instruction syndrome.
use super::hvc::{read_mmio_u32 as read32, write_mmio_u32 as write32, write_mmio_u8 as write8};

/// This core's GICv3 redistributor: the frame whose GICR_TYPER names this core's affinity
/// (frames are 128 KiB, 256 KiB with virtual LPIs; the last has GICR_TYPER.Last). Falls back to
/// the first frame, as before SMP, if none matches.
fn this_cores_redistributor(gic: &GicInfo) -> u64 {
    const TYPER: u64 = 0x8;
    const VLPIS: u64 = 1 << 1;
    const LAST: u64 = 1 << 4;
    const MAX_FRAMES: usize = 64;
    let affinity = u64::from(super::cpu::affinity());
    let mut rd = gic.second;
    for _ in 0..MAX_FRAMES {
        let typer = super::hvc::read_mmio_u64(rd + TYPER);
        if typer >> 32 == affinity {
            return rd;
        }
        if typer & LAST != 0 {
            break;
        }
        rd += if typer & VLPIS != 0 { 0x4_0000 } else { 0x2_0000 };
    }
    gic.second
}

/// Enables PPI `ppi` at the distributor (or this core's redistributor) and this core's CPU
/// interface, group 1, priority 0x80. Each core that waits on its timer calls it for itself.
pub fn enable_ppi(gic: &GicInfo, ppi: u64) {
    enable_private(gic, ppi, 0x80);
}

/// Enables [`KICK_SGI`] on this core, at [`KICK_PRIORITY`]. Each core that may be kicked calls
/// it for itself.
pub fn enable_kick(gic: &GicInfo) {
    enable_private(gic, KICK_SGI, KICK_PRIORITY);
}

/// [`enable_ppi`] for any of this core's private interrupts (SGI or PPI), at `priority`.
fn enable_private(gic: &GicInfo, ppi: u64, priority: u8) {
    let bit = 1u32 << ppi;
    if gic.v3 {
        const GICD_CTLR_ARE: u32 = 1 << 4;
        const GICD_CTLR_GRP1: u32 = 1 << 1;
        write32(gic.gicd, GICD_CTLR_ARE | GICD_CTLR_GRP1);
        // Wake this core's redistributor.
        let rd = this_cores_redistributor(gic);
        write32(rd + 0x14, read32(rd + 0x14) & !(1 << 1));
        while read32(rd + 0x14) & (1 << 2) != 0 {
            core::hint::spin_loop();
        }
        let sgi = rd + 0x1_0000;
        write32(sgi + 0x080, read32(sgi + 0x080) | bit); // IGROUPR0: group 1
        write8(sgi + 0x400 + ppi, priority); // IPRIORITYR
        write32(sgi + 0x100, bit); // ISENABLER0
                                   // SAFETY: the GICv3 CPU interface registers only change interrupt routing state.
        unsafe {
            asm!(
                "msr S3_0_C12_C12_5, {sre}", // ICC_SRE_EL1
                "isb",
                "msr S3_0_C4_C6_0, {pmr}", // ICC_PMR_EL1
                "msr S3_0_C12_C12_7, {one}", // ICC_IGRPEN1_EL1
                "isb",
                sre = in(reg) 0b111u64, pmr = in(reg) 0xffu64, one = in(reg) 1u64, options(nostack)
            )
        };
    } else {
        write32(gic.gicd, 1); // GICD_CTLR
        write8(gic.gicd + 0x400 + ppi, priority); // IPRIORITYR (banked per core)
        write32(gic.gicd + 0x100, bit); // ISENABLER0 (banked per core)
        write32(gic.second + 0x004, 0xff); // GICC_PMR
        write32(gic.second, 1); // GICC_CTLR
    }
}

/// Arms this core's physical timer to fire, unmasked, when the physical counter reaches
/// `deadline`.
fn arm_physical_timer_at(deadline: u64) {
    // SAFETY: as for `arm_physical_timer`.
    unsafe {
        asm!(
            "msr cntp_cval_el0, {deadline}",
            "msr cntp_ctl_el0, {one}",
            "isb",
            deadline = in(reg) deadline, one = in(reg) 1u64, options(nostack)
        )
    };
}

/// Idles this core until the physical counter reaches `deadline`: the physical timer armed for
/// it, then WFI, which wakes on its interrupt even with IRQs masked. Needs [`TIMER_PPI`] enabled
/// (else nothing wakes the core). Unlike a spin, it retires no instructions while it waits.
pub fn idle_until(deadline: u64) {
    arm_physical_timer_at(deadline);
    while crate::arch::hvc::counter() < deadline {
        // SAFETY: WFI only waits; the armed timer ends the wait.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
    disarm_physical_timer();
}

/// Sends [`KICK_SGI`] to core `core` (MPIDR Aff0 `core`, Aff1-3 zero, as `cpu::core_index`
/// assumes): GICv3 through ICC_SGI1R_EL1, GICv2 through GICD_SGIR (its CPU target list: the
/// boards' CPU interface numbers are the core numbers).
pub fn kick(gic: &GicInfo, core: usize) {
    let target = 1u64 << (core & 0xf);
    if gic.v3 {
        let value = KICK_SGI << 24 | target;
        // SAFETY: ICC_SGI1R_EL1 only makes an SGI pending at the cores it names; the host's
        // system register interface is its own (KCore does not trap it for the host).
        unsafe { asm!("dsb ishst", "msr S3_0_C12_C11_5, {v}", "isb", v = in(reg) value, options(nostack)) };
    } else {
        const GICD_SGIR: u64 = 0xf00;
        write32(gic.gicd + GICD_SGIR, (target << 16 | KICK_SGI) as u32);
    }
}

/// Acknowledges and ends the kicks pending at this core; returns how many there were. Stops at
/// the first other interrupt (ended too: a level one stays pending, as KCore expects) or when
/// none is pending, so a level interrupt cannot keep it looping.
pub fn take_kicks(gic: &GicInfo) -> u64 {
    const SPURIOUS: u64 = 1020;
    /// Kicks from every other core, with room: GICv2 keeps one pending kick per sender.
    const MAX_ACKS: usize = 8;
    let mut kicks = 0;
    for _ in 0..MAX_ACKS {
        let iar = acknowledge(gic);
        if iar & 0x3ff >= SPURIOUS {
            break;
        }
        end_of_interrupt(gic, iar);
        if iar & 0x3ff != KICK_SGI {
            break;
        }
        kicks += 1;
    }
    kicks
}

/// Reads this core's IAR (GICv3 ICC_IAR1_EL1, GICv2 GICC_IAR): the highest pending interrupt,
/// now active.
fn acknowledge(gic: &GicInfo) -> u64 {
    if gic.v3 {
        let iar: u64;
        // SAFETY: reading ICC_IAR1_EL1 acknowledges an interrupt of this core's CPU interface;
        // [`take_kicks`] ends each one it takes.
        unsafe { asm!("mrs {}, S3_0_C12_C12_0", out(reg) iar, options(nomem, nostack)) };
        iar
    } else {
        const GICC_IAR: u64 = 0x0c;
        u64::from(read32(gic.second + GICC_IAR))
    }
}

/// Ends the interrupt `iar` acknowledged (priority drop and deactivation: EOImode is 0).
fn end_of_interrupt(gic: &GicInfo, iar: u64) {
    if gic.v3 {
        // SAFETY: ICC_EOIR1_EL1 ends the interrupt this core acknowledged, nothing else.
        unsafe { asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) iar, options(nostack)) };
    } else {
        const GICC_EOIR: u64 = 0x10;
        write32(gic.second + GICC_EOIR, iar as u32);
    }
}

/// Waits on this core for a kick or, unless `deadline` is `u64::MAX`, the physical counter to
/// reach `deadline` (the physical timer armed for it), whichever comes first; may also return
/// early for no reason, so callers look again. Needs [`TIMER_PPI`] and the kick enabled.
pub fn wait_for_kick(deadline: u64) {
    if deadline != u64::MAX {
        arm_physical_timer_at(deadline);
    }
    // SAFETY: WFI only waits; a pending kick or the armed timer ends the wait.
    unsafe { asm!("wfi", options(nomem, nostack)) };
    if deadline != u64::MAX {
        disarm_physical_timer();
    }
}

/// Arms the physical timer to fire `ticks` from now.
pub fn arm_physical_timer(ticks: u64) {
    // SAFETY: KCore lets the host use its physical timer (CNTHCTL_EL2.EL1PCEN); only the timer
    // changes.
    unsafe {
        asm!(
            "mrs {now}, cntpct_el0",
            "add {now}, {now}, {ticks}",
            "msr cntp_cval_el0, {now}",
            "msr cntp_ctl_el0, {one}",
            "isb",
            now = out(reg) _, ticks = in(reg) ticks, one = in(reg) 1u64, options(nostack)
        )
    };
}

/// Arms the physical timer `ticks` from now with its interrupt masked (CNTP_CTL_EL0.IMASK): it
/// asserts nothing, but QEMU under icount ends this core's turn at its deadline, which lets a
/// bench have the cores take turns in the middle of what it measures.
pub fn arm_masked_timer(ticks: u64) {
    // SAFETY: as for `arm_physical_timer`; masked, the timer raises no interrupt.
    unsafe {
        asm!(
            "mrs {now}, cntpct_el0",
            "add {now}, {now}, {ticks}",
            "msr cntp_cval_el0, {now}",
            "msr cntp_ctl_el0, {enabled_masked}",
            "isb",
            now = out(reg) _, ticks = in(reg) ticks, enabled_masked = in(reg) 0b11u64, options(nostack)
        )
    };
}

/// Stops the physical timer: its interrupt is no longer asserted.
pub fn disarm_physical_timer() {
    // SAFETY: as for `arm_physical_timer`.
    unsafe { asm!("msr cntp_ctl_el0, xzr", "isb", options(nostack)) };
}

/// Whether the physical timer's condition is met (CNTP_CTL_EL0.ISTATUS).
pub fn physical_timer_fired() -> bool {
    let ctl: u64;
    // SAFETY: reading the timer's control has no side effects.
    unsafe { asm!("mrs {}, cntp_ctl_el0", out(reg) ctl, options(nomem, nostack)) };
    ctl & 0b100 != 0
}

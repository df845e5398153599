//! The world switch (SeKVM CtxtSwitch, layer 29): moves a core from the host's world into a
//! vCPU's and back. Out go the host's EL1 registers, FP/SIMD and EL2 controls (and its PMU
//! counters stop), in come the guest's; the guest runs until an exit KCore cannot serve in
//! place; then the same in reverse. The EL2 controls of each world are one [`El2Controls`]
//! value from `vcpu::controls`, loaded by [`load_controls`].

use super::controls::cptr;
use super::fp::{self, CoreFp, FpBank};
use super::vgic::{vtimer_firing, Intid, ListReg, LoadedLrs, LrState, VgicState, Virq, MAX_LRS, VTIMER_PRIORITY};
use super::VcpuContext;
use crate::machine::guest_regs::{CoreControls, El2Controls, FpRegs, GuestGprs};
use crate::machine::vgic::{self as gic, Interface, VgicRegs};
use crate::machine::{features, regs, world_switch as cpu, GuestExit};

/// Loads one world's EL2 controls (the guest's about to run, or the host's again); `ich_hcr`:
/// ICH_HCR_EL2 too (GICv3; a guest's own comes with its virtual interface, `load_vgic`).
#[inline]
pub fn load_controls(controls: &El2Controls, ich_hcr: bool) {
    cpu::set_el2_controls(controls, ich_hcr)
}

/// Sets this core up to run the host: the EL2 state of both worlds, then the host's controls.
/// Every list register of the core's virtual interface is emptied: KCore loads at most
/// `MAX_LRS` of them per vCPU, and the others' reset values are UNKNOWN (GICv3 ICH_LR<n>_EL2,
/// GICv2 GICH_LRn): one left holding an interrupt would reach whichever guest runs here.
pub fn enter_host_world(core: &CoreControls, host: &El2Controls) {
    regs::set_core_controls(core);
    let interface = gic::interface();
    gic::clear_list_registers(interface);
    load_controls(host, interface == Interface::V3);
}

/// A core's host FP/SIMD registers (q0-q31, FPSR, FPCR) while guests run on it. The first
/// VCPU_RUN after the host last used them parks them here; from then on the host runs with
/// CPTR_EL2.TFP set, so that its first FP/SIMD instruction traps to KCore, which puts them back
/// ([`unpark_host_fp`]) and lifts the trap before the instruction runs again. Until then the
/// registers hold the last guest's values, which its context has too (saved at its exit), and
/// which the host cannot read: every access traps first. A VCPU_RUN that follows one without an
/// FP/SIMD instruction of the host between them neither saves nor restores the host's. `guest`
/// says which guest values the registers hold meanwhile (`vcpu::fp`): a vCPU that runs again
/// here with nothing else on them in between gets no reload.
pub struct HostFp {
    regs: FpRegs,
    parked: bool,
    guest: CoreFp,
}

impl HostFp {
    /// Core `core`'s: nothing parked, no guest's values held.
    pub const fn new(core: usize) -> HostFp {
        HostFp { regs: FpRegs::ZERO, parked: false, guest: CoreFp::new(core) }
    }
}

/// A fresh host on this core (boot, reset, PSCI CPU_ON), its EL2 controls loaded (TFP clear):
/// the FP/SIMD registers are zeroed, so that nothing a guest left in them before (a warm reset
/// need not clear registers) reaches the host, and none of the host's are parked. The stamp
/// count stays: a mark is never stamped twice.
pub fn fresh_host_fp(host_fp: &mut HostFp) {
    cpu::restore_fp(&FpRegs::ZERO);
    host_fp.parked = false;
    host_fp.guest.forget();
}

/// The CPU's own FP/SIMD registers (CPTR_EL2.TFP clear: the guest's controls).
struct CpuFp;

impl FpBank for CpuFp {
    #[inline]
    fn load(&mut self, regs: &FpRegs) {
        cpu::restore_fp(regs)
    }

    #[inline]
    fn save(&mut self, out: &mut FpRegs) {
        cpu::save_fp(out)
    }
}

/// The host's EL2 controls while its FP/SIMD registers are parked: `host` with CPTR_EL2.TFP.
pub fn parked_host_controls(host: &El2Controls) -> El2Controls {
    El2Controls { cptr: host.cptr | cptr::TFP, ..*host }
}

/// The host's FP/SIMD access trapped (CPTR_EL2.TFP) on this core, whose host world has the EL2
/// controls `host`: its registers come back from `host_fp` and the trap is lifted (the host's
/// controls again), so the instruction runs again on the host's own values. False, having changed
/// nothing, when nothing was parked: the trap is not the world switch's.
pub fn unpark_host_fp(host: &El2Controls, host_fp: &mut HostFp) -> bool {
    if !host_fp.parked {
        return false;
    }
    // TFP clear first: KCore's own FP/SIMD accesses trap with it too.
    load_controls(host, gic::interface() == Interface::V3);
    cpu::restore_fp(&host_fp.regs);
    host_fp.parked = false;
    host_fp.guest.forget();
    true
}

/// A core's host world as the world switch leaves and resumes it: its EL2 controls, the same
/// with its FP/SIMD registers parked ([`parked_host_controls`]), and those registers.
pub struct HostWorld<'a> {
    pub parked_controls: &'a El2Controls,
    pub fp: &'a mut HostFp,
}

/// How a guest enters on this core: the CPU's features (`features::boot`), the guest's EL2
/// controls, and whether the host's PMU counters stop while it runs
/// (`controls::stops_host_pmu_in_guest`).
pub struct GuestEntry<'a> {
    pub cpu: &'a features::CpuFeatures,
    pub controls: &'a El2Controls,
    pub stop_host_pmu: bool,
}

/// Runs `vcpu` on this core, whose host world is `host`, entering it as `guest` says, until `serve` returns a value for an exit; `serve` gets every exit first and returns `None`
/// for those it served in place (the guest runs on). `in_place` sees the
/// synchronous exits the machine's fast path offers it (`GuestWorld::serve_in_place`, with the
/// syndrome) before any of that: it serves them without leaving the guest's world, or declines
/// having changed nothing, and then `serve` gets the exit. A physical IRQ that the guest's own
/// interrupt state explains (`serve_irq_in_place`) is served by the IRQ fast path and never
/// reaches `serve`, while `irq_in_place` allows it; every other one does.
#[inline]
pub fn run_vcpu<R>(
    vcpu: &mut VcpuContext,
    host: HostWorld<'_>,
    guest: GuestEntry<'_>,
    mut in_place: impl FnMut(&mut VcpuContext, u64) -> bool,
    irq_in_place: impl Fn() -> bool,
    mut serve: impl FnMut(&mut VcpuContext, GuestExit) -> Option<R>,
) -> R {
    let ras = guest.cpu.ras();
    let interface = gic::interface_of(guest.cpu);
    let host_el1 = cpu::saved_el1();
    if !host.fp.parked {
        // TFP is clear while the host's registers are live.
        cpu::save_fp(&mut host.fp.regs);
        host.fp.parked = true;
    }
    let host_pmu_counters = guest.stop_host_pmu.then(cpu::stop_pmu_counters);
    cpu::restore_el1(&vcpu.el1);
    // The guest's controls (TFP clear) before its FP/SIMD registers: the host's may trap them.
    // ICH_HCR_EL2 is the vCPU's own, which `load_vgic` writes.
    load_controls(guest.controls, false);
    fp::enter_guest(&host.fp.guest, &vcpu.fp, vcpu.fp_mark, &mut CpuFp);
    let mut lr_count = load_vgic(&mut vcpu.vgic, interface);
    if ras {
        // Nothing passes through DISR_EL1 from one vCPU to the next.
        cpu::clear_vdisr();
    }
    let answer = loop {
        // HCR_EL2.VSE is clear in the guest's controls, and stays clear while `virtual_serror`
        // is false (only this sets it; the guest's taking it clears it): only a pending
        // virtual SError needs the register.
        if vcpu.virtual_serror {
            cpu::set_virtual_serror(true, ras);
        }
        let exit = cpu::run_guest(&mut Running {
            vcpu,
            in_place: &mut in_place,
            irq_in_place: &irq_in_place,
            interface,
            lr_count: &mut lr_count,
        });
        vcpu.virtual_serror = vcpu.virtual_serror && cpu::virtual_serror_pending();
        if let Some(answer) = serve(vcpu, exit) {
            break answer;
        }
    };
    save_vgic(&mut vcpu.vgic, interface, lr_count);
    cpu::save_el1(&mut vcpu.el1);
    fp::exit_guest(&mut host.fp.guest, &mut vcpu.fp, &mut vcpu.fp_mark, &mut CpuFp);
    cpu::restore_el1(&host_el1);
    // The guest's FP/SIMD values stay in the registers, behind the host's trap.
    load_controls(host.parked_controls, interface == Interface::V3);
    if let Some(running) = host_pmu_counters {
        cpu::restart_pmu_counters(running);
    }
    answer
}

/// Loads the vCPU's virtual CPU interface (after its EL2 controls): its queue first fills the
/// free list registers. A vCPU that never had an interrupt (HCR.En off) gets only its VMCR: its
/// LRs and active priorities are empty. Returns the LR count used (0 then).
#[inline]
fn load_vgic(vgic: &mut VgicState, interface: Interface) -> usize {
    if !vgic.enabled() {
        gic::load_control(interface, vgic.vmcr, vgic.hcr);
        return 0;
    }
    load_enabled_vgic(vgic, interface)
}

/// [`load_vgic`] of an interface that is on.
fn load_enabled_vgic(vgic: &mut VgicState, interface: Interface) -> usize {
    let mut regs = VgicRegs { vmcr: vgic.vmcr, ap0r: vgic.ap0r, ap1r: vgic.ap1r, lrs: [0; MAX_LRS] };
    let lr_count = gic::lr_count(interface).min(MAX_LRS);
    vgic.fill(lr_count);
    // With every LR of the record empty (the usual entry), the words stay 0 (an empty LR).
    if vgic.lrs.iter().any(|lr| lr.state != LrState::Invalid) {
        for n in 0..lr_count {
            regs.lrs[n] = raw_lr(interface, vgic.lrs[n]);
        }
    }
    gic::load(interface, &regs, lr_count, vgic.hcr, true);
    lr_count
}

/// Saves what [`load_vgic`] loaded, as the guest left it, and frees the LRs it emptied. With
/// every loaded LR empty (`gic::save` then reads none), nothing is decoded: `reclaim` frees them
/// all, as it would after decoding them.
fn save_vgic(vgic: &mut VgicState, interface: Interface, lr_count: usize) {
    let enabled = lr_count != 0;
    let mut regs = VgicRegs::default();
    let (elrsr, lrs_read) = gic::save(interface, &mut regs, lr_count, enabled);
    vgic.vmcr = regs.vmcr;
    if enabled {
        if lrs_read {
            for n in 0..lr_count {
                vgic.lrs[n] = list_reg(interface, regs.lrs[n]);
            }
        }
        vgic.ap0r = regs.ap0r;
        vgic.ap1r = regs.ap1r;
        vgic.reclaim(elrsr);
    }
}

/// `lr` in the interface's LR format; an empty LR is 0.
#[inline]
fn raw_lr(interface: Interface, lr: ListReg) -> u64 {
    match (lr.state, interface) {
        (LrState::Invalid, _) => 0,
        (_, Interface::V3) => lr.v3(),
        _ => lr.v2().into(),
    }
}

/// The LR `raw` in the interface's format.
#[inline]
fn list_reg(interface: Interface, raw: u64) -> ListReg {
    if interface == Interface::V3 {
        ListReg::from_v3(raw)
    } else {
        ListReg::from_v2(raw as u32)
    }
}

/// A physical IRQ that the guest's own interrupt state explains, served without a host round
/// trip (the world switch's IRQ fast path, `GuestWorld::serve_irq_in_place`): its virtual timer
/// fired (KCore masks it and makes INTID 27 pending, as Xen's vtimer_interrupt does: the guest
/// sees IMASK set and clears it when it programs its next deadline) or its list registers ran
/// low (the underflow maintenance interrupt: refill them). The rule: in place exactly when one
/// of these holds; any other physical interrupt pending for the host stays pending (KCore
/// acknowledges none) and brings the guest straight back out, to the host this time, since the
/// masked timer and the refilled LRs no longer explain it. Returns whether it served the exit
/// (the guest runs on); declined, it changed nothing.
///
/// The timer with an empty queue (the usual case) touches only the LRs it needs
/// (`VgicState::inject_loaded`); anything else saves the whole interface, injects, refills and
/// loads it again, with the same effect (`vcpu::vgic`'s tests show both agree).
fn serve_irq_in_place(vcpu: &mut VcpuContext, interface: Interface, lr_count: &mut usize) -> bool {
    const VTIMER: Virq = Virq { intid: Intid::VTIMER, priority: VTIMER_PRIORITY };
    if interface == Interface::None {
        return false;
    }
    let timer_firing = vtimer_firing(regs::virtual_timer().0);
    if timer_firing && vcpu.vgic.inject_loaded(VTIMER, *lr_count, &mut Loaded(interface)) {
        regs::mask_virtual_timer();
        return true;
    }
    let underflow = *lr_count != 0 && gic::underflow(interface);
    if !timer_firing && !underflow {
        return false;
    }
    save_vgic(&mut vcpu.vgic, interface, *lr_count);
    // A full queue leaves the timer as it is: the exit goes to the host.
    let timer = timer_firing && vcpu.vgic.inject(VTIMER).is_ok();
    if timer {
        regs::mask_virtual_timer();
    }
    *lr_count = load_vgic(&mut vcpu.vgic, interface);
    timer || underflow
}

/// The list registers of the interface loaded on this core.
struct Loaded(Interface);

impl LoadedLrs for Loaded {
    #[inline]
    fn elrsr(&self) -> u64 {
        gic::elrsr(self.0)
    }

    #[inline]
    fn read(&self, n: usize) -> ListReg {
        list_reg(self.0, gic::read_lr(self.0, n))
    }

    #[inline]
    fn write(&mut self, n: usize, lr: ListReg) {
        gic::write_lr(self.0, n, raw_lr(self.0, lr));
    }
}

/// A vCPU in the guest's world, as the machine's world switch runs it.
struct Running<'a, F, I> {
    vcpu: &'a mut VcpuContext,
    in_place: &'a mut F,
    /// Whether the IRQ fast path may serve at all (not once KCore halts: the guest must exit).
    irq_in_place: &'a I,
    interface: Interface,
    /// The LRs loaded (`load_vgic`), which an IRQ served in place reloads.
    lr_count: &'a mut usize,
}

impl<F: FnMut(&mut VcpuContext, u64) -> bool, I: Fn() -> bool> cpu::GuestWorld for Running<'_, F, I> {
    #[inline]
    fn gprs(&mut self) -> &mut GuestGprs {
        &mut self.vcpu.gprs
    }

    #[inline]
    fn serve_in_place(&mut self, esr: u64) -> bool {
        (self.in_place)(self.vcpu, esr)
    }

    #[inline]
    fn serve_irq_in_place(&mut self) -> bool {
        (self.irq_in_place)() && serve_irq_in_place(self.vcpu, self.interface, self.lr_count)
    }
}

//! VCPU_RUN: runs a vCPU through the world switch (`vcpu::world_switch`) until an exit the host
//! must see, serving every other exit (share calls, emulated registers, UNDEFs) inside KCore
//! without leaving the guest's world. The exit record the host gets is the dispatcher's, final.

use super::super::decode::GuestTrap;
use super::super::trap_dispatcher::{vm_exit_dispatcher, GuestEnv, VmExit};
use super::principal::{self, Principal};
use super::{host_cores, inject_el1, invariants, state};
use crate::addr::Ipa;
use crate::ids::{VcpuId, VmId};
use crate::machine::{features, regs, Aarch64, GuestExit, RESULT_REGS};
use crate::vcpu::controls::{self, HostPmu};
use crate::vcpu::world_switch::{self, GuestEntry, HostWorld};
use crate::vcpu::{ExitRecord, VcpuContext};
use corevisor_abi::{console, Status};
use log::info;

/// Serves VCPU_RUN for vCPU `vcpu` of VM `vm`, `answer` answering its last exit; the exit
/// record goes into x1..x5 of the host's result registers `call`, and the console bytes the
/// guest wrote before it into x6..x17 (`corevisor_abi::console`).
#[inline(never)]
pub fn vcpu_run(core: usize, call: &mut [u64; RESULT_REGS], vm: VmId, vcpu: VcpuId, answer: u64) {
    let kcore = state::kcore();
    let prepared =
        kcore.vcpu_run_prepare_then(&Aarch64, vm, vcpu, answer, |taken| principal::holds_context(core, taken));
    let mut ticket = match prepared {
        Ok(ticket) => ticket,
        Err(e) => {
            info!("VCPU_RUN vm {vm} vcpu {vcpu} refused: {e:?}");
            call[0] = e.status().as_reg();
            return;
        }
    };
    let cpu = features::boot();
    let pmu = HostPmu::of_build();
    // The guest's MPIDR: its vCPU index in Aff0, bit 31 RES1.
    let vmpidr = 1 << 31 | u64::from(ticket.ctx.index);
    let worlds = host_cores::world_controls(core);
    let guest = controls::for_vcpu(&worlds.guest_template, ticket.vttbr, vmpidr, ticket.cntvoff);
    let stop_host_pmu = controls::stops_host_pmu_in_guest(cpu, pmu);
    principal::set(core, Principal::Guest);
    let id_register = |reg| controls::guest_id_register(cpu, reg);
    let (ram, cntvoff, console) = (ticket.ram, ticket.cntvoff, ticket.console);
    let env = GuestEnv { ram, id_register: &id_register, virtual_timer: &regs::virtual_timer, cntvoff, console };
    let ctx = &mut ticket.ctx;
    let exit = world_switch::run_vcpu(
        ctx,
        HostWorld { parked_controls: &worlds.host_parked, fp: &mut host_cores::host_fp(core) },
        GuestEntry { cpu, controls: &guest, stop_host_pmu },
        |ctx, esr| serve_fast(core, vm, &env, ctx, esr),
        // Once KCore halts, a guest's interrupts end its run: the full exit parks the core.
        || !principal::halted(),
        |ctx, exit| serve_exit(core, vm, &env, ctx, exit),
    );
    principal::set(core, Principal::Host);
    principal::holds_context(core, false);
    let record = match exit {
        HostBound::Record(record) => record,
        HostBound::CpuOn { record, target, entry, arg } => {
            kcore.guest_cpu_on(vm, target, entry, arg);
            record
        }
    };
    // The console bytes came before the exit: the host gets both at once, and the buffer is
    // empty again before the context goes back (so it is empty whenever the vCPU is not running,
    // and nothing is left in it when a VM is powered off or destroyed).
    let (_, console_regs) = call.split_last_chunk_mut::<{ 1 + console::BYTE_REGS }>().unwrap_or_else(|| unreachable!());
    ticket.ctx.console.drain_into(console_regs);
    kcore.vcpu_run_finish(ticket);
    call[0] = Status::Success.as_reg();
    call[1] = record.reason;
    call[2..6].copy_from_slice(&record.details);
}

// VCPU_RUN's console registers are the last of its result registers.
const _: () = assert!(RESULT_REGS - 1 - console::BYTE_REGS == console::COUNT_REG);

/// An exit for the host, as the dispatcher finished it.
enum HostBound {
    Record(ExitRecord),
    CpuOn { record: ExitRecord, target: VcpuId, entry: Ipa, arg: u64 },
}

/// Serves one guest exit on this core while the guest's world is loaded: `None` if the guest
/// runs on, the exit for the host otherwise.
#[inline(always)]
fn serve_exit(core: usize, vm: VmId, env: &GuestEnv, ctx: &mut VcpuContext, exit: GuestExit) -> Option<HostBound> {
    principal::park_if_halted();
    let esr = regs::esr_el2();
    let trap = GuestTrap::decode(exit, esr, &ctx.gprs.frame, || (regs::far_el2(), regs::hpfar_el2()));
    serve(core, vm, env, ctx, trap, esr)
}

/// The world switch's fast path (`GuestWorld::serve_in_place`): a synchronous exit with syndrome
/// `esr` and only x0..x18, x30, ELR and SPSR saved. Served here if the decoded trap is one KCore
/// serves with those alone ([`GuestTrap::in_place`]), exactly as the full exit would serve it;
/// declined, having changed nothing, otherwise (and when the halt flag is up: the full exit
/// parks). The console's accesses (data aborts) never come here: the full exit's loop serves them.
#[inline(always)]
fn serve_fast(core: usize, vm: VmId, env: &GuestEnv, ctx: &mut VcpuContext, esr: u64) -> bool {
    if principal::halted() {
        return false;
    }
    let Some(trap) = GuestTrap::decode_in_place(esr, &ctx.gprs.frame) else { return false };
    let bound = serve(core, vm, env, ctx, trap, esr);
    // `in_place` names only exits that the dispatcher serves inside KCore.
    debug_assert!(bound.is_none());
    true
}

/// Carries out the dispatcher's answer to guest exit `trap` (syndrome `esr`, for logs). Always
/// inlined: each path keeps only the cases its traps can take (`cargo xtask bench`).
#[inline(always)]
fn serve(core: usize, vm: VmId, env: &GuestEnv, ctx: &mut VcpuContext, trap: GuestTrap, esr: u64) -> Option<HostBound> {
    let exit = vm_exit_dispatcher(trap, ctx, env);
    if trap.serror {
        log::debug!("vm {vm}: an SError the guest caused (ESR {esr:#x}): a virtual SError for the guest");
    }
    match exit {
        VmExit::Resume => None,
        VmExit::Undef { pc } => {
            log::debug!("vm {vm}: guest exit EC {:#x} at {pc:#x}: UNDEF", super::super::esr::class(esr));
            inject_el1::undef(&mut ctx.gprs.frame, pc);
            None
        }
        VmExit::Share { grant, gpa, size } => {
            share(core, vm, &mut ctx.gprs.frame.x[0], grant, gpa, size);
            None
        }
        VmExit::ToHost(record) => Some(HostBound::Record(record)),
        VmExit::CpuOn { record, target, entry, arg } => Some(HostBound::CpuOn { record, target, entry, arg }),
    }
}

/// A guest's SET_DESC_PFN (`grant`) or UNSET_DESC_PFN over `[gpa, gpa + size)`, under the VM's
/// and the ownership locks, its status in `x0`.
#[inline(always)]
fn share(core: usize, vm: VmId, x0: &mut u64, grant: bool, gpa: Ipa, size: u64) {
    principal::holds_context(core, false);
    let kcore = state::kcore();
    // The context is this core's again only under the locks, which a power-down keeps.
    let result = kcore.guest_share_then(&Aarch64, vm, grant, gpa, size, || principal::holds_context(core, true));
    // A share call changes ownership records without leaving the guest's world.
    invariants::check_after_share(core);
    if let Err(e) = result {
        let call = if grant { "SET_DESC_PFN" } else { "UNSET_DESC_PFN" };
        info!("vm {vm}: {call} {gpa:#x}+{size:#x} refused: {e:?}");
    }
    *x0 = result.map_or_else(|e| e.status(), |()| Status::Success).as_reg();
}

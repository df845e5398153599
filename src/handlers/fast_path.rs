//! The exits KCore serves without the full trap path (issue 12, item 5): a guest's share calls
//! and emulated system registers, served between the guest's `hvc`/`mrs` and its `eret` with
//! only the caller-saved registers saved (world_switch.S, `__guest_exit_sync`). What each does is
//! exactly what the full exit does for it: the same dispatcher decides, the same code serves the
//! share call (with its log line and the invariant check), and anything else is declined before
//! anything changes, so that the full exit serves it as before.

use super::esr::{self, ec};
use super::trap_dispatcher::{vm_exit_dispatcher, GuestEnv, VmExit};
use super::trap_handler::{check_invariants_of, with_kcore, HALTED, HOLDS_CONTEXT};
use crate::machine::guest_regs::GuestGprs;
use crate::machine::world_switch::GuestWorld;
use crate::machine::{regs, Aarch64, GuestExit, TrapFrame, TrapKind};
use crate::vcpu::VcpuContext;
use core::sync::atomic::Ordering;
use corevisor_abi::{guest_call, Status};
use log::info;

/// A running vCPU as the world switch sees it, with what serving its exits in place needs.
pub(super) struct InPlace<'a, 'e> {
    pub core: usize,
    pub vmid: u16,
    pub ctx: &'a mut VcpuContext,
    pub env: &'a GuestEnv<'e>,
}

impl GuestWorld for InPlace<'_, '_> {
    fn gprs(&mut self) -> &mut GuestGprs {
        &mut self.ctx.gprs
    }

    fn serve_in_place(&mut self) -> bool {
        // A raised halt flag: the full exit parks the core.
        if HALTED.load(Ordering::Relaxed) {
            return false;
        }
        let esr = regs::esr_el2();
        let frame = &mut self.ctx.gprs.frame;
        match esr::class(esr) {
            // The share calls, decided as `vm_exit_dispatcher` decides them (an `hvc #0` with
            // SET_DESC_PFN or UNSET_DESC_PFN in w0: x1 the address, x2 the size). Every other
            // call goes to the host (and `hvc #n`, n != 0, is an UNDEF): the full exit.
            ec::HVC64 if esr::imm16(esr) == 0 => {
                let grant = match frame.x[0] as u32 {
                    guest_call::SET_DESC_PFN => true,
                    guest_call::UNSET_DESC_PFN => false,
                    _ => return false,
                };
                let (gpa, size) = (frame.x[1], frame.x[2]);
                serve_share(self.core, self.vmid, frame, grant, gpa, size);
                true
            }
            // x19..x28 are not saved on this path: an MRS into one of them takes the full exit.
            ec::SYS64 if !(19..=28).contains(&(esr >> 5 & 0x1f)) => {
                let exit = GuestExit { kind: TrapKind::Sync, serror: false };
                // The dispatcher changes the vCPU only when it serves the exit (Resume); an
                // UNDEF (an MSR/MRS KCore does not emulate) leaves it as it was, and the full
                // exit injects it.
                matches!(vm_exit_dispatcher(exit, esr, 0, self.ctx, self.env), VmExit::Resume)
            }
            _ => false,
        }
    }
}

/// A guest's SET_DESC_PFN (`grant`) or UNSET_DESC_PFN over `[gpa, gpa + size)`: served under the
/// state lock, the invariants checked after it (debug and `check-invariants` builds), the status
/// in the guest's x0. Both paths serve share calls here.
pub(super) fn serve_share(core: usize, vmid: u16, frame: &mut TrapFrame, grant: bool, gpa: u64, size: u64) {
    HOLDS_CONTEXT[core].store(false, Ordering::Release);
    let result = with_kcore(|kcore| {
        HOLDS_CONTEXT[core].store(true, Ordering::Relaxed);
        let result = kcore.guest_share(&Aarch64, vmid, grant, gpa, size);
        // A share call changes ownership records without leaving the guest's world.
        check_invariants_of(kcore);
        result
    });
    if let Err(e) = result {
        info!("vm {vmid}: {} {gpa:#x}+{size:#x} refused: {e:?}", if grant { "SET_DESC_PFN" } else { "UNSET_DESC_PFN" });
    }
    frame.x[0] = result.map_or_else(|e| e.status(), |()| Status::Success).as_reg();
}

//! The VM hypercalls that KCore serves inside one host trap (all but VCPU_RUN, which the trap
//! handler runs because it switches worlds): each decoded call goes to its VM-layer operation,
//! whose answer becomes the SMCCC result.

use super::decode::VmCall;
use crate::machine::Machine;
use crate::vm::{Kcore, VmError};
use corevisor_abi::HypResult;

/// Serves VM hypercall `call` (function id `function`, for the log), and logs what was refused
/// and why.
pub fn serve(m: &impl Machine, kcore: &Kcore, function: u32, call: VmCall) -> HypResult {
    let name = super::decode::call_name(function);
    let result: Result<u64, VmError> = match call {
        VmCall::RegisterVm { ram } => kcore.register_vm(m, ram).map(|vm| vm.raw()),
        VmCall::RegisterVcpu { vm, vcpu } => kcore.register_vcpu(vm, vcpu).map(|()| 0),
        VmCall::SetBootInfo { vm, gpa, size } => kcore.set_boot_info(vm, gpa, size).map(|i| i as u64),
        VmCall::RemapVmImage { vm, index, pfn } => kcore.remap_vm_image(vm, index, pfn).map(|()| 0),
        VmCall::VerifyVmImage { vm } => kcore.verify_vm_image(m, vm),
        VmCall::ClearVmS2Range { vm, base, size } => kcore.clear_vm_range(m, vm, base, size),
        VmCall::PhysAddrIoremap { vm, gpa, pa, size } => kcore.ioremap(m, vm, gpa, pa, size).map(|()| 0),
        VmCall::TimerSetCntvoff { vm, offset } => kcore.set_cntvoff(vm, offset).map(|()| 0),
        VmCall::VmPowerOff { vm } => kcore.power_off(vm).map(|()| 0),
        VmCall::DestroyVm { vm } => kcore.destroy(m, vm),
        VmCall::BootData { vm, gpa, pfn } => kcore.load_boot_data(m, vm, gpa, pfn).map(|()| 0),
        VmCall::InjectIrq { vm, vcpu, virq } => kcore.inject_irq(vm, vcpu, virq).map(|()| 0),
        VmCall::VmConsole { vm, page } => kcore.set_console(vm, page).map(|()| 0),
    };
    match result {
        Ok(value) => {
            log::debug!("{name} {call:x?}: ok ({value:#x})");
            HypResult::success([value, 0, 0])
        }
        Err(e) => {
            log::info!("{name} refused: {e:?} ({call:x?})");
            HypResult::status(e.status())
        }
    }
}

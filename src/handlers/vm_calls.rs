//! The VM hypercalls that KCore serves inside one host trap (all but VCPU_RUN, which the trap
//! handler runs because it switches worlds): each decoded call goes to its VM-layer operation,
//! whose answer becomes the SMCCC result.

use super::decode::VmCall;
use super::vm_contract::typed;
use crate::machine::Machine;
use crate::vm::{Kcore, VmError};
use corevisor_abi::HypResult;

/// Serves VM hypercall `call`, and logs what was refused and why.
pub fn serve(m: &impl Machine, kcore: &mut Kcore, call: VmCall) -> HypResult {
    let mut vm_layer = typed(kcore);
    let result: Result<u64, VmError> = match call {
        VmCall::RegisterVm { ram } => vm_layer.register_vm(m, ram).map(|vm| vm.raw()),
        VmCall::RegisterVcpu { vm, vcpu } => vm_layer.register_vcpu(vm, vcpu).map(|()| 0),
        VmCall::SetBootInfo { vm, gpa, size } => vm_layer.set_boot_info(vm, gpa, size).map(|i| i as u64),
        VmCall::RemapVmImage { vm, index, pfn } => vm_layer.remap_vm_image(vm, index, pfn).map(|()| 0),
        VmCall::VerifyVmImage { vm } => vm_layer.verify_vm_image(m, vm),
        VmCall::ClearVmS2Range { vm, base, size } => vm_layer.clear_vm_range(m, vm, base, size),
        VmCall::PhysAddrIoremap { vm, gpa, pa, size } => vm_layer.ioremap(m, vm, gpa, pa, size).map(|()| 0),
        VmCall::TimerSetCntvoff { vm, offset } => vm_layer.set_cntvoff(vm, offset).map(|()| 0),
        VmCall::VmPowerOff { vm } => vm_layer.power_off(vm).map(|()| 0),
        VmCall::DestroyVm { vm } => vm_layer.destroy(m, vm),
    };
    match result {
        Ok(value) => {
            log::debug!("{} {call:x?}: ok ({value:#x})", call.name());
            HypResult::success([value, 0, 0])
        }
        Err(e) => {
            log::info!("{} refused: {e:?} ({call:x?})", call.name());
            HypResult::status(e.status())
        }
    }
}

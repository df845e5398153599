//! The VM hypercalls that KCore serves inside one host trap (all but VCPU_RUN, which the trap
//! handler runs because it switches worlds): each is decoded here and handed to the VM layer,
//! whose answer becomes the SMCCC result.

use crate::addr::{Ipa, IpaRange};
use crate::ids::VmId;
use crate::machine::Machine;
use crate::vm::{host_pa, host_pfn, host_vcpu, host_vm, Kcore, VmError};
use corevisor_abi::{host_call, HypResult, Status};

/// Serves VM hypercall `function` with arguments x1..x4, and logs what was refused and why.
pub fn serve(m: &impl Machine, kcore: &mut Kcore, function: u32, args: [u64; 4]) -> HypResult {
    let [a1, a2, a3, a4] = args;
    let result: Result<u64, VmError> = match function {
        host_call::REGISTER_VM => {
            IpaRange::new(a1, a2).ok_or(VmError::BadArgument).and_then(|ram| kcore.register_vm(m, ram)).map(VmId::raw)
        }
        host_call::REGISTER_VCPU => host_vm(a1).and_then(|vm| kcore.register_vcpu(vm, host_vcpu(a2)?)).map(|()| 0),
        host_call::SET_BOOT_INFO => host_vm(a1).and_then(|vm| kcore.set_boot_info(vm, Ipa(a2), a3)).map(|i| i as u64),
        host_call::REMAP_VM_IMAGE => host_vm(a1).and_then(|vm| kcore.remap_vm_image(vm, a2, host_pfn(a3)?)).map(|()| 0),
        host_call::VERIFY_VM_IMAGE => host_vm(a1).and_then(|vm| kcore.verify_vm_image(m, vm)),
        host_call::CLEAR_VM_S2_RANGE => host_vm(a1).and_then(|vm| kcore.clear_vm_range(m, vm, host_pa(a2)?, a3)),
        host_call::PHYS_ADDR_IOREMAP => {
            host_vm(a1).and_then(|vm| kcore.ioremap(m, vm, Ipa(a2), host_pa(a3)?, a4)).map(|()| 0)
        }
        host_call::TIMER_SET_CNTVOFF => host_vm(a1).and_then(|vm| kcore.set_cntvoff(vm, a2)).map(|()| 0),
        host_call::VM_POWER_OFF => host_vm(a1).and_then(|vm| kcore.power_off(vm)).map(|()| 0),
        host_call::DESTROY_VM => host_vm(a1).and_then(|vm| kcore.destroy(m, vm)),
        _ => return HypResult::status(Status::NotSupported),
    };
    match result {
        Ok(value) => {
            log::debug!("{} {a1:#x} {a2:#x} {a3:#x} {a4:#x}: ok ({value:#x})", name(function));
            HypResult::success([value, 0, 0])
        }
        Err(e) => {
            log::info!("{} refused: {e:?} (args {:#x} {:#x} {:#x} {:#x})", name(function), a1, a2, a3, a4);
            HypResult::status(e.status())
        }
    }
}

/// The hypercall's name, for logs.
pub fn name(function: u32) -> &'static str {
    match function {
        host_call::REGISTER_VM => "REGISTER_VM",
        host_call::REGISTER_VCPU => "REGISTER_VCPU",
        host_call::SET_BOOT_INFO => "SET_BOOT_INFO",
        host_call::REMAP_VM_IMAGE => "REMAP_VM_IMAGE",
        host_call::VERIFY_VM_IMAGE => "VERIFY_VM_IMAGE",
        host_call::VCPU_RUN => "VCPU_RUN",
        host_call::CLEAR_VM_S2_RANGE => "CLEAR_VM_S2_RANGE",
        host_call::PHYS_ADDR_IOREMAP => "PHYS_ADDR_IOREMAP",
        host_call::TIMER_SET_CNTVOFF => "TIMER_SET_CNTVOFF",
        host_call::VM_POWER_OFF => "VM_POWER_OFF",
        host_call::DESTROY_VM => "DESTROY_VM",
        _ => "unknown VM call",
    }
}

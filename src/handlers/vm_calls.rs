//! The VM hypercalls that KCore serves inside one host trap (all but VCPU_RUN, which the trap
//! handler runs because it switches worlds): each is decoded here and handed to the VM layer,
//! whose answer becomes the SMCCC result.

use crate::machine::Machine;
use crate::vm::{Kcore, VmError};
use corevisor_abi::{host_call, HypResult, Status};

/// Serves VM hypercall `function` with arguments x1..x4, and logs what was refused and why.
pub fn serve(m: &impl Machine, kcore: &mut Kcore, function: u32, args: [u64; 4]) -> HypResult {
    let [a1, a2, a3, a4] = args;
    let result: Result<u64, VmError> = match function {
        host_call::REGISTER_VM => kcore.register_vm(m, a1, a2).map(u64::from),
        host_call::REGISTER_VCPU => kcore.register_vcpu(a1, a2).map(|()| 0),
        host_call::SET_BOOT_INFO => kcore.set_boot_info(a1, a2, a3).map(|i| i as u64),
        host_call::REMAP_VM_IMAGE => kcore.remap_vm_image(a1, a2, a3).map(|()| 0),
        host_call::VERIFY_VM_IMAGE => kcore.verify_vm_image(m, a1),
        host_call::CLEAR_VM_S2_RANGE => kcore.clear_vm_range(m, a1, a2, a3),
        host_call::PHYS_ADDR_IOREMAP => kcore.ioremap(m, a1, a2, a3, a4).map(|()| 0),
        host_call::TIMER_SET_CNTVOFF => kcore.set_cntvoff(a1, a2).map(|()| 0),
        host_call::VM_POWER_OFF => kcore.power_off(a1).map(|()| 0),
        host_call::DESTROY_VM => kcore.destroy(m, a1),
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

//! TEMPORARY ADAPTER (issue 12, deleted by the lead at merge): the VM layer's typed API as the
//! workers' contract states it (COMMON.md), over today's `Kcore`, so that this branch compiles
//! before the VM-record branch lands. At merge: delete this file and its `mod` line, replace
//! `typed(kcore)` by `kcore` and `vm_contract::RunTicket` by `crate::vm::RunTicket`.

use crate::addr::{Ipa, IpaRange, Pa, Pfn};
use crate::ids::{VcpuId, VmId};
use crate::machine::Machine;
use crate::vcpu::VcpuContext;
use crate::vm::{Kcore, VmError};
use alloc::boxed::Box;

/// What a vCPU needs to run (the contract's `RunTicket`).
pub struct RunTicket {
    pub vm: VmId,
    pub vcpu: VcpuId,
    pub ctx: Box<VcpuContext>,
    pub vttbr: u64,
    pub cntvoff: u64,
    pub ram: IpaRange,
}

/// `Kcore` seen through the contract's signatures.
pub struct Typed<'a>(&'a mut Kcore);

#[inline]
pub fn typed(kcore: &mut Kcore) -> Typed<'_> {
    Typed(kcore)
}

impl Typed<'_> {
    #[inline]
    pub fn register_vm(&mut self, m: &impl Machine, ram: IpaRange) -> Result<VmId, VmError> {
        let vmid = self.0.register_vm(m, ram.base(), ram.size())?;
        VmId::new(vmid.into()).ok_or(VmError::NoVm)
    }
    #[inline]
    pub fn register_vcpu(&mut self, vm: VmId, vcpu: VcpuId) -> Result<(), VmError> {
        self.0.register_vcpu(vm.raw(), vcpu.raw())
    }
    #[inline]
    pub fn set_boot_info(&mut self, vm: VmId, gpa: Ipa, size: u64) -> Result<usize, VmError> {
        self.0.set_boot_info(vm.raw(), gpa.raw(), size)
    }
    #[inline]
    pub fn remap_vm_image(&mut self, vm: VmId, index: u64, pfn: Pfn) -> Result<(), VmError> {
        self.0.remap_vm_image(vm.raw(), index, pfn.raw())
    }
    #[inline]
    pub fn verify_vm_image(&mut self, m: &impl Machine, vm: VmId) -> Result<u64, VmError> {
        self.0.verify_vm_image(m, vm.raw())
    }
    #[inline]
    pub fn vcpu_run_prepare(
        &mut self,
        m: &impl Machine,
        vm: VmId,
        vcpu: VcpuId,
        answer: u64,
    ) -> Result<RunTicket, VmError> {
        let t = self.0.vcpu_run_prepare(m, vm.raw(), vcpu.raw(), answer)?;
        let ram = IpaRange::new(t.ram_base, t.ram_size).ok_or(VmError::State)?;
        Ok(RunTicket { vm, vcpu, ctx: t.ctx, vttbr: t.vttbr, cntvoff: t.cntvoff, ram })
    }
    #[inline]
    pub fn vcpu_run_finish(&mut self, ticket: RunTicket) {
        let RunTicket { vm, vcpu, ctx, vttbr, cntvoff, ram } = ticket;
        self.0.vcpu_run_finish(crate::vm::RunTicket {
            vmid: vm.vmid(),
            vcpu: vcpu.index(),
            ctx,
            vttbr,
            cntvoff,
            ram_base: ram.base(),
            ram_size: ram.size(),
        })
    }
    #[inline]
    pub fn guest_share(&mut self, m: &impl Machine, vm: VmId, grant: bool, gpa: Ipa, size: u64) -> Result<(), VmError> {
        self.0.guest_share(m, vm.vmid(), grant, gpa.raw(), size)
    }
    #[inline]
    pub fn guest_cpu_on(&mut self, vm: VmId, target: VcpuId, entry: Ipa, arg: u64) {
        self.0.guest_cpu_on(vm.vmid(), target.raw(), entry.raw(), arg)
    }
    #[inline]
    pub fn clear_vm_range(&mut self, m: &impl Machine, vm: VmId, base: Pa, size: u64) -> Result<u64, VmError> {
        self.0.clear_vm_range(m, vm.raw(), base.raw(), size)
    }
    #[inline]
    pub fn ioremap(&mut self, m: &impl Machine, vm: VmId, gpa: Ipa, pa: Pa, size: u64) -> Result<(), VmError> {
        self.0.ioremap(m, vm.raw(), gpa.raw(), pa.raw(), size)
    }
    #[inline]
    pub fn set_cntvoff(&mut self, vm: VmId, offset: u64) -> Result<(), VmError> {
        self.0.set_cntvoff(vm.raw(), offset)
    }
    #[inline]
    pub fn power_off(&mut self, vm: VmId) -> Result<(), VmError> {
        self.0.power_off(vm.raw())
    }
    #[inline]
    pub fn destroy(&mut self, m: &impl Machine, vm: VmId) -> Result<u64, VmError> {
        self.0.destroy(m, vm.raw())
    }
}

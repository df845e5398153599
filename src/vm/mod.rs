//! VMs (SeKVM BootOps, VCPUOps and MemoryOps as the hypercalls reach them): KCore's whole state
//! behind one lock, and the operation behind each VM hypercall. Every operation checks its
//! arguments against that state and either changes it as the hypercall promises or changes
//! nothing and says why.
//!
//! A VM's slot holds its stage-2 table (with its own page-table pool, a slice of KCore's), its
//! RAM window in guest-physical space, its counter offset and its vCPU contexts. A running vCPU's
//! context is out of the slot, on the core that runs it: that is how "running" is recorded, and
//! why teardown waits until no vCPU runs.

#[cfg(test)]
mod noninterference;
mod power_down;
#[cfg(test)]
mod refinement;
#[cfg(test)]
pub mod spec;
#[cfg(test)]
mod tests;

use crate::boot::{BootError, VcpuState, Verifier, VmState, Vms, MAX_VCPUS, MAX_VMS, VERIFY_CHUNK_PAGES};
use crate::machine::{Machine, PAGE_SIZE};
use crate::memory::pages::Owner;
use crate::memory::{HostMemory, MemError};
use crate::page_table::descriptor::{Regime, INPUT_LIMIT};
use crate::page_table::pool::PagePool;
use crate::page_table::PageTable;
use crate::vcpu::{Pending, VcpuContext};
use alloc::boxed::Box;
use alloc::vec::Vec;
use corevisor_abi::Status;
use ed25519_dalek::VerifyingKey;
pub use power_down::Scrubbed;

/// Page-table pages each VM's stage-2 may use.
pub const VM_POOL_PAGES: u64 = 64;
/// The largest guest RAM window: 4 GiB.
pub const MAX_GUEST_RAM: u64 = 4 << 30;

/// Why a VM operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmError {
    /// An argument is malformed: unaligned, zero, out of range.
    BadArgument,
    NoVm,
    /// The VM or vCPU is not in a state that allows the operation.
    State,
    /// A vCPU of the VM is running.
    Busy,
    Boot(BootError),
    Mem(MemError),
}

impl VmError {
    /// The SMCCC status the host gets.
    pub fn status(self) -> Status {
        match self {
            VmError::BadArgument => Status::InvalidParameters,
            VmError::NoVm => Status::InvalidParameters,
            VmError::State | VmError::Busy => Status::Denied,
            VmError::Boot(BootError::NoVmid | BootError::NoRoom) => Status::NotPresent,
            VmError::Boot(BootError::Rejected) => Status::Denied,
            VmError::Boot(BootError::State(_) | BootError::Vcpu) => Status::Denied,
            VmError::Boot(BootError::NoVm | BootError::BadRange | BootError::BadImage) => Status::InvalidParameters,
            VmError::Boot(BootError::BadPage | BootError::Mem(_)) | VmError::Mem(_) => Status::InvalidAddress,
        }
    }
}

impl From<BootError> for VmError {
    fn from(e: BootError) -> VmError {
        VmError::Boot(e)
    }
}

impl From<MemError> for VmError {
    fn from(e: MemError) -> VmError {
        VmError::Mem(e)
    }
}

/// One VM's KCore-side state.
pub struct VmSlot {
    pub s2: PageTable,
    /// Guest-physical RAM window `[base, base + size)`.
    pub ram_base: u64,
    pub ram_size: u64,
    pub cntvoff: u64,
    /// Registered vCPUs' contexts; `None` for a vCPU that is running (or not registered).
    pub vcpus: Vec<Option<Box<VcpuContext>>>,
}

impl VmSlot {
    pub fn in_ram(&self, gpa: u64) -> bool {
        gpa >= self.ram_base && gpa - self.ram_base < self.ram_size
    }
}

/// VM `vmid`'s slot. A function of the slots alone, so that callers can use KCore's other fields
/// (memory, boot records) beside it.
fn slot_of(slots: &mut [Option<VmSlot>], vmid: u64) -> Result<&mut VmSlot, VmError> {
    let index = vmid.checked_sub(1).ok_or(VmError::NoVm)?;
    slots.get_mut(index as usize).and_then(Option::as_mut).ok_or(VmError::NoVm)
}

/// What a vCPU needs to run: its context, and the VM's stage-2 root, VMID and counter offset.
pub struct RunTicket {
    pub vmid: u16,
    pub vcpu: usize,
    pub ctx: Box<VcpuContext>,
    pub vttbr: u64,
    pub cntvoff: u64,
    /// The VM's RAM window, to tell its stage-2 faults from MMIO.
    pub ram_base: u64,
    pub ram_size: u64,
}

/// KCore's state: memory ownership with the host's stage-2, the VMs' boot states, and the VMs.
pub struct Kcore {
    pub mem: HostMemory,
    pub vms: Vms,
    pub slots: Vec<Option<VmSlot>>,
    /// The page-table pool slice of VM 1; VM n's is `VM_POOL_PAGES` pages further per vmid.
    vm_pools: u64,
    key: VerifyingKey,
}

impl Kcore {
    /// `vm_pools` is the first of `MAX_VMS * VM_POOL_PAGES` KCore pages for VM tables; `key`
    /// checks the VMs' images.
    pub fn new(mem: HostMemory, vm_pools: u64, key: VerifyingKey) -> Kcore {
        Kcore { mem, vms: Vms::new(), slots: (0..MAX_VMS).map(|_| None).collect(), vm_pools, key }
    }

    /// The pages KCore sets aside for VM tables.
    pub const fn vm_pool_bytes() -> u64 {
        MAX_VMS as u64 * VM_POOL_PAGES * PAGE_SIZE
    }

    pub fn slot(&self, vmid: u64) -> Result<&VmSlot, VmError> {
        let index = vmid.checked_sub(1).ok_or(VmError::NoVm)?;
        self.slots.get(index as usize).and_then(Option::as_ref).ok_or(VmError::NoVm)
    }

    /// Whether a vCPU of VM `vmid` runs now: it is registered, and its context is out of the slot.
    fn any_running(&self, vmid: u64) -> bool {
        let (Ok(slot), Some(info)) = (self.slot(vmid), self.vms.get(vmid as u16)) else { return false };
        slot.vcpus.iter().zip(info.vcpus).any(|(ctx, state)| ctx.is_none() && state != VcpuState::Unused)
    }

    /// Every VM's stage-2 table, for the invariant checker.
    pub fn vm_tables(&self) -> Vec<(u16, &PageTable)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| Some((i as u16 + 1, &s.as_ref()?.s2))).collect()
    }

    /// REGISTER_VM: a new VM with RAM at guest-physical `[ram_base, ram_base + ram_size)`.
    pub fn register_vm(&mut self, m: &impl Machine, ram_base: u64, ram_size: u64) -> Result<u16, VmError> {
        let end = ram_base.checked_add(ram_size).ok_or(VmError::BadArgument)?;
        if ram_size == 0
            || ram_size > MAX_GUEST_RAM
            || !ram_base.is_multiple_of(PAGE_SIZE)
            || !ram_size.is_multiple_of(PAGE_SIZE)
            || end > INPUT_LIMIT
        {
            return Err(VmError::BadArgument);
        }
        let vmid = self.vms.register_vm()?;
        let pool = PagePool::new(self.vm_pools + (vmid as u64 - 1) * VM_POOL_PAGES * PAGE_SIZE, VM_POOL_PAGES);
        let s2 = PageTable::new(m, Regime::Stage2 { vmid }, pool).map_err(|e| VmError::Mem(e.into()))?;
        m.flush_stage2_vmid(vmid);
        self.slots[vmid as usize - 1] =
            Some(VmSlot { s2, ram_base, ram_size, cntvoff: 0, vcpus: (0..MAX_VCPUS).map(|_| None).collect() });
        Ok(vmid)
    }

    /// REGISTER_VCPU.
    pub fn register_vcpu(&mut self, vmid: u64, vcpu: u64) -> Result<(), VmError> {
        self.slot(vmid)?;
        let vcpu = usize::try_from(vcpu).ok().filter(|&v| v < MAX_VCPUS).ok_or(VmError::BadArgument)?;
        self.vms.register_vcpu(vmid as u16, vcpu)?;
        slot_of(&mut self.slots, vmid)?.vcpus[vcpu] = Some(VcpuContext::new(vcpu as u8));
        Ok(())
    }

    /// SET_BOOT_INFO: the image (and its signature) must lie inside the VM's RAM.
    pub fn set_boot_info(&mut self, vmid: u64, gpa: u64, size: u64) -> Result<usize, VmError> {
        let slot = self.slot(vmid)?;
        let pages = (size.checked_add(crate::boot::SIGNATURE_LEN).ok_or(VmError::BadArgument)?).div_ceil(PAGE_SIZE);
        let fits = gpa >= slot.ram_base
            && pages
                .checked_mul(PAGE_SIZE)
                .is_some_and(|bytes| bytes <= slot.ram_size && gpa - slot.ram_base <= slot.ram_size - bytes);
        if !fits {
            return Err(VmError::BadArgument);
        }
        Ok(self.vms.set_boot_info(vmid as u16, gpa, size)?)
    }

    /// REMAP_VM_IMAGE.
    pub fn remap_vm_image(&mut self, vmid: u64, index: u64, pfn: u64) -> Result<(), VmError> {
        self.slot(vmid)?;
        let index = usize::try_from(index).map_err(|_| VmError::BadArgument)?;
        Ok(self.vms.remap_vm_image(&self.mem, vmid as u16, pfn, index)?)
    }

    /// VERIFY_VM_IMAGE: one chunk of the verification; returns the pages still to check. The
    /// signatures cover the VM's RAM window as REGISTER_VM set it.
    pub fn verify_vm_image(&mut self, m: &impl Machine, vmid: u64) -> Result<u64, VmError> {
        let slot = slot_of(&mut self.slots, vmid)?;
        let verifier = Verifier {
            key: &self.key,
            ram_base: slot.ram_base,
            ram_size: slot.ram_size,
            chunk_pages: VERIFY_CHUNK_PAGES,
        };
        Ok(self.vms.verify_vm_image(m, &mut self.mem, &mut slot.s2, vmid as u16, &verifier)?)
    }

    /// The first half of VCPU_RUN: applies the host's `answer` to the vCPU's last exit, starts
    /// the vCPU if it has never run, and takes its context out to run it. Refused unless the VM
    /// is VERIFIED and the vCPU is registered, not running, and (for a secondary) powered on.
    pub fn vcpu_run_prepare(
        &mut self,
        m: &impl Machine,
        vmid: u64,
        vcpu: u64,
        answer: u64,
    ) -> Result<RunTicket, VmError> {
        let vcpu = usize::try_from(vcpu).ok().filter(|&v| v < MAX_VCPUS).ok_or(VmError::BadArgument)?;
        self.slot(vmid)?;
        let id = vmid as u16;
        if !self.vms.may_run(id) {
            return Err(VmError::State);
        }
        let info = self.vms.get(id).ok_or(VmError::NoVm)?;
        if info.vcpus[vcpu] != VcpuState::Ready {
            return Err(VmError::State);
        }
        let entry = info.load.first().map(|l| l.gpa).ok_or(VmError::State)?;
        let slot = slot_of(&mut self.slots, vmid)?;
        let ctx = slot.vcpus[vcpu].as_mut().ok_or(VmError::State)?;
        if !ctx.started {
            match (vcpu, ctx.power_on) {
                (0, _) => ctx.start(entry, 0),
                (_, Some((entry, arg))) => ctx.start(entry, arg),
                (_, None) => return Err(VmError::State),
            }
        }
        if let Pending::PageFault { gfn } = ctx.pending {
            give_page(m, &mut self.mem, &mut slot.s2, id, gfn, answer)?;
            ctx.pending = Pending::Nothing;
        }
        ctx.complete(answer);
        // Marked active first: if that were refused, the context must stay in its slot.
        self.vms.set_vcpu_active(id, vcpu)?;
        // Out of its slot: that is what makes the vCPU running.
        let ctx = slot.vcpus[vcpu].take().ok_or(VmError::State)?;
        Ok(RunTicket {
            vmid: id,
            vcpu,
            vttbr: slot.s2.root() | (id as u64) << 48,
            cntvoff: slot.cntvoff,
            ram_base: slot.ram_base,
            ram_size: slot.ram_size,
            ctx,
        })
    }

    /// The second half of VCPU_RUN: the context goes back into its slot.
    pub fn vcpu_run_finish(&mut self, ticket: RunTicket) {
        let RunTicket { vmid, vcpu, ctx, .. } = ticket;
        if let Ok(slot) = slot_of(&mut self.slots, vmid.into()) {
            slot.vcpus[vcpu] = Some(ctx);
        }
        // The VM may have been powered off while the vCPU ran; then it is no longer ACTIVE.
        let _ = self.vms.set_vcpu_inactive(vmid, vcpu);
    }

    /// A guest's SET_DESC_PFN (`grant`) or UNSET_DESC_PFN over guest-physical `[gpa, gpa + size)`,
    /// which must lie inside the VM's RAM window. All or nothing: a refused call changes no page.
    pub fn guest_share(
        &mut self,
        m: &impl Machine,
        vmid: u16,
        grant: bool,
        gpa: u64,
        size: u64,
    ) -> Result<(), VmError> {
        let slot = slot_of(&mut self.slots, vmid.into())?;
        let end = gpa.checked_add(size).ok_or(VmError::BadArgument)?;
        if size == 0
            || !gpa.is_multiple_of(PAGE_SIZE)
            || !size.is_multiple_of(PAGE_SIZE)
            || !slot.in_ram(gpa)
            || (!slot.in_ram(end - 1) && !crate::mutation::planted(crate::mutation::Mutation::ShareSkipsWindowEndCheck))
        {
            return Err(VmError::BadArgument);
        }
        if grant {
            self.mem.grant_stage2_sg_gpa(m, &slot.s2, vmid, gpa, size)?;
        } else {
            self.mem.revoke_stage2_sg_gpa(m, &slot.s2, vmid, gpa, size)?;
        }
        Ok(())
    }

    /// A guest's PSCI CPU_ON for a sibling: remembered, so that the sibling's first VCPU_RUN
    /// starts it there. The entry must be in the VM's RAM; a vCPU that has run is left alone.
    pub fn guest_cpu_on(&mut self, vmid: u16, target: u64, entry: u64, arg: u64) {
        let Ok(slot) = slot_of(&mut self.slots, vmid.into()) else { return };
        if !slot.in_ram(entry) {
            return;
        }
        let Some(Some(ctx)) = usize::try_from(target & 0xff).ok().and_then(|t| slot.vcpus.get_mut(t)) else {
            return;
        };
        if !ctx.started {
            ctx.power_on = Some((entry, arg));
        }
    }

    /// The VM is off (powered off, rejected, or never verified) and none of its vCPUs runs. A VM
    /// being verified is off too; teardown makes it REJECTED (`Vms::abandon_verification`).
    fn quiescent(&self, vmid: u64) -> Result<(), VmError> {
        self.slot(vmid)?;
        let state = self.vms.get(vmid as u16).map(|i| i.state).ok_or(VmError::NoVm)?;
        if state == VmState::Verified {
            return Err(VmError::State);
        }
        if self.any_running(vmid) {
            return Err(VmError::Busy);
        }
        Ok(())
    }

    /// CLEAR_VM_S2_RANGE: returns the VM's pages in physical `[base, base + size)` to the host,
    /// scrubbed. Returns how many there were.
    pub fn clear_vm_range(&mut self, m: &impl Machine, vmid: u64, base: u64, size: u64) -> Result<u64, VmError> {
        if size == 0 || !base.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return Err(VmError::BadArgument);
        }
        base.checked_add(size).ok_or(VmError::BadArgument)?;
        if !self.mem.db.regions().all_ram(base, size) {
            return Err(VmError::Mem(MemError::NotRam));
        }
        self.quiescent(vmid)?;
        self.vms.abandon_verification(vmid as u16);
        let slot = slot_of(&mut self.slots, vmid)?;
        Ok(self.mem.clear_vm_range(m, &mut slot.s2, vmid as u16, base >> 12, size >> 12)?)
    }

    /// PHYS_ADDR_IOREMAP: device pages `[pa, pa + size)` at `gpa`, outside the VM's RAM.
    pub fn ioremap(&mut self, m: &impl Machine, vmid: u64, gpa: u64, pa: u64, size: u64) -> Result<(), VmError> {
        let slot = self.slot(vmid)?;
        let ends = (gpa.checked_add(size), pa.checked_add(size));
        let (Some(gpa_end), Some(_)) = ends else { return Err(VmError::BadArgument) };
        if size == 0
            || size > MAX_GUEST_RAM
            || ![gpa, pa, size].iter().all(|v| v.is_multiple_of(PAGE_SIZE))
            || gpa_end > INPUT_LIMIT
            || (gpa < slot.ram_base + slot.ram_size && slot.ram_base < gpa_end)
        {
            return Err(VmError::BadArgument);
        }
        if !self.mem.db.regions().no_ram(pa, size) {
            return Err(VmError::Mem(MemError::IsRam));
        }
        match self.vms.get(vmid as u16).map(|i| i.state) {
            Some(VmState::Ready | VmState::Verified) => {}
            _ => return Err(VmError::State),
        }
        let slot = slot_of(&mut self.slots, vmid)?;
        for offset in (0..size).step_by(PAGE_SIZE as usize) {
            self.mem.map_vm_io(m, &mut slot.s2, gpa + offset, pa + offset)?;
        }
        Ok(())
    }

    /// TIMER_SET_CNTVOFF.
    pub fn set_cntvoff(&mut self, vmid: u64, offset: u64) -> Result<(), VmError> {
        slot_of(&mut self.slots, vmid)?.cntvoff = offset;
        Ok(())
    }

    /// VM_POWER_OFF: the VM's vCPUs never run again (a running one finishes its current run).
    pub fn power_off(&mut self, vmid: u64) -> Result<(), VmError> {
        self.slot(vmid)?;
        Ok(self.vms.power_off(vmid as u16)?)
    }

    /// DESTROY_VM: every page the VM still owns goes back to the host scrubbed; the VM is gone.
    pub fn destroy(&mut self, m: &impl Machine, vmid: u64) -> Result<u64, VmError> {
        self.quiescent(vmid)?;
        self.vms.abandon_verification(vmid as u16);
        let regions: Vec<_> = self.mem.db.regions().iter().collect();
        let slot = slot_of(&mut self.slots, vmid)?;
        let mut returned = 0;
        for region in regions {
            // On a failure the VM stays, with the pages returned so far returned.
            returned += self.mem.clear_vm_range(m, &mut slot.s2, vmid as u16, region.base >> 12, region.size >> 12)?;
        }
        self.slots[vmid as usize - 1] = None;
        m.flush_stage2_vmid(vmid as u16);
        self.vms.release_images(&self.mem, vmid as u16);
        Ok(returned)
    }
}

/// Serves a guest's stage-2 fault on RAM page `gfn` with the host's page `pfn`: KCore takes it
/// from the host (unmapping it there), scrubs it (zeros cleaned to DRAM), and maps it for the
/// guest. A frame number beyond the physical address size is refused, never truncated.
fn give_page(
    m: &impl Machine,
    mem: &mut HostMemory,
    s2: &mut PageTable,
    vmid: u16,
    gfn: u64,
    pfn: u64,
) -> Result<(), VmError> {
    // Not left to `assign_pfn_to_vm`: it also accepts a page the VM already has at `gfn`, which
    // the scrub below would then wipe. An offer must be a page of the host's.
    let pa = crate::memory::checked_pa(pfn)?;
    match mem.db.get(pa) {
        None => return Err(VmError::Mem(MemError::NotRam)),
        Some(page) if page.owner != Owner::Host => return Err(VmError::Mem(MemError::NotOwned(page.owner))),
        Some(_) => {}
    }
    mem.assign_pfn_to_vm(m, vmid, gfn, pfn)?;
    if !crate::mutation::planted(crate::mutation::Mutation::SkipFaultPageScrub) {
        crate::memory::scrub(m, pa);
    }
    if let Err(e) = mem.map_pfn_vm(m, s2, vmid, gfn, pfn) {
        // The VM cannot map it (its table pool is used up): the page goes back to the host, so
        // that the host's offer either fully happened or not at all.
        mem.clear_vm_page(m, s2, vmid, pfn)?;
        return Err(e.into());
    }
    Ok(())
}

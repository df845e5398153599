//! VMs (SeKVM BootOps, VCPUOps and MemoryOps as the hypercalls reach them): KCore's state behind
//! its locks ([`Kcore`]), and the operation behind each VM hypercall. Every operation checks its
//! arguments against that state and either changes it as the hypercall promises or changes
//! nothing and says why. Ids and addresses arrive typed (`VmId`, `VcpuId`, `Pfn`, `Pa`, `Ipa`),
//! checked once where the host's numbers enter (`handlers::decode`); everything else is
//! range-checked here.
//!
//! Each VM is one record ([`VmRecord`], the boot layer's `Vm` with this layer's vCPU contexts):
//! its state and images, its stage-2 table, its RAM window, its counter offset and its vCPUs. A
//! running vCPU's context is on the core that runs it ([`RunTicket`]), the record saying only
//! `Vcpu::Running`; that is why teardown waits until no vCPU runs.

#[cfg(test)]
mod concurrency;
#[cfg(test)]
mod noninterference;
mod power_down;
#[cfg(test)]
mod refinement;
#[cfg(test)]
pub mod spec;
#[cfg(test)]
mod tests;

use crate::addr::{Ipa, IpaRange, Pa, Pfn, PAGE_SHIFT, PAGE_SIZE};
use crate::boot::{BootCore, BootError, Vcpu, Verifier, Vm, VmState, MAX_VMS, VERIFY_CHUNK_PAGES};
use crate::ids::{VcpuId, VmId};
use crate::machine::sync::{LockRank, TicketGuard, TicketLock};
use crate::machine::Machine;
use crate::memory::pages::Owner;
use crate::memory::{HostMemory, MemError};
use crate::mutation::{planted, Mutation};
use crate::page_table::descriptor::{Regime, INPUT_LIMIT};
use crate::page_table::pool::PagePool;
use crate::page_table::{Leaf, PageTable};
use crate::vcpu::vgic::{QueueFull, Virq};
use crate::vcpu::{Pending, VcpuContext};
use alloc::boxed::Box;
use alloc::vec::Vec;
use corevisor_abi::{exit, Status};
use ed25519_dalek::VerifyingKey;
pub use power_down::Scrubbed;

/// Page-table pages each VM's stage-2 may use: the root, two level-2 tables (a 1 GiB window
/// that is not 1 GiB-aligned spans two), and 125 level-3 tables. A 1 GiB guest mapped with
/// 2 MiB blocks needs the first three plus one level-3 table per 2 MiB block that also holds
/// 4 KiB pages (its images, pages faulted in beside them): up to 125 such blocks, 250 MiB of
/// 4 KiB-mapped RAM. A 1 GiB guest mapped with 4 KiB pages only (514 tables) does not fit.
pub const VM_POOL_PAGES: u64 = 128;
/// Pages in a 2 MiB block.
const BLOCK_PAGES: u64 = 512;
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
    /// The vCPU's queue of virtual interrupts waiting for a list register is full.
    QueueFull,
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
            VmError::QueueFull => Status::OnPending,
            VmError::Boot(BootError::NoVmid | BootError::NoRoom) => Status::NotPresent,
            VmError::Boot(BootError::Rejected) => Status::Denied,
            VmError::Boot(BootError::State(_) | BootError::Vcpu | BootError::Started) => Status::Denied,
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

/// The tests' stand-ins for the trap edge (`handlers::decode`), which a layer below cannot
/// name. The host's VM id, checked where it enters: a number that names no VM is refused as an
/// unregistered one is (INVALID_PARAMETERS).
#[cfg(test)]
pub fn host_vm(raw: u64) -> Result<VmId, VmError> {
    VmId::new(raw).ok_or(VmError::NoVm)
}

/// The host's vCPU index, checked where it enters (INVALID_PARAMETERS).
#[cfg(test)]
pub fn host_vcpu(raw: u64) -> Result<VcpuId, VmError> {
    VcpuId::new(raw).ok_or(VmError::BadArgument)
}

/// The host's page number, checked where it enters: one past the physical address size would
/// alias a real page once shifted, and is refused (INVALID_ADDRESS).
#[cfg(test)]
pub fn host_pfn(raw: u64) -> Result<Pfn, VmError> {
    Pfn::new(raw).ok_or(VmError::Boot(BootError::Mem(MemError::BadPfn)))
}

/// The host's physical address, checked where it enters (INVALID_ADDRESS).
#[cfg(test)]
pub fn host_pa(raw: u64) -> Result<Pa, VmError> {
    Pa::new(raw).ok_or(VmError::Mem(MemError::BadPfn))
}

/// One VM's record, as this layer keeps it: idle vCPUs hold their saved context.
pub type VmRecord = Vm<Box<VcpuContext>>;

/// What a vCPU needs to run: its context, and the VM's stage-2 root (with its VMID), counter
/// offset and RAM window (to tell its stage-2 faults from MMIO).
pub struct RunTicket {
    pub vm: VmId,
    pub vcpu: VcpuId,
    pub ctx: Box<VcpuContext>,
    pub vttbr: u64,
    pub cntvoff: u64,
    pub ram: IpaRange,
    /// The VM's PL011 page (VM_CONSOLE), outside `ram`.
    pub console: Option<Ipa>,
}

/// VM `vmid`'s lock (rank `Vm(vmid)`) and what it guards: the VM's record, `None` before
/// REGISTER_VM and after DESTROY_VM.
pub type VmLock = TicketLock<Option<VmRecord>>;

/// KCore's state, split by lock as SeKVM splits it (docs/locks.md): each VM's record with its
/// stage-2 under the VM's own lock, vmid allocation and the index of listed image pages under
/// `core`, memory ownership with the host's stage-2 under `mem`. A call takes its VM's lock,
/// then `core`, then `mem`, each only if it needs it (`LockRank` order, checked in debug and
/// `check-invariants` builds), and none while a guest runs: calls for two different VMs wait on
/// each other only at `core` or `mem`, and a host stage-2 fault takes `mem` alone.
pub struct Kcore {
    /// The ownership records with the host's stage-2 table (SeKVM `s2page` with `pt(0)` under
    /// it): rank `S2Page`.
    pub mem: TicketLock<HostMemory>,
    /// Vmid allocation and the index of listed image pages (SeKVM `core`): rank `Core`.
    pub core: TicketLock<BootCore>,
    /// Each VM's record with its stage-2 table (SeKVM `vm(vmid)` with `pt(vmid)`), at
    /// [`VmId::index`]: rank `Vm(vmid)`.
    vms: [VmLock; MAX_VMS as usize],
    /// The page-table pool slice of VM 1; VM n's is `VM_POOL_PAGES` pages further per vmid.
    vm_pools: u64,
    key: VerifyingKey,
}

/// Every lock of KCore's state but `mem`, held ([`Kcore::lock_all`]): every VM's record, and
/// `core`.
pub struct VmRecords<'a> {
    slots: [TicketGuard<'a, Option<VmRecord>>; MAX_VMS as usize],
    pub core: TicketGuard<'a, BootCore>,
}

impl VmRecords<'_> {
    /// VM `vm`'s record, if it is registered.
    pub fn get(&self, vm: VmId) -> Option<&VmRecord> {
        self.slots[vm.index()].as_ref()
    }

    pub fn get_mut(&mut self, vm: VmId) -> Option<&mut VmRecord> {
        self.slots[vm.index()].as_mut()
    }

    /// Every vmid's record (`None` if unregistered), by vmid.
    pub fn records(&self) -> impl Iterator<Item = Option<&VmRecord>> {
        self.slots.iter().map(|slot| slot.as_ref())
    }

    /// Every registered VM, by id.
    pub fn iter(&self) -> impl Iterator<Item = (VmId, &VmRecord)> {
        VmId::all().zip(self.records()).filter_map(|(vm, rec)| Some((vm, rec?)))
    }
}

/// Every VM's stage-2 table, for the invariant checker.
pub fn vm_tables<'a>(vms: &'a VmRecords) -> Vec<(u16, &'a PageTable)> {
    vms.iter().map(|(vm, rec)| (vm.vmid(), &rec.s2)).collect()
}

/// The record in a VM's slot, if the VM is registered.
fn live(slot: &mut Option<VmRecord>) -> Result<&mut VmRecord, VmError> {
    slot.as_mut().ok_or(VmError::NoVm)
}

/// The VM is off (powered off, rejected, or never verified) and none of its vCPUs runs. A VM
/// being verified is off too; teardown makes it REJECTED (`Vm::abandon_verification`).
fn quiescent(rec: &VmRecord) -> Result<(), VmError> {
    if rec.state == VmState::Verified {
        return Err(VmError::State);
    }
    if rec.any_running() {
        return Err(VmError::Busy);
    }
    Ok(())
}

impl Kcore {
    /// `vm_pools` is the first of `MAX_VMS * VM_POOL_PAGES` KCore pages for VM tables; `key`
    /// checks the VMs' images.
    pub fn new(mem: HostMemory, vm_pools: u64, key: VerifyingKey) -> Kcore {
        Kcore {
            mem: TicketLock::new(LockRank::S2Page, mem),
            core: TicketLock::new(LockRank::Core, BootCore::new()),
            // The lock at index `i` is vmid `i + 1`'s (`VmId::index`).
            vms: core::array::from_fn(|i| TicketLock::new(LockRank::Vm(i as u16 + 1), None)),
            vm_pools,
            key,
        }
    }

    /// VM `vm`'s lock.
    pub fn vm(&self, vm: VmId) -> &VmLock {
        &self.vms[vm.index()]
    }

    /// Every lock of the state, in their order (each VM's by vmid, `core`, `mem`): for the
    /// invariant checker and the power-down, which must see no call half done.
    pub fn lock_all(&self) -> (VmRecords<'_>, TicketGuard<'_, HostMemory>) {
        let vms = self.vms();
        (vms, self.mem.lock())
    }

    /// Every VM's record and `core`, locked in their order (the first part of
    /// [`Kcore::lock_all`], and the tests' look at the records).
    pub fn vms(&self) -> VmRecords<'_> {
        // `from_fn` fills the array by ascending index, so the VMs' locks are taken by vmid.
        let slots = core::array::from_fn(|i| self.vms[i].lock());
        VmRecords { slots, core: self.core.lock() }
    }

    /// SeKVM's invariants (`memory::invariants::check`) under every lock, for the tests.
    #[cfg(test)]
    pub fn check_invariants(&self, m: &impl Machine) -> Result<(), crate::memory::invariants::Violation> {
        let (vms, mem) = self.lock_all();
        crate::memory::invariants::check(m, &mem, &vm_tables(&vms))
    }

    /// The pages KCore sets aside for VM tables.
    pub const fn vm_pool_bytes() -> u64 {
        MAX_VMS as u64 * VM_POOL_PAGES * PAGE_SIZE
    }

    /// REGISTER_VM: a new VM with RAM at guest-physical `ram`.
    pub fn register_vm(&self, m: &impl Machine, ram: IpaRange) -> Result<VmId, VmError> {
        if ram.size() == 0
            || ram.size() > MAX_GUEST_RAM
            || !ram.base().is_multiple_of(PAGE_SIZE)
            || !ram.size().is_multiple_of(PAGE_SIZE)
            || ram.end() > INPUT_LIMIT
        {
            return Err(VmError::BadArgument);
        }
        // BootCore `gen_vmid` under `core`, then the record under the new VM's lock; that lock
        // ranks below `core`, so the vmid is read first and checked again under both.
        let vm = loop {
            let vm = self.core.lock().free_vmid()?;
            let mut slot = self.vm(vm).lock();
            let mut core = self.core.lock();
            if core.free_vmid()? != vm && !planted(Mutation::VmidNotRecheckedUnderLock) {
                // Another core registered it in between.
                continue;
            }
            let pool = PagePool::new(self.vm_pools + vm.index() as u64 * VM_POOL_PAGES * PAGE_SIZE, VM_POOL_PAGES);
            let s2 = PageTable::new(m, Regime::Stage2 { vmid: vm.vmid() }, pool)
                .map_err(|e| BootError::Mem(MemError::from(e)))?;
            core.take_vmid(vm);
            *slot = Some(Vm::new(ram, s2));
            break vm;
        };
        m.flush_stage2_vmid(vm.vmid());
        Ok(vm)
    }

    /// REGISTER_VCPU.
    pub fn register_vcpu(&self, vm: VmId, vcpu: VcpuId) -> Result<(), VmError> {
        let mut slot = self.vm(vm).lock();
        Ok(live(&mut slot)?.register_vcpu(vcpu, || VcpuContext::new(vcpu.index() as u8))?)
    }

    /// SET_BOOT_INFO: the image (and its signature) must lie inside the VM's RAM.
    pub fn set_boot_info(&self, vm: VmId, gpa: Ipa, size: u64) -> Result<usize, VmError> {
        let mut slot = self.vm(vm).lock();
        let rec = live(&mut slot)?;
        let ram = rec.ram;
        let pages = (size.checked_add(crate::boot::SIGNATURE_LEN).ok_or(VmError::BadArgument)?).div_ceil(PAGE_SIZE);
        if !pages.checked_mul(PAGE_SIZE).is_some_and(|bytes| ram.contains_range(gpa.raw(), bytes)) {
            return Err(VmError::BadArgument);
        }
        Ok(rec.set_boot_info(gpa, size)?)
    }

    /// REMAP_VM_IMAGE: under `core` too, whose index of listed pages it checks and changes.
    pub fn remap_vm_image(&self, vm: VmId, index: u64, pfn: Pfn) -> Result<(), VmError> {
        let mut slot = self.vm(vm).lock();
        let rec = live(&mut slot)?;
        let index = usize::try_from(index).map_err(|_| VmError::BadArgument)?;
        Ok(rec.remap_vm_image(&mut self.core.lock(), &self.mem.lock(), pfn, index)?)
    }

    /// VERIFY_VM_IMAGE: one chunk of the verification; returns the pages still to check. The
    /// signatures cover the VM's RAM window as REGISTER_VM set it.
    pub fn verify_vm_image(&self, m: &impl Machine, vm: VmId) -> Result<u64, VmError> {
        let mut slot = self.vm(vm).lock();
        let rec = live(&mut slot)?;
        let verifier = Verifier { key: &self.key, chunk_pages: VERIFY_CHUNK_PAGES };
        Ok(rec.verify_vm_image(m, &mut self.mem.lock(), vm, &verifier)?)
    }

    /// BOOT_DATA: the host's page `pfn`, as it is, becomes the VM's boot data at `gpa` (before
    /// any vCPU of the VM runs; the boot layer checks the range). Under `core` too, whose index
    /// of listed pages says whether `pfn` is some VM's image page.
    pub fn load_boot_data(&self, m: &impl Machine, vm: VmId, gpa: Ipa, pfn: Pfn) -> Result<(), VmError> {
        let mut slot = self.vm(vm).lock();
        let rec = live(&mut slot)?;
        let core = self.core.lock();
        Ok(rec.load_boot_data(&core, m, &mut self.mem.lock(), vm, gpa, pfn)?)
    }

    /// The first half of VCPU_RUN: applies the host's `answer` to the vCPU's last exit, starts
    /// the vCPU if it has never run, and takes its context out to run it. Refused unless the VM
    /// is VERIFIED and the vCPU is registered, idle, and (for a secondary) powered on. The
    /// ownership lock is taken only for a page answer.
    pub fn vcpu_run_prepare(
        &self,
        m: &impl Machine,
        vm: VmId,
        vcpu: VcpuId,
        answer: u64,
    ) -> Result<RunTicket, VmError> {
        self.vcpu_run_prepare_then(m, vm, vcpu, answer, |_| ())
    }

    /// [`Kcore::vcpu_run_prepare`], calling `taken` with whether the context was taken out while
    /// still under the lock (the trap handler's power-down bookkeeping must not miss a context
    /// that is out).
    #[inline]
    pub fn vcpu_run_prepare_then(
        &self,
        m: &impl Machine,
        vm: VmId,
        vcpu: VcpuId,
        answer: u64,
        taken: impl FnOnce(bool),
    ) -> Result<RunTicket, VmError> {
        let mut slot = self.vm(vm).lock();
        let prepared = Kcore::prepare(&self.mem, &mut slot, m, vm, vcpu, answer);
        taken(prepared.is_ok());
        prepared
    }

    fn prepare(
        mem: &TicketLock<HostMemory>,
        slot: &mut Option<VmRecord>,
        m: &impl Machine,
        vm: VmId,
        vcpu: VcpuId,
        answer: u64,
    ) -> Result<RunTicket, VmError> {
        let rec = live(slot)?;
        if rec.state != VmState::Verified {
            return Err(VmError::State);
        }
        let entry = rec.load.first().map(|l| l.gpa).ok_or(VmError::State)?;
        let boot_data = rec.boot_data.map_or(0, |d| d.base.raw());
        let Vcpu::Idle(ctx) = &mut rec.vcpus[vcpu.index()] else { return Err(VmError::State) };
        if !ctx.started {
            match (vcpu.index(), ctx.power_on) {
                (0, _) => ctx.start(entry.raw(), boot_data),
                (_, Some((entry, arg))) => ctx.start(entry, arg),
                (_, None) => return Err(VmError::State),
            }
        }
        if let Pending::PageFault { gfn } = ctx.pending {
            give_page(m, &mut mem.lock(), &mut rec.s2, rec.ram, vm, gfn, answer)?;
            ctx.pending = Pending::Nothing;
        }
        ctx.complete(answer);
        let (vttbr, cntvoff, ram) = (rec.s2.root() | u64::from(vm.vmid()) << 48, rec.cntvoff, rec.ram);
        let console = rec.console;
        let ctx = rec.set_vcpu_active(vcpu)?;
        Ok(RunTicket { vm, vcpu, ctx, vttbr, cntvoff, ram, console })
    }

    /// The second half of VCPU_RUN: the context goes back into the VM's record. (The VM may have
    /// been powered off while the vCPU ran; it never runs again then.)
    pub fn vcpu_run_finish(&self, ticket: RunTicket) {
        if let Some(rec) = self.vm(ticket.vm).lock().as_mut() {
            rec.set_vcpu_inactive(ticket.vcpu, ticket.ctx);
        }
    }

    /// A guest's SET_DESC_PFN (`grant`) or UNSET_DESC_PFN over guest-physical `[gpa, gpa + size)`,
    /// which must lie inside the VM's RAM window. All or nothing: a refused call changes no page.
    #[inline]
    pub fn guest_share(&self, m: &impl Machine, vm: VmId, grant: bool, gpa: Ipa, size: u64) -> Result<(), VmError> {
        self.guest_share_then(m, vm, grant, gpa, size, || ())
    }

    /// [`Kcore::guest_share`] under the VM's lock and `mem`, calling `after` before they go (the
    /// trap handler's power-down bookkeeping).
    #[inline(always)]
    pub fn guest_share_then(
        &self,
        m: &impl Machine,
        vm: VmId,
        grant: bool,
        gpa: Ipa,
        size: u64,
        after: impl FnOnce(),
    ) -> Result<(), VmError> {
        let slot = self.vm(vm).lock();
        let mut mem = self.mem.lock();
        let result = Kcore::share(&mut mem, slot.as_ref(), m, vm, grant, gpa, size);
        after();
        result
    }

    #[inline(always)]
    fn share(
        mem: &mut HostMemory,
        rec: Option<&VmRecord>,
        m: &impl Machine,
        vm: VmId,
        grant: bool,
        gpa: Ipa,
        size: u64,
    ) -> Result<(), VmError> {
        let rec = rec.ok_or(VmError::NoVm)?;
        let end = gpa.raw().checked_add(size).filter(|_| size != 0).ok_or(VmError::BadArgument)?;
        let skips_end = crate::mutation::planted(crate::mutation::Mutation::ShareSkipsWindowEndCheck);
        let in_window = rec.ram.contains(gpa.raw()) && (rec.ram.contains(end - 1) || skips_end);
        if !gpa.is_page_aligned() || !size.is_multiple_of(PAGE_SIZE) || !in_window {
            return Err(VmError::BadArgument);
        }
        if grant {
            mem.grant_stage2_sg_gpa(m, &rec.s2, vm.vmid(), gpa.raw(), size)?;
        } else {
            mem.revoke_stage2_sg_gpa(m, &rec.s2, vm.vmid(), gpa.raw(), size)?;
        }
        Ok(())
    }

    /// A host stage-2 fault at `ipa` (SeKVM `handle_host_stage2_fault`): under the ownership
    /// lock alone, the check that the host owns the page and its mapping in one critical section.
    pub fn host_stage2_fault(&self, m: &impl Machine, ipa: u64) -> Result<Leaf, MemError> {
        if planted(Mutation::HostFaultCheckThenAct) {
            return self.host_stage2_fault_split(m, ipa);
        }
        self.mem.lock().map_page_host(m, ipa)
    }

    /// The planted bug: the ownership check and the mapping under two takes of the lock, so
    /// another core may give the page away in between.
    #[cold]
    fn host_stage2_fault_split(&self, m: &impl Machine, ipa: u64) -> Result<Leaf, MemError> {
        let host_owns = self.mem.lock().db.get(ipa).is_some_and(|p| p.owner == Owner::Host);
        let mut mem = self.mem.lock();
        if !host_owns || mem.policy != crate::memory::HostMapPolicy::PagesOnly {
            return mem.map_page_host(m, ipa);
        }
        // What `map_page_host` does for a host page under `HostMapPolicy::PagesOnly`.
        match mem.host_s2.map_leaf(m, ipa, ipa, 3, crate::page_table::descriptor::Attrs::RAM) {
            Err(crate::page_table::PtError::Occupied) => {
                mem.host_s2.walk(m, ipa).ok_or(crate::page_table::PtError::Occupied.into())
            }
            r => r.map_err(Into::into),
        }
    }

    /// A guest's PSCI CPU_ON for a sibling: remembered, so that the sibling's first VCPU_RUN
    /// starts it there. The entry must be in the VM's RAM; a vCPU that has run is left alone.
    pub fn guest_cpu_on(&self, vm: VmId, target: VcpuId, entry: Ipa, arg: u64) {
        let mut slot = self.vm(vm).lock();
        let Some(rec) = slot.as_mut().filter(|rec| rec.ram.contains(entry.raw())) else { return };
        if let Vcpu::Idle(ctx) = &mut rec.vcpus[target.index()] {
            if !ctx.started {
                ctx.power_on = Some((entry.raw(), arg));
            }
        }
    }

    /// INJECT_IRQ: makes `virq` pending for `vcpu` of VERIFIED VM `vm`. The vCPU must be
    /// registered (INVALID_PARAMETERS otherwise) and idle: its list registers are the saved ones.
    pub fn inject_irq(&self, vm: VmId, vcpu: VcpuId, virq: Virq) -> Result<(), VmError> {
        let mut slot = self.vm(vm).lock();
        let rec = live(&mut slot)?;
        if rec.state != VmState::Verified {
            return Err(VmError::State);
        }
        let index = if planted(Mutation::VgicInjectsWrongVcpu) { (vcpu.index() + 1) % 2 } else { vcpu.index() };
        match &mut rec.vcpus[index] {
            Vcpu::Idle(ctx) => ctx.vgic.inject(virq).map_err(|QueueFull| VmError::QueueFull),
            Vcpu::Running => Err(VmError::Busy),
            Vcpu::Unused => Err(VmError::BadArgument),
        }
    }

    /// CLEAR_VM_S2_RANGE: returns the VM's pages in physical `[base, base + size)` to the host,
    /// scrubbed. Returns how many there were.
    pub fn clear_vm_range(&self, m: &impl Machine, vm: VmId, base: Pa, size: u64) -> Result<u64, VmError> {
        if size == 0 || !base.is_page_aligned() || !size.is_multiple_of(PAGE_SIZE) {
            return Err(VmError::BadArgument);
        }
        base.raw().checked_add(size).ok_or(VmError::BadArgument)?;
        let mut slot = self.vm(vm).lock();
        let mut mem = self.mem.lock();
        if !mem.db.regions().all_ram(base.raw(), size) {
            return Err(VmError::Mem(MemError::NotRam));
        }
        let rec = live(&mut slot)?;
        quiescent(rec)?;
        rec.abandon_verification();
        Ok(mem.clear_vm_range(m, &mut rec.s2, vm.vmid(), base.pfn().raw(), size >> PAGE_SHIFT)?)
    }

    /// PHYS_ADDR_IOREMAP: device pages `[pa, pa + size)` at `gpa`, outside the VM's RAM.
    pub fn ioremap(&self, m: &impl Machine, vm: VmId, gpa: Ipa, pa: Pa, size: u64) -> Result<(), VmError> {
        let mut slot = self.vm(vm).lock();
        let rec = live(&mut slot)?;
        let ends = (gpa.raw().checked_add(size), pa.raw().checked_add(size));
        let (Some(gpa_end), Some(_)) = ends else { return Err(VmError::BadArgument) };
        if size == 0
            || size > MAX_GUEST_RAM
            || ![gpa.raw(), pa.raw(), size].iter().all(|v| v.is_multiple_of(PAGE_SIZE))
            || gpa_end > INPUT_LIMIT
            || rec.ram.overlaps(gpa.raw(), size)
        {
            return Err(VmError::BadArgument);
        }
        let mem = self.mem.lock();
        if !mem.db.regions().no_ram(pa.raw(), size) {
            return Err(VmError::Mem(MemError::IsRam));
        }
        if !matches!(rec.state, VmState::Ready | VmState::Verified) {
            return Err(VmError::State);
        }
        for offset in (0..size).step_by(PAGE_SIZE as usize) {
            mem.map_vm_io(m, &mut rec.s2, gpa.raw() + offset, pa.raw() + offset)?;
        }
        Ok(())
    }

    /// TIMER_SET_CNTVOFF.
    pub fn set_cntvoff(&self, vm: VmId, offset: u64) -> Result<(), VmError> {
        live(&mut self.vm(vm).lock())?.cntvoff = offset;
        Ok(())
    }

    /// VM_CONSOLE: the VM's PL011 is at guest page `page` (0: none), which must be page-aligned,
    /// inside the stage-2 input range and outside the VM's RAM, so that only accesses that fault
    /// because nothing is mapped there reach the console; the RAM window is fixed at
    /// REGISTER_VM, so the page stays outside it. A vCPU's console buffer is empty between its
    /// runs (every exit to the host takes it), so the page may change at any time: a running
    /// vCPU sees the new one from its next run.
    pub fn set_console(&self, vm: VmId, page: Ipa) -> Result<(), VmError> {
        let mut slot = self.vm(vm).lock();
        let rec = live(&mut slot)?;
        let outside_ram = !rec.ram.overlaps(page.raw(), PAGE_SIZE) || planted(Mutation::ConsoleInsideRam);
        let fits = page.is_page_aligned() && page.raw() < INPUT_LIMIT && outside_ram;
        if page.raw() != 0 && !fits {
            return Err(VmError::BadArgument);
        }
        rec.console = (page.raw() != 0).then_some(page);
        Ok(())
    }

    /// VM_POWER_OFF: the VM's vCPUs never run again (a running one finishes its current run).
    pub fn power_off(&self, vm: VmId) -> Result<(), VmError> {
        Ok(live(&mut self.vm(vm).lock())?.power_off()?)
    }

    /// DESTROY_VM: every page the VM still owns goes back to the host scrubbed; the VM is gone,
    /// and its image pages are no longer listed (under `core`).
    pub fn destroy(&self, m: &impl Machine, vm: VmId) -> Result<u64, VmError> {
        let mut slot = self.vm(vm).lock();
        let rec = live(&mut slot)?;
        quiescent(rec)?;
        rec.abandon_verification();
        let mut core = self.core.lock();
        let mut mem = self.mem.lock();
        let regions: Vec<_> = mem.db.regions().iter().collect();
        let mut returned = 0;
        for region in regions {
            // On a failure the VM stays, with the pages returned so far returned.
            returned +=
                mem.clear_vm_range(m, &mut rec.s2, vm.vmid(), region.base >> PAGE_SHIFT, region.size >> PAGE_SHIFT)?;
        }
        core.unlist(&mem, rec);
        *slot = None;
        m.flush_stage2_vmid(vm.vmid());
        Ok(returned)
    }
}

/// Serves a guest's stage-2 fault on RAM page `gfn` with the host's page `pfn`: KCore takes it
/// from the host (unmapping it there), scrubs it (zeros cleaned to DRAM), and maps it for the
/// guest. The host's number is VCPU_RUN's raw answer: one beyond the physical address size is
/// refused, never truncated. With `exit::PAGE_ANSWER_BLOCK` set, `pfn` starts a 2 MiB run for
/// the whole gfn block around the fault, all or nothing (`HostMemory::prot_and_map_vm_s2pt`).
fn give_page(
    m: &impl Machine,
    mem: &mut HostMemory,
    s2: &mut PageTable,
    ram: IpaRange,
    vm: VmId,
    gfn: u64,
    pfn: u64,
) -> Result<(), VmError> {
    if pfn & exit::PAGE_ANSWER_BLOCK != 0 {
        // The 2 MiB-aligned gfn block around the fault, wholly inside the VM's RAM window.
        let block = gfn & !(BLOCK_PAGES - 1);
        if !ram.contains_range(block << PAGE_SHIFT, BLOCK_PAGES << PAGE_SHIFT) {
            return Err(VmError::BadArgument);
        }
        mem.prot_and_map_vm_s2pt(m, s2, vm.vmid(), block, pfn & !exit::PAGE_ANSWER_BLOCK, 2)?;
        return Ok(());
    }
    // Not left to `assign_pfn_to_vm`: it also accepts a page the VM already has at `gfn`, which
    // the scrub below would then wipe. An offer must be a page of the host's, unless it is the
    // very page the VM's stage-2 already maps at `gfn`: a sibling vCPU faulted on the same page
    // (or its 2 MiB block) and the answer to its fault mapped it after this vCPU's fault (issue
    // 14, vCPUs on several cores). The fault is served; nothing changes, the page keeps its data.
    let pa = crate::memory::checked_pa(pfn)?;
    let served = s2.walk(m, gfn << PAGE_SHIFT).is_some_and(|leaf| leaf.translate(gfn << PAGE_SHIFT) == pa);
    if served {
        if planted(Mutation::ServedFaultPageScrubbed) {
            crate::memory::scrub(m, pa);
        }
        return Ok(());
    }
    match mem.db.get(pa) {
        None => return Err(VmError::Mem(MemError::NotRam)),
        Some(page) if page.owner != Owner::Host => return Err(VmError::Mem(MemError::NotOwned(page.owner))),
        Some(_) => {}
    }
    let vmid = vm.vmid();
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

//! Specs of the VM layer (the operations behind the VM hypercalls) in SeKVM's style: pure
//! functions from an abstract state to `Option<(state, result)>`, `None` when a precondition of
//! the layers below is broken. They are written by composing the boot layers' specs
//! (`boot::spec`) and the memory layers' specs (`memory::spec`), plus what this layer adds: the
//! VMs' RAM windows, counter offsets, and each vCPU's abstract run state.

use super::{VmError, MAX_GUEST_RAM, VM_POOL_PAGES};
use crate::boot::spec as boot;
use crate::boot::{VcpuState, Verifier, VmState, Vms, MAX_VCPUS, SIGNATURE_LEN, VERIFY_CHUNK_PAGES};
use crate::machine::PAGE_SIZE;
use crate::memory::pages::Owner;
use crate::memory::spec::{
    assign_pfn_to_vm_spec, clear_vm_page_spec, clear_vm_pages_spec, frame, map_pfn_vm_spec, map_vm_io_spec,
    share_range_spec, RData,
};
use crate::memory::MemError;
use crate::page_table::descriptor::INPUT_LIMIT;
use crate::page_table::spec::AbsNpt;
use crate::vcpu::Pending;
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;

/// A vCPU as the VM layer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsVcpu {
    pub started: bool,
    pub running: bool,
    pub pending: Pending,
    pub power_on: Option<(u64, u64)>,
    /// The PC and x0 it was started with (its reset state), once started.
    pub start: Option<(u64, u64)>,
}

impl AbsVcpu {
    const NEW: AbsVcpu =
        AbsVcpu { started: false, running: false, pending: Pending::Nothing, power_on: None, start: None };
}

/// One VM's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsSlot {
    pub ram_base: u64,
    pub ram_size: u64,
    pub cntvoff: u64,
    pub vcpus: [Option<AbsVcpu>; MAX_VCPUS],
}

/// The VM layer's abstract state: boot records, memory (`RData`), and the slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsKcore {
    pub vms: Vms,
    pub r: RData,
    pub slots: BTreeMap<u16, AbsSlot>,
}

pub type Step<T> = Option<(AbsKcore, Result<T, VmError>)>;

fn refuse<T>(s: &AbsKcore, e: VmError) -> Step<T> {
    Some((s.clone(), Err(e)))
}

/// The vmid if it names a live slot.
fn live(s: &AbsKcore, vmid: u64) -> Option<u16> {
    u16::try_from(vmid).ok().filter(|v| s.slots.contains_key(v))
}

fn aligned(values: &[u64]) -> bool {
    values.iter().all(|v| v % PAGE_SIZE == 0)
}

pub fn register_vm_spec(s: &AbsKcore, ram_base: u64, ram_size: u64) -> Step<u16> {
    let end = ram_base.checked_add(ram_size);
    if ram_size == 0
        || ram_size > MAX_GUEST_RAM
        || !aligned(&[ram_base, ram_size])
        || end.is_none_or(|e| e > INPUT_LIMIT)
    {
        return refuse(s, VmError::BadArgument);
    }
    let (vms, r, result) = boot::register_vm_spec(&s.vms, &s.r)?;
    let vmid = match result {
        Ok(vmid) => vmid,
        Err(e) => return refuse(s, e.into()),
    };
    let mut next = AbsKcore { vms, r, slots: s.slots.clone() };
    // The VM's stage-2 root comes from its own pool.
    next.r.npts.insert(vmid, AbsNpt { free: VM_POOL_PAGES - 1, ..AbsNpt::default() });
    next.slots.insert(vmid, AbsSlot { ram_base, ram_size, cntvoff: 0, vcpus: [const { None }; MAX_VCPUS] });
    Some((next, Ok(vmid)))
}

pub fn register_vcpu_spec(s: &AbsKcore, vmid: u64, vcpu: u64) -> Step<()> {
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    if vcpu >= MAX_VCPUS as u64 {
        return refuse(s, VmError::BadArgument);
    }
    let (vms, r, result) = boot::register_vcpu_spec(&s.vms, &s.r, id, vcpu as usize)?;
    if let Err(e) = result {
        return refuse(s, e.into());
    }
    let mut next = AbsKcore { vms, r, slots: s.slots.clone() };
    next.slots.get_mut(&id)?.vcpus[vcpu as usize] = Some(AbsVcpu::NEW);
    Some((next, Ok(())))
}

pub fn set_boot_info_spec(s: &AbsKcore, vmid: u64, gpa: u64, size: u64) -> Step<usize> {
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    let slot = &s.slots[&id];
    let Some(bytes) = size.checked_add(SIGNATURE_LEN).map(|b| b.div_ceil(PAGE_SIZE) * PAGE_SIZE) else {
        return refuse(s, VmError::BadArgument);
    };
    let inside = gpa >= slot.ram_base && bytes <= slot.ram_size && gpa - slot.ram_base <= slot.ram_size - bytes;
    if !inside {
        return refuse(s, VmError::BadArgument);
    }
    let (vms, r, result) = boot::set_boot_info_spec(&s.vms, &s.r, id, gpa, size)?;
    Some((AbsKcore { vms, r, slots: s.slots.clone() }, result.map_err(VmError::from)))
}

pub fn remap_vm_image_spec(s: &AbsKcore, vmid: u64, index: u64, pfn: u64) -> Step<()> {
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    let (vms, r, result) = boot::remap_vm_image_spec(&s.vms, &s.r, id, pfn, index as usize)?;
    Some((AbsKcore { vms, r, slots: s.slots.clone() }, result.map_err(VmError::from)))
}

/// VERIFY_VM_IMAGE: the signatures must cover the RAM window the VM was registered with.
pub fn verify_vm_image_spec(s: &AbsKcore, vmid: u64, key: &VerifyingKey) -> Step<u64> {
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    let slot = &s.slots[&id];
    let verifier = Verifier { key, ram_base: slot.ram_base, ram_size: slot.ram_size, chunk_pages: VERIFY_CHUNK_PAGES };
    let (vms, r, result) = boot::verify_vm_image_spec(&s.vms, &s.r, id, &verifier)?;
    Some((AbsKcore { vms, r, slots: s.slots.clone() }, result.map_err(VmError::from)))
}

/// The first half of VCPU_RUN: see `Kcore::vcpu_run_prepare`.
pub fn vcpu_run_prepare_spec(s: &AbsKcore, vmid: u64, vcpu: u64, answer: u64) -> Step<()> {
    if vcpu >= MAX_VCPUS as u64 {
        return refuse(s, VmError::BadArgument);
    }
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    let info = &s.vms.infos[id as usize - 1];
    let vcpu = vcpu as usize;
    if info.state != VmState::Verified || info.vcpus[vcpu] != VcpuState::Ready {
        return refuse(s, VmError::State);
    }
    let Some(entry) = info.load.first().map(|l| l.gpa) else { return refuse(s, VmError::State) };
    let mut next = s.clone();
    let Some(v) = next.slots.get_mut(&id)?.vcpus[vcpu].as_mut() else { return refuse(s, VmError::State) };
    if !v.started {
        let start = match (vcpu, v.power_on) {
            (0, _) => (entry, 0),
            (_, Some(at)) => at,
            (_, None) => return refuse(s, VmError::State),
        };
        *v = AbsVcpu { started: true, start: Some(start), pending: Pending::Nothing, ..v.clone() };
    }
    let pending = v.pending;
    if let Pending::PageFault { gfn } = pending {
        // The host's page: taken, scrubbed, mapped. The answer must name a page of the
        // physical address space (it is never truncated into one).
        let pa = match frame(answer) {
            Ok(pa) => pa,
            Err(e) => return refuse(s, e.into()),
        };
        match next.r.page(pa) {
            None => return refuse(s, VmError::Mem(MemError::NotRam)),
            Some(p) if p.owner != Owner::Host => return refuse(s, VmError::Mem(MemError::NotOwned(p.owner))),
            Some(_) => {}
        }
        let (r, result) = assign_pfn_to_vm_spec(&next.r, id, gfn, answer)?;
        if let Err(e) = result {
            return refuse(s, e.into());
        }
        let mut r = r;
        let words: Vec<u64> = r.flatmem.range(pa..pa + PAGE_SIZE).map(|(&a, _)| a).collect();
        words.into_iter().for_each(|a| {
            r.flatmem.remove(&a);
        });
        let (r, result) = map_pfn_vm_spec(&r, id, gfn, answer)?;
        if let Err(e) = result {
            // Not mapped: the page goes back to the host (scrubbed), the fault stays pending.
            let (r, cleared) = clear_vm_page_spec(&r, id, answer)?;
            let mut failed = next.clone();
            failed.r = r;
            return Some((failed, cleared.map_err(VmError::from).and(Err(e.into()))));
        }
        next.r = r;
    }
    let v = next.slots.get_mut(&id)?.vcpus[vcpu].as_mut()?;
    v.pending = Pending::Nothing;
    v.running = true;
    let (vms, r, result) = boot::set_vcpu_active_spec(&next.vms, &next.r, id, vcpu)?;
    (next.vms, next.r) = (vms, r);
    Some((next, result.map_err(VmError::from)))
}

/// The second half of VCPU_RUN: the vCPU is back, waiting for `pending`.
pub fn vcpu_run_finish_spec(s: &AbsKcore, vmid: u16, vcpu: usize, pending: Pending) -> Option<AbsKcore> {
    let mut next = s.clone();
    if let Some(slot) = next.slots.get_mut(&vmid) {
        let v = slot.vcpus[vcpu].as_mut()?;
        v.running = false;
        v.pending = pending;
    }
    let info = next.vms.infos.get_mut(vmid as usize - 1)?;
    if info.vcpus[vcpu] == VcpuState::Active {
        info.vcpus[vcpu] = VcpuState::Ready;
    }
    Some(next)
}

/// A guest's SET_DESC_PFN / UNSET_DESC_PFN (docs/hypercalls.md): x1 = guest address, x2 = size,
/// page-aligned, the range inside the VM's RAM. Taken as intervals of integers (no wrap-around):
/// `[gpa, gpa + size)` must be a non-empty part of `[ram_base, ram_base + ram_size)`. Then the
/// share is all or nothing (`share_range_spec`).
pub fn guest_share_spec(s: &AbsKcore, vmid: u16, grant: bool, gpa: u64, size: u64) -> Step<()> {
    let Some(slot) = s.slots.get(&vmid) else { return refuse(s, VmError::NoVm) };
    let (start, end) = (u128::from(gpa), u128::from(gpa) + u128::from(size));
    let (ram_start, ram_end) = (u128::from(slot.ram_base), u128::from(slot.ram_base) + u128::from(slot.ram_size));
    let inside = ram_start <= start && end <= ram_end;
    if size == 0 || !aligned(&[gpa, size]) || !inside {
        return refuse(s, VmError::BadArgument);
    }
    let (r, result) = share_range_spec(&s.r, vmid, gpa, size, !grant)?;
    Some((AbsKcore { r, ..s.clone() }, result.map_err(VmError::from)))
}

/// A guest's PSCI CPU_ON for a sibling that has not started yet, with an entry in its RAM.
pub fn guest_cpu_on_spec(s: &AbsKcore, vmid: u16, target: u64, entry: u64, arg: u64) -> AbsKcore {
    let mut next = s.clone();
    if let Some(slot) = next.slots.get_mut(&vmid) {
        let in_ram = entry >= slot.ram_base && entry - slot.ram_base < slot.ram_size;
        if let Some(Some(v)) = slot.vcpus.get_mut((target & 0xff) as usize) {
            if in_ram && !v.started {
                v.power_on = Some((entry, arg));
            }
        }
    }
    next
}

/// Off (not VERIFIED) and not running.
fn quiescent(s: &AbsKcore, id: u16) -> Result<(), VmError> {
    if s.vms.infos[id as usize - 1].state == VmState::Verified {
        return Err(VmError::State);
    }
    if s.slots[&id].vcpus.iter().flatten().any(|v| v.running) {
        return Err(VmError::Busy);
    }
    Ok(())
}

/// Returns every page of the VM in `pfns` to the host (`memory::spec::clear_vm_pages_spec`).
fn clear_pages(s: &AbsKcore, id: u16, pfns: impl Iterator<Item = u64>) -> Step<u64> {
    let (r, result) = clear_vm_pages_spec(&s.r, id, pfns)?;
    Some((AbsKcore { r, ..s.clone() }, result.map_err(VmError::from)))
}

pub fn clear_vm_range_spec(s: &AbsKcore, vmid: u64, base: u64, size: u64) -> Step<u64> {
    if size == 0 || !aligned(&[base, size]) || base.checked_add(size).is_none() {
        return refuse(s, VmError::BadArgument);
    }
    if !(base..base + size).step_by(PAGE_SIZE as usize).all(|pa| s.r.page(pa).is_some()) {
        return refuse(s, VmError::Mem(MemError::NotRam));
    }
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    if let Err(e) = quiescent(s, id) {
        return refuse(s, e);
    }
    let abandoned = AbsKcore { vms: boot::abandon_verification_spec(&s.vms, id), ..s.clone() };
    clear_pages(&abandoned, id, (base >> 12)..(base + size) >> 12)
}

pub fn ioremap_spec(s: &AbsKcore, vmid: u64, gpa: u64, pa: u64, size: u64) -> Step<()> {
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    let slot = &s.slots[&id];
    let (Some(gpa_end), Some(_)) = (gpa.checked_add(size), pa.checked_add(size)) else {
        return refuse(s, VmError::BadArgument);
    };
    let overlaps_ram = gpa < slot.ram_base + slot.ram_size && slot.ram_base < gpa_end;
    if size == 0 || size > MAX_GUEST_RAM || !aligned(&[gpa, pa, size]) || gpa_end > INPUT_LIMIT || overlaps_ram {
        return refuse(s, VmError::BadArgument);
    }
    if (pa..pa + size).step_by(PAGE_SIZE as usize).any(|p| s.r.page(p).is_some()) {
        return refuse(s, VmError::Mem(MemError::IsRam));
    }
    if !matches!(s.vms.infos[id as usize - 1].state, VmState::Ready | VmState::Verified) {
        return refuse(s, VmError::State);
    }
    let mut next = s.clone();
    for offset in (0..size).step_by(PAGE_SIZE as usize) {
        let (r, result) = map_vm_io_spec(&next.r, id, gpa + offset, pa + offset)?;
        next.r = r;
        if let Err(e) = result {
            return Some((next, Err(e.into())));
        }
    }
    Some((next, Ok(())))
}

pub fn set_cntvoff_spec(s: &AbsKcore, vmid: u64, offset: u64) -> Step<()> {
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    let mut next = s.clone();
    next.slots.get_mut(&id)?.cntvoff = offset;
    Some((next, Ok(())))
}

pub fn power_off_spec(s: &AbsKcore, vmid: u64) -> Step<()> {
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    let (vms, r, result) = boot::power_off_spec(&s.vms, &s.r, id)?;
    Some((AbsKcore { vms, r, slots: s.slots.clone() }, result.map_err(VmError::from)))
}

pub fn destroy_spec(s: &AbsKcore, vmid: u64) -> Step<u64> {
    let Some(id) = live(s, vmid) else { return refuse(s, VmError::NoVm) };
    if let Err(e) = quiescent(s, id) {
        return refuse(s, e);
    }
    // Every page the VM owns, in address order (pages absent from `s2page` are the host's).
    let pfns: Vec<u64> = s.r.s2page.iter().filter(|(_, p)| p.owner == Owner::Vm(id)).map(|(&pfn, _)| pfn).collect();
    let abandoned = AbsKcore { vms: boot::abandon_verification_spec(&s.vms, id), ..s.clone() };
    let (mut next, result) = clear_pages(&abandoned, id, pfns.into_iter())?;
    if result.is_ok() {
        next.slots.remove(&id);
        next.r.npts.remove(&id);
        next.vms.infos[id as usize - 1].load.clear();
    }
    Some((next, result))
}

/// The power-down scrub before SYSTEM_OFF or SYSTEM_RESET (issue 11): nothing that is not the
/// host's may survive into the next boot, which hands all of RAM to the host. Afterwards every
/// word of every page a VM owns is zero (shared pages too: the machine is going down), and every
/// VM's stage-2 maps nothing, so no guest still running elsewhere reaches memory; the records of
/// who owns what are unchanged, since nothing but the reset follows. The result is the number of
/// VM pages. KCore's heap and the VMs' table pools are below this state's abstraction: the
/// property test checks on the machine that they are zero too.
pub fn scrub_for_power_down_spec(s: &AbsKcore) -> Option<(AbsKcore, u64)> {
    let mut next = s.clone();
    let vm_pages: Vec<u64> =
        s.r.s2page.iter().filter(|(_, page)| matches!(page.owner, Owner::Vm(_))).map(|(&pfn, _)| pfn).collect();
    for &pfn in &vm_pages {
        let words: Vec<u64> = next.r.flatmem.range(pfn << 12..(pfn + 1) << 12).map(|(&a, _)| a).collect();
        for word in words {
            next.r.flatmem.remove(&word);
        }
    }
    for vmid in s.slots.keys() {
        let npt = next.r.npts.get_mut(vmid)?;
        npt.leaves.clear();
        npt.tables.clear();
    }
    Some((next, vm_pages.len() as u64))
}

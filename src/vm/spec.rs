//! Specs of the VM layer (the operations behind the VM hypercalls) in SeKVM's style: pure
//! functions from an abstract state to `Option<(state, result)>`, `None` when a precondition of
//! the layers below is broken. They are written by composing the boot layers' specs
//! (`boot::spec`) and the memory layers' specs (`memory::spec`), plus what this layer adds: the
//! VMs' RAM windows, counter offsets, console pages, and each vCPU's abstract run state.

use super::{VmError, MAX_GUEST_RAM, VM_POOL_PAGES};
use crate::addr::{Ipa, IpaRange, Pa, Pfn};
use crate::boot::spec::{self as boot, AbsVms};
use crate::boot::{Vcpu, Verifier, VmState, MAX_VCPUS, SIGNATURE_LEN, VERIFY_CHUNK_PAGES};
use crate::ids::{VcpuId, VmId};
use crate::machine::PAGE_SIZE;
use crate::memory::pages::Owner;
use crate::memory::spec::{
    assign_pfn_to_vm_spec, clear_vm_page_spec, clear_vm_pages_spec, frame, map_pfn_vm_spec, map_vm_io_spec,
    prot_and_map_vm_s2pt_spec, share_range_spec, RData,
};
use crate::memory::MemError;
use crate::page_table::descriptor::INPUT_LIMIT;
use crate::page_table::spec::{walk_spec, AbsNpt};
use crate::vcpu::Pending;
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;

/// A registered vCPU's context as the VM layer sees it (whether it runs is in its VM's boot
/// record, `Vcpu::Running`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsVcpu {
    pub started: bool,
    pub pending: Pending,
    pub power_on: Option<(u64, u64)>,
    /// The PC and x0 it was started with (its reset state), once started.
    pub start: Option<(u64, u64)>,
}

impl AbsVcpu {
    const NEW: AbsVcpu = AbsVcpu { started: false, pending: Pending::Nothing, power_on: None, start: None };
}

/// What the VM layer adds to a VM's boot record: its counter offset, its PL011 page
/// (VM_CONSOLE) and its vCPUs' contexts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsSlot {
    pub cntvoff: u64,
    pub console: Option<Ipa>,
    pub vcpus: [Option<AbsVcpu>; MAX_VCPUS],
}

/// The VM layer's abstract state: the VMs' boot records (with their RAM windows), memory
/// (`RData`, with the VMs' stage-2 tables), and the slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsKcore {
    pub vms: AbsVms,
    pub r: RData,
    pub slots: BTreeMap<VmId, AbsSlot>,
}

pub type Step<T> = Option<(AbsKcore, Result<T, VmError>)>;

fn refuse<T>(s: &AbsKcore, e: VmError) -> Step<T> {
    Some((s.clone(), Err(e)))
}

/// The VM's RAM window, if it is registered.
fn ram(s: &AbsKcore, vm: VmId) -> Option<IpaRange> {
    s.slots.contains_key(&vm).then(|| s.vms.get(vm).map(|v| v.ram)).flatten()
}

fn aligned(values: &[u64]) -> bool {
    values.iter().all(|v| v % PAGE_SIZE == 0)
}

pub fn register_vm_spec(s: &AbsKcore, ram: IpaRange) -> Step<VmId> {
    let (base, size) = (ram.base(), ram.size());
    if size == 0 || size > MAX_GUEST_RAM || !aligned(&[base, size]) || base as u128 + size as u128 > INPUT_LIMIT as u128
    {
        return refuse(s, VmError::BadArgument);
    }
    let (vms, r, result) = boot::register_vm_spec(&s.vms, &s.r, ram)?;
    let vm = match result {
        Ok(vm) => vm,
        Err(e) => return refuse(s, e.into()),
    };
    let mut next = AbsKcore { vms, r, slots: s.slots.clone() };
    // The VM's stage-2 root comes from its own pool.
    next.r.npts.insert(vm.vmid(), AbsNpt { free: VM_POOL_PAGES - 1, ..AbsNpt::default() });
    next.slots.insert(vm, AbsSlot { cntvoff: 0, console: None, vcpus: [const { None }; MAX_VCPUS] });
    Some((next, Ok(vm)))
}

pub fn register_vcpu_spec(s: &AbsKcore, vm: VmId, vcpu: VcpuId) -> Step<()> {
    if ram(s, vm).is_none() {
        return refuse(s, VmError::NoVm);
    }
    let (vms, r, result) = boot::register_vcpu_spec(&s.vms, &s.r, vm, vcpu)?;
    if let Err(e) = result {
        return refuse(s, e.into());
    }
    let mut next = AbsKcore { vms, r, slots: s.slots.clone() };
    next.slots.get_mut(&vm)?.vcpus[vcpu.index()] = Some(AbsVcpu::NEW);
    Some((next, Ok(())))
}

pub fn set_boot_info_spec(s: &AbsKcore, vm: VmId, gpa: Ipa, size: u64) -> Step<usize> {
    let Some(ram) = ram(s, vm) else { return refuse(s, VmError::NoVm) };
    let Some(bytes) = size.checked_add(SIGNATURE_LEN).map(|b| b.div_ceil(PAGE_SIZE) * PAGE_SIZE) else {
        return refuse(s, VmError::BadArgument);
    };
    let (start, end) = (gpa.raw() as u128, gpa.raw() as u128 + bytes as u128);
    if start < ram.base() as u128 || end > ram.base() as u128 + ram.size() as u128 {
        return refuse(s, VmError::BadArgument);
    }
    let (vms, r, result) = boot::set_boot_info_spec(&s.vms, &s.r, vm, gpa, size)?;
    Some((AbsKcore { vms, r, slots: s.slots.clone() }, result.map_err(VmError::from)))
}

pub fn remap_vm_image_spec(s: &AbsKcore, vm: VmId, index: u64, pfn: Pfn) -> Step<()> {
    if ram(s, vm).is_none() {
        return refuse(s, VmError::NoVm);
    }
    let (vms, r, result) = boot::remap_vm_image_spec(&s.vms, &s.r, vm, pfn, index as usize)?;
    Some((AbsKcore { vms, r, slots: s.slots.clone() }, result.map_err(VmError::from)))
}

/// VERIFY_VM_IMAGE: the signatures must cover the RAM window the VM was registered with (the
/// boot spec reads it from the VM's record).
pub fn verify_vm_image_spec(s: &AbsKcore, vm: VmId, key: &VerifyingKey) -> Step<u64> {
    if ram(s, vm).is_none() {
        return refuse(s, VmError::NoVm);
    }
    let verifier = Verifier { key, chunk_pages: VERIFY_CHUNK_PAGES };
    let (vms, r, result) = boot::verify_vm_image_spec(&s.vms, &s.r, vm, &verifier)?;
    Some((AbsKcore { vms, r, slots: s.slots.clone() }, result.map_err(VmError::from)))
}

/// The first half of VCPU_RUN: see `Kcore::vcpu_run_prepare`. The host's `answer` is a raw
/// number from the ABI.
pub fn vcpu_run_prepare_spec(s: &AbsKcore, vm: VmId, vcpu: VcpuId, answer: u64) -> Step<()> {
    if ram(s, vm).is_none() {
        return refuse(s, VmError::NoVm);
    }
    let info = s.vms.get(vm)?;
    if info.state != VmState::Verified || info.vcpus[vcpu.index()] != Vcpu::Idle(()) {
        return refuse(s, VmError::State);
    }
    let Some(entry) = info.load.first().map(|l| l.gpa.raw()) else { return refuse(s, VmError::State) };
    let mut next = s.clone();
    let Some(v) = next.slots.get_mut(&vm)?.vcpus[vcpu.index()].as_mut() else { return refuse(s, VmError::State) };
    if !v.started {
        let start = match (vcpu.index(), v.power_on) {
            // vCPU 0 starts at the entry image with x0 = the boot data's address (0 if none).
            (0, _) => (entry, info.boot_data.map_or(0, |d| d.base.raw())),
            (_, Some(at)) => at,
            (_, None) => return refuse(s, VmError::State),
        };
        *v = AbsVcpu { started: true, start: Some(start), pending: Pending::Nothing, ..v.clone() };
    }
    let pending = v.pending;
    let id = vm.vmid();
    if let (Pending::PageFault { gfn }, true) = (pending, answer & corevisor_abi::exit::PAGE_ANSWER_BLOCK != 0) {
        // Issue 13: a 2 MiB run for the aligned gfn block around the fault. The block must lie
        // wholly inside the VM's RAM window; the memory layer's block is all or nothing.
        let block = gfn - gfn % 512;
        let window = ram(s, vm)?;
        if !window.contains_range(block * PAGE_SIZE, 512 * PAGE_SIZE) {
            return refuse(s, VmError::BadArgument);
        }
        let pfn = answer & !corevisor_abi::exit::PAGE_ANSWER_BLOCK;
        let (r, result) = prot_and_map_vm_s2pt_spec(&next.r, id, block, pfn, 2)?;
        if let Err(e) = result {
            return refuse(s, e.into());
        }
        next.r = r;
    } else if let Pending::PageFault { gfn } = pending {
        // The host's page: taken, scrubbed, mapped. The answer must name a page of the
        // physical address space (it is never truncated into one).
        let pa = match frame(answer) {
            Ok(pa) => pa,
            Err(e) => return refuse(s, e.into()),
        };
        // Unless the VM's stage-2 already maps this very page at `gfn` (a sibling vCPU's answer
        // served the same fault first): then the fault is served and nothing changes.
        let served = next
            .r
            .npts
            .get(&id)
            .and_then(|npt| walk_spec(npt, gfn << 12))
            .is_some_and(|leaf| leaf.translate(gfn << 12) == pa);
        if !served {
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
    }
    next.slots.get_mut(&vm)?.vcpus[vcpu.index()].as_mut()?.pending = Pending::Nothing;
    let (vms, r, result) = boot::set_vcpu_active_spec(&next.vms, &next.r, vm, vcpu)?;
    (next.vms, next.r) = (vms, r);
    Some((next, result.map_err(VmError::from)))
}

/// The second half of VCPU_RUN: the vCPU is back, idle, waiting for `pending`.
pub fn vcpu_run_finish_spec(s: &AbsKcore, vm: VmId, vcpu: VcpuId, pending: Pending) -> Option<AbsKcore> {
    let mut next = s.clone();
    if let Some(slot) = next.slots.get_mut(&vm) {
        slot.vcpus[vcpu.index()].as_mut()?.pending = pending;
    }
    next.vms = boot::set_vcpu_inactive_spec(&next.vms, vm, vcpu);
    Some(next)
}

/// A guest's SET_DESC_PFN / UNSET_DESC_PFN (docs/hypercalls.md): x1 = guest address, x2 = size,
/// page-aligned, the range inside the VM's RAM. Taken as intervals of integers (no wrap-around):
/// `[gpa, gpa + size)` must be a non-empty part of `[ram_base, ram_base + ram_size)`. Then the
/// share is all or nothing (`share_range_spec`).
pub fn guest_share_spec(s: &AbsKcore, vm: VmId, grant: bool, gpa: Ipa, size: u64) -> Step<()> {
    let Some(ram) = ram(s, vm) else { return refuse(s, VmError::NoVm) };
    let (start, end) = (u128::from(gpa.raw()), u128::from(gpa.raw()) + u128::from(size));
    let (ram_start, ram_end) = (u128::from(ram.base()), u128::from(ram.base()) + u128::from(ram.size()));
    let inside = ram_start <= start && end <= ram_end;
    if size == 0 || !aligned(&[gpa.raw(), size]) || !inside {
        return refuse(s, VmError::BadArgument);
    }
    let (r, result) = share_range_spec(&s.r, vm.vmid(), gpa.raw(), size, !grant)?;
    Some((AbsKcore { r, ..s.clone() }, result.map_err(VmError::from)))
}

/// A guest's PSCI CPU_ON for a sibling that is idle and has not started yet, with an entry in
/// its VM's RAM.
pub fn guest_cpu_on_spec(s: &AbsKcore, vm: VmId, target: VcpuId, entry: Ipa, arg: u64) -> AbsKcore {
    let mut next = s.clone();
    let in_ram = ram(s, vm).is_some_and(|ram| ram.contains(entry.raw()));
    let idle = s.vms.get(vm).is_some_and(|v| v.vcpus[target.index()] == Vcpu::Idle(()));
    if let Some(Some(v)) = next.slots.get_mut(&vm).map(|slot| &mut slot.vcpus[target.index()]) {
        if in_ram && idle && !v.started {
            v.power_on = Some((entry.raw(), arg));
        }
    }
    next
}

/// Off (not VERIFIED) and not running.
fn quiescent(s: &AbsKcore, vm: VmId) -> Result<(), VmError> {
    let info = s.vms.get(vm).ok_or(VmError::NoVm)?;
    if info.state == VmState::Verified {
        return Err(VmError::State);
    }
    if info.vcpus.contains(&Vcpu::Running) {
        return Err(VmError::Busy);
    }
    Ok(())
}

/// Returns every page of the VM in `pfns` to the host (`memory::spec::clear_vm_pages_spec`).
fn clear_pages(s: &AbsKcore, vm: VmId, pfns: impl Iterator<Item = u64>) -> Step<u64> {
    let (r, result) = clear_vm_pages_spec(&s.r, vm.vmid(), pfns)?;
    Some((AbsKcore { r, ..s.clone() }, result.map_err(VmError::from)))
}

pub fn clear_vm_range_spec(s: &AbsKcore, vm: VmId, base: Pa, size: u64) -> Step<u64> {
    let base = base.raw();
    if size == 0 || !aligned(&[base, size]) || base.checked_add(size).is_none() {
        return refuse(s, VmError::BadArgument);
    }
    if !(base..base + size).step_by(PAGE_SIZE as usize).all(|pa| s.r.page(pa).is_some()) {
        return refuse(s, VmError::Mem(MemError::NotRam));
    }
    if ram(s, vm).is_none() {
        return refuse(s, VmError::NoVm);
    }
    if let Err(e) = quiescent(s, vm) {
        return refuse(s, e);
    }
    let abandoned = AbsKcore { vms: boot::abandon_verification_spec(&s.vms, vm), ..s.clone() };
    clear_pages(&abandoned, vm, (base >> 12)..(base + size) >> 12)
}

pub fn ioremap_spec(s: &AbsKcore, vm: VmId, gpa: Ipa, pa: Pa, size: u64) -> Step<()> {
    let Some(ram) = ram(s, vm) else { return refuse(s, VmError::NoVm) };
    let (gpa, pa) = (gpa.raw(), pa.raw());
    let (Some(gpa_end), Some(_)) = (gpa.checked_add(size), pa.checked_add(size)) else {
        return refuse(s, VmError::BadArgument);
    };
    let overlaps_ram = gpa < ram.base() + ram.size() && ram.base() < gpa_end;
    if size == 0 || size > MAX_GUEST_RAM || !aligned(&[gpa, pa, size]) || gpa_end > INPUT_LIMIT || overlaps_ram {
        return refuse(s, VmError::BadArgument);
    }
    if (pa..pa + size).step_by(PAGE_SIZE as usize).any(|p| s.r.page(p).is_some()) {
        return refuse(s, VmError::Mem(MemError::IsRam));
    }
    if !matches!(s.vms.get(vm)?.state, VmState::Ready | VmState::Verified) {
        return refuse(s, VmError::State);
    }
    let mut next = s.clone();
    for offset in (0..size).step_by(PAGE_SIZE as usize) {
        let (r, result) = map_vm_io_spec(&next.r, vm.vmid(), gpa + offset, pa + offset)?;
        next.r = r;
        if let Err(e) = result {
            return Some((next, Err(e.into())));
        }
    }
    Some((next, Ok(())))
}

pub fn set_cntvoff_spec(s: &AbsKcore, vm: VmId, offset: u64) -> Step<()> {
    if ram(s, vm).is_none() {
        return refuse(s, VmError::NoVm);
    }
    let mut next = s.clone();
    next.slots.get_mut(&vm)?.cntvoff = offset;
    Some((next, Ok(())))
}

/// VM_CONSOLE: the VM's PL011 page, 0 for none; else page-aligned, below the stage-2 input
/// limit and outside the VM's RAM window (taken as intervals of integers).
pub fn set_console_spec(s: &AbsKcore, vm: VmId, page: Ipa) -> Step<()> {
    let Some(ram) = ram(s, vm) else { return refuse(s, VmError::NoVm) };
    let page = page.raw();
    let (start, end) = (u128::from(page), u128::from(page) + u128::from(PAGE_SIZE));
    let in_ram = start < u128::from(ram.base()) + u128::from(ram.size()) && u128::from(ram.base()) < end;
    if page != 0 && (!aligned(&[page]) || page >= INPUT_LIMIT || in_ram) {
        return refuse(s, VmError::BadArgument);
    }
    let mut next = s.clone();
    next.slots.get_mut(&vm)?.console = (page != 0).then_some(Ipa(page));
    Some((next, Ok(())))
}

pub fn power_off_spec(s: &AbsKcore, vm: VmId) -> Step<()> {
    if ram(s, vm).is_none() {
        return refuse(s, VmError::NoVm);
    }
    let (vms, r, result) = boot::power_off_spec(&s.vms, &s.r, vm)?;
    Some((AbsKcore { vms, r, slots: s.slots.clone() }, result.map_err(VmError::from)))
}

/// DESTROY_VM: every page the VM owns goes back to the host; then the VM has no record at all
/// (its vmid is never given again).
pub fn destroy_spec(s: &AbsKcore, vm: VmId) -> Step<u64> {
    if ram(s, vm).is_none() {
        return refuse(s, VmError::NoVm);
    }
    if let Err(e) = quiescent(s, vm) {
        return refuse(s, e);
    }
    // Every page the VM owns, in address order (pages absent from `s2page` are the host's).
    let owner = Owner::Vm(vm.vmid());
    let pfns: Vec<u64> = s.r.s2page.iter().filter(|(_, p)| p.owner == owner).map(|(&pfn, _)| pfn).collect();
    let abandoned = AbsKcore { vms: boot::abandon_verification_spec(&s.vms, vm), ..s.clone() };
    let (mut next, result) = clear_pages(&abandoned, vm, pfns.into_iter())?;
    if result.is_ok() {
        next.slots.remove(&vm);
        next.r.npts.remove(&vm.vmid());
        next.vms.vms[vm.index()] = None;
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
    for vm in s.slots.keys() {
        let npt = next.r.npts.get_mut(&vm.vmid())?;
        npt.leaves.clear();
        npt.tables.clear();
    }
    Some((next, vm_pages.len() as u64))
}

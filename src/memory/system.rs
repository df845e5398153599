//! The concrete system the issue-6 property tests drive: the model machine, the host's memory
//! state and each VM's stage-2, with the operations principals perform on it, and the same
//! operations on the spec ([`super::spec::RData`]). Loads and stores model the hardware: through
//! the principal's stage-2, with the host's misses served by the FaultHandler; the host's
//! devices' DMA goes through the host's SMMU table and the SMMU's TLB ([`dma`]), once KCore owns
//! the SMMU ([`Op::EnableHostSmmu`], which random sequences meet at any point, so that both
//! machines, with an SMMU and without, are covered).

use super::pages::{PageDb, PageInfo};
use super::regions::MemRegions;
use super::spec::{self, Access, RData, HOST};
use super::{host_smmu_table_pages, HostMapPolicy, HostMemory, MemError, MmioMap, HOST_SMMU_VMID};
use crate::machine::model::{self, ModelMachine, TlbEntry};
use crate::machine::{Machine, PAGE_SIZE};
use crate::page_table::descriptor::Regime;
use crate::page_table::pool::PagePool;
use crate::page_table::spec::AbsNpt;
use crate::page_table::{Leaf, PageTable};
use corevisor_boards::PhysRange;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

pub const RAM: PhysRange = PhysRange::new(0x4000_0000, 0x4000_0000);
pub const KCORE: PhysRange = PhysRange::new(0x4008_0000, 0x10_0000);
pub const GICH: PhysRange = PhysRange::new(0x0803_0000, 0x1_0000);
/// The GICv2 virtual CPU interface: a VM's, never the host's.
pub const GICV: PhysRange = PhysRange::new(0x0804_0000, 0x2000);
/// The MMIO the test host may have: a GIC-like 16 MiB (GICH inside it is KCore's, and four
/// redistributor control pages are emulated) and one UART page.
pub fn test_mmio() -> MmioMap {
    MmioMap {
        allowed: vec![PhysRange::new(0x0800_0000, 0x0100_0000), PhysRange::new(0x0900_0000, 0x1000)],
        emulated: (0..4).map(|i| PhysRange::new(0x080A_0000 + i * 0x1_0000, 0x1000)).collect(),
        protected: vec![GICH],
        guest_only: vec![GICV],
    }
}
/// Table pools live above RAM: the host's, then one per VM.
pub const POOLS: u64 = 0x1_0000_0000;
pub const VMS: [u16; 3] = [1, 2, 3];
/// Table pages of each VM's stage-2.
pub const VM_POOL_PAGES: u64 = 64;
/// The host's SMMU table pool, above the VMs' pools; VM v's SMMU table pool v GiB above it.
pub const SMMU_POOL: u64 = POOLS + (8 << 30);

/// One operation by a principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    HostFault(u64),
    HostLoad(u64),
    HostStore(u64, u64),
    Assign {
        vmid: u16,
        gfn: u64,
        pfn: u64,
    },
    Clear {
        vmid: u16,
        pfn: u64,
    },
    MapVmIo {
        vmid: u16,
        gpa: u64,
        pa: u64,
    },
    MapPfnVm {
        vmid: u16,
        gfn: u64,
        pfn: u64,
    },
    Grant {
        vmid: u16,
        pfn: u64,
    },
    Revoke {
        vmid: u16,
        pfn: u64,
    },
    VmLoad {
        vmid: u16,
        gpa: u64,
    },
    VmStore {
        vmid: u16,
        gpa: u64,
        value: u64,
    },
    /// MemoryOps.
    ClearRange {
        vmid: u16,
        pfn: u64,
        pages: u64,
    },
    ProtAndMap {
        vmid: u16,
        gfn: u64,
        pfn: u64,
        level: u8,
    },
    ShareRange {
        vmid: u16,
        gpa: u64,
        size: u64,
        revoke: bool,
    },
    /// The hardware writes every dirty cache line back to DRAM, as it may at any moment. No
    /// principal's doing, and nothing any cacheable view can see.
    WriteBack,
    /// The host goes on on core `0`: its loads and stores from now on go through that core's
    /// TLB (issue 14). KCore's maintenance is broadcast, so which core serves a call does not
    /// matter; which core the host accesses memory from does.
    HostOnCore(usize),
    /// KCore takes the SMMU and gives the host's devices the host's SMMU table, built from the
    /// ownership of the moment (at boot on the target; at any point here), from a pool of the
    /// worst-case size (issue 15). Refused once done.
    EnableHostSmmu,
    /// A device of the host's reads (DMA) the word at the address, through the SMMU.
    DeviceLoad(u64),
    /// A device of the host's writes the word at the address, through the SMMU.
    DeviceStore(u64, u64),
    /// The host asks for an SMMU table for VM `vmid`'s devices (the SMMU_ATTACH_STREAM call of
    /// a stream to a VM), from a pool as large as the VM's stage-2 pool. Refused once done.
    AttachVmSmmu {
        vmid: u16,
    },
    /// A device assigned to VM `vmid` reads (DMA) the word at guest address `gpa`.
    VmDeviceLoad {
        vmid: u16,
        gpa: u64,
    },
    /// A device assigned to VM `vmid` writes the word at guest address `gpa`.
    VmDeviceStore {
        vmid: u16,
        gpa: u64,
        value: u64,
    },
}

impl Op {
    /// Operations the host performs (or asks KCore for); the rest are VMs' (or KCore's on a
    /// VM's behalf).
    pub fn by_host(&self) -> bool {
        matches!(
            self,
            Op::HostFault(_)
                | Op::HostLoad(_)
                | Op::HostStore(..)
                | Op::HostOnCore(_)
                | Op::EnableHostSmmu
                | Op::DeviceLoad(_)
                | Op::DeviceStore(..)
                | Op::AttachVmSmmu { .. }
                | Op::Assign { .. }
                | Op::Clear { .. }
                | Op::MapVmIo { .. }
        )
    }

    /// The VM an operation acts for, if any.
    pub fn vm(&self) -> Option<u16> {
        match *self {
            Op::MapPfnVm { vmid, .. } | Op::Grant { vmid, .. } | Op::Revoke { vmid, .. } => Some(vmid),
            Op::VmLoad { vmid, .. } | Op::VmStore { vmid, .. } => Some(vmid),
            Op::VmDeviceLoad { vmid, .. } | Op::VmDeviceStore { vmid, .. } => Some(vmid),
            Op::ProtAndMap { vmid, .. } | Op::ShareRange { vmid, .. } => Some(vmid),
            _ => None,
        }
    }

    /// Physical pages the operation names (to compare ownership on).
    pub fn pfns(&self) -> Vec<u64> {
        match *self {
            Op::HostFault(a) | Op::HostLoad(a) | Op::HostStore(a, _) => vec![a >> 12],
            Op::DeviceLoad(a) | Op::DeviceStore(a, _) => vec![a >> 12],
            Op::Assign { pfn, .. } | Op::Clear { pfn, .. } | Op::MapPfnVm { pfn, .. } => vec![pfn],
            Op::Grant { pfn, .. } | Op::Revoke { pfn, .. } => vec![pfn],
            Op::MapVmIo { pa, .. } => vec![pa >> 12],
            Op::VmLoad { .. }
            | Op::VmStore { .. }
            | Op::ShareRange { .. }
            | Op::WriteBack
            | Op::HostOnCore(_)
            | Op::EnableHostSmmu
            | Op::AttachVmSmmu { .. }
            | Op::VmDeviceLoad { .. }
            | Op::VmDeviceStore { .. } => vec![],
            Op::ClearRange { pfn, pages, .. } => (pfn..pfn.saturating_add(pages.min(8))).collect(),
            Op::ProtAndMap { pfn, level, .. } => (pfn..pfn.saturating_add(if level == 2 { 512 } else { 1 })).collect(),
        }
        .into_iter()
        // Numbers outside the physical address space name no page to compare.
        .filter(|&pfn| spec::frame(pfn).is_ok())
        .collect()
    }
}

/// What an operation returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done(Result<(), MemError>),
    Mapped(Result<Leaf, MemError>),
    Access(Access),
}

/// The concrete system.
pub struct System {
    pub m: ModelMachine,
    pub mem: HostMemory,
    pub vms: BTreeMap<u16, PageTable>,
    /// The core the host's accesses run on ([`Op::HostOnCore`]).
    pub host_core: usize,
}

impl System {
    pub fn new(pages_only: bool) -> System {
        let m = ModelMachine::new();
        let db = PageDb::new(MemRegions::new(&[RAM]).unwrap());
        let host = PageTable::new(&m, Regime::Stage2 { vmid: HOST }, PagePool::new(POOLS, 600)).unwrap();
        let mut mem = HostMemory::new(db, host, test_mmio());
        if pages_only {
            mem.policy = HostMapPolicy::PagesOnly;
        }
        mem.give_to_kcore(&m, KCORE).unwrap();
        let vms = VMS
            .iter()
            .map(|&v| {
                let pool = PagePool::new(POOLS + (v as u64) * (1 << 30), VM_POOL_PAGES);
                (v, PageTable::new(&m, Regime::Stage2 { vmid: v }, pool).unwrap())
            })
            .collect();
        System { m, mem, vms, host_core: 0 }
    }

    /// A host load or store as the hardware does it: through the host core's TLB, else a walk
    /// of the host's stage-2 (the FaultHandler mapping the page on a miss) whose leaf the TLB
    /// then keeps.
    fn host_access(&mut self, ipa: u64, store: Option<u64>) -> Access {
        let core = self.host_core;
        let pa = match self.m.tlb_translate(core, HOST, ipa) {
            Some(pa) => pa,
            None => {
                let walked = self.mem.host_s2.walk(&self.m, ipa).ok_or(());
                let Ok(leaf) = walked.or_else(|()| self.mem.map_page_host(&self.m, ipa)) else { return Access::Abort };
                self.m.tlb_fill(core, HOST, TlbEntry { input: leaf.input, size: leaf.size(), output: leaf.output });
                leaf.translate(ipa)
            }
        };
        self.m.host_access(pa);
        load_or_store(&self.m, pa, store)
    }

    /// Every translation a core's TLB holds for the host that reaches a page of RAM the host
    /// may not access (neither its own nor shared with it): `host_iso` through the TLBs. KCore
    /// must invalidate every core's copy of a translation before the page changes hands.
    pub fn host_reach_violations(&self) -> Vec<(usize, TlbEntry, u64)> {
        let mut found = Vec::new();
        for (core, entry) in self.m.tlb_entries(HOST) {
            for pa in (entry.output..entry.output + entry.size).step_by(PAGE_SIZE as usize) {
                if self.mem.db.get(pa).is_some_and(|p| p.owner != super::pages::Owner::Host && p.count == 0) {
                    found.push((core, entry, pa));
                }
            }
        }
        found
    }

    /// Every translation the SMMU's TLB holds that reaches anything but a page its principal owns
    /// (SMMU VMID [`HOST_SMMU_VMID`]: the host, never a page a VM merely shares with it; any
    /// other: that VM): `smmu_iso` through the SMMU's TLB. KCore must invalidate the SMMU's copy
    /// of a translation before the page changes hands.
    pub fn smmu_reach_violations(&self) -> Vec<(u16, TlbEntry, u64)> {
        let mut found = Vec::new();
        for (vmid, entry) in self.m.smmu_tlb_entries() {
            let principal =
                if vmid == HOST_SMMU_VMID { super::pages::Owner::Host } else { super::pages::Owner::Vm(vmid) };
            for pa in (entry.output..entry.output + entry.size).step_by(PAGE_SIZE as usize) {
                if self.mem.db.get(pa).is_none_or(|p| p.owner != principal) {
                    found.push((vmid, entry, pa));
                }
            }
        }
        found
    }

    /// Every translation a core's TLB holds for a VM that reaches a page of RAM the VM does not
    /// own: `vm_iso` through the TLBs.
    pub fn vm_reach_violations(&self) -> Vec<(u16, usize, TlbEntry, u64)> {
        let mut found = Vec::new();
        for &vmid in self.vms.keys() {
            for (core, entry) in self.m.tlb_entries(vmid) {
                for pa in (entry.output..entry.output + entry.size).step_by(PAGE_SIZE as usize) {
                    if self.mem.db.get(pa).is_some_and(|p| p.owner != super::pages::Owner::Vm(vmid)) {
                        found.push((vmid, core, entry, pa));
                    }
                }
            }
        }
        found
    }

    /// A VM's load or store, on the VM's core ([`vm_core`]): through that core's TLB, else a
    /// walk of the VM's stage-2 (an exit if it maps nothing there) whose leaf the TLB keeps.
    fn vm_access(&mut self, vmid: u16, gpa: u64, store: Option<u64>) -> Access {
        let core = vm_core(vmid);
        let pa = match self.m.tlb_translate(core, vmid, gpa) {
            Some(pa) => pa,
            None => {
                let Some(leaf) = self.vms[&vmid].walk(&self.m, gpa) else { return Access::Exit };
                self.m.tlb_fill(core, vmid, TlbEntry { input: leaf.input, size: leaf.size(), output: leaf.output });
                leaf.translate(gpa)
            }
        };
        load_or_store(&self.m, pa, store)
    }

    pub fn apply(&mut self, op: &Op) -> Outcome {
        let m = &self.m;
        match *op {
            Op::HostFault(ipa) => Outcome::Mapped(self.mem.map_page_host(m, ipa)),
            Op::HostLoad(pa) => Outcome::Access(self.host_access(pa, None)),
            Op::HostStore(pa, v) => Outcome::Access(self.host_access(pa, Some(v))),
            Op::Assign { vmid, gfn, pfn } => Outcome::Done(self.mem.assign_pfn_to_vm(m, vmid, gfn, pfn)),
            Op::Clear { vmid, pfn } => {
                Outcome::Done(self.mem.clear_vm_page(m, self.vms.get_mut(&vmid).unwrap(), vmid, pfn))
            }
            Op::MapVmIo { vmid, gpa, pa } => {
                Outcome::Done(self.mem.map_vm_io(m, self.vms.get_mut(&vmid).unwrap(), gpa, pa))
            }
            Op::MapPfnVm { vmid, gfn, pfn } => {
                Outcome::Done(self.mem.map_pfn_vm(m, self.vms.get_mut(&vmid).unwrap(), vmid, gfn, pfn))
            }
            Op::Grant { vmid, pfn } => Outcome::Done(self.mem.grant_vm_page(vmid, pfn)),
            Op::Revoke { vmid, pfn } => Outcome::Done(self.mem.revoke_vm_page(m, vmid, pfn)),
            Op::VmLoad { vmid, gpa } => Outcome::Access(self.vm_access(vmid, gpa, None)),
            Op::VmStore { vmid, gpa, value } => Outcome::Access(self.vm_access(vmid, gpa, Some(value))),
            Op::ClearRange { vmid, pfn, pages } => Outcome::Done(
                self.mem.clear_vm_range(m, self.vms.get_mut(&vmid).unwrap(), vmid, pfn, pages).map(|_| ()),
            ),
            Op::ProtAndMap { vmid, gfn, pfn, level } => {
                Outcome::Done(self.mem.prot_and_map_vm_s2pt(m, self.vms.get_mut(&vmid).unwrap(), vmid, gfn, pfn, level))
            }
            Op::ShareRange { vmid, gpa, size, revoke: false } => {
                Outcome::Done(self.mem.grant_stage2_sg_gpa(m, &self.vms[&vmid], vmid, gpa, size))
            }
            Op::ShareRange { vmid, gpa, size, revoke: true } => {
                Outcome::Done(self.mem.revoke_stage2_sg_gpa(m, &self.vms[&vmid], vmid, gpa, size))
            }
            Op::WriteBack => {
                m.write_back_all();
                Outcome::Done(Ok(()))
            }
            Op::HostOnCore(core) => {
                self.host_core = core;
                Outcome::Done(Ok(()))
            }
            Op::EnableHostSmmu => Outcome::Done(enable_host_smmu(m, &mut self.mem).map(drop)),
            Op::DeviceLoad(pa) => Outcome::Access(self.device_access(pa, None)),
            Op::DeviceStore(pa, v) => Outcome::Access(self.device_access(pa, Some(v))),
            Op::AttachVmSmmu { vmid } => {
                let pool = PagePool::new(SMMU_POOL + u64::from(vmid) * (1 << 30), VM_POOL_PAGES);
                Outcome::Done(self.mem.attach_vm_smmu(m, vmid, &self.vms[&vmid], pool).map(drop))
            }
            Op::VmDeviceLoad { vmid, gpa } => Outcome::Access(self.vm_device_access(vmid, gpa, None)),
            Op::VmDeviceStore { vmid, gpa, value } => Outcome::Access(self.vm_device_access(vmid, gpa, Some(value))),
        }
    }

    /// A DMA access by a device assigned to VM `vmid`: through the VM's SMMU table ([`dma`]),
    /// an abort while it has none.
    fn vm_device_access(&self, vmid: u16, gpa: u64, store: Option<u64>) -> Access {
        match self.mem.vm_smmu.get(&vmid) {
            Some(table) => dma(&self.m, table, vmid, gpa, store),
            None => Access::Abort,
        }
    }

    /// A DMA access by a device of the host's: through the host's SMMU table ([`dma`]); with no
    /// SMMU that KCore owns, the host has no DMA-capable device (refused by the board's policy).
    fn device_access(&self, pa: u64, store: Option<u64>) -> Access {
        match &self.mem.host_smmu {
            Some(table) => dma(&self.m, table, HOST_SMMU_VMID, pa, store),
            None => Access::Abort,
        }
    }

    /// The host's SMMU table, abstractly.
    pub fn host_smmu(&self) -> Option<AbsNpt> {
        self.mem.host_smmu.as_ref().map(|t| AbsNpt::of(t, &self.m))
    }

    /// Each VM's SMMU table, abstractly.
    pub fn vm_smmu(&self) -> BTreeMap<u16, AbsNpt> {
        self.mem.vm_smmu.iter().map(|(&v, t)| (v, AbsNpt::of(t, &self.m))).collect()
    }

    /// Every page-table abstraction, by principal.
    pub fn npts(&self) -> BTreeMap<u16, AbsNpt> {
        let mut npts: BTreeMap<u16, AbsNpt> = self.vms.iter().map(|(&v, t)| (v, AbsNpt::of(t, &self.m))).collect();
        npts.insert(HOST, AbsNpt::of(&self.mem.host_s2, &self.m));
        npts
    }

    /// Memory contents outside the table pools.
    pub fn flatmem(&self) -> BTreeMap<u64, u64> {
        self.m.words(0..POOLS)
    }

    /// The VMs' tables, for the invariant checker.
    pub fn vm_tables(&self) -> Vec<(u16, &PageTable)> {
        self.vms.iter().map(|(&v, t)| (v, t)).collect()
    }
}

/// KCore takes the SMMU: the host's SMMU table in `mem`, from the pool at [`SMMU_POOL`] of the
/// worst-case size.
pub fn enable_host_smmu(m: &ModelMachine, mem: &mut HostMemory) -> Result<u64, MemError> {
    mem.enable_host_smmu(
        m,
        PagePool::new(SMMU_POOL, host_smmu_table_pages(&mem.db.regions().iter().collect::<Vec<_>>())),
    )
}

/// A device's DMA load (`store` None) or store of the word at `iova`, as the SMMU does it:
/// through the SMMU's TLB, else a walk of the stream's table `table` (SMMU VMID `vmid`) whose
/// leaf the TLB then keeps; a miss aborts (the SMMU records a fault event; the device does not
/// retry). The `virt` PCIe root complex and its SMMU are `dma-coherent`: a device reads and
/// writes the coherent view, as a core does.
pub fn dma(m: &ModelMachine, table: &PageTable, vmid: u16, iova: u64, store: Option<u64>) -> Access {
    let pa = match m.smmu_tlb_translate(vmid, iova) {
        Some(pa) => pa,
        None => {
            let Some(leaf) = table.walk(m, iova) else { return Access::Abort };
            m.smmu_tlb_fill(vmid, TlbEntry { input: leaf.input, size: leaf.size(), output: leaf.output });
            leaf.translate(iova)
        }
    };
    load_or_store(m, pa, store)
}

/// The word at `pa` read (`store` None), or written, through the coherent view.
fn load_or_store(m: &ModelMachine, pa: u64, store: Option<u64>) -> Access {
    match store {
        Some(v) => {
            m.write_u64(pa, v);
            Access::Done(0)
        }
        None => Access::Done(m.read_u64(pa)),
    }
}

/// The core VM `vmid` runs on in these tests: VMs 1-3 on cores 1-3, each apart from the others
/// and, until [`Op::HostOnCore`] moves it, from the host.
pub fn vm_core(vmid: u16) -> usize {
    usize::from(vmid) % model::CORES
}

/// The spec's initial state, matching [`System::new`].
pub fn initial_rdata(pages_only: bool) -> RData {
    let mut npts = BTreeMap::new();
    npts.insert(HOST, AbsNpt { free: 599, ..AbsNpt::default() });
    for v in VMS {
        npts.insert(v, AbsNpt { free: VM_POOL_PAGES - 1, ..AbsNpt::default() });
    }
    let r = RData {
        halt: false,
        ram: vec![RAM],
        mmio: test_mmio(),
        pages_only,
        s2page: BTreeMap::new(),
        npts,
        flatmem: BTreeMap::new(),
        host_smmu: None,
        vm_smmu: BTreeMap::new(),
    };
    let (r, result) = spec::give_to_kcore_spec(&r, KCORE).unwrap();
    result.unwrap();
    r
}

/// The operation on the spec.
pub fn spec_apply(r: &RData, op: &Op) -> Option<(RData, Outcome)> {
    let done = |(r, result): (RData, Result<(), MemError>)| (r, Outcome::Done(result));
    let access = |(r, access): (RData, Access)| (r, Outcome::Access(access));
    Some(match *op {
        Op::HostFault(ipa) => {
            let (r, result) = spec::map_page_host_spec(r, ipa)?;
            (r, Outcome::Mapped(result))
        }
        Op::HostLoad(pa) => access(spec::host_access_spec(r, pa, None)?),
        Op::HostStore(pa, v) => access(spec::host_access_spec(r, pa, Some(v))?),
        Op::Assign { vmid, gfn, pfn } => done(spec::assign_pfn_to_vm_spec(r, vmid, gfn, pfn)?),
        Op::Clear { vmid, pfn } => done(spec::clear_vm_page_spec(r, vmid, pfn)?),
        Op::MapVmIo { vmid, gpa, pa } => done(spec::map_vm_io_spec(r, vmid, gpa, pa)?),
        Op::MapPfnVm { vmid, gfn, pfn } => done(spec::map_pfn_vm_spec(r, vmid, gfn, pfn)?),
        Op::Grant { vmid, pfn } => done(spec::grant_vm_page_spec(r, vmid, pfn)?),
        Op::Revoke { vmid, pfn } => done(spec::revoke_vm_page_spec(r, vmid, pfn)?),
        Op::VmLoad { vmid, gpa } => access(spec::vm_access_spec(r, vmid, gpa, None)?),
        Op::VmStore { vmid, gpa, value } => access(spec::vm_access_spec(r, vmid, gpa, Some(value))?),
        Op::ClearRange { vmid, pfn, pages } => {
            let (r, result) = spec::clear_vm_range_spec(r, vmid, pfn, pages)?;
            done((r, result.map(|_| ())))
        }
        Op::ProtAndMap { vmid, gfn, pfn, level } => done(spec::prot_and_map_vm_s2pt_spec(r, vmid, gfn, pfn, level)?),
        Op::ShareRange { vmid, gpa, size, revoke } => done(spec::share_range_spec(r, vmid, gpa, size, revoke)?),
        // The spec's memory is the coherent view, which a write-back does not change; and the
        // spec has no cores: the host's accesses mean the same on every one.
        Op::WriteBack | Op::HostOnCore(_) => (r.clone(), Outcome::Done(Ok(()))),
        Op::EnableHostSmmu => done(spec::enable_host_smmu_spec(r, spec::host_smmu_table_pages_spec(&r.ram))?),
        Op::DeviceLoad(pa) => access(spec::device_access_spec(r, pa, None)?),
        Op::DeviceStore(pa, v) => access(spec::device_access_spec(r, pa, Some(v))?),
        Op::AttachVmSmmu { vmid } => done(spec::attach_vm_smmu_spec(r, vmid, VM_POOL_PAGES)?),
        Op::VmDeviceLoad { vmid, gpa } => access(spec::vm_device_access_spec(r, vmid, gpa, None)?),
        Op::VmDeviceStore { vmid, gpa, value } => access(spec::vm_device_access_spec(r, vmid, gpa, Some(value))?),
    })
}

/// The refinement relation on the pages in `probes`: ownership per page, every table, and all
/// memory contents.
pub fn relate(sys: &System, r: &RData, probes: &BTreeSet<u64>) -> Result<(), String> {
    for &pfn in probes {
        let (concrete, abstract_) = (sys.mem.db.get(pfn << 12), r.page(pfn << 12));
        if concrete != abstract_ {
            return Err(format!("page {pfn:#x}: {concrete:?} but the spec has {abstract_:?}"));
        }
    }
    if sys.npts() != r.npts {
        return Err("page tables differ from the spec".into());
    }
    if sys.host_smmu() != r.host_smmu {
        return Err("the host's SMMU table differs from the spec".into());
    }
    if sys.vm_smmu() != r.vm_smmu {
        return Err("a VM's SMMU table differs from the spec".into());
    }
    if sys.flatmem() != r.flatmem {
        return Err("memory contents differ from the spec".into());
    }
    Ok(())
}

/// Pages the strategies pick from: a few pages of three 2 MiB regions of RAM, one of them
/// KCore's, so that operations by different principals keep meeting on the same pages; and the
/// full range of a page number (issue 11): the same pages with high bits set (which `pfn << 12`
/// would alias to them), the last page of the physical address space and the first past it,
/// and the largest number.
pub fn any_pfn() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => ram_pfn(),
        2 => (ram_pfn(), 28u32..64).prop_map(|(pfn, bit)| pfn | 1 << bit),
        1 => prop_oneof![Just((1u64 << 28) - 1), Just(1u64 << 28), Just(u64::MAX)],
    ]
}

/// Pages of RAM only: the pages behind addresses the hardware reports (a host fault's address
/// is inside the host's input range).
fn ram_pfn() -> impl Strategy<Value = u64> + Clone {
    (prop_oneof![Just(0x40000u64), Just(0x40200), Just(0x7fe00)], 0u64..4).prop_map(|(b, i)| b + i)
}

/// Sizes of a share range: a few pages, or sizes that run off the end of the address space.
fn any_share_size() -> impl Strategy<Value = u64> {
    prop_oneof![8 => (1u64..4).prop_map(|n| n << 12), 1 => Just(!0xfffu64), 1 => Just(1u64 << 63)]
}

fn any_host_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (ram_pfn(), 0u64..4).prop_map(|(pfn, w)| pfn << 12 | w << 3),
        1 => any_mmio_addr(),
    ]
}

/// Addresses outside RAM: around the test's allowed MMIO (its emulated and KCore pages among
/// them), and anywhere below the top of the 48-bit physical address space.
pub fn any_mmio_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0x07e0_0000u64..0x0a20_0000).prop_map(|a| a & !7),
        1 => (0u64..4, 0u64..0x1000).prop_map(|(i, off)| (0x080A_0000 + i * 0x1_0000 + off) & !7),
        1 => (0u64..1 << 48).prop_map(|a| a & !7).prop_filter("outside RAM", |a| !RAM.contains(*a)),
    ]
}

fn any_vmid() -> impl Strategy<Value = u16> + Clone {
    proptest::sample::select(VMS.to_vec())
}

/// Operations the host performs.
pub fn host_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any_host_addr().prop_map(Op::HostFault),
        3 => any_host_addr().prop_map(Op::HostLoad),
        3 => (any_host_addr(), 1u64..1000).prop_map(|(a, v)| Op::HostStore(a, v)),
        2 => (0..model::CORES).prop_map(Op::HostOnCore),
        1 => Just(Op::EnableHostSmmu),
        1 => any_vmid().prop_map(|vmid| Op::AttachVmSmmu { vmid }),
        1 => any_host_addr().prop_map(Op::DeviceLoad),
        1 => (any_host_addr(), 1u64..1000).prop_map(|(a, v)| Op::DeviceStore(a, v)),
        3 => (any_vmid(), 0u64..4, any_pfn()).prop_map(|(vmid, gfn, pfn)| Op::Assign { vmid, gfn, pfn }),
        1 => (any_vmid(), any_pfn()).prop_map(|(vmid, pfn)| Op::Clear { vmid, pfn }),
        1 => (any_vmid(), any_pfn(), prop_oneof![8 => 1u64..6, 1 => Just(u64::MAX), 1 => Just(1u64 << 28)])
            .prop_map(|(vmid, pfn, pages)| Op::ClearRange { vmid, pfn, pages }),
        1 => (any_vmid(), 0u64..16, prop_oneof![Just(0x0900_0000u64), Just(GICH.base), Just(0x4020_0000)])
            .prop_map(|(vmid, g, pa)| Op::MapVmIo { vmid, gpa: (0x100 + g) << 12, pa }),
    ]
}

/// Operations of (or for) VM `vmid`.
pub fn vm_op(vmid: impl Strategy<Value = u16> + Clone) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (vmid.clone(), 0u64..4, any_pfn()).prop_map(|(vmid, gfn, pfn)| Op::MapPfnVm { vmid, gfn, pfn }),
        1 => (vmid.clone(), 0u64..4, any_pfn()).prop_map(|(vmid, gfn, pfn)| Op::ProtAndMap { vmid, gfn, pfn, level: 3 }),
        1 => (vmid.clone(), prop_oneof![Just(0u64), Just(0x200)], prop_oneof![Just(0x40400u64), Just(0x40600), Just(0x40200)])
            .prop_map(|(vmid, gfn, pfn)| Op::ProtAndMap { vmid, gfn, pfn, level: 2 }),
        2 => (vmid.clone(), prop_oneof![8 => (0u64..4).prop_map(|g| g << 12), 1 => Just(!0xfffu64)], any_share_size(), any::<bool>())
            .prop_map(|(vmid, gpa, size, revoke)| Op::ShareRange { vmid, gpa, size, revoke }),
        1 => (vmid.clone(), any_pfn()).prop_map(|(vmid, pfn)| Op::Grant { vmid, pfn }),
        1 => (vmid.clone(), any_pfn()).prop_map(|(vmid, pfn)| Op::Revoke { vmid, pfn }),
        2 => (vmid.clone(), 0u64..4, 0u64..4).prop_map(|(vmid, g, w)| Op::VmLoad { vmid, gpa: g << 12 | w << 3 }),
        2 => (vmid.clone(), 0u64..4, 0u64..4, 1u64..1000).prop_map(|(vmid, g, w, value)| Op::VmStore { vmid, gpa: g << 12 | w << 3, value }),
        1 => (vmid.clone(), 0u64..4, 0u64..4).prop_map(|(vmid, g, w)| Op::VmDeviceLoad { vmid, gpa: g << 12 | w << 3 }),
        1 => (vmid, 0u64..4, 0u64..4, 1u64..1000).prop_map(|(vmid, g, w, value)| Op::VmDeviceStore { vmid, gpa: g << 12 | w << 3, value }),
    ]
}

/// Any operation by anyone, and the hardware writing dirty lines back now and then.
pub fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![8 => host_op(), 8 => vm_op(any_vmid()), 1 => Just(Op::WriteBack)]
}

/// Pages that changed owner between two abstract states. KCore must leave each of them
/// coherent: DRAM equal to the coherent view (docs/cache-coherency.md).
pub fn handed_over(before: &RData, after: &RData) -> Vec<u64> {
    changed_pages(before, after, |b, a| b.owner != a.owner)
}

/// Pages whose last share the host lost between two abstract states (the VM keeps them). KCore
/// must leave no line of them that the host allocated ([`ModelMachine::host_may_hold_lines`]):
/// it cleans and invalidates the page when the host's stage-2 mapped it
/// ([`spec::last_share_owes_clean`]), and the host can have no line of it otherwise.
pub fn last_share_taken(before: &RData, after: &RData) -> Vec<u64> {
    changed_pages(before, after, |b, a| b.owner == a.owner && b.count > 0 && a.count == 0)
}

fn changed_pages(before: &RData, after: &RData, changed: impl Fn(PageInfo, PageInfo) -> bool) -> Vec<u64> {
    let pfns: BTreeSet<u64> = before.s2page.keys().chain(after.s2page.keys()).copied().collect();
    pfns.into_iter()
        .filter(|&pfn| match (before.page(pfn << 12), after.page(pfn << 12)) {
            (Some(b), Some(a)) => changed(b, a),
            _ => false,
        })
        .collect()
}

/// Whether the host may still hold a line of page `pfn`.
pub fn host_lines_left(m: &ModelMachine, pfn: u64) -> bool {
    m.host_may_hold_lines(pfn << 12..(pfn + 1) << 12)
}

/// Whether page `pfn` reads the same through DRAM as through the caches.
pub fn coherent(m: &ModelMachine, pfn: u64) -> bool {
    let page = pfn << 12..(pfn + 1) << 12;
    m.words(page.clone()) == m.dram_words(page)
}

/// A convenient record for the page at `pfn` in tests.
pub fn page(sys: &System, pfn: u64) -> PageInfo {
    sys.mem.db.get(pfn << 12).unwrap()
}

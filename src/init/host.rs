//! Handing the boot core to the host: KServ's image, embedded in KCore by the build, is copied
//! to its load address in host memory and entered at EL1 with the DTB address in x0.

use crate::board::BOARD;
use crate::cpus::CoreTable;
use crate::handlers::trap_handler::{self, HostSetup};
use crate::machine::smmu::{self, Smmu, SmmuError};
use crate::machine::{cpu, features, layout, phys, Aarch64, Machine, PAGE_SIZE};
use crate::memory::{pages::PageDb, regions::MemRegions, HostMapPolicy, HostMemory, MmioMap};
use crate::page_table::{descriptor::Regime, pool::PagePool, PageTable};
use crate::platform::Platform;
use crate::vcpu::controls::{self, HostPmu};
use crate::vm::Kcore;
use core::ops::Range;
use corevisor_boards::{Gic, PhysRange};
use log::{error, info, warn};

/// The host's VMID.
const HOST_VMID: u16 = 0;

/// KServ's raw image (empty when the image was built without one).
static KSERV_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kserv.bin"));

/// Says at boot what of the CPU guests could reach unguarded, and whether the host's PMU may
/// count KCore.
fn report_cpu() {
    let cpu = features::boot();
    let (implementer, part) = cpu.part();
    info!(
        "CPU {implementer:#x}:{part:#x}: {} physical address bits, PMU {:?}, PAuth {}, RAS {}, AMU {}, SVE {}",
        cpu.pa_bits,
        cpu.pmu_version(),
        cpu.pauth(),
        cpu.ras(),
        cpu.amu(),
        cpu.sve()
    );
    for feature in controls::unhandled(cpu) {
        warn!("the CPU has {feature:?}, which guests can reach and corevisor neither switches nor traps");
    }
    if HostPmu::of_build() == HostPmu::CountsEl2 {
        warn!("pmu-bench build: the host's PMU counts at EL2 and across guest runs (for `cargo xtask bench` only; never on hardware)");
    }
}

/// Builds the host's memory state (SeKVM `ENABLE_S2_TRANS` / `protect_el2_mem`): every page of
/// RAM starts as the host's, the board's KCore slot becomes KCore's, and the host's stage-2 starts
/// empty (it is filled on demand). Its tables come from KCore's page-table pool, after the pages
/// of KCore's own boot map.
fn host_memory(platform: &Platform, smmu_owned: bool) -> Result<HostMemory, &'static str> {
    let regions = MemRegions::new(&platform.ram)?;
    let pool = layout::page_table_pool();
    let first = pool.start + super::el2_map::PAGES_USED * PAGE_SIZE;
    let host_pool = PagePool::new(first, (vm_pools(pool.end) - first) / PAGE_SIZE);
    let host_s2 = PageTable::new(&Aarch64, Regime::Stage2 { vmid: HOST_VMID }, host_pool)
        .map_err(|_| "no page for the host's stage-2 root")?;
    let mut memory = HostMemory::new(PageDb::new(regions), host_s2, host_mmio(platform, smmu_owned));
    if corevisor_abi::bootargs::value(&platform.bootargs, "corevisor.host_s2") == Some("pages") {
        memory.policy = HostMapPolicy::PagesOnly;
    }
    memory
        .give_to_kcore(&Aarch64, PhysRange::new(BOARD.kcore_base, BOARD.kcore_size))
        .map_err(|_| "KCore's slot is not host RAM")?;
    if smmu_owned {
        // The host's devices reach exactly the host's pages from the start (`smmu::table_pool`
        // is sized for every 2 MiB block of RAM split: `take_smmu` checked it).
        let (first, pages) = smmu::table_pool();
        memory
            .enable_host_smmu(&Aarch64, PagePool::new(first, pages))
            .map_err(|_| "the host's SMMU table does not fit its pool")?;
    }
    Ok(memory)
}

/// Takes the SMMUv3 the DT describes, if there is one: every stream aborts until the host
/// attaches it. Returns the stream ids the host may attach (the PCI host's `iommu-map` cut to
/// the stream table), or `None` if KCore owns no SMMU (then nothing DMA-capable is contained,
/// and the PCI host stays refused unless the user gives it uncontained). An SMMU that fails
/// while KCore brings it up halts the boot.
fn take_smmu(platform: &Platform) -> Option<Range<u64>> {
    let description = platform.smmu?;
    let frame = description.frame.base;
    let needed = crate::memory::host_smmu_table_pages(&platform.ram);
    let (_, pool_pages) = smmu::table_pool();
    if needed > pool_pages {
        warn!("smmu: the SMMUv3 at {frame:#x} is not used: the host's SMMU table may need {needed} pages for this much RAM, KCore has {pool_pages}");
        return None;
    }
    let map = description.pci_streams;
    let map_streams = map.map_or(0..0, |m| u64::from(m.sid_base)..m.end());
    // SAFETY: the DT's SMMUv3 frame: Device memory in KCore's EL2 map (outside RAM), in no
    // board's host device list and protected from every VM (`host_mmio`); the host does not run
    // yet and this is the only place that takes it.
    match unsafe { Smmu::take(frame, map_streams.end) } {
        Ok(smmu) => {
            let streams = map_streams.start.min(smmu.streams())..map_streams.end.min(smmu.streams());
            info!(
                "smmu: KCore owns the SMMUv3 at {frame:#x}: stream table of {} entries, every stream aborts until the host attaches it; the host may attach streams {:#x}..{:#x}{}",
                smmu.streams(),
                streams.start,
                streams.end,
                match map {
                    Some(m) => alloc::format!(" (PCI requester ids {:#x}.. by the PCI host's iommu-map)", m.rid_base),
                    None => alloc::string::String::from(" (no PCI host's iommu-map names it)"),
                }
            );
            Some(streams)
        }
        Err(SmmuError::Unusable(why)) => {
            warn!("smmu: the SMMUv3 at {frame:#x} is not usable ({why:?}): left aborting every transaction, the devices behind it stay refused");
            None
        }
        Err(e) => {
            error!("smmu: bringing up the SMMUv3 at {frame:#x} failed: {e:?}");
            panic!("the SMMU failed at boot: {e:?}");
        }
    }
}

/// The MMIO the host may map (deny by default): the devices the board lists, as the DT places
/// them, less the DMA-capable ones the user did not turn on; the first page of every 64 KiB
/// redistributor frame emulated; the GICv2 virtual interface control KCore's. Says loudly at
/// boot which DMA-capable devices the host was given anyway.
fn host_mmio(platform: &Platform, smmu_owned: bool) -> MmioMap {
    // SAFETY: `host_mmio` reads only GICR_TYPER of the redistributor regions the DT (or the
    // board) lists, Device memory in KCore's EL2 map; reading it has no side effect.
    let plan = platform.host_mmio(|pa| unsafe { phys::mmio_read(pa, 3) }, smmu_owned);
    for device in &plan.dma_contained {
        info!(
            "host MMIO: {} at {:#x}..{:#x} given to the host: its DMA is contained by the SMMU (streams abort until attached, then reach only the host's pages)",
            device.name,
            device.range.base,
            device.range.end()
        );
    }
    for device in &plan.dma_given {
        warn!(
            "DMA IS NOT ISOLATED: {} at {:#x}..{:#x} is given to the host ({}); it can write any memory, KCore's and every VM's",
            device.name,
            device.range.base,
            device.range.end(),
            crate::platform::HOST_DMA_ARG
        );
    }
    for device in &plan.dma_refused {
        log::debug!("host MMIO: {} at {:#x} masters DMA: refused", device.name, device.range.base);
    }
    const FRAME: u64 = 0x1_0000;
    let emulated: alloc::vec::Vec<PhysRange> = plan
        .redistributors
        .iter()
        .flat_map(|r| (r.base..r.end()).step_by(FRAME as usize).map(|frame| PhysRange::new(frame, PAGE_SIZE)))
        .collect();
    let mut protected = match platform.gic {
        // The GICv2 virtual interface control is the hypervisor's.
        Gic::V2 { gich, .. } if gich != 0 => alloc::vec![PhysRange::new(gich, 0x2000)],
        _ => alloc::vec![],
    };
    // The reset watchdog is KCore's: a host that reset the machine would skip the power-down
    // scrub, and the next boot would hand it the VMs' memory. (No board lists it for the host;
    // protecting it also keeps it out of every VM.)
    if let Some(pm) = platform.pm_watchdog {
        protected.push(PhysRange::new(pm & !(PAGE_SIZE - 1), PAGE_SIZE));
    }
    // The SMMU's frame is KCore's, owned or not: a VM that programmed it could undo every
    // stream table entry (no board lists it for the host either).
    if let Some(smmu) = platform.smmu {
        protected.push(smmu.frame);
    }
    info!(
        "host MMIO: {} ranges allowed, {} redistributor control pages emulated, {} DMA-capable devices refused, {} given, {} contained by the SMMU",
        plan.allowed.len(),
        emulated.len(),
        plan.dma_refused.len(),
        plan.dma_given.len(),
        plan.dma_contained.len()
    );
    let guest_only = match platform.gic {
        Gic::V2 { gicv, .. } if gicv != 0 => alloc::vec![PhysRange::new(gicv, 0x2000)],
        _ => alloc::vec![],
    };
    MmioMap { allowed: plan.allowed, emulated, protected, guest_only }
}

/// Where the VMs' page-table pools start: the end of KCore's pool.
fn vm_pools(pool_end: u64) -> u64 {
    pool_end - Kcore::vm_pool_bytes()
}

/// The Ed25519 key that guest images must be signed with (build.rs: `keys/test-image-key.pub`
/// unless `COREVISOR_IMAGE_PUBKEY` names another).
static IMAGE_KEY: [u8; 32] = *include_bytes!(concat!(env!("OUT_DIR"), "/image_key.bin"));

/// Whether the host may run code at `pa`: RAM that is not KCore's.
pub fn host_may_run_at(pa: u64) -> bool {
    super::platform().is_ram(pa) && !(BOARD.kcore_base..BOARD.kcore_base + BOARD.kcore_size).contains(&pa)
}

/// Loads KServ and enters it on this core. Never returns.
pub fn enter_kserv(platform: &Platform, cores: &CoreTable) -> ! {
    let power = super::power(platform);
    if KSERV_IMAGE.is_empty() {
        error!("this image embeds no KServ: build it with `cargo xtask build`");
        power.system_off(1);
    }
    let image = PhysRange::new(BOARD.kserv_base, KSERV_IMAGE.len() as u64);
    if let Err(problem) = check_kserv_placement(platform, image) {
        error!("cannot load KServ at {:#x}..{:#x}: {problem}", image.base, image.end());
        power.system_off(1);
    }
    // SAFETY: the slot is host RAM outside KCore's region, the DTB and the initrd (checked just
    // above), and the host does not run yet: nothing else owns or references it.
    unsafe { phys::copy_to(image.base, KSERV_IMAGE) };
    // KServ starts with its caches off: its image must be in memory, not only in KCore's cache.
    phys::clean_invalidate_dcache(image.base, image.size);
    phys::sync_icache();
    let smmu_streams = take_smmu(platform);
    let memory = match host_memory(platform, smmu_streams.is_some()) {
        Ok(memory) => memory,
        Err(problem) => {
            error!("cannot set up the host's stage-2: {problem}");
            power.system_off(1);
        }
    };
    info!(
        "host stage-2 on: {} MiB of RAM, KCore owns {:#x}..{:#x}, {:?} mapping",
        memory.db.regions().pages() >> 8,
        BOARD.kcore_base,
        BOARD.kcore_base + BOARD.kcore_size,
        memory.policy
    );
    let vttbr = memory.host_s2.root() | (HOST_VMID as u64) << 48;
    // SAFETY: the redistributors' control pages the memory layer emulates for the host: Device
    // memory the DT (or the board) lists as the GIC's, which the trap handler filters
    // (`fault_handler::gicr_decision`) before any access reaches it.
    let emulated_mmio = unsafe { phys::DeviceWindow::new(memory.mmio.emulated.clone()) };
    let key = match ed25519_dalek::VerifyingKey::from_bytes(&IMAGE_KEY) {
        Ok(key) => key,
        Err(_) => {
            error!("the image key compiled into KCore is not an Ed25519 public key");
            power.system_off(1);
        }
    };
    let kcore = Kcore::new(memory, vm_pools(layout::page_table_pool().end), key);
    let gic_v3 = matches!(platform.gic, Gic::V3 { .. });
    if let Gic::V2 { gich, .. } = platform.gic {
        if gich != 0 && !gic_v3 {
            // SAFETY: the DT's (or the board's) GICH frame: device registers in KCore's EL2 map
            // (Device memory outside RAM), which `mmio_map` keeps out of the host's stage-2 (and
            // so of every VM's: PHYS_ADDR_IOREMAP maps only what the host may map).
            unsafe { crate::machine::vgic::use_gich(gich) };
        }
    }
    trap_handler::install(HostSetup { may_run_at: host_may_run_at, vttbr, gic_v3, emulated_mmio, power }, kcore);
    if let Some(streams) = smmu_streams {
        trap_handler::install_smmu(streams);
    }
    report_cpu();
    Aarch64.flush_stage2_vmid(HOST_VMID);
    let core = cpu::index();
    cores.mark_host(core);
    let dtb = platform.dtb.map_or(0, |d| d.base);
    info!("entering KServ at {:#x} at EL1 ({} KiB, x0 = {dtb:#x})", image.base, image.size / 1024);
    trap_handler::enter_host(core, image.base, dtb)
}

/// KServ must fit its board slot, lie in RAM, and overlap neither KCore nor the firmware's data.
fn check_kserv_placement(platform: &Platform, image: PhysRange) -> Result<(), &'static str> {
    let overlaps = |r: PhysRange| r.base < image.end() && image.base < r.end();
    if image.size > BOARD.kserv_size {
        return Err("the image is larger than the board's KServ slot");
    }
    if !platform.is_ram(image.base) || !platform.is_ram(image.end() - 1) {
        return Err("the slot is not in RAM");
    }
    if overlaps(PhysRange::new(BOARD.kcore_base, BOARD.kcore_size)) {
        return Err("the slot overlaps KCore");
    }
    if platform.dtb.is_some_and(overlaps) || platform.initrd.is_some_and(overlaps) {
        return Err("the slot overlaps the DTB or the initrd");
    }
    Ok(())
}

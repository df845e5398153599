//! What the machine is: RAM, console UART, GIC, CPUs, the initrd, the boot arguments and the
//! devices the host may have. Read from the DTB when the firmware passes one, else taken from the
//! board description.

use alloc::{string::String, vec::Vec};
use corevisor_boards::{Board, Gic, HostAccess, HostDevice, PhysRange};
use fdt::{node::FdtNode, Fdt};

/// The DTB header magic, big-endian.
pub const FDT_MAGIC: u32 = 0xd00d_feed;

/// Where the description came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Dtb,
    BoardFallback,
}

/// One CPU: its MPIDR affinity and, for spin-table boards, its release address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub mpidr: u64,
    pub release_addr: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub source: Source,
    pub ram: Vec<PhysRange>,
    pub uart_base: u64,
    pub gic: Gic,
    pub cpus: Vec<Cpu>,
    pub initrd: Option<PhysRange>,
    pub bootargs: String,
    /// Where the DTB itself lies, so nothing is loaded over it.
    pub dtb: Option<PhysRange>,
    /// The power-management watchdog that resets the machine (the Pi's), if there is one:
    /// KCore's, never mapped for the host.
    pub pm_watchdog: Option<u64>,
    /// The register windows of the devices the board lists for the host (DMA-capable ones
    /// included: whether the host gets those is decided by [`Platform::host_mmio`]).
    pub devices: Vec<DeviceWindow>,
    /// The SMMUv3 in front of the PCI host, if the DT has one (never the host's: no board lists
    /// it, and KCore protects its frame from every VM).
    pub smmu: Option<SmmuDescription>,
}

/// An SMMUv3 (`arm,smmu-v3`) as the DT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuDescription {
    /// Its register frame (128 KiB: page 0 and page 1).
    pub frame: PhysRange,
    /// The stream ids the PCI host's `iommu-map` sends through it, if the PCI host names it.
    pub pci_streams: Option<StreamMap>,
}

/// One `iommu-map` entry: PCI requester ids `rid_base .. rid_base + count` reach the SMMU as
/// stream ids `sid_base ..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamMap {
    pub rid_base: u32,
    pub sid_base: u32,
    pub count: u32,
}

impl StreamMap {
    /// Whether stream id `sid` is one the map gives a PCI requester.
    pub fn covers(&self, sid: u64) -> bool {
        sid >= u64::from(self.sid_base) && sid - u64::from(self.sid_base) < u64::from(self.count)
    }

    /// Whether every PCI requester id (0..=0xffff) goes through the SMMU: a requester the map
    /// leaves out would reach memory untranslated, so only then is the PCI host contained.
    pub fn covers_every_requester(&self) -> bool {
        self.rid_base == 0 && self.count >= 0x1_0000
    }

    /// One past the highest stream id of the map.
    pub fn end(&self) -> u64 {
        u64::from(self.sid_base) + u64::from(self.count)
    }
}

/// The DT compatible of an SMMUv3, and of the PCI host whose `iommu-map` it serves.
pub const SMMU_V3: &str = "arm,smmu-v3";
pub const PCI_HOST: &str = "pci-host-ecam-generic";

/// One register window of a device the board lists for the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceWindow {
    pub range: PhysRange,
    pub access: HostAccess,
    /// The board entry's first `compatible`, naming the device in logs and in the DMA opt-in.
    pub name: &'static str,
}

/// The boot argument that gives DMA-capable devices to the host: `on` (all the board lists) or
/// their `compatible` strings joined by `+`. Absent or `off`: none.
pub const HOST_DMA_ARG: &str = "corevisor.host_dma";

/// What the host's stage-2 may map, once the user's DMA choice is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostMmioPlan {
    /// Page-aligned, sorted, disjoint ranges the host may map: its devices, the redistributors,
    /// and the DMA-capable devices the user turned on; never a page of a refused device.
    pub allowed: Vec<PhysRange>,
    /// The GICv3 redistributor regions (page-aligned): KCore emulates the first page of every
    /// 64 KiB frame in them.
    pub redistributors: Vec<PhysRange>,
    /// DMA-capable devices given to the host anyway (the user asked): DMA is not isolated.
    pub dma_given: Vec<DeviceWindow>,
    /// DMA-capable devices refused to the host.
    pub dma_refused: Vec<DeviceWindow>,
    /// DMA-capable devices given to the host because the SMMU KCore owns contains their DMA
    /// (the PCI host, when its `iommu-map` goes through that SMMU).
    pub dma_contained: Vec<DeviceWindow>,
}

/// The DT compatibles of the BCM2835/BCM2711 power-management watchdog.
const PM_WATCHDOG: &[&str] = &["brcm,bcm2835-pm", "brcm,bcm2711-pm", "brcm,bcm2835-pm-wdt"];

/// Why a DTB could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DtbError {
    /// The blob is not a valid DTB (bad header or structure).
    Invalid(String),
    /// It parsed, but names no RAM.
    NoMemory,
}

/// The total size of a DTB from its header, if `header` starts with a DTB.
pub fn dtb_total_size(header: &[u8; 8]) -> Option<usize> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    (magic == FDT_MAGIC).then(|| u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize)
}

impl Platform {
    /// The description from `board` alone.
    pub fn from_board(board: &Board) -> Platform {
        let cpus = (0..board.cpu_count_fallback)
            .map(|i| Cpu {
                mpidr: i as u64,
                release_addr: match board.cpu_bring_up {
                    corevisor_boards::CpuBringUp::SpinTable { release_addrs } => release_addrs.get(i).copied(),
                    corevisor_boards::CpuBringUp::Psci => None,
                },
            })
            .collect();
        Platform {
            source: Source::BoardFallback,
            ram: board.ram_fallback.to_vec(),
            uart_base: board.uart_base,
            gic: board.gic,
            cpus,
            initrd: None,
            bootargs: String::new(),
            dtb: None,
            pm_watchdog: board.pm_watchdog,
            devices: board_fallback_devices(board),
            smmu: None,
        }
    }

    /// The description in the DTB `blob` found at physical address `dtb_pa`; what the DTB does
    /// not say (no UART or GIC node) comes from `board`.
    pub fn from_dtb(blob: &[u8], dtb_pa: u64, board: &Board) -> Result<Platform, DtbError> {
        let fdt = Fdt::new(blob).map_err(|e| DtbError::Invalid(alloc::format!("{e:?}")))?;
        // fdt's `memory()` and `cpus()` panic when the node is missing: look the nodes up instead.
        let ram: Vec<PhysRange> = root_child(&fdt, "memory")
            .and_then(|memory| memory.reg())
            .into_iter()
            .flatten()
            .filter_map(|r| Some(PhysRange::new(r.starting_address as u64, r.size? as u64)))
            .filter(|r| r.size > 0)
            .collect();
        if ram.is_empty() {
            return Err(DtbError::NoMemory);
        }
        let cpus: Vec<Cpu> = root_child(&fdt, "cpus")
            .into_iter()
            .flat_map(|cpus| cpus.children())
            .filter(|node| node.name.split('@').next() == Some("cpu"))
            .filter_map(|node| {
                let mpidr = node.property("reg")?.as_usize()? as u64;
                let release_addr = node.property("cpu-release-addr").and_then(|p| p.as_usize()).map(|a| a as u64);
                Some(Cpu { mpidr, release_addr })
            })
            .collect();
        let chosen = root_child(&fdt, "chosen");
        let chosen_u64 = |name| chosen.and_then(|c| c.property(name)).and_then(|p| p.as_usize()).map(|v| v as u64);
        let initrd = match (chosen_u64("linux,initrd-start"), chosen_u64("linux,initrd-end")) {
            (Some(start), Some(end)) if end > start => Some(PhysRange::new(start, end - start)),
            _ => None,
        };
        Ok(Platform {
            source: Source::Dtb,
            ram,
            uart_base: find_device_reg(&fdt, &["arm,pl011"], 0).unwrap_or(board.uart_base),
            gic: find_gic(&fdt).unwrap_or(board.gic),
            cpus: if cpus.is_empty() { Platform::from_board(board).cpus } else { cpus },
            initrd,
            bootargs: chosen.and_then(|c| c.property("bootargs")).and_then(|p| p.as_str()).unwrap_or("").into(),
            dtb: Some(PhysRange::new(dtb_pa, fdt.total_size() as u64)),
            pm_watchdog: find_device_reg(&fdt, PM_WATCHDOG, 0).or(board.pm_watchdog),
            devices: dtb_devices(&fdt, board),
            smmu: find_smmu(&fdt),
        })
    }

    /// Whether `pa` lies in RAM.
    pub fn is_ram(&self, pa: u64) -> bool {
        self.ram.iter().any(|r| r.contains(pa))
    }

    /// The MMIO the host may map: every listed device but the DMA-capable ones the user did not
    /// turn on (`corevisor.host_dma` in the boot arguments). Windows are widened to whole pages,
    /// and then every page a refused device touches is taken out again, so a device sharing a
    /// page with a refused one never opens that page. Redistributor regions are cut to the
    /// redistributors that are there ([`redistributor_extent`], reading GICR_TYPER with
    /// `gicr_typer`). `smmu_owned`: KCore owns a working SMMU (the one in [`Platform::smmu`]);
    /// then the PCI host whose `iommu-map` goes through it is given as DMA the SMMU contains.
    pub fn host_mmio(&self, gicr_typer: impl Fn(u64) -> u64, smmu_owned: bool) -> HostMmioPlan {
        let contained = |name: &str| {
            smmu_owned
                && name == PCI_HOST
                && self.smmu.is_some_and(|smmu| smmu.pci_streams.is_some_and(|m| m.covers_every_requester()))
        };
        let opted_in = corevisor_abi::bootargs::value(&self.bootargs, HOST_DMA_ARG).unwrap_or("off");
        let dma_on = |name: &str| opted_in == "on" || opted_in.split('+').any(|c| c == name);
        let mut plan = HostMmioPlan::default();
        let mut granted = Vec::new();
        let gic_v3 = matches!(self.gic, Gic::V3 { .. });
        for &device in &self.devices {
            match device.access {
                // Redistributors of a GICv3 the platform does not have: nothing to emulate.
                HostAccess::GicRedistributors if !gic_v3 => {}
                HostAccess::Dma if !dma_on(device.name) && !contained(device.name) => plan.dma_refused.push(device),
                access => {
                    if access == HostAccess::Dma && contained(device.name) {
                        plan.dma_contained.push(device);
                    } else if access == HostAccess::Dma {
                        plan.dma_given.push(device);
                    }
                    let mut range = page_span(device.range);
                    if access == HostAccess::GicRedistributors {
                        range = redistributor_extent(range, &gicr_typer);
                        plan.redistributors.push(range);
                    }
                    granted.push(range);
                }
            }
        }
        let refused: Vec<PhysRange> = plan.dma_refused.iter().map(|d| page_span(d.range)).collect();
        plan.allowed = subtract(merge(granted), &refused);
        plan.redistributors = subtract(merge(plan.redistributors), &refused);
        plan
    }
}

/// The smallest page-aligned range that holds `r`.
fn page_span(r: PhysRange) -> PhysRange {
    const PAGE: u64 = 4096;
    let base = r.base & !(PAGE - 1);
    let end = r.end().saturating_add(PAGE - 1) & !(PAGE - 1);
    PhysRange::new(base, end - base)
}

/// `ranges` sorted, with overlapping or touching ones joined.
fn merge(mut ranges: Vec<PhysRange>) -> Vec<PhysRange> {
    ranges.retain(|r| r.size > 0);
    ranges.sort_by_key(|r| r.base);
    let mut merged: Vec<PhysRange> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.base <= last.end() => last.size = last.end().max(r.end()) - last.base,
            _ => merged.push(r),
        }
    }
    merged
}

/// `ranges` less every byte of `holes`.
fn subtract(ranges: Vec<PhysRange>, holes: &[PhysRange]) -> Vec<PhysRange> {
    holes.iter().fold(ranges, |ranges, hole| {
        ranges
            .into_iter()
            .flat_map(|r| {
                let below = PhysRange::new(r.base, hole.base.clamp(r.base, r.end()) - r.base);
                let above_base = hole.end().clamp(r.base, r.end());
                [below, PhysRange::new(above_base, r.end() - above_base)]
            })
            .filter(|r| r.size > 0)
            .collect()
    })
}

/// The board's device list with its fallback ranges.
fn board_fallback_devices(board: &Board) -> Vec<DeviceWindow> {
    board
        .host_devices
        .iter()
        .flat_map(|d| {
            d.fallback.iter().map(move |&range| DeviceWindow { range, access: d.access, name: d.compatible[0] })
        })
        .collect()
}

/// The register windows the DTB gives each device the board lists (every matching node, at the
/// root or one bus below it).
fn dtb_devices(fdt: &Fdt, board: &Board) -> Vec<DeviceWindow> {
    let mut windows = Vec::new();
    for device in board.host_devices {
        for range in find_device_windows(fdt, device) {
            windows.push(DeviceWindow { range, access: device.access, name: device.compatible[0] });
        }
    }
    windows
}

/// The CPU physical ranges of `device`'s `reg` windows (the one it names, or all) and, if it
/// asks, of its `ranges`, in every node compatible with it.
fn find_device_windows(fdt: &Fdt, device: &HostDevice) -> Vec<PhysRange> {
    let Some(root) = fdt.find_node("/") else { return Vec::new() };
    let root_cells = fdt.root().cell_sizes().address_cells;
    let mut found = Vec::new();
    let mut add = |node: &FdtNode, bus: Option<&FdtNode>| {
        let to_cpu = |r: PhysRange| match bus {
            None => Some(r),
            Some(bus) => translate(bus, root_cells, r.base).map(|base| PhysRange::new(base, r.size)),
        };
        let regs = node.reg().into_iter().flatten().enumerate();
        for (_, reg) in regs.filter(|(i, _)| device.window.is_none_or(|w| w == *i)) {
            if let Some(range) =
                reg.size.and_then(|size| to_cpu(PhysRange::new(reg.starting_address as u64, size as u64)))
            {
                found.push(range);
            }
        }
        if device.with_ranges {
            let parent_cells = match bus {
                None => root_cells,
                Some(bus) => bus.cell_sizes().address_cells,
            };
            found.extend(ranges_entries(node, parent_cells).into_iter().filter_map(|(_, parent)| to_cpu(parent)));
        }
    };
    for child in root.children() {
        if is_compatible(&child, device.compatible) {
            add(&child, None);
        }
        for grandchild in child.children() {
            if is_compatible(&grandchild, device.compatible) {
                add(&grandchild, Some(&child));
            }
        }
    }
    found.retain(|r| r.size > 0);
    found
}

/// The root's child called `name` (or `name@unit`). fdt 0.1.5's path lookup misses nodes in some
/// blobs (QEMU's rewritten raspi4b DTB among them), so children are matched here.
fn root_child<'b, 'a>(fdt: &'b Fdt<'a>, name: &str) -> Option<FdtNode<'b, 'a>> {
    fdt.find_node("/")?
        .children()
        .find(|n| n.name == name || n.name.split_once('@').is_some_and(|(base, _)| base == name))
}

/// The first SMMUv3 at the root, with the stream ids of the PCI host's `iommu-map` entry that
/// names it (its first entry that does: QEMU's `virt` has one).
fn find_smmu(fdt: &Fdt) -> Option<SmmuDescription> {
    let root = fdt.find_node("/")?;
    let smmu = root.children().find(|n| is_compatible(n, &[SMMU_V3]))?;
    let reg = smmu.reg()?.next()?;
    let frame = PhysRange::new(reg.starting_address as u64, reg.size? as u64);
    let phandle = smmu.property("phandle").and_then(|p| p.as_usize());
    let pci_streams = root
        .children()
        .filter(|n| is_compatible(n, &[PCI_HOST]))
        .filter_map(|pci| pci.property("iommu-map"))
        .flat_map(|map| {
            let cells: Vec<u32> =
                map.value.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
            // <rid-base iommu-phandle iommu-base length>, with one cell each (no iommu specifier
            // beyond the stream id: the SMMUv3 binding's #iommu-cells is 1).
            cells.chunks_exact(4).map(|e| (e[0], e[1], e[2], e[3])).collect::<Vec<_>>()
        })
        .find(|&(_, target, _, count)| Some(target as usize) == phandle && count > 0)
        .map(|(rid_base, _, sid_base, count)| StreamMap { rid_base, sid_base, count });
    Some(SmmuDescription { frame, pci_streams })
}

fn find_gic(fdt: &Fdt) -> Option<Gic> {
    if let Some(gicd) = find_device_reg(fdt, &["arm,gic-v3"], 0) {
        return Some(Gic::V3 { gicd, gicr: find_device_reg(fdt, &["arm,gic-v3"], 1)? });
    }
    let v2 = &["arm,gic-400", "arm,cortex-a15-gic", "arm,cortex-a9-gic"];
    let reg = |i| find_device_reg(fdt, v2, i);
    Some(Gic::V2 { gicd: reg(0)?, gicc: reg(1)?, gich: reg(2).unwrap_or(0), gicv: reg(3).unwrap_or(0) })
}

/// The CPU physical address of register window `index` of the first node compatible with one
/// of `compatible`, at the root or one bus below it (translated through that bus's `ranges`).
fn find_device_reg(fdt: &Fdt, compatible: &[&str], index: usize) -> Option<u64> {
    let root = fdt.find_node("/")?;
    for child in root.children() {
        if is_compatible(&child, compatible) {
            return node_reg(&child, index);
        }
        for grandchild in child.children() {
            if is_compatible(&grandchild, compatible) {
                let bus_addr = node_reg(&grandchild, index)?;
                return translate(&child, fdt.root().cell_sizes().address_cells, bus_addr);
            }
        }
    }
    None
}

fn is_compatible(node: &FdtNode, compatible: &[&str]) -> bool {
    node.compatible().is_some_and(|c| c.all().any(|name| compatible.contains(&name)))
}

fn node_reg(node: &FdtNode, index: usize) -> Option<u64> {
    node.reg()?.nth(index).map(|r| r.starting_address as u64)
}

/// Translates a bus address through `bus`'s `ranges` (an empty `ranges` is the identity). The
/// parent is the root, with `parent_cells` address cells.
fn translate(bus: &FdtNode, parent_cells: usize, bus_addr: u64) -> Option<u64> {
    if bus.property("ranges")?.value.is_empty() {
        return Some(bus_addr);
    }
    ranges_entries(bus, parent_cells).into_iter().find_map(|(child, parent)| {
        (bus_addr >= child && bus_addr - child < parent.size).then(|| parent.base + (bus_addr - child))
    })
}

/// The entries of `node`'s `ranges`: (child address, parent range). A PCI child address's top
/// cell (space code) is dropped: only the low 64 bits of an address are kept.
fn ranges_entries(node: &FdtNode, parent_cells: usize) -> Vec<(u64, PhysRange)> {
    let Some(ranges) = node.property("ranges") else { return Vec::new() };
    let cells = node.cell_sizes();
    let (child_cells, size_cells) = (cells.address_cells, cells.size_cells);
    let entry_cells = child_cells + parent_cells + size_cells;
    if entry_cells == 0 {
        return Vec::new();
    }
    let cells: Vec<u32> = ranges.value.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    let read = |cells: &[u32]| cells.iter().fold(0u64, |acc, &c| acc << 32 | c as u64);
    cells
        .chunks_exact(entry_cells)
        .map(|entry| {
            let child = read(&entry[..child_cells]);
            let parent = read(&entry[child_cells..child_cells + parent_cells]);
            let size = read(&entry[child_cells + parent_cells..]);
            (child, PhysRange::new(parent, size))
        })
        .collect()
}

/// How far the GICv3 redistributors in `region` really go: each frame's GICR_TYPER (read with
/// `typer`, at `RD_base + 8`) says whether it has the VLPI frames (VLPIS, bit 1: 256 KiB per
/// redistributor, else 128 KiB) and whether it is the last one (Last, bit 4). KCore performs
/// host accesses to the redistributors' first pages itself, so it must never name one that is
/// not there (the read would abort at EL2).
pub fn redistributor_extent(region: PhysRange, typer: impl Fn(u64) -> u64) -> PhysRange {
    const VLPIS: u64 = 1 << 1;
    const LAST: u64 = 1 << 4;
    let mut end = region.base;
    while end < region.end() {
        let value = typer(end + 8);
        let stride = if value & VLPIS != 0 { 0x4_0000 } else { 0x2_0000 };
        if end + stride > region.end() {
            break;
        }
        end += stride;
        if value & LAST != 0 {
            break;
        }
    }
    PhysRange::new(region.base, end - region.base)
}

#[cfg(test)]
mod tests;

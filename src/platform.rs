//! What the machine is: RAM, console UART, GIC, CPUs, the initrd and the boot arguments.
//! Read from the DTB when the firmware passes one, else taken from the board description.

use alloc::{string::String, vec::Vec};
use corevisor_boards::{Board, Gic, PhysRange};
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
        })
    }

    /// Whether `pa` lies in RAM.
    pub fn is_ram(&self, pa: u64) -> bool {
        self.ram.iter().any(|r| r.contains(pa))
    }
}

/// The root's child called `name` (or `name@unit`). fdt 0.1.5's path lookup misses nodes in some
/// blobs (QEMU's rewritten raspi4b DTB among them), so children are matched here.
fn root_child<'b, 'a>(fdt: &'b Fdt<'a>, name: &str) -> Option<FdtNode<'b, 'a>> {
    fdt.find_node("/")?
        .children()
        .find(|n| n.name == name || n.name.split_once('@').is_some_and(|(base, _)| base == name))
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

/// Translates a bus address through `bus`'s `ranges` (child address, parent address, size;
/// an empty `ranges` is the identity). The parent is the root, with `parent_cells` address cells.
fn translate(bus: &FdtNode, parent_cells: usize, bus_addr: u64) -> Option<u64> {
    let ranges = bus.property("ranges")?;
    if ranges.value.is_empty() {
        return Some(bus_addr);
    }
    let cells = bus.cell_sizes();
    let (child_cells, size_cells) = (cells.address_cells, cells.size_cells);
    let entry_cells = child_cells + parent_cells + size_cells;
    let cells: Vec<u32> = ranges.value.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    let read = |cells: &[u32]| cells.iter().fold(0u64, |acc, &c| acc << 32 | c as u64);
    cells.chunks_exact(entry_cells).find_map(|entry| {
        let child = read(&entry[..child_cells]);
        let parent = read(&entry[child_cells..child_cells + parent_cells]);
        let size = read(&entry[child_cells + parent_cells..]);
        (bus_addr >= child && bus_addr - child < size).then(|| parent + (bus_addr - child))
    })
}

#[cfg(test)]
mod tests;

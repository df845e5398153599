//! What KServ needs from the DTB: the boot arguments and the console UART. Without a heap, so
//! only the fdt crate's borrowing reader.

use fdt::{node::FdtNode, Fdt};

/// The DTB header magic, big-endian.
pub const MAGIC: u32 = 0xd00d_feed;

/// The most RAM regions KServ keeps track of.
pub const MAX_RAM_REGIONS: usize = 4;

/// The boot arguments, the UART's physical address, RAM and the GIC distributor, as far as the
/// DTB names them.
#[derive(Debug, PartialEq, Eq)]
pub struct BootInfo<'a> {
    pub bootargs: &'a str,
    pub uart: Option<u64>,
    /// `(base, size)` of each RAM region.
    pub ram: [Option<(u64, u64)>; MAX_RAM_REGIONS],
    pub gic: Option<GicInfo>,
    /// `(start, end)` of the initrd (the boot bundle), from `/chosen`.
    pub initrd: Option<(u64, u64)>,
    /// The generic ECAM PCIe host (`pci-host-ecam-generic`), if there is one.
    pub pci: Option<PciHost>,
    /// The SMMUv3's register frame (`arm,smmu-v3`), if there is one.
    pub smmu: Option<u64>,
}

/// What KServ needs of a generic ECAM PCIe host to find a device and give it a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// `(base, size)` of the configuration space (ECAM: bus << 20 | device << 15 | fn << 12).
    pub ecam: (u64, u64),
    /// The 32-bit memory window: `(PCI address, CPU address, size)`.
    pub mmio32: (u64, u64, u64),
    /// The first `iommu-map` entry: `(requester id base, stream id base, length)`; `None` when
    /// no IOMMU stands in front of the host.
    pub iommu_map: Option<(u64, u64, u64)>,
}

impl PciHost {
    /// The SMMU stream id of requester id `rid`, through the `iommu-map`.
    pub fn stream_id(&self, rid: u64) -> Option<u64> {
        let (rid_base, sid_base, len) = self.iommu_map?;
        (rid >= rid_base && rid - rid_base < len).then(|| sid_base + (rid - rid_base))
    }
}

/// The GIC's first two register frames: distributor and CPU interface (v2) or redistributors (v3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicInfo {
    pub v3: bool,
    pub gicd: u64,
    pub second: u64,
    /// GICv2 only: the virtual interface control frame, which is KCore's.
    pub gich: Option<u64>,
    /// GICv2 only: the virtual CPU interface, which a guest gets at its GICC address.
    pub gicv: Option<u64>,
}

/// The total size a DTB header announces, if `header` starts with the DTB magic.
pub fn total_size(header: [u8; 8]) -> Option<usize> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    (magic == MAGIC).then(|| u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize)
}

/// Reads the boot information from a DTB blob.
pub fn read(blob: &[u8]) -> Option<BootInfo<'_>> {
    let fdt = Fdt::new(blob).ok()?;
    let bootargs =
        root_child(&fdt, "chosen").and_then(|c| c.property("bootargs")).and_then(|p| p.as_str()).unwrap_or("");
    let mut ram = [None; MAX_RAM_REGIONS];
    let regions = root_child(&fdt, "memory").and_then(|m| m.reg()).into_iter().flatten();
    for (slot, r) in ram.iter_mut().zip(regions) {
        *slot = r.size.map(|size| (r.starting_address as u64, size as u64));
    }
    let chosen_u64 = |name| Some(cells_value(root_child(&fdt, "chosen")?.property(name)?.value));
    let initrd = chosen_u64("linux,initrd-start").zip(chosen_u64("linux,initrd-end")).filter(|(s, e)| s < e);
    let smmu = fdt.find_compatible(&["arm,smmu-v3"]).and_then(|n| n.reg()?.next()).map(|r| r.starting_address as u64);
    Some(BootInfo { bootargs, uart: find_pl011(&fdt), ram, gic: find_gic(&fdt), initrd, pci: find_pci(&fdt), smmu })
}

/// The generic ECAM PCIe host: its ECAM `reg`, the 32-bit memory entry of its `ranges` (PCI
/// address space code 0b10 in bits 24-25 of the first cell) and its `iommu-map`.
fn find_pci(fdt: &Fdt) -> Option<PciHost> {
    const SPACE_MEM32: u64 = 0b10;
    let node = fdt.find_compatible(&["pci-host-ecam-generic"])?;
    let reg = node.reg()?.next()?;
    let ecam = (reg.starting_address as u64, reg.size? as u64);
    let parent_cells = fdt.root().cell_sizes().address_cells;
    // A PCI address is three cells (space code, then the 64-bit address), a size two.
    let entry_bytes = 4 * (3 + parent_cells + 2);
    let mmio32 = node.property("ranges")?.value.chunks_exact(entry_bytes).find_map(|entry| {
        let (pci, rest) = entry.split_at(12);
        let (cpu, size) = rest.split_at(4 * parent_cells);
        (cells_value(&pci[..4]) >> 24 & 0b11 == SPACE_MEM32)
            .then(|| (cells_value(&pci[4..]), cells_value(cpu), cells_value(size)))
    })?;
    // <rid-base &iommu sid-base length>, one cell each.
    let iommu_map = node.property("iommu-map").and_then(|p| {
        let cell = |i: usize| p.value.get(4 * i..4 * i + 4).map(cells_value);
        Some((cell(0)?, cell(2)?, cell(3)?))
    });
    Some(PciHost { ecam, mmio32, iommu_map })
}

/// The root's child called `name` (or `name@unit`); fdt 0.1.5's path lookup misses nodes in
/// QEMU's rewritten raspi4b DTB.
fn root_child<'b, 'a>(fdt: &'b Fdt<'a>, name: &str) -> Option<FdtNode<'b, 'a>> {
    fdt.find_node("/")?
        .children()
        .find(|n| n.name == name || n.name.split_once('@').is_some_and(|(base, _)| base == name))
}

fn find_gic(fdt: &Fdt) -> Option<GicInfo> {
    let v3 = fdt.find_compatible(&["arm,gic-v3"]);
    let node = v3.or_else(|| fdt.find_compatible(&["arm,gic-400", "arm,cortex-a15-gic"]))?;
    let mut reg = node.reg()?.map(|r| r.starting_address as u64);
    let (gicd, second) = (reg.next()?, reg.next()?);
    let (gich, gicv) = if v3.is_some() { (None, None) } else { (reg.next(), reg.next()) };
    Some(GicInfo { v3: v3.is_some(), gicd, second, gich, gicv })
}

/// The PL011 at the root or one bus below it, translated through that bus's `ranges`.
fn find_pl011(fdt: &Fdt) -> Option<u64> {
    let is_pl011 = |n: &FdtNode| n.compatible().is_some_and(|c| c.all().any(|s| s == "arm,pl011"));
    let first_reg = |n: &FdtNode| n.reg()?.next().map(|r| r.starting_address as u64);
    let root_cells = fdt.root().cell_sizes().address_cells;
    for child in fdt.find_node("/")?.children() {
        if is_pl011(&child) {
            return first_reg(&child);
        }
        if let Some(uart) = child.children().find(is_pl011) {
            return translate(&child, root_cells, first_reg(&uart)?);
        }
    }
    None
}

/// A number spread over big-endian 32-bit cells (one or two, in practice).
fn cells_value(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(4).fold(0u64, |acc, c| acc << 32 | u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64)
}

/// Maps a bus address to the parent's address space through `bus`'s `ranges`.
fn translate(bus: &FdtNode, parent_cells: usize, addr: u64) -> Option<u64> {
    let ranges = bus.property("ranges")?.value;
    if ranges.is_empty() {
        return Some(addr);
    }
    let cells = bus.cell_sizes();
    let entry_bytes = 4 * (cells.address_cells + parent_cells + cells.size_cells);
    let read = cells_value;
    ranges.chunks_exact(entry_bytes).find_map(|entry| {
        let (child, rest) = entry.split_at(4 * cells.address_cells);
        let (parent, size) = rest.split_at(4 * parent_cells);
        let (child, parent, size) = (read(child), read(parent), read(size));
        (addr >= child && addr - child < size).then(|| parent + (addr - child))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    fn dtb(uart_under_soc: bool) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        let chosen = w.begin_node("chosen").unwrap();
        w.property_string("bootargs", "scenario=boot").unwrap();
        // QEMU writes the initrd's start in two cells and its end in one, as here.
        if uart_under_soc {
            w.property_array_u32("linux,initrd-start", &[0, 0x4800_0000]).unwrap();
            w.property_u32("linux,initrd-end", 0x4800_4000).unwrap();
        }
        w.end_node(chosen).unwrap();
        let memory = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u32("reg", &[0, 0x4000_0000, 0x4000_0000]).unwrap();
        w.end_node(memory).unwrap();
        let gic = w.begin_node("interrupt-controller@ff841000").unwrap();
        w.property_string("compatible", "arm,gic-400").unwrap();
        let reg = [0, 0xff84_1000, 0x1000, 0, 0xff84_2000, 0x2000, 0, 0xff84_4000, 0x2000, 0, 0xff84_6000, 0x2000];
        w.property_array_u32("reg", &reg).unwrap();
        w.end_node(gic).unwrap();
        if uart_under_soc {
            let soc = w.begin_node("soc").unwrap();
            w.property_u32("#address-cells", 1).unwrap();
            w.property_u32("#size-cells", 1).unwrap();
            w.property_array_u32(
                "ranges",
                &[0x7c00_0000, 0, 0xfc00_0000, 0x0100_0000, 0x7e00_0000, 0, 0xfe00_0000, 0x0180_0000],
            )
            .unwrap();
            let uart = w.begin_node("serial@7e201000").unwrap();
            w.property_string("compatible", "arm,pl011").unwrap();
            w.property_array_u32("reg", &[0x7e20_1000, 0x200]).unwrap();
            w.end_node(uart).unwrap();
            w.end_node(soc).unwrap();
        } else {
            let uart = w.begin_node("pl011@9000000").unwrap();
            w.property_string("compatible", "arm,pl011").unwrap();
            w.property_array_u32("reg", &[0, 0x0900_0000, 0x1000]).unwrap();
            w.end_node(uart).unwrap();
        }
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn reads_bootargs_and_a_root_uart() {
        let blob = dtb(false);
        let info = read(&blob).unwrap();
        assert_eq!((info.bootargs, info.uart), ("scenario=boot", Some(0x0900_0000)));
        assert_eq!(info.ram, [Some((0x4000_0000, 0x4000_0000)), None, None, None]);
        assert_eq!(
            info.gic,
            Some(GicInfo {
                v3: false,
                gicd: 0xff84_1000,
                second: 0xff84_2000,
                gich: Some(0xff84_4000),
                gicv: Some(0xff84_6000)
            })
        );
        assert_eq!(total_size(blob[..8].try_into().unwrap()), Some(blob.len()));
    }

    #[test]
    fn translates_a_uart_behind_the_second_soc_range() {
        assert_eq!(read(&dtb(true)).unwrap().uart, Some(0xfe20_1000));
    }

    #[test]
    fn reads_the_initrd_whatever_its_cell_count() {
        assert_eq!(read(&dtb(true)).unwrap().initrd, Some((0x4800_0000, 0x4800_4000)));
        assert_eq!(read(&dtb(false)).unwrap().initrd, None);
        assert_eq!(cells_value(&[0, 0, 0, 1, 0, 0, 0, 2]), 1 << 32 | 2);
    }

    /// QEMU virt's PCIe host and SMMUv3 with `iommu=smmuv3`, as its DTB has them.
    fn virt_pci_dtb(iommu: bool) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let smmu = w.begin_node("smmuv3@9050000").unwrap();
        w.property_string("compatible", "arm,smmu-v3").unwrap();
        w.property_array_u32("reg", &[0, 0x0905_0000, 0, 0x2_0000]).unwrap();
        w.property_u32("phandle", 0x8003).unwrap();
        w.end_node(smmu).unwrap();
        let pcie = w.begin_node("pcie@10000000").unwrap();
        w.property_string("compatible", "pci-host-ecam-generic").unwrap();
        w.property_u32("#address-cells", 3).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_array_u32("reg", &[0x40, 0x1000_0000, 0, 0x1000_0000]).unwrap();
        #[rustfmt::skip]
        let ranges = [
            0x0100_0000, 0, 0, 0, 0x3eff_0000, 0, 0x1_0000,
            0x0200_0000, 0, 0x1000_0000, 0, 0x1000_0000, 0, 0x2eff_0000,
            0x0300_0000, 0x80, 0, 0x80, 0, 0x80, 0,
        ];
        w.property_array_u32("ranges", &ranges).unwrap();
        if iommu {
            w.property_array_u32("iommu-map", &[0, 0x8003, 0, 0x1_0000]).unwrap();
        }
        w.end_node(pcie).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn reads_the_pci_host_its_32_bit_window_and_its_iommu_map() {
        let blob = virt_pci_dtb(true);
        let info = read(&blob).unwrap();
        let pci = info.pci.unwrap();
        assert_eq!(pci.ecam, (0x40_1000_0000, 0x1000_0000));
        assert_eq!(pci.mmio32, (0x1000_0000, 0x1000_0000, 0x2eff_0000), "the 32-bit window, not I/O or 64-bit");
        assert_eq!(pci.stream_id(0x10), Some(0x10));
        assert_eq!(pci.stream_id(0x1_0000), None, "past the map's length");
        assert_eq!(info.smmu, Some(0x0905_0000));
        let plain = virt_pci_dtb(false);
        assert_eq!(read(&plain).unwrap().pci.unwrap().stream_id(0x10), None, "no IOMMU, no stream");
        assert_eq!(read(&dtb(false)).unwrap().pci, None);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(read(&[0; 64]), None);
        assert_eq!(total_size([0; 8]), None);
    }
}

//! The device tree of a Linux VM: what Linux needs to boot to `/init` on corevisor (memory, the
//! vCPUs with PSCI over `hvc`, the architected timer, the GIC KServ emulates for the board's
//! version, one PL011 with its `apb_pclk`, and `/chosen`), at the guest addresses of
//! `corevisor_abi::guest_dev`.

use super::fdt::{FdtWriter, Full};
use corevisor_abi::guest_dev;

/// What the device tree describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxVmDt<'a> {
    pub ram_base: u64,
    pub ram_size: u64,
    pub cpus: u32,
    /// GICv3 (distributor and redistributors) or GICv2 (distributor and CPU interface).
    pub gic_v3: bool,
    pub bootargs: &'a str,
    /// The initrd's guest-physical `[start, end)`, if there is one.
    pub initrd: Option<(u64, u64)>,
}

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;
/// Interrupt specifier types (GIC binding): shared and private peripheral interrupts.
const SPI: u32 = 0;
const PPI: u32 = 1;
/// Level-sensitive, active high.
const LEVEL_HIGH: u32 = 4;
/// The architected timer's PPIs: secure physical, non-secure physical, virtual, hypervisor.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The PL011's SPI (a number in the guest's distributor; KServ raises none: polled console).
const UART_SPI: u32 = 1;

/// Writes the VM's device tree into `out`; returns its length.
pub fn write(dt: &LinuxVmDt, out: &mut [u8]) -> Result<usize, Full> {
    let mut w = FdtWriter::<4096, 512>::new();
    w.begin_node("");
    w.property_u32("#address-cells", 2);
    w.property_u32("#size-cells", 2);
    w.property_string("compatible", "corevisor,linux-vm");
    w.property_u32("interrupt-parent", GIC_PHANDLE);

    w.begin_node("chosen");
    w.property_string("bootargs", dt.bootargs);
    w.property_string("stdout-path", "/pl011@9000000");
    if let Some((start, end)) = dt.initrd {
        w.property_u64("linux,initrd-start", start);
        w.property_u64("linux,initrd-end", end);
    }
    w.end_node();

    let mut name = NodeName::new();
    w.begin_node(name.at("memory", dt.ram_base));
    w.property_string("device_type", "memory");
    w.property_cells("reg", &reg(dt.ram_base, dt.ram_size));
    w.end_node();

    w.begin_node("cpus");
    w.property_u32("#address-cells", 1);
    w.property_u32("#size-cells", 0);
    for cpu in 0..dt.cpus {
        w.begin_node(name.at("cpu", cpu.into()));
        w.property_string("device_type", "cpu");
        w.property_string("compatible", "arm,armv8");
        w.property_u32("reg", cpu);
        w.property_string("enable-method", "psci");
        w.end_node();
    }
    w.end_node();

    w.begin_node("psci");
    w.property_strings("compatible", &["arm,psci-1.0", "arm,psci-0.2"]);
    w.property_string("method", "hvc");
    w.end_node();

    w.begin_node("timer");
    w.property_string("compatible", "arm,armv8-timer");
    // GICv2 PPI specifiers carry a CPU mask in bits 8..15; GICv3's do not.
    let flags = if dt.gic_v3 { LEVEL_HIGH } else { ((1 << dt.cpus.min(8)) - 1) << 8 | LEVEL_HIGH };
    let ppis = TIMER_PPIS.map(|ppi| [PPI, ppi, flags]);
    w.property_cells("interrupts", ppis.as_flattened());
    w.property_null("always-on");
    w.end_node();

    w.begin_node(name.at("intc", guest_dev::GICD));
    w.property_string("compatible", if dt.gic_v3 { "arm,gic-v3" } else { "arm,cortex-a15-gic" });
    w.property_u32("#interrupt-cells", 3);
    w.property_u32("#address-cells", 0);
    w.property_null("interrupt-controller");
    w.property_u32("phandle", GIC_PHANDLE);
    if dt.gic_v3 {
        let redists = u64::from(dt.cpus) * guest_dev::GICR_STRIDE;
        let [a, b] = [reg(guest_dev::GICD, 0x1_0000), reg(guest_dev::GICR, redists)];
        w.property_cells("reg", &[a, b].concat_cells());
        w.property_u32("#redistributor-regions", 1);
    } else {
        let [a, b] = [reg(guest_dev::GICD, 0x1000), reg(guest_dev::GICC, 0x2000)];
        w.property_cells("reg", &[a, b].concat_cells());
    }
    w.end_node();

    w.begin_node("apb-pclk");
    w.property_string("compatible", "fixed-clock");
    w.property_u32("#clock-cells", 0);
    w.property_u32("clock-frequency", 24_000_000);
    w.property_string("clock-output-names", "clk24mhz");
    w.property_u32("phandle", CLOCK_PHANDLE);
    w.end_node();

    w.begin_node(name.at("pl011", guest_dev::UART));
    w.property_strings("compatible", &["arm,pl011", "arm,primecell"]);
    w.property_cells("reg", &reg(guest_dev::UART, 0x1000));
    w.property_cells("interrupts", &[SPI, UART_SPI, LEVEL_HIGH]);
    w.property_cells("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE]);
    w.property_strings("clock-names", &["uartclk", "apb_pclk"]);
    w.end_node();

    w.end_node();
    w.finish(out)
}

/// A `reg` entry of two address and two size cells.
fn reg(base: u64, size: u64) -> [u32; 4] {
    [(base >> 32) as u32, base as u32, (size >> 32) as u32, size as u32]
}

trait ConcatCells {
    fn concat_cells(&self) -> [u32; 8];
}

impl ConcatCells for [[u32; 4]; 2] {
    fn concat_cells(&self) -> [u32; 8] {
        let mut out = [0; 8];
        out[..4].copy_from_slice(&self[0]);
        out[4..].copy_from_slice(&self[1]);
        out
    }
}

/// `name@hex-address` node names, formatted without a heap.
struct NodeName {
    bytes: [u8; 32],
}

impl NodeName {
    fn new() -> NodeName {
        NodeName { bytes: [0; 32] }
    }

    fn at(&mut self, prefix: &str, address: u64) -> &str {
        let mut len = prefix.len();
        self.bytes[..len].copy_from_slice(prefix.as_bytes());
        self.bytes[len] = b'@';
        len += 1;
        let digits = (64 - address.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in (0..digits).rev() {
            self.bytes[len] = b"0123456789abcdef"[(address >> (4 * i) & 0xf) as usize];
            len += 1;
        }
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("?")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(gic_v3: bool) -> Vec<u8> {
        let spec = LinuxVmDt {
            ram_base: 0x4000_0000,
            ram_size: 128 << 20,
            cpus: 2,
            gic_v3,
            bootargs: "console=ttyAMA0 earlycon nokaslr",
            initrd: Some((0x4300_0000, 0x4320_0000)),
        };
        let mut out = vec![0u8; 8192];
        let len = write(&spec, &mut out).unwrap();
        out.truncate(len);
        out
    }

    #[test]
    fn linux_finds_memory_cpus_gic_uart_and_chosen() {
        let blob = dt(true);
        let tree = fdt::Fdt::new(&blob).unwrap();
        let memory = tree.memory().regions().next().unwrap();
        assert_eq!((memory.starting_address as u64, memory.size), (0x4000_0000, Some(128 << 20)));
        assert_eq!(tree.cpus().count(), 2);
        assert_eq!(tree.cpus().map(|c| c.ids().first()).collect::<Vec<_>>(), [0, 1]);
        assert!(tree.cpus().all(|c| c.property("enable-method").and_then(|p| p.as_str()) == Some("psci")));
        let chosen = tree.chosen();
        assert_eq!(chosen.bootargs(), Some("console=ttyAMA0 earlycon nokaslr"));
        assert_eq!(chosen.stdout().map(|n| n.name), Some("pl011@9000000"));
        let gic = tree.find_compatible(&["arm,gic-v3"]).unwrap();
        let regs: Vec<_> = gic.reg().unwrap().map(|r| (r.starting_address as u64, r.size)).collect();
        assert_eq!(
            regs,
            [(guest_dev::GICD, Some(0x1_0000)), (guest_dev::GICR, Some(2 * guest_dev::GICR_STRIDE as usize))]
        );
        let uart = tree.find_compatible(&["arm,pl011"]).unwrap();
        assert_eq!(uart.compatible().unwrap().all().collect::<Vec<_>>(), ["arm,pl011", "arm,primecell"]);
        assert_eq!(uart.reg().unwrap().next().unwrap().starting_address as u64, guest_dev::UART);
        let psci = tree.find_node("/psci").unwrap();
        assert_eq!(psci.property("method").and_then(|p| p.as_str()), Some("hvc"));
        let timer = tree.find_compatible(&["arm,armv8-timer"]).unwrap();
        let cells: Vec<u32> = timer
            .property("interrupts")
            .unwrap()
            .value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(cells, [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]);
        let initrd = |name| chosen_u64(&tree, name);
        assert_eq!((initrd("linux,initrd-start"), initrd("linux,initrd-end")), (0x4300_0000, 0x4320_0000));
    }

    fn chosen_u64(tree: &fdt::Fdt, name: &str) -> u64 {
        let value = tree.find_node("/chosen").unwrap().property(name).unwrap().value;
        u64::from_be_bytes(value.try_into().unwrap())
    }

    #[test]
    fn gicv2_has_a_cpu_interface_and_masked_timer_ppis() {
        let blob = dt(false);
        let tree = fdt::Fdt::new(&blob).unwrap();
        let gic = tree.find_compatible(&["arm,cortex-a15-gic"]).unwrap();
        let regs: Vec<_> = gic.reg().unwrap().map(|r| r.starting_address as u64).collect();
        assert_eq!(regs, [guest_dev::GICD, guest_dev::GICC]);
        let timer = tree.find_compatible(&["arm,armv8-timer"]).unwrap();
        let flags = u32::from_be_bytes(timer.property("interrupts").unwrap().value[8..12].try_into().unwrap());
        assert_eq!(flags, 0x304);
    }

    #[test]
    fn a_buffer_too_small_is_an_error_not_a_panic() {
        let spec = LinuxVmDt { ram_base: 0, ram_size: 1 << 20, cpus: 8, gic_v3: true, bootargs: "x", initrd: None };
        assert_eq!(write(&spec, &mut [0u8; 256]), Err(Full));
        let long = "a".repeat(5000);
        assert_eq!(write(&LinuxVmDt { bootargs: &long, ..spec }, &mut [0u8; 16384]), Err(Full));
    }
}

//! The device tree of a Linux VM: what Linux needs to boot to `/init` on corevisor (memory, the
//! vCPUs with PSCI over `hvc`, the architected timer, the GIC KServ emulates for the board's
//! version, one PL011 with its `apb_pclk`, and `/chosen`), at the guest addresses of
//! `corevisor_abi::guest_dev`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use corevisor_abi::bundle::LINUX_DT_MAX;
use corevisor_abi::guest_dev;
use vm_fdt::FdtWriter;

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

/// Why no device tree was written.
#[derive(Debug, PartialEq, Eq)]
pub enum DtError {
    /// The writer refused it (a name or string it cannot hold).
    Fdt(vm_fdt::Error),
    /// It is longer than the room the VM's layout leaves it ([`LINUX_DT_MAX`]).
    TooLarge(usize),
}

impl From<vm_fdt::Error> for DtError {
    fn from(e: vm_fdt::Error) -> DtError {
        DtError::Fdt(e)
    }
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

/// The VM's device tree blob, at most [`LINUX_DT_MAX`] bytes.
pub fn write(dt: &LinuxVmDt) -> Result<Vec<u8>, DtError> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_string("compatible", "corevisor,linux-vm")?;
    w.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let uart = format!("pl011@{:x}", guest_dev::UART);
    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", dt.bootargs)?;
    w.property_string("stdout-path", &format!("/{uart}"))?;
    if let Some((start, end)) = dt.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.end_node(chosen)?;

    let memory = w.begin_node(&format!("memory@{:x}", dt.ram_base))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[dt.ram_base, dt.ram_size])?;
    w.end_node(memory)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for cpu in 0..dt.cpus {
        let node = w.begin_node(&format!("cpu@{cpu:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,armv8")?;
        w.property_u32("reg", cpu)?;
        w.property_string("enable-method", "psci")?;
        w.end_node(node)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list("compatible", strings(&["arm,psci-1.0", "arm,psci-0.2"]))?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    // GICv2 PPI specifiers carry a CPU mask in bits 8..15; GICv3's do not.
    let flags = if dt.gic_v3 { LEVEL_HIGH } else { ((1 << dt.cpus.min(8)) - 1) << 8 | LEVEL_HIGH };
    let ppis = TIMER_PPIS.map(|ppi| [PPI, ppi, flags]);
    w.property_array_u32("interrupts", ppis.as_flattened())?;
    w.property_null("always-on")?;
    w.end_node(timer)?;

    let intc = w.begin_node(&format!("intc@{:x}", guest_dev::GICD))?;
    w.property_string("compatible", if dt.gic_v3 { "arm,gic-v3" } else { "arm,cortex-a15-gic" })?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_u32("#address-cells", 0)?;
    w.property_null("interrupt-controller")?;
    w.property_phandle(GIC_PHANDLE)?;
    if dt.gic_v3 {
        let redists = u64::from(dt.cpus) * guest_dev::GICR_STRIDE;
        w.property_array_u64("reg", &[guest_dev::GICD, 0x1_0000, guest_dev::GICR, redists])?;
        w.property_u32("#redistributor-regions", 1)?;
    } else {
        w.property_array_u64("reg", &[guest_dev::GICD, 0x1000, guest_dev::GICC, 0x2000])?;
    }
    w.end_node(intc)?;

    let clock = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", 24_000_000)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(CLOCK_PHANDLE)?;
    w.end_node(clock)?;

    let pl011 = w.begin_node(&uart)?;
    w.property_string_list("compatible", strings(&["arm,pl011", "arm,primecell"]))?;
    w.property_array_u64("reg", &[guest_dev::UART, 0x1000])?;
    w.property_array_u32("interrupts", &[SPI, UART_SPI, LEVEL_HIGH])?;
    w.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    w.property_string_list("clock-names", strings(&["uartclk", "apb_pclk"]))?;
    w.end_node(pl011)?;

    w.end_node(root)?;
    let blob = w.finish()?;
    match blob.len() {
        len if len as u64 > LINUX_DT_MAX => Err(DtError::TooLarge(len)),
        _ => Ok(blob),
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|&s| s.into()).collect()
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
        write(&spec).unwrap()
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
    fn a_tree_too_large_for_its_room_is_an_error_not_a_panic() {
        let spec = LinuxVmDt { ram_base: 0, ram_size: 1 << 20, cpus: 8, gic_v3: true, bootargs: "x", initrd: None };
        assert!(write(&spec).unwrap().len() < 4096);
        let long = "a".repeat(LINUX_DT_MAX as usize);
        assert!(matches!(write(&LinuxVmDt { bootargs: &long, ..spec }), Err(DtError::TooLarge(_))));
        let nul = LinuxVmDt { bootargs: "a\0b", ..spec };
        assert_eq!(write(&nul), Err(DtError::Fdt(vm_fdt::Error::InvalidString)));
    }
}

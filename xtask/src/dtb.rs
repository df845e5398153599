//! The DTB that QEMU `raspi4b` runs get, shaped like the BCM2711's (the UART and the other
//! peripherals behind `/soc` ranges, PCIe and GENET behind `/scb`, spin-table CPUs, a GIC-400), so the Pi board exercises KCore's DTB path as real
//! firmware would. QEMU fills `/chosen/bootargs` from `-append` and rewrites `/memory`.

use vm_fdt::{FdtWriter, FdtWriterResult};

pub fn raspi4b() -> FdtWriterResult<Vec<u8>> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 1)?;
    w.property_string_list("compatible", vec!["raspberrypi,4-model-b".into(), "brcm,bcm2711".into()])?;
    w.property_string("model", "Raspberry Pi 4 Model B (corevisor test DTB)")?;

    let memory = w.begin_node("memory@0")?;
    w.property_string("device_type", "memory")?;
    w.property_array_u32("reg", &[0, 0, 0x8000_0000])?;
    w.end_node(memory)?;

    let chosen = w.begin_node("chosen")?;
    w.end_node(chosen)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for (i, release) in [0xd8u64, 0xe0, 0xe8, 0xf0].into_iter().enumerate() {
        let cpu = w.begin_node(&format!("cpu@{i}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,cortex-a72")?;
        w.property_u32("reg", i as u32)?;
        w.property_string("enable-method", "spin-table")?;
        w.property_u64("cpu-release-addr", release)?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let soc = w.begin_node("soc")?;
    w.property_string("compatible", "simple-bus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 1)?;
    w.property_array_u32("ranges", &[0x7e00_0000, 0x0, 0xfe00_0000, 0x0180_0000])?;
    let uart = w.begin_node("serial@7e201000")?;
    w.property_string_list("compatible", vec!["arm,pl011".into(), "arm,primecell".into()])?;
    w.property_array_u32("reg", &[0x7e20_1000, 0x200])?;
    w.end_node(uart)?;
    // The power-management block, whose watchdog resets the board (as in bcm2711.dtsi).
    let pm = w.begin_node("watchdog@7e100000")?;
    w.property_string_list("compatible", vec!["brcm,bcm2711-pm".into(), "brcm,bcm2835-pm-wdt".into()])?;
    w.property_array_u32("reg", &[0x7e10_0000, 0x114])?;
    w.end_node(pm)?;
    // The rest of the BCM2711's devices that KCore's rpi4 list names: the host's own (GPIO,
    // system timer) and the bus masters it refuses (DMA, mailbox, SDHCI, EMMC2, USB).
    for (name, compatible, base, size) in [
        ("gpio@7e200000", "brcm,bcm2711-gpio", 0x7e20_0000u32, 0xb4u32),
        ("timer@7e003000", "brcm,bcm2835-system-timer", 0x7e00_3000, 0x1000),
        ("dma@7e007000", "brcm,bcm2835-dma", 0x7e00_7000, 0xb00),
        ("mailbox@7e00b880", "brcm,bcm2835-mbox", 0x7e00_b880, 0x40),
        ("mmc@7e300000", "brcm,bcm2835-sdhci", 0x7e30_0000, 0x100),
        ("mmc@7e340000", "brcm,bcm2711-emmc2", 0x7e34_0000, 0x100),
        ("usb@7e980000", "brcm,bcm2835-usb", 0x7e98_0000, 0x1_0000),
    ] {
        let node = w.begin_node(name)?;
        w.property_string("compatible", compatible)?;
        w.property_array_u32("reg", &[base, size])?;
        w.end_node(node)?;
    }
    w.end_node(soc)?;

    // PCIe and GENET sit on the SCB bus, 0x7c00_0000 -> 0xfc00_0000.
    let scb = w.begin_node("scb")?;
    w.property_string("compatible", "simple-bus")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 1)?;
    w.property_array_u32("ranges", &[0x0, 0x7c00_0000, 0x0, 0xfc00_0000, 0x0380_0000])?;
    for (name, compatible, base, size) in [
        ("pcie@7d500000", "brcm,bcm2711-pcie", 0x7d50_0000u32, 0x9310u32),
        ("ethernet@7d580000", "brcm,bcm2711-genet-v5", 0x7d58_0000, 0x1_0000),
    ] {
        let node = w.begin_node(name)?;
        w.property_string("compatible", compatible)?;
        w.property_array_u32("reg", &[0, base, size])?;
        w.end_node(node)?;
    }
    w.end_node(scb)?;

    let gic = w.begin_node("interrupt-controller@ff841000")?;
    w.property_string("compatible", "arm,gic-400")?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    #[rustfmt::skip]
    w.property_array_u32("reg", &[
        0, 0xff84_1000, 0x1000,
        0, 0xff84_2000, 0x2000,
        0, 0xff84_4000, 0x2000,
        0, 0xff84_6000, 0x2000,
    ])?;
    w.end_node(gic)?;

    w.end_node(root)?;
    w.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_raspi4b_dtb_parses_back() {
        let blob = super::raspi4b().unwrap();
        let fdt = fdt::Fdt::new(&blob).unwrap();
        let releases: Vec<usize> =
            fdt.cpus().map(|c| c.property("cpu-release-addr").unwrap().as_usize().unwrap()).collect();
        assert_eq!(releases, vec![0xd8, 0xe0, 0xe8, 0xf0]);
        let uart = fdt.find_compatible(&["arm,pl011"]).unwrap();
        assert_eq!(uart.reg().unwrap().next().unwrap().starting_address as usize, 0x7e20_1000);
        let gic = fdt.find_compatible(&["arm,gic-400"]).unwrap();
        assert_eq!(gic.reg().unwrap().count(), 4);
        assert_eq!(fdt.memory().regions().next().unwrap().size, Some(0x8000_0000));
        // Every bus master KCore's rpi4 list names is there for it to refuse.
        for device in corevisor_boards::rpi4::HOST_DEVICES {
            let node = fdt.find_compatible(device.compatible);
            assert!(
                node.is_some()
                    || device.compatible[0] == "brcm,bcm2835-aux-uart"
                    || device.compatible[0] == "brcm,bcm2836-l1-intc",
                "{:?}",
                device.compatible
            );
        }
    }
}

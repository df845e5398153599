//! The DTB that QEMU `raspi4b` runs get, shaped like the BCM2711's (the UART behind `/soc`
//! ranges, spin-table CPUs, a GIC-400), so the Pi board exercises KCore's DTB path as real
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
    w.end_node(soc)?;

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
    }
}

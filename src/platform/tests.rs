use super::*;
use corevisor_boards::{qemu_virt, rpi4};
use vm_fdt::FdtWriter;

/// A DTB shaped like QEMU virt's: 2/2 cells, devices at the root, PSCI CPUs, GICv3.
fn virt_like_dtb(with_memory: bool) -> Vec<u8> {
    virt_dtb(with_memory, false)
}

/// QEMU virt's shape, with `-M virt,iommu=smmuv3` if `with_smmu`: the SMMUv3 node, and the PCI
/// host's `iommu-map` sending every requester id through it.
fn virt_dtb(with_memory: bool, with_smmu: bool) -> Vec<u8> {
    const SMMU_PHANDLE: u32 = 0x8005;
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    let chosen = w.begin_node("chosen").unwrap();
    w.property_string("bootargs", "scenario=boot loglevel=debug").unwrap();
    w.property_u64("linux,initrd-start", 0x4800_0000).unwrap();
    w.property_u64("linux,initrd-end", 0x4810_0000).unwrap();
    w.end_node(chosen).unwrap();
    if with_memory {
        let memory = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, 0x4000_0000]).unwrap();
        w.end_node(memory).unwrap();
    }
    let cpus = w.begin_node("cpus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 0).unwrap();
    for i in 0..4u32 {
        let cpu = w.begin_node(&format!("cpu@{i}")).unwrap();
        w.property_string("device_type", "cpu").unwrap();
        w.property_u32("reg", i).unwrap();
        w.property_string("enable-method", "psci").unwrap();
        w.end_node(cpu).unwrap();
    }
    w.end_node(cpus).unwrap();
    let uart = w.begin_node("pl011@9000000").unwrap();
    w.property_string_list("compatible", vec!["arm,pl011".into(), "arm,primecell".into()]).unwrap();
    w.property_array_u64("reg", &[0x0900_0000, 0x1000]).unwrap();
    w.end_node(uart).unwrap();
    let gic = w.begin_node("intc@8000000").unwrap();
    w.property_string("compatible", "arm,gic-v3").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_null("ranges").unwrap();
    w.property_array_u64("reg", &[0x0800_0000, 0x1_0000, 0x080A_0000, 0xF6_0000]).unwrap();
    let its = w.begin_node("its@8080000").unwrap();
    w.property_string("compatible", "arm,gic-v3-its").unwrap();
    w.property_array_u64("reg", &[0x0808_0000, 0x2_0000]).unwrap();
    w.end_node(its).unwrap();
    w.end_node(gic).unwrap();
    let fw_cfg = w.begin_node("fw-cfg@9020000").unwrap();
    w.property_string("compatible", "qemu,fw-cfg-mmio").unwrap();
    w.property_array_u64("reg", &[0x0902_0000, 0x18]).unwrap();
    w.end_node(fw_cfg).unwrap();
    for i in 0..2u64 {
        let virtio = w.begin_node(&format!("virtio_mmio@{:x}", 0x0a00_0000 + i * 0x200)).unwrap();
        w.property_string("compatible", "virtio,mmio").unwrap();
        w.property_array_u64("reg", &[0x0a00_0000 + i * 0x200, 0x200]).unwrap();
        w.end_node(virtio).unwrap();
    }
    if with_smmu {
        let smmu = w.begin_node("smmuv3@9050000").unwrap();
        w.property_string("compatible", "arm,smmu-v3").unwrap();
        w.property_array_u64("reg", &[0x0905_0000, 0x2_0000]).unwrap();
        w.property_null("dma-coherent").unwrap();
        w.property_u32("#iommu-cells", 1).unwrap();
        w.property_u32("phandle", SMMU_PHANDLE).unwrap();
        w.end_node(smmu).unwrap();
    }
    let pcie = w.begin_node("pcie@10000000").unwrap();
    if with_smmu {
        w.property_array_u32("iommu-map", &[0, SMMU_PHANDLE, 0, 0x1_0000]).unwrap();
    }
    w.property_string("compatible", "pci-host-ecam-generic").unwrap();
    w.property_u32("#address-cells", 3).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_array_u64("reg", &[0x40_1000_0000, 0x1000_0000]).unwrap();
    #[rustfmt::skip]
    w.property_array_u32("ranges", &[
        0x0100_0000, 0, 0, 0, 0x3eff_0000, 0, 0x1_0000,
        0x0200_0000, 0, 0x1000_0000, 0, 0x1000_0000, 0, 0x2eff_0000,
    ]).unwrap();
    w.end_node(pcie).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

/// A DTB shaped like the bcm2711's: 2/1 cells, the UART behind /soc ranges, spin-table CPUs.
fn rpi4_like_dtb() -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    let chosen = w.begin_node("chosen").unwrap();
    w.end_node(chosen).unwrap();
    let memory = w.begin_node("memory@0").unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.property_array_u32("reg", &[0, 0, 0x8000_0000]).unwrap();
    w.end_node(memory).unwrap();
    let cpus = w.begin_node("cpus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 0).unwrap();
    for (i, release) in [0xd8u64, 0xe0, 0xe8, 0xf0].into_iter().enumerate() {
        let cpu = w.begin_node(&format!("cpu@{i}")).unwrap();
        w.property_string("device_type", "cpu").unwrap();
        w.property_u32("reg", i as u32).unwrap();
        w.property_string("enable-method", "spin-table").unwrap();
        w.property_u64("cpu-release-addr", release).unwrap();
        w.end_node(cpu).unwrap();
    }
    w.end_node(cpus).unwrap();
    let soc = w.begin_node("soc").unwrap();
    w.property_string("compatible", "simple-bus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    w.property_array_u32("ranges", &[0x7e00_0000, 0x0, 0xfe00_0000, 0x0180_0000]).unwrap();
    let uart = w.begin_node("serial@7e201000").unwrap();
    w.property_string_list("compatible", vec!["arm,pl011".into(), "arm,primecell".into()]).unwrap();
    w.property_array_u32("reg", &[0x7e20_1000, 0x200]).unwrap();
    w.end_node(uart).unwrap();
    w.end_node(soc).unwrap();
    let gic = w.begin_node("interrupt-controller@ff841000").unwrap();
    w.property_string("compatible", "arm,gic-400").unwrap();
    w.property_array_u32(
        "reg",
        &[0, 0xff84_1000, 0x1000, 0, 0xff84_2000, 0x2000, 0, 0xff84_4000, 0x2000, 0, 0xff84_6000, 0x2000],
    )
    .unwrap();
    w.end_node(gic).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

#[test]
fn virt_dtb_gives_ram_cpus_uart_gic_initrd_and_bootargs() {
    let blob = virt_like_dtb(true);
    let p = Platform::from_dtb(&blob, 0x4000_0000, &qemu_virt::BOARD).unwrap();
    assert_eq!(p.source, Source::Dtb);
    assert_eq!(p.ram, vec![PhysRange::new(0x4000_0000, 0x4000_0000)]);
    assert_eq!(p.cpus.iter().map(|c| c.mpidr).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(p.cpus.iter().all(|c| c.release_addr.is_none()));
    assert_eq!(p.uart_base, 0x0900_0000);
    assert_eq!(p.gic, Gic::V3 { gicd: 0x0800_0000, gicr: 0x080A_0000 });
    assert_eq!(p.initrd, Some(PhysRange::new(0x4800_0000, 0x10_0000)));
    assert_eq!(p.bootargs, "scenario=boot loglevel=debug");
    assert_eq!(p.dtb, Some(PhysRange::new(0x4000_0000, blob.len() as u64)));
    assert!(p.is_ram(0x4000_0000) && !p.is_ram(0x0900_0000));
}

#[test]
fn rpi4_dtb_translates_the_uart_through_soc_ranges() {
    let blob = rpi4_like_dtb();
    let p = Platform::from_dtb(&blob, 0x2eff_0000, &rpi4::BOARD).unwrap();
    assert_eq!(p.uart_base, 0xfe20_1000);
    assert_eq!(p.gic, Gic::V2 { gicd: 0xff84_1000, gicc: 0xff84_2000, gich: 0xff84_4000, gicv: 0xff84_6000 });
    assert_eq!(
        p.cpus.iter().map(|c| c.release_addr).collect::<Vec<_>>(),
        vec![Some(0xd8), Some(0xe0), Some(0xe8), Some(0xf0)]
    );
    assert_eq!(p.ram, vec![PhysRange::new(0, 0x8000_0000)]);
    assert_eq!(p.initrd, None);
}

#[test]
fn a_dtb_without_memory_is_refused() {
    assert_eq!(Platform::from_dtb(&virt_like_dtb(false), 0, &qemu_virt::BOARD), Err(DtbError::NoMemory));
}

#[test]
fn garbage_is_not_a_dtb() {
    assert!(matches!(Platform::from_dtb(&[0u8; 64], 0, &qemu_virt::BOARD), Err(DtbError::Invalid(_))));
    assert_eq!(dtb_total_size(&[0; 8]), None);
    let blob = virt_like_dtb(true);
    assert_eq!(dtb_total_size(blob[..8].try_into().unwrap()), Some(blob.len()));
}

#[test]
fn board_fallback_uses_the_spin_table_on_the_pi() {
    let p = Platform::from_board(&rpi4::BOARD);
    assert_eq!(p.source, Source::BoardFallback);
    assert_eq!(p.cpus.len(), 4);
    assert_eq!(p.cpus[3].release_addr, Some(0xf0));
    assert_eq!(p.uart_base, 0xFE20_1000);
    let v = Platform::from_board(&qemu_virt::BOARD);
    assert!(v.cpus.iter().all(|c| c.release_addr.is_none()));
}

/// The DTB QEMU `raspi4b` hands over after rewriting the one xtask generates (`-M
/// raspi4b,dumpdtb=`): fdt's own `/memory` lookup fails on it.
#[test]
fn qemu_raspi4b_dtb_is_read_in_full() {
    let blob = include_bytes!("testdata/qemu-raspi4b.dtb");
    let p = Platform::from_dtb(blob, 0x800_0000, &rpi4::BOARD).unwrap();
    assert_eq!(p.ram, vec![PhysRange::new(0, 0x3c00_0000)]);
    assert_eq!(p.bootargs, "scenario=boot");
    assert_eq!(p.uart_base, 0xfe20_1000);
    assert_eq!(p.cpus.len(), 4);
}

/// The Pi's reset watchdog comes from the DTB (by compatible, translated through `/soc`), else
/// from the board; virt has none.
#[test]
fn the_pm_watchdog_is_found_by_compatible_else_taken_from_the_board() {
    let dtb_with_pm = |compatible: &str| {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        let memory = w.begin_node("memory@0").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u32("reg", &[0, 0, 0x4000_0000]).unwrap();
        w.end_node(memory).unwrap();
        let soc = w.begin_node("soc").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        w.property_array_u32("ranges", &[0x7e00_0000, 0x0, 0xfe00_0000, 0x0180_0000]).unwrap();
        let pm = w.begin_node("watchdog@7e108000").unwrap();
        w.property_string_list("compatible", vec![compatible.into(), "other".into()]).unwrap();
        w.property_array_u32("reg", &[0x7e10_8000, 0x114]).unwrap();
        w.end_node(pm).unwrap();
        w.end_node(soc).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    };
    for compatible in ["brcm,bcm2835-pm", "brcm,bcm2711-pm", "brcm,bcm2835-pm-wdt"] {
        let p = Platform::from_dtb(&dtb_with_pm(compatible), 0x2eff_0000, &rpi4::BOARD).unwrap();
        assert_eq!(p.pm_watchdog, Some(0xfe10_8000), "{compatible}");
    }
    let p = Platform::from_dtb(&dtb_with_pm("brcm,bcm2835-gpio"), 0x2eff_0000, &rpi4::BOARD).unwrap();
    assert_eq!(p.pm_watchdog, Some(0xFE10_0000));
    assert_eq!(Platform::from_board(&rpi4::BOARD).pm_watchdog, Some(0xFE10_0000));
    assert_eq!(Platform::from_board(&qemu_virt::BOARD).pm_watchdog, None);
    assert_eq!(Platform::from_dtb(&virt_like_dtb(true), 0x4000_0000, &qemu_virt::BOARD).unwrap().pm_watchdog, None);
}

/// GICR_TYPER of four GICv3 redistributors (128 KiB each) from 0x080A_0000, the last one marked.
fn four_redistributors(pa: u64) -> u64 {
    const LAST: u64 = 1 << 4;
    if pa == 0x080A_0000 + 3 * 0x2_0000 + 8 {
        LAST
    } else {
        0
    }
}

fn pages(list: &[(u64, u64)]) -> Vec<PhysRange> {
    list.iter().map(|&(base, size)| PhysRange::new(base, size)).collect()
}

#[test]
fn the_host_gets_the_listed_devices_and_no_dma_by_default() {
    let p = Platform::from_dtb(&virt_like_dtb(true), 0x4000_0000, &qemu_virt::BOARD).unwrap();
    let plan = p.host_mmio(four_redistributors, false);
    // GICD, the four redistributors (not the 123 the region has room for), the UART page.
    assert_eq!(plan.allowed, pages(&[(0x0800_0000, 0x1_0000), (0x080A_0000, 0x8_0000), (0x0900_0000, 0x1000)]));
    assert_eq!(plan.redistributors, pages(&[(0x080A_0000, 0x8_0000)]));
    let refused: Vec<&str> = plan.dma_refused.iter().map(|d| d.name).collect();
    assert_eq!(
        refused,
        [
            "qemu,fw-cfg-mmio",
            "virtio,mmio",
            "virtio,mmio",
            "pci-host-ecam-generic",
            "pci-host-ecam-generic",
            "pci-host-ecam-generic"
        ]
    );
    assert!(plan.dma_given.is_empty());
    // The ITS is in no list: refused like anything unlisted.
    assert!(!plan.allowed.iter().any(|r| r.contains(0x0808_0000)));
}

#[test]
fn dma_capable_devices_are_given_only_by_name_or_with_on() {
    let mut p = Platform::from_dtb(&virt_like_dtb(true), 0x4000_0000, &qemu_virt::BOARD).unwrap();
    p.bootargs = "scenario=boot corevisor.host_dma=virtio,mmio".into();
    let plan = p.host_mmio(four_redistributors, false);
    assert_eq!(plan.dma_given.iter().map(|d| d.range.base).collect::<Vec<_>>(), [0x0a00_0000, 0x0a00_0200]);
    assert!(plan.allowed.contains(&PhysRange::new(0x0a00_0000, 0x1000)));
    assert!(!plan.allowed.iter().any(|r| r.contains(0x0902_0000)), "fw_cfg was not named");
    // `on` gives every one, a PCIe bridge with its memory and I/O windows.
    p.bootargs = "corevisor.host_dma=on".into();
    let plan = p.host_mmio(four_redistributors, false);
    assert!(plan.dma_refused.is_empty());
    for pa in [0x0902_0000, 0x40_1000_0000, 0x3eff_0000, 0x1000_0000, 0x3efe_f000] {
        assert!(plan.allowed.iter().any(|r| r.contains(pa)), "{pa:#x}");
    }
    // Anything else is no opt-in.
    p.bootargs = "corevisor.host_dma=yes".into();
    assert!(p.host_mmio(four_redistributors, false).dma_given.is_empty());
}

#[test]
fn a_page_shared_with_a_refused_device_is_refused() {
    let mut p = Platform::from_board(&rpi4::BOARD);
    // A listed device in the mailbox's page (the Pi's ARM interrupt controller is, at 0xFE00_B200).
    p.devices.push(DeviceWindow {
        range: PhysRange::new(0xFE00_B200, 0x200),
        access: HostAccess::Direct,
        name: "test",
    });
    let plan = p.host_mmio(|_| 0, false);
    assert!(!plan.allowed.iter().any(|r| r.contains(0xFE00_B200)));
    // The Pi's own devices are there, its bus masters are not.
    for pa in [0xFE20_1000, 0xFE20_0000, 0xFE00_3000, 0xFF84_1000, 0xFF84_2000, 0xFF84_3000] {
        assert!(plan.allowed.iter().any(|r| r.contains(pa)), "{pa:#x}");
    }
    for pa in [
        0xFE00_7000,
        0xFE00_B880,
        0xFD50_0000,
        0xFD58_0000,
        0xFE34_0000,
        0xFE30_0000,
        0xFE98_0000,
        0xFE10_0000,
        0xFF84_4000,
    ] {
        assert!(!plan.allowed.iter().any(|r| r.contains(pa)), "{pa:#x}");
    }
    assert!(plan.redistributors.is_empty(), "a GICv2 has none");
}

#[test]
fn without_a_dtb_the_board_fallbacks_are_used() {
    let p = Platform::from_board(&qemu_virt::BOARD);
    let plan = p.host_mmio(four_redistributors, false);
    assert_eq!(
        plan.allowed,
        pages(&[
            (0x0800_0000, 0x1_0000),
            (0x080A_0000, 0x8_0000),
            (0x0900_0000, 0x1000),
            (0x0901_0000, 0x1000),
            (0x0903_0000, 0x1000),
        ])
    );
    assert_eq!(plan.dma_refused.len(), 4);
}

#[test]
fn the_redistributor_walk_stops_at_last_and_at_the_region() {
    let region = PhysRange::new(0x080A_0000, 0xF6_0000);
    assert_eq!(redistributor_extent(region, four_redistributors), PhysRange::new(0x080A_0000, 0x8_0000));
    // GICv4: VLPIS makes each redistributor 256 KiB.
    let v4 = |pa: u64| 1 << 1 | u64::from(pa == 0x080A_0000 + 0x4_0000 + 8) << 4;
    assert_eq!(redistributor_extent(region, v4), PhysRange::new(0x080A_0000, 0x8_0000));
    // No Last bit: never past the region, and never half a redistributor.
    assert_eq!(
        redistributor_extent(PhysRange::new(0x080A_0000, 0x5_0000), |_| 0),
        PhysRange::new(0x080A_0000, 0x4_0000)
    );
}

#[test]
fn the_smmu_and_the_pci_hosts_stream_ids_are_read_from_the_dt() {
    let p = Platform::from_dtb(&virt_dtb(true, true), 0x4000_0000, &qemu_virt::BOARD).unwrap();
    let smmu = p.smmu.expect("the DT has an SMMUv3");
    assert_eq!(smmu.frame, PhysRange::new(0x0905_0000, 0x2_0000));
    let streams = smmu.pci_streams.expect("the PCI host's iommu-map names it");
    assert_eq!(streams, StreamMap { rid_base: 0, sid_base: 0, count: 0x1_0000 });
    assert!(streams.covers(0x10) && streams.covers(0xffff) && !streams.covers(0x1_0000));
    // Without one (QEMU virt without `iommu=smmuv3`, every board fallback): none.
    assert_eq!(Platform::from_dtb(&virt_like_dtb(true), 0x4000_0000, &qemu_virt::BOARD).unwrap().smmu, None);
    assert_eq!(Platform::from_board(&qemu_virt::BOARD).smmu, None);
}

#[test]
fn the_pci_host_is_given_as_contained_dma_only_when_kcore_owns_the_smmu() {
    let p = Platform::from_dtb(&virt_dtb(true, true), 0x4000_0000, &qemu_virt::BOARD).unwrap();
    let contained = p.host_mmio(four_redistributors, true);
    let names: Vec<&str> = contained.dma_contained.iter().map(|d| d.name).collect();
    assert_eq!(names, [PCI_HOST; 3], "ECAM and both memory windows");
    for pa in [0x40_1000_0000, 0x3eff_0000, 0x1000_0000, 0x3efe_f000] {
        assert!(contained.allowed.iter().any(|r| r.contains(pa)), "{pa:#x}");
    }
    assert!(contained.dma_given.is_empty(), "contained is not the uncontained opt-in");
    let refused: Vec<&str> = contained.dma_refused.iter().map(|d| d.name).collect();
    assert_eq!(refused, ["qemu,fw-cfg-mmio", "virtio,mmio", "virtio,mmio"], "no iommu-map: still refused");
    // The SMMU's own frame is never the host's.
    assert!(!contained.allowed.iter().any(|r| r.contains(0x0905_0000) || r.contains(0x0906_0000)));
    // An SMMU KCore does not own (it failed its checks) contains nothing: as without one.
    assert_eq!(p.host_mmio(four_redistributors, false), {
        let without = Platform::from_dtb(&virt_like_dtb(true), 0x4000_0000, &qemu_virt::BOARD).unwrap();
        without.host_mmio(four_redistributors, false)
    });
    // A PCI host whose iommu-map names no SMMU is not contained.
    let mut unmapped = p.clone();
    unmapped.smmu = Some(SmmuDescription { pci_streams: None, ..p.smmu.unwrap() });
    assert!(unmapped.host_mmio(four_redistributors, true).dma_contained.is_empty());
    // Nor is one whose iommu-map leaves some requesters out: they would DMA untranslated.
    let map = p.smmu.unwrap().pci_streams.unwrap();
    for partial in [StreamMap { count: 0xff00, ..map }, StreamMap { rid_base: 0x100, ..map }] {
        let mut p = p.clone();
        p.smmu = Some(SmmuDescription { pci_streams: Some(partial), ..p.smmu.unwrap() });
        assert!(p.host_mmio(four_redistributors, true).dma_contained.is_empty(), "{partial:?}");
    }
}

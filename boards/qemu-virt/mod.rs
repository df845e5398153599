//! QEMU `virt` with `virtualization=on`: the image starts at EL2 on core 0 with the DTB in x0.
use super::{Board, CpuBringUp, Gic, HostDevice, PhysRange};

/// QEMU loads a raw image (not an ELF) at RAM base + 0x8_0000 and passes the DTB in x0.
pub const BOARD: Board = Board {
    name: "qemu-virt",
    kcore_base: 0x4008_0000,
    kcore_size: 0x0200_0000,
    kserv_base: 0x4400_0000,
    kserv_size: 0x0100_0000,
    ram_fallback: &[PhysRange::new(0x4000_0000, 0x4000_0000)],
    ram_window: &[PhysRange::new(0x4000_0000, 0xFF_C000_0000)],
    uart_base: 0x0900_0000,
    gic: Gic::V3 { gicd: 0x0800_0000, gicr: 0x080A_0000 },
    cpu_count_fallback: 1,
    cpu_bring_up: CpuBringUp::Psci,
    firmware_psci: true,
    pm_watchdog: None,
    host_devices: HOST_DEVICES,
    qemu_machine: "virt,virtualization=on",
};

/// The GICv3 redistributor region QEMU gives `virt` (room for 123 cores; KCore trims it to the
/// redistributors that are there).
pub const GICR_REGION: PhysRange = PhysRange::new(0x080A_0000, 0x00F6_0000);
/// fw_cfg: its DMA interface (address register at +0x10) writes wherever it is told.
pub const FW_CFG: PhysRange = PhysRange::new(0x0902_0000, 0x18);
/// The GICv3 ITS: its tables (GITS_BASER<n>, GITS_CBASER) are written by the GIC. Never listed.
pub const GIC_ITS: PhysRange = PhysRange::new(0x0808_0000, 0x2_0000);
/// The 32 virtio-mmio transports.
pub const VIRTIO_MMIO: PhysRange = PhysRange::new(0x0A00_0000, 0x4000);
/// PCIe: ECAM (the high one QEMU uses with `highmem`), then the 32-bit MMIO window.
pub const PCIE_ECAM: PhysRange = PhysRange::new(0x40_1000_0000, 0x1000_0000);
pub const PCIE_MMIO: PhysRange = PhysRange::new(0x1000_0000, 0x2EFF_0000);

/// What the host may have on `virt`. The GICv2 entries have no fallback: without a DTB the
/// board's GIC is the GICv3.
pub const HOST_DEVICES: &[HostDevice] = &[
    HostDevice::direct(&["arm,pl011"], &[PhysRange::new(0x0900_0000, 0x1000)]),
    HostDevice::direct(&["arm,pl031"], &[PhysRange::new(0x0901_0000, 0x1000)]),
    HostDevice::direct(&["arm,pl061"], &[PhysRange::new(0x0903_0000, 0x1000)]),
    HostDevice::direct(&["arm,gic-v3"], &[PhysRange::new(0x0800_0000, 0x1_0000)]).window(0),
    HostDevice::direct(&["arm,gic-v3"], &[GICR_REGION]).window(1).gic_redistributors(),
    HostDevice::direct(&["arm,cortex-a15-gic", "arm,gic-400"], &[]).window(0),
    HostDevice::direct(&["arm,cortex-a15-gic", "arm,gic-400"], &[]).window(1),
    HostDevice::dma(&["qemu,fw-cfg-mmio"], &[FW_CFG]),
    HostDevice::dma(&["virtio,mmio"], &[VIRTIO_MMIO]),
    HostDevice::dma(&["pci-host-ecam-generic"], &[PCIE_ECAM, PCIE_MMIO]).with_ranges(),
];

//! Raspberry Pi 4 Model B (BCM2711), and QEMU `raspi4b`. The firmware (or QEMU) loads the raw
//! `kernel8.img` at 0x8_0000 and starts core 0 there at EL2; cores 1-3 wait in the spin table.
use super::{Board, CpuBringUp, Gic, HostDevice, PhysRange};

pub const BOARD: Board = Board {
    name: "rpi4",
    kcore_base: 0x8_0000,
    kcore_size: 0x0200_0000,
    kserv_base: 0x0400_0000,
    kserv_size: 0x0100_0000,
    // QEMU raspi4b has 2 GiB; the smallest real Pi 4 has 1 GiB. Without a DTB, assume 1 GiB.
    ram_fallback: &[PhysRange::new(0, 0x4000_0000)],
    // Low RAM stops where the peripherals start (0xFC00_0000); 4 GiB and 8 GiB models add RAM above 4 GiB.
    ram_window: &[PhysRange::new(0, 0xFC00_0000), PhysRange::new(0x1_0000_0000, 0x1_0000_0000)],
    uart_base: 0xFE20_1000,
    gic: Gic::V2 { gicd: 0xFF84_1000, gicc: 0xFF84_2000, gich: 0xFF84_4000, gicv: 0xFF84_6000 },
    cpu_count_fallback: 4,
    cpu_bring_up: CpuBringUp::SpinTable { release_addrs: &[0xd8, 0xe0, 0xe8, 0xf0] },
    firmware_psci: false,
    // The BCM2711's PM block (bus address 0x7e10_0000).
    pm_watchdog: Some(0xFE10_0000),
    host_devices: HOST_DEVICES,
    qemu_machine: "raspi4b",
};

/// The BCM2711's bus masters: the DMA controllers (legacy channels and DMA4), the VideoCore
/// mailbox (the property interface hands the VideoCore buffer addresses), PCIe (and the xHCI
/// behind it), GENET, EMMC2 and the SDHCI (ADMA), and the DWC2 USB controller.
pub const DMA: PhysRange = PhysRange::new(0xFE00_7000, 0xF00);
pub const MAILBOX: PhysRange = PhysRange::new(0xFE00_B880, 0x40);
pub const PCIE: PhysRange = PhysRange::new(0xFD50_0000, 0x9310);
pub const GENET: PhysRange = PhysRange::new(0xFD58_0000, 0x1_0000);
pub const EMMC2: PhysRange = PhysRange::new(0xFE34_0000, 0x100);
pub const SDHCI: PhysRange = PhysRange::new(0xFE30_0000, 0x100);
pub const USB: PhysRange = PhysRange::new(0xFE98_0000, 0x1_0000);

/// What the host may have on the Pi. Not listed, so refused: the PM block (its watchdog resets
/// the machine), the GIC's virtual interface frames, everything else.
pub const HOST_DEVICES: &[HostDevice] = &[
    HostDevice::direct(&["arm,pl011"], &[PhysRange::new(0xFE20_1000, 0x200)]),
    HostDevice::direct(&["brcm,bcm2835-aux-uart"], &[PhysRange::new(0xFE21_5040, 0x40)]),
    HostDevice::direct(&["brcm,bcm2711-gpio", "brcm,bcm2835-gpio"], &[PhysRange::new(0xFE20_0000, 0xB4)]),
    HostDevice::direct(&["brcm,bcm2835-system-timer"], &[PhysRange::new(0xFE00_3000, 0x1000)]),
    HostDevice::direct(&["brcm,bcm2836-l1-intc"], &[PhysRange::new(0xFF80_0000, 0x100)]),
    HostDevice::direct(&["arm,gic-400"], &[PhysRange::new(0xFF84_1000, 0x1000)]).window(0),
    HostDevice::direct(&["arm,gic-400"], &[PhysRange::new(0xFF84_2000, 0x2000)]).window(1),
    HostDevice::dma(&["brcm,bcm2835-dma", "brcm,bcm2711-dma"], &[DMA]),
    HostDevice::dma(&["brcm,bcm2835-mbox"], &[MAILBOX]),
    HostDevice::dma(&["brcm,bcm2711-pcie"], &[PCIE]).with_ranges(),
    HostDevice::dma(&["brcm,bcm2711-genet-v5"], &[GENET]),
    HostDevice::dma(&["brcm,bcm2711-emmc2"], &[EMMC2]),
    HostDevice::dma(&["brcm,bcm2835-sdhci"], &[SDHCI]),
    HostDevice::dma(&["brcm,bcm2835-usb"], &[USB]),
];

/// `config.txt` for the SD card's boot partition.
pub const CONFIG_TXT: &str = include_str!("config.txt");

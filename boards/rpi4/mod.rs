//! Raspberry Pi 4 Model B (BCM2711), and QEMU `raspi4b`. The firmware (or QEMU) loads the raw
//! `kernel8.img` at 0x8_0000 and starts core 0 there at EL2; cores 1-3 wait in the spin table.
use super::{Board, CpuBringUp, Gic, PhysRange};

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
    qemu_machine: "raspi4b",
};

/// `config.txt` for the SD card's boot partition.
pub const CONFIG_TXT: &str = include_str!("config.txt");

//! QEMU `virt` with `virtualization=on`: the image starts at EL2 on core 0 with the DTB in x0.
use super::{Board, CpuBringUp, Gic, PhysRange};

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
    qemu_machine: "virt,virtualization=on",
};

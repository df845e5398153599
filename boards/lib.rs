//! Board descriptions, one module per folder. They are plain data: KCore and KServ pick one by
//! cargo feature, their build scripts write the link addresses into the linker scripts, and
//! `xtask` reads the QEMU machine from them. The hardware itself is read from the DTB at run time
//! wherever one is passed; these values are the fallback and the physical address map.
#![no_std]

#[path = "qemu-virt/mod.rs"]
pub mod qemu_virt;
#[path = "rpi4/mod.rs"]
pub mod rpi4;

/// A physical address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub base: u64,
    pub size: u64,
}

impl PhysRange {
    pub const fn new(base: u64, size: u64) -> Self {
        PhysRange { base, size }
    }
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }
    pub const fn contains(&self, pa: u64) -> bool {
        pa >= self.base && pa < self.end()
    }
}

/// The interrupt controller, as far as KCore needs it before reading the DTB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gic {
    /// GICv2 (GIC-400): distributor, CPU interface, virtual interface control, virtual CPU interface.
    V2 { gicd: u64, gicc: u64, gich: u64, gicv: u64 },
    /// GICv3: distributor and redistributors.
    V3 { gicd: u64, gicr: u64 },
}

/// How KCore lets the host use a device kind the board lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAccess {
    /// Mapped for the host as it is: nothing in it makes a device write memory.
    Direct,
    /// GICv3 redistributors: the first 4 KiB page of every 64 KiB frame holds GICR_CTLR,
    /// GICR_PROPBASER and GICR_PENDBASER (GICv4: VPROPBASER and VPENDBASER), which make the GIC
    /// read and write memory. KCore keeps those pages unmapped and performs the host's accesses
    /// itself, refusing the ones that would point the GIC at memory; the rest is mapped.
    GicRedistributors,
    /// A bus master (DMA). With no SMMU to contain it, KCore refuses it to the host unless the
    /// user turns it on by name on KCore's command line (`corevisor.host_dma`).
    Dma,
}

/// A kind of device the host may be given, named as the DT names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// The DT `compatible` strings of the device's node (any one matches).
    pub compatible: &'static [&'static str],
    /// Which of the node's `reg` windows this entry covers; `None`: all of them.
    pub window: Option<usize>,
    /// Also the CPU side of the node's `ranges` (a PCIe host bridge's memory windows).
    pub with_ranges: bool,
    pub access: HostAccess,
    /// The device's register ranges when no DTB is passed (empty: not on the fallback machine).
    pub fallback: &'static [PhysRange],
}

impl HostDevice {
    /// A device the host uses directly, every `reg` window of it.
    pub const fn direct(compatible: &'static [&'static str], fallback: &'static [PhysRange]) -> HostDevice {
        HostDevice { compatible, window: None, with_ranges: false, access: HostAccess::Direct, fallback }
    }

    /// A DMA-capable device, refused unless the user opts in.
    pub const fn dma(compatible: &'static [&'static str], fallback: &'static [PhysRange]) -> HostDevice {
        HostDevice { compatible, window: None, with_ranges: false, access: HostAccess::Dma, fallback }
    }

    /// Register window `index` of the node only.
    pub const fn window(self, index: usize) -> HostDevice {
        HostDevice { window: Some(index), ..self }
    }

    /// The node's `ranges` too.
    pub const fn with_ranges(self) -> HostDevice {
        HostDevice { with_ranges: true, ..self }
    }

    /// Accessed through KCore as [`HostAccess::GicRedistributors`].
    pub const fn gic_redistributors(self) -> HostDevice {
        HostDevice { access: HostAccess::GicRedistributors, ..self }
    }
}

/// How secondary cores are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuBringUp {
    /// PSCI CPU_ON through the SMC conduit (QEMU virt's built-in firmware).
    Psci,
    /// Each secondary core spins on its release address until it holds an entry point.
    SpinTable { release_addrs: &'static [u64] },
}

/// Everything corevisor needs to know about a board before (or without) a DTB.
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// Short name, as used on the command line (`--board`).
    pub name: &'static str,
    /// Where the KCore image is loaded and linked.
    pub kcore_base: u64,
    /// The region KCore reserves for itself from `kcore_base`: image, BSS, stacks, heap.
    pub kcore_size: u64,
    /// Where KServ (the EL1 host) is linked and loaded.
    pub kserv_base: u64,
    /// The largest KServ image KCore accepts.
    pub kserv_size: u64,
    /// RAM to assume when no DTB is passed.
    pub ram_fallback: &'static [PhysRange],
    /// The physical ranges where RAM may exist: mapped Normal write-back in KCore's stage-1.
    /// Everything else is mapped Device.
    pub ram_window: &'static [PhysRange],
    /// PL011 UART base, used when the DTB names none.
    pub uart_base: u64,
    /// The GIC, used when the DTB names none.
    pub gic: Gic,
    /// Number of CPUs when no DTB lists them.
    pub cpu_count_fallback: usize,
    pub cpu_bring_up: CpuBringUp,
    /// Whether firmware implements PSCI SYSTEM_OFF/RESET (forwarded), or KCore must emulate them.
    pub firmware_psci: bool,
    /// The BCM2835-style power-management watchdog (PM_RSTC, PM_RSTS, PM_WDOG), used when the
    /// DTB names none: KCore's reset device, never the host's, since it resets the machine
    /// without KCore's power-down scrub.
    pub pm_watchdog: Option<u64>,
    /// The device kinds the host may have: every other MMIO access by the host is refused
    /// (deny by default). The DTB gives their register ranges, else each entry's fallback.
    pub host_devices: &'static [HostDevice],
    /// QEMU `-M` value that emulates this board.
    pub qemu_machine: &'static str,
}

impl Board {
    /// Whether `pa` may hold RAM (Normal memory) on this board.
    pub fn in_ram_window(&self, pa: u64) -> bool {
        self.ram_window.iter().any(|r| r.contains(pa))
    }
}

/// All boards, for tools that list them.
pub const ALL: &[&Board] = &[&qemu_virt::BOARD, &rpi4::BOARD];

/// The board named `name`.
pub fn by_name(name: &str) -> Option<&'static Board> {
    ALL.iter().copied().find(|b| b.name == name)
}

//! The scenarios KServ can run, and the arithmetic the benchmark needs.

/// A scenario named by `scenario=NAME` in the boot arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The default: greet, ask KCore's version, power off.
    Demo,
    Boot,
    HvcVersion,
    HvcUnknown,
    HostUndef,
    HostReadsKcore,
    HostMapsAllRam,
    HostDeviceAccess,
    Bench,
    VmHello,
    VmTwoGuests,
    VmShare,
    ShareAtomic,
    HostAttacksVm,
    VmBadImage,
    HvcFuzz,
    GuestFuzz,
    VmIrq,
    ResetScrub,
    HostDma,
    SignedBinding,
    GuestSysregs,
    VmLarge,
    VmVgic,
    /// The bundle's Linux VM (`cargo xtask run --guest-kernel`): passes when it powers off.
    Linux,
    /// `cargo xtask bench`: [`Scenario::Linux`] with the PMU read around every VCPU_RUN.
    LinuxBench,
    /// The `linux` scenario's VM, its pages attacked by the host while it boots.
    HostAttacksLinux,
    /// Four test-guest VMs run on four cores at once (KServ on every core).
    SmpVms,
    /// The bundle's Linux VM with vCPU i on core i, kicked across cores.
    LinuxSmp,
    /// `cargo xtask bench`'s contention figure: host stage-2 faults and guest share calls on
    /// one core alone, then on four cores at once.
    BenchContention,
    /// The host races against itself through KCore on four cores (VCPU_RUN, teardown).
    SmpRace,
    /// The host's own DMA through edu, behind the SMMU KCore owns (issue 15).
    DmaHost,
    /// The host's DMA aimed at KCore's and a running VM's memory: blocked by the SMMU.
    DmaAttacks,
    /// The host at the SMMU's registers, KCore's tables and the attach hypercall.
    SmmuTamper,
}

impl Scenario {
    pub const ALL: [Scenario; 34] = [
        Scenario::Demo,
        Scenario::Boot,
        Scenario::HvcVersion,
        Scenario::HvcUnknown,
        Scenario::HostUndef,
        Scenario::HostReadsKcore,
        Scenario::HostMapsAllRam,
        Scenario::HostDeviceAccess,
        Scenario::Bench,
        Scenario::VmHello,
        Scenario::VmTwoGuests,
        Scenario::VmShare,
        Scenario::ShareAtomic,
        Scenario::HostAttacksVm,
        Scenario::VmBadImage,
        Scenario::HvcFuzz,
        Scenario::GuestFuzz,
        Scenario::VmIrq,
        Scenario::ResetScrub,
        Scenario::HostDma,
        Scenario::SignedBinding,
        Scenario::GuestSysregs,
        Scenario::VmLarge,
        Scenario::VmVgic,
        Scenario::Linux,
        Scenario::LinuxBench,
        Scenario::HostAttacksLinux,
        Scenario::SmpVms,
        Scenario::LinuxSmp,
        Scenario::BenchContention,
        Scenario::SmpRace,
        Scenario::DmaHost,
        Scenario::DmaAttacks,
        Scenario::SmmuTamper,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Demo => "demo",
            Scenario::Boot => "boot",
            Scenario::HvcVersion => "hvc-version",
            Scenario::HvcUnknown => "hvc-unknown",
            Scenario::HostUndef => "host-undef",
            Scenario::HostReadsKcore => "host-reads-kcore",
            Scenario::HostMapsAllRam => "host-maps-all-ram",
            Scenario::HostDeviceAccess => "host-device-access",
            Scenario::Bench => "bench",
            Scenario::VmHello => "vm-hello",
            Scenario::VmTwoGuests => "vm-two-guests",
            Scenario::VmShare => "vm-share",
            Scenario::ShareAtomic => "share-atomic",
            Scenario::HostAttacksVm => "host-attacks-vm",
            Scenario::VmBadImage => "vm-bad-image",
            Scenario::HvcFuzz => "hvc-fuzz",
            Scenario::GuestFuzz => "guest-fuzz",
            Scenario::VmIrq => "vm-irq",
            Scenario::ResetScrub => "reset-scrub",
            Scenario::HostDma => "host-dma",
            Scenario::SignedBinding => "signed-binding",
            Scenario::GuestSysregs => "guest-sysregs",
            Scenario::VmLarge => "vm-large",
            Scenario::VmVgic => "vm-vgic",
            Scenario::Linux => "linux",
            Scenario::LinuxBench => "linux-bench",
            Scenario::HostAttacksLinux => "host-attacks-linux",
            Scenario::SmpVms => "smp-vms",
            Scenario::LinuxSmp => "linux-smp",
            Scenario::BenchContention => "bench-contention",
            Scenario::SmpRace => "smp-race",
            Scenario::DmaHost => "dma-host",
            Scenario::DmaAttacks => "dma-attacks",
            Scenario::SmmuTamper => "smmu-tamper",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Addresses in KCore's slot `[base, base + size)` that the host probes: every 64 KiB of the
/// first MiB (code, data, BSS, the EL2 stacks) and then every MiB (heap, page-table pool).
pub fn kcore_probes(base: u64, size: u64) -> impl Iterator<Item = u64> {
    const KIB64: u64 = 64 << 10;
    const MIB: u64 = 1 << 20;
    (0..16).map(move |i| base + i * KIB64).chain((1..size / MIB).map(move |i| base + i * MIB))
}

/// What a DMA attempt of `host-dma` aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// KCore's canary page (`corevisor_abi::KCORE_CANARY_OFFSET` into its slot).
    Canary,
    /// A page the running VM owns.
    VmPage,
}

/// How one route tries to make a device (or the GIC) write memory, and what refusing it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The target's address stored into the device register at `pa` (a DMA address, a queue
    /// or table base): the store must abort, the device is not the host's.
    Store { pa: u64, target: Target },
    /// fw_cfg's DMA interface: a descriptor in host memory (read the signature item into the
    /// target), its address written big-endian to the DMA register at `register`. Must abort.
    FwCfgDma { register: u64, target: Target },
    /// A BCM2835 DMA channel: a control block in host memory copying a page to the target, its
    /// address stored into the channel's CONBLK_AD at `conblk_ad`. Must abort.
    Bcm2835Dma { conblk_ad: u64, target: Target },
    /// The target's address written to this core's redistributor register at `offset`
    /// (GICR_PROPBASER, GICR_PENDBASER): must read back unchanged.
    GicrTableBase { offset: u64, target: Target },
    /// GICR_CTLR.EnableLPIs set: must read back clear.
    GicrEnableLpis,
}

impl Attempt {
    /// What the attempt aims at (the redistributor's enable bit aims at the tables it names).
    pub fn target(self) -> Target {
        match self {
            Attempt::Store { target, .. }
            | Attempt::FwCfgDma { target, .. }
            | Attempt::Bcm2835Dma { target, .. }
            | Attempt::GicrTableBase { target, .. } => target,
            Attempt::GicrEnableLpis => Target::Canary,
        }
    }
}

/// One route by which the host could make something write memory behind the stage-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRoute {
    pub name: &'static str,
    pub attempt: Attempt,
}

const fn route(name: &'static str, attempt: Attempt) -> DmaRoute {
    DmaRoute { name, attempt }
}

mod virt {
    use super::{route, Attempt::*, DmaRoute, Target::*};
    use corevisor_boards::qemu_virt::{FW_CFG, GIC_ITS, PCIE_ECAM, VIRTIO_MMIO};

    pub const COMMON: [DmaRoute; 4] = [
        route("fw_cfg DMA at KCore's canary", FwCfgDma { register: FW_CFG.base + 0x10, target: Canary }),
        route("fw_cfg DMA at the VM's page", FwCfgDma { register: FW_CFG.base + 0x10, target: VmPage }),
        // QueueDescLow of the first transport.
        route("virtio-mmio queue address", Store { pa: VIRTIO_MMIO.base + 0x80, target: Canary }),
        // BAR0 of device 00:00.0, through ECAM.
        route("PCIe ECAM", Store { pa: PCIE_ECAM.base + 0x10, target: Canary }),
    ];
    pub const GICV3: [DmaRoute; 9] = [
        COMMON[0],
        COMMON[1],
        COMMON[2],
        COMMON[3],
        route("ITS GITS_CBASER", Store { pa: GIC_ITS.base + 0x80, target: Canary }),
        route("ITS GITS_BASER0", Store { pa: GIC_ITS.base + 0x100, target: VmPage }),
        route("GICR_PROPBASER", GicrTableBase { offset: 0x70, target: Canary }),
        route("GICR_PENDBASER", GicrTableBase { offset: 0x78, target: VmPage }),
        route("GICR_CTLR.EnableLPIs", GicrEnableLpis),
    ];
}

mod rpi4 {
    use super::{route, Attempt::*, DmaRoute, Target::*};
    use corevisor_boards::rpi4::{DMA, EMMC2, GENET, MAILBOX, PCIE, SDHCI, USB};

    pub const ROUTES: [DmaRoute; 8] = [
        route("DMA controller at KCore's canary", Bcm2835Dma { conblk_ad: DMA.base + 0x4, target: Canary }),
        route("DMA controller at the VM's page", Bcm2835Dma { conblk_ad: DMA.base + 0x4, target: VmPage }),
        // Mailbox 1's write register: a property buffer for the VideoCore.
        route("VideoCore mailbox", Store { pa: MAILBOX.base + 0x20, target: Canary }),
        route("PCIe", Store { pa: PCIE.base + 0x4010, target: Canary }),
        // GENET's receive DMA ring 0 read pointer.
        route("GENET", Store { pa: GENET.base + 0x2000, target: Canary }),
        // SDHCI's ADMA system address.
        route("EMMC2", Store { pa: EMMC2.base + 0x58, target: Canary }),
        // SDHCI's SDMA system address.
        route("SDHCI", Store { pa: SDHCI.base, target: VmPage }),
        // Host channel 0's DMA address.
        route("USB DWC2", Store { pa: USB.base + 0x514, target: Canary }),
    ];
}

/// Every DMA route board `board` has (`gic_v3`: the ITS and the redistributors' LPI tables).
pub fn dma_routes(board: &corevisor_boards::Board, gic_v3: bool) -> &'static [DmaRoute] {
    match (board.name, gic_v3) {
        ("rpi4", _) => &rpi4::ROUTES,
        (_, true) => &virt::GICV3,
        (_, false) => &virt::COMMON,
    }
}

/// Median, minimum and maximum of benchmark samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub median: u64,
    pub min: u64,
    pub max: u64,
}

/// The statistics of `samples` (sorted in place); `None` when there are none.
pub fn stats(samples: &mut [u64]) -> Option<Stats> {
    samples.sort_unstable();
    Some(Stats { median: samples[samples.len().checked_sub(1)? / 2], min: samples[0], max: *samples.last()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(s));
        }
        assert_eq!(Scenario::from_name("nope"), None);
    }

    #[test]
    fn kcore_probes_cover_the_slot_without_leaving_it() {
        let probes: Vec<u64> = kcore_probes(0x4008_0000, 0x0200_0000).collect();
        assert_eq!(probes.len(), 16 + 31);
        assert_eq!(probes[0], 0x4008_0000);
        assert_eq!(probes[15], 0x4008_0000 + 15 * 0x1_0000);
        assert!(probes.iter().all(|&p| (0x4008_0000..0x4208_0000).contains(&p)));
        assert_eq!(*probes.last().unwrap(), 0x4008_0000 + 31 * 0x10_0000);
    }

    #[test]
    fn every_dma_route_aims_at_a_device_kcore_must_refuse() {
        use corevisor_boards::{qemu_virt, rpi4, HostAccess};
        for (board, v3, count) in
            [(&qemu_virt::BOARD, true, 9), (&qemu_virt::BOARD, false, 4), (&rpi4::BOARD, false, 8)]
        {
            let routes = dma_routes(board, v3);
            assert_eq!(routes.len(), count, "{} v3={v3}", board.name);
            assert!(routes.iter().any(|r| matches!(
                r.attempt,
                Attempt::FwCfgDma { target: Target::VmPage, .. } | Attempt::Bcm2835Dma { target: Target::VmPage, .. }
            )));
            let host_page = |pa: u64| {
                board
                    .host_devices
                    .iter()
                    .filter(|d| d.access != HostAccess::Dma)
                    .flat_map(|d| d.fallback)
                    .any(|r| (r.base & !0xfff) <= pa && pa < (r.end() + 0xfff) & !0xfff)
            };
            for r in routes {
                match r.attempt {
                    Attempt::Store { pa, .. }
                    | Attempt::FwCfgDma { register: pa, .. }
                    | Attempt::Bcm2835Dma { conblk_ad: pa, .. } => {
                        assert!(!host_page(pa), "{} at {pa:#x} is a device the host may have", r.name)
                    }
                    Attempt::GicrTableBase { offset, .. } => assert!(offset == 0x70 || offset == 0x78),
                    Attempt::GicrEnableLpis => {}
                }
            }
        }
    }

    #[test]
    fn stats_of_samples() {
        assert_eq!(stats(&mut [5, 1, 9]), Some(Stats { median: 5, min: 1, max: 9 }));
        assert_eq!(stats(&mut [7, 7, 7, 7]), Some(Stats { median: 7, min: 7, max: 7 }));
        assert_eq!(stats(&mut []), None);
    }
}

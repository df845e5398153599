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
}

impl Scenario {
    pub const ALL: [Scenario; 18] = [
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
    fn stats_of_samples() {
        assert_eq!(stats(&mut [5, 1, 9]), Some(Stats { median: 5, min: 1, max: 9 }));
        assert_eq!(stats(&mut [7, 7, 7, 7]), Some(Stats { median: 7, min: 7, max: 7 }));
        assert_eq!(stats(&mut []), None);
    }
}

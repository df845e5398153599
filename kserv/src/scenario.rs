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
    Bench,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Demo,
        Scenario::Boot,
        Scenario::HvcVersion,
        Scenario::HvcUnknown,
        Scenario::HostUndef,
        Scenario::Bench,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Demo => "demo",
            Scenario::Boot => "boot",
            Scenario::HvcVersion => "hvc-version",
            Scenario::HvcUnknown => "hvc-unknown",
            Scenario::HostUndef => "host-undef",
            Scenario::Bench => "bench",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
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
    fn stats_of_samples() {
        assert_eq!(stats(&mut [5, 1, 9]), Some(Stats { median: 5, min: 1, max: 9 }));
        assert_eq!(stats(&mut [7, 7, 7, 7]), Some(Stats { median: 7, min: 7, max: 7 }));
        assert_eq!(stats(&mut []), None);
    }
}

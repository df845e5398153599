//! The corevisor hypercall ABI, shared by KCore (EL2), KServ (the EL1 host) and guests.
//!
//! Every call is an SMCCC 1.1 fast call, SMC64 convention, in the vendor-specific hypervisor
//! service range (`0xC600_0000 | n`), issued with `hvc #0`. Arguments travel in x1..x6; the SMCCC
//! status comes back in x0 and extra results in x1..x3. Keeping the numbers here, in one crate,
//! means the three programs cannot disagree about them.
#![no_std]

/// Owner field of an SMCCC function id: vendor-specific hypervisor service.
pub const SMCCC_OWNER_VENDOR_HYP: u32 = 6;
/// Fast call, SMC64 calling convention.
const FAST_CALL_64: u32 = 0xC000_0000;
/// First function id of corevisor's hypercall range.
pub const HYP_CALL_BASE: u32 = FAST_CALL_64 | (SMCCC_OWNER_VENDOR_HYP << 24);
/// Mask that selects the function number inside the range.
pub const HYP_CALL_NUMBER_MASK: u32 = 0xFFFF;

/// The function id of corevisor hypercall number `n`.
pub const fn hyp_call(n: u16) -> u32 {
    HYP_CALL_BASE | n as u32
}

/// Host hypercalls served by KCore's `host_hvc_dispatcher`.
pub mod host_call {
    use super::hyp_call;
    /// Returns the ABI version in x1 (`major << 16 | minor`).
    pub const VERSION: u32 = hyp_call(0);
    /// Does nothing and returns SUCCESS: the round trip that `cargo xtask bench` measures.
    pub const NULL: u32 = hyp_call(1);
    /// Powers the machine off. x1 is the host's exit status: 0 means the host's run passed.
    pub const SYSTEM_OFF: u32 = hyp_call(2);
    /// The host's own stage-2 fault counts: x1 = faults KCore mapped, x2 = faults it refused
    /// (each refused one was an abort injected into the host).
    pub const HOST_STATS: u32 = hyp_call(3);
}

/// The ABI version that [`host_call::VERSION`] reports.
pub const ABI_VERSION_MAJOR: u16 = 0;
/// See [`ABI_VERSION_MAJOR`].
pub const ABI_VERSION_MINOR: u16 = 1;
/// `major << 16 | minor`, as returned in x1 by VERSION.
pub const ABI_VERSION: u64 = ((ABI_VERSION_MAJOR as u64) << 16) | ABI_VERSION_MINOR as u64;

/// SMCCC status codes, returned in x0 (as a signed 64-bit value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Status {
    Success = 0,
    NotSupported = -1,
    InvalidParameters = -2,
    Denied = -3,
    AlreadyOn = -4,
    OnPending = -5,
    InternalFailure = -6,
    NotPresent = -7,
    Disabled = -8,
    InvalidAddress = -9,
}

impl Status {
    /// The register encoding of this status.
    pub const fn as_reg(self) -> u64 {
        self as i64 as u64
    }

    /// Decodes x0 as a status; `None` for a value that is not a status code.
    pub const fn from_reg(x0: u64) -> Option<Status> {
        Some(match x0 as i64 {
            0 => Status::Success,
            -1 => Status::NotSupported,
            -2 => Status::InvalidParameters,
            -3 => Status::Denied,
            -4 => Status::AlreadyOn,
            -5 => Status::OnPending,
            -6 => Status::InternalFailure,
            -7 => Status::NotPresent,
            -8 => Status::Disabled,
            -9 => Status::InvalidAddress,
            _ => return None,
        })
    }
}

/// The result registers of a hypercall: status in x0, values in x1..x3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypResult {
    pub status: u64,
    pub values: [u64; 3],
}

impl HypResult {
    /// A bare status with no values.
    pub const fn status(status: Status) -> Self {
        HypResult { status: status.as_reg(), values: [0; 3] }
    }

    /// SUCCESS with values in x1..x3.
    pub const fn success(values: [u64; 3]) -> Self {
        HypResult { status: Status::Success.as_reg(), values }
    }
}

/// PSCI function ids (PSCI 1.1, DEN0022) that KCore mediates for the host.
pub mod psci {
    pub const VERSION: u32 = 0x8400_0000;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON_32: u32 = 0x8400_0003;
    pub const CPU_ON_64: u32 = 0xC400_0003;
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const FEATURES: u32 = 0x8400_000A;
    /// PSCI 1.1, as reported by PSCI_VERSION.
    pub const PSCI_VERSION_1_1: u64 = 0x0001_0001;
    /// AFFINITY_INFO results.
    pub const AFFINITY_ON: u64 = 0;
    pub const AFFINITY_OFF: u64 = 1;
}

/// Boot-argument keys that KCore and KServ read from the DTB's `/chosen/bootargs`.
pub mod bootargs {
    /// `loglevel=off|error|warn|info|debug|trace`: KCore's log level.
    pub const LOG_LEVEL: &str = "loglevel";
    /// `scenario=NAME`: the scenario KServ runs.
    pub const SCENARIO: &str = "scenario";

    /// The value of `key=value` in a space-separated argument string.
    pub fn value<'a>(args: &'a str, key: &str) -> Option<&'a str> {
        args.split_ascii_whitespace().find_map(|arg| {
            let (k, v) = arg.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_ids_are_vendor_hyp_fast_smc64() {
        assert_eq!(host_call::VERSION, 0xC600_0000);
        assert_eq!(host_call::SYSTEM_OFF, 0xC600_0002);
        assert_eq!(HYP_CALL_BASE >> 24 & 0x3F, SMCCC_OWNER_VENDOR_HYP);
    }

    #[test]
    fn status_round_trips_through_a_register() {
        for s in [Status::Success, Status::NotSupported, Status::InvalidParameters, Status::InvalidAddress] {
            assert_eq!(Status::from_reg(s.as_reg()), Some(s));
        }
        assert_eq!(Status::NotSupported.as_reg(), u64::MAX);
        assert_eq!(Status::from_reg(7), None);
    }

    #[test]
    fn bootargs_value_finds_exact_keys_only() {
        let args = "console=ttyAMA0 scenario=hvc-version loglevel=debug";
        assert_eq!(bootargs::value(args, "scenario"), Some("hvc-version"));
        assert_eq!(bootargs::value(args, "loglevel"), Some("debug"));
        assert_eq!(bootargs::value(args, "level"), None);
        assert_eq!(bootargs::value("", "scenario"), None);
    }
}

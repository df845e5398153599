//! The host's view of the SMMU (SeKVM layers 22-26, here as hypercalls rather than trapped MMIO):
//! SMMU_ATTACH_STREAM and SMMU_DETACH_STREAM. The host never writes a stream table entry: it
//! names a stream and a principal, and this module decides what entry KCore writes, from what
//! the SMMU covers, what the entry is now and the host's SMMU table. Pure, so host tests check
//! every answer; `trap_handler` writes the entry through `machine::aarch64::smmu`.

use crate::ids::VmId;
use crate::machine::smmu_format::{self, Ste, SteUse};
use crate::memory::HOST_SMMU_VMID;
use core::ops::Range;
use corevisor_abi::Status;

/// An SMMU host call, its arguments as the host passed them (checked here, not at the edge:
/// what fits depends on the SMMU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmmuCall {
    /// SMMU_ATTACH_STREAM: stream x1 to principal x2 (0: the host).
    Attach { stream: u64, principal: u64 },
    /// SMMU_DETACH_STREAM: stream x1.
    Detach { stream: u64 },
}

/// The SMMU as the calls see it (none: the machine has no SMMU that KCore owns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmmuView {
    /// The stream ids the host may name: the PCI host's `iommu-map` streams that the stream
    /// table covers.
    pub streams: Range<u64>,
    /// The root of the host's SMMU table (`HostMemory::enable_host_smmu`).
    pub host_root: u64,
    /// VTCR_EL2 of the CPU's stage-2, whose walk the SMMU repeats on the host's table.
    pub vtcr: u64,
}

/// The entry to write: stream `sid` gets `ste`; if `flush_vmid` names one, that SMMU VMID's TLB
/// entries go too (a detach: nothing the stream's walks cached may outlive it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteWrite {
    pub sid: u32,
    pub ste: Ste,
    pub flush_vmid: Option<u16>,
}

/// Decides `call`: the entry KCore writes, or the status the host gets. `current` reads stream
/// `sid`'s entry as it is.
pub fn decide(call: SmmuCall, smmu: Option<&SmmuView>, current: impl Fn(u32) -> SteUse) -> Result<SteWrite, Status> {
    let smmu = smmu.ok_or(Status::NotSupported)?;
    let stream = match call {
        SmmuCall::Attach { stream, .. } | SmmuCall::Detach { stream } => stream,
    };
    if !smmu.streams.contains(&stream) {
        return Err(Status::InvalidParameters);
    }
    let sid = stream as u32;
    let now = current(sid);
    match call {
        SmmuCall::Attach { principal, .. } => {
            if principal != 0 {
                // Assigning a device to a VM (its own SMMU table) is left for a later round.
                return Err(if VmId::new(principal).is_some() {
                    Status::NotSupported
                } else {
                    Status::InvalidParameters
                });
            }
            if now != SteUse::Abort {
                return Err(Status::Denied);
            }
            let ste = smmu_format::ste_stage2(HOST_SMMU_VMID, smmu.vtcr, smmu.host_root);
            Ok(SteWrite { sid, ste, flush_vmid: None })
        }
        SmmuCall::Detach { .. } => match now {
            SteUse::Stage2 { vmid, .. } => Ok(SteWrite { sid, ste: smmu_format::STE_ABORT, flush_vmid: Some(vmid) }),
            // Not attached: nothing to detach.
            SteUse::Abort | SteUse::Other => Err(Status::Denied),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::controls::VTCR;

    fn view() -> SmmuView {
        SmmuView { streams: 0..0x800, host_root: 0x4190_0000, vtcr: VTCR }
    }

    fn attach(stream: u64, principal: u64) -> SmmuCall {
        SmmuCall::Attach { stream, principal }
    }

    const ABORTING: fn(u32) -> SteUse = |_| SteUse::Abort;

    #[test]
    fn attaching_to_the_host_writes_a_stage2_entry_on_the_hosts_table() {
        let write = decide(attach(0x10, 0), Some(&view()), ABORTING).unwrap();
        assert_eq!(write.sid, 0x10);
        assert_eq!(write.flush_vmid, None);
        assert_eq!(smmu_format::ste_use(&write.ste), SteUse::Stage2 { vmid: HOST_SMMU_VMID, s2ttb: 0x4190_0000 });
        assert_eq!(write.ste, smmu_format::ste_stage2(HOST_SMMU_VMID, VTCR, 0x4190_0000));
    }

    #[test]
    fn without_an_smmu_every_call_is_not_supported() {
        assert_eq!(decide(attach(0x10, 0), None, ABORTING), Err(Status::NotSupported));
        assert_eq!(decide(SmmuCall::Detach { stream: 0x10 }, None, ABORTING), Err(Status::NotSupported));
    }

    #[test]
    fn a_stream_outside_the_map_or_the_table_is_invalid() {
        for stream in [0x800, 0xffff, 0x1_0000, u64::MAX, 1 << 32] {
            assert_eq!(
                decide(attach(stream, 0), Some(&view()), ABORTING),
                Err(Status::InvalidParameters),
                "{stream:#x}"
            );
            assert_eq!(decide(SmmuCall::Detach { stream }, Some(&view()), ABORTING), Err(Status::InvalidParameters));
        }
        let shifted = SmmuView { streams: 0x100..0x200, ..view() };
        assert_eq!(decide(attach(0xff, 0), Some(&shifted), ABORTING), Err(Status::InvalidParameters));
        assert!(decide(attach(0x100, 0), Some(&shifted), ABORTING).is_ok());
    }

    #[test]
    fn a_vm_target_is_not_supported_yet_and_a_bad_one_is_invalid() {
        assert_eq!(decide(attach(0x10, 1), Some(&view()), ABORTING), Err(Status::NotSupported));
        assert_eq!(decide(attach(0x10, 1 << 20), Some(&view()), ABORTING), Err(Status::InvalidParameters));
    }

    #[test]
    fn attaching_twice_is_denied_and_detach_goes_back_to_abort() {
        let attached = |_| SteUse::Stage2 { vmid: HOST_SMMU_VMID, s2ttb: 0x4190_0000 };
        assert_eq!(decide(attach(0x10, 0), Some(&view()), attached), Err(Status::Denied));
        assert_eq!(decide(attach(0x10, 0), Some(&view()), |_| SteUse::Other), Err(Status::Denied));
        let detach = decide(SmmuCall::Detach { stream: 0x10 }, Some(&view()), attached).unwrap();
        assert_eq!(detach, SteWrite { sid: 0x10, ste: smmu_format::STE_ABORT, flush_vmid: Some(HOST_SMMU_VMID) });
        assert_eq!(decide(SmmuCall::Detach { stream: 0x10 }, Some(&view()), ABORTING), Err(Status::Denied));
    }
}

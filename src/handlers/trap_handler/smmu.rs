//! The SMMU at the trap edge: the host's SMMU calls carried out on the SMMU KCore owns, and the
//! event queue drained (and every fault logged) when the host enters KCore.

use super::super::smmu_calls::{self, SmmuCall, SmmuView};
use super::state;
use crate::machine::smmu::{self as driver, Smmu};
use crate::machine::smmu_format::{self, blocked_dma_line};
use crate::machine::CALL_REGS;
use crate::vcpu::controls::VTCR;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use corevisor_abi::{HypResult, Status};

/// The stream ids the host may name (the PCI host's `iommu-map`, cut to the stream table), set
/// at boot with the SMMU.
static STREAMS: spin::Once<core::ops::Range<u64>> = spin::Once::new();

/// Tells the trap handler that KCore owns an SMMU (once, at boot, before the host runs): the
/// stream ids the host may name, and from now on every entry from the host drains its events.
pub fn install(streams: core::ops::Range<u64>) {
    STREAMS.call_once(|| streams);
    super::principal::drain_smmu_events_on_entry();
}

/// SMMU_ATTACH_STREAM / SMMU_DETACH_STREAM: decided by `smmu_calls` under KCore's ownership lock
/// (the host's SMMU table lives there, in `HostMemory`), the entry written under the SMMU's lock; x0 gets the
/// status.
#[inline(never)]
pub fn serve_call(call: SmmuCall, regs: &mut [u64; CALL_REGS]) {
    let status = {
        // The host's SMMU table is part of the ownership state: read, and the entry written,
        // under the ownership lock (the SMMU's own lock ranks above it).
        let mem = state::kcore().mem.lock();
        let smmu = driver::get();
        let view = smmu.zip(STREAMS.get()).zip(mem.host_smmu.as_ref()).map(|((_, streams), table)| SmmuView {
            streams: streams.clone(),
            host_root: table.root(),
            vtcr: VTCR,
        });
        let decision = smmu_calls::decide(call, view.as_ref(), |sid| match smmu {
            Some(smmu) => smmu_format::ste_use(&smmu.ste(sid)),
            None => smmu_format::SteUse::Other,
        });
        match (decision, smmu) {
            (Ok(write), Some(smmu)) => match smmu.set_ste(write.sid, &write.ste, write.flush_vmid) {
                Ok(()) => {
                    match smmu_format::ste_use(&write.ste) {
                        smmu_format::SteUse::Stage2 { vmid, s2ttb } => log::info!(
                            "smmu: stream {:#06x} attached to the host (SMMU VMID {vmid}, table {s2ttb:#x})",
                            write.sid
                        ),
                        _ => log::info!("smmu: stream {:#06x} detached: its DMA aborts", write.sid),
                    }
                    Status::Success
                }
                Err(e) => {
                    log::error!("smmu: writing stream {:#06x}'s entry failed: {e:?}", write.sid);
                    Status::Denied
                }
            },
            (Ok(_), None) => Status::NotSupported,
            (Err(status), _) => status,
        }
    };
    if status != Status::Success {
        log::info!("{call:?} refused: {status:?}");
    }
    let result = HypResult::status(status);
    regs[0] = result.status;
    regs[1..4].copy_from_slice(&result.values);
}

/// What KCore logs when fault records were lost: the devices kept faulting, and stayed blocked,
/// faster than the host entered KCore to have the queue drained.
const QUEUE_OVERFLOWED: &str = "smmu: the event queue overflowed: the SMMU dropped fault records";

/// Takes every record out of the SMMU's event queue and logs it; when the SMMU reports a
/// global error, logs that too (at run time an SMMU error is logged, not fatal).
#[cold]
pub fn drain_events(smmu: &Smmu) {
    smmu.drain_events(
        |n, event| log::warn!("{}", blocked_dma_line(n, event)),
        || log::warn!("{QUEUE_OVERFLOWED} (EVENTQ_PROD.OVFLG)"),
    );
    if smmu.take_event_queue_abort() {
        log::warn!("{QUEUE_OVERFLOWED} (GERROR.EVENTQ_ABT_ERR)");
    }
    let errors = smmu.global_errors();
    static REPORTED: AtomicU64 = AtomicU64::new(0);
    if errors != 0 && REPORTED.swap(u64::from(errors), Relaxed) != u64::from(errors) {
        log::error!("smmu: global error bits {errors:#x} (GERROR ^ GERRORN)");
    }
}

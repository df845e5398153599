//! The host's stage-2 faults: mapped on demand, performed for the host on a page KCore emulates,
//! or refused with an external abort. The fault's registers were read once, at the edge.

use super::super::decode::Stage2Abort;
use super::super::fault_handler::{emulate_gicr_access, handle_host_stage2_fault, GicrDecision, HostRefusal};
use super::super::trap_dispatcher::HOST_STATS;
use super::{inject_el1, state};
use crate::machine::{Aarch64, TrapFrame};
use crate::memory::MemError;
use core::sync::atomic::Ordering::Relaxed;
use log::warn;

/// What became of a host trap (a stage-2 fault is the only one KCore refuses this way).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served: mapped, performed for the host, or whatever else the trap asked.
    Served,
    /// Refused: an external abort was injected and nothing of KCore's changed.
    Refused,
}

pub fn host_stage2_fault(frame: &mut TrapFrame, abort: Stage2Abort) -> Outcome {
    let ipa = abort.ipa.raw();
    let result = handle_host_stage2_fault(&Aarch64, state::kcore(), ipa);
    let result = match result {
        Err(MemError::Emulated) => {
            let gicr = &state::host().emulated_mmio;
            // The memory layer emulates exactly the pages of this window (both come from the same
            // boot-time plan), and the access is aligned: a miss is a KCore bug.
            let outside = "an emulated host page outside the emulated device window";
            let read = |pa, size| gicr.read(pa, size).expect(outside);
            let write = |pa, size, value| assert!(gicr.write(pa, size, value), "{outside}");
            match emulate_gicr_access(frame, abort.esr, ipa, read, write) {
                Ok(GicrDecision::Pass) => return Outcome::Served,
                Ok(GicrDecision::Mask(value)) => {
                    warn!("host write {value:#x} to GICR_CTLR at {ipa:#x}: EnableLPIs kept off (the LPI tables would be written by the GIC)");
                    return Outcome::Served;
                }
                Ok(GicrDecision::Ignore) => {
                    warn!(
                        "host write to GICR_PROPBASER/PENDBASER at {ipa:#x} ignored: it would point the GIC at memory"
                    );
                    return Outcome::Served;
                }
                Err(why) => Err(HostRefusal::from(why)),
            }
        }
        other => other.map_err(HostRefusal::from),
    };
    match result {
        Ok(leaf) => {
            log::trace!("host stage-2 fault at {ipa:#x}: mapped {:#x} at level {}", leaf.input, leaf.level);
            HOST_STATS.mapped.fetch_add(1, Relaxed);
            Outcome::Served
        }
        Err(e) => {
            HOST_STATS.refused.fetch_add(1, Relaxed);
            warn!(
                "host access to {ipa:#x} at {:#x} refused ({e:?}): injecting an external abort into the host",
                frame.elr
            );
            inject_el1::external_abort(frame, abort.instruction, abort.esr, abort.far);
            Outcome::Refused
        }
    }
}

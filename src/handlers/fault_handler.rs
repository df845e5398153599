//! FaultHandler (SeKVM layer 31): the host's stage-2 faults. A fault on memory the host may use
//! is mapped on demand (identity, largest block); a data access to a page KCore emulates (a GICv3
//! redistributor's control page) is filtered here and performed on the host's behalf; any other
//! fault is refused, and the caller injects a synchronous external abort into the host.

use super::esr::{self, ec};
use crate::machine::{Machine, TrapFrame};
use crate::memory::MemError;
use crate::mutation::{planted, Mutation};
use crate::page_table::Leaf;
use crate::vcpu::DataAccess;
use crate::vm::Kcore;

/// Serves the host's stage-2 fault at `ipa` (SeKVM `handle_host_stage2_fault`).
pub fn handle_host_stage2_fault(m: &impl Machine, kcore: &Kcore, ipa: u64) -> Result<Leaf, MemError> {
    kcore.host_stage2_fault(m, ipa)
}

/// Offsets in a GICv3 redistributor frame (Arm IHI 0069, 12.11): GICR_CTLR, whose EnableLPIs
/// (bit 0) starts the GIC reading and writing the LPI tables; GICR_PROPBASER and GICR_PENDBASER,
/// which say where those tables are. In a GICv4 VLPI frame the same offsets hold VPROPBASER and
/// VPENDBASER. Every one of them sits in the first 4 KiB of its 64 KiB frame.
pub const GICR_CTLR: u64 = 0x00;
pub const GICR_WAKER: u64 = 0x14;
pub const GICR_PROPBASER: u64 = 0x70;
pub const GICR_PENDBASER: u64 = 0x78;
const ENABLE_LPIS: u64 = 1;

/// What KCore does with one host access to a redistributor control page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicrDecision {
    /// Performed as the host asked.
    Pass,
    /// A write that would point the GIC at memory: dropped (the host reads the old value back).
    Ignore,
    /// A write performed with this value instead (EnableLPIs forced to 0).
    Mask(u64),
}

/// The filter for a host access of `1 << size_log2` bytes at `offset` in a redistributor frame:
/// reads pass; a write touching any byte of PROPBASER or PENDBASER is ignored; a write touching
/// GICR_CTLR's first byte with EnableLPIs set has it cleared; every other write passes.
pub fn gicr_decision(offset: u64, write: bool, size_log2: u8, value: u64) -> GicrDecision {
    if !write {
        return GicrDecision::Pass;
    }
    let (start, end) = (offset, offset + (1 << size_log2));
    let touches = |register: u64, len: u64| start < register + len && register < end;
    let tables =
        (touches(GICR_PROPBASER, 8) && !planted(Mutation::GicrFilterPassesPropbaser)) || touches(GICR_PENDBASER, 8);
    if tables {
        GicrDecision::Ignore
    } else if touches(GICR_CTLR, 1) && value & ENABLE_LPIS != 0 {
        // The write starts at offset 0, so bit 0 of its value is EnableLPIs.
        GicrDecision::Mask(value & !ENABLE_LPIS)
    } else {
        GicrDecision::Pass
    }
}

/// Why a host access to an emulated page cannot be performed for it (an abort is injected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotEmulated {
    /// Not a data abort with a valid instruction syndrome (a load/store pair, an exclusive, a
    /// write-back form, an instruction fetch, a fault on the host's own table walk).
    NoSyndrome,
    /// Not aligned to its size (KCore would take an alignment fault at EL2).
    Misaligned,
}

/// Performs the host's data access at `ipa`, which lies in a redistributor control page, with
/// the syndrome `esr`, through the device accessors `read`/`write` (address, size): filtered by
/// [`gicr_decision`], the load's value written into the host's register in `frame`, and the
/// host's PC moved past the instruction. Returns what the filter decided.
pub fn emulate_gicr_access(
    frame: &mut TrapFrame,
    esr: u64,
    ipa: u64,
    read: impl FnOnce(u64, u8) -> u64,
    write: impl FnOnce(u64, u8, u64),
) -> Result<GicrDecision, NotEmulated> {
    const S1PTW: u64 = 1 << 7;
    let access = DataAccess::decode(esr)
        .filter(|_| esr::class(esr) == ec::DABT_LOW && esr & S1PTW == 0)
        .ok_or(NotEmulated::NoSyndrome)?;
    if !ipa.is_multiple_of(1 << access.size_log2) {
        return Err(NotEmulated::Misaligned);
    }
    let value = if access.write { access.store_value_in(frame) } else { 0 };
    let decision = gicr_decision(ipa & 0xffff, access.write, access.size_log2, value);
    match decision {
        GicrDecision::Pass if !access.write => access.complete_load(frame, read(ipa, access.size_log2)),
        GicrDecision::Pass => write(ipa, access.size_log2, value),
        GicrDecision::Mask(masked) => write(ipa, access.size_log2, masked),
        GicrDecision::Ignore => {}
    }
    if access.write {
        frame.elr = frame.elr.wrapping_add(4);
    }
    Ok(decision)
}

/// Why a host stage-2 fault was refused, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRefusal {
    Memory(MemError),
    Emulation(NotEmulated),
}

impl From<MemError> for HostRefusal {
    fn from(e: MemError) -> HostRefusal {
        HostRefusal::Memory(e)
    }
}

impl From<NotEmulated> for HostRefusal {
    fn from(e: NotEmulated) -> HostRefusal {
        HostRefusal::Emulation(e)
    }
}

#[cfg(test)]
mod tests;

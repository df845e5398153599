//! FaultHandler (SeKVM layer 31): the host's stage-2 faults. A fault on memory the host may use
//! is mapped on demand (identity, largest block); any other is refused, and the caller injects a
//! synchronous external abort into the host.

use crate::machine::Machine;
use crate::memory::{HostMemory, MemError};
use crate::page_table::Leaf;

/// The faulting IPA of a stage-2 abort: HPFAR_EL2.FIPA (bits 43:4 hold IPA bits 47:12) plus the
/// page offset from FAR_EL2.
pub fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    (hpfar & 0x0000_0FFF_FFFF_FFF0) << 8 | (far & 0xfff)
}

/// Serves the host's stage-2 fault at `ipa` (SeKVM `handle_host_stage2_fault`).
pub fn handle_host_stage2_fault(m: &impl Machine, mem: &mut HostMemory, ipa: u64) -> Result<Leaf, MemError> {
    mem.map_page_host(m, ipa)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipa_comes_from_hpfar_and_the_far_page_offset() {
        assert_eq!(fault_ipa(0x0040_0100, 0xffff_0000_1234_5678), 0x4001_0678);
    }
}

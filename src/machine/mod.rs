//! Layer 0, the machine (SeKVM's AbstractMachine): the trusted hardware primitives that every
//! layer above uses. System registers, barriers, TLB and cache maintenance, raw physical memory,
//! the console UART, firmware calls and semihosting.
//!
//! This is the only module, together with the boot and vector assembly, that may use `unsafe` or
//! inline assembly. Its API is safe: each primitive states the hardware fact that makes it sound.
//! On the host (`cargo test`) only the architecture-independent parts build.

pub mod features;
pub mod guest_regs;
#[cfg(test)]
pub mod model;
pub mod sha256;
pub mod smmu_format;
pub mod spectre;
pub mod sync;
mod trap_frame;

pub use trap_frame::{CallFrame, GuestExit, TrapFrame, TrapKind, CALL_REGS, RESULT_REGS, SERROR_AT_EXIT};

#[cfg(target_os = "none")]
mod aarch64;
#[cfg(target_os = "none")]
pub use aarch64::*;

/// The most cores KCore manages (stacks, per-core state). Must match linker.ld and boot.S.
pub const MAX_CPUS: usize = 8;
/// Page size of every translation regime KCore builds (4 KiB granule).
pub use crate::addr::PAGE_SIZE;

/// The trusted primitives that the page-table and memory layers use, so that the same layer code
/// runs on the CPU ([`Aarch64`]) and, in host tests, on [`model::ModelMachine`].
/// Physical addresses are KCore's virtual addresses (KCore's stage-1 is an identity map).
pub trait Machine {
    /// Loads the 64-bit word at `pa` (8-byte aligned), which the caller owns.
    fn read_u64(&self, pa: u64) -> u64;
    /// Stores a 64-bit word at `pa` (8-byte aligned), which the caller owns.
    fn write_u64(&self, pa: u64, value: u64);
    /// Fills the 4 KiB page at `pa` with zeros (SeKVM `clear_phys_page`).
    fn zero_page(&self, pa: u64);
    /// Cleans and invalidates the data cache over `[pa, pa + len)` to the point of coherency
    /// (`DC CIVAC` on every line, then `DSB SY`): dirty lines go to memory, every line leaves the
    /// caches, so that memory and every later view of the range, cacheable or not, agree (a scrub
    /// that stayed in a cache is no scrub). KCore does this whenever a page changes hands
    /// (docs/cache-coherency.md).
    fn clean_invalidate_to_poc(&self, pa: u64, len: u64);
    /// [`Machine::clean_invalidate_to_poc`] over the 4 KiB page at `pa`.
    fn clean_invalidate_page(&self, pa: u64) {
        self.clean_invalidate_to_poc(pa, PAGE_SIZE)
    }
    /// Removes stage-2 TLB entries for `ipa` under `vmid`, on every core.
    fn flush_stage2_ipa(&self, vmid: u16, ipa: u64);
    /// Removes every stage-2 TLB entry of `vmid`, on every core.
    fn flush_stage2_vmid(&self, vmid: u16);
    /// Invalidates what the SMMU caches of stage-2 translations for `ipa` under SMMU VMID `vmid`,
    /// and waits until the SMMU has done so (CMD_TLBI_S2_IPA, then CMD_SYNC): after this no
    /// device reaches the page through an old entry. Nothing to do on a machine without an SMMU.
    fn smmu_flush_ipa(&self, vmid: u16, ipa: u64);
    /// The same for every translation under SMMU VMID `vmid` (CMD_TLBI_S12_VMALL, CMD_SYNC).
    fn smmu_flush_vmid(&self, vmid: u16);
    /// Removes every EL2 stage-1 TLB entry, on every core.
    fn flush_el2_all(&self);
    /// Makes table writes visible to the table walkers before they are relied on.
    fn publish(&self);
    /// SHA-256's compression function over `blocks`, chained into `state` (FIPS 180-4, 6.2.2):
    /// the CPU's SHA-256 instructions where it has them, [`sha256::compress_portable`] otherwise.
    fn sha256_blocks(&self, state: &mut [u32; 8], blocks: &[[u8; 64]]);
    /// [`Machine::sha256_blocks`] over the `count` 64-byte blocks of memory at `pa` (8-byte
    /// aligned), which the caller owns.
    fn sha256_memory(&self, state: &mut [u32; 8], pa: u64, count: u64) {
        for block_pa in (0..count).map(|i| pa + i * sha256::BLOCK) {
            let mut block = [0u8; 64];
            for (i, word) in block.chunks_exact_mut(8).enumerate() {
                word.copy_from_slice(&self.read_u64(block_pa + 8 * i as u64).to_le_bytes());
            }
            self.sha256_blocks(state, &[block]);
        }
    }
}

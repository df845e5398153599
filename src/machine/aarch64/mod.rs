//! The real machine layer: Armv8-A at EL2.

core::arch::global_asm!(include_str!("boot.S"));
// One block: the world switch reuses the vectors' macros.
core::arch::global_asm!(include_str!("vectors.S"), include_str!("world_switch.S"));
// Raw: the vector register lists in braces are not format arguments.
core::arch::global_asm!(include_str!("sha256.S"), options(raw));

pub mod bcm2835_pm;
pub mod cpu;
pub mod firmware;
pub mod heap;
pub mod layout;
pub mod mitigation;
pub mod mmu;
pub mod phys;
pub mod pl011;
pub mod power;
pub mod regs;
pub mod semihosting;
pub mod sha256_instructions;
pub mod smmu;
pub mod tlb;
pub mod vgic;
pub mod world_switch;

/// The real machine.
pub struct Aarch64;

impl super::Machine for Aarch64 {
    fn read_u64(&self, pa: u64) -> u64 {
        // SAFETY: the `Machine` contract: the layers read only memory they own (KCore's tables,
        // pages the ownership table gives them).
        unsafe { phys::read_u64(pa) }
    }
    fn write_u64(&self, pa: u64, value: u64) {
        // SAFETY: the `Machine` contract: the layers write only memory they own.
        unsafe { phys::write_u64(pa, value) }
    }
    fn zero_page(&self, pa: u64) {
        // SAFETY: the `Machine` contract: the layers scrub only pages they own.
        unsafe { phys::zero(pa, super::PAGE_SIZE) }
    }
    fn clean_invalidate_to_poc(&self, pa: u64, len: u64) {
        phys::clean_invalidate_dcache(pa, len)
    }
    fn flush_stage2_ipa(&self, vmid: u16, ipa: u64) {
        tlb::stage2_ipa(vmid, ipa)
    }
    fn flush_stage2_vmid(&self, vmid: u16) {
        tlb::stage2_vmid(vmid)
    }
    fn flush_el2_all(&self) {
        tlb::el2_all()
    }
    fn smmu_flush_ipa(&self, vmid: u16, ipa: u64) {
        if let Some(smmu) = smmu::get() {
            // A page is changing hands: if the SMMU cannot be shown to have dropped it, a device
            // may still reach it, and the promise is broken. Halt, loudly.
            if let Err(e) = smmu.submit(&[super::smmu_format::cmd_tlbi_s2_ipa(vmid, ipa)]) {
                panic!(
                    "smmu: TLBI_S2_IPA {ipa:#x} of SMMU VMID {vmid} failed ({e:?}): a device may still reach the page"
                );
            }
        }
    }
    fn smmu_flush_vmid(&self, vmid: u16) {
        if let Some(smmu) = smmu::get() {
            if let Err(e) = smmu.submit(&[super::smmu_format::cmd_tlbi_s12_vmall(vmid)]) {
                panic!("smmu: TLBI_S12_VMALL of SMMU VMID {vmid} failed ({e:?}): a device may still reach its pages");
            }
        }
    }
    fn publish(&self) {
        tlb::publish()
    }
    fn sha256_blocks(&self, state: &mut [u32; 8], blocks: &[[u8; 64]]) {
        sha256_instructions::sha256_blocks(state, blocks)
    }
    fn sha256_memory(&self, state: &mut [u32; 8], pa: u64, count: u64) {
        // SAFETY: the `Machine` contract: the layers hash only memory they own, which KCore's
        // identity map maps at its physical address; `[u8; 64]` has alignment 1.
        let blocks = unsafe { core::slice::from_raw_parts(pa as *const [u8; 64], count as usize) };
        sha256_instructions::sha256_blocks(state, blocks)
    }
}

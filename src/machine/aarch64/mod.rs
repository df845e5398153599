//! The real machine layer: Armv8-A at EL2.

core::arch::global_asm!(include_str!("boot.S"));
// One block: the world switch reuses the vectors' macros.
core::arch::global_asm!(include_str!("vectors.S"), include_str!("world_switch.S"));

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
    fn publish(&self) {
        tlb::publish()
    }
}

//! Turning on KCore's own EL2 stage-1 translation (an identity map built by the layers above).

use aarch64_cpu::{asm::barrier, registers::*};
use tock_registers::interfaces::{ReadWriteable, Writeable};

/// MAIR_EL2 index of Device-nGnRE memory.
pub const ATTR_DEVICE: u64 = 0;
/// MAIR_EL2 index of Normal, inner and outer write-back, read/write-allocate memory.
pub const ATTR_NORMAL: u64 = 1;
/// Virtual address size: 39 bits (T0SZ = 25), translation starts at level 1.
pub const VA_BITS: u64 = 39;

/// Turns the EL2 MMU on with `root` (a level-1 table) as TTBR0_EL2. Must run on every core
/// before it takes any lock: exclusives need Normal memory.
///
/// # Safety
/// `root` is a level-1 table, written and cleaned to memory, that maps KCore's image, stacks,
/// heap and page-table pool at their physical addresses (an identity map): KCore goes on
/// running through it.
pub unsafe fn enable_el2(root: u64) {
    MAIR_EL2.set(0x04 << (8 * ATTR_DEVICE) | 0xFF << (8 * ATTR_NORMAL));
    const TCR_RES1: u64 = 1 << 31 | 1 << 23;
    const TCR_PS_40_BITS: u64 = 0b010 << 16;
    const TCR_SH0_INNER: u64 = 0b11 << 12;
    const TCR_ORGN0_WB: u64 = 0b01 << 10;
    const TCR_IRGN0_WB: u64 = 0b01 << 8;
    TCR_EL2.set(TCR_RES1 | TCR_PS_40_BITS | TCR_SH0_INNER | TCR_ORGN0_WB | TCR_IRGN0_WB | (64 - VA_BITS));
    TTBR0_EL2.set(root);
    barrier::dsb(barrier::ISH);
    barrier::isb(barrier::SY);
    // SAFETY: invalidating EL2's TLB entries and the I-cache has no memory effects.
    unsafe { core::arch::asm!("tlbi alle2", "dsb ish", "ic iallu", "dsb ish", "isb", options(nostack)) };
    SCTLR_EL2.modify(SCTLR_EL2::M::Enable + SCTLR_EL2::C::Cacheable + SCTLR_EL2::I::Cacheable + SCTLR_EL2::SA::Enable);
    barrier::isb(barrier::SY);
}

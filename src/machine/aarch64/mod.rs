//! The real machine layer: Armv8-A at EL2.

core::arch::global_asm!(include_str!("boot.S"));
core::arch::global_asm!(include_str!("vectors.S"));

pub mod cpu;
pub mod firmware;
pub mod heap;
pub mod layout;
pub mod mmu;
pub mod phys;
pub mod pl011;
pub mod regs;
pub mod semihosting;

//! KServ's hardware half: boot and vectors, its EL1 MMU, the console, hypercalls and the PMU.

core::arch::global_asm!(include_str!("../boot.S"));

pub mod console;
pub mod cpu;
pub mod exceptions;
pub mod gic;
pub mod heap;
pub mod hvc;
pub mod mmu;
pub mod pmu;
pub mod sync;

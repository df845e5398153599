//! Layer 0, the machine (SeKVM's AbstractMachine): the trusted hardware primitives that every
//! layer above uses. System registers, barriers, TLB and cache maintenance, raw physical memory,
//! the console UART, firmware calls and semihosting.
//!
//! This is the only module, together with the boot and vector assembly, that may use `unsafe` or
//! inline assembly. Its API is safe: each primitive states the hardware fact that makes it sound.
//! On the host (`cargo test`) only the architecture-independent parts build.

pub mod sync;
mod trap_frame;

pub use trap_frame::{TrapFrame, TrapKind};

#[cfg(target_os = "none")]
mod aarch64;
#[cfg(target_os = "none")]
pub use aarch64::*;

/// The most cores KCore manages (stacks, per-core state). Must match linker.ld and boot.S.
pub const MAX_CPUS: usize = 8;
/// Page size of every translation regime KCore builds (4 KiB granule).
pub const PAGE_SIZE: u64 = 4096;

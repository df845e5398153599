//! KCore: corevisor's trusted EL2 core.
//!
//! The modules mirror SeKVM's KCore layer stack; each module uses only the modules above it in
//! this table (`tests/source_rules.rs` checks every one):
//!
//! | module | SeKVM layers |
//! |---|---|
//! | [`ids`], [`addr`] | the numbers hypercalls carry, as types: VM and vCPU ids, addresses, page numbers |
//! | [`mutation`], `board` | planted bugs for the companion tests; the board this image is built for |
//! | [`machine`] | AbstractMachine: registers, barriers, TLB/cache, raw memory, UART, firmware |
//! | [`platform`], [`cpus`], `console` | what the DTB or the board says the machine is; which core runs what; the logger |
//! | [`page_table`] | PTAlloc, PTWalk, NPTWalk, NPTOps: stage-2 and EL2 page tables |
//! | [`memory`] | MemRegions, PageIndex, PageManager, MemManager, MemoryOps: page ownership |
//! | [`boot`] | VMPower, BootCore, BootAux, BootOps: VM registration and image verification |
//! | [`vcpu`] | VCPUOpsAux, VCPUOps, CtxtSwitch: vCPU contexts, exits completed, the world switch |
//! | [`vm`] | KCore's VM table: the operation behind each VM hypercall |
//! | [`handlers`] | the trap edge's decode, TrapDispatcher, FaultHandler, TrapHandler glue |
//! | `init` | the boot sequence: builds the state and the capabilities the layers start from |
//!
//! Everything but the machine layer's hardware half and the boot glue builds and is tested on the
//! host.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod addr;
pub mod board;
pub mod boot;
pub mod cpus;
pub mod handlers;
pub mod ids;
pub mod machine;
pub mod memory;
pub mod mutation;
#[cfg(test)]
mod noninterference;
pub mod page_table;
pub mod platform;
pub mod vcpu;
pub mod vm;

#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod init;

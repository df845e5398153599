//! KServ: corevisor's untrusted host, an EL1 program that KCore loads and enters after its own
//! setup. It has its own link script, vectors and console, and talks to KCore only through
//! hypercalls and PSCI. It runs the scenario named in the boot arguments
//! (`scenario=NAME`), most of which create VMs from the boot bundle with its VM manager
//! (`vmm`), and ends the run with SYSTEM_OFF carrying a pass or fail status.
#![cfg_attr(target_os = "none", no_std, no_main)]

extern crate alloc;

// On the host these only build for their unit tests.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod dtb;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod exit_meter;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod linux;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod pci;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod scenario;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod vm_plan;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod dma;
#[cfg(target_os = "none")]
mod race;
#[cfg(target_os = "none")]
mod run;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod vm_scenarios;
#[cfg(target_os = "none")]
mod vmm;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("kserv is an EL1 program that KCore embeds: build and run it with `cargo xtask run`");
}

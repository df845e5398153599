//! KServ: corevisor's untrusted host, an EL1 program that KCore loads and enters after its own
//! setup. It has its own link script, vectors and console, and talks to KCore only through
//! hypercalls and PSCI. For now it runs the scenario named in the boot arguments
//! (`scenario=NAME`) and ends the run with SYSTEM_OFF carrying a pass or fail status; the VM
//! manager comes with the VM layers.
#![cfg_attr(target_os = "none", no_std, no_main)]

// On the host these only build for their unit tests.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod dtb;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod scenario;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod run;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("kserv is an EL1 program that KCore embeds: build and run it with `cargo xtask run`");
}

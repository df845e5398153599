//! corevisor's test guest: a bare-metal AArch64 EL1 program that every test VM runs. It reads its
//! role from the test device's CONFIG register (`corevisor_abi::guest_role`) and prints what it
//! does on the emulated PL011; the host's scenarios check those lines.
//!
//! It runs with the MMU off, so every data access is to Device memory: its target,
//! `aarch64-unknown-none-softfloat`, never emits unaligned accesses (`+strict-align` is a default
//! feature there), and it uses no atomics or exclusive accesses, only volatile loads and stores.
#![cfg_attr(target_os = "none", no_std, no_main)]

// On the host only its unit tests use it.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod text;

#[cfg(target_os = "none")]
mod guest;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("test-guest is a bare-metal guest image: `cargo xtask guest-bundle` builds and signs it");
}

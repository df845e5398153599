//! The KCore EL2 image. Everything lives in the `kcore` library (boot assembly, vectors, layers);
//! this binary only links it, with linker.ld placing it at the board's load address.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
use kcore as _;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("corevisor is an EL2 image for aarch64: build and run it with `cargo xtask run`");
}

//! Test guests: building `tests/guests` into a raw image, signing it with the test key, and
//! writing the boot bundle (`corevisor_abi::bundle`) that KServ turns into VMs.

use crate::artifacts::{self, TARGET};
use corevisor_abi::bundle::{self, VmEntry};
use corevisor_abi::guest_dev;
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha512};
use std::path::{Path, PathBuf};

/// The guest runs with the MMU off, where every data access is to Device memory: no unaligned
/// accesses. `aarch64-unknown-none-softfloat` has `+strict-align` among its default features
/// already (an unaligned `read_unaligned` compiles to byte loads), so the guest build needs no
/// flag; an empty CARGO_ENCODED_RUSTFLAGS keeps a caller's RUSTFLAGS out of it.
const GUEST_RUSTFLAGS: &str = "";
/// The key files, relative to the workspace root.
const SEED_FILE: &str = "keys/test-image-key.seed";
#[cfg(test)]
const PUB_FILE: &str = "keys/test-image-key.pub";

/// One VM of a bundle: every VM runs the test guest, in the given role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestVm {
    pub name: &'static str,
    pub role: u32,
    pub vcpus: u32,
}

/// Builds the test guest and returns its raw image (`target/xtask/guests/test-guest.bin`).
/// Built once per xtask run: every scenario's bundle holds the same image.
pub fn build_guest() -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_guest_now).clone()
}

fn build_guest_now() -> Result<PathBuf, String> {
    let dir = artifacts::root().join("target/xtask/guests");
    let dir_arg = dir.to_str().ok_or("non-UTF-8 target directory")?;
    let args = ["build", "-p", "corevisor-test-guest", "--release", "--target", TARGET, "--target-dir", dir_arg];
    // CARGO_ENCODED_RUSTFLAGS wins over any RUSTFLAGS the caller has set.
    artifacts::cargo(&args, &[("CARGO_ENCODED_RUSTFLAGS", Path::new(GUEST_RUSTFLAGS))])?;
    let bin = dir.join("test-guest.bin");
    artifacts::to_raw(&dir.join(TARGET).join("release/test-guest"), &bin)?;
    Ok(bin)
}

/// The message an image's signature covers: `IMAGE_DOMAIN ‖ SHA-512(image)`.
pub fn image_message(image: &[u8]) -> Vec<u8> {
    let mut message = bundle::IMAGE_DOMAIN.to_vec();
    message.extend_from_slice(&Sha512::digest(image));
    message
}

/// The Ed25519 signature of `image` with the key of `seed`.
pub fn sign(image: &[u8], seed: &[u8; 32]) -> [u8; 64] {
    SigningKey::from_bytes(seed).sign(&image_message(image)).to_bytes()
}

/// 32 bytes from 64 hex digits (surrounding whitespace ignored).
fn hex32(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return Err(format!("expected 64 hex digits, found {:?}", text));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| format!("bad hex: {e}"))?;
    }
    Ok(out)
}

fn read_hex32(relative: &str) -> Result<[u8; 32], String> {
    let path = artifacts::root().join(relative);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    hex32(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The test signing key's seed (`keys/test-image-key.seed`). Tests only: the seed is public.
pub fn test_key_seed() -> Result<[u8; 32], String> {
    read_hex32(SEED_FILE)
}

/// Builds the guest, signs it with the test key and writes a bundle of `vms` to `out`.
pub fn write_bundle(vms: &[GuestVm], out: &Path) -> Result<(), String> {
    let bin = build_guest()?;
    let image = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let bytes = bundle_bytes(vms, &image, &test_key_seed()?)?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(out, bytes).map_err(|e| format!("{}: {e}", out.display()))
}

/// The bundle's bytes: header, one entry per VM, then one signed copy of `image` (every entry
/// names it) at the first page boundary after the entries; the whole padded to whole pages.
fn bundle_bytes(vms: &[GuestVm], image: &[u8], seed: &[u8; 32]) -> Result<Vec<u8>, String> {
    if vms.is_empty() || vms.len() > bundle::MAX_VMS {
        return Err(format!("a bundle holds 1 to {} VMs, not {}", bundle::MAX_VMS, vms.len()));
    }
    if image.is_empty() {
        return Err("the guest image is empty".into());
    }
    let align = bundle::IMAGE_ALIGN as usize;
    let image_offset = (bundle::HEADER_LEN + vms.len() * bundle::ENTRY_LEN).next_multiple_of(align);
    let mut out = Vec::with_capacity(image_offset + image.len() + bundle::SIGNATURE_LEN + align);
    out.extend_from_slice(&bundle::header(vms.len() as u32));
    for vm in vms {
        if vm.name.is_empty() || vm.name.len() > bundle::NAME_LEN {
            return Err(format!("VM name {:?}: 1 to {} bytes", vm.name, bundle::NAME_LEN));
        }
        let entry = VmEntry {
            name: VmEntry::name_field(vm.name),
            vcpus: vm.vcpus,
            role: vm.role,
            ram_base: guest_dev::RAM_BASE,
            ram_size: guest_dev::RAM_SIZE,
            image_offset: image_offset as u64,
            image_size: image.len() as u64,
        };
        if entry.image_pages() * bundle::IMAGE_ALIGN > entry.ram_size {
            return Err(format!("the guest image ({} bytes) does not fit in its RAM", image.len()));
        }
        out.extend_from_slice(&entry.to_bytes());
    }
    out.resize(image_offset, 0);
    out.extend_from_slice(image);
    out.extend_from_slice(&sign(image, seed));
    out.resize(out.len().next_multiple_of(align), 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corevisor_abi::bundle::Bundle;
    use ed25519_dalek::{Signature, VerifyingKey};

    fn test_key() -> VerifyingKey {
        VerifyingKey::from_bytes(&read_hex32(PUB_FILE).unwrap()).unwrap()
    }

    #[test]
    fn the_seed_and_public_key_files_match() {
        let seed = test_key_seed().unwrap();
        assert_eq!(SigningKey::from_bytes(&seed).verifying_key(), test_key());
    }

    #[test]
    fn signatures_verify_and_a_flipped_byte_fails() {
        let mut image: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let signature = Signature::from_bytes(&sign(&image, &test_key_seed().unwrap()));
        assert!(test_key().verify_strict(&image_message(&image), &signature).is_ok());
        image[1234] ^= 1;
        assert!(test_key().verify_strict(&image_message(&image), &signature).is_err());
    }

    #[test]
    fn a_bundle_parses_and_shares_one_signed_image() {
        let image: Vec<u8> = (0..5000u32).map(|i| (i * 13 + 1) as u8).collect();
        let seed = test_key_seed().unwrap();
        let vms = [
            GuestVm { name: "alpha", role: corevisor_abi::guest_role::DEMO, vcpus: 1 },
            GuestVm { name: "beta", role: corevisor_abi::guest_role::EVIL, vcpus: 2 },
        ];
        let bytes = bundle_bytes(&vms, &image, &seed).unwrap();
        assert_eq!(bytes.len() % 4096, 0);
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.len(), 2);
        let entries: Vec<VmEntry> = bundle.vms().collect();
        let mut expected = image.clone();
        expected.extend_from_slice(&sign(&image, &seed));
        for (entry, vm) in entries.iter().zip(&vms) {
            assert_eq!((entry.name(), entry.role, entry.vcpus), (vm.name, vm.role, vm.vcpus));
            assert_eq!((entry.ram_base, entry.ram_size), (guest_dev::RAM_BASE, guest_dev::RAM_SIZE));
            assert_eq!(entry.image_offset, 4096);
            assert_eq!(bundle.signed_image(entry), &expected[..]);
        }
    }

    #[test]
    fn bad_bundles_are_refused() {
        let seed = [7u8; 32];
        let vm = GuestVm { name: "alpha", role: 0, vcpus: 1 };
        assert!(bundle_bytes(&[], b"x", &seed).is_err());
        assert!(bundle_bytes(&[vm; bundle::MAX_VMS + 1], b"x", &seed).is_err());
        assert!(bundle_bytes(&[vm], b"", &seed).is_err());
        assert!(bundle_bytes(&[GuestVm { name: "a-name-longer-than-16", ..vm }], b"x", &seed).is_err());
        assert!(hex32("12").is_err() && hex32(&"zz".repeat(32)).is_err());
    }
}

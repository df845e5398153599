//! Test guests: building `tests/guests` into a raw image, signing it with the test key, and
//! writing the boot bundle (`corevisor_abi::bundle`) that KServ turns into VMs.

use crate::artifacts::{self, TARGET};
use corevisor_abi::bundle::{self, ImageEntry, ImageRecord, VmEntry};
use corevisor_abi::{guest_dev, guest_role};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
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

/// One image of a VM as the signer sees it: where it is loaded, and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Placed<'a> {
    pub gpa: u64,
    pub bytes: &'a [u8],
}

/// Each image of a VM with RAM `[ram_base, ram_base + ram_size)`, followed by its signature
/// over the VM's whole layout (`bundle::image_message`, the format KCore checks).
pub fn sign_layout(ram_base: u64, ram_size: u64, images: &[Placed], seed: &[u8; 32]) -> Result<Vec<Vec<u8>>, String> {
    let records: Vec<ImageRecord> = images
        .iter()
        .map(|i| ImageRecord { gpa: i.gpa, size: i.bytes.len() as u64, sha256: Sha256::digest(i.bytes).into() })
        .collect();
    let key = SigningKey::from_bytes(seed);
    images
        .iter()
        .enumerate()
        .map(|(index, image)| {
            let message = bundle::image_message(ram_base, ram_size, &records, index).ok_or(format!(
                "a VM has 1 to {} images, not {}",
                bundle::MAX_IMAGES,
                images.len()
            ))?;
            Ok([image.bytes, &key.sign(message.as_bytes()).to_bytes()[..]].concat())
        })
        .collect()
}

/// The data image of a VM in the BINDING role (its image 1): a line of text naming the VM.
pub fn data_image(vm: &GuestVm) -> Option<Vec<u8>> {
    (vm.role == guest_role::BINDING).then(|| format!("signed data for {}\0", vm.name).into_bytes())
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
    write_bundle_padded(vms, out, 0)
}

/// [`write_bundle`], with the guest image padded with zeros to at least `image_len` bytes (the
/// bench's image-verification figure hashes a few MiB).
pub fn write_bundle_padded(vms: &[GuestVm], out: &Path, image_len: usize) -> Result<(), String> {
    let bin = build_guest()?;
    let mut image = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    image.resize(image.len().max(image_len), 0);
    let bytes = bundle_bytes(vms, &image, &test_key_seed()?)?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(out, bytes).map_err(|e| format!("{}: {e}", out.display()))
}

/// The bundle's bytes: header, one entry per VM, then each VM's images, each signed for that VM's
/// layout (the test guest at the start of its RAM, and for a BINDING VM its data image at
/// `guest_dev::DATA_IMAGE`), each at a page boundary; the whole padded to whole pages.
fn bundle_bytes(vms: &[GuestVm], image: &[u8], seed: &[u8; 32]) -> Result<Vec<u8>, String> {
    if vms.is_empty() || vms.len() > bundle::MAX_VMS {
        return Err(format!("a bundle holds 1 to {} VMs, not {}", bundle::MAX_VMS, vms.len()));
    }
    if image.is_empty() {
        return Err("the guest image is empty".into());
    }
    let align = bundle::IMAGE_ALIGN as usize;
    let mut out = Vec::new();
    out.extend_from_slice(&bundle::header(vms.len() as u32));
    let mut images = Vec::new();
    let mut offset = (bundle::HEADER_LEN + vms.len() * bundle::ENTRY_LEN).next_multiple_of(align);
    for vm in vms {
        if vm.name.is_empty() || vm.name.len() > bundle::NAME_LEN {
            return Err(format!("VM name {:?}: 1 to {} bytes", vm.name, bundle::NAME_LEN));
        }
        let data = data_image(vm);
        let mut placed = vec![Placed { gpa: guest_dev::RAM_BASE, bytes: image }];
        placed.extend(data.as_deref().map(|bytes| Placed { gpa: guest_dev::DATA_IMAGE, bytes }));
        let ram_size = corevisor_abi::guest_role::ram_size(vm.role);
        let signed = sign_layout(guest_dev::RAM_BASE, ram_size, &placed, seed)?;
        let mut entry = VmEntry {
            name: VmEntry::name_field(vm.name),
            vcpus: vm.vcpus,
            role: vm.role,
            ram_base: guest_dev::RAM_BASE,
            ram_size,
            image_count: placed.len() as u32,
            images: [ImageEntry::default(); bundle::MAX_IMAGES],
            kind: bundle::kind::TEST_GUEST,
            cmdline_offset: 0,
            cmdline_len: 0,
        };
        for ((slot, place), bytes) in entry.images.iter_mut().zip(&placed).zip(signed) {
            *slot = ImageEntry { offset: offset as u64, size: place.bytes.len() as u64, gpa: place.gpa };
            if slot.gpa + slot.pages() * bundle::IMAGE_ALIGN > entry.ram_base + entry.ram_size {
                return Err(format!("the image ({} bytes) does not fit in its RAM", place.bytes.len()));
            }
            offset += bytes.len().next_multiple_of(align);
            images.push(bytes);
        }
        out.extend_from_slice(&entry.to_bytes());
    }
    for bytes in images {
        out.resize(out.len().next_multiple_of(align), 0);
        out.extend_from_slice(&bytes);
    }
    out.resize(out.len().next_multiple_of(align), 0);
    Ok(out)
}

/// A Linux VM for the bundle (`run --guest-kernel`): its kernel `Image`, initrd, vCPUs, RAM and
/// command line.
pub struct LinuxVm<'a> {
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub vcpus: u32,
    pub ram_base: u64,
    pub ram_size: u64,
    pub cmdline: &'a str,
}

/// Writes the one-VM bundle of Linux VM `vm` ([`linux_bundle_bytes`], the test key) to `out`.
pub fn write_linux_bundle(vm: &LinuxVm, out: &Path) -> Result<(), String> {
    let bundle = linux_bundle_bytes(vm, &test_key_seed()?)?;
    std::fs::create_dir_all(out.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(out, bundle).map_err(|e| format!("{}: {e}", out.display()))
}

/// A one-VM bundle holding Linux VM `vm`, named `linux`: the kernel and initrd signed with
/// `seed` for the layout of `bundle::linux_layout` (kernel at the start of RAM, initrd past the
/// kernel's `image_size`), then the command line.
pub fn linux_bundle_bytes(vm: &LinuxVm, seed: &[u8; 32]) -> Result<Vec<u8>, String> {
    let image_size = crate::linux::image_header(vm.kernel).map_err(|e| format!("the kernel is {e}"))?.image_size;
    let layout =
        bundle::linux_layout(vm.ram_base, vm.ram_size, vm.kernel.len() as u64, image_size, vm.initrd.len() as u64)
            .ok_or(format!(
                "a {} MiB kernel (image_size {} MiB) and a {} MiB initrd do not fit in {} MiB of guest RAM",
                vm.kernel.len() >> 20,
                image_size >> 20,
                vm.initrd.len() >> 20,
                vm.ram_size >> 20
            ))?;
    if vm.cmdline.len() > bundle::MAX_CMDLINE || !vm.cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("the command line must be printable ASCII of at most {} bytes", bundle::MAX_CMDLINE));
    }
    let mut placed = vec![Placed { gpa: layout.kernel, bytes: vm.kernel }];
    if !vm.initrd.is_empty() {
        placed.push(Placed { gpa: layout.initrd, bytes: vm.initrd });
    }
    let signed = sign_layout(vm.ram_base, vm.ram_size, &placed, seed)?;
    let align = bundle::IMAGE_ALIGN as usize;
    let mut offset = (bundle::HEADER_LEN + bundle::ENTRY_LEN).next_multiple_of(align);
    let mut entry = VmEntry {
        name: VmEntry::name_field("linux"),
        vcpus: vm.vcpus,
        role: 0,
        ram_base: vm.ram_base,
        ram_size: vm.ram_size,
        image_count: placed.len() as u32,
        images: [ImageEntry::default(); bundle::MAX_IMAGES],
        kind: bundle::kind::LINUX,
        cmdline_offset: 0,
        cmdline_len: vm.cmdline.len() as u32,
    };
    for ((slot, place), bytes) in entry.images.iter_mut().zip(&placed).zip(&signed) {
        *slot = ImageEntry { offset: offset as u64, size: place.bytes.len() as u64, gpa: place.gpa };
        offset += bytes.len().next_multiple_of(align);
    }
    entry.cmdline_offset = offset as u64;
    let mut out = bundle::header(1).to_vec();
    out.extend_from_slice(&entry.to_bytes());
    for bytes in signed {
        out.resize(out.len().next_multiple_of(align), 0);
        out.extend_from_slice(&bytes);
    }
    out.resize(out.len().next_multiple_of(align), 0);
    out.extend_from_slice(vm.cmdline.as_bytes());
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

    /// Whether image `index` of `layout`, as signed, verifies over the ABI's message.
    fn verifies(signed: &[u8], ram: (u64, u64), layout: &[(u64, &[u8])], index: usize) -> bool {
        let records: Vec<ImageRecord> = layout
            .iter()
            .map(|&(gpa, bytes)| ImageRecord { gpa, size: bytes.len() as u64, sha256: Sha256::digest(bytes).into() })
            .collect();
        let (image, signature) = signed.split_at(signed.len() - 64);
        let message = bundle::image_message(ram.0, ram.1, &records, index).unwrap();
        image == layout[index].1
            && test_key()
                .verify_strict(message.as_bytes(), &Signature::from_bytes(signature.try_into().unwrap()))
                .is_ok()
    }

    #[test]
    fn signatures_cover_the_layout_and_a_flipped_byte_fails() {
        let image: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let data = b"some data".to_vec();
        let ram = (0x8000_0000, 16 << 20);
        let layout = [(ram.0, &image[..]), (ram.0 + 0x80_0000, &data[..])];
        let placed: Vec<Placed> = layout.iter().map(|&(gpa, bytes)| Placed { gpa, bytes }).collect();
        let signed = sign_layout(ram.0, ram.1, &placed, &test_key_seed().unwrap()).unwrap();
        assert!(verifies(&signed[0], ram, &layout, 0) && verifies(&signed[1], ram, &layout, 1));
        assert!(!verifies(&signed[0], (ram.0, 32 << 20), &layout, 0), "another RAM window");
        assert!(!verifies(&signed[1], ram, &[layout[1], layout[0]], 0), "swapped");
        assert!(!verifies(&signed[0], ram, &[layout[0], (ram.0 + 0x90_0000, &data[..])], 0), "moved");
        let mut flipped = image.clone();
        flipped[1234] ^= 1;
        let mut tampered = signed[0].clone();
        tampered[1234] ^= 1;
        assert!(!verifies(&tampered, ram, &[(ram.0, &flipped[..]), layout[1]], 0));
    }

    #[test]
    fn a_bundle_parses_and_signs_each_vm_for_its_layout() {
        let image: Vec<u8> = (0..5000u32).map(|i| (i * 13 + 1) as u8).collect();
        let seed = test_key_seed().unwrap();
        let vms = [
            GuestVm { name: "alpha", role: guest_role::DEMO, vcpus: 1 },
            GuestVm { name: "bound", role: guest_role::BINDING, vcpus: 2 },
        ];
        let bytes = bundle_bytes(&vms, &image, &seed).unwrap();
        assert_eq!(bytes.len() % 4096, 0);
        let bundle = Bundle::parse(&bytes).unwrap();
        assert_eq!(bundle.len(), 2);
        let entries: Vec<VmEntry> = bundle.vms().collect();
        let ram = (guest_dev::RAM_BASE, guest_dev::RAM_SIZE);
        for (entry, vm) in entries.iter().zip(&vms) {
            assert_eq!((entry.name(), entry.role, entry.vcpus), (vm.name, vm.role, vm.vcpus));
            assert_eq!((entry.ram_base, entry.ram_size), ram);
            assert_eq!(entry.images[0].gpa, guest_dev::RAM_BASE);
        }
        assert_eq!(entries[0].images().len(), 1);
        assert!(verifies(bundle.signed_image(&entries[0].images[0]), ram, &[(ram.0, &image[..])], 0));
        let data = data_image(&vms[1]).unwrap();
        assert_eq!(&data[..], b"signed data for bound\0");
        let layout = [(ram.0, &image[..]), (guest_dev::DATA_IMAGE, &data[..])];
        assert_eq!(entries[1].images().len(), 2);
        assert_eq!(entries[1].images[1].gpa, guest_dev::DATA_IMAGE);
        for index in 0..2 {
            assert!(verifies(bundle.signed_image(&entries[1].images[index]), ram, &layout, index));
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

    /// A fake arm64 Image: the header's magic and image_size, then filler.
    fn fake_kernel(len: usize, image_size: u64) -> Vec<u8> {
        let mut kernel: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
        kernel[56..60].copy_from_slice(b"ARM\x64");
        kernel[16..24].copy_from_slice(&image_size.to_le_bytes());
        kernel
    }

    #[test]
    fn a_linux_bundle_parses_and_its_images_verify_for_its_layout() {
        let (kernel, initrd) = (fake_kernel(300_000, 3 << 20), vec![7u8; 5000]);
        let vm = LinuxVm {
            kernel: &kernel,
            initrd: &initrd,
            vcpus: 2,
            ram_base: 0x4000_0000,
            ram_size: 128 << 20,
            cmdline: "console=ttyAMA0 earlycon",
        };
        let bytes = linux_bundle_bytes(&vm, &test_key_seed().unwrap()).unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        let entry = bundle.vms().next().unwrap();
        assert!(entry.is_linux());
        assert_eq!((entry.vcpus, entry.name(), bundle.cmdline(&entry)), (2, "linux", "console=ttyAMA0 earlycon"));
        let layout = bundle::linux_layout(0x4000_0000, 128 << 20, kernel.len() as u64, 3 << 20, 5000).unwrap();
        assert_eq!(entry.images().iter().map(|i| i.gpa).collect::<Vec<_>>(), [layout.kernel, layout.initrd]);
        let placed = [(layout.kernel, &kernel[..]), (layout.initrd, &initrd[..])];
        for (index, image) in entry.images().iter().enumerate() {
            assert!(verifies(bundle.signed_image(image), (0x4000_0000, 128 << 20), &placed, index));
        }
    }

    #[test]
    fn a_linux_bundle_refuses_what_cannot_boot() {
        let kernel = fake_kernel(300_000, 3 << 20);
        let seed = test_key_seed().unwrap();
        let vm =
            LinuxVm { kernel: &kernel, initrd: &[], vcpus: 2, ram_base: 0x4000_0000, ram_size: 128 << 20, cmdline: "" };
        assert!(linux_bundle_bytes(&vm, &seed).is_ok());
        let not_an_image = vec![0u8; 4096];
        assert!(linux_bundle_bytes(&LinuxVm { kernel: &not_an_image, ..vm }, &seed)
            .unwrap_err()
            .contains("not an arm64 Image"));
        assert!(linux_bundle_bytes(&LinuxVm { ram_size: 2 << 20, ..vm }, &seed).unwrap_err().contains("do not fit"));
        assert!(linux_bundle_bytes(&LinuxVm { cmdline: "a\nb", ..vm }, &seed).unwrap_err().contains("printable"));
    }
}

//! The boot bundle: the manifest and signed guest images that KServ turns into VMs. QEMU passes it
//! with `-initrd`, the Pi's firmware with `initramfs`; either way its address is in the DTB's
//! `/chosen`. `cargo xtask` writes it.
//!
//! Layout (all integers little-endian):
//! - header, 16 bytes: magic `CVBUNDLE`, version (u32), VM count (u32);
//! - one 64-byte [`VmEntry`] per VM;
//! - the images, each at a 4 KiB-aligned offset and followed directly by its 64-byte Ed25519
//!   signature (see KCore's boot layer for what the signature covers).
//!
//! Parsing checks every field against the bundle's length, so a truncated or hostile bundle is
//! an error, never an out-of-bounds read.

pub const MAGIC: &[u8; 8] = b"CVBUNDLE";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;
pub const ENTRY_LEN: usize = 64;
pub const NAME_LEN: usize = 16;
pub const SIGNATURE_LEN: usize = 64;
/// What an image's Ed25519 signature covers before the image's SHA-512 digest: binds the
/// signature to this use. KCore checks it, xtask signs with it.
pub const IMAGE_DOMAIN: &[u8] = b"corevisor-image-v1";
/// Images start on page boundaries, so their pages can be handed to KCore as they are.
pub const IMAGE_ALIGN: u64 = 4096;
/// The most VMs one bundle describes.
pub const MAX_VMS: usize = 8;

/// One VM of the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmEntry {
    /// The VM's name, printed before each line of its console.
    pub name: [u8; NAME_LEN],
    pub vcpus: u32,
    /// The value the guest reads from the test device's CONFIG register.
    pub role: u32,
    /// Guest-physical RAM window.
    pub ram_base: u64,
    pub ram_size: u64,
    /// Offset of the image in the bundle, and its length without the signature. The image is
    /// loaded at `ram_base` and vCPU 0 starts at its first byte.
    pub image_offset: u64,
    pub image_size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    TooShort,
    BadMagic,
    BadVersion(u32),
    TooManyVms(u32),
    /// Entry `n` names an image outside the bundle, unaligned, or empty.
    BadImage(usize),
    /// Entry `n` has no vCPUs, or an unaligned or empty RAM window, or one its image overflows.
    BadVm(usize),
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32_at(bytes, at)) | u64::from(u32_at(bytes, at + 4)) << 32
}

impl VmEntry {
    /// The name as text (up to the first NUL; `?` if it is not UTF-8).
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }

    /// The entry's 64 bytes.
    pub fn to_bytes(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[..NAME_LEN].copy_from_slice(&self.name);
        out[16..20].copy_from_slice(&self.vcpus.to_le_bytes());
        out[20..24].copy_from_slice(&self.role.to_le_bytes());
        out[24..32].copy_from_slice(&self.ram_base.to_le_bytes());
        out[32..40].copy_from_slice(&self.ram_size.to_le_bytes());
        out[40..48].copy_from_slice(&self.image_offset.to_le_bytes());
        out[48..56].copy_from_slice(&self.image_size.to_le_bytes());
        out
    }

    fn from_bytes(b: &[u8]) -> VmEntry {
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&b[..NAME_LEN]);
        VmEntry {
            name,
            vcpus: u32_at(b, 16),
            role: u32_at(b, 20),
            ram_base: u64_at(b, 24),
            ram_size: u64_at(b, 32),
            image_offset: u64_at(b, 40),
            image_size: u64_at(b, 48),
        }
    }

    /// A name field from text (cut to 16 bytes).
    pub fn name_field(name: &str) -> [u8; NAME_LEN] {
        let mut field = [0u8; NAME_LEN];
        let len = name.len().min(NAME_LEN);
        field[..len].copy_from_slice(&name.as_bytes()[..len]);
        field
    }

    /// Pages the image and its signature fill.
    pub fn image_pages(&self) -> u64 {
        (self.image_size + SIGNATURE_LEN as u64).div_ceil(IMAGE_ALIGN)
    }
}

/// The header's 16 bytes for `count` VMs.
pub fn header(count: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&count.to_le_bytes());
    out
}

/// A parsed bundle: its bytes and checked entries.
#[derive(Clone, Copy, Debug)]
pub struct Bundle<'a> {
    pub bytes: &'a [u8],
    count: usize,
}

impl<'a> Bundle<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Bundle<'a>, BundleError> {
        if bytes.len() < HEADER_LEN {
            return Err(BundleError::TooShort);
        }
        if &bytes[..8] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        match u32_at(bytes, 8) {
            VERSION => {}
            other => return Err(BundleError::BadVersion(other)),
        }
        let count = u32_at(bytes, 12);
        if count as usize > MAX_VMS {
            return Err(BundleError::TooManyVms(count));
        }
        let count = count as usize;
        if bytes.len() < HEADER_LEN + count * ENTRY_LEN {
            return Err(BundleError::TooShort);
        }
        let bundle = Bundle { bytes, count };
        for (i, vm) in bundle.vms().enumerate() {
            let image_end = vm.image_offset.checked_add(vm.image_size).and_then(|e| e.checked_add(64));
            if vm.image_size == 0
                || !vm.image_offset.is_multiple_of(IMAGE_ALIGN)
                || image_end.is_none_or(|end| end > bytes.len() as u64)
            {
                return Err(BundleError::BadImage(i));
            }
            let ram_end = vm.ram_base.checked_add(vm.ram_size);
            if vm.vcpus == 0
                || vm.ram_size == 0
                || !vm.ram_base.is_multiple_of(IMAGE_ALIGN)
                || !vm.ram_size.is_multiple_of(IMAGE_ALIGN)
                || ram_end.is_none()
                || vm.image_pages() * IMAGE_ALIGN > vm.ram_size
            {
                return Err(BundleError::BadVm(i));
            }
        }
        Ok(bundle)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn vms(&self) -> impl Iterator<Item = VmEntry> + 'a {
        let bytes = self.bytes;
        (0..self.count).map(move |i| VmEntry::from_bytes(&bytes[HEADER_LEN + i * ENTRY_LEN..]))
    }

    /// The image of `vm` followed by its signature.
    pub fn signed_image(&self, vm: &VmEntry) -> &'a [u8] {
        &self.bytes[vm.image_offset as usize..(vm.image_offset + vm.image_size) as usize + SIGNATURE_LEN]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, size: u64) -> VmEntry {
        VmEntry {
            name: VmEntry::name_field("alpha"),
            vcpus: 1,
            role: 7,
            ram_base: 0x4000_0000,
            ram_size: 16 << 20,
            image_offset: offset,
            image_size: size,
        }
    }

    fn bundle_of(entries: &[VmEntry], total: usize) -> [u8; 3 * 4096] {
        let mut out = [0u8; 3 * 4096];
        out[..HEADER_LEN].copy_from_slice(&header(entries.len() as u32));
        for (i, e) in entries.iter().enumerate() {
            out[HEADER_LEN + i * ENTRY_LEN..][..ENTRY_LEN].copy_from_slice(&e.to_bytes());
        }
        assert!(total <= out.len());
        out
    }

    #[test]
    fn a_well_formed_bundle_round_trips() {
        let bytes = bundle_of(&[entry(4096, 100), entry(8192, 4032)], 3 * 4096);
        let bundle = Bundle::parse(&bytes).unwrap();
        let vms: [VmEntry; 2] = [bundle.vms().next().unwrap(), bundle.vms().nth(1).unwrap()];
        assert_eq!(vms[0], entry(4096, 100));
        assert_eq!(vms[0].name(), "alpha");
        assert_eq!(bundle.signed_image(&vms[1]).len(), 4096);
        assert_eq!(vms[1].image_pages(), 1);
        assert_eq!(entry(0, 4033).image_pages(), 2);
    }

    #[test]
    fn malformed_bundles_are_refused() {
        let good = bundle_of(&[entry(4096, 100)], 2 * 4096);
        assert_eq!(Bundle::parse(&good[..10]).err(), Some(BundleError::TooShort));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(Bundle::parse(&bad).err(), Some(BundleError::BadMagic));
        let mut bad = good;
        bad[12] = 200;
        assert_eq!(Bundle::parse(&bad).err(), Some(BundleError::TooManyVms(200)));
        for e in [entry(4095, 100), entry(4096, 0), entry(2 * 4096, 4096), entry(u64::MAX - 4095, 100)] {
            assert_eq!(Bundle::parse(&bundle_of(&[e], 0)).err(), Some(BundleError::BadImage(0)), "{e:?}");
        }
        let no_vcpus = VmEntry { vcpus: 0, ..entry(4096, 100) };
        let tiny_ram = VmEntry { ram_size: 0x1000, ..entry(4096, 4096) };
        for e in [no_vcpus, tiny_ram] {
            assert_eq!(Bundle::parse(&bundle_of(&[e], 0)).err(), Some(BundleError::BadVm(0)), "{e:?}");
        }
    }
}

//! The boot bundle: the manifest and signed guest images that KServ turns into VMs. QEMU passes it
//! with `-initrd`, the Pi's firmware with `initramfs`; either way its address is in the DTB's
//! `/chosen`. `cargo xtask` writes it.
//!
//! Layout (all integers little-endian):
//! - header, 16 bytes: magic `CVBUNDLE`, version (u32), VM count (u32);
//! - one [`ENTRY_LEN`]-byte [`VmEntry`] per VM: name, vCPUs, role, RAM window, up to
//!   [`MAX_IMAGES`] images, each with its offset, size and load address, then its kind (a test
//!   guest or a Linux VM, [`kind`]) and, for Linux, where its kernel command line is;
//! - the images, each at a 4 KiB-aligned offset and followed directly by its 64-byte Ed25519
//!   signature over [`image_message`].
//!
//! Parsing checks every field against the bundle's length, so a truncated or hostile bundle is
//! an error, never an out-of-bounds read.

pub const MAGIC: &[u8; 8] = b"CVBUNDLE";
/// Version 2: several images per VM, each with its load address (version 1 had one image per VM,
/// loaded at the start of its RAM).
/// Version 3 adds the VM's kind and a Linux VM's command line.
pub const VERSION: u32 = 3;
pub const HEADER_LEN: usize = 16;
/// The most images one VM has (KCore's SET_BOOT_INFO takes at most this many; SeKVM: 5).
pub const MAX_IMAGES: usize = 5;
/// One [`ImageEntry`]: offset, size, load address.
pub const IMAGE_ENTRY_LEN: usize = 24;
/// Where the kind and command-line fields start in an entry (after the images).
const KIND_AT: usize = 48 + MAX_IMAGES * IMAGE_ENTRY_LEN;
pub const ENTRY_LEN: usize = KIND_AT + 16;
/// The longest kernel command line a Linux VM may have (Linux's arm64 COMMAND_LINE_SIZE is 2048).
pub const MAX_CMDLINE: usize = 1024;

/// Where a Linux VM's pieces go in its RAM, the one plan xtask signs the images for and KServ
/// writes the device tree by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxLayout {
    /// The kernel `Image`: the start of RAM (which must be 2 MiB aligned; text_offset is 0).
    pub kernel: u64,
    /// The initrd: the first 2 MiB boundary past the kernel's `image_size` (and past its signed
    /// pages).
    pub initrd: u64,
    /// The device tree (BOOT_DATA): the first page past the initrd's signed pages.
    pub dt: u64,
}

/// Room the device tree may take: KCore's BOOT_DATA cap, 16 pages.
pub const LINUX_DT_MAX: u64 = 16 * IMAGE_ALIGN;
const LINUX_ALIGN: u64 = 2 << 20;

/// Where the kernel `Image`'s `image_size` (its memory footprint, bss included) is in its header.
pub const IMAGE_SIZE_AT: usize = 0x10;

/// A Linux VM's layout for RAM `[ram_base, ram_base + ram_size)`, a kernel of `kernel_len` bytes
/// whose header says `image_size`, and an initrd of `initrd_len` bytes (0: none); `None` if RAM
/// is not 2 MiB aligned or the pieces (with the device tree's room) do not fit.
pub fn linux_layout(
    ram_base: u64,
    ram_size: u64,
    kernel_len: u64,
    image_size: u64,
    initrd_len: u64,
) -> Option<LinuxLayout> {
    let signed = |len: u64| len.checked_add(SIGNATURE_LEN as u64)?.checked_next_multiple_of(IMAGE_ALIGN);
    if !ram_base.is_multiple_of(LINUX_ALIGN) || kernel_len == 0 {
        return None;
    }
    let kernel_end = ram_base.checked_add(image_size.max(signed(kernel_len)?))?;
    let initrd = kernel_end.checked_next_multiple_of(LINUX_ALIGN)?;
    let dt = initrd.checked_add(if initrd_len == 0 { 0 } else { signed(initrd_len)? })?;
    (dt.checked_add(LINUX_DT_MAX)? <= ram_base.checked_add(ram_size)?).then_some(LinuxLayout {
        kernel: ram_base,
        initrd,
        dt,
    })
}

/// What a VM of the bundle is.
pub mod kind {
    /// One of corevisor's test guests (`tests/guests`): the role is its CONFIG value.
    pub const TEST_GUEST: u32 = 0;
    /// A Linux VM: image 0 is the kernel `Image` (vCPU 0 starts at its first byte with x0 = the
    /// device tree KServ writes), image 1, if there is one, its initrd; the entry names its
    /// command line. KServ writes its device tree and gives it as BOOT_DATA.
    pub const LINUX: u32 = 1;
}
pub const NAME_LEN: usize = 16;
pub const SIGNATURE_LEN: usize = 64;
/// Domain separation: the first bytes of every message an image signature covers (see
/// [`image_message`]). `-v2` named the VM's whole layout; `-v3` since each image's hash is
/// SHA-256 (KCore computes it with the ARMv8 SHA-256 instructions where the CPU has them); a
/// `-v2` signature (SHA-512 hashes) or a `-v1` one (over one image's hash alone) never verifies.
pub const IMAGE_DOMAIN: &[u8] = b"corevisor-image-v3";
/// Images start on page boundaries, so their pages can be handed to KCore as they are.
pub const IMAGE_ALIGN: u64 = 4096;
/// The most VMs one bundle describes.
pub const MAX_VMS: usize = 8;

/// What a signature says about one image of the VM: where it is loaded, how long it is (the
/// signature not counted), and its SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    pub gpa: u64,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// The longest message: the domain, the RAM window, the count and index, and every image.
pub const MESSAGE_MAX: usize = IMAGE_DOMAIN.len() + 8 + 8 + 4 + 4 + MAX_IMAGES * (8 + 8 + 32);

/// The bytes an image's Ed25519 signature covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageMessage {
    bytes: [u8; MESSAGE_MAX],
    len: usize,
}

impl ImageMessage {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The message image `index` of a VM is signed over, the one format KCore checks and xtask signs:
///
/// `IMAGE_DOMAIN ‖ ram_base ‖ ram_size ‖ count ‖ index ‖ (gpa ‖ size ‖ SHA-256) for each image`
///
/// (u64 and u32 little-endian; `count` and `index` u32; the images in index order). Every
/// image's signature covers the whole layout: the VM's guest-physical RAM window, how many images
/// there are, which one this is (index 0 is the entry: vCPU 0 starts at its first byte), and for
/// every image its load address, size and hash. So an image cannot be loaded at another address,
/// made the entry, or combined with images signed for another layout (another VM's, or an older
/// build's): each of those changes the message of every image.
///
/// What it cannot stop: a host that boots an entire older layout, every image of it correctly
/// signed, gets that older VM. Refusing rollback needs state that survives the host (a version
/// counter in secure storage), which corevisor does not have.
///
/// `None` if there are no images or more than [`MAX_IMAGES`], or `index` is not one of them.
pub fn image_message(ram_base: u64, ram_size: u64, images: &[ImageRecord], index: usize) -> Option<ImageMessage> {
    if images.is_empty() || images.len() > MAX_IMAGES || index >= images.len() {
        return None;
    }
    let mut message = ImageMessage { bytes: [0; MESSAGE_MAX], len: 0 };
    let mut put = |bytes: &[u8]| {
        message.bytes[message.len..message.len + bytes.len()].copy_from_slice(bytes);
        message.len += bytes.len();
    };
    put(IMAGE_DOMAIN);
    put(&ram_base.to_le_bytes());
    put(&ram_size.to_le_bytes());
    put(&(images.len() as u32).to_le_bytes());
    put(&(index as u32).to_le_bytes());
    for image in images {
        put(&image.gpa.to_le_bytes());
        put(&image.size.to_le_bytes());
        put(&image.sha256);
    }
    Some(message)
}

/// One image of a VM in the bundle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageEntry {
    /// Offset of the image in the bundle; its signature follows it directly.
    pub offset: u64,
    /// Its length without the signature.
    pub size: u64,
    /// The guest-physical address it is signed to be loaded at.
    pub gpa: u64,
}

impl ImageEntry {
    /// Pages the image and its signature fill.
    pub fn pages(&self) -> u64 {
        self.size.saturating_add(SIGNATURE_LEN as u64).div_ceil(IMAGE_ALIGN)
    }
}

/// One VM of the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmEntry {
    /// The VM's name, printed before each line of its console.
    pub name: [u8; NAME_LEN],
    pub vcpus: u32,
    /// The value the guest reads from the test device's CONFIG register.
    pub role: u32,
    /// Guest-physical RAM window (part of what the images' signatures cover).
    pub ram_base: u64,
    pub ram_size: u64,
    /// How many of `images` are used. Image 0 is the entry: vCPU 0 starts at its first byte.
    pub image_count: u32,
    pub images: [ImageEntry; MAX_IMAGES],
    /// [`kind::TEST_GUEST`] or [`kind::LINUX`].
    pub kind: u32,
    /// A Linux VM's kernel command line: its offset and length in the bundle (ASCII, at most
    /// [`MAX_CMDLINE`] bytes; empty for a test guest).
    pub cmdline_offset: u64,
    pub cmdline_len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    TooShort,
    BadMagic,
    BadVersion(u32),
    TooManyVms(u32),
    /// Entry `n` names an image outside the bundle, unaligned, or empty, or has no image or
    /// too many.
    BadImage(usize),
    /// Entry `n` has no vCPUs, or an unaligned or empty RAM window, or an image outside it.
    BadVm(usize),
    /// Entry `n` has an unknown kind, or a Linux VM without its kernel or with more than a
    /// kernel and an initrd.
    BadKind(usize),
    /// Entry `n`'s command line lies outside the bundle, is too long or not printable ASCII, or
    /// is given to a test guest.
    BadCmdline(usize),
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

    /// The entry's bytes.
    pub fn to_bytes(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[..NAME_LEN].copy_from_slice(&self.name);
        out[16..20].copy_from_slice(&self.vcpus.to_le_bytes());
        out[20..24].copy_from_slice(&self.role.to_le_bytes());
        out[24..32].copy_from_slice(&self.ram_base.to_le_bytes());
        out[32..40].copy_from_slice(&self.ram_size.to_le_bytes());
        out[40..44].copy_from_slice(&self.image_count.to_le_bytes());
        for (i, image) in self.images.iter().enumerate() {
            let at = 48 + i * IMAGE_ENTRY_LEN;
            out[at..at + 8].copy_from_slice(&image.offset.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&image.size.to_le_bytes());
            out[at + 16..at + 24].copy_from_slice(&image.gpa.to_le_bytes());
        }
        out[KIND_AT..KIND_AT + 4].copy_from_slice(&self.kind.to_le_bytes());
        out[KIND_AT + 4..KIND_AT + 8].copy_from_slice(&self.cmdline_len.to_le_bytes());
        out[KIND_AT + 8..KIND_AT + 16].copy_from_slice(&self.cmdline_offset.to_le_bytes());
        out
    }

    fn from_bytes(b: &[u8]) -> VmEntry {
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&b[..NAME_LEN]);
        let mut images = [ImageEntry::default(); MAX_IMAGES];
        for (i, image) in images.iter_mut().enumerate() {
            let at = 48 + i * IMAGE_ENTRY_LEN;
            *image = ImageEntry { offset: u64_at(b, at), size: u64_at(b, at + 8), gpa: u64_at(b, at + 16) };
        }
        VmEntry {
            name,
            vcpus: u32_at(b, 16),
            role: u32_at(b, 20),
            ram_base: u64_at(b, 24),
            ram_size: u64_at(b, 32),
            image_count: u32_at(b, 40),
            images,
            kind: u32_at(b, KIND_AT),
            cmdline_len: u32_at(b, KIND_AT + 4),
            cmdline_offset: u64_at(b, KIND_AT + 8),
        }
    }

    /// Whether this is a Linux VM.
    pub fn is_linux(&self) -> bool {
        self.kind == kind::LINUX
    }

    /// The images in use (all of `images` if the count is too large: parsing refuses that).
    pub fn images(&self) -> &[ImageEntry] {
        &self.images[..(self.image_count as usize).min(MAX_IMAGES)]
    }

    /// A name field from text (cut to 16 bytes).
    pub fn name_field(name: &str) -> [u8; NAME_LEN] {
        let mut field = [0u8; NAME_LEN];
        let len = name.len().min(NAME_LEN);
        field[..len].copy_from_slice(&name.as_bytes()[..len]);
        field
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
            if vm.image_count == 0 || vm.image_count as usize > MAX_IMAGES {
                return Err(BundleError::BadImage(i));
            }
            for image in vm.images() {
                let image_end = image.offset.checked_add(image.size).and_then(|e| e.checked_add(SIGNATURE_LEN as u64));
                if image.size == 0
                    || !image.offset.is_multiple_of(IMAGE_ALIGN)
                    || image_end.is_none_or(|end| end > bytes.len() as u64)
                {
                    return Err(BundleError::BadImage(i));
                }
            }
            let ram_end = vm.ram_base.checked_add(vm.ram_size);
            let inside = |image: &ImageEntry| {
                let end = image.pages().checked_mul(IMAGE_ALIGN).and_then(|bytes| image.gpa.checked_add(bytes));
                image.gpa >= vm.ram_base && end.is_some_and(|end| ram_end.is_some_and(|r| end <= r))
            };
            if vm.vcpus == 0
                || vm.ram_size == 0
                || !vm.ram_base.is_multiple_of(IMAGE_ALIGN)
                || !vm.ram_size.is_multiple_of(IMAGE_ALIGN)
                || ram_end.is_none()
                || !vm.images().iter().all(|image| image.gpa.is_multiple_of(IMAGE_ALIGN) && inside(image))
            {
                return Err(BundleError::BadVm(i));
            }
            match vm.kind {
                kind::TEST_GUEST => {}
                kind::LINUX if vm.image_count <= 2 => {}
                _ => return Err(BundleError::BadKind(i)),
            }
            let cmdline_end = vm.cmdline_offset.checked_add(vm.cmdline_len.into());
            let fits = cmdline_end.is_some_and(|end| end <= bytes.len() as u64);
            if (vm.kind == kind::TEST_GUEST && vm.cmdline_len != 0)
                || vm.cmdline_len as usize > MAX_CMDLINE
                || !fits
                || !bundle.cmdline_bytes(&vm).iter().all(|&b| (0x20..0x7f).contains(&b))
            {
                return Err(BundleError::BadCmdline(i));
            }
        }
        Ok(bundle)
    }

    /// A VM's command line as bytes (empty if it lies outside the bundle: parsing refuses that).
    fn cmdline_bytes(&self, vm: &VmEntry) -> &'a [u8] {
        let start = vm.cmdline_offset as usize;
        self.bytes.get(start..start.saturating_add(vm.cmdline_len as usize)).unwrap_or(&[])
    }

    /// A parsed VM's kernel command line (printable ASCII, checked by [`Bundle::parse`]).
    pub fn cmdline(&self, vm: &VmEntry) -> &'a str {
        core::str::from_utf8(self.cmdline_bytes(vm)).unwrap_or("")
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

    /// The image followed by its signature.
    pub fn signed_image(&self, image: &ImageEntry) -> &'a [u8] {
        &self.bytes[image.offset as usize..(image.offset + image.size) as usize + SIGNATURE_LEN]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, size: u64) -> VmEntry {
        let mut images = [ImageEntry::default(); MAX_IMAGES];
        images[0] = ImageEntry { offset, size, gpa: 0x4000_0000 };
        VmEntry {
            name: VmEntry::name_field("alpha"),
            vcpus: 1,
            role: 7,
            ram_base: 0x4000_0000,
            ram_size: 16 << 20,
            image_count: 1,
            images,
            kind: kind::TEST_GUEST,
            cmdline_offset: 0,
            cmdline_len: 0,
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
        let mut two = entry(8192, 4032);
        two.images[1] = ImageEntry { offset: 4096, size: 100, gpa: 0x4080_0000 };
        two.image_count = 2;
        let bytes = bundle_of(&[entry(4096, 100), two], 3 * 4096);
        let bundle = Bundle::parse(&bytes).unwrap();
        let vms: [VmEntry; 2] = [bundle.vms().next().unwrap(), bundle.vms().nth(1).unwrap()];
        assert_eq!(vms[0], entry(4096, 100));
        assert_eq!(vms[0].name(), "alpha");
        assert_eq!(vms[1], two);
        assert_eq!(vms[1].images().len(), 2);
        assert_eq!(bundle.signed_image(&vms[1].images[0]).len(), 4096);
        assert_eq!(vms[1].images[0].pages(), 1);
        assert_eq!(entry(0, 4033).images[0].pages(), 2);
    }

    #[test]
    fn malformed_bundles_are_refused() {
        let good = bundle_of(&[entry(4096, 100)], 2 * 4096);
        assert_eq!(Bundle::parse(&good[..10]).err(), Some(BundleError::TooShort));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(Bundle::parse(&bad).err(), Some(BundleError::BadMagic));
        let mut bad = good;
        bad[8] = 1;
        assert_eq!(Bundle::parse(&bad).err(), Some(BundleError::BadVersion(1)));
        let mut bad = good;
        bad[12] = 200;
        assert_eq!(Bundle::parse(&bad).err(), Some(BundleError::TooManyVms(200)));
        let no_images = VmEntry { image_count: 0, ..entry(4096, 100) };
        let too_many = VmEntry { image_count: MAX_IMAGES as u32 + 1, ..entry(4096, 100) };
        for e in
            [entry(4095, 100), entry(4096, 0), entry(2 * 4096, 4096), entry(u64::MAX - 4095, 100), no_images, too_many]
        {
            assert_eq!(Bundle::parse(&bundle_of(&[e], 0)).err(), Some(BundleError::BadImage(0)), "{e:?}");
        }
        let no_vcpus = VmEntry { vcpus: 0, ..entry(4096, 100) };
        let tiny_ram = VmEntry { ram_size: 0x1000, ..entry(4096, 4096) };
        let mut below = entry(4096, 100);
        below.images[0].gpa = 0x3fff_f000;
        let mut past = entry(4096, 100);
        past.images[0].gpa = 0x4000_0000 + (16 << 20) - 0x1000 + 0x1000;
        let mut unaligned = entry(4096, 100);
        unaligned.images[0].gpa = 0x4000_0800;
        for e in [no_vcpus, tiny_ram, below, past, unaligned] {
            assert_eq!(Bundle::parse(&bundle_of(&[e], 0)).err(), Some(BundleError::BadVm(0)), "{e:?}");
        }
    }

    /// A Linux VM: kernel at page 1, initrd at page 2, command line at 3 * 4096 - 64.
    fn linux_entry() -> VmEntry {
        let mut e = entry(4096, 100);
        e.images[1] = ImageEntry { offset: 2 * 4096, size: 100, gpa: 0x4080_0000 };
        e.image_count = 2;
        e.kind = kind::LINUX;
        e.cmdline_offset = 3 * 4096 - 64;
        e.cmdline_len = 20;
        e
    }

    fn linux_bundle(e: &VmEntry) -> [u8; 3 * 4096] {
        let mut bytes = bundle_of(&[*e], 3 * 4096);
        bytes[3 * 4096 - 64..3 * 4096 - 44].copy_from_slice(b"console=ttyAMA0 quie");
        bytes
    }

    #[test]
    fn the_linux_layout_puts_initrd_and_tree_above_image_size() {
        let mib = 1 << 20;
        // Debian 6.12: a 34.3 MiB footprint from a 33 MiB file; a 2 MiB initrd; 128 MiB of RAM.
        let layout = linux_layout(0x4000_0000, 128 * mib, 33 * mib, 34 * mib + 300 * 1024, 2 * mib).unwrap();
        assert_eq!(
            layout,
            LinuxLayout { kernel: 0x4000_0000, initrd: 0x4000_0000 + 36 * mib, dt: 0x4000_0000 + 38 * mib + 4096 }
        );
        // A file longer than its header's size still gets all its signed pages.
        assert_eq!(linux_layout(0, 64 * mib, 2 * mib, mib, 0).unwrap().initrd, 4 * mib);
        assert_eq!(linux_layout(0, 64 * mib, 2 * mib - 64, mib, 0).unwrap().dt, 2 * mib);
        assert_eq!(linux_layout(0x1000, 128 * mib, mib, mib, mib), None);
        assert_eq!(linux_layout(0, 4 * mib, 3 * mib, 3 * mib, 0), None, "no room for the tree");
        assert_eq!(linux_layout(0, 64 * mib, 0, mib, 0), None);
        assert_eq!(linux_layout(u64::MAX - 2 * mib + 1, 64 * mib, mib, mib, 0), None);
        assert_eq!(linux_layout(0, 64 * mib, mib, u64::MAX, 0), None);
    }

    #[test]
    fn a_linux_entry_round_trips_with_its_command_line() {
        let bytes = linux_bundle(&linux_entry());
        let bundle = Bundle::parse(&bytes).unwrap();
        let vm = bundle.vms().next().unwrap();
        assert_eq!(vm, linux_entry());
        assert!(vm.is_linux());
        assert_eq!(bundle.cmdline(&vm), "console=ttyAMA0 quie");
    }

    #[test]
    fn malformed_linux_entries_are_refused() {
        let good = linux_entry();
        let mut three_images = VmEntry { image_count: 3, ..good };
        three_images.images[2] = ImageEntry { offset: 4096, size: 100, gpa: 0x4090_0000 };
        let unknown_kind = VmEntry { kind: 2, ..good };
        for e in [three_images, unknown_kind] {
            assert_eq!(Bundle::parse(&linux_bundle(&e)).err(), Some(BundleError::BadKind(0)), "{e:?}");
        }
        let past_end = VmEntry { cmdline_offset: 3 * 4096 - 10, ..good };
        let wraps = VmEntry { cmdline_offset: u64::MAX - 5, ..good };
        let too_long = VmEntry { cmdline_offset: 0, cmdline_len: MAX_CMDLINE as u32 + 1, ..good };
        let test_guest_with_one = VmEntry { kind: kind::TEST_GUEST, ..good };
        for e in [past_end, wraps, too_long, test_guest_with_one] {
            assert_eq!(Bundle::parse(&linux_bundle(&e)).err(), Some(BundleError::BadCmdline(0)), "{e:?}");
        }
        let mut control = linux_bundle(&good);
        control[3 * 4096 - 60] = b'\n';
        assert_eq!(Bundle::parse(&control).err(), Some(BundleError::BadCmdline(0)));
    }

    fn record(gpa: u64, byte: u8) -> ImageRecord {
        ImageRecord { gpa, size: 100, sha256: [byte; 32] }
    }

    #[test]
    fn the_message_names_the_whole_layout() {
        let images = [record(0x8000_0000, 1), record(0x8080_0000, 2)];
        let message = image_message(0x8000_0000, 16 << 20, &images, 1).unwrap();
        let bytes = message.as_bytes();
        assert_eq!(bytes.len(), IMAGE_DOMAIN.len() + 24 + 2 * 48);
        assert!(bytes.starts_with(b"corevisor-image-v3"));
        let at = IMAGE_DOMAIN.len();
        assert_eq!(&bytes[at..at + 8], &0x8000_0000u64.to_le_bytes());
        assert_eq!(&bytes[at + 16..at + 24], &[2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&bytes[at + 24 + 48..at + 24 + 56], &0x8080_0000u64.to_le_bytes());
        // Each part of the layout changes the message.
        let base = |ram_base, ram_size, images: &[ImageRecord], index| image_message(ram_base, ram_size, images, index);
        let variants = [
            base(0x8000_0000, 32 << 20, &images, 1),
            base(0x9000_0000, 16 << 20, &images, 1),
            base(0x8000_0000, 16 << 20, &images, 0),
            base(0x8000_0000, 16 << 20, &[images[1], images[0]], 0),
            base(0x8000_0000, 16 << 20, &[images[0], record(0x8090_0000, 2)], 1),
            base(0x8000_0000, 16 << 20, &[images[0], record(0x8080_0000, 3)], 1),
            base(0x8000_0000, 16 << 20, &[images[0], images[1], record(0x8100_0000, 4)], 1),
        ];
        for other in variants {
            assert_ne!(other.unwrap().as_bytes(), bytes);
        }
        assert_eq!(image_message(0, 1, &images, 2), None);
        assert_eq!(image_message(0, 1, &[], 0), None);
        assert_eq!(image_message(0, 1, &[images[0]; MAX_IMAGES + 1], 0), None);
        assert_eq!(image_message(0, 1, &[images[0]; MAX_IMAGES], 4).unwrap().as_bytes().len(), MESSAGE_MAX);
    }
}

//! KServ's side of a Linux VM (issue 13): its device tree, written at run time into pages that
//! KCore takes as BOOT_DATA before the VM's first run, and the devices it sees: the PL011 every
//! VM has, and the GIC's distributor side (GICv3 with redistributors, GICv2) behind the
//! [`gic_model::GicModel`] seam.

pub mod devices;
pub mod dt;
pub mod gic_irqs;
pub mod gic_model;
pub mod gic_v2;
pub mod gic_v3;
pub mod pl011;

use corevisor_abi::bundle::{self, Bundle, VmEntry};

/// Where Linux VM `entry` of `bundle` gets its device tree, and what the tree says: the layout
/// `bundle::linux_layout` gives the kernel (its `image_size` read from its header) and initrd,
/// which must be where the bundle's signed images put them. `None` if they are not, or the
/// entry is no Linux VM.
pub fn boot_plan<'a>(bundle: &Bundle<'a>, entry: &VmEntry, gic_v3: bool) -> Option<(u64, dt::LinuxVmDt<'a>)> {
    let (kernel, initrd) = (entry.images().first()?, entry.images().get(1));
    let image_size = image_size(bundle, entry)?;
    let initrd_len = initrd.map_or(0, |i| i.size);
    let layout = bundle::linux_layout(entry.ram_base, entry.ram_size, kernel.size, image_size, initrd_len)?;
    if !entry.is_linux() || layout.kernel != kernel.gpa || initrd.is_some_and(|i| i.gpa != layout.initrd) {
        return None;
    }
    let spec = dt::LinuxVmDt {
        ram_base: entry.ram_base,
        ram_size: entry.ram_size,
        cpus: entry.vcpus,
        gic_v3,
        bootargs: bundle.cmdline(entry),
        initrd: initrd.map(|i| (i.gpa, i.gpa + i.size)),
    };
    Some((layout.dt, spec))
}

/// The `image_size` header field of Linux VM `entry`'s kernel (image 0): the bytes from its
/// first one that the kernel uses (text, data, BSS and its initial page tables).
pub fn image_size(bundle: &Bundle, entry: &VmEntry) -> Option<u64> {
    let at = usize::try_from(entry.images().first()?.offset).ok()?.checked_add(bundle::IMAGE_SIZE_AT)?;
    Some(u64::from_le_bytes(bundle.bytes.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use corevisor_abi::bundle::{ImageEntry, ENTRY_LEN, HEADER_LEN, IMAGE_ALIGN, MAX_IMAGES, SIGNATURE_LEN};

    const RAM: u64 = 0x8000_0000;
    const KERNEL_LEN: u64 = 0x3000;
    const IMAGE_SIZE: u64 = 0x30_0000;
    const INITRD_LEN: u64 = 0x1800;

    /// A one-VM Linux bundle (unsigned: parsing checks no signature) with the initrd at
    /// `initrd_gpa`.
    fn bundle(initrd_gpa: u64) -> Vec<u8> {
        let cmdline = b"console=ttyAMA0 rdinit=/init";
        let kernel_at = IMAGE_ALIGN;
        let initrd_at = kernel_at + (KERNEL_LEN + SIGNATURE_LEN as u64).next_multiple_of(IMAGE_ALIGN);
        let cmdline_at = initrd_at + (INITRD_LEN + SIGNATURE_LEN as u64).next_multiple_of(IMAGE_ALIGN);
        let mut images = [ImageEntry::default(); MAX_IMAGES];
        images[0] = ImageEntry { offset: kernel_at, size: KERNEL_LEN, gpa: RAM };
        images[1] = ImageEntry { offset: initrd_at, size: INITRD_LEN, gpa: initrd_gpa };
        let entry = VmEntry {
            name: VmEntry::name_field("linux"),
            vcpus: 2,
            role: 0,
            ram_base: RAM,
            ram_size: 64 << 20,
            image_count: 2,
            images,
            kind: bundle::kind::LINUX,
            cmdline_offset: cmdline_at,
            cmdline_len: cmdline.len() as u32,
        };
        let mut out = bundle::header(1).to_vec();
        out.extend_from_slice(&entry.to_bytes());
        assert!(out.len() <= HEADER_LEN + ENTRY_LEN);
        out.resize((cmdline_at as usize) + cmdline.len(), 0);
        let size_at = kernel_at as usize + bundle::IMAGE_SIZE_AT;
        out[size_at..size_at + 8].copy_from_slice(&IMAGE_SIZE.to_le_bytes());
        out[cmdline_at as usize..].copy_from_slice(cmdline);
        out
    }

    #[test]
    fn the_device_tree_goes_past_the_initrd_and_names_it() {
        let bytes = bundle(RAM + IMAGE_SIZE.next_multiple_of(2 << 20));
        let parsed = Bundle::parse(&bytes).unwrap();
        let entry = parsed.vms().next().unwrap();
        let (dt_gpa, spec) = boot_plan(&parsed, &entry, false).unwrap();
        let initrd = RAM + (4 << 20);
        assert_eq!(dt_gpa, initrd + 2 * IMAGE_ALIGN);
        assert_eq!(spec.initrd, Some((initrd, initrd + INITRD_LEN)));
        assert_eq!((spec.cpus, spec.ram_base, spec.ram_size, spec.gic_v3), (2, RAM, 64 << 20, false));
        assert_eq!(spec.bootargs, "console=ttyAMA0 rdinit=/init");
    }

    #[test]
    fn images_placed_elsewhere_than_the_layout_get_no_device_tree() {
        let bytes = bundle(RAM + (6 << 20));
        let parsed = Bundle::parse(&bytes).unwrap();
        assert_eq!(boot_plan(&parsed, &parsed.vms().next().unwrap(), true), None);
        // The right layout, but the entry says it is a test guest.
        let bytes = bundle(RAM + (4 << 20));
        let parsed = Bundle::parse(&bytes).unwrap();
        let entry = parsed.vms().next().unwrap();
        assert!(boot_plan(&parsed, &entry, true).is_some());
        assert_eq!(boot_plan(&parsed, &VmEntry { kind: bundle::kind::TEST_GUEST, ..entry }, true), None);
    }
}

//! Boot layers: directed tests of image verification, and the refinement property over random
//! boot sequences (with the host tampering with image pages), with a planted-bug companion.

use super::spec::*;
use super::*;
use crate::memory::system::{initial_rdata, relate, spec_apply, Op, System};
use crate::mutation::{catches, with, Mutation};
use crate::page_table::descriptor::OUTPUT_LIMIT;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use sha2::{Digest, Sha512};
use std::collections::BTreeSet;

const IMAGE_LEN: u64 = 5000;
/// Two host pages, outside the pages the memory strategies use.
const IMAGE_PFNS: [u64; 2] = [0x40400, 0x40401];

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The test image and its signature, as the bytes the host lays out in pages.
fn signed_image() -> Vec<u8> {
    let image: Vec<u8> = (0..IMAGE_LEN).map(|i| (i * 7 + 3) as u8).collect();
    let digest: [u8; 64] = Sha512::digest(&image).into();
    let signature = signing_key().sign(&image_message(&digest));
    [image, signature.to_bytes().to_vec()].concat()
}

/// Writes the signed image into its host pages, in the system and in the spec's memory.
fn lay_out(sys: &mut System, r: &mut RDataAlias) {
    for (i, chunk) in signed_image().chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let pa = (IMAGE_PFNS[0] << 12) + i as u64 * 8;
        sys.m.write_u64(pa, u64::from_le_bytes(word));
        if u64::from_le_bytes(word) != 0 {
            r.flatmem.insert(pa, u64::from_le_bytes(word));
        }
    }
}

type RDataAlias = crate::memory::spec::RData;

fn boot_vm(sys: &mut System, vms: &mut Vms) -> Result<u16, BootError> {
    let vmid = vms.register_vm()?;
    vms.register_vcpu(vmid, 0)?;
    let index = vms.set_boot_info(vmid, 0x8_0000, IMAGE_LEN)?;
    for pfn in IMAGE_PFNS {
        vms.remap_vm_image(&sys.mem, vmid, pfn, index)?;
    }
    let key = signing_key().verifying_key();
    vms.verify_vm_image(&sys.m, &mut sys.mem, sys.vms.get_mut(&vmid).unwrap(), vmid, &key)?;
    Ok(vmid)
}

#[test]
fn a_signed_image_verifies_and_its_pages_leave_the_host() {
    let (mut sys, mut vms) = (System::new(false), Vms::new());
    lay_out(&mut sys, &mut initial_rdata(false));
    sys.mem.map_page_host(&sys.m, IMAGE_PFNS[0] << 12).unwrap();
    assert_eq!(boot_vm(&mut sys, &mut vms), Ok(1));
    assert!(vms.may_run(1));
    assert!(sys.mem.host_s2.walk(&sys.m, IMAGE_PFNS[0] << 12).is_none());
    assert!(sys.mem.map_page_host(&sys.m, IMAGE_PFNS[1] << 12).is_err());
    let leaf = sys.vms[&1].walk(&sys.m, 0x8_1000).unwrap();
    assert_eq!(leaf.translate(0x8_1000), IMAGE_PFNS[1] << 12);
    assert_eq!(vms.set_vcpu_active(1, 0), Ok(()));
    assert_eq!(vms.set_vcpu_active(1, 0), Err(BootError::Vcpu));
    assert_eq!(vms.power_off(1), Ok(()));
    assert!(!vms.may_run(1));
}

#[test]
fn one_flipped_byte_of_image_or_signature_rejects_the_vm_for_good() {
    for flip_at in [0, IMAGE_LEN - 1, IMAGE_LEN, IMAGE_LEN + 63] {
        let (mut sys, mut vms) = (System::new(false), Vms::new());
        lay_out(&mut sys, &mut initial_rdata(false));
        let pa = (IMAGE_PFNS[0] << 12) + (flip_at & !7);
        sys.m.write_u64(pa, sys.m.read_u64(pa) ^ (1 << (8 * (flip_at % 8))));
        assert_eq!(boot_vm(&mut sys, &mut vms), Err(BootError::Rejected), "flip at {flip_at}");
        assert!(!vms.may_run(1));
        assert_eq!(vms.set_vcpu_active(1, 0), Err(BootError::State(VmState::Rejected)));
        let key = signing_key().verifying_key();
        let again = vms.verify_vm_image(&sys.m, &mut sys.mem, sys.vms.get_mut(&1).unwrap(), 1, &key);
        assert_eq!(again, Err(BootError::State(VmState::Rejected)));
    }
}

#[test]
fn registration_checks_every_argument() {
    let (sys, mut vms) = (System::new(false), Vms::new());
    assert_eq!(vms.register_vcpu(1, 0), Err(BootError::NoVm));
    let vmid = vms.register_vm().unwrap();
    assert_eq!(vms.register_vcpu(vmid, MAX_VCPUS), Err(BootError::Vcpu));
    assert_eq!(vms.register_vcpu(0, 0), Err(BootError::NoVm));
    assert_eq!(vms.set_boot_info(vmid, 0x123, 10), Err(BootError::BadRange));
    assert_eq!(vms.set_boot_info(vmid, 1 << 39, 10), Err(BootError::BadRange));
    assert_eq!(vms.set_boot_info(vmid, 0, 0), Err(BootError::BadRange));
    assert_eq!(vms.set_boot_info(vmid, !0xfff, 10), Err(BootError::BadRange));
    assert_eq!(vms.set_boot_info(vmid, 0, 10), Ok(0));
    assert_eq!(vms.set_boot_info(vmid, 0, 10), Err(BootError::BadRange), "overlapping images");
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, 0x40080, 0), Err(BootError::BadPage), "KCore's page");
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, 0x09000, 0), Err(BootError::BadPage), "MMIO");
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, 0x40400, 1), Err(BootError::BadImage));
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, 0x40400, 0), Ok(()));
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, 0x40401, 0), Err(BootError::BadImage), "image complete");
    for _ in 1..MAX_VMS {
        vms.register_vm().unwrap();
    }
    assert_eq!(vms.register_vm(), Err(BootError::NoVmid));
}

#[derive(Clone, Copy, Debug)]
enum BootOp {
    RegisterVm,
    RegisterVcpu(u16, usize),
    SetBootInfo(u16, u64, u64),
    Remap(u16, u64, usize),
    Verify(u16),
    PowerOff(u16),
    Activate(u16, usize),
    /// The host writes into image pages (while it still may).
    Tamper(u64, u64),
}

/// Load addresses: the usual ones, ones near the end of the guest's input range and of `u64`
/// (ranges that end past the window or wrap), and anything.
fn any_gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => prop_oneof![Just(0x8_0000u64), Just(0x8_1000), Just(0)],
        1 => prop_oneof![Just(INPUT_LIMIT - 0x1000), Just(INPUT_LIMIT), Just(!0xfffu64), Just(0x8_0800)],
        1 => any::<u64>(),
    ]
}

/// Image sizes: the test image's, tiny, empty, around the per-VM cap, and sizes that wrap.
fn any_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => Just(IMAGE_LEN),
        2 => prop_oneof![Just(10u64), Just(0)],
        1 => prop_oneof![Just(MAX_IMAGE_BYTES - SIGNATURE_LEN), Just(MAX_IMAGE_BYTES - SIGNATURE_LEN + 1)],
        1 => prop_oneof![Just(u64::MAX), Just(u64::MAX - SIGNATURE_LEN + 1), Just(u64::MAX - 4096)],
        1 => any::<u64>(),
    ]
}

/// Page numbers: the image's pages, KCore's, one past them, and the same pages with high bits
/// set (which alias them if shifted unchecked), the first number past the physical address size,
/// and anything.
fn any_pfn() -> impl Strategy<Value = u64> {
    let page =
        prop_oneof![3 => Just(IMAGE_PFNS[0]), 3 => Just(IMAGE_PFNS[1]), 1 => Just(0x40080u64), 1 => Just(0x40402)];
    prop_oneof![
        8 => page.clone(),
        2 => (page, prop_oneof![Just(52u32), Just(28), Just(40), Just(63)]).prop_map(|(p, bit)| p | 1 << bit),
        1 => prop_oneof![Just(OUTPUT_LIMIT >> 12), Just((OUTPUT_LIMIT >> 12) - 1), Just(u64::MAX)],
        1 => any::<u64>(),
    ]
}

fn any_boot_op() -> impl Strategy<Value = BootOp> {
    // Mostly VM 1 and image 0, so whole boots (register, describe, list pages, verify) happen.
    let vmid = prop_oneof![5 => Just(1u16), 2 => Just(2), 1 => 0u16..5];
    prop_oneof![
        2 => Just(BootOp::RegisterVm),
        1 => (vmid.clone(), 0usize..10).prop_map(|(v, c)| BootOp::RegisterVcpu(v, c)),
        2 => (vmid.clone(), any_gpa(), any_size()).prop_map(|(v, g, s)| BootOp::SetBootInfo(v, g, s)),
        4 => (vmid.clone(), any_pfn(), prop_oneof![4 => Just(0usize), 1 => Just(1), 1 => Just(usize::MAX)])
            .prop_map(|(v, p, i)| BootOp::Remap(v, p, i)),
        2 => vmid.clone().prop_map(BootOp::Verify),
        1 => vmid.clone().prop_map(BootOp::PowerOff),
        1 => (vmid, 0usize..2).prop_map(|(v, c)| BootOp::Activate(v, c)),
        1 => (0u64..(2 * 512), 1u64..1000).prop_map(|(w, v)| BootOp::Tamper((IMAGE_PFNS[0] << 12) + w * 8, v)),
    ]
}

/// Runs boot operations on the system and the spec side by side.
fn boot_refines(ops: &[BootOp]) -> Result<(), TestCaseError> {
    let (mut sys, mut vms) = (System::new(false), Vms::new());
    let mut r = initial_rdata(false);
    lay_out(&mut sys, &mut r);
    let mut abs = Vms::new();
    let key = signing_key().verifying_key();
    let probes: BTreeSet<u64> = IMAGE_PFNS.iter().copied().chain([0x40402, 0x40080]).collect();
    for &op in ops {
        let same = match op {
            BootOp::RegisterVm => {
                let (a, m, expected) = register_vm_spec(&abs, &r).unwrap();
                (abs, r) = (a, m);
                vms.register_vm() == expected
            }
            BootOp::RegisterVcpu(v, c) => {
                let (a, m, expected) = register_vcpu_spec(&abs, &r, v, c).unwrap();
                (abs, r) = (a, m);
                vms.register_vcpu(v, c) == expected
            }
            BootOp::SetBootInfo(v, g, s) => {
                let (a, m, expected) = set_boot_info_spec(&abs, &r, v, g, s).unwrap();
                (abs, r) = (a, m);
                vms.set_boot_info(v, g, s) == expected
            }
            BootOp::Remap(v, p, i) => {
                let (a, m, expected) = remap_vm_image_spec(&abs, &r, v, p, i).unwrap();
                (abs, r) = (a, m);
                vms.remap_vm_image(&sys.mem, v, p, i) == expected
            }
            BootOp::Verify(v) if sys.vms.contains_key(&v) || vms.get(v).is_none() => {
                let (a, m, expected) = verify_vm_image_spec(&abs, &r, v, &key).unwrap();
                (abs, r) = (a, m);
                let table = sys.vms.get_mut(&v.clamp(1, 3)).unwrap();
                vms.verify_vm_image(&sys.m, &mut sys.mem, table, v, &key) == expected
            }
            BootOp::Verify(_) => true, // a VM beyond the harness's three stage-2 tables
            BootOp::PowerOff(v) => {
                let (a, m, expected) = power_off_spec(&abs, &r, v).unwrap();
                (abs, r) = (a, m);
                vms.power_off(v) == expected
            }
            BootOp::Activate(v, c) => {
                let (a, m, expected) = set_vcpu_active_spec(&abs, &r, v, c).unwrap();
                (abs, r) = (a, m);
                vms.set_vcpu_active(v, c) == expected
            }
            BootOp::Tamper(pa, value) => {
                let op = Op::HostStore(pa, value);
                let (m, expected) = spec_apply(&r, &op).unwrap();
                r = m;
                sys.apply(&op) == expected
            }
        };
        prop_assert!(same, "result of {:?} differs from the spec", op);
        prop_assert_eq!(&vms, &abs, "VM records differ after {:?}", op);
        prop_assert!(vms.index_agrees(&sys.mem), "the index of listed pages is wrong after {:?}", op);
        if let Err(e) = relate(&sys, &r, &probes) {
            return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn boot_operations_refine_their_specs(ops in proptest::collection::vec(any_boot_op(), 50..80)) {
        boot_refines(&ops)?;
    }
}

#[test]
fn refinement_catches_a_verification_that_skips_a_byte() {
    let inputs = proptest::collection::vec(any_boot_op(), 50..80);
    catches(Mutation::VerifyIgnoresLastByte, 256, inputs, |ops| boot_refines(&ops));
    // And directly: with the bug, the hash no longer covers what was signed, so a good image is
    // turned away.
    let (mut sys, mut vms) = (System::new(false), Vms::new());
    lay_out(&mut sys, &mut initial_rdata(false));
    assert_eq!(with(Mutation::VerifyIgnoresLastByte, || boot_vm(&mut sys, &mut vms)), Err(BootError::Rejected));
}

#[test]
fn refinement_catches_an_unchecked_page_number() {
    let inputs = proptest::collection::vec(any_boot_op(), 50..80);
    catches(Mutation::RemapTakesAnyPfn, 256, inputs, |ops| boot_refines(&ops));
}

/// A VM with one image of `pages` pages, ready for its pages to be listed.
fn vm_with_image(vms: &mut Vms, pages: u64) -> u16 {
    let vmid = vms.register_vm().unwrap();
    assert_eq!(vms.set_boot_info(vmid, 0, pages * PAGE_SIZE - SIGNATURE_LEN), Ok(0));
    vmid
}

/// Finding 5 of issue 11: a page number with bits above the physical address size names the
/// same page as the number without them once shifted; it used to be listed again and again,
/// each time growing the list, until KCore's heap ran out.
#[test]
fn a_page_number_past_the_physical_address_size_is_refused() {
    let (sys, mut vms) = (System::new(false), Vms::new());
    let vmid = vm_with_image(&mut vms, 4);
    let page = IMAGE_PFNS[0];
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, page, 0), Ok(()));
    for alias in [page | 1 << 52, page | 1 << 40, page | 1 << 28, u64::MAX] {
        assert_eq!(vms.remap_vm_image(&sys.mem, vmid, alias, 0), Err(BootError::Mem(MemError::BadPfn)), "{alias:#x}");
    }
    assert_eq!(vms.get(vmid).unwrap().load[0].pfns, vec![page]);
    assert_eq!(crate::memory::checked_pa((OUTPUT_LIMIT >> 12) - 1), Ok(OUTPUT_LIMIT - PAGE_SIZE));
    assert_eq!(crate::memory::checked_pa(OUTPUT_LIMIT >> 12), Err(MemError::BadPfn));
    // Through the hypercall: INVALID_ADDRESS.
    let status = crate::vm::VmError::Boot(BootError::Mem(MemError::BadPfn)).status();
    assert_eq!(status, corevisor_abi::Status::InvalidAddress);
}

/// The per-VM cap: a VM's images fill at most `MAX_IMAGE_BYTES`; with that many pages listed,
/// the next REMAP_VM_IMAGE and the next SET_BOOT_INFO are refused, and no list grew past its
/// capacity (listing never allocates).
#[test]
fn image_lists_stop_at_the_cap() {
    let (sys, mut vms) = (System::new(false), Vms::new());
    let first = 0x44000;
    let vmid = vm_with_image(&mut vms, MAX_IMAGE_PAGES);
    for pfn in first..first + MAX_IMAGE_PAGES {
        assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn, 0), Ok(()));
    }
    let next = first + MAX_IMAGE_PAGES;
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, next, 0), Err(BootError::BadImage));
    assert_eq!(vms.set_boot_info(vmid, 1 << 32, 1), Err(BootError::BadRange), "a second image past the cap");
    let load = &vms.get(vmid).unwrap().load[0];
    assert_eq!((load.pfns.len() as u64, load.pfns.capacity() as u64), (MAX_IMAGE_PAGES, MAX_IMAGE_PAGES));
    // One image cannot exceed the cap either, nor wrap its size into a small one.
    let other = vms.register_vm().unwrap();
    for size in [MAX_IMAGE_BYTES - SIGNATURE_LEN + 1, u64::MAX, u64::MAX - SIGNATURE_LEN + 1] {
        assert_eq!(vms.set_boot_info(other, 0, size), Err(BootError::BadRange), "{size:#x}");
    }
    // A page listed for one VM cannot be listed for another.
    assert_eq!(vms.set_boot_info(other, 0, 10), Ok(0));
    assert_eq!(vms.remap_vm_image(&sys.mem, other, first, 0), Err(BootError::BadPage));
    assert!(vms.index_agrees(&sys.mem));
    // Teardown unlists the pages.
    vms.release_images(&sys.mem, vmid);
    assert_eq!(vms.remap_vm_image(&sys.mem, other, first, 0), Ok(()));
    assert!(vms.index_agrees(&sys.mem));
}

//! Boot layers: directed tests of image verification, and the refinement property over random
//! boot sequences (with the host tampering with image pages, and laying signed images out right
//! and wrong), with planted-bug companions.

use super::spec::*;
use super::testing::sign_layout;
use super::*;
use crate::memory::spec::RData;
use crate::memory::system::{initial_rdata, relate, spec_apply, Op, System, POOLS, VMS};
use crate::mutation::{catches, with, Mutation};
use crate::page_table::descriptor::{Regime, OUTPUT_LIMIT};
use crate::page_table::pool::PagePool;
use crate::page_table::spec::AbsNpt;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use sha2::{Digest, Sha256, Sha512};
use std::collections::BTreeSet;

const IMAGE_LEN: u64 = 5000;
const DATA_LEN: u64 = 300;
/// Host pages outside the pages the memory strategies use: the entry image's two, the data
/// image's, and a data image signed for another layout.
const IMAGE_PFNS: [u64; 2] = [0x40400, 0x40401];
const DATA_PFN: u64 = 0x40402;
const FOREIGN_PFN: u64 = 0x40403;
/// Where the layout's images are signed to go, and the VM's RAM window the signatures name.
const IMAGE_GPA: u64 = 0x8_0000;
const DATA_GPA: u64 = 0x9_0000;
const WINDOW: (u64, u64) = (0, 1 << 20);
/// Where the tests put boot data (BOOT_DATA), and the host pages they offer for it.
const BOOT_DATA_GPA: u64 = 0xA_0000;
const BOOT_DATA_PFNS: [u64; 2] = [0x40404, 0x40405];

/// The records of these tests: no vCPU contexts.
type TestVms = Vms<()>;

fn window() -> IpaRange {
    IpaRange::new(WINDOW.0, WINDOW.1).unwrap()
}

fn vm(raw: u16) -> VmId {
    VmId::new(raw.into()).unwrap()
}

fn pfn(raw: u64) -> Pfn {
    Pfn::new(raw).unwrap()
}

fn vcpu(raw: usize) -> VcpuId {
    VcpuId::new(raw as u64).unwrap()
}

/// REGISTER_VM with RAM `ram`: the VM's stage-2 is the harness's table for its vmid (the spec's
/// memory has those), or a fresh one past them.
fn register_in(sys: &mut System, vms: &mut TestVms, ram: IpaRange) -> Result<VmId, BootError> {
    let tables = &mut sys.vms;
    let m = &sys.m;
    vms.register_vm(ram, |vm| match tables.remove(&vm.vmid()) {
        Some(table) => Ok(table),
        None => {
            let pool = PagePool::new(POOLS + vm.raw() * (1 << 30), 64);
            Ok(PageTable::new(m, Regime::Stage2 { vmid: vm.vmid() }, pool)?)
        }
    })
}

fn register(sys: &mut System, vms: &mut TestVms) -> Result<VmId, BootError> {
    register_in(sys, vms, window())
}

/// Memory's refinement relation, with the stage-2 tables that moved into the VMs' records
/// compared there.
fn relate_all(sys: &System, vms: &TestVms, r: &RData, probes: &BTreeSet<u64>) -> Result<(), String> {
    let mut rest = r.clone();
    for (vm, rec) in vms.iter() {
        if let Some(npt) = rest.npts.remove(&vm.vmid()) {
            if npt != AbsNpt::of(&rec.s2, &sys.m) {
                return Err(format!("vm {vm}'s stage-2 differs from the spec"));
            }
        }
    }
    relate(sys, &rest, probes)
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn image() -> Vec<u8> {
    (0..IMAGE_LEN).map(|i| (i * 7 + 3) as u8).collect()
}

fn data(seed: u8) -> Vec<u8> {
    (0..DATA_LEN).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

/// The signed layout (image at IMAGE_GPA, data at DATA_GPA) and, from another layout with other
/// data, that data image signed.
fn signed_images() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (image, ours, theirs) = (image(), data(5), data(11));
    let layout = sign_layout(&signing_key(), WINDOW.0, WINDOW.1, &[(IMAGE_GPA, &image), (DATA_GPA, &ours)]);
    let other = sign_layout(&signing_key(), WINDOW.0, WINDOW.1, &[(IMAGE_GPA, &image), (DATA_GPA, &theirs)]);
    (layout[0].clone(), layout[1].clone(), other[1].clone())
}

fn write_bytes(sys: &mut System, r: &mut RDataAlias, pa: u64, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let (at, value) = (pa + i as u64 * 8, u64::from_le_bytes(word));
        sys.m.write_u64(at, value);
        if value != 0 {
            r.flatmem.insert(at, value);
        }
    }
}

/// Writes the signed images into their host pages, in the system and in the spec's memory.
fn lay_out(sys: &mut System, r: &mut RDataAlias) {
    let (image, data, foreign) = signed_images();
    write_bytes(sys, r, IMAGE_PFNS[0] << 12, &image);
    write_bytes(sys, r, DATA_PFN << 12, &data);
    write_bytes(sys, r, FOREIGN_PFN << 12, &foreign);
}

type RDataAlias = crate::memory::spec::RData;

fn verifier(key: &VerifyingKey, chunk_pages: u64) -> Verifier<'_> {
    Verifier { key, chunk_pages }
}

/// How the host lays a VM's images out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// As signed.
    Signed,
    /// The data image at another address.
    Moved,
    /// The data image first: it would be the entry.
    Swapped,
    /// With the data image signed for another layout.
    Foreign,
}

/// SET_BOOT_INFO and REMAP_VM_IMAGE for `layout`, as boot operations.
fn layout_ops(vmid: u16, layout: Layout) -> Vec<BootOp> {
    let entry = [BootOp::SetBootInfo(vmid, IMAGE_GPA, IMAGE_LEN)];
    let (data_gpa, data_pfn) = match layout {
        Layout::Moved => (DATA_GPA + 0x1_0000, DATA_PFN),
        Layout::Foreign => (DATA_GPA, FOREIGN_PFN),
        _ => (DATA_GPA, DATA_PFN),
    };
    let data = [BootOp::SetBootInfo(vmid, data_gpa, DATA_LEN)];
    let (first, second) = if layout == Layout::Swapped { (data, entry) } else { (entry, data) };
    let (image_index, data_index) = if layout == Layout::Swapped { (1, 0) } else { (0, 1) };
    let remaps = IMAGE_PFNS
        .iter()
        .map(|&p| BootOp::Remap(vmid, p, image_index))
        .chain([BootOp::Remap(vmid, data_pfn, data_index)]);
    first.into_iter().chain(second).chain(remaps).collect()
}

/// Registers a VM, lays its images out as `layout` says, and verifies it in chunks of
/// `chunk_pages`; returns the pages-left answers of the calls.
fn boot_vm_as(
    sys: &mut System,
    vms: &mut TestVms,
    layout: Layout,
    chunk_pages: u64,
) -> Result<(VmId, Vec<u64>), BootError> {
    let vmid = register(sys, vms)?;
    vms.register_vcpu(vmid, vcpu(0), || ())?;
    for op in layout_ops(vmid.vmid(), layout) {
        match op {
            BootOp::SetBootInfo(v, g, s) => vms.set_boot_info(vm(v), Ipa(g), s).map(|_| ())?,
            BootOp::Remap(v, p, i) => vms.remap_vm_image(&sys.mem, vm(v), pfn(p), i)?,
            _ => unreachable!(),
        }
    }
    let key = signing_key().verifying_key();
    let mut answers = Vec::new();
    loop {
        let left = vms.verify_vm_image(&sys.m, &mut sys.mem, vmid, &verifier(&key, chunk_pages))?;
        answers.push(left);
        if left == 0 {
            return Ok((vmid, answers));
        }
    }
}

fn boot_vm(sys: &mut System, vms: &mut TestVms) -> Result<VmId, BootError> {
    boot_vm_as(sys, vms, Layout::Signed, VERIFY_CHUNK_PAGES).map(|(vmid, _)| vmid)
}

#[test]
fn a_signed_image_verifies_and_its_pages_leave_the_host() {
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    lay_out(&mut sys, &mut initial_rdata(false));
    sys.mem.map_page_host(&sys.m, IMAGE_PFNS[0] << 12).unwrap();
    assert_eq!(boot_vm(&mut sys, &mut vms), Ok(vm(1)));
    assert!(vms.may_run(vm(1)));
    assert!(sys.mem.host_s2.walk(&sys.m, IMAGE_PFNS[0] << 12).is_none());
    assert!(sys.mem.map_page_host(&sys.m, IMAGE_PFNS[1] << 12).is_err());
    let leaf = vms.get(vm(1)).unwrap().s2.walk(&sys.m, 0x8_1000).unwrap();
    assert_eq!(leaf.translate(0x8_1000), IMAGE_PFNS[1] << 12);
    assert_eq!(vms.set_vcpu_active(vm(1), vcpu(0)), Ok(()));
    assert_eq!(vms.set_vcpu_active(vm(1), vcpu(0)), Err(BootError::Vcpu));
    assert_eq!(vms.power_off(vm(1)), Ok(()));
    assert!(!vms.may_run(vm(1)));
    assert!(vms.get(vm(1)).unwrap().any_running(), "a running vCPU finishes its run");
    vms.set_vcpu_inactive(vm(1), vcpu(0), ());
    assert_eq!(vms.get(vm(1)).unwrap().vcpus[0], Vcpu::Idle(()));
    assert_eq!(vms.set_vcpu_active(vm(1), vcpu(0)), Err(BootError::State(VmState::PoweredOff)));
}

#[test]
fn one_flipped_byte_of_image_or_signature_rejects_the_vm_for_good() {
    for flip_at in [0, IMAGE_LEN - 1, IMAGE_LEN, IMAGE_LEN + 63] {
        let (mut sys, mut vms) = (System::new(false), TestVms::new());
        lay_out(&mut sys, &mut initial_rdata(false));
        let pa = (IMAGE_PFNS[0] << 12) + (flip_at & !7);
        sys.m.write_u64(pa, sys.m.read_u64(pa) ^ (1 << (8 * (flip_at % 8))));
        assert_eq!(boot_vm(&mut sys, &mut vms), Err(BootError::Rejected), "flip at {flip_at}");
        assert!(!vms.may_run(vm(1)));
        assert_eq!(vms.set_vcpu_active(vm(1), vcpu(0)), Err(BootError::State(VmState::Rejected)));
        let key = signing_key().verifying_key();
        let again = vms.verify_vm_image(&sys.m, &mut sys.mem, vm(1), &verifier(&key, 256));
        assert_eq!(again, Err(BootError::State(VmState::Rejected)));
    }
}

/// Finding 10 of issue 11: each signature covers the VM's whole layout, so correctly signed
/// images laid out otherwise are refused: moved, made the entry, mixed with an image of another
/// layout, or checked against another RAM window. So is a signature in the old format.
/// Registers a VM and lists the signed layout's images for it; returns its vmid.
fn register_signed_layout(sys: &mut System, vms: &mut TestVms, ram: IpaRange) -> VmId {
    let vmid = register_in(sys, vms, ram).unwrap();
    for op in layout_ops(vmid.vmid(), Layout::Signed) {
        match op {
            BootOp::SetBootInfo(v, g, s) => assert!(vms.set_boot_info(vm(v), Ipa(g), s).is_ok()),
            BootOp::Remap(v, p, i) => assert_eq!(vms.remap_vm_image(&sys.mem, vm(v), pfn(p), i), Ok(())),
            _ => unreachable!(),
        }
    }
    vmid
}

#[test]
fn correctly_signed_images_in_another_layout_are_rejected() {
    for layout in [Layout::Moved, Layout::Swapped, Layout::Foreign] {
        let (mut sys, mut vms) = (System::new(false), TestVms::new());
        lay_out(&mut sys, &mut initial_rdata(false));
        assert_eq!(boot_vm_as(&mut sys, &mut vms, layout, 256), Err(BootError::Rejected), "{layout:?}");
        assert!(!vms.may_run(vm(1)));
    }
    // The signed layout, in a VM registered with another RAM window.
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    lay_out(&mut sys, &mut initial_rdata(false));
    let vmid = register_signed_layout(&mut sys, &mut vms, IpaRange::new(1 << 20, WINDOW.1).unwrap());
    let key = signing_key().verifying_key();
    assert_eq!(vms.verify_vm_image(&sys.m, &mut sys.mem, vmid, &verifier(&key, 256)), Err(BootError::Rejected));
    // A version-1 signature: the old domain over the image's hash alone.
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    let mut r = initial_rdata(false);
    let image = image();
    let old = [b"corevisor-image-v1".as_slice(), Sha512::digest(&image).as_slice()].concat();
    write_bytes(
        &mut sys,
        &mut r,
        IMAGE_PFNS[0] << 12,
        &[image.clone(), signing_key().sign(&old).to_bytes().to_vec()].concat(),
    );
    let vmid = register(&mut sys, &mut vms).unwrap();
    vms.set_boot_info(vmid, Ipa(IMAGE_GPA), IMAGE_LEN).unwrap();
    IMAGE_PFNS.iter().for_each(|&p| vms.remap_vm_image(&sys.mem, vmid, pfn(p), 0).unwrap());
    assert_eq!(vms.verify_vm_image(&sys.m, &mut sys.mem, vm(1), &verifier(&key, 256)), Err(BootError::Rejected));
    // A version-2 signature: the same layout, with the image's SHA-512 (before issue 13).
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    let mut r = initial_rdata(false);
    let message = |domain: &[u8], hash: &[u8]| {
        let counts = [1u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        let image = [IMAGE_GPA.to_le_bytes(), IMAGE_LEN.to_le_bytes()].concat();
        [domain, &WINDOW.0.to_le_bytes(), &WINDOW.1.to_le_bytes(), &counts, &image, hash].concat()
    };
    // (Built as the ABI builds today's message: only the domain and the hash differ.)
    let record = ImageRecord { gpa: IMAGE_GPA, size: IMAGE_LEN, sha256: Sha256::digest(&image).into() };
    let today = image_message(WINDOW.0, WINDOW.1, &[record], 0).unwrap();
    assert_eq!(today.as_bytes(), message(b"corevisor-image-v3", &record.sha256));
    let v2 = message(b"corevisor-image-v2", &Sha512::digest(&image));
    write_bytes(&mut sys, &mut r, IMAGE_PFNS[0] << 12, &[image, signing_key().sign(&v2).to_bytes().to_vec()].concat());
    let vmid = register(&mut sys, &mut vms).unwrap();
    vms.set_boot_info(vmid, Ipa(IMAGE_GPA), IMAGE_LEN).unwrap();
    IMAGE_PFNS.iter().for_each(|&p| vms.remap_vm_image(&sys.mem, vmid, pfn(p), 0).unwrap());
    assert_eq!(vms.verify_vm_image(&sys.m, &mut sys.mem, vm(1), &verifier(&key, 256)), Err(BootError::Rejected));
}

/// VERIFY takes and hashes a bounded number of pages per call and says how many are left; in
/// between, the images are fixed and the pages taken are the VM's.
#[test]
fn verification_goes_in_bounded_chunks() {
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    lay_out(&mut sys, &mut initial_rdata(false));
    let vmid = register_signed_layout(&mut sys, &mut vms, window());
    let key = signing_key().verifying_key();
    let verify =
        |vms: &mut TestVms, sys: &mut System| vms.verify_vm_image(&sys.m, &mut sys.mem, vmid, &verifier(&key, 1));
    assert_eq!(verify(&mut vms, &mut sys), Ok(2));
    assert_eq!(vms.get(vmid).unwrap().state, VmState::Verifying);
    assert!(sys.mem.map_page_host(&sys.m, IMAGE_PFNS[0] << 12).is_err(), "the first page is the VM's");
    assert!(sys.mem.map_page_host(&sys.m, IMAGE_PFNS[1] << 12).is_ok(), "the second is not taken yet");
    assert_eq!(vms.set_boot_info(vmid, Ipa(0xa_0000), 10), Err(BootError::State(VmState::Verifying)));
    assert_eq!(vms.set_vcpu_active(vmid, vcpu(0)), Err(BootError::State(VmState::Verifying)));
    assert_eq!(verify(&mut vms, &mut sys), Ok(1));
    assert_eq!(verify(&mut vms, &mut sys), Ok(0));
    assert!(vms.may_run(vmid));
    // A layout of two full chunks and a bit.
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    lay_out(&mut sys, &mut initial_rdata(false));
    assert_eq!(boot_vm_as(&mut sys, &mut vms, Layout::Signed, 2).map(|(_, a)| a), Ok(vec![1, 0]));
}

#[test]
fn registration_checks_every_argument() {
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    assert_eq!(vms.register_vcpu(vm(1), vcpu(0), || ()), Err(BootError::NoVm));
    let vmid = register(&mut sys, &mut vms).unwrap();
    // A vCPU index, like a vmid or a page number, is refused by its type before the boot layer.
    assert_eq!(VcpuId::new(MAX_VCPUS as u64), None);
    assert_eq!(VmId::new(0), None);
    assert_eq!(vms.register_vcpu(vmid, vcpu(MAX_VCPUS - 1), || ()), Ok(()));
    assert_eq!(vms.register_vcpu(vmid, vcpu(MAX_VCPUS - 1), || ()), Err(BootError::Vcpu), "registered twice");
    assert_eq!(vms.set_boot_info(vmid, Ipa(0x123), 10), Err(BootError::BadRange));
    assert_eq!(vms.set_boot_info(vmid, Ipa(1 << 39), 10), Err(BootError::BadRange));
    assert_eq!(vms.set_boot_info(vmid, Ipa(0), 0), Err(BootError::BadRange));
    assert_eq!(vms.set_boot_info(vmid, Ipa(!0xfff), 10), Err(BootError::BadRange));
    assert_eq!(vms.set_boot_info(vmid, Ipa(0), 10), Ok(0));
    assert_eq!(vms.set_boot_info(vmid, Ipa(0), 10), Err(BootError::BadRange), "overlapping images");
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(0x40080), 0), Err(BootError::BadPage), "KCore's page");
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(0x09000), 0), Err(BootError::BadPage), "MMIO");
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(0x40400), 1), Err(BootError::BadImage));
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(0x40400), 0), Ok(()));
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(0x40401), 0), Err(BootError::BadImage), "image complete");
    for _ in 1..MAX_VMS {
        register(&mut sys, &mut vms).unwrap();
    }
    assert_eq!(register(&mut sys, &mut vms), Err(BootError::NoVmid));
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
    /// BOOT_DATA: VM, guest address, host page.
    BootData(u16, u64, u64),
}

/// BOOT_DATA's guest addresses: the tests' boot-data pages, an image's page, unaligned, past the
/// cap, outside the window, and anything.
fn any_boot_data_gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0..3u64).prop_map(|page| BOOT_DATA_GPA + page * PAGE_SIZE),
        1 => prop_oneof![Just(IMAGE_GPA + PAGE_SIZE), Just(DATA_GPA), Just(BOOT_DATA_GPA + 8)],
        1 => prop_oneof![Just(BOOT_DATA_GPA + MAX_BOOT_DATA_PAGES * PAGE_SIZE), Just(WINDOW.1), Just(WINDOW.1 - PAGE_SIZE)],
        1 => any::<u64>(),
    ]
}

/// BOOT_DATA ops on VM `vmid`: pages from the tests' boot-data address on, the host's pages.
fn boot_data_ops(vmid: u16) -> Vec<BootOp> {
    BOOT_DATA_PFNS
        .iter()
        .enumerate()
        .map(|(i, &p)| BootOp::BootData(vmid, BOOT_DATA_GPA + i as u64 * PAGE_SIZE, p))
        .collect()
}

/// Load addresses: the usual ones, ones near the end of the guest's input range and of `u64`
/// (ranges that end past the window or wrap), and anything.
fn any_gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => prop_oneof![Just(IMAGE_GPA), Just(DATA_GPA), Just(0x8_1000), Just(0)],
        1 => prop_oneof![Just(INPUT_LIMIT - 0x1000), Just(INPUT_LIMIT), Just(!0xfffu64), Just(0x8_0800)],
        1 => any::<u64>(),
    ]
}

/// Image sizes: the test image's, tiny, empty, around the per-VM cap, and sizes that wrap.
fn any_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => prop_oneof![Just(IMAGE_LEN), Just(DATA_LEN)],
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
        4 => (vmid.clone(), any_pfn(), prop_oneof![4 => Just(0usize), 2 => Just(1), 1 => Just(usize::MAX)])
            .prop_map(|(v, p, i)| BootOp::Remap(v, p, i)),
        2 => vmid.clone().prop_map(BootOp::Verify),
        1 => vmid.clone().prop_map(BootOp::PowerOff),
        1 => (vmid.clone(), 0usize..2).prop_map(|(v, c)| BootOp::Activate(v, c)),
        1 => (0u64..(3 * 512), 1u64..1000).prop_map(|(w, v)| BootOp::Tamper((IMAGE_PFNS[0] << 12) + w * 8, v)),
        2 => (vmid, any_boot_data_gpa(), prop_oneof![4 => prop_oneof![Just(BOOT_DATA_PFNS[0]), Just(BOOT_DATA_PFNS[1])], 1 => any_pfn()])
            .prop_map(|(v, g, p)| BootOp::BootData(v, g, p)),
    ]
}

/// Sequences of boot operations: single random ones, and whole layouts (signed, or laid out
/// otherwise) so that verification meets every kind of layout; with a verification chunk of 1,
/// 2 or the ABI's pages.
fn any_boot_sequence() -> impl Strategy<Value = (u64, Vec<BootOp>)> {
    let layout = prop_oneof![3 => Just(Layout::Signed), 1 => Just(Layout::Moved), 1 => Just(Layout::Swapped), 1 => Just(Layout::Foreign)];
    let step = prop_oneof![
        8 => any_boot_op().prop_map(|op| vec![op]),
        // A layout, then enough VERIFY calls to finish it with chunks of one page.
        2 => (prop_oneof![3 => Just(1u16), 1 => Just(2)], layout)
            .prop_map(|(v, l)| [layout_ops(v, l), vec![BootOp::Verify(v); 3]].concat()),
        // Boot data for a VM, before or after one of its vCPUs ran.
        1 => (prop_oneof![3 => Just(1u16), 1 => Just(2)], any::<bool>()).prop_map(|(v, ran)| {
            let run = if ran { vec![BootOp::RegisterVcpu(v, 0), BootOp::Activate(v, 0)] } else { vec![] };
            [run, boot_data_ops(v)].concat()
        }),
    ];
    // Mostly starting with VMs 1 and 2 registered, so that layouts meet READY VMs.
    let start = prop_oneof![3 => Just(vec![BootOp::RegisterVm, BootOp::RegisterVm]), 1 => Just(vec![])];
    (prop_oneof![Just(1u64), Just(2), Just(VERIFY_CHUNK_PAGES)], start, proptest::collection::vec(step, 40..70))
        .prop_map(|(chunk, start, steps)| (chunk, [start, steps.concat()].concat()))
}

/// Runs boot operations on the system and the spec side by side. The host's numbers enter as
/// the trap edge takes them: a vmid, vCPU index or page number that its type refuses never
/// reaches the boot layer (the types' own tests show the refusal).
fn boot_refines((chunk_pages, ops): &(u64, Vec<BootOp>)) -> Result<(), TestCaseError> {
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    let mut r = initial_rdata(false);
    lay_out(&mut sys, &mut r);
    let mut abs = AbsVms::of(&vms);
    let key = signing_key().verifying_key();
    let verifier = verifier(&key, *chunk_pages);
    let probes: BTreeSet<u64> =
        IMAGE_PFNS.iter().copied().chain([DATA_PFN, FOREIGN_PFN, 0x40080]).chain(BOOT_DATA_PFNS).collect();
    for &op in ops {
        let id = |v: u16| VmId::new(v.into());
        let same = match op {
            BootOp::RegisterVm => {
                let (a, m, expected) = register_vm_spec(&abs, &r, window()).unwrap();
                (abs, r) = (a, m);
                register(&mut sys, &mut vms) == expected
            }
            BootOp::RegisterVcpu(v, c) => match (id(v), VcpuId::new(c as u64)) {
                (Some(v), Some(c)) => {
                    let (a, m, expected) = register_vcpu_spec(&abs, &r, v, c).unwrap();
                    (abs, r) = (a, m);
                    vms.register_vcpu(v, c, || ()) == expected
                }
                _ => true,
            },
            BootOp::SetBootInfo(v, g, s) => match id(v) {
                Some(v) => {
                    let (a, m, expected) = set_boot_info_spec(&abs, &r, v, Ipa(g), s).unwrap();
                    (abs, r) = (a, m);
                    vms.set_boot_info(v, Ipa(g), s) == expected
                }
                None => true,
            },
            BootOp::Remap(v, p, i) => match (id(v), Pfn::new(p)) {
                (Some(v), Some(p)) => {
                    let Some((a, m, expected)) = remap_vm_image_spec(&abs, &r, v, p, i) else {
                        let e = format!("{op:?}: a page number past the physical address size reached the boot layer");
                        return Err(TestCaseError::fail(e));
                    };
                    (abs, r) = (a, m);
                    vms.remap_vm_image(&sys.mem, v, p, i) == expected
                }
                _ => true,
            },
            // Only VMs whose stage-2 the spec's memory knows (the harness's three tables).
            BootOp::Verify(v) if VMS.contains(&v) || id(v).is_some_and(|v| vms.get(v).is_none()) => {
                let v = id(v).unwrap();
                let (a, m, expected) = verify_vm_image_spec(&abs, &r, v, &verifier).unwrap();
                (abs, r) = (a, m);
                if expected == Ok(0) {
                    VERIFIED.with(|n| n.set(n.get() + 1));
                }
                vms.verify_vm_image(&sys.m, &mut sys.mem, v, &verifier) == expected
            }
            BootOp::Verify(_) => true,
            BootOp::PowerOff(v) => match id(v) {
                Some(v) => {
                    let (a, m, expected) = power_off_spec(&abs, &r, v).unwrap();
                    (abs, r) = (a, m);
                    vms.power_off(v) == expected
                }
                None => true,
            },
            BootOp::Activate(v, c) => match (id(v), VcpuId::new(c as u64)) {
                (Some(v), Some(c)) => {
                    let (a, m, expected) = set_vcpu_active_spec(&abs, &r, v, c).unwrap();
                    (abs, r) = (a, m);
                    vms.set_vcpu_active(v, c) == expected
                }
                _ => true,
            },
            BootOp::BootData(v, g, p) if VMS.contains(&v) || id(v).is_some_and(|v| vms.get(v).is_none()) => {
                let Some(p) = Pfn::new(p) else { continue };
                let v = id(v).unwrap();
                let (a, m, expected) = load_boot_data_spec(&abs, &r, v, Ipa(g), p).unwrap();
                (abs, r) = (a, m);
                if expected.is_ok() {
                    BOOT_DATA_LOADED.with(|n| n.set(n.get() + 1));
                }
                vms.load_boot_data(&sys.m, &mut sys.mem, v, Ipa(g), p) == expected
            }
            BootOp::BootData(..) => true,
            BootOp::Tamper(pa, value) => {
                let op = Op::HostStore(pa, value);
                let (m, expected) = spec_apply(&r, &op).unwrap();
                r = m;
                sys.apply(&op) == expected
            }
        };
        prop_assert!(same, "result of {:?} differs from the spec", op);
        prop_assert_eq!(&AbsVms::of(&vms), &abs, "VM records differ after {:?}", op);
        prop_assert!(vms.index_agrees(&sys.mem), "the index of listed pages is wrong after {:?}", op);
        if let Err(e) = relate_all(&sys, &vms, &r, &probes) {
            return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
        }
    }
    Ok(())
}

std::thread_local! {
    /// Verifications the spec expected to succeed: the property is not vacuous.
    static VERIFIED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Boot-data pages the spec expected to be taken.
    static BOOT_DATA_LOADED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn boot_operations_refine_their_specs(ops in any_boot_sequence()) {
        boot_refines(&ops)?;
    }
}

#[test]
fn the_boot_sequences_reach_verified_vms() {
    // A fixed seed: the count does not vary from run to run, so this cannot fail by chance.
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    VERIFIED.with(|n| n.set(0));
    BOOT_DATA_LOADED.with(|n| n.set(0));
    runner.run(&any_boot_sequence(), |ops| boot_refines(&ops)).unwrap();
    let verified = VERIFIED.with(|n| n.get());
    let boot_data = BOOT_DATA_LOADED.with(|n| n.get());
    println!("{verified} verifications, {boot_data} boot-data pages taken in 64 sequences");
    assert!(verified >= 10, "only {verified} verified");
    assert!(boot_data >= 5, "only {boot_data} boot-data pages taken");
}

#[test]
fn refinement_catches_a_signature_over_the_image_alone() {
    catches(Mutation::SignatureOverImageOnly, 256, any_boot_sequence(), |ops| boot_refines(&ops));
    // And directly: with the bug, the entry image verifies whatever data image comes with it.
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    lay_out(&mut sys, &mut initial_rdata(false));
    assert_eq!(
        with(Mutation::SignatureOverImageOnly, || boot_vm_as(&mut sys, &mut vms, Layout::Foreign, 256)),
        Err(BootError::Rejected)
    );
}

#[test]
fn refinement_catches_a_verification_that_skips_a_byte() {
    catches(Mutation::VerifyIgnoresLastByte, 256, any_boot_sequence(), |ops| boot_refines(&ops));
    // And directly: with the bug, the hash no longer covers what was signed, so a good image is
    // turned away.
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    lay_out(&mut sys, &mut initial_rdata(false));
    assert_eq!(with(Mutation::VerifyIgnoresLastByte, || boot_vm(&mut sys, &mut vms)), Err(BootError::Rejected));
}

#[test]
fn refinement_catches_boot_data_after_the_first_run() {
    catches(Mutation::BootDataAfterFirstRun, 256, any_boot_sequence(), |ops| boot_refines(&ops));
}

/// BOOT_DATA: a verified VM takes the host's page with its bytes (not scrubbed), the host loses
/// it, and the VM's first run closes the door.
#[test]
fn boot_data_keeps_its_bytes_and_stops_at_the_first_run() {
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    let mut r = initial_rdata(false);
    lay_out(&mut sys, &mut r);
    write_bytes(&mut sys, &mut r, BOOT_DATA_PFNS[0] << 12, b"\xd0\x0d\xfe\xedtree");
    let early = register(&mut sys, &mut vms).unwrap();
    assert_eq!(
        vms.load_boot_data(&sys.m, &mut sys.mem, early, Ipa(BOOT_DATA_GPA), pfn(BOOT_DATA_PFNS[0])),
        Err(BootError::State(VmState::Ready))
    );
    let vmid = boot_vm(&mut sys, &mut vms).unwrap();
    let load = |vms: &mut TestVms, sys: &mut System, gpa: u64, p: u64| {
        vms.load_boot_data(&sys.m, &mut sys.mem, vmid, Ipa(gpa), pfn(p))
    };
    assert_eq!(load(&mut vms, &mut sys, IMAGE_GPA + PAGE_SIZE, BOOT_DATA_PFNS[0]), Err(BootError::BadRange));
    assert_eq!(load(&mut vms, &mut sys, WINDOW.1, BOOT_DATA_PFNS[0]), Err(BootError::BadRange));
    assert_eq!(load(&mut vms, &mut sys, BOOT_DATA_GPA, BOOT_DATA_PFNS[0]), Ok(()));
    // The next page must follow the first.
    assert_eq!(load(&mut vms, &mut sys, BOOT_DATA_GPA + 2 * PAGE_SIZE, BOOT_DATA_PFNS[1]), Err(BootError::BadRange));
    let page = sys.mem.db.get(BOOT_DATA_PFNS[0] << 12).unwrap();
    assert_eq!((page.owner, page.gfn), (Owner::Vm(vmid.vmid()), BOOT_DATA_GPA >> 12));
    assert_eq!(sys.m.read_u64(BOOT_DATA_PFNS[0] << 12), u64::from_le_bytes(*b"\xd0\x0d\xfe\xedtree"));
    assert_eq!(vms.get(vmid).unwrap().boot_data, Some(BootData { base: Ipa(BOOT_DATA_GPA), pages: 1 }));
    vms.register_vcpu(vmid, vcpu(0), || ()).ok();
    vms.set_vcpu_active(vmid, vcpu(0)).unwrap();
    assert_eq!(load(&mut vms, &mut sys, BOOT_DATA_GPA + PAGE_SIZE, BOOT_DATA_PFNS[1]), Err(BootError::Started));
}

#[test]
fn refinement_catches_an_unchecked_page_number() {
    catches(Mutation::RemapTakesAnyPfn, 256, any_boot_sequence(), |ops| boot_refines(&ops));
}

/// A VM with one image of `pages` pages, ready for its pages to be listed.
fn vm_with_image(sys: &mut System, vms: &mut TestVms, pages: u64) -> VmId {
    let vmid = register(sys, vms).unwrap();
    assert_eq!(vms.set_boot_info(vmid, Ipa(0), pages * PAGE_SIZE - SIGNATURE_LEN), Ok(0));
    vmid
}

/// Finding 5 of issue 11: a page number with bits above the physical address size names the
/// same page as the number without them once shifted; it used to be listed again and again,
/// each time growing the list, until KCore's heap ran out. Such a number never becomes a `Pfn`,
/// so it cannot reach the boot layer; the page it aliases is still listed once.
#[test]
fn a_page_number_past_the_physical_address_size_is_refused() {
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    let vmid = vm_with_image(&mut sys, &mut vms, 4);
    let page = IMAGE_PFNS[0];
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(page), 0), Ok(()));
    for alias in [page | 1 << 52, page | 1 << 40, page | 1 << 28, u64::MAX] {
        assert_eq!(Pfn::new(alias), None, "{alias:#x}");
    }
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(page), 0), Err(BootError::BadPage), "listed twice");
    assert_eq!(vms.get(vmid).unwrap().load[0].pfns, vec![pfn(page)]);
    assert_eq!(Pfn::new((OUTPUT_LIMIT >> 12) - 1).map(|p| p.pa().raw()), Some(OUTPUT_LIMIT - PAGE_SIZE));
    assert_eq!(Pfn::new(OUTPUT_LIMIT >> 12), None);
    assert_eq!(crate::memory::checked_pa(OUTPUT_LIMIT >> 12), Err(MemError::BadPfn));
}

/// The per-VM cap: a VM's images fill at most `MAX_IMAGE_BYTES`; with that many pages listed,
/// the next REMAP_VM_IMAGE and the next SET_BOOT_INFO are refused, and no list grew past its
/// capacity (listing never allocates).
#[test]
fn image_lists_stop_at_the_cap() {
    let (mut sys, mut vms) = (System::new(false), TestVms::new());
    let first = 0x44000;
    let vmid = vm_with_image(&mut sys, &mut vms, MAX_IMAGE_PAGES);
    for p in first..first + MAX_IMAGE_PAGES {
        assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(p), 0), Ok(()));
    }
    let next = first + MAX_IMAGE_PAGES;
    assert_eq!(vms.remap_vm_image(&sys.mem, vmid, pfn(next), 0), Err(BootError::BadImage));
    assert_eq!(vms.set_boot_info(vmid, Ipa(1 << 32), 1), Err(BootError::BadRange), "a second image past the cap");
    let load = &vms.get(vmid).unwrap().load[0];
    assert_eq!((load.pfns.len() as u64, load.pfns.capacity() as u64), (MAX_IMAGE_PAGES, MAX_IMAGE_PAGES));
    // One image cannot exceed the cap either, nor wrap its size into a small one.
    let other = register(&mut sys, &mut vms).unwrap();
    for size in [MAX_IMAGE_BYTES - SIGNATURE_LEN + 1, u64::MAX, u64::MAX - SIGNATURE_LEN + 1] {
        assert_eq!(vms.set_boot_info(other, Ipa(0), size), Err(BootError::BadRange), "{size:#x}");
    }
    // A page listed for one VM cannot be listed for another.
    assert_eq!(vms.set_boot_info(other, Ipa(0), 10), Ok(0));
    assert_eq!(vms.remap_vm_image(&sys.mem, other, pfn(first), 0), Err(BootError::BadPage));
    assert!(vms.index_agrees(&sys.mem));
    // Teardown unlists the pages.
    assert!(vms.remove(&sys.mem, vmid).is_some());
    assert!(vms.get(vmid).is_none());
    assert_eq!(vms.remap_vm_image(&sys.mem, other, pfn(first), 0), Ok(()));
    assert!(vms.index_agrees(&sys.mem));
}

//! Directed tests of the VM operations on the model machine: a VM's whole life through the
//! hypercalls, and the refusals that keep the host out.

use super::*;
use crate::addr::{Ipa, IpaRange, Pa, Pfn};
use crate::boot::testing::sign_layout;
use crate::ids::{VcpuId, VmId};
use crate::machine::model::ModelMachine;
use crate::memory::system::{System, POOLS};
use crate::vcpu::Pending;
use ed25519_dalek::SigningKey;

const GUEST_RAM: u64 = 0x4000_0000;
const IMAGE_PFN: u64 = 0x48000;
const IMAGE_LEN: u64 = 3000;

fn vm(raw: u64) -> VmId {
    VmId::new(raw).unwrap()
}

fn vcpu(raw: u64) -> VcpuId {
    VcpuId::new(raw).unwrap()
}

fn pfn(raw: u64) -> Pfn {
    Pfn::new(raw).unwrap()
}

fn pa(raw: u64) -> Pa {
    Pa::new(raw).unwrap()
}

fn ram(base: u64, size: u64) -> IpaRange {
    IpaRange::new(base, size).unwrap()
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

fn kcore() -> (ModelMachine, Kcore) {
    let System { m, mem, .. } = System::new(false);
    let kcore = Kcore::new(mem, POOLS + (1 << 32), key().verifying_key());
    (m, kcore)
}

/// Writes a signed image into host page IMAGE_PFN (image then signature); `flip` flips a byte.
fn lay_out_image(m: &ModelMachine, flip: Option<u64>) {
    let image: Vec<u8> = (0..IMAGE_LEN).map(|i| (i * 13 + 1) as u8).collect();
    let mut bytes = sign_layout(&key(), GUEST_RAM, 16 << 20, &[(GUEST_RAM, &image)]).remove(0);
    if let Some(at) = flip {
        bytes[at as usize] ^= 0x40;
    }
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        m.write_u64((IMAGE_PFN << 12) + 8 * i as u64, u64::from_le_bytes(word));
    }
}

/// REGISTER_VM, REGISTER_VCPU, SET_BOOT_INFO, REMAP and VERIFY, as KServ does them.
fn boot(m: &ModelMachine, k: &mut Kcore) -> Result<VmId, VmError> {
    let vmid = k.register_vm(m, ram(GUEST_RAM, 16 << 20))?;
    k.register_vcpu(vmid, vcpu(0))?;
    let index = k.set_boot_info(vmid, Ipa(GUEST_RAM), IMAGE_LEN)?;
    k.remap_vm_image(vmid, index as u64, pfn(IMAGE_PFN))?;
    k.verify_vm_image(m, vmid)?;
    Ok(vmid)
}

#[test]
fn a_verified_vm_runs_from_its_image_and_gets_pages_on_demand() {
    let (m, mut k) = kcore();
    lay_out_image(&m, None);
    let vmid = boot(&m, &mut k).unwrap();
    // The host lost the image page.
    assert!(k.mem.lock().map_page_host(&m, IMAGE_PFN << 12).is_err());
    let mut ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).unwrap();
    assert_eq!(ticket.ctx.gprs.frame.elr, GUEST_RAM);
    assert_eq!(ticket.vttbr >> 48, vmid.raw());
    // While it runs, it cannot be run again, torn down, or destroyed.
    assert_eq!(k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).err(), Some(VmError::State));
    // The guest faults on RAM page 0x4010_0000; the host offers a page with old data in it.
    ticket.ctx.pending = Pending::PageFault { gfn: 0x40100 };
    k.vcpu_run_finish(ticket);
    let offered = 0x48100;
    m.write_u64(offered << 12, 0xdead);
    k.mem.lock().map_page_host(&m, offered << 12).unwrap();
    assert_eq!(
        k.vcpu_run_prepare(&m, vmid, vcpu(0), IMAGE_PFN).err(),
        Some(VmError::Mem(MemError::NotOwned(Owner::Vm(1))))
    );
    let ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), offered).unwrap();
    assert_eq!(ticket.ctx.pending, Pending::Nothing);
    assert_eq!(m.read_u64(offered << 12), 0, "the offered page is scrubbed before the guest sees it");
    assert!(k.mem.lock().host_s2.walk(&m, offered << 12).is_none(), "and the host lost it");
    let leaf = k.vms().get(vmid).unwrap().s2.walk(&m, 0x4010_0000).unwrap();
    assert_eq!(leaf.translate(0x4010_0000), offered << 12);
    k.vcpu_run_finish(ticket);
    assert!(k.check_invariants(&m).is_ok());
}

#[test]
fn a_flipped_byte_leaves_the_vm_unrunnable() {
    for flip in [0, IMAGE_LEN - 1, IMAGE_LEN, IMAGE_LEN + 63] {
        let (m, mut k) = kcore();
        lay_out_image(&m, Some(flip));
        assert_eq!(boot(&m, &mut k), Err(VmError::Boot(BootError::Rejected)), "flip at {flip}");
        assert_eq!(k.vcpu_run_prepare(&m, vm(1), vcpu(0), 0).err(), Some(VmError::State));
        assert_eq!(k.verify_vm_image(&m, vm(1)).err(), Some(VmError::Boot(BootError::State(VmState::Rejected))));
        // Teardown returns the image page to the host, scrubbed.
        assert_eq!(k.destroy(&m, vm(1)), Ok(1));
        assert_eq!(m.read_u64(IMAGE_PFN << 12), 0);
        assert!(k.mem.lock().map_page_host(&m, IMAGE_PFN << 12).is_ok());
        assert_eq!(k.vcpu_run_prepare(&m, vm(1), vcpu(0), 0).err(), Some(VmError::NoVm));
        // Its image page may carry another VM's image now.
        let vmid = k.register_vm(&m, ram(GUEST_RAM, 1 << 20)).unwrap();
        let index = k.set_boot_info(vmid, Ipa(GUEST_RAM), 100).unwrap() as u64;
        assert_eq!(k.remap_vm_image(vmid, index, pfn(IMAGE_PFN)), Ok(()));
    }
}

#[test]
fn teardown_waits_for_power_off_and_scrubs_every_page() {
    let (m, mut k) = kcore();
    lay_out_image(&m, None);
    let vmid = boot(&m, &mut k).unwrap();
    assert_eq!(k.clear_vm_range(&m, vmid, pa(IMAGE_PFN << 12), 4096), Err(VmError::State));
    assert_eq!(k.destroy(&m, vmid), Err(VmError::State));
    let ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).unwrap();
    k.power_off(vmid).unwrap();
    assert_eq!(k.clear_vm_range(&m, vmid, pa(IMAGE_PFN << 12), 4096), Err(VmError::Busy));
    k.vcpu_run_finish(ticket);
    assert_eq!(k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).err(), Some(VmError::State));
    assert_eq!(k.clear_vm_range(&m, vmid, pa((IMAGE_PFN - 4) << 12), 8 << 12), Ok(1));
    assert_eq!(m.read_u64(IMAGE_PFN << 12), 0);
    assert_eq!(k.destroy(&m, vmid), Ok(0));
}

#[test]
fn malformed_arguments_are_refused_without_effect() {
    let (m, mut k) = kcore();
    for (base, size) in [(0, 0), (1, 4096), (0, 4097), (!0xfffu64, 8192), (0, 8 << 30), (1 << 39, 4096)] {
        let refused = IpaRange::new(base, size).ok_or(VmError::BadArgument).and_then(|ram| k.register_vm(&m, ram));
        assert_eq!(refused, Err(VmError::BadArgument), "{base:#x}+{size:#x}");
    }
    assert_eq!(k.core.lock().next_vmid, 1);
    let vmid = k.register_vm(&m, ram(GUEST_RAM, 1 << 20)).unwrap();
    // Ids that name no VM or vCPU are refused where they enter (the trap edge).
    assert_eq!(host_vcpu(8), Err(VmError::BadArgument));
    assert_eq!(host_vm(0), Err(VmError::NoVm));
    assert_eq!(host_vm(u64::MAX), Err(VmError::NoVm));
    assert_eq!(k.register_vcpu(vm(2), vcpu(0)), Err(VmError::NoVm));
    // Images must fit in the VM's RAM with their signature.
    assert_eq!(k.set_boot_info(vmid, Ipa(GUEST_RAM - 4096), 100), Err(VmError::BadArgument));
    assert_eq!(k.set_boot_info(vmid, Ipa(GUEST_RAM + (1 << 20) - 4096), 4096), Err(VmError::BadArgument));
    assert_eq!(k.set_boot_info(vmid, Ipa(GUEST_RAM), u64::MAX), Err(VmError::BadArgument));
    // The host cannot list KCore's page, or a page twice.
    let index = k.set_boot_info(vmid, Ipa(GUEST_RAM), 5000).unwrap() as u64;
    assert!(k.remap_vm_image(vmid, index, pfn(0x40080)).is_err());
    assert!(k.remap_vm_image(vmid, 9, pfn(IMAGE_PFN)).is_err());
    k.remap_vm_image(vmid, index, pfn(IMAGE_PFN)).unwrap();
    assert!(k.remap_vm_image(vmid, index, pfn(IMAGE_PFN)).is_err());
    // Devices only, never RAM, never inside the VM's RAM window.
    let io = |k: &mut Kcore, gpa, p| k.ioremap(&m, vmid, Ipa(gpa), pa(p), 4096);
    assert_eq!(io(&mut k, 0x0900_0000, 0x4800_0000), Err(VmError::Mem(MemError::IsRam)));
    assert_eq!(io(&mut k, GUEST_RAM, 0x0900_0000), Err(VmError::BadArgument));
    assert_eq!(io(&mut k, 0x0900_0000, 0x0900_0000), Ok(()));
    assert_eq!(io(&mut k, 0x0904_0000, 0x0803_0000), Err(VmError::Mem(MemError::Protected)));
    // A never-verified VM does not run.
    assert_eq!(k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).err(), Some(VmError::State));
    assert_eq!(host_vcpu(99).err(), Some(VmError::BadArgument));
}

#[test]
fn guests_share_only_their_own_mapped_ram() {
    let (m, mut k) = kcore();
    lay_out_image(&m, None);
    let vmid = boot(&m, &mut k).unwrap();
    assert_eq!(k.guest_share(&m, vmid, true, Ipa(GUEST_RAM), 4096), Ok(()));
    assert_eq!(k.mem.lock().db.get(IMAGE_PFN << 12).unwrap().count, 1);
    assert!(k.mem.lock().map_page_host(&m, IMAGE_PFN << 12).is_ok(), "a shared page is the host's to map");
    for (gpa, size) in [(GUEST_RAM + 1, 4096), (GUEST_RAM, 0), (GUEST_RAM - 4096, 8192), (GUEST_RAM, !0xfffu64)] {
        assert_eq!(k.guest_share(&m, vmid, true, Ipa(gpa), size), Err(VmError::BadArgument));
    }
    assert_eq!(k.guest_share(&m, vmid, false, Ipa(GUEST_RAM), 4096), Ok(()));
    assert!(k.mem.lock().host_s2.walk(&m, IMAGE_PFN << 12).is_none(), "unsharing unmaps it from the host");
    assert_eq!(k.guest_share(&m, vmid, false, Ipa(GUEST_RAM), 4096), Err(VmError::Mem(MemError::NotShared)));
}

#[test]
fn an_offer_the_vm_cannot_map_goes_back_to_the_host() {
    let (m, mut k) = kcore();
    lay_out_image(&m, None);
    let vmid = boot(&m, &mut k).unwrap();
    let mut ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).unwrap();
    // A fault reported on a page the VM already maps (its image): the offer cannot be mapped.
    ticket.ctx.pending = Pending::PageFault { gfn: GUEST_RAM >> 12 };
    k.vcpu_run_finish(ticket);
    let offered = 0x48100;
    m.write_u64(offered << 12, 0xfeed);
    assert!(matches!(k.vcpu_run_prepare(&m, vmid, vcpu(0), offered), Err(VmError::Mem(MemError::PageTable(_)))));
    let page = k.mem.lock().db.get(offered << 12).unwrap();
    assert_eq!(page.owner, Owner::Host, "the offer is undone");
    assert_eq!(m.read_u64(offered << 12), 0, "and scrubbed: it was the VM's for a moment");
    assert!(k.check_invariants(&m).is_ok());
}

/// Issue 14: two vCPUs on two cores fault on the same page; the host answers both with the
/// page, and the first answer maps it. The second answer names the page the VM already maps at
/// that gfn: the fault is served, and the page keeps what the guest wrote into it since (it is
/// neither taken again nor scrubbed). Returns the first failed check.
fn a_fault_a_sibling_served_keeps_its_page(written: u64) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert_eq;
    let (m, mut k) = kcore();
    lay_out_image(&m, None);
    let vmid = boot(&m, &mut k).unwrap();
    let (gfn, page) = (0x40100, 0x48100u64);
    let mut ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).unwrap();
    ticket.ctx.pending = Pending::PageFault { gfn };
    k.vcpu_run_finish(ticket);
    let mut ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), page).unwrap();
    m.write_u64(page << 12, written);
    // The sibling's fault on the same gfn, reported before the first answer mapped it.
    ticket.ctx.pending = Pending::PageFault { gfn };
    k.vcpu_run_finish(ticket);
    let ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), page);
    prop_assert_eq!(ticket.as_ref().err(), None);
    k.vcpu_run_finish(ticket.unwrap());
    prop_assert_eq!(k.mem.lock().db.get(page << 12).unwrap().owner, Owner::Vm(vmid.vmid()));
    prop_assert_eq!(m.read_u64(page << 12), written, "the guest's data survives the second answer");
    prop_assert_eq!(k.check_invariants(&m), Ok(()));
    Ok(())
}

#[test]
fn a_fault_a_sibling_vcpu_served_first_takes_nothing() {
    a_fault_a_sibling_served_keeps_its_page(0x5eed_da7a).unwrap();
}

#[test]
fn a_fault_served_twice_that_scrubs_again_is_caught() {
    crate::mutation::catches(
        crate::mutation::Mutation::ServedFaultPageScrubbed,
        8,
        1u64..,
        a_fault_a_sibling_served_keeps_its_page,
    );
}

/// REMAP_VM_IMAGE with a page number past the physical address size (an alias of a real page
/// once shifted) answers INVALID_ADDRESS and lists nothing: the number never becomes a `Pfn`.
#[test]
fn remap_refuses_a_page_number_past_the_physical_address_size() {
    let (m, k) = kcore();
    let vmid = k.register_vm(&m, ram(GUEST_RAM, 16 << 20)).unwrap();
    k.set_boot_info(vmid, Ipa(GUEST_RAM), IMAGE_LEN).unwrap();
    let refused = host_pfn(IMAGE_PFN | 1 << 52).and_then(|p| k.remap_vm_image(vmid, 0, p)).unwrap_err();
    assert_eq!(refused, VmError::Boot(BootError::Mem(MemError::BadPfn)));
    assert_eq!(refused.status(), Status::InvalidAddress);
    assert!(k.vms().get(vmid).unwrap().load[0].pfns.is_empty());
    assert_eq!(k.remap_vm_image(vmid, 0, pfn(IMAGE_PFN)), Ok(()));
}

/// Issue 11, finding 5: a page offer whose number has bits above the 40-bit physical address
/// space is refused; it is not taken for the page its low bits name (here, the image page the
/// guest runs from, or a free page the host still uses).
#[test]
fn a_page_offer_beyond_the_physical_address_space_is_refused() {
    let (m, mut k) = kcore();
    lay_out_image(&m, None);
    let vmid = boot(&m, &mut k).unwrap();
    let mut ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).unwrap();
    ticket.ctx.pending = Pending::PageFault { gfn: 0x40100 };
    k.vcpu_run_finish(ticket);
    let free = 0x48100u64;
    m.write_u64(free << 12, 0xdead);
    // Bit 63 asks for a 2 MiB block (issue 13): u64::MAX is a block offer of an unaligned run,
    // refused as such (the pages below stay untouched); without bit 63 it is BadPfn.
    let refused = k.vcpu_run_prepare(&m, vmid, vcpu(0), u64::MAX).err();
    assert_eq!(refused, Some(VmError::Mem(MemError::PageTable(crate::page_table::PtError::BadRange))));
    for offer in [free | 1 << 52, free | 1 << 28, IMAGE_PFN | 1 << 40, u64::MAX >> 1] {
        assert_eq!(
            k.vcpu_run_prepare(&m, vmid, vcpu(0), offer).err(),
            Some(VmError::Mem(MemError::BadPfn)),
            "offer {offer:#x}"
        );
        assert_eq!(VmError::Mem(MemError::BadPfn).status(), Status::InvalidAddress);
    }
    assert_eq!(k.mem.lock().db.get(free << 12).unwrap().owner, Owner::Host, "the aliased page stays the host's");
    assert_eq!(m.read_u64(free << 12), 0xdead, "and unscrubbed");
    // The memory layer refuses such numbers in every transition.
    let mut mem = k.mem.lock();
    let alias = free | 1 << 40;
    assert_eq!(mem.assign_pfn_to_vm(&m, 1, 0x40101, alias), Err(MemError::BadPfn));
    assert_eq!(mem.grant_vm_page(1, IMAGE_PFN | 1 << 40), Err(MemError::BadPfn));
    assert_eq!(mem.revoke_vm_page(&m, 1, IMAGE_PFN | 1 << 40), Err(MemError::BadPfn));
    drop(mem);
    let (mut vms, mut mem) = k.lock_all();
    let s2 = &mut vms.get_mut(vmid).unwrap().s2;
    assert_eq!(mem.clear_vm_page(&m, s2, 1, IMAGE_PFN | 1 << 63), Err(MemError::BadPfn));
    assert_eq!(mem.clear_vm_range(&m, s2, 1, IMAGE_PFN, u64::MAX), Err(MemError::BadPfn));
    assert_eq!(mem.clear_vm_range(&m, s2, 1, (1 << 28) - 1, 2), Err(MemError::BadPfn));
    assert_eq!(mem.map_pfn_vm(&m, s2, 1, 0x40000, IMAGE_PFN | 1 << 40), Err(MemError::BadPfn));
    assert_eq!(crate::memory::checked_pa((1 << 28) - 1), Ok(((1 << 28) - 1) << 12));
    drop((vms, mem));
    // Now the real page: taken, scrubbed, mapped.
    k.vcpu_run_prepare(&m, vmid, vcpu(0), free).unwrap();
    assert_eq!(m.read_u64(free << 12), 0);
}

/// Issue 11, finding 3: the host writes the signed image through its cacheable mapping and
/// other bytes through a non-cacheable alias (they stay in DRAM, behind its dirty lines). KCore
/// hashes the image after the hand-over's clean and invalidate, so what it checked is what DRAM
/// holds, which is what a guest with its MMU off runs.
#[test]
fn the_image_kcore_hashes_is_what_dram_holds_after_the_hand_over() {
    fn run(m: &ModelMachine, k: &mut Kcore) -> bool {
        lay_out_image(m, None);
        for word in (0..IMAGE_LEN).step_by(64) {
            m.dram_write_u64((IMAGE_PFN << 12) + word / 8 * 8, 0xbad_c0de);
        }
        boot(m, k).unwrap();
        let page = IMAGE_PFN << 12..(IMAGE_PFN + 1) << 12;
        m.words(page.clone()) == m.dram_words(page)
    }
    let (m, mut k) = kcore();
    assert!(run(&m, &mut k), "DRAM differs from the image KCore verified");
    // Without the clean on take, the signature checks out over bytes the guest would not run.
    let (m, mut k) = kcore();
    assert!(!crate::mutation::with(crate::mutation::Mutation::SkipCleanOnTake, || run(&m, &mut k)));
}

/// Issue 11, finding 3: a page scrubbed at teardown is zero in DRAM too, even when the VM's data
/// had already been written back there.
#[test]
fn a_torn_down_page_is_zero_in_dram() {
    let (m, mut k) = kcore();
    lay_out_image(&m, None);
    let vmid = boot(&m, &mut k).unwrap();
    m.write_u64(IMAGE_PFN << 12, 0x5ec2e7);
    m.write_back_all();
    k.power_off(vmid).unwrap();
    k.destroy(&m, vmid).unwrap();
    assert!(m.dram_words(IMAGE_PFN << 12..(IMAGE_PFN + 1) << 12).is_empty());
}

/// A VERIFIED VM with vCPUs 0 and 1, for INJECT_IRQ.
fn two_vcpu_vm(m: &ModelMachine, k: &mut Kcore) -> VmId {
    lay_out_image(m, None);
    let vmid = k.register_vm(m, ram(GUEST_RAM, 16 << 20)).unwrap();
    k.register_vcpu(vmid, vcpu(0)).unwrap();
    k.register_vcpu(vmid, vcpu(1)).unwrap();
    let index = k.set_boot_info(vmid, Ipa(GUEST_RAM), IMAGE_LEN).unwrap();
    k.remap_vm_image(vmid, index as u64, pfn(IMAGE_PFN)).unwrap();
    k.verify_vm_image(m, vmid).unwrap();
    vmid
}

fn virq(intid: u64) -> Virq {
    Virq { intid: crate::vcpu::vgic::Intid::new(intid).unwrap(), priority: 0xa0 }
}

#[test]
fn injections_are_refused_unless_the_vm_is_verified_and_the_vcpu_idle() {
    let (m, k) = kcore();
    lay_out_image(&m, None);
    let vmid = k.register_vm(&m, ram(GUEST_RAM, 16 << 20)).unwrap();
    k.register_vcpu(vmid, vcpu(0)).unwrap();
    assert_eq!(k.inject_irq(vmid, vcpu(0), virq(33)), Err(VmError::State), "not verified yet");
    assert_eq!(k.inject_irq(vm(2), vcpu(0), virq(33)), Err(VmError::NoVm));
    let index = k.set_boot_info(vmid, Ipa(GUEST_RAM), IMAGE_LEN).unwrap();
    k.remap_vm_image(vmid, index as u64, pfn(IMAGE_PFN)).unwrap();
    k.verify_vm_image(&m, vmid).unwrap();
    assert_eq!(k.inject_irq(vmid, vcpu(1), virq(33)).map_err(VmError::status), Err(Status::InvalidParameters));
    k.inject_irq(vmid, vcpu(0), virq(33)).unwrap();
    let ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).unwrap();
    assert_eq!(ticket.ctx.vgic.queued().count(), 1, "the context that runs carries the interrupt");
    assert_eq!(k.inject_irq(vmid, vcpu(0), virq(34)).map_err(VmError::status), Err(Status::Denied), "running");
    k.vcpu_run_finish(ticket);
    for intid in 34..34 + crate::vcpu::vgic::QUEUE_LEN as u64 - 1 {
        k.inject_irq(vmid, vcpu(0), virq(intid)).unwrap();
    }
    assert_eq!(k.inject_irq(vmid, vcpu(0), virq(99)).map_err(VmError::status), Err(Status::OnPending));
    k.power_off(vmid).unwrap();
    assert_eq!(k.inject_irq(vmid, vcpu(0), virq(33)), Err(VmError::State));
}

/// Each vCPU's interrupts are what the vGIC spec makes of the injections the host named for
/// that vCPU, and no other vCPU's.
fn injections_reach_their_vcpu(shots: Vec<(u64, u64)>) -> Result<(), proptest::test_runner::TestCaseError> {
    use crate::vcpu::vgic::spec;
    let (m, mut k) = kcore();
    let vmid = two_vcpu_vm(&m, &mut k);
    let mut want = [spec::Vgic::default(), spec::Vgic::default()];
    for (target, intid) in shots {
        k.inject_irq(vmid, vcpu(target), virq(intid)).unwrap();
        let w = &mut want[target as usize];
        *w = spec::inject(w, virq(intid)).unwrap();
    }
    for (index, want) in want.iter().enumerate() {
        let vms = k.vms();
        let Vcpu::Idle(ctx) = &vms.get(vmid).unwrap().vcpus[index] else { unreachable!() };
        let mut pending: Vec<u16> = ctx.vgic.queued().map(|q| q.intid.raw()).collect();
        pending.sort();
        proptest::prop_assert_eq!(pending, want.pending.keys().copied().collect::<Vec<_>>(), "vCPU {}", index);
    }
    Ok(())
}

fn shots() -> impl proptest::strategy::Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..2, 0u64..8), 1..12)
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(32))]
    #[test]
    fn an_injection_reaches_the_vcpu_it_names(shots in shots()) {
        injections_reach_their_vcpu(shots)?;
    }
}

#[test]
fn the_injection_property_catches_delivery_to_the_wrong_vcpu() {
    crate::mutation::catches(Mutation::VgicInjectsWrongVcpu, 32, shots(), injections_reach_their_vcpu);
}

/// VM_CONSOLE (issue 13): the PL011 page must be page-aligned, inside the stage-2 input range
/// and outside the VM's RAM (so that KCore serves only accesses that fault because nothing is
/// mapped there, never RAM); 0 turns it off; an unknown VM is refused. A run's ticket carries the
/// page the VM had when the run began, and a fresh vCPU context has an empty console buffer.
#[test]
fn a_console_page_is_checked_and_reaches_the_run() {
    let (m, mut k) = kcore();
    lay_out_image(&m, None);
    let vmid = boot(&m, &mut k).unwrap();
    let uart = corevisor_abi::guest_dev::UART;
    for bad in [uart + 0x18, GUEST_RAM, GUEST_RAM + (16 << 20) - 4096, INPUT_LIMIT, INPUT_LIMIT - 4096 + 1, !0xfff] {
        assert_eq!(k.set_console(vmid, Ipa(bad)), Err(VmError::BadArgument), "{bad:#x}");
    }
    assert_eq!(k.set_console(vm(2), Ipa(uart)), Err(VmError::NoVm));
    let ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).unwrap();
    assert_eq!((ticket.console, ticket.ctx.console.bytes()), (None, &[][..]));
    k.vcpu_run_finish(ticket);
    assert_eq!(k.set_console(vmid, Ipa(INPUT_LIMIT - 4096)), Ok(()));
    assert_eq!(k.set_console(vmid, Ipa(uart)), Ok(()));
    let ticket = k.vcpu_run_prepare(&m, vmid, vcpu(0), 0).unwrap();
    assert_eq!(ticket.console, Some(Ipa(uart)));
    k.vcpu_run_finish(ticket);
    assert_eq!(k.set_console(vmid, Ipa(0)), Ok(()));
    assert_eq!(k.vm(vmid).lock().as_ref().map(|rec| rec.console), Some(None));
}

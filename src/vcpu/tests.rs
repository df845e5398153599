use super::*;

/// ESR of a data abort with a valid syndrome.
pub(crate) fn dabt(size_log2: u64, sse: bool, reg: u64, sf: bool, write: bool) -> u64 {
    0x24 << 26
        | 1 << 25
        | 1 << 24
        | size_log2 << 22
        | (sse as u64) << 21
        | reg << 16
        | (sf as u64) << 15
        | (write as u64) << 6
}

#[test]
fn a_vcpu_starts_reset_at_its_entry() {
    let mut vcpu = VcpuContext::new(0);
    vcpu.gprs.frame.x[5] = 7;
    vcpu.el1.0[El1Regs::VBAR] = 0x1234;
    vcpu.start(0x4000_0000, 9);
    assert_eq!(vcpu.gprs.frame.elr, 0x4000_0000);
    assert_eq!(vcpu.gprs.frame.spsr, SPSR_EL1H_MASKED);
    assert_eq!(vcpu.gprs.frame.x[0], 9);
    assert!(vcpu.gprs.frame.x[1..].iter().all(|&x| x == 0));
    assert_eq!(vcpu.el1, El1Regs::reset());
    assert!(vcpu.started);
}

#[test]
fn mmio_loads_are_completed_with_the_hosts_value_and_skipped() {
    let mut vcpu = VcpuContext::new(0);
    vcpu.gprs.frame.elr = 0x1000;
    // ldrsb w3: 1 byte, sign-extended, 32-bit register.
    vcpu.pending = DataAccess::decode(dabt(0, true, 3, false, false)).unwrap().pending();
    vcpu.complete(0xffff_ff80);
    assert_eq!(vcpu.gprs.frame.x[3], 0xffff_ff80);
    assert_eq!(vcpu.gprs.frame.elr, 0x1004);
    assert_eq!(vcpu.pending, Pending::Nothing);
    // ldr x4: 8 bytes.
    vcpu.pending = DataAccess::decode(dabt(3, false, 4, true, false)).unwrap().pending();
    vcpu.complete(u64::MAX - 1);
    assert_eq!(vcpu.gprs.frame.x[4], u64::MAX - 1);
    // ldrh w5 keeps only 16 bits; a load into xzr changes nothing but the PC.
    vcpu.pending = DataAccess::decode(dabt(1, false, 5, false, false)).unwrap().pending();
    vcpu.complete(0xdead_beef);
    assert_eq!(vcpu.gprs.frame.x[5], 0xbeef);
    let before = vcpu.gprs.frame.x;
    vcpu.pending = DataAccess::decode(dabt(2, false, 31, false, false)).unwrap().pending();
    vcpu.complete(5);
    assert_eq!(vcpu.gprs.frame.x, before);
    assert_eq!(vcpu.gprs.frame.elr, 0x1010);
    // With nothing pending the answer is ignored.
    vcpu.complete(77);
    assert_eq!(vcpu.gprs.frame.elr, 0x1010);
}

#[test]
fn stores_report_the_value_cut_to_their_size() {
    let mut gprs = GuestGprs::default();
    gprs.frame.x[2] = 0x1122_3344_5566_7788;
    let strh = DataAccess::decode(dabt(1, false, 2, false, true)).unwrap();
    assert_eq!(strh.store_value(&gprs), 0x7788);
    assert_eq!(strh.flags(), 1 | 1 << 1);
    assert_eq!(DataAccess::decode(dabt(3, false, 31, true, true)).unwrap().store_value(&gprs), 0);
    assert_eq!(DataAccess::decode(dabt(3, false, 2, true, true) & !(1 << 24)), None);
}

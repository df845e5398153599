//! TLB maintenance, broadcast to every core in the inner-shareable domain.
//!
//! Stage-2 invalidation by IPA uses the VMID in VTTBR_EL2, so it runs with the target VMID loaded
//! and restores the current VTTBR_EL2 afterwards.

use core::arch::asm;

/// Runs `f` with VTTBR_EL2.VMID = `vmid` (the table address is irrelevant to TLB maintenance).
fn with_vmid(vmid: u16, f: impl FnOnce()) {
    let saved: u64;
    // SAFETY: reading VTTBR_EL2 has no side effects.
    unsafe { asm!("mrs {}, vttbr_el2", out(reg) saved, options(nomem, nostack)) };
    let wanted = (saved & !(0xffff << 48)) | (vmid as u64) << 48;
    // SAFETY: KCore runs at EL2 with stage-2 off for itself; changing VTTBR_EL2 only affects EL1
    // translations, and none run on this core until it is restored below.
    unsafe { asm!("msr vttbr_el2, {}", "isb", in(reg) wanted, options(nostack)) };
    f();
    // SAFETY: as above.
    unsafe { asm!("msr vttbr_el2, {}", "isb", in(reg) saved, options(nostack)) };
}

/// Invalidates stage-2 entries for `ipa` under `vmid`, and the combined stage-1+2 entries that
/// may have cached it.
pub fn stage2_ipa(vmid: u16, ipa: u64) {
    with_vmid(vmid, || {
        // SAFETY: TLB invalidation has no memory effects; the barriers order it after the table
        // write and complete it before the caller goes on.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi ipas2e1is, {ipa}",
                "dsb ish",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                ipa = in(reg) ipa >> 12,
                options(nostack)
            )
        };
    });
}

/// Invalidates every entry of `vmid`.
pub fn stage2_vmid(vmid: u16) {
    with_vmid(vmid, || {
        // SAFETY: as for `stage2_ipa`.
        unsafe { asm!("dsb ishst", "tlbi vmalls12e1is", "dsb ish", "isb", options(nostack)) };
    });
}

/// Invalidates every EL2 stage-1 entry.
pub fn el2_all() {
    // SAFETY: as for `stage2_ipa`.
    unsafe { asm!("dsb ishst", "tlbi alle2is", "dsb ish", "isb", options(nostack)) };
}

/// Orders table writes before later walks.
pub fn publish() {
    // SAFETY: a barrier has no memory effects of its own.
    unsafe { asm!("dsb ishst", options(nostack)) };
}

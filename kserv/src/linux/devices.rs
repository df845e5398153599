//! A Linux VM's devices beyond its RAM and the PL011: the GIC's distributor side (a
//! [`GicModel`]), where the interrupts it makes pending go (an [`IrqSink`]), and what KServ does
//! with an access to no device at all (reads zero, writes ignored, logged once per address).

use super::gic_irqs::{LINUX_SPIS, MAX_VCPUS};
use super::gic_model::{GicModel, IrqSink};
use super::gic_v2::GicV2;
use super::gic_v3::GicV3;
use alloc::boxed::Box;

/// The interrupts a GIC model made pending, per vCPU, until KServ hands them to KCore with
/// INJECT_IRQ before that vCPU's next run (KCore takes injections only between runs).
#[derive(Debug, Default)]
pub struct PendingSink {
    /// Bit `n` of entry `v`: INTID `n` waits for vCPU `v`.
    pending: [u128; MAX_VCPUS],
    /// Interrupts raised so far.
    pub raised: u64,
    /// Bit `v`: an interrupt was raised for vCPU `v` since [`PendingSink::take_raised`].
    fresh: u8,
}

impl IrqSink for PendingSink {
    fn raise(&mut self, vcpu: usize, intid: u32) {
        if let (Some(bits), Some(bit)) = (self.pending.get_mut(vcpu), 1u128.checked_shl(intid)) {
            *bits |= bit;
            self.raised += 1;
            self.fresh |= 1 << vcpu;
        }
    }
}

impl PendingSink {
    /// Whether an interrupt waits for `vcpu` (a vCPU idling in WFI runs again at once).
    pub fn any_for(&self, vcpu: usize) -> bool {
        self.pending.get(vcpu).is_some_and(|&bits| bits != 0)
    }

    /// The vCPUs an interrupt was raised for since the last call (bit `v`: vCPU `v`), so that
    /// KServ can kick those that run, or idle, on other cores.
    pub fn take_raised(&mut self) -> u8 {
        core::mem::take(&mut self.fresh)
    }

    /// Hands `vcpu`'s waiting interrupts to `inject` (INTID in, accepted out), lowest INTID
    /// first; one that is not accepted (KCore's queue is full) and those after it wait for the
    /// next run.
    pub fn drain(&mut self, vcpu: usize, mut inject: impl FnMut(u32) -> bool) {
        let Some(bits) = self.pending.get_mut(vcpu) else { return };
        while *bits != 0 {
            let intid = bits.trailing_zeros();
            if !inject(intid) {
                return;
            }
            *bits &= !(1u128 << intid);
        }
    }
}

/// Addresses outside every device that KServ has logged an access to.
const LOGGED_MAX: usize = 16;

/// The devices of one Linux VM.
pub struct LinuxDevices {
    pub gic: Box<dyn GicModel>,
    pub sink: PendingSink,
    logged: [u64; LOGGED_MAX],
    logged_len: usize,
}

impl LinuxDevices {
    /// `None` for a vCPU count the GIC models do not take (1 to 8).
    pub fn new(gic_v3: bool, cpus: u32) -> Option<LinuxDevices> {
        let cpus = cpus as usize;
        let gic: Box<dyn GicModel> =
            if gic_v3 { Box::new(GicV3::new(cpus, LINUX_SPIS)?) } else { Box::new(GicV2::new(cpus, LINUX_SPIS)?) };
        Some(LinuxDevices { gic, sink: PendingSink::default(), logged: [0; LOGGED_MAX], logged_len: 0 })
    }

    /// A guest access outside RAM and the PL011: the GIC model's answer, or `None` if `gpa` is
    /// no device's.
    pub fn mmio(&mut self, vcpu: usize, gpa: u64, size: u8, write: Option<u64>) -> Option<u64> {
        self.gic.mmio(vcpu, gpa, size, write, &mut self.sink)
    }

    /// A GICv3 guest's ICC_SGI1R_EL1 write.
    pub fn sgi1r(&mut self, vcpu: usize, value: u64) {
        self.gic.sgi1r(vcpu, value, &mut self.sink)
    }

    /// Whether an access to no device at `gpa` should be logged: the first one at each address,
    /// for the first [`LOGGED_MAX`] addresses (a guest cannot flood the console).
    pub fn first_stray_access(&mut self, gpa: u64) -> bool {
        if self.logged[..self.logged_len].contains(&gpa) || self.logged_len == LOGGED_MAX {
            return false;
        }
        self.logged[self.logged_len] = gpa;
        self.logged_len += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use corevisor_abi::guest_dev;

    #[test]
    fn the_gic_model_answers_its_frames_and_its_sgis_wait_for_injection() {
        for (v3, pidr2_at, pidr2) in [(true, 0xffe8, 0x3b), (false, 0xfe8, 0x2b)] {
            let mut devices = LinuxDevices::new(v3, 2).unwrap();
            assert_eq!(devices.mmio(0, guest_dev::GICD + pidr2_at, 4, None), Some(pidr2));
            let past_redists = guest_dev::GICR + 2 * guest_dev::GICR_STRIDE;
            assert_eq!(devices.mmio(0, past_redists, 4, None), None);
            assert_eq!(devices.mmio(0, guest_dev::GICD - 4, 4, None), None);
        }
        // GICv3: SGI 1 from vCPU 0 to every other vCPU (IRM), once the group and the SGI are on.
        let mut devices = LinuxDevices::new(true, 2).unwrap();
        devices.mmio(0, guest_dev::GICD, 4, Some(0b11));
        let sgi_frame_of_vcpu1 = guest_dev::GICR + guest_dev::GICR_STRIDE + 0x1_0000;
        devices.mmio(1, sgi_frame_of_vcpu1 + 0x80, 4, Some(0xffff_ffff)); // IGROUPR0: group 1
        devices.mmio(1, sgi_frame_of_vcpu1 + 0x100, 4, Some(0xffff)); // ISENABLER0: the SGIs
        devices.sgi1r(0, 1 << 40 | 1 << 24);
        assert!(devices.sink.any_for(1) && !devices.sink.any_for(0));
    }

    #[test]
    fn the_pending_sink_hands_over_in_order_and_keeps_what_is_refused() {
        let mut sink = PendingSink::default();
        sink.raise(1, 33);
        sink.raise(1, 27);
        sink.raise(1, 95);
        sink.raise(0, 1);
        sink.raise(9, 1);
        sink.raise(0, 200);
        assert_eq!(sink.raised, 4);
        assert_eq!(sink.take_raised(), 0b11);
        assert_eq!(sink.take_raised(), 0);
        let mut got = Vec::new();
        sink.drain(1, |intid| {
            got.push(intid);
            intid != 33
        });
        assert_eq!(got, [27, 33]);
        assert!(sink.any_for(1));
        got.clear();
        sink.drain(1, |intid| {
            got.push(intid);
            true
        });
        assert_eq!(got, [33, 95]);
        assert!(!sink.any_for(1) && sink.any_for(0));
    }

    #[test]
    fn a_stray_address_is_logged_once_and_the_log_is_bounded() {
        let mut devices = LinuxDevices::new(true, 1).unwrap();
        assert!(devices.first_stray_access(0x1000));
        assert!(!devices.first_stray_access(0x1000));
        let fresh = (1..40).filter(|i| devices.first_stray_access(0x1000 + i * 8)).count();
        assert_eq!(fresh, LOGGED_MAX - 1);
    }
}

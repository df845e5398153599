//! A Linux VM's devices beyond its RAM and the PL011: the GIC's distributor side (a
//! [`GicModel`]), where the interrupts it makes pending go (an [`IrqSink`]), and what KServ does
//! with an access to no device at all (reads zero, writes ignored, logged once per address).

use super::gic_model::{GicModel, IrqSink};
use alloc::boxed::Box;
use corevisor_abi::guest_dev;

/// Counts the interrupts a GIC model makes pending. Nothing delivers them yet: that is
/// INJECT_IRQ (hyp_call(15)), whose KCore side is another branch of issue 13.
#[derive(Debug, Default)]
pub struct CountingSink {
    pub raised: u64,
}

impl IrqSink for CountingSink {
    fn raise(&mut self, _vcpu: usize, _intid: u32) {
        self.raised += 1;
    }
}

/// Whether guest address `gpa` is in the emulated GIC's frames: the distributor (64 KiB on v3,
/// 4 KiB on v2) and, on GICv3, one redistributor per vCPU. (A GICv2 guest's CPU interface is
/// the GICV frame, mapped at its GICC address.)
pub fn in_gic_frames(gic_v3: bool, cpus: u32, gpa: u64) -> bool {
    let gicd_size = if gic_v3 { 0x1_0000 } else { 0x1000 };
    let redists = if gic_v3 { u64::from(cpus) * guest_dev::GICR_STRIDE } else { 0 };
    gpa.wrapping_sub(guest_dev::GICD) < gicd_size || gpa.wrapping_sub(guest_dev::GICR) < redists
}

/// A stand-in for the distributor models (another branch of issue 13): the GIC's frames read
/// as zero and ignore writes, and no SGI or device interrupt goes anywhere.
pub struct ZeroGic {
    gic_v3: bool,
    cpus: u32,
}

impl GicModel for ZeroGic {
    fn mmio(&mut self, _vcpu: usize, gpa: u64, _size: u8, _write: Option<u64>, _: &mut dyn IrqSink) -> Option<u64> {
        in_gic_frames(self.gic_v3, self.cpus, gpa).then_some(0)
    }

    fn sgi1r(&mut self, _vcpu: usize, _value: u64, _: &mut dyn IrqSink) {}

    fn device_irq(&mut self, _vcpu: usize, _intid: u32, _: &mut dyn IrqSink) {}
}

/// Addresses outside every device that KServ has logged an access to.
const LOGGED_MAX: usize = 16;

/// The devices of one Linux VM.
pub struct LinuxDevices {
    pub gic: Box<dyn GicModel>,
    pub sink: CountingSink,
    logged: [u64; LOGGED_MAX],
    logged_len: usize,
}

impl LinuxDevices {
    pub fn new(gic_v3: bool, cpus: u32) -> LinuxDevices {
        LinuxDevices {
            gic: Box::new(ZeroGic { gic_v3, cpus }),
            sink: CountingSink::default(),
            logged: [0; LOGGED_MAX],
            logged_len: 0,
        }
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

    #[test]
    fn the_gic_frames_answer_zero_and_nothing_else_does() {
        for v3 in [true, false] {
            let mut devices = LinuxDevices::new(v3, 2);
            assert_eq!(devices.mmio(0, guest_dev::GICD + 0x4, 4, None), Some(0));
            assert_eq!(devices.mmio(1, guest_dev::GICD + 0x100, 4, Some(0xffff_ffff)), Some(0));
            assert_eq!(devices.mmio(0, guest_dev::GICD + 0x1000, 4, None), if v3 { Some(0) } else { None });
            let last_redist = guest_dev::GICR + 2 * guest_dev::GICR_STRIDE - 4;
            assert_eq!(devices.mmio(0, last_redist, 4, None), if v3 { Some(0) } else { None });
            assert_eq!(devices.mmio(0, last_redist + 4, 4, None), None);
            assert_eq!(devices.mmio(0, guest_dev::GICD - 4, 4, None), None);
            devices.sgi1r(0, 1 << 40 | 1);
            assert_eq!(devices.sink.raised, 0);
        }
    }

    #[test]
    fn a_stray_address_is_logged_once_and_the_log_is_bounded() {
        let mut devices = LinuxDevices::new(true, 1);
        assert!(devices.first_stray_access(0x1000));
        assert!(!devices.first_stray_access(0x1000));
        let fresh = (1..40).filter(|i| devices.first_stray_access(0x1000 + i * 8)).count();
        assert_eq!(fresh, LOGGED_MAX - 1);
    }

    #[test]
    fn the_counting_sink_counts() {
        let mut sink = CountingSink::default();
        sink.raise(1, 27);
        sink.raise(0, 33);
        assert_eq!(sink.raised, 2);
    }
}

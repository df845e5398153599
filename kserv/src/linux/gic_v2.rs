//! A Linux VM's emulated GICv2 distributor (Arm IHI 0048) at `guest_dev::GICD`: what Linux's
//! `irq-gic.c` reads and writes at boot and when it routes, enables and sends interrupts. The
//! CPU interface is the board's GICV frame, mapped at `guest_dev::GICC`, so the guest reaches it
//! without exits; this model is only the distributor.

use super::gic_irqs::{per_byte, read_only, Irqs, GROUP_ENABLES, IIDR};
use super::gic_model::{GicModel, IrqSink};
use corevisor_abi::guest_dev::GICD;

/// The distributor's frame (the device tree's size for it).
const FRAME_SIZE: u64 = 0x1000;
/// GICD_ITARGETSR<n>: one byte per interrupt, a bit per CPU interface.
const ITARGETSR: u64 = 0x800;
/// GICD_SGIR: TargetListFilter [25:24], CPUTargetList [23:16], INTID [3:0].
const SGIR: u64 = 0xf00;
/// GICD_CPENDSGIR and GICD_SPENDSGIR: the SGIs' pending state per source, RAZ/WI here.
const PENDSGIR: u64 = 0xf10;
/// GICD_PIDR2: ArchRev 2 in [7:4].
const PIDR2: u64 = 0xfe8;
const PIDR2_GICV2: u32 = 0x2b;

/// A VM's GICv2 distributor.
pub struct GicV2 {
    irqs: Irqs,
}

impl GicV2 {
    /// A reset distributor for `vcpus` vCPUs (at most 8) and `spis` SPIs (a multiple of 32, at
    /// most 64), or None.
    pub fn new(vcpus: usize, spis: usize) -> Option<Self> {
        Some(GicV2 { irqs: Irqs::new(vcpus, spis)? })
    }

    /// A `vcpu`'s access (the caller has checked it is one of the VM's).
    fn distributor(&mut self, vcpu: usize, offset: u64, size: u8, write: Option<u64>) -> Option<u64> {
        let all = self.irqs.all_vcpus();
        match (offset, size) {
            (0x0, 4) => {
                if let Some(value) = write {
                    self.irqs.group_enables = value as u32 & GROUP_ENABLES;
                }
                read_only(write, self.irqs.group_enables)
            }
            (0x4, 4) => read_only(write, self.irqs.it_lines_number() | (self.irqs.vcpus() as u32 - 1) << 5),
            (0x8, 4) => read_only(write, IIDR),
            (SGIR, 4) => {
                let value = write.unwrap_or(0);
                let list = (value >> 16 & 0xff) as u32;
                let targets = match value >> 24 & 3 {
                    0 => list,
                    1 => all & !(1 << vcpu),
                    2 => 1 << vcpu,
                    _ => 0,
                };
                if write.is_some() {
                    self.irqs.pend_sgi(targets, (value & 0xf) as u32);
                }
                read_only(write, 0)
            }
            (PENDSGIR..0xf30, 4) => read_only(write, 0),
            (PIDR2, 4) => read_only(write, PIDR2_GICV2),
            // ITARGETSR0-7 (SGIs, PPIs) are read-only and name the reading CPU interface.
            (ITARGETSR..0xc00, _) => {
                per_byte(offset - ITARGETSR, size, write, |intid, new| match self.irqs.spi_route(intid as usize) {
                    Some(route) => {
                        *route = new.map_or(*route, |byte| u64::from(u32::from(byte) & all));
                        *route as u8
                    }
                    None if intid < 32 => 1 << vcpu,
                    None => 0,
                })
            }
            _ => self.irqs.mmio(vcpu, offset, size, write, 0..usize::MAX),
        }
    }
}

/// The vCPU an ITARGETSR byte sends an SPI to: the lowest-numbered one it names.
fn lowest_target(route: u64) -> Option<usize> {
    (route != 0).then_some(route.trailing_zeros() as usize)
}

impl GicModel for GicV2 {
    fn unknown_accesses(&self) -> u64 {
        self.irqs.unknown_accesses
    }

    fn mmio(&mut self, vcpu: usize, gpa: u64, size: u8, write: Option<u64>, sink: &mut dyn IrqSink) -> Option<u64> {
        if !(GICD..GICD + FRAME_SIZE).contains(&gpa) {
            return None;
        }
        let served = if vcpu < self.irqs.vcpus() { self.distributor(vcpu, gpa - GICD, size, write) } else { None };
        Some(self.irqs.finish(served, write.is_some(), sink, lowest_target))
    }

    /// A GICv2 guest has no ICC_SGI1R_EL1 (its SGIs go through GICD_SGIR): nothing to do.
    fn sgi1r(&mut self, _vcpu: usize, _value: u64, _sink: &mut dyn IrqSink) {}

    fn device_irq(&mut self, vcpu: usize, intid: u32, sink: &mut dyn IrqSink) {
        self.irqs.set_pending(vcpu, intid);
        self.irqs.deliver(sink, lowest_target);
    }
}

#[cfg(test)]
mod tests {
    use super::super::gic_irqs::{
        testing::{BadReads, Guest},
        LINUX_SPIS, MAX_VCPUS,
    };
    use super::*;

    const GICD_CTLR: u64 = GICD;
    const GICD_ISENABLER: u64 = GICD + 0x100;
    const GICD_ICENABLER: u64 = GICD + 0x180;
    const GICD_ICPENDR: u64 = GICD + 0x280;
    const GICD_ICACTIVER: u64 = GICD + 0x380;
    const GICD_IPRIORITYR: u64 = GICD + 0x400;
    const GICD_ITARGETSR: u64 = GICD + ITARGETSR;
    const GICD_SGIR: u64 = GICD + SGIR;
    const DEFAULT_PRIORITIES: u64 = 0xa0a0_a0a0;

    fn gic(vcpus: usize) -> Guest<GicV2> {
        Guest::new(GicV2::new(vcpus, LINUX_SPIS).unwrap())
    }

    /// Linux's `gic_get_cpumask`: the first non-zero ITARGETSR0-7 word, folded to one byte.
    fn cpumask<G: GicModel>(guest: &mut Guest<G>, cpu: usize) -> u64 {
        let word = (0..32).step_by(4).map(|i| guest.read(cpu, GICD_ITARGETSR + i, 4)).find(|&w| w != 0).unwrap_or(0);
        (word | word >> 16 | word >> 8) & 0xff
    }

    /// What Linux's `irq-gic.c` does at boot: `gic_dist_init` on vCPU 0 (disable, every SPI to
    /// the boot CPU, `gic_dist_config`, enable), then `gic_cpu_init` on every vCPU (its CPU
    /// mask from ITARGETSR0-7, `gic_cpu_config`). Returns each vCPU's mask, which Linux uses as
    /// its SGI target, or what Linux would find wrong.
    fn linux_boot<G: GicModel>(guest: &mut Guest<G>, vcpus: usize) -> Result<Vec<u64>, String> {
        let lines = 32 * ((guest.read(0, GICD + 4, 4) & 0x1f) + 1);
        if lines != 96 || guest.read(0, GICD + 4, 4) >> 5 & 7 != vcpus as u64 - 1 {
            return Err("GICD_TYPER".into());
        }
        guest.write(0, GICD_CTLR, 4, 0);
        let boot_mask = cpumask(guest, 0) * 0x0101_0101;
        for intid in (32..lines).step_by(4) {
            guest.write(0, GICD_ITARGETSR + intid, 4, boot_mask);
        }
        for intid in (32..lines).step_by(16) {
            guest.write(0, GICD + 0xc00 + intid / 4, 4, 0);
        }
        for intid in (32..lines).step_by(4) {
            guest.write(0, GICD_IPRIORITYR + intid, 4, DEFAULT_PRIORITIES);
        }
        for intid in (32..lines).step_by(32) {
            guest.write(0, GICD_ICACTIVER + intid / 8, 4, u64::from(u32::MAX));
            guest.write(0, GICD_ICENABLER + intid / 8, 4, u64::from(u32::MAX));
        }
        guest.write(0, GICD_CTLR, 4, 1);
        let mut masks = Vec::new();
        for cpu in 0..vcpus {
            let mask = cpumask(guest, cpu);
            if mask != 1 << cpu {
                return Err(format!("vCPU {cpu} finds CPU mask {mask:#x}"));
            }
            masks.push(mask);
            guest.write(cpu, GICD_ICACTIVER, 4, u64::from(u32::MAX));
            guest.write(cpu, GICD_ICENABLER, 4, 0xffff_0000);
            guest.write(cpu, GICD_ISENABLER, 4, 0x0000_ffff);
            for intid in (0..32).step_by(4) {
                guest.write(cpu, GICD_IPRIORITYR + intid, 4, DEFAULT_PRIORITIES);
            }
        }
        if guest.raised.is_empty() {
            Ok(masks)
        } else {
            Err("an interrupt was raised during boot".into())
        }
    }

    #[test]
    fn linux_boot_finds_what_it_needs_and_its_ipis_arrive() {
        for vcpus in [1, 2, 4, MAX_VCPUS] {
            let mut guest = gic(vcpus);
            let masks = linux_boot(&mut guest, vcpus).unwrap();
            // smp_cross_call: the target's mask in CPUTargetList.
            for (cpu, mask) in masks.iter().enumerate() {
                guest.write(0, GICD_SGIR, 4, mask << 16 | 1);
                assert_eq!(guest.take_raised(), [(cpu, 1)]);
            }
            assert_eq!(guest.read(0, GICD + PIDR2, 4) >> 4 & 0xf, 2, "ArchRev");
            assert_eq!(guest.gic.unknown_accesses(), 0);
        }
    }

    /// The boot replay's companion: a model whose ITARGETSR0-7 name every vCPU, not the reader,
    /// gives Linux a CPU mask that is not its own, and the replay says so.
    #[test]
    fn linux_boot_catches_a_target_register_naming_every_vcpu() {
        let every_vcpu = |gpa, size: u8, value| {
            let private_targets = (GICD_ITARGETSR..GICD_ITARGETSR + 32).contains(&gpa);
            if private_targets {
                0x0303_0303 & (u64::MAX >> (64 - 8 * u32::from(size)))
            } else {
                value
            }
        };
        let mut guest = Guest::new(BadReads { gic: GicV2::new(2, LINUX_SPIS).unwrap(), bad: every_vcpu });
        assert_eq!(linux_boot(&mut guest, 2), Err("vCPU 0 finds CPU mask 0x3".to_string()));
    }

    #[test]
    fn sgir_filters() {
        let mut guest = gic(4);
        linux_boot(&mut guest, 4).unwrap();
        guest.write(1, GICD_SGIR, 4, 0b1101 << 16 | 4);
        assert_eq!(guest.take_raised(), [(0, 4), (2, 4), (3, 4)], "target list");
        guest.write(1, GICD_SGIR, 4, 1 << 24 | 0xff << 16 | 5);
        assert_eq!(guest.take_raised(), [(0, 5), (2, 5), (3, 5)], "all but self, list ignored");
        guest.write(2, GICD_SGIR, 4, 2 << 24 | 6);
        assert_eq!(guest.take_raised(), [(2, 6)], "self");
        guest.write(2, GICD_SGIR, 4, 3 << 24 | 0xff << 16 | 6);
        assert_eq!(guest.take_raised(), [], "reserved filter");
        guest.write(0, GICD_SGIR, 4, 0xf0 << 16 | 6);
        assert_eq!(guest.take_raised(), [], "CPU interfaces past the last vCPU");
        assert_eq!(guest.read(0, GICD_SGIR, 4), 0, "write-only");
        // A disabled SGI waits for its vCPU's ISENABLER0.
        guest.write(3, GICD_ICENABLER, 4, 1 << 7);
        guest.write(0, GICD_SGIR, 4, 0b1000 << 16 | 7);
        assert_eq!(guest.take_raised(), []);
        guest.write(2, GICD_ISENABLER, 4, 1 << 7);
        assert_eq!(guest.take_raised(), [], "vCPU 2's bank, not vCPU 3's");
        guest.write(3, GICD_ISENABLER, 4, 1 << 7);
        assert_eq!(guest.take_raised(), [(3, 7)]);
        // ICC_SGI1R_EL1 does not exist on GICv2.
        guest.gic.sgi1r(0, 1 << 40 | 1 << 24, &mut guest.raised);
        assert_eq!(guest.take_raised(), []);
    }

    #[test]
    fn an_spi_goes_to_its_lowest_target_once_enabled() {
        let mut guest = gic(4);
        linux_boot(&mut guest, 4).unwrap();
        guest.write(0, GICD_ITARGETSR + 50, 1, 0b1100);
        assert_eq!(guest.read(0, GICD_ITARGETSR + 48, 4), 0x010c_0101, "the others still at the boot CPU");
        guest.gic.device_irq(0, 50, &mut guest.raised);
        assert_eq!(guest.take_raised(), []);
        guest.write(0, GICD_ISENABLER + 4, 4, 1 << 18);
        assert_eq!(guest.take_raised(), [(2, 50)]);
        // The distributor disabled: raised when it is enabled again.
        guest.write(0, GICD_CTLR, 4, 0);
        guest.gic.device_irq(0, 50, &mut guest.raised);
        assert_eq!(guest.take_raised(), []);
        guest.write(0, GICD_CTLR, 4, 1);
        assert_eq!(guest.take_raised(), [(2, 50)]);
        // No target: pending until the guest names one.
        guest.write(0, GICD_ITARGETSR + 50, 1, 0);
        guest.gic.device_irq(0, 50, &mut guest.raised);
        assert_eq!(guest.take_raised(), []);
        guest.write(0, GICD_ITARGETSR + 48, 4, 0xf0_00_00_00 | 0x10 << 16);
        assert_eq!(guest.read(0, GICD_ITARGETSR + 48, 4), 0, "bits of CPUs past the last are RAZ/WI");
        guest.write(0, GICD_ITARGETSR + 48, 2, 0);
        guest.write(0, GICD_ITARGETSR + 50, 2, 0x0002);
        assert_eq!(guest.take_raised(), [(1, 50)]);
        // A disabled SPI whose pending state the guest cleared never arrives.
        guest.gic.device_irq(0, 33, &mut guest.raised);
        guest.write(0, GICD_ICPENDR + 4, 4, 0b10);
        guest.write(0, GICD_ISENABLER + 4, 4, 0b10);
        assert_eq!(guest.take_raised(), []);
    }

    #[test]
    fn private_target_registers_are_read_only_and_name_the_reader() {
        let mut guest = gic(3);
        for cpu in 0..3 {
            guest.write(cpu, GICD_ITARGETSR + 4, 4, 0);
            assert_eq!(guest.read(cpu, GICD_ITARGETSR + 28, 4), 0x0101_0101 << cpu);
            assert_eq!(guest.read(cpu, GICD_ITARGETSR + 5, 1), 1 << cpu);
        }
        assert_eq!(guest.gic.mmio(3, GICD_ITARGETSR, 4, None, &mut guest.raised), Some(0), "no vCPU 3");
        assert_eq!(guest.gic.unknown_accesses(), 1);
    }

    #[test]
    fn priorities_agree_by_byte_and_by_word() {
        let mut guest = gic(2);
        for intid in 0..96u64 {
            guest.write(1, GICD_IPRIORITYR + intid, 1, (intid * 5) & 0xff);
        }
        for intid in (0..96u64).step_by(4) {
            let word: u64 = (0..4).map(|b| (((intid + b) * 5) & 0xff) << (8 * b)).sum();
            assert_eq!(guest.read(1, GICD_IPRIORITYR + intid, 4), word);
            assert_eq!(guest.read(1, GICD_IPRIORITYR + intid + 2, 2), word >> 16);
        }
        assert_eq!(guest.read(0, GICD_IPRIORITYR, 4), 0, "vCPU 0's bank is its own");
        assert_eq!(guest.read(0, GICD_IPRIORITYR + 32, 4), 0xafaa_a5a0, "the SPIs' are shared");
        assert_eq!(guest.read(0, GICD_IPRIORITYR + 96, 4), 0, "past the SPIs");
    }

    #[test]
    fn unknown_offsets_read_zero_and_are_counted() {
        let mut guest = gic(2);
        for (i, (gpa, size)) in
            [(GICD + 0xd00, 4), (GICD + 0x101, 1), (GICD_CTLR, 8), (GICD + 0xffc, 4)].into_iter().enumerate()
        {
            guest.write(0, gpa, size, u64::MAX);
            assert_eq!(guest.read(0, gpa, size), 0);
            assert_eq!(guest.gic.unknown_accesses(), 2 * (i as u64 + 1));
        }
        for known in [GICD + PENDSGIR, GICD + PENDSGIR + 0x10] {
            guest.write(0, known, 4, u64::MAX);
            assert_eq!(guest.read(0, known, 4), 0);
        }
        assert_eq!(guest.gic.unknown_accesses(), 8);
        assert_eq!(guest.read(0, GICD + 0x8, 4), u64::from(IIDR));
        assert_eq!(
            guest.gic.mmio(0, corevisor_abi::guest_dev::GICC, 4, None, &mut guest.raised),
            None,
            "the GICV frame"
        );
    }
}

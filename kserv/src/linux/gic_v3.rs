//! A Linux VM's emulated GICv3 distributor and redistributors (Arm IHI 0069), at
//! `guest_dev::GICD` and `guest_dev::GICR`: what Linux's `irq-gic-v3.c` reads and writes at boot
//! and when it routes, enables and sends interrupts. The guest sees one security state
//! (GICD_CTLR.DS = 1, as under KVM), affinity routing always on, no LPIs, and vCPU n at
//! affinity 0.0.0.n. The CPU interface is KCore's (the list registers); ICC_SGI1R_EL1 writes
//! arrive here through [`GicModel::sgi1r`].

use super::gic_irqs::{read_only, Irqs, GROUP_ENABLES, IIDR, MAX_VCPUS};
use super::gic_model::{GicModel, IrqSink};
use corevisor_abi::guest_dev::{GICD, GICR, GICR_STRIDE};

/// The distributor's frame; each redistributor's RD frame is as large, its SGI frame follows.
const FRAME_SIZE: u64 = 0x1_0000;
/// GICD_CTLR: affinity routing (ARE) and a single security state (DS), both fixed.
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;
/// GICD_TYPER: 10 INTID bits (IDbits = 9); no 1-of-N SPIs (No1N), so IROUTER.IRM reads as zero
/// and every SPI goes to the one vCPU its affinity names; no LPIs, no message-based SPIs.
const TYPER_ID_BITS: u32 = 9 << 19;
const TYPER_NO_1_OF_N: u32 = 1 << 25;
/// GICD_PIDR2 and GICR_PIDR2: ArchRev 3 in [7:4] (Linux checks it before using a frame).
const PIDR2: u64 = 0xffe8;
const PIDR2_GICV3: u32 = 0x3b;
/// GICD_IROUTER<n> for SPI n is at IROUTER + 8n; the affinity fields a guest may set.
const IROUTER: u64 = 0x6000;
const IROUTER_AFFINITY: u64 = 0xff_00ff_ffff;
/// GICD_IGRPMODR<n> (GICR_IGRPMODR0 in the SGI frame): RAZ/WI with DS = 1.
const IGRPMODR: u64 = 0xd00;
/// GICR_TYPER: Last marks the last redistributor; the affinity is in [63:32].
const RD_TYPER: u64 = 0x8;
const RD_TYPER_LAST: u64 = 1 << 4;
/// GICR_WAKER: ChildrenAsleep follows ProcessorSleep at once.
const RD_WAKER: u64 = 0x14;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// A VM's GICv3 distributor side.
pub struct GicV3 {
    irqs: Irqs,
    /// GICR_WAKER.ProcessorSleep of each redistributor (set at reset).
    asleep: [bool; MAX_VCPUS],
}

impl GicV3 {
    /// A reset GIC for `vcpus` vCPUs and `spis` SPIs (a multiple of 32, at most 64), or None.
    pub fn new(vcpus: usize, spis: usize) -> Option<Self> {
        Some(GicV3 { irqs: Irqs::new(vcpus, spis)?, asleep: [true; MAX_VCPUS] })
    }

    fn distributor(&mut self, vcpu: usize, offset: u64, size: u8, write: Option<u64>) -> Option<u64> {
        match (offset, size) {
            (0x0, 4) => {
                if let Some(value) = write {
                    self.irqs.group_enables = value as u32 & GROUP_ENABLES;
                }
                read_only(write, self.irqs.group_enables | CTLR_ARE | CTLR_DS)
            }
            (0x4, 4) => {
                let cpus = self.irqs.vcpus() as u32 - 1;
                read_only(write, self.irqs.it_lines_number() | cpus << 5 | TYPER_ID_BITS | TYPER_NO_1_OF_N)
            }
            (0x8, 4) => read_only(write, IIDR),
            // GICD_TYPER2: no extended SPIs, no vPEs.
            (0xc, 4) => read_only(write, 0),
            (PIDR2, 4) => read_only(write, PIDR2_GICV3),
            (IGRPMODR..0xd80, 4) => read_only(write, 0),
            (IROUTER..0x8000, _) => {
                let route = self.irqs.spi_route(((offset - IROUTER) / 8) as usize);
                reg64(route.unwrap_or(&mut 0), offset % 8, size, write, IROUTER_AFFINITY)
            }
            // SGIs and PPIs are the redistributors' (affinity routing): RAZ/WI here.
            _ => self.irqs.mmio(vcpu, offset, size, write, 1..usize::MAX),
        }
    }

    /// Redistributor `rd`'s RD frame and, `FRAME_SIZE` above, its SGI frame.
    fn redistributor(&mut self, rd: usize, offset: u64, size: u8, write: Option<u64>) -> Option<u64> {
        match (offset, size) {
            // GICR_CTLR: no LPIs to enable; RWP reads 0.
            (0x0, 4) => read_only(write, 0),
            (0x4, 4) => read_only(write, IIDR),
            (RD_TYPER | 0xc, _) => {
                let last = if rd + 1 == self.irqs.vcpus() { RD_TYPER_LAST } else { 0 };
                let mut typer = (rd as u64) << 32 | (rd as u64) << 8 | last;
                reg64(&mut typer, offset - RD_TYPER, size, write, 0)
            }
            (RD_WAKER, 4) => {
                if let Some(value) = write {
                    self.asleep[rd] = value as u32 & WAKER_PROCESSOR_SLEEP != 0;
                }
                let sleep = WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP;
                read_only(write, if self.asleep[rd] { sleep } else { 0 })
            }
            (PIDR2, 4) => read_only(write, PIDR2_GICV3),
            (_, 4) if offset == FRAME_SIZE + IGRPMODR => read_only(write, 0),
            _ if offset >= FRAME_SIZE => self.irqs.mmio(rd, offset - FRAME_SIZE, size, write, 0..1),
            _ => None,
        }
    }
}

/// The vCPU an IROUTER value names: Aff0, when Aff1-3 are zero (all vCPUs are in cluster 0).
fn routed_vcpu(route: u64) -> Option<usize> {
    (route & !0xff == 0).then_some(route as usize)
}

/// A 64-bit register accessed whole or as one 32-bit half at `offset` (0 or 4) into it; a
/// write changes only its `writable` bits. None for another size or offset.
fn reg64(reg: &mut u64, offset: u64, size: u8, write: Option<u64>, writable: u64) -> Option<u64> {
    let (shift, mask) = match (offset, size) {
        (0, 8) => (0, u64::MAX),
        (0 | 4, 4) => (offset * 8, 0xffff_ffff << (offset * 8)),
        _ => return None,
    };
    match write {
        None => Some((*reg & mask) >> shift),
        Some(value) => {
            let changed = mask & writable;
            *reg = *reg & !changed | value << shift & changed;
            Some(0)
        }
    }
}

impl GicModel for GicV3 {
    fn unknown_accesses(&self) -> u64 {
        self.irqs.unknown_accesses
    }

    fn mmio(&mut self, vcpu: usize, gpa: u64, size: u8, write: Option<u64>, sink: &mut dyn IrqSink) -> Option<u64> {
        let redistributors = self.irqs.vcpus() as u64 * GICR_STRIDE;
        let served = if (GICD..GICD + FRAME_SIZE).contains(&gpa) {
            self.distributor(vcpu, gpa - GICD, size, write)
        } else if (GICR..GICR + redistributors).contains(&gpa) {
            let offset = gpa - GICR;
            self.redistributor((offset / GICR_STRIDE) as usize, offset % GICR_STRIDE, size, write)
        } else {
            return None;
        };
        Some(self.irqs.finish(served, write.is_some(), sink, routed_vcpu))
    }

    /// ICC_SGI1R_EL1: INTID [27:24], TargetList [15:0] of the cluster Aff3.Aff2.Aff1 [55:48,
    /// 39:32, 23:16] at Aff0 range RS [47:44], or, with IRM [40], every vCPU but the sender.
    fn sgi1r(&mut self, vcpu: usize, value: u64, sink: &mut dyn IrqSink) {
        let intid = (value >> 24 & 0xf) as u32;
        let cluster_and_range = value & (0xff << 48 | 0xf << 44 | 0xff << 32 | 0xff << 16);
        let targets = if value >> 40 & 1 != 0 {
            self.irqs.all_vcpus() & !(1 << vcpu.min(31))
        } else if cluster_and_range == 0 {
            value as u32 & 0xffff
        } else {
            0
        };
        self.irqs.pend_sgi(targets, intid);
        self.irqs.deliver(sink, routed_vcpu);
    }

    fn device_irq(&mut self, vcpu: usize, intid: u32, sink: &mut dyn IrqSink) {
        self.irqs.set_pending(vcpu, intid);
        self.irqs.deliver(sink, routed_vcpu);
    }
}

#[cfg(test)]
mod tests {
    use super::super::gic_irqs::{
        testing::{BadReads, Guest},
        LINUX_SPIS,
    };
    use super::*;

    const GICD_CTLR: u64 = GICD;
    const GICD_TYPER: u64 = GICD + 0x4;
    const GICD_ISENABLER: u64 = GICD + 0x100;
    const GICD_ICENABLER: u64 = GICD + 0x180;
    const GICD_ISPENDR: u64 = GICD + 0x200;
    const GICD_ICPENDR: u64 = GICD + 0x280;
    const GICD_IPRIORITYR: u64 = GICD + 0x400;
    /// Offsets in a redistributor's SGI frame.
    const SGI_ISENABLER0: u64 = FRAME_SIZE + 0x100;
    const SGI_ICENABLER0: u64 = FRAME_SIZE + 0x180;
    const SGI_ISPENDR0: u64 = FRAME_SIZE + 0x200;
    const SGI_ICACTIVER0: u64 = FRAME_SIZE + 0x380;
    const SGI_IPRIORITYR: u64 = FRAME_SIZE + 0x400;
    const SGI_IGROUPR0: u64 = FRAME_SIZE + 0x80;
    const SGI_ICFGR0: u64 = FRAME_SIZE + 0xc00;
    /// Linux's default priority, four at a time.
    const DEFAULT_PRIORITIES: u64 = 0xa0a0_a0a0;

    fn gic(vcpus: usize) -> Guest<GicV3> {
        Guest::new(GicV3::new(vcpus, LINUX_SPIS).unwrap())
    }

    fn check(ok: bool, what: &str) -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(what.to_string())
        }
    }

    /// What Linux's `irq-gic-v3.c` does at boot: `gic_init_bases` and `gic_dist_init` on vCPU 0,
    /// then on every vCPU `gic_populate_rdist` (the GICR_TYPER walk until Last),
    /// `gic_enable_redist` (the WAKER handshake) and `gic_cpu_init` (the SGI frame). Err names
    /// the first thing Linux would find wrong.
    fn linux_boot<G: GicModel>(guest: &mut Guest<G>, vcpus: usize) -> Result<(), String> {
        check(guest.read(0, GICD + PIDR2, 4) >> 4 & 0xf == 3, "GICD_PIDR2.ArchRev is not 3")?;
        let typer = guest.read(0, GICD_TYPER, 4);
        let lines = 32 * ((typer & 0x1f) + 1);
        check(lines == 96, "ITLinesNumber does not say INTIDs 32..95")?;
        check(typer >> 19 & 0x1f == 9, "IDbits is not 9")?;
        check(typer & (1 << 17 | 1 << 16) == 0, "LPIs or MBIS claimed")?;
        check(typer >> 5 & 7 == vcpus as u64 - 1, "CPUNumber")?;
        // gic_dist_init: disable, wait for RWP, SPIs to group 1, level, priorities, all
        // disabled and inactive, enable with ARE, route every SPI to the boot vCPU.
        guest.write(0, GICD_CTLR, 4, 0);
        check(guest.read(0, GICD_CTLR, 4) & 1 << 31 == 0, "GICD_CTLR.RWP stays set")?;
        for intid in (32..lines).step_by(32) {
            guest.write(0, GICD + 0x80 + intid / 8, 4, u64::from(u32::MAX));
        }
        for intid in (32..lines).step_by(16) {
            guest.write(0, GICD + 0xc00 + intid / 4, 4, 0);
        }
        for intid in (32..lines).step_by(4) {
            guest.write(0, GICD_IPRIORITYR + intid, 4, DEFAULT_PRIORITIES);
        }
        for intid in (32..lines).step_by(32) {
            guest.write(0, GICD + 0x380 + intid / 8, 4, u64::from(u32::MAX));
            guest.write(0, GICD_ICENABLER + intid / 8, 4, u64::from(u32::MAX));
        }
        guest.write(0, GICD_CTLR, 4, 1 << 4 | 1 << 1 | 1);
        let ctlr = guest.read(0, GICD_CTLR, 4);
        check(ctlr & 1 << 31 == 0 && ctlr & 1 << 4 != 0, "GICD_CTLR: RWP set or ARE clear after enable")?;
        for intid in 32..lines {
            guest.write(0, GICD + IROUTER + 8 * intid, 8, 0);
        }
        for cpu in 0..vcpus {
            let mut frame = GICR;
            loop {
                check(guest.read(cpu, frame + PIDR2, 4) >> 4 & 0xf == 3, "GICR_PIDR2.ArchRev is not 3")?;
                let typer = guest.read(cpu, frame + RD_TYPER, 8);
                if typer >> 32 == cpu as u64 {
                    break;
                }
                check(typer & RD_TYPER_LAST == 0, "no redistributor has this vCPU's affinity")?;
                frame += GICR_STRIDE;
            }
            let waker = guest.read(cpu, frame + RD_WAKER, 4);
            guest.write(cpu, frame + RD_WAKER, 4, waker & !u64::from(WAKER_PROCESSOR_SLEEP));
            check(guest.read(cpu, frame + RD_WAKER, 4) & u64::from(WAKER_CHILDREN_ASLEEP) == 0, "ChildrenAsleep")?;
            guest.write(cpu, frame + SGI_ICACTIVER0, 4, u64::from(u32::MAX));
            guest.write(cpu, frame + SGI_ICENABLER0, 4, 0xffff_0000);
            guest.write(cpu, frame + SGI_ISENABLER0, 4, 0x0000_ffff);
            for intid in (0..32).step_by(4) {
                guest.write(cpu, frame + SGI_IPRIORITYR + intid, 4, DEFAULT_PRIORITIES);
            }
            guest.write(cpu, frame + SGI_IGROUPR0, 4, u64::from(u32::MAX));
            check(guest.read(cpu, frame, 4) & 1 << 3 == 0, "GICR_CTLR.RWP stays set")?;
        }
        check(guest.raised.is_empty(), "an interrupt was raised during boot")
    }

    #[test]
    fn linux_boot_finds_what_it_needs() {
        for vcpus in [1, 2, 4, MAX_VCPUS] {
            let mut guest = gic(vcpus);
            assert_eq!(linux_boot(&mut guest, vcpus), Ok(()), "{vcpus} vCPUs");
            // Each vCPU's SGIs are now enabled in group 1: a self-IPI arrives.
            for cpu in 0..vcpus {
                guest.gic.sgi1r(cpu, 3 << 24 | 1 << cpu, &mut guest.raised);
                assert_eq!(guest.take_raised(), [(cpu, 3)]);
            }
            assert_eq!(guest.gic.unknown_accesses(), 0);
        }
    }

    /// The boot replay's companion: a model that sets Last on every redistributor hides all
    /// vCPUs but the first from Linux, and the replay says so.
    #[test]
    fn linux_boot_catches_last_on_every_redistributor() {
        let last_everywhere = |gpa, _, value| {
            let typer = gpa >= GICR && (gpa - GICR) % GICR_STRIDE == RD_TYPER;
            if typer {
                value | RD_TYPER_LAST
            } else {
                value
            }
        };
        let mut guest = Guest::new(BadReads { gic: GicV3::new(2, LINUX_SPIS).unwrap(), bad: last_everywhere });
        assert_eq!(linux_boot(&mut guest, 2), Err("no redistributor has this vCPU's affinity".to_string()));
    }

    #[test]
    fn redistributor_typer_reads_whole_or_in_halves() {
        let mut guest = gic(3);
        for rd in 0..3u64 {
            let frame = GICR + rd * GICR_STRIDE;
            let whole = guest.read(0, frame + RD_TYPER, 8);
            let halves = guest.read(0, frame + RD_TYPER, 4) | guest.read(0, frame + RD_TYPER + 4, 4) << 32;
            assert_eq!(whole, halves);
            assert_eq!(whole, rd << 32 | rd << 8 | if rd == 2 { RD_TYPER_LAST } else { 0 });
            guest.write(0, frame + RD_TYPER, 8, u64::MAX);
            assert_eq!(guest.read(0, frame + RD_TYPER, 8), whole, "read-only");
        }
        assert_eq!(guest.gic.mmio(0, GICR + 3 * GICR_STRIDE, 4, None, &mut guest.raised), None, "past the last");
    }

    #[test]
    fn waker_children_follow_processor_sleep() {
        let mut guest = gic(2);
        let waker = GICR + GICR_STRIDE + RD_WAKER;
        assert_eq!(guest.read(1, waker, 4), 0b110, "asleep at reset");
        guest.write(1, waker, 4, 0);
        assert_eq!(guest.read(1, waker, 4), 0);
        assert_eq!(guest.read(0, GICR + RD_WAKER, 4), 0b110, "the other redistributor still asleep");
        guest.write(1, waker, 4, 0b10);
        assert_eq!(guest.read(1, waker, 4), 0b110);
    }

    /// A booted 4-vCPU guest with every interrupt disabled.
    fn booted(vcpus: usize) -> Guest<GicV3> {
        let mut guest = gic(vcpus);
        linux_boot(&mut guest, vcpus).unwrap();
        guest
    }

    #[test]
    fn sgi1r_reaches_its_targets() {
        let mut guest = booted(4);
        // Target list {1, 3} from vCPU 0, INTID 2.
        guest.gic.sgi1r(0, 2 << 24 | 0b1010, &mut guest.raised);
        assert_eq!(guest.take_raised(), [(1, 2), (3, 2)]);
        // IRM: every vCPU but the sender.
        guest.gic.sgi1r(2, 1 << 40 | 7 << 24, &mut guest.raised);
        assert_eq!(guest.take_raised(), [(0, 7), (1, 7), (3, 7)]);
        // Another cluster (Aff1, Aff2, Aff3) or Aff0 range (RS) has no vCPU of ours.
        for other in [1 << 16, 0x34 << 32, 0x12 << 48, 1 << 44, corevisor_abi::guest_role::SYSREGS_SGI1R] {
            guest.gic.sgi1r(0, other | 1 << 24 | 0b11, &mut guest.raised);
            assert_eq!(guest.take_raised(), [], "{other:#x}");
        }
        // Target bits past the last vCPU name nobody.
        guest.gic.sgi1r(0, 0xfff0, &mut guest.raised);
        assert_eq!(guest.take_raised(), []);
    }

    #[test]
    fn a_disabled_sgi_waits_until_its_redistributor_enables_it() {
        let mut guest = booted(2);
        let vcpu1 = GICR + GICR_STRIDE;
        guest.write(1, vcpu1 + SGI_ICENABLER0, 4, 1 << 5);
        guest.gic.sgi1r(0, 5 << 24 | 0b11, &mut guest.raised);
        assert_eq!(guest.take_raised(), [(0, 5)], "vCPU 1 has SGI 5 disabled");
        assert_eq!(guest.read(1, vcpu1 + SGI_ISPENDR0, 4), 1 << 5, "pending in the model");
        assert_eq!(guest.read(0, GICR + SGI_ISPENDR0, 4), 0, "vCPU 0's was delivered");
        guest.write(1, vcpu1 + SGI_ISENABLER0, 4, 1 << 5);
        assert_eq!(guest.take_raised(), [(1, 5)]);
        assert_eq!(guest.read(1, vcpu1 + SGI_ISPENDR0, 4), 0, "handed to KCore");
    }

    #[test]
    fn an_spi_goes_to_its_router_once_enabled() {
        let mut guest = booted(2);
        guest.write(0, GICD + IROUTER + 8 * 40, 8, 1);
        guest.gic.device_irq(0, 40, &mut guest.raised);
        assert_eq!(guest.take_raised(), [], "SPI 40 is disabled");
        assert_eq!(guest.read(0, GICD_ISPENDR + 4, 4), 1 << 8);
        guest.write(0, GICD_ISENABLER + 4, 4, 1 << 8);
        assert_eq!(guest.take_raised(), [(1, 40)], "routed to Aff0 = 1");
        // Enabled but with the distributor's group 1 off: raised by the CTLR write that enables it.
        guest.write(0, GICD_CTLR, 4, 1 << 4);
        guest.gic.device_irq(1, 40, &mut guest.raised);
        assert_eq!(guest.take_raised(), []);
        guest.write(0, GICD_CTLR, 4, 1 << 4 | 1 << 1);
        assert_eq!(guest.take_raised(), [(1, 40)]);
        // Routed to a vCPU that does not exist: stays pending until rerouted.
        guest.write(0, GICD + IROUTER + 8 * 41 + 4, 4, 1);
        assert_eq!(guest.read(0, GICD + IROUTER + 8 * 41, 8), 1 << 32, "Aff3 = 1, written as the high half");
        guest.write(0, GICD_ISENABLER + 4, 4, 1 << 9);
        guest.gic.device_irq(0, 41, &mut guest.raised);
        assert_eq!(guest.take_raised(), []);
        guest.write(0, GICD + IROUTER + 8 * 41, 8, 1 << 31);
        assert_eq!(guest.read(0, GICD + IROUTER + 8 * 41, 8), 0, "IRM is RAZ/WI (No1N)");
        assert_eq!(guest.take_raised(), [(0, 41)]);
    }

    #[test]
    fn a_disabled_spi_never_arrives() {
        let mut guest = booted(2);
        guest.gic.device_irq(0, 64, &mut guest.raised);
        guest.write(0, GICD_ICPENDR + 8, 4, 1);
        guest.write(0, GICD_ISENABLER + 8, 4, 1);
        guest.write(0, GICD_CTLR, 4, 0x13);
        assert_eq!(guest.take_raised(), [], "its pending state was cleared while it was disabled");
        // INTIDs past the SPIs the VM has are ignored.
        guest.gic.device_irq(0, 96, &mut guest.raised);
        guest.write(0, GICD_ISENABLER + 12, 4, u64::from(u32::MAX));
        assert_eq!(guest.read(0, GICD_ISENABLER + 12, 4), 0);
        assert_eq!(guest.take_raised(), []);
    }

    #[test]
    fn priorities_agree_by_byte_and_by_word() {
        let mut guest = gic(2);
        for (base, served) in [(GICD_IPRIORITYR + 32, 32..96), (GICR + GICR_STRIDE + SGI_IPRIORITYR, 0..32)] {
            for (i, _) in served.clone().enumerate() {
                guest.write(1, base + i as u64, 1, (i as u64 * 7) & 0xff);
            }
            for (i, _) in served.clone().enumerate().step_by(4) {
                let word: u64 = (0..4).map(|b| (((i as u64 + b) * 7) & 0xff) << (8 * b)).sum();
                assert_eq!(guest.read(1, base + i as u64, 4), word);
                guest.write(1, base + i as u64, 4, !word & 0xffff_ffff);
                assert_eq!(guest.read(1, base + i as u64 + 3, 1), (!word >> 24) & 0xff);
                assert_eq!(guest.read(1, base + i as u64, 2), !word & 0xffff);
            }
        }
        // Redistributor 0's priorities are its own, and the distributor has none for INTIDs < 32.
        assert_eq!(guest.read(0, GICR + SGI_IPRIORITYR, 4), 0);
        guest.write(0, GICD_IPRIORITYR, 4, u64::from(u32::MAX));
        assert_eq!(guest.read(0, GICD_IPRIORITYR, 4), 0);
        assert_eq!(guest.gic.unknown_accesses(), 0);
    }

    #[test]
    fn config_and_groups_read_back() {
        let mut guest = gic(2);
        assert_eq!(guest.read(0, GICR + SGI_ICFGR0, 4), 0xaaaa_aaaa, "SGIs are edge-triggered");
        guest.write(0, GICR + SGI_ICFGR0, 4, 0);
        assert_eq!(guest.read(0, GICR + SGI_ICFGR0, 4), 0xaaaa_aaaa);
        guest.write(0, GICR + SGI_ICFGR0 + 4, 4, u64::from(u32::MAX));
        assert_eq!(guest.read(0, GICR + SGI_ICFGR0 + 4, 4), 0xaaaa_aaaa, "PPIs: only the odd bits");
        assert_eq!(guest.read(1, GICR + GICR_STRIDE + SGI_ICFGR0 + 4, 4), 0, "per vCPU");
        guest.write(0, GICD + 0xc00 + 12, 4, 0x8000_0002);
        assert_eq!(guest.read(1, GICD + 0xc00 + 12, 4), 0x8000_0002);
        guest.write(0, GICD + 0x84, 4, 0x1234_5678);
        assert_eq!(guest.read(1, GICD + 0x84, 4), 0x1234_5678);
        guest.write(0, GICD + IGRPMODR + 4, 4, u64::from(u32::MAX));
        assert_eq!(guest.read(0, GICD + IGRPMODR + 4, 4), 0, "IGRPMODR is RAZ/WI with DS = 1");
        assert_eq!(guest.read(0, GICD + 0x8, 4), u64::from(IIDR));
        assert_eq!(guest.read(0, GICR + 0x4, 4), u64::from(IIDR));
        assert_eq!(guest.gic.unknown_accesses(), 0);
    }

    #[test]
    fn unknown_offsets_read_zero_and_are_counted() {
        let mut guest = gic(2);
        // GICD_SGIR (absent with affinity routing), GICD_SETSPI_NSR, an LPI register, a
        // misaligned word, an 8-byte access to a 32-bit register, the SGI frame's PIDR2.
        let unknown = [
            (GICD + 0xf00, 4),
            (GICD + 0x40, 4),
            (GICR + 0x70, 8),
            (GICD + 0x102, 4),
            (GICD_CTLR, 8),
            (GICR + FRAME_SIZE + PIDR2, 4),
        ];
        for (i, &(gpa, size)) in unknown.iter().enumerate() {
            guest.write(0, gpa, size, u64::MAX);
            assert_eq!(guest.read(0, gpa, size), 0);
            assert_eq!(guest.gic.unknown_accesses(), 2 * (i as u64 + 1));
        }
        assert_eq!(guest.take_raised(), []);
        assert_eq!(guest.gic.mmio(0, GICD + FRAME_SIZE, 4, None, &mut guest.raised), None, "not a GIC frame");
        assert_eq!(guest.gic.mmio(0, GICR - 4, 4, None, &mut guest.raised), None);
        assert!(GicV3::new(0, 64).is_none() && GicV3::new(9, 64).is_none() && GicV3::new(2, 48).is_none());
    }
}

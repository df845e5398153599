//! The interrupt state both emulated distributors keep (GICv2's, and GICv3's with its
//! redistributors), and the registers they lay out alike from IGROUPR to ICFGR: one fixed-size
//! record per VM, no heap. An interrupt the guest has made deliverable (pending, enabled, its
//! group enabled in GICD_CTLR) leaves the model through the [`IrqSink`]: from then on KCore's
//! list registers hold its pending and active state, so the model's bits are only what the guest
//! wrote and what is still waiting to be delivered.

use super::gic_model::IrqSink;
use core::ops::Range;

/// The most vCPUs a model serves: KCore's limit per VM, and GICv2's.
pub const MAX_VCPUS: usize = 8;
/// The SPIs a Linux VM's distributor emulates: INTIDs 32..95 (GICD_TYPER.ITLinesNumber = 2).
pub const LINUX_SPIS: usize = 64;
/// The most SPIs a model keeps state for.
const MAX_SPIS: usize = 64;
/// SGIs and PPIs: each vCPU's own INTIDs 0..31.
const PRIVATE: u32 = 32;
/// What an ICFGR reads for the SGIs: edge-triggered, fixed.
const SGI_CONFIG: u32 = 0xaaaa_aaaa;
/// GICD_CTLR's group enables (EnableGrp0, EnableGrp1): the bits a guest may set.
pub const GROUP_ENABLES: u32 = 0b11;

/// One bit per interrupt: each vCPU's 32 private ones and the shared SPIs.
#[derive(Clone, Copy)]
struct Bits {
    private: [u32; MAX_VCPUS],
    shared: [u32; MAX_SPIS / 32],
}

impl Bits {
    const ZERO: Bits = Bits { private: [0; MAX_VCPUS], shared: [0; MAX_SPIS / 32] };

    /// Word `n` (INTIDs 32n..32n+31) as `vcpu` sees it. The caller has range-checked both.
    fn word(&mut self, vcpu: usize, n: usize) -> &mut u32 {
        if n == 0 {
            &mut self.private[vcpu]
        } else {
            &mut self.shared[n - 1]
        }
    }
}

/// A VM's interrupts, as its distributor (and redistributors) hold them.
pub struct Irqs {
    vcpus: usize,
    spis: usize,
    /// GICD_CTLR's [`GROUP_ENABLES`].
    pub group_enables: u32,
    group: Bits,
    enabled: Bits,
    pending: Bits,
    active: Bits,
    /// ICFGR1 (the PPIs) of each vCPU, and ICFGR2.. (the SPIs): the odd bits (edge-triggered).
    ppi_config: [u32; MAX_VCPUS],
    spi_config: [u32; MAX_SPIS / 16],
    private_priority: [[u8; PRIVATE as usize]; MAX_VCPUS],
    spi_priority: [u8; MAX_SPIS],
    /// Each SPI's routing register as the guest wrote it (GICv3 IROUTER, GICv2 ITARGETSR).
    pub spi_route: [u64; MAX_SPIS],
    /// Guest accesses the model does not emulate (read as zero, writes ignored).
    pub unknown_accesses: u64,
}

impl Irqs {
    /// A reset distributor for `vcpus` vCPUs and `spis` SPIs (a multiple of 32), or None when
    /// either is out of range.
    pub fn new(vcpus: usize, spis: usize) -> Option<Self> {
        if vcpus == 0 || vcpus > MAX_VCPUS || spis == 0 || spis > MAX_SPIS || !spis.is_multiple_of(32) {
            return None;
        }
        Some(Irqs {
            vcpus,
            spis,
            group_enables: 0,
            group: Bits::ZERO,
            enabled: Bits::ZERO,
            pending: Bits::ZERO,
            active: Bits::ZERO,
            ppi_config: [0; MAX_VCPUS],
            spi_config: [0; MAX_SPIS / 16],
            private_priority: [[0; PRIVATE as usize]; MAX_VCPUS],
            spi_priority: [0; MAX_SPIS],
            spi_route: [0; MAX_SPIS],
            unknown_accesses: 0,
        })
    }

    pub fn vcpus(&self) -> usize {
        self.vcpus
    }

    /// GICD_TYPER.ITLinesNumber: the highest INTID is 32 * (ITLinesNumber + 1) - 1.
    pub fn it_lines_number(&self) -> u32 {
        (self.spis / 32) as u32
    }

    /// The words of INTIDs this VM has: word 0 the private ones, then the SPIs'.
    pub fn words(&self) -> Range<usize> {
        0..1 + self.spis / 32
    }

    /// Makes `intid` pending: one of `vcpu`'s own, or an SPI. Out-of-range INTIDs are ignored.
    pub fn set_pending(&mut self, vcpu: usize, intid: u32) {
        let n = (intid / 32) as usize;
        if vcpu < self.vcpus && self.words().contains(&n) {
            *self.pending.word(vcpu, n) |= 1 << (intid % 32);
        }
    }

    /// Routing register of SPI `intid`, if this VM has it.
    pub fn spi_route(&mut self, intid: usize) -> Option<&mut u64> {
        let spi = intid.checked_sub(PRIVATE as usize).filter(|&spi| spi < self.spis)?;
        self.spi_route.get_mut(spi)
    }

    /// Every vCPU, one bit each.
    pub fn all_vcpus(&self) -> u32 {
        (1 << self.vcpus) - 1
    }

    /// Makes SGI `intid` pending on each vCPU in `targets` (one bit each).
    pub fn pend_sgi(&mut self, targets: u32, intid: u32) {
        for vcpu in (0..self.vcpus).filter(|vcpu| targets & 1 << vcpu != 0) {
            self.set_pending(vcpu, intid);
        }
    }

    /// Ends a guest access that a model's frame took: counts it if no register `served` it (it
    /// reads as zero), delivers what a write may have made deliverable, and returns the value read.
    pub fn finish(
        &mut self,
        served: Option<u64>,
        write: bool,
        sink: &mut dyn IrqSink,
        spi_target: impl Fn(u64) -> Option<usize>,
    ) -> u64 {
        if served.is_none() {
            self.unknown_accesses += 1;
        }
        if write {
            self.deliver(sink, spi_target);
        }
        served.unwrap_or(0)
    }

    /// Raises through `sink` every pending interrupt that is enabled in a group the guest
    /// enabled, and forgets it here (KCore holds it now). SPIs go to `spi_target(route)`, and
    /// stay pending while that names no vCPU.
    pub fn deliver(&mut self, sink: &mut dyn IrqSink, spi_target: impl Fn(u64) -> Option<usize>) {
        let private = (0..self.vcpus).map(|vcpu| (vcpu, 0));
        for (vcpu, n) in private.chain(self.words().skip(1).map(|n| (0, n))) {
            let ready = *self.pending.word(vcpu, n) & *self.enabled.word(vcpu, n) & self.group_on(vcpu, n);
            let mut raised = 0;
            for bit in (0..32).filter(|bit| ready & 1 << bit != 0) {
                let intid = n as u32 * 32 + bit;
                let target = if n == 0 { Some(vcpu) } else { spi_target(self.spi_route[intid as usize - 32]) };
                if let Some(target) = target.filter(|&t| t < self.vcpus) {
                    sink.raise(target, intid);
                    raised |= 1 << bit;
                }
            }
            *self.pending.word(vcpu, n) &= !raised;
        }
    }

    /// The interrupts of word `n` whose group GICD_CTLR enables.
    fn group_on(&mut self, vcpu: usize, n: usize) -> u32 {
        let group1 = *self.group.word(vcpu, n);
        let on = |bit: u32| if self.group_enables & bit != 0 { u32::MAX } else { 0 };
        (group1 & on(0b10)) | (!group1 & on(0b01))
    }

    /// The registers from IGROUPR to ICFGR (offsets 0x080..0xD00 of the GICv2 and GICv3
    /// distributors and of the GICv3 SGI frame) for `vcpu`'s view, serving only the INTID words
    /// in `served` (the others read as zero and ignore writes). None for another offset or an
    /// access size these registers do not take.
    pub fn mmio(
        &mut self,
        vcpu: usize,
        offset: u64,
        size: u8,
        write: Option<u64>,
        served: Range<usize>,
    ) -> Option<u64> {
        if vcpu >= self.vcpus {
            return None;
        }
        let served = served.start..served.end.min(self.words().end);
        match offset {
            0x080..0x400 if size == 4 && offset.is_multiple_of(4) => {
                let n = (offset % 0x80 / 4) as usize;
                if !served.contains(&n) {
                    return Some(0);
                }
                let value = write.unwrap_or(0) as u32;
                let (bits, set) = match offset / 0x80 {
                    1 => (&mut self.group, None),
                    2 => (&mut self.enabled, Some(true)),
                    3 => (&mut self.enabled, Some(false)),
                    4 => (&mut self.pending, Some(true)),
                    5 => (&mut self.pending, Some(false)),
                    6 => (&mut self.active, Some(true)),
                    _ => (&mut self.active, Some(false)),
                };
                let word = bits.word(vcpu, n);
                match (write, set) {
                    (None, _) => return Some(u64::from(*word)),
                    (Some(_), None) => *word = value,
                    (Some(_), Some(true)) => *word |= value,
                    (Some(_), Some(false)) => *word &= !value,
                }
                Some(0)
            }
            0x400..0x800 => per_byte(offset - 0x400, size, write, |intid, new| {
                let byte = match intid {
                    0..PRIVATE if served.contains(&0) => &mut self.private_priority[vcpu][intid as usize],
                    _ if served.contains(&(intid as usize / 32)) && intid >= PRIVATE => {
                        &mut self.spi_priority[(intid - PRIVATE) as usize]
                    }
                    _ => return 0,
                };
                *byte = new.unwrap_or(*byte);
                *byte
            }),
            0xc00..0xd00 if size == 4 && offset.is_multiple_of(4) => {
                let reg = ((offset - 0xc00) / 4) as usize;
                if !served.contains(&(reg / 2)) {
                    return Some(0);
                }
                let config = match reg {
                    0 => return Some(if write.is_some() { 0 } else { u64::from(SGI_CONFIG) }),
                    1 => &mut self.ppi_config[vcpu],
                    _ => &mut self.spi_config[reg - 2],
                };
                match write {
                    Some(value) => *config = value as u32 & SGI_CONFIG,
                    None => return Some(u64::from(*config)),
                }
                Some(0)
            }
            _ => None,
        }
    }
}

/// A register with one byte per interrupt (IPRIORITYR, ITARGETSR) at `offset` from its first,
/// accessed 1, 2 or 4 bytes at once: `byte(intid, new)` stores `new` if it is a write and returns
/// the byte. None for another size or a misaligned access.
pub fn per_byte(offset: u64, size: u8, write: Option<u64>, mut byte: impl FnMut(u32, Option<u8>) -> u8) -> Option<u64> {
    if !matches!(size, 1 | 2 | 4) || !offset.is_multiple_of(u64::from(size)) {
        return None;
    }
    let mut read = 0;
    for i in 0..u32::from(size) {
        let new = write.map(|value| (value >> (8 * i)) as u8);
        read |= u64::from(byte(offset as u32 + i, new)) << (8 * i);
    }
    Some(if write.is_some() { 0 } else { read })
}

/// A read-only register (or one that ignores writes) holding `value`.
pub fn read_only(write: Option<u64>, value: u32) -> Option<u64> {
    Some(if write.is_some() { 0 } else { u64::from(value) })
}

/// What both models' GICD_IIDR (and GICR_IIDR) read: implementer Arm (0x43B), product 'C' for
/// corevisor, so that none of Linux's GIC quirks (matched on IIDR) applies.
pub const IIDR: u32 = 0x4300_043b;

#[cfg(test)]
pub mod testing {
    //! A guest's accesses as Linux's GIC drivers make them, with the interrupts raised recorded.
    use super::super::gic_model::{GicModel, IrqSink};

    impl IrqSink for Vec<(usize, u32)> {
        fn raise(&mut self, vcpu: usize, intid: u32) {
            self.push((vcpu, intid));
        }
    }

    /// A model with a planted mistake for the companions: every read goes through `bad`
    /// (`(gpa, size, value) -> value`), everything else to the model unchanged.
    pub struct BadReads<G> {
        pub gic: G,
        pub bad: fn(u64, u8, u64) -> u64,
    }

    impl<G: GicModel> GicModel for BadReads<G> {
        fn unknown_accesses(&self) -> u64 {
            self.gic.unknown_accesses()
        }
        fn mmio(&mut self, vcpu: usize, gpa: u64, size: u8, write: Option<u64>, sink: &mut dyn IrqSink) -> Option<u64> {
            let value = self.gic.mmio(vcpu, gpa, size, write, sink)?;
            Some(if write.is_none() { (self.bad)(gpa, size, value) } else { value })
        }
        fn sgi1r(&mut self, vcpu: usize, value: u64, sink: &mut dyn IrqSink) {
            self.gic.sgi1r(vcpu, value, sink)
        }
        fn device_irq(&mut self, vcpu: usize, intid: u32, sink: &mut dyn IrqSink) {
            self.gic.device_irq(vcpu, intid, sink)
        }
    }

    pub struct Guest<G> {
        pub gic: G,
        /// (vCPU, INTID) of every interrupt raised, in order.
        pub raised: Vec<(usize, u32)>,
    }

    impl<G: GicModel> Guest<G> {
        pub fn new(gic: G) -> Self {
            Guest { gic, raised: Vec::new() }
        }
        /// A read that one of the GIC's frames must take.
        pub fn read(&mut self, vcpu: usize, gpa: u64, size: u8) -> u64 {
            self.gic.mmio(vcpu, gpa, size, None, &mut self.raised).expect("an address in the GIC's frames")
        }
        pub fn write(&mut self, vcpu: usize, gpa: u64, size: u8, value: u64) {
            assert_eq!(self.gic.mmio(vcpu, gpa, size, Some(value), &mut self.raised), Some(0), "write to {gpa:#x}");
        }
        /// The interrupts raised since the last call.
        pub fn take_raised(&mut self) -> Vec<(usize, u32)> {
            core::mem::take(&mut self.raised)
        }
    }
}

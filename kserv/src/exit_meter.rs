//! `cargo xtask bench`'s Linux figures (issue 13): the guest's run phase, from the first
//! VCPU_RUN to the return of the one that carried its PSCI SYSTEM_OFF, over every EL, and each
//! exit's cost by class: the EL2 instructions of the VCPU_RUN that ended in it plus those of the
//! host calls KServ made before the next VCPU_RUN, and KServ's own EL1 instructions in between.
//!
//! The PMU's event counters are 32 bits wide (PMUv3 without FEAT_PMUv3p5), so the meter adds up
//! deltas taken at every VCPU_RUN, each far below 2^32.

use alloc::vec::Vec;
use corevisor_abi::{exit, guest_dev, psci};

/// What ended a VCPU_RUN, as the bench groups exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClass {
    Pl011,
    GicDistributor,
    GicRedistributor,
    OtherMmio,
    Sgi,
    Irq,
    Wfi,
    Wfe,
    Psci,
    PageFault,
    Other,
    /// KCore's console buffer filled up or got a newline (`exit::CONSOLE`).
    Console,
}

impl ExitClass {
    pub const ALL: [ExitClass; 12] = [
        ExitClass::Pl011,
        ExitClass::GicDistributor,
        ExitClass::GicRedistributor,
        ExitClass::OtherMmio,
        ExitClass::Sgi,
        ExitClass::Irq,
        ExitClass::Wfi,
        ExitClass::Wfe,
        ExitClass::Psci,
        ExitClass::PageFault,
        ExitClass::Other,
        ExitClass::Console,
    ];

    /// The name in `bench linux-exit-NAME` lines.
    pub fn name(self) -> &'static str {
        match self {
            ExitClass::Pl011 => "pl011",
            ExitClass::GicDistributor => "gicd",
            ExitClass::GicRedistributor => "gicr",
            ExitClass::OtherMmio => "other-mmio",
            ExitClass::Sgi => "sgi",
            ExitClass::Irq => "irq",
            ExitClass::Wfi => "wfi",
            ExitClass::Wfe => "wfe",
            ExitClass::Psci => "psci",
            ExitClass::PageFault => "page-fault",
            ExitClass::Other => "other",
            ExitClass::Console => "console",
        }
    }

    /// Its letter in `bench linux-classes` sequences: `a` and on, in [`ExitClass::ALL`]'s order
    /// (its index is the `code` of its `bench linux-exit-NAME` line).
    pub fn letter(self) -> char {
        char::from(b'a' + self as u8)
    }

    /// The class of an exit with `reason` and first detail `a` (the address of an MMIO access).
    pub fn of(reason: u64, a: u64) -> ExitClass {
        let within = |base: u64, len: u64| a.checked_sub(base).is_some_and(|offset| offset < len);
        match reason {
            exit::MMIO if within(guest_dev::UART, 0x1000) => ExitClass::Pl011,
            exit::MMIO if within(guest_dev::GICD, 0x1_0000) => ExitClass::GicDistributor,
            exit::MMIO if within(guest_dev::GICR, 8 * guest_dev::GICR_STRIDE) => ExitClass::GicRedistributor,
            exit::MMIO => ExitClass::OtherMmio,
            exit::SGI => ExitClass::Sgi,
            exit::IRQ => ExitClass::Irq,
            exit::WFI => ExitClass::Wfi,
            exit::WFE => ExitClass::Wfe,
            exit::HVC => ExitClass::Psci,
            exit::PAGE_FAULT => ExitClass::PageFault,
            exit::CONSOLE => ExitClass::Console,
            _ => ExitClass::Other,
        }
    }
}

/// The three PMU counters KServ reads: EL2 only, EL1 and EL2, every EL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub el2: u64,
    pub el1_el2: u64,
    pub every_el: u64,
}

impl Counts {
    /// `self - earlier` for 32-bit counters.
    fn since(self, earlier: Counts) -> Counts {
        let d = |now: u64, then: u64| now.wrapping_sub(then) & 0xffff_ffff;
        Counts {
            el2: d(self.el2, earlier.el2),
            el1_el2: d(self.el1_el2, earlier.el1_el2),
            every_el: d(self.every_el, earlier.every_el),
        }
    }
}

/// One class's exits and what they cost in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCost {
    pub exits: u64,
    pub el2: u64,
    pub host_el1: u64,
    /// Exits whose EL2 or EL1 part exceeded [`POLLUTED`]: left out of `el2` and `host_el1`.
    pub polluted: u64,
}

/// A core's EL2 or EL1 part of one exit above this many instructions held other cores' work:
/// under `-icount` QEMU's PMU counts every core's instructions while this core is at the EL it
/// filters, and QEMU switches cores inside an exit when this core waits on a lock (`yield`) or
/// its turn ends (each turn some 10^5-10^6 instructions). No exit costs this much on its own (on
/// one core the dearest class, a stage-2 fault, averages some 2,300 at EL2).
pub const POLLUTED: u64 = 50_000;

/// The guest's run phase: instructions at every EL, at EL2, and KServ's at EL1; and what the
/// counters counted while KServ waited in WFI on this core ([`ExitMeter::idle`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunPhase {
    pub every_el: u64,
    pub el2: u64,
    pub host_el1: u64,
    pub exits: u64,
    pub idle: u64,
}

#[derive(Debug, Default)]
pub struct ExitMeter {
    pub classes: [ClassCost; ExitClass::ALL.len()],
    pub run: RunPhase,
    last: Option<Counts>,
    /// The class of the last exit and its VCPU_RUN's part, until the next VCPU_RUN closes its
    /// host-side interval.
    pending: Option<(ExitClass, Counts)>,
    /// Set once the SYSTEM_OFF exit came back: nothing more is added.
    pub done: bool,
    /// The class of every exit counted, in order: xtask lines them up with this core's
    /// VCPU_RUNs in QEMU's execution trace (`bench linux-classes`).
    pub sequence: Vec<ExitClass>,
}

/// Exits [`ExitMeter::sequence`] holds without growing (a Linux boot makes about 1,100 per
/// core): a push during the measured phase never reallocates.
const SEQUENCE_CAPACITY: usize = 8_192;

impl ExitMeter {
    pub fn new() -> ExitMeter {
        ExitMeter { sequence: Vec::with_capacity(SEQUENCE_CAPACITY), ..ExitMeter::default() }
    }

    /// KServ is about to enter VCPU_RUN; `now` are the counters.
    pub fn before_run(&mut self, now: Counts) {
        if self.done {
            return;
        }
        if let Some(last) = self.last {
            let d = now.since(last);
            let host_el1 = d.el1_el2 - d.el2;
            (self.run.every_el, self.run.el2, self.run.host_el1) =
                (self.run.every_el + d.every_el, self.run.el2 + d.el2, self.run.host_el1 + host_el1);
            if let Some((class, run)) = self.pending.take() {
                self.add(class, run, Some(d));
            }
        }
        self.last = Some(now);
    }

    /// KServ waited in WFI on this core from `before` to `now`. Under `-icount` QEMU's PMU reads
    /// QEMU's own instruction count, the whole machine's (every core's instructions; none for the
    /// time it skips while every core idles): what the interval counts ran on other cores, so it
    /// leaves this core's exit costs and totals and is kept apart as `idle`. The WFI and the few
    /// instructions around it (under 20 per wait) go with it.
    pub fn idle(&mut self, before: Counts, now: Counts) {
        if self.done || self.last.is_none() {
            return;
        }
        let d = now.since(before);
        self.run.idle += d.every_el;
        self.last = self.last.map(|last| Counts {
            el2: last.el2.wrapping_add(d.el2),
            el1_el2: last.el1_el2.wrapping_add(d.el1_el2),
            every_el: last.every_el.wrapping_add(d.every_el),
        });
    }

    /// VCPU_RUN came back with `reason` and detail `a` (for an HVC exit, the guest's x0).
    pub fn after_run(&mut self, now: Counts, reason: u64, a: u64) {
        let Some(last) = self.last.filter(|_| !self.done) else { return };
        let d = now.since(last);
        let class = ExitClass::of(reason, a);
        self.classes[class as usize].exits += 1;
        self.sequence.push(class);
        (self.run.every_el, self.run.el2, self.run.exits) =
            (self.run.every_el + d.every_el, self.run.el2 + d.el2, self.run.exits + 1);
        self.last = Some(now);
        self.done = reason == exit::HVC && a as u32 == psci::SYSTEM_OFF;
        match self.done {
            true => self.add(class, d, None),
            false => self.pending = Some((class, d)),
        }
    }

    /// Adds an exit of `class` to its cost: `run`, its VCPU_RUN's part, and `host`, KServ's part
    /// after it; left out as polluted if either part is above [`POLLUTED`].
    fn add(&mut self, class: ExitClass, run: Counts, host: Option<Counts>) {
        let host = host.unwrap_or_default();
        let host_el1 = host.el1_el2 - host.el2;
        let cost = &mut self.classes[class as usize];
        if run.el2 + host.el2 > POLLUTED || host_el1 > POLLUTED {
            cost.polluted += 1;
            return;
        }
        (cost.el2, cost.host_el1) = (cost.el2 + run.el2 + host.el2, cost.host_el1 + host_el1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(el2: u64, el1_el2: u64, every_el: u64) -> Counts {
        Counts { el2, el1_el2, every_el }
    }

    #[test]
    fn classes_exits_by_reason_and_address() {
        assert_eq!(ExitClass::of(exit::MMIO, guest_dev::UART + 0x18), ExitClass::Pl011);
        assert_eq!(ExitClass::of(exit::MMIO, guest_dev::GICD + 0x6100), ExitClass::GicDistributor);
        assert_eq!(
            ExitClass::of(exit::MMIO, guest_dev::GICR + guest_dev::GICR_STRIDE + 0x80),
            ExitClass::GicRedistributor
        );
        assert_eq!(ExitClass::of(exit::MMIO, 0x0a00_0000), ExitClass::OtherMmio);
        assert_eq!(ExitClass::of(exit::WFI, 5), ExitClass::Wfi);
        assert_eq!(ExitClass::of(exit::HVC, u64::from(psci::SYSTEM_OFF)), ExitClass::Psci);
        assert_eq!(ExitClass::of(exit::CONSOLE, 0), ExitClass::Console);
        for (index, class) in ExitClass::ALL.into_iter().enumerate() {
            assert_eq!(class as usize, index, "a class's code is its index in ALL");
        }
        assert_eq!((ExitClass::Pl011.letter(), ExitClass::Console.letter()), ('a', 'l'));
    }

    #[test]
    fn adds_each_exit_to_its_class_and_stops_at_system_off() {
        let mut meter = ExitMeter::new();
        meter.before_run(at(0, 0, 0));
        // A run: 100 EL2, 1000 guest; a PL011 exit; KServ spends 50 at EL1 and 10 at EL2.
        meter.after_run(at(100, 1100, 1100), exit::MMIO, guest_dev::UART);
        meter.before_run(at(110, 1160, 1160));
        meter.after_run(at(200, 2000, 2500), exit::HVC, u64::from(psci::SYSTEM_OFF));
        assert!(meter.done);
        meter.before_run(at(300, 9000, 9000));
        meter.after_run(at(400, 9900, 9900), exit::WFI, 0);
        assert_eq!(meter.sequence, [ExitClass::Pl011, ExitClass::Psci], "exits after SYSTEM_OFF are not counted");
        let pl011 = meter.classes[ExitClass::Pl011 as usize];
        assert_eq!(pl011, ClassCost { exits: 1, el2: 110, host_el1: 50, polluted: 0 });
        assert_eq!(meter.classes[ExitClass::Psci as usize], ClassCost { exits: 1, el2: 90, host_el1: 0, polluted: 0 });
        assert_eq!(meter.run, RunPhase { every_el: 2500, el2: 200, host_el1: 50, exits: 2, idle: 0 });
    }

    #[test]
    fn idle_time_leaves_the_totals() {
        let mut meter = ExitMeter::new();
        meter.before_run(at(0, 0, 0));
        meter.after_run(at(100, 1100, 1100), exit::WFI, 5);
        // KServ: 40 instructions, an idle the PMU counts as 5000, then 10 more.
        meter.idle(at(100, 1140, 1140), at(100, 6140, 6140));
        meter.before_run(at(100, 6150, 6150));
        assert_eq!(meter.run, RunPhase { every_el: 1150, el2: 100, host_el1: 50, exits: 1, idle: 5000 });
        assert_eq!(meter.classes[ExitClass::Wfi as usize].host_el1, 50);
    }

    #[test]
    fn an_exit_that_holds_other_cores_work_is_left_out_of_its_class() {
        let mut meter = ExitMeter::new();
        meter.before_run(at(0, 0, 0));
        // An SGI exit: 1,000 at EL2, then another core's turn inside KServ's part (EL1).
        meter.after_run(at(1_000, 1_500, 1_500), exit::SGI, 0);
        meter.before_run(at(1_100, 1_600 + POLLUTED + 1, 1_600 + POLLUTED + 1));
        // The next: another core's turn inside the VCPU_RUN, at EL2.
        let t = 1_600 + POLLUTED + 1;
        meter.after_run(at(1_100 + POLLUTED + 1, t + POLLUTED + 1, t + POLLUTED + 1), exit::SGI, 0);
        meter.before_run(at(1_100 + POLLUTED + 1, t + POLLUTED + 11, t + POLLUTED + 11));
        // A clean one.
        let (e, t) = (1_100 + POLLUTED + 1, t + POLLUTED + 11);
        meter.after_run(at(e + 900, t + 1_000, t + 1_000), exit::SGI, 0);
        meter.before_run(at(e + 1_000, t + 1_400, t + 1_400));
        assert_eq!(
            meter.classes[ExitClass::Sgi as usize],
            ClassCost { exits: 3, el2: 1_000, host_el1: 300, polluted: 2 }
        );
        // The run phase keeps every instruction.
        assert_eq!(meter.run.every_el, t + 1_400);
    }

    #[test]
    fn counters_wrap_at_32_bits() {
        let mut meter = ExitMeter::new();
        meter.before_run(at(0xffff_fff0, 0xffff_fff0, 0xffff_fff0));
        meter.after_run(at(0x10, 0x10, 0x10), exit::WFI, 0);
        meter.before_run(at(0x10, 0x10, 0x10));
        assert_eq!(meter.run.every_el, 0x20);
        assert_eq!(meter.classes[ExitClass::Wfi as usize].el2, 0x20);
    }
}

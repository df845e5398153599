//! Exact per-core cost of each exit of a Linux guest, by class, from QEMU's execution trace
//! (issue 13; the method of [`crate::el2_trace`], which counts KCore alone).
//!
//! The trace logs KCore's text and KServ's. Per core, KCore's instructions (at EL2) and KServ's
//! (at EL1, while the core is not in a guest: a guest's code may lie at the same addresses) are
//! cut into *visits*, each from a lower-EL vector entry up to the next (a trap inside KCore, at
//! the current EL, stays in the visit it interrupts). An exit's *window* is what handles it, as
//! Xen's per-trap figures count it: from the guest's trap (the guest-table entry of the visit that
//! returns to KServ) to the `eret` that puts the guest back (`__guest_enter`'s, at the end of the
//! next VCPU_RUN's visit): that visit, KServ's handling with its host calls (injections, a page
//! answer's preparation), and the next VCPU_RUN's entry work (the answer applied: a page answer's
//! scrub and clean). A core's last exit (SYSTEM_OFF) has no resume: its window ends at the return
//! to KServ, and what follows is the teardown. The guest's traps KCore serves without KServ while
//! the guest runs (a guest-table visit that ends in the guest) are in no window: they are counted
//! apart, by the path they took ([`InPlace`]). A core's first VCPU_RUN answers no exit.
//! KServ keeps each core's exit classes in order and prints them after the run (`bench
//! linux-classes`); the k-th window of a core is its k-th exit.

use crate::artifacts;
// A table's lower-EL entries begin at its synchronous one (below them: a trap taken inside
// KCore); its slots are synchronous, IRQ, FIQ, SError in each group of four.
use crate::el2_trace::{self, Kcore, GUEST_TABLE, HOST_SYNC as LOWER_EL, VECTOR_SLOT};
use std::collections::HashSet;
use std::io::BufRead;
use std::ops::Range;
use std::path::Path;
use std::process::Command;

/// One exit's window on its core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    /// KCore's, from the guest's trap to the return to KServ.
    pub trap_el2: u64,
    /// KCore's in KServ's host calls after the return, up to the next VCPU_RUN that enters the
    /// guest (a VCPU_RUN that does not is one of them).
    pub host_el2: u64,
    /// KCore's in that VCPU_RUN, from its vector entry to the guest's `eret`: the answer applied.
    pub entry_el2: u64,
    /// KServ's, from the return to the VCPU_RUN.
    pub kserv: u64,
    /// KCore's pauses (`wfe`, `yield`) in the window: turns of its wait loops.
    pub spins: u64,
    /// Those of them in the host calls.
    pub host_spins: u64,
    /// A VCPU_RUN put the guest back (a core's last exit has none: its window is its trap).
    pub resumed: bool,
}

impl Share {
    pub fn el2(&self) -> u64 {
        self.trap_el2 + self.host_el2 + self.entry_el2
    }

    pub fn spins(&self) -> u64 {
        self.spins + self.host_spins
    }
}

/// The guest's traps KCore serves without KServ, by the path the trace shows they took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InPlace {
    /// A synchronous trap the fast path (`__guest_exit_sync`) served: an emulated system
    /// register, a share call, an UNDEF (`hvc` with an immediate, an unknown register).
    FastSync,
    /// An IRQ the IRQ fast path (`__guest_exit_irq`) served: the virtual timer firing, the LR
    /// underflow maintenance interrupt.
    FastIrq,
    /// A synchronous trap that went straight to the full exit (`__guest_exit`: a data abort) and
    /// that `run_vcpu`'s loop served before entering the guest again (`__guest_enter`): the
    /// console's PL011 DR stores and FR loads.
    FullExit,
    /// A trap the fast path declined (`guest_exit_declined`: a register among x19..x29) and the
    /// full exit's loop served.
    Declined,
    /// Any other trap that ended in the guest (a FIQ or SError entry).
    Other,
}

impl InPlace {
    pub const ALL: [InPlace; 5] =
        [InPlace::FastSync, InPlace::FastIrq, InPlace::FullExit, InPlace::Declined, InPlace::Other];

    pub fn label(self) -> &'static str {
        match self {
            InPlace::FastSync => "sync fast path: emulated register, share call, UNDEF",
            InPlace::FastIrq => "IRQ fast path: virtual timer, LR underflow",
            InPlace::FullExit => "full exit, run_vcpu's loop: console PL011 DR/FR",
            InPlace::Declined => "fast path declined (x19..x29), full exit's loop",
            InPlace::Other => "other (FIQ, SError)",
        }
    }
}

/// One kind of in-place visit over every core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InPlaceTotal {
    pub visits: u64,
    pub el2: u64,
    pub max_el2: u64,
    pub spins: u64,
}

/// What the trace needs to know of KServ's ELF.
#[derive(Debug, Clone)]
pub struct Kserv {
    /// KServ's `.text`: logged with KCore's.
    pub text: Range<u64>,
    /// The PCs after KServ's `hvc`s: where a VCPU_RUN comes back to KServ.
    pub hvc_returns: HashSet<u64>,
}

impl Kserv {
    /// Reads KServ's text and `hvc`s from `elf` with the toolchain's `llvm-objdump`.
    pub fn of_elf(elf: &Path) -> Result<Kserv, String> {
        let objdump = |option: &str| -> Result<String, String> {
            let out = Command::new(artifacts::llvm_tool("llvm-objdump")?).arg(option).arg(elf).output();
            let out = out.map_err(|e| format!("llvm-objdump: {e}"))?;
            match out.status.success() {
                true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
                false => Err(format!("llvm-objdump {option} {} failed", elf.display())),
            }
        };
        Kserv::parse(&objdump("-h")?, &objdump("-d")?)
    }

    /// [`Kserv::of_elf`] from `llvm-objdump`'s section headers and disassembly.
    pub fn parse(headers: &str, disassembly: &str) -> Result<Kserv, String> {
        let text = el2_trace::text_section(headers).ok_or("KServ's ELF has no .text")?;
        let hvc_returns = disassembly
            .lines()
            .filter_map(|l| {
                let (address, instruction) = l.split_once(':')?;
                let hvc = instruction.split_whitespace().nth(1) == Some("hvc");
                hvc.then(|| u64::from_str_radix(address.trim(), 16).ok().map(|pc| pc + 4)).flatten()
            })
            .collect();
        Ok(Kserv { text, hvc_returns })
    }
}

/// Which table's lower-EL entry a visit came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// KCore's table: a host call or trap from KServ.
    Host,
    /// The guest's table: a trap of the running guest, its slot's kind (0 synchronous, 1 IRQ,
    /// 2 FIQ, 3 SError).
    Guest(u64),
}

/// A visit to KCore in progress: its instructions so far, and the labels it passed.
struct Visit {
    entry: Entry,
    instructions: u64,
    spins: u64,
    /// It ran `__guest_enter`: it put the guest back through the full world switch.
    entered_guest: bool,
    /// It ran `guest_exit_declined`: the fast path declined the trap.
    declined: bool,
}

/// How a visit ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// At the core's next vector entry: a guest visit served the trap in place.
    Vector,
    /// At the instruction after KServ's `hvc`, the core in a guest: the trap goes to KServ.
    BackToKserv,
    /// At another of KServ's instructions (a host call's return), or where the trace ends.
    Other,
}

#[derive(Default)]
struct Core {
    in_guest: bool,
    visit: Option<Visit>,
    shares: Vec<Share>,
}

impl Core {
    /// The window waiting for its resume: KServ's work and host calls go there.
    fn open_window(&mut self) -> Option<&mut Share> {
        self.shares.last_mut().filter(|share| !share.resumed)
    }
}

/// Every core's exit windows, the in-place visits by kind, and what the trace counted in all,
/// which [`Cut::reconcile`] checks against them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    /// Each core's windows, in order.
    pub shares: Vec<Vec<Share>>,
    /// By [`InPlace::ALL`]'s order.
    pub in_place: [InPlaceTotal; 5],
    /// KCore's instructions at EL2 and KServ's at EL1 in the trace, counted as they come.
    pub el2: u64,
    pub kserv: u64,
    /// Those in no window and no in-place visit: boot, each core's first VCPU_RUN, the
    /// teardown after a core's last exit, a visit the trace ended in.
    pub outside_el2: u64,
    pub outside_kserv: u64,
    /// The instructions in KCore's or KServ's text that were a guest's (not counted).
    pub guest: u64,
}

impl Cut {
    /// Fails unless the windows, the in-place visits and the instructions outside add up to
    /// every instruction counted, at EL2 and in KServ: no visit was lost or counted twice.
    pub fn reconcile(&self) -> Result<(), String> {
        let windows = self.shares.iter().flatten();
        let (el2, kserv) = windows.fold((0, 0), |(e, k), share| (e + share.el2(), k + share.kserv));
        let in_place: u64 = self.in_place.iter().map(|kind| kind.el2).sum();
        if el2 + in_place + self.outside_el2 != self.el2 {
            return Err(format!(
                "KCore in the trace: {} instructions, but the exits' windows hold {el2}, the in-place visits \
                 {in_place} and the rest {}: the cut lost or doubled {} of them",
                self.el2,
                self.outside_el2,
                self.el2.abs_diff(el2 + in_place + self.outside_el2)
            ));
        }
        if kserv + self.outside_kserv != self.kserv {
            return Err(format!(
                "KServ in the trace: {} instructions, but the exits' windows hold {kserv} and the rest {}",
                self.kserv, self.outside_kserv
            ));
        }
        Ok(())
    }
}

/// Cuts a trace of KCore's and KServ's text into each core's exit windows and in-place visits.
pub struct ExitTracer<'a> {
    kcore: &'a Kcore,
    kserv: &'a Kserv,
    guest_enter: u64,
    declined: u64,
    cores: Vec<Core>,
    cut: Cut,
}

impl<'a> ExitTracer<'a> {
    pub fn new(kcore: &'a Kcore, kserv: &'a Kserv) -> Result<ExitTracer<'a>, String> {
        let (guest_enter, declined) = (kcore.symbol("__guest_enter")?, kcore.symbol("guest_exit_declined")?);
        Ok(ExitTracer { kcore, kserv, guest_enter, declined, cores: Vec::new(), cut: Cut::default() })
    }

    /// QEMU's options that log KCore's text and KServ's, one instruction per block, into `log`.
    pub fn qemu_args(&self, log: &Path) -> Vec<String> {
        let mut args = self.kcore.qemu_args(log);
        let text = &self.kserv.text;
        if let Some(at) = args.iter().position(|a| a == "-dfilter") {
            args[at + 1] += &format!(",{:#x}+{:#x}", text.start, text.end - text.start);
        }
        args
    }

    /// Takes one line of the log; lines that are not an executed instruction are skipped.
    pub fn line(&mut self, line: &str) {
        let Some((cpu, pc, flags)) = el2_trace::parse_line(line) else { return };
        if self.cores.len() <= cpu {
            self.cores.resize_with(cpu + 1, Core::default);
        }
        let at_el2 = flags >> 4 & 0xf == el2_trace::EL2_MMU_INDEX;
        if self.kcore.text.contains(&pc) && at_el2 {
            self.cut.el2 += 1;
            let lower_el_entry = self.kcore.vector_entry(pc).filter(|offset| offset % GUEST_TABLE >= LOWER_EL);
            if let Some(offset) = lower_el_entry {
                self.end_visit(cpu, End::Vector);
                let entry = match offset < GUEST_TABLE {
                    true => Entry::Host,
                    false => Entry::Guest(offset / VECTOR_SLOT % 4),
                };
                self.cores[cpu].visit =
                    Some(Visit { entry, instructions: 0, spins: 0, entered_guest: false, declined: false });
            }
            let core = &mut self.cores[cpu];
            let Some(visit) = core.visit.as_mut() else {
                self.cut.outside_el2 += 1;
                return;
            };
            visit.instructions += 1;
            visit.spins += u64::from(self.kcore.pauses.contains(&pc));
            visit.declined |= pc == self.declined;
            if pc == self.guest_enter {
                (visit.entered_guest, core.in_guest) = (true, true);
            }
            return;
        }
        // KServ's code; while the core is in a guest, only the return of its VCPU_RUN is.
        let core = &self.cores[cpu];
        let back_from_guest = core.in_guest && self.kserv.hvc_returns.contains(&pc);
        if at_el2 || !self.kserv.text.contains(&pc) || core.in_guest && !back_from_guest {
            self.cut.guest += 1;
            return;
        }
        self.cut.kserv += 1;
        self.end_visit(cpu, if back_from_guest { End::BackToKserv } else { End::Other });
        let core = &mut self.cores[cpu];
        core.in_guest = false;
        match core.open_window() {
            Some(share) => share.kserv += 1,
            None => self.cut.outside_kserv += 1,
        }
    }

    /// Ends core `cpu`'s visit in progress, and charges it: a guest visit that went back to
    /// KServ opens a window (the exit's trap); one that ended in the guest is an in-place visit;
    /// a visit from KServ goes to the window waiting for its resume (a host call, or the
    /// VCPU_RUN that puts the guest back, which closes it), outside if none waits.
    fn end_visit(&mut self, cpu: usize, end: End) {
        let core = &mut self.cores[cpu];
        let Some(visit) = core.visit.take() else { return };
        let (instructions, spins) = (visit.instructions, visit.spins);
        match (visit.entry, end) {
            (Entry::Host, _) => match core.open_window() {
                Some(share) if visit.entered_guest => {
                    share.entry_el2 = instructions;
                    share.spins += spins;
                    share.resumed = true;
                }
                Some(share) => {
                    share.host_el2 += instructions;
                    share.host_spins += spins;
                }
                None => self.cut.outside_el2 += instructions,
            },
            (Entry::Guest(_), End::BackToKserv) => {
                core.shares.push(Share { trap_el2: instructions, spins, ..Share::default() });
            }
            (Entry::Guest(kind), End::Vector) => {
                let in_place = match (kind, visit.entered_guest, visit.declined) {
                    (0, false, false) => InPlace::FastSync,
                    (1, false, false) => InPlace::FastIrq,
                    (0, true, false) => InPlace::FullExit,
                    (_, true, true) => InPlace::Declined,
                    _ => InPlace::Other,
                };
                let total = &mut self.cut.in_place[in_place as usize];
                total.visits += 1;
                total.el2 += instructions;
                total.spins += spins;
                total.max_el2 = total.max_el2.max(instructions);
            }
            (Entry::Guest(_), End::Other) => self.cut.outside_el2 += instructions,
        }
    }

    /// The cut: a visit the trace ended in is outside, and so is what followed a core's last
    /// exit (KServ's teardown and its host calls).
    pub fn finish(mut self) -> Cut {
        for cpu in 0..self.cores.len() {
            self.end_visit(cpu, End::Other);
        }
        for core in &mut self.cores {
            if let Some(last) = core.open_window() {
                self.cut.outside_el2 += std::mem::take(&mut last.host_el2);
                self.cut.outside_kserv += std::mem::take(&mut last.kserv);
                last.host_spins = 0;
            }
        }
        self.cut.shares = self.cores.into_iter().map(|core| core.shares).collect();
        self.cut
    }
}

impl el2_trace::ReadsTrace for ExitTracer<'_> {
    fn read(&mut self, log: impl BufRead) -> Result<(), String> {
        for line in log.lines() {
            self.line(&line.map_err(|e| format!("reading the trace: {e}"))?);
        }
        Ok(())
    }
}

/// Each core's exit classes from KServ's `bench linux-classes core=C from=K seq=LETTERS` lines
/// (`a` is class code 0), checked against its `bench linux-classes core=C exits=N` count.
pub fn class_sequences(console: &str) -> Result<Vec<Vec<usize>>, String> {
    let mut cores: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
    for line in console.lines().filter_map(|l| l.trim_end().strip_prefix("kserv: bench linux-classes ")) {
        let field = |key: &str| {
            line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).ok_or(format!("`{line}`"))
        };
        let core: usize = field("core")?.parse().map_err(|_| format!("`{line}`: core"))?;
        if cores.len() <= core {
            cores.resize_with(core + 1, Default::default);
        }
        let (count, classes) = &mut cores[core];
        if let Ok(exits) = field("exits") {
            *count = Some(exits.parse().map_err(|_| format!("`{line}`: exits"))?);
            continue;
        }
        let from: usize = field("from")?.parse().map_err(|_| format!("`{line}`: from"))?;
        if from != classes.len() {
            return Err(format!("core {core}'s classes: a line from {from} after {} classes", classes.len()));
        }
        for letter in field("seq")?.bytes() {
            if !letter.is_ascii_lowercase() {
                return Err(format!("`{line}`: not a class letter: {}", char::from(letter)));
            }
            classes.push(usize::from(letter - b'a'));
        }
    }
    cores
        .into_iter()
        .enumerate()
        .map(|(core, (count, classes))| match count {
            Some(count) if count == classes.len() => Ok(classes),
            _ => Err(format!("core {core}: {} classes printed, its count says {count:?}", classes.len())),
        })
        .collect()
}

/// One class's exits over every core, and their instructions in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassTotal {
    pub exits: u64,
    /// KCore's, and its parts: the traps, the host calls, the VCPU_RUNs' entries.
    pub el2: u64,
    pub trap_el2: u64,
    pub host_el2: u64,
    pub entry_el2: u64,
    pub kserv: u64,
    /// The dearest exit's EL2 instructions, and the pauses (`wfe`, `yield`: wait-loop turns) in all.
    pub max_el2: u64,
    pub spins: u64,
}

/// Lines up each core's exit classes with its windows, the k-th exit with the k-th trap that
/// went back to KServ, and adds them up by class code. Fails unless every core made exactly as
/// many such traps as KServ recorded exits, and each but a core's last was resumed.
pub fn by_class(classes: &[Vec<usize>], shares: &[Vec<Share>], codes: usize) -> Result<Vec<ClassTotal>, String> {
    let mut totals = vec![ClassTotal::default(); codes];
    for core in 0..classes.len().max(shares.len()) {
        let (classes, shares) =
            (classes.get(core).map_or(&[][..], Vec::as_slice), shares.get(core).map_or(&[][..], Vec::as_slice));
        if classes.len() != shares.len() {
            return Err(format!(
                "core {core}: KServ recorded {} exits, the trace shows {} guest traps back to KServ",
                classes.len(),
                shares.len()
            ));
        }
        for (k, (&class, share)) in classes.iter().zip(shares).enumerate() {
            let total = totals.get_mut(class).ok_or(format!("core {core}: exit {k} has no class {class}"))?;
            if !share.resumed && k + 1 < shares.len() {
                return Err(format!("core {core}: exit {k} was never resumed, and is not the core's last"));
            }
            total.exits += 1;
            (total.el2, total.kserv) = (total.el2 + share.el2(), total.kserv + share.kserv);
            (total.trap_el2, total.host_el2, total.entry_el2) =
                (total.trap_el2 + share.trap_el2, total.host_el2 + share.host_el2, total.entry_el2 + share.entry_el2);
            (total.max_el2, total.spins) = (total.max_el2.max(share.el2()), total.spins + share.spins());
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::el2_trace::ReadsTrace;

    /// KCore: vectors at 0x4008_0000, `__guest_enter` at 0x4008_1100, `guest_exit_declined` at
    /// 0x4008_1180; KServ: text at 0x4400_0000, its one `hvc` at 0x4400_0100.
    fn layout() -> (Kcore, Kserv) {
        let headers = "  1 .text 00002000 0000000040080000 TEXT\n";
        let nm = "0000000040080000 T __entry_vector_sets\n0000000040081000 T __entry_vector_sets_end\n\
                  0000000040081100 T __guest_enter\n0000000040081180 t guest_exit_declined\n";
        let kcore = Kcore::parse(headers, nm, "").unwrap();
        let kserv = Kserv::parse(
            "Idx Name Size VMA Type\n  1 .text 00001000 0000000044000000 TEXT\n",
            "440000fc: 910003e0     \tmov\tx0, sp\n44000100: d4000002     \thvc\t#0\n",
        )
        .unwrap();
        (kcore, kserv)
    }

    const HOST_SYNC: u64 = 0x4008_0400;
    const GUEST_SYNC: u64 = 0x4008_0c00;
    const GUEST_IRQ: u64 = 0x4008_0c80;
    /// A trap inside KCore, at the current EL (the guest table's SError entry): no new visit.
    const CURRENT_EL_SERROR: u64 = 0x4008_0980;
    const ENTER: u64 = 0x4008_1100;
    const DECLINED: u64 = 0x4008_1180;
    /// KCore's code that is none of the above.
    const BODY: u64 = 0x4008_1200;
    const BACK: u64 = 0x4400_0104;
    const KSERV: u64 = 0x4400_0200;

    /// A trace being written, one instruction a line as QEMU logs them.
    #[derive(Default)]
    struct Log(String);

    impl Log {
        fn at_el2(&mut self, cpu: usize, pcs: &[u64]) -> &mut Log {
            for pc in pcs {
                self.0 += &format!("Trace {cpu}: 0x7fea10000100 [00000000/{pc:016x}/00000061/ff022201] \n");
            }
            self
        }

        fn at_el1(&mut self, cpu: usize, pcs: &[u64]) -> &mut Log {
            for pc in pcs {
                self.0 += &format!("Trace {cpu}: 0x7fea10000100 [00000000/{pc:016x}/00000121/ff022201] \n");
            }
            self
        }

        /// `n` of KCore's instructions that mark nothing.
        fn body(&mut self, cpu: usize, n: usize) -> &mut Log {
            self.at_el2(cpu, &vec![BODY; n])
        }

        fn kserv(&mut self, cpu: usize, n: usize) -> &mut Log {
            self.at_el1(cpu, &vec![KSERV; n])
        }
    }

    /// Core 0: a first VCPU_RUN; four traps served in place (fast sync, fast IRQ, full exit,
    /// declined) if `in_place`; a stage-2 fault answered with a page (the next VCPU_RUN's entry:
    /// 42); a fast sync again if `in_place`; an SGI; its last exit, then the teardown. Core 1,
    /// interleaved: a first VCPU_RUN, an IRQ exit, its resume, and a trap the trace ends in.
    fn sample_with(in_place: bool) -> String {
        let mut log = Log::default();
        let mut served = Log::default();
        log.kserv(0, 2); // KServ before its first VCPU_RUN: outside
        log.at_el2(0, &[HOST_SYNC]).body(0, 3).at_el2(0, &[ENTER]); // the first VCPU_RUN, 5: outside
        log.at_el1(0, &[KSERV]); // the guest's code at KServ's addresses: not counted
        log.kserv(1, 1).at_el2(1, &[HOST_SYNC, ENTER]); // core 1's first: 1 + 2 outside
        served.at_el2(0, &[GUEST_SYNC]).body(0, 2); // in place, fast sync: 3
        served.at_el2(0, &[GUEST_IRQ]).body(0, 1); // in place, fast IRQ: 2
        served.at_el2(0, &[GUEST_SYNC]).body(0, 3).at_el2(0, &[ENTER]); // in place, full exit: 5
        if in_place {
            log.0 += &std::mem::take(&mut served.0);
        }
        log.at_el2(1, &[GUEST_IRQ]).body(1, 2); // core 1's IRQ exit: 3
        log.0 += "Stopped execution of TB chain before 0x7fea10000100 [0000000040081200]\n";
        // In place, declined (an SError taken in its exit's window stays in it): 5.
        served.at_el2(0, &[GUEST_SYNC, DECLINED, CURRENT_EL_SERROR, BODY, ENTER]);
        if in_place {
            log.0 += &std::mem::take(&mut served.0);
        }
        log.at_el2(0, &[GUEST_SYNC]).body(0, 6); // exit 0, the fault: its trap, 7
        log.at_el1(1, &[BACK]); // core 1 back in KServ: 1
        log.at_el1(0, &[BACK]).kserv(0, 3); // KServ: 4
        log.at_el2(0, &[HOST_SYNC]).body(0, 3); // its host call: 4
        log.kserv(0, 2); // KServ: 2 more
        log.at_el2(1, &[HOST_SYNC]).body(1, 1).at_el2(1, &[ENTER]); // core 1's resume: 3
        log.at_el2(0, &[HOST_SYNC]).body(0, 40).at_el2(0, &[ENTER]); // the page answer: 42
        served.at_el2(0, &[GUEST_SYNC]).body(0, 2); // in place, fast sync: 3
        if in_place {
            log.0 += &std::mem::take(&mut served.0);
        }
        log.at_el2(0, &[GUEST_SYNC]).body(0, 4); // exit 1, the SGI: 5
        log.at_el1(0, &[BACK]).kserv(0, 1); // KServ: 2
        log.at_el2(0, &[HOST_SYNC]).body(0, 2).at_el2(0, &[ENTER]); // its resume: 4
        log.at_el2(0, &[GUEST_SYNC]).body(0, 2); // exit 2, the last: 3
        log.at_el1(0, &[BACK]).kserv(0, 2); // the teardown: 3 outside,
        log.at_el2(0, &[HOST_SYNC]).body(0, 1); // 2 outside,
        log.kserv(0, 1); // 1 outside
        log.at_el2(1, &[GUEST_SYNC]).body(1, 1); // core 1's trap the trace ends in: 2 outside
        log.0
    }

    fn sample() -> String {
        sample_with(true)
    }

    fn cut_of(log: &str) -> Cut {
        let (kcore, kserv) = layout();
        let mut tracer = ExitTracer::new(&kcore, &kserv).unwrap();
        tracer.read(log.as_bytes()).unwrap();
        tracer.finish()
    }

    fn window(trap_el2: u64, host_el2: u64, entry_el2: u64, kserv: u64, resumed: bool) -> Share {
        Share { trap_el2, host_el2, entry_el2, kserv, spins: 0, host_spins: 0, resumed }
    }

    fn visits(visits: u64, el2: u64, max_el2: u64) -> InPlaceTotal {
        InPlaceTotal { visits, el2, max_el2, spins: 0 }
    }

    fn expected() -> Cut {
        Cut {
            shares: vec![
                vec![window(7, 4, 42, 6, true), window(5, 0, 4, 2, true), window(3, 0, 0, 0, false)],
                vec![window(3, 0, 3, 1, true)],
            ],
            in_place: [visits(2, 6, 3), visits(1, 2, 2), visits(1, 5, 5), visits(1, 5, 5), visits(0, 0, 0)],
            el2: 100,
            kserv: 16,
            outside_el2: 5 + 2 + 2 + 2,
            outside_kserv: 2 + 1 + 3 + 1,
            guest: 1,
        }
    }

    #[test]
    fn reads_kservs_text_and_hvcs_and_logs_both_texts() {
        let (kcore, kserv) = layout();
        assert_eq!(kserv.text, 0x4400_0000..0x4400_1000);
        assert_eq!(kserv.hvc_returns, HashSet::from([0x4400_0104]));
        let args = ExitTracer::new(&kcore, &kserv).unwrap().qemu_args(Path::new("/tmp/log"));
        assert!(args.contains(&"0x40080000+0x2000,0x44000000+0x1000".to_string()), "{args:?}");
    }

    /// A window runs from the guest's trap that goes back to KServ to the `eret` of the
    /// VCPU_RUN that puts the guest back; traps served in place are in none; every counted
    /// instruction is in a window, an in-place visit or outside.
    #[test]
    fn cuts_each_exit_from_its_trap_to_the_guests_resume() {
        let cut = cut_of(&sample());
        assert_eq!(cut, expected());
        assert_eq!(cut.reconcile(), Ok(()));
    }

    /// The VCPU_RUN that carries a page answer (its scrub and clean) is the stage-2 fault's,
    /// not the exit that follows it.
    #[test]
    fn a_page_answer_is_charged_to_the_fault_it_answers() {
        let cut = cut_of(&sample());
        let (fault, sgi, off, irq) = (1, 2, 3, 0);
        let totals = by_class(&[vec![fault, sgi, off], vec![irq]], &cut.shares, 4).unwrap();
        let total = |(trap_el2, host_el2, entry_el2), kserv| ClassTotal {
            exits: 1,
            el2: trap_el2 + host_el2 + entry_el2,
            trap_el2,
            host_el2,
            entry_el2,
            kserv,
            max_el2: trap_el2 + host_el2 + entry_el2,
            spins: 0,
        };
        assert_eq!(totals, [total((3, 0, 3), 1), total((7, 4, 42), 6), total((5, 0, 4), 2), total((3, 0, 0), 0)]);
    }

    /// The traps KCore serves in place show in their own rows, and the same trace without them
    /// cuts the same windows.
    #[test]
    fn an_in_place_visit_counts_in_its_own_row_and_in_no_exit() {
        let (cut, without) = (cut_of(&sample()), cut_of(&sample_with(false)));
        assert_eq!(cut.in_place, expected().in_place);
        assert_eq!(without.in_place, [InPlaceTotal::default(); 5]);
        assert_eq!(without.shares, cut.shares);
        let in_place: u64 = cut.in_place.iter().map(|kind| kind.el2).sum();
        assert_eq!((without.el2 + in_place, without.outside_el2), (cut.el2, cut.outside_el2));
        assert_eq!(without.reconcile(), Ok(()));
    }

    /// A core's last exit (SYSTEM_OFF) is never resumed: its window is its trap, and what KServ
    /// and its host calls do after it is outside. Only a core's last exit may lack its resume.
    #[test]
    fn a_cores_last_exit_ends_at_its_return_to_kserv() {
        let cut = cut_of(&sample());
        assert_eq!((cut.shares[0][2], cut.shares[0][2].el2()), (window(3, 0, 0, 0, false), 3));
        let classes = [vec![1, 2, 3], vec![0]];
        assert!(by_class(&classes, &cut.shares, 4).is_ok());
        let mut unresumed = cut.shares.clone();
        unresumed[0][1].resumed = false;
        let err = by_class(&classes, &unresumed, 4).unwrap_err();
        assert!(err.contains("core 0: exit 1 was never resumed"), "{err}");
    }

    /// The windows, the in-place visits and the rest add up to every instruction counted: a
    /// cut that drops a visit (or counts one twice) fails.
    #[test]
    fn the_reconciliation_fails_when_a_visit_is_dropped() {
        let cut = cut_of(&sample());
        assert_eq!(cut.reconcile(), Ok(()));
        for kind in InPlace::ALL.into_iter().filter(|&kind| cut.in_place[kind as usize].visits > 0) {
            let mut dropped = cut.clone();
            let total = &mut dropped.in_place[kind as usize];
            (total.visits, total.el2) = (total.visits - 1, total.el2 - total.max_el2);
            let err = dropped.reconcile().unwrap_err();
            assert!(err.contains("the cut lost or doubled"), "{kind:?}: {err}");
        }
        let mut dropped = cut.clone();
        dropped.shares[0][0].entry_el2 = 0; // the page answer's VCPU_RUN lost
        assert!(dropped.reconcile().unwrap_err().contains("lost or doubled 42 of them"));
        let mut dropped = cut.clone();
        dropped.shares[1].clear();
        assert!(dropped.reconcile().is_err());
        let mut doubled = cut.clone();
        let again = doubled.shares[0][1];
        doubled.shares[0].push(again);
        assert!(doubled.reconcile().is_err());
        let mut kserv = cut.clone();
        kserv.shares[0][0].kserv -= 1;
        assert!(kserv.reconcile().unwrap_err().contains("KServ in the trace: 16"));
    }

    /// Every counted instruction shows in the figures: with any one line of the log dropped
    /// (a vector entry, `__guest_enter`, a return to KServ among them), the cut still
    /// reconciles, and an instruction's line takes exactly one instruction out of them.
    #[test]
    fn a_dropped_instruction_changes_the_figures() {
        let log = sample();
        let whole = cut_of(&log);
        let figures = |cut: &Cut| {
            let windows: u64 = cut.shares.iter().flatten().map(|share| share.el2() + share.kserv).sum();
            windows + cut.in_place.iter().map(|kind| kind.el2).sum::<u64>() + cut.outside_el2 + cut.outside_kserv
        };
        let lines: Vec<&str> = log.lines().collect();
        let mut one_fewer = 0;
        for dropped in 0..lines.len() {
            let rest: String =
                lines.iter().enumerate().filter(|&(i, _)| i != dropped).map(|(_, l)| format!("{l}\n")).collect();
            let cut = cut_of(&rest);
            assert_eq!(cut.reconcile(), Ok(()), "line {dropped} dropped: {}", lines[dropped]);
            one_fewer += u64::from(figures(&cut) + 1 == figures(&whole));
        }
        // Every line is a counted instruction but the guest's and the one that is not a trace
        // line. Five change what the lines after them are: without core 0's first VCPU_RUN entry
        // or its `__guest_enter` the core never enters its guest, and the guest's line counts as
        // KServ's; without one of core 0's three returns to KServ it stays in its guest, and so
        // do KServ's lines after it.
        let (guest, first_entry, returns) = (1, 2, 3);
        assert_eq!(one_fewer, whole.el2 + whole.kserv - first_entry - returns);
        assert_eq!(lines.len() as u64, whole.el2 + whole.kserv + guest + 1);
    }

    /// The k-th exit of a core is its k-th trap back to KServ: a class list longer or shorter
    /// than the core's windows fails.
    #[test]
    fn a_misaligned_class_list_fails() {
        let cut = cut_of(&sample());
        let err = by_class(&[vec![1, 2], vec![0]], &cut.shares, 4).unwrap_err();
        assert!(err.contains("core 0: KServ recorded 2 exits, the trace shows 3 guest traps back to KServ"), "{err}");
        assert!(by_class(&[vec![1, 2, 3, 3], vec![0]], &cut.shares, 4).is_err());
        assert!(by_class(&[vec![1, 2, 3]], &cut.shares, 4).unwrap_err().contains("core 1"));
        assert!(by_class(&[vec![1, 2, 3], vec![4]], &cut.shares, 4).unwrap_err().contains("no class 4"));
    }

    #[test]
    fn reads_kservs_class_lines() {
        let console = "kserv: bench linux-exit-wfi exits=2 el2=1 host_el1=1 polluted=0 code=6\n\
                       kserv: bench linux-classes core=0 exits=5\n\
                       kserv: bench linux-classes core=0 from=0 seq=abc\r\n\
                       kserv: bench linux-classes core=0 from=3 seq=gg\n\
                       kserv: bench linux-classes core=1 exits=1\n\
                       kserv: bench linux-classes core=1 from=0 seq=l\n";
        assert_eq!(class_sequences(console), Ok(vec![vec![0, 1, 2, 6, 6], vec![11]]));
        let short = console.replace("core=0 exits=5", "core=0 exits=6");
        assert!(class_sequences(&short).unwrap_err().contains("core 0: 5 classes printed"));
        let gap = console.replace("from=3", "from=4");
        assert!(class_sequences(&gap).unwrap_err().contains("a line from 4 after 3"));
        let no_count: String =
            console.lines().filter(|l| !l.contains("core=1 exits")).map(|l| format!("{l}\n")).collect();
        assert!(class_sequences(&no_count).is_err());
        assert!(class_sequences(&console.replace("seq=l", "seq=L")).is_err());
    }
}

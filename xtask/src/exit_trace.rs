//! Exact per-core cost of each exit of a Linux guest, by class, from QEMU's execution trace
//! (issue 13; the method of [`crate::el2_trace`], which counts KCore alone).
//!
//! The trace logs KCore's text and KServ's. Per core, KCore's instructions (at EL2) and KServ's
//! (at EL1, while the core is not in a guest: a guest's code may lie at the same addresses) are
//! cut into *shares*, one per VCPU_RUN, the cut the PMU meter uses (kserv `exit_meter`): from a
//! VCPU_RUN's vector entry to the next VCPU_RUN's. A share is the VCPU_RUN's EL2 work up to its
//! return to KServ (the guest's exits KCore serves in place included), then KServ's handling of
//! the exit with its host calls' EL2 work. A core's last share ends at its VCPU_RUN's return: what
//! KServ does after it is the teardown. KServ keeps each core's exit classes in order and prints
//! them after the run (`bench linux-classes`); the k-th share of a core is its k-th exit.

use crate::artifacts;
use crate::el2_trace::{self, Kcore};
use std::collections::HashSet;
use std::io::BufRead;
use std::ops::Range;
use std::path::Path;
use std::process::Command;

/// Where the guest's vector table begins in a vector set (KCore's own is below).
const GUEST_TABLE: u64 = 0x800;

/// One exit's instructions on its core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    /// KCore's, from the VCPU_RUN's vector entry to its return to KServ.
    pub run_el2: u64,
    /// KCore's in KServ's host calls after the return, up to the next VCPU_RUN.
    pub host_el2: u64,
    /// KServ's, after the return, up to the next VCPU_RUN.
    pub kserv: u64,
    /// KCore's pauses (`wfe`, `yield`) among `run_el2` and `host_el2`: turns of its wait loops.
    pub spins: u64,
    /// The VCPU_RUN came back to KServ (the instruction after its `hvc` ran).
    pub returned: bool,
    /// The next VCPU_RUN began: KServ's part is the exit's (a core's last share has none).
    pub closed: bool,
}

impl Share {
    pub fn el2(&self) -> u64 {
        self.run_el2 + if self.closed { self.host_el2 } else { 0 }
    }

    pub fn kserv(&self) -> u64 {
        if self.closed {
            self.kserv
        } else {
            0
        }
    }
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

/// A visit to KCore in progress: its instructions so far, whether it came from the host (by
/// KCore's own vector table, not the guest's), and whether it entered a guest.
#[derive(Default)]
struct Visit {
    instructions: u64,
    spins: u64,
    from_host: bool,
    entered_guest: bool,
}

#[derive(Default)]
struct Core {
    in_guest: bool,
    visit: Option<Visit>,
    shares: Vec<Share>,
}

impl Core {
    /// Ends the visit in progress: a VCPU_RUN (a host call that entered a guest) begins a share;
    /// any other visit adds to the share in progress, to its run until the VCPU_RUN came back
    /// (a guest exit KCore served, in place or by entering the guest again), to its host calls
    /// after. Returns the instructions of a visit outside every share.
    fn end_visit(&mut self) -> u64 {
        let Some(visit) = self.visit.take() else { return 0 };
        if visit.from_host && visit.entered_guest {
            if let Some(last) = self.shares.last_mut() {
                last.closed = true;
            }
            self.shares.push(Share { run_el2: visit.instructions, spins: visit.spins, ..Share::default() });
            return 0;
        }
        let Some(share) = self.shares.last_mut() else { return visit.instructions };
        match share.returned {
            true => share.host_el2 += visit.instructions,
            false => share.run_el2 += visit.instructions,
        }
        share.spins += visit.spins;
        0
    }
}

/// Cuts a trace of KCore's and KServ's text into each core's [`Share`]s.
pub struct ExitTracer<'a> {
    kcore: &'a Kcore,
    kserv: &'a Kserv,
    guest_enter: u64,
    cores: Vec<Core>,
    /// Counted instructions outside every share (boot, teardown), and the instructions in KCore's
    /// or KServ's text that were a guest's (not counted).
    pub outside: u64,
    pub guest: u64,
}

impl<'a> ExitTracer<'a> {
    pub fn new(kcore: &'a Kcore, kserv: &'a Kserv) -> Result<ExitTracer<'a>, String> {
        let guest_enter = kcore.symbol("__guest_enter")?;
        Ok(ExitTracer { kcore, kserv, guest_enter, cores: Vec::new(), outside: 0, guest: 0 })
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
        let core = &mut self.cores[cpu];
        let at_el2 = flags >> 4 & 0xf == el2_trace::EL2_MMU_INDEX;
        if self.kcore.text.contains(&pc) && at_el2 {
            if let Some(offset) = self.kcore.vector_entry(pc) {
                self.outside += core.end_visit();
                core.visit = Some(Visit { from_host: offset < GUEST_TABLE, ..Visit::default() });
            }
            let Some(visit) = core.visit.as_mut() else {
                self.outside += 1;
                return;
            };
            visit.instructions += 1;
            visit.spins += u64::from(self.kcore.pauses.contains(&pc));
            if pc == self.guest_enter {
                (visit.entered_guest, core.in_guest) = (true, true);
            }
            return;
        }
        // KServ's code; while the core is in a guest, only the return of its VCPU_RUN is.
        let back_from_guest = core.in_guest && self.kserv.hvc_returns.contains(&pc);
        if at_el2 || !self.kserv.text.contains(&pc) || core.in_guest && !back_from_guest {
            self.guest += 1;
            return;
        }
        self.outside += core.end_visit();
        core.in_guest = false;
        match core.shares.last_mut() {
            Some(share) if back_from_guest || share.returned => {
                share.returned = true;
                share.kserv += 1;
            }
            _ => self.outside += 1,
        }
    }

    /// Each core's shares, in order.
    pub fn finish(mut self) -> Vec<Vec<Share>> {
        for core in &mut self.cores {
            self.outside += core.end_visit();
        }
        self.cores.into_iter().map(|core| core.shares).collect()
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
    pub el2: u64,
    pub kserv: u64,
    /// The dearest exit's EL2 instructions, and the pauses (`wfe`, `yield`: wait-loop turns) in all.
    pub max_el2: u64,
    pub spins: u64,
}

/// Lines up each core's exit classes with its shares, the k-th exit with the k-th VCPU_RUN, and
/// adds them up by class code. Fails unless every core made exactly as many VCPU_RUNs as KServ
/// recorded exits, each of which came back to KServ.
pub fn by_class(classes: &[Vec<usize>], shares: &[Vec<Share>], codes: usize) -> Result<Vec<ClassTotal>, String> {
    let mut totals = vec![ClassTotal::default(); codes];
    for core in 0..classes.len().max(shares.len()) {
        let (classes, shares) =
            (classes.get(core).map_or(&[][..], Vec::as_slice), shares.get(core).map_or(&[][..], Vec::as_slice));
        if classes.len() != shares.len() {
            return Err(format!(
                "core {core}: KServ recorded {} exits, the trace shows {} VCPU_RUNs",
                classes.len(),
                shares.len()
            ));
        }
        for (k, (&class, share)) in classes.iter().zip(shares).enumerate() {
            let total = totals.get_mut(class).ok_or(format!("core {core}: exit {k} has no class {class}"))?;
            if !share.returned {
                return Err(format!("core {core}: VCPU_RUN {k} never came back to KServ"));
            }
            (total.exits, total.el2, total.kserv) =
                (total.exits + 1, total.el2 + share.el2(), total.kserv + share.kserv());
            (total.max_el2, total.spins) = (total.max_el2.max(share.el2()), total.spins + share.spins);
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::el2_trace::ReadsTrace;

    /// KCore: vectors at 0x4008_0000, `__guest_enter` at 0x4008_1100; KServ: text at
    /// 0x4400_0000, its one `hvc` at 0x4400_0100.
    fn layout() -> (Kcore, Kserv) {
        let headers = "  1 .text 00002000 0000000040080000 TEXT\n";
        let nm = "0000000040080000 T __entry_vector_sets\n0000000040081000 T __entry_vector_sets_end\n\
                  0000000040081100 T __guest_enter\n";
        let kcore = Kcore::parse(headers, nm, "").unwrap();
        let kserv = Kserv::parse(
            "Idx Name Size VMA Type\n  1 .text 00001000 0000000044000000 TEXT\n",
            "440000fc: 910003e0     \tmov\tx0, sp\n44000100: d4000002     \thvc\t#0\n",
        )
        .unwrap();
        (kcore, kserv)
    }

    fn at_el2(cpu: usize, pc: u64) -> String {
        format!("Trace {cpu}: 0x7fea10000100 [00000000/{pc:016x}/00000061/ff022201] \n")
    }

    fn at_el1(cpu: usize, pc: u64) -> String {
        format!("Trace {cpu}: 0x7fea10000100 [00000000/{pc:016x}/00000121/ff022201] \n")
    }

    /// Two cores' VCPU_RUNs, interleaved as QEMU's turns interleave them.
    fn sample() -> String {
        let (run, guest_sync, back) = (0x4008_0400, 0x4008_0c00, 0x4400_0104);
        let mut log = String::new();
        log += &at_el1(0, 0x4400_0000); // KServ before its first VCPU_RUN: outside
        for pc in [run, 0x4008_0404, 0x4008_1100, 0x4008_1104] {
            log += &at_el2(0, pc); // core 0's VCPU_RUN: 4 into its first share
        }
        log += &at_el1(0, 0x4400_0200); // the guest's code at KServ's addresses: not counted
        log += &at_el2(0, guest_sync); // an exit served in place: 2 more of the run
        log += &at_el2(0, guest_sync + 4);
        log += &at_el1(1, 0x4400_0000);
        for pc in [run, 0x4008_1100] {
            log += &at_el2(1, pc); // core 1's VCPU_RUN: 2
        }
        log += "Stopped execution of TB chain before 0x7fea10000100 [0000000040081200]\n";
        for pc in [guest_sync, guest_sync + 4, guest_sync + 8] {
            log += &at_el2(0, pc); // core 0's full exit: 3 more
        }
        for pc in [back, back + 4] {
            log += &at_el1(0, pc); // KServ again: 2
        }
        for pc in [guest_sync, 0x4008_1100] {
            log += &at_el2(1, pc); // core 1's exit, served by entering the guest again: 2 more
        }
        log += &at_el2(1, guest_sync); // its next exit: 1 more
        log += &at_el1(1, back); // KServ: 1
        log += &at_el2(0, run); // core 0's host call: 2 of its host part
        log += &at_el2(0, run + 4);
        for pc in [back, back + 4, back + 8] {
            log += &at_el1(0, pc); // KServ: 3 more
        }
        for pc in [run, 0x4008_1100] {
            log += &at_el2(0, pc); // core 0's next VCPU_RUN closes its first share
        }
        log += &at_el2(0, guest_sync);
        log += &at_el1(0, back);
        log += &at_el1(0, back + 4); // core 0's last: its KServ part is the teardown's
        log
    }

    fn shares_of(log: &str) -> (Vec<Vec<Share>>, u64, u64) {
        let (kcore, kserv) = layout();
        let mut tracer = ExitTracer::new(&kcore, &kserv).unwrap();
        tracer.read(log.as_bytes()).unwrap();
        let (outside, guest) = (tracer.outside, tracer.guest);
        (tracer.finish(), outside, guest)
    }

    fn share(run_el2: u64, host_el2: u64, kserv: u64, closed: bool) -> Share {
        Share { run_el2, host_el2, kserv, spins: 0, returned: true, closed }
    }

    #[test]
    fn reads_kservs_text_and_hvcs_and_logs_both_texts() {
        let (kcore, kserv) = layout();
        assert_eq!(kserv.text, 0x4400_0000..0x4400_1000);
        assert_eq!(kserv.hvc_returns, HashSet::from([0x4400_0104]));
        let args = ExitTracer::new(&kcore, &kserv).unwrap().qemu_args(Path::new("/tmp/log"));
        assert!(args.contains(&"0x40080000+0x2000,0x44000000+0x1000".to_string()), "{args:?}");
    }

    /// A share runs from a VCPU_RUN's vector entry to the next VCPU_RUN's: the run (exits
    /// served in place included) until KServ runs again, then KServ and its host calls.
    #[test]
    fn cuts_each_cores_instructions_at_its_vcpu_runs() {
        let (shares, outside, guest) = shares_of(&sample());
        assert_eq!(shares, [vec![share(9, 2, 5, true), share(3, 0, 2, false)], vec![share(5, 0, 1, false)]]);
        assert_eq!((outside, guest), (2, 1));
        assert_eq!((shares[0][0].el2(), shares[0][0].kserv()), (11, 5));
        assert_eq!((shares[0][1].el2(), shares[0][1].kserv()), (3, 0), "a core's last share is its VCPU_RUN");
    }

    /// Every counted instruction shows in the figures: a log with one of them dropped counts
    /// differently.
    #[test]
    fn a_dropped_instruction_changes_the_figures() {
        let log = sample();
        let classes = [vec![1, 0], vec![1]];
        let whole = by_class(&classes, &shares_of(&log).0, 2).unwrap();
        let total = |exits, el2, kserv, max_el2| ClassTotal { exits, el2, kserv, max_el2, spins: 0 };
        assert_eq!(whole, [total(1, 3, 0, 3), total(2, 16, 5, 11)]);
        let lines: Vec<&str> = log.lines().collect();
        let (mut counted, mut unchanged) = (0, Vec::new());
        for dropped in 0..lines.len() {
            let rest: String =
                lines.iter().enumerate().filter(|&(i, _)| i != dropped).map(|(_, l)| format!("{l}\n")).collect();
            let (shares, outside, guest) = shares_of(&rest);
            if (outside, guest) != (2, 1)
                || shares.iter().flatten().count() != 3
                || !lines[dropped].starts_with("Trace")
            {
                continue; // not an instruction of a share, or a VCPU_RUN's cut
            }
            counted += 1;
            if by_class(&classes, &shares, 2).as_ref() == Ok(&whole) {
                unchanged.push(dropped);
            }
        }
        // Only the teardown's instruction after core 0's last VCPU_RUN is in no figure.
        assert_eq!((counted, unchanged), (18, vec![lines.len() - 1]));
    }

    /// The k-th exit of a core is its k-th VCPU_RUN: a class list longer or shorter than the
    /// core's VCPU_RUNs fails, as does a VCPU_RUN that never came back.
    #[test]
    fn a_misaligned_class_list_fails() {
        let (shares, ..) = shares_of(&sample());
        let err = by_class(&[vec![1], vec![1]], &shares, 2).unwrap_err();
        assert!(err.contains("core 0: KServ recorded 1 exits, the trace shows 2 VCPU_RUNs"), "{err}");
        assert!(by_class(&[vec![1, 0, 0], vec![1]], &shares, 2).is_err());
        assert!(by_class(&[vec![1, 0]], &shares, 2).unwrap_err().contains("core 1"));
        assert!(by_class(&[vec![1, 0], vec![2]], &shares, 2).unwrap_err().contains("no class 2"));
        let mut lost = shares.clone();
        lost[1][0].returned = false;
        assert!(by_class(&[vec![1, 0], vec![1]], &lost, 2).unwrap_err().contains("never came back"));
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

//! Exact EL2 instruction counts per core from QEMU's execution trace.
//!
//! QEMU's INST_RETIRED under `-icount` is the machine's instruction count, not the core's: a core
//! parked at EL2 while QEMU runs another one counts that core's instructions too. The trace does
//! not: with `-accel tcg,one-insn-per-tb=on -d exec,nochain` QEMU logs every instruction it
//! executes as `Trace <cpu index>: <host ptr> [<cs_base>/<pc>/<flags>/<cflags>]`, and `-dfilter`
//! keeps the log to KCore's text; of that, only instructions at EL2 count (the TB flags say the
//! EL: a guest's code may lie at the same addresses). Icount stays on, so the cores take the
//! same turns as in a run without the trace.
//!
//! The log is cut into *visits*: a core's instructions from one of KCore's exception vectors
//! (a slot's first instruction) up to its next. A visit is one trap, entry to `eret`, as the
//! PMU benches measure it. A PC that only a marked host call runs cuts the run into *windows*
//! (how many times any core had run it when the visit began), and the `wfe` of every wait loop
//! in KCore (`machine::cpu::wait_until_equals`, where a core waits for its ticket lock's turn;
//! `yield` too, the pause of the spinning loop it replaced) counts the visit's waits.
//!
//! The ticket locks' takes and releases are found in the disassembly ([`lock_pcs`]); a visit
//! pairs each release with the latest take still open (guards drop in the reverse order of their
//! takes, as the rank order nests them) and counts how long it held its innermost lock.

use crate::artifacts;
use std::collections::HashSet;
use std::io::BufRead;
use std::ops::Range;
use std::path::Path;
use std::process::Command;

/// Vector slots are 0x80 bytes apart; a vector set (KCore's table and the guest's) is 0x1000.
pub(crate) const VECTOR_SLOT: u64 = 0x80;
const VECTOR_SET: u64 = 0x1000;
/// Where the guest's table begins in a vector set (KCore's own is below it).
pub(crate) const GUEST_TABLE: u64 = 0x800;
/// Offsets within a vector set: the host's synchronous trap (KCore's table, lower EL AArch64:
/// each table's first lower-EL entry) and a running guest's (the guest's table).
pub const HOST_SYNC: u64 = 0x400;
pub const GUEST_SYNC: u64 = GUEST_TABLE + HOST_SYNC;
/// The TB flags' MMU index (bits 4-7 of `<flags>` in QEMU 10) of code running at EL2
/// (`ARMMMUIdx_E2`; EL1 code under stage 2 has 2, `ARMMMUIdx_E10_1`): a guest's code may sit at
/// the same addresses as KCore's text (a Linux kernel loaded at IPA 0x4000_0000 does).
pub(crate) const EL2_MMU_INDEX: u64 = 6;
/// Two pauses of one wait loop are at most this many instructions apart (a turn of the ticket
/// lock's loop is four: `wfe`, `ldaxr`, `cmp`, `b.ne`); farther apart, or at another PC, they are
/// two waits.
const WAIT_LOOP_SPAN: u64 = 8;

/// What the trace needs to know of KCore's ELF.
#[derive(Debug, Clone)]
pub struct Kcore {
    /// KCore's `.text`: what `-dfilter` logs.
    pub text: Range<u64>,
    /// `__entry_vector_sets..__entry_vector_sets_end`.
    pub vectors: Range<u64>,
    /// The PCs of KCore's pauses in a wait loop: its `wfe`s and `yield`s.
    pub pauses: HashSet<u64>,
    /// The PCs of ticket lock takes and of guard releases.
    pub takes: HashSet<u64>,
    pub releases: HashSet<u64>,
    /// `llvm-nm -C` of the ELF: (address, demangled name).
    symbols: Vec<(u64, String)>,
}

/// Mangled-name pieces of the inlined functions that take a ticket: `TicketLock::lock` and
/// `try_lock`.
const LOCK_TAKERS: [&str; 2] = ["TicketLock$LT$T$GT$4lock", "TicketLock$LT$T$GT$8try_lock"];

/// The lock takes and releases of an annotated disassembly. A take is a store-exclusive inside
/// an inlined lock function's range. A release is `TicketGuard::drop`'s `ldr wN, [xA]`,
/// `add wN, wN, #0x1`, `stlr wN, [xA]` (the holder serving the next ticket): found by that shape,
/// not by its range, because LLVM merges the release stores of several paths into one
/// instruction that no longer carries its inlined-function range.
fn lock_pcs(disassembly: &str) -> (HashSet<u64>, HashSet<u64>) {
    let (mut takes, mut releases) = (HashSet::new(), HashSet::new());
    let mut open: Vec<&str> = Vec::new();
    // The last two instructions' mnemonic and operands, to recognise a release.
    let mut before: [(String, String); 2] = Default::default();
    for line in disassembly.lines() {
        if let Some(range) = line.strip_prefix(';') {
            let Some((at, _into)) = range.rsplit_once(" inlined into ") else { continue };
            let Some(function) = at.split_whitespace().last() else { continue };
            if at.contains(": end of ") {
                if let Some(i) = open.iter().rposition(|&f| f == function) {
                    open.remove(i);
                }
            } else {
                open.push(function);
            }
            continue;
        }
        if let Some(header) = line.strip_suffix(">:") {
            // `<address> <symbol>:`: a new function, whose name is its only open range.
            open = header.split_once(" <").map(|(_, name)| vec![name]).unwrap_or_default();
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(address), Some(mnemonic)) = (fields.next(), fields.next()) else { continue };
        let Some(pc) = address.split(':').next().and_then(|a| u64::from_str_radix(a.trim(), 16).ok()) else {
            continue;
        };
        let (mnemonic, operands) = (mnemonic.trim().to_string(), fields.next().unwrap_or("").trim().to_string());
        let within_lock = open.iter().any(|f| LOCK_TAKERS.iter().any(|t| f.contains(t)));
        if (mnemonic == "stxr" || mnemonic == "stlxr") && within_lock {
            takes.insert(pc);
        }
        if mnemonic == "stlr" && is_release(&before, &operands) {
            releases.insert(pc);
        }
        before = [before[1].clone(), (mnemonic, operands)];
    }
    (takes, releases)
}

/// Whether `stlr <operands>` after `before` serves the next ticket: `ldr wN, [xA]`,
/// `add wN, wN, #0x1`, `stlr wN, [xA]`.
fn is_release(before: &[(String, String); 2], operands: &str) -> bool {
    let Some((value, address)) = operands.split_once(", ") else { return false };
    let load = ("ldr".to_string(), format!("{value}, {address}"));
    let increment = ("add".to_string(), format!("{value}, {value}, #0x1"));
    before[0] == load && before[1] == increment
}

impl Kcore {
    /// Reads KCore's text, vectors, pauses and symbols from `elf` with the toolchain's LLVM tools.
    pub fn of_elf(elf: &Path) -> Result<Kcore, String> {
        let tool = |name: &str, args: &[&str]| -> Result<String, String> {
            let out = Command::new(artifacts::llvm_tool(name)?)
                .args(args)
                .arg(elf)
                .output()
                .map_err(|e| format!("{name}: {e}"))?;
            if !out.status.success() {
                return Err(format!("{name} {} failed: {}", elf.display(), String::from_utf8_lossy(&out.stderr)));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let disassembly = tool("llvm-objdump", &["-d", "--debug-inlined-funcs=limits-only"])?;
        let kcore = Kcore::parse(&tool("llvm-objdump", &["-h"])?, &tool("llvm-nm", &["-n", "-C"])?, &disassembly)?;
        if kcore.takes.is_empty() || kcore.releases.is_empty() {
            return Err(format!(
                "{}: {} ticket lock takes and {} releases found in the disassembly: did the lock's code change?",
                elf.display(),
                kcore.takes.len(),
                kcore.releases.len()
            ));
        }
        Ok(kcore)
    }

    /// [`Kcore::of_elf`] from the tools' outputs: section headers, symbols, disassembly (with
    /// its inlined functions' ranges).
    pub fn parse(headers: &str, nm: &str, disassembly: &str) -> Result<Kcore, String> {
        let text = text_section(headers).ok_or("KCore's ELF has no .text")?;
        let symbols: Vec<(u64, String)> = nm
            .lines()
            .filter_map(|l| {
                let (address, rest) = l.split_once(' ')?;
                let (_kind, name) = rest.split_once(' ')?;
                Some((u64::from_str_radix(address, 16).ok()?, name.to_string()))
            })
            .collect();
        let pauses = disassembly
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "wfe" || w == "yield"))
            .filter_map(|l| u64::from_str_radix(l.split(':').next()?.trim(), 16).ok())
            .collect();
        let (takes, releases) = lock_pcs(disassembly);
        let mut kcore = Kcore { text, vectors: 0..0, pauses, takes, releases, symbols };
        kcore.vectors = kcore.symbol("__entry_vector_sets")?..kcore.symbol("__entry_vector_sets_end")?;
        Ok(kcore)
    }

    /// The address of the symbol `path` (a demangled Rust path, without its hash, or a plain name).
    pub fn symbol(&self, path: &str) -> Result<u64, String> {
        self.symbols
            .iter()
            .find(|(_, name)| name == path || name.strip_prefix(path).is_some_and(|hash| hash.starts_with("::h")))
            .map(|&(address, _)| address)
            .ok_or(format!("KCore's ELF has no symbol {path}"))
    }

    /// QEMU's options that log KCore's instructions, one per block, into `log`.
    pub fn qemu_args(&self, log: &Path) -> Vec<String> {
        let range = format!("{:#x}+{:#x}", self.text.start, self.text.end - self.text.start);
        let log = log.display().to_string();
        ["-accel", "tcg,one-insn-per-tb=on", "-d", "exec,nochain", "-dfilter", &range, "-D", &log]
            .map(str::to_string)
            .to_vec()
    }

    /// The offset of `pc` in its vector set if it is the first instruction of a vector slot.
    pub(crate) fn vector_entry(&self, pc: u64) -> Option<u64> {
        let offset = pc.checked_sub(self.vectors.start)?;
        (pc < self.vectors.end && offset % VECTOR_SLOT == 0).then_some(offset % VECTOR_SET)
    }
}

/// The `.text` section's addresses in `llvm-objdump -h`'s section headers.
pub(crate) fn text_section(headers: &str) -> Option<Range<u64>> {
    headers.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words[..] {
            [_, ".text", size, vma, ..] => {
                let (size, vma) = (u64::from_str_radix(size, 16).ok()?, u64::from_str_radix(vma, 16).ok()?);
                Some(vma..vma + size)
            }
            _ => None,
        }
    })
}

/// One trap on one core: its instructions at EL2 from the vector to the `eret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    pub cpu: usize,
    /// How many marks the run had passed when the visit began.
    pub window: usize,
    /// The vector slot it came in by: its offset in the vector set ([`HOST_SYNC`], [`GUEST_SYNC`]).
    pub entry: u64,
    pub instructions: u64,
    /// Pauses (`wfe`, `yield`) executed: turns of a wait loop.
    pub spins: u64,
    /// Wait loops entered: how many times the core found a lock taken.
    pub waits: u64,
    /// Bit `i` set if the visit ran the `i`th watched PC.
    pub watched: u64,
    /// Locks it took and released, how deep they nested (1: never two at once), and its
    /// instructions holding its innermost lock (summed over the holds at that depth): from the
    /// take (or, if it waited, its wait loop's last pause) to the release store, inclusive.
    pub locks: u64,
    pub depth: u64,
    pub inner_held: u64,
}

impl Visit {
    pub fn ran(&self, watched: usize) -> bool {
        self.watched >> watched & 1 != 0
    }
}

/// The state of one core's visit in progress.
#[derive(Default)]
struct Open {
    visit: Option<Visit>,
    /// The last pause's PC and the visit's instruction count there.
    last_pause: Option<(u64, u64)>,
    /// The visit's instruction counts at the takes of the locks it holds, innermost last, and
    /// the last take's PC and count (a retried store-exclusive is one take).
    held: Vec<u64>,
    last_take: Option<(u64, u64)>,
}

/// Cuts a trace, line by line, into [`Visit`]s.
pub struct Tracer<'a> {
    kcore: &'a Kcore,
    mark: u64,
    watch: Vec<u64>,
    marks: usize,
    open: Vec<Open>,
    visits: Vec<Visit>,
    /// Instructions at EL2 in KCore's text, the ones among them outside any visit (boot), and
    /// the instructions in the same range at another EL (a guest's), not counted.
    pub instructions: u64,
    pub outside_visits: u64,
    pub other_el: u64,
}

impl<'a> Tracer<'a> {
    /// A tracer whose windows are cut at `mark`, noting which of `watch` each visit runs (at
    /// most 64).
    pub fn new(kcore: &'a Kcore, mark: u64, watch: &[u64]) -> Tracer<'a> {
        assert!(watch.len() <= 64, "at most 64 watched PCs");
        Tracer {
            kcore,
            mark,
            watch: watch.to_vec(),
            marks: 0,
            open: Vec::new(),
            visits: Vec::new(),
            instructions: 0,
            outside_visits: 0,
            other_el: 0,
        }
    }

    /// Takes one line of the log; lines that are not an executed instruction are skipped.
    pub fn line(&mut self, line: &str) {
        if let Some((cpu, pc, flags)) = parse_line(line) {
            if !self.kcore.text.contains(&pc) {
                return;
            }
            if flags >> 4 & 0xf != EL2_MMU_INDEX {
                self.other_el += 1;
                return;
            }
            self.instruction(cpu, pc);
        }
    }

    fn instruction(&mut self, cpu: usize, pc: u64) {
        self.instructions += 1;
        if self.open.len() <= cpu {
            self.open.resize_with(cpu + 1, Open::default);
        }
        let open = &mut self.open[cpu];
        if let Some(entry) = self.kcore.vector_entry(pc) {
            self.visits.extend(open.visit.take());
            open.last_pause = None;
            open.held.clear();
            open.last_take = None;
            let window = self.marks;
            open.visit = Some(Visit {
                cpu,
                window,
                entry,
                instructions: 0,
                spins: 0,
                waits: 0,
                watched: 0,
                locks: 0,
                depth: 0,
                inner_held: 0,
            });
        }
        if pc == self.mark {
            self.marks += 1;
        }
        let Some(visit) = open.visit.as_mut() else {
            self.outside_visits += 1;
            return;
        };
        visit.instructions += 1;
        if let Some(i) = self.watch.iter().position(|&w| w == pc) {
            visit.watched |= 1 << i;
        }
        if self.kcore.pauses.contains(&pc) {
            visit.spins += 1;
            let same_wait =
                open.last_pause.is_some_and(|(at, count)| at == pc && visit.instructions - count <= WAIT_LOOP_SPAN);
            if !same_wait {
                visit.waits += 1;
            }
            open.last_pause = Some((pc, visit.instructions));
            // A wait for the innermost lock: it is held from the wait's end.
            if let Some(taken) = open.held.last_mut() {
                *taken = visit.instructions;
            }
        }
        if self.kcore.takes.contains(&pc) {
            let retried =
                open.last_take.is_some_and(|(at, count)| at == pc && visit.instructions - count <= WAIT_LOOP_SPAN);
            if !retried {
                open.held.push(visit.instructions);
            }
            open.last_take = Some((pc, visit.instructions));
        }
        if self.kcore.releases.contains(&pc) {
            let depth = open.held.len() as u64;
            if let Some(taken) = open.held.pop() {
                let held = visit.instructions - taken + 1;
                visit.locks += 1;
                if depth > visit.depth {
                    (visit.depth, visit.inner_held) = (depth, held);
                } else if depth == visit.depth {
                    visit.inner_held += held;
                }
            }
        }
    }

    /// Every visit, the ones still open at the end of the log included, in the order they began
    /// per core (and ended overall).
    pub fn finish(mut self) -> Vec<Visit> {
        for open in &mut self.open {
            self.visits.extend(open.visit.take());
        }
        self.visits
    }

    /// Reads a whole log.
    pub fn read(&mut self, log: impl BufRead) -> Result<(), String> {
        let mut log = log;
        let mut line = String::new();
        loop {
            line.clear();
            match log.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => self.line(&line),
                Err(e) => return Err(format!("reading the trace: {e}")),
            }
        }
    }
}

/// What [`traced`] feeds a log to: [`Tracer`], or another cut of the same log.
pub trait ReadsTrace {
    fn read(&mut self, log: impl BufRead) -> Result<(), String>;
}

impl ReadsTrace for Tracer<'_> {
    fn read(&mut self, log: impl BufRead) -> Result<(), String> {
        Tracer::read(self, log)
    }
}

/// The cpu index, PC and TB flags of a `Trace <cpu>: <ptr> [<cs_base>/<pc>/<flags>/<cflags>]` line.
pub(crate) fn parse_line(line: &str) -> Option<(usize, u64, u64)> {
    let rest = line.strip_prefix("Trace ")?;
    let (cpu, rest) = rest.split_once(':')?;
    let (_, tb) = rest.split_once('[')?;
    let mut fields = tb.split('/');
    let (pc, flags) = (fields.nth(1)?, fields.next()?);
    Some((cpu.parse().ok()?, u64::from_str_radix(pc, 16).ok()?, u64::from_str_radix(flags, 16).ok()?))
}

/// Runs `command` (QEMU, with [`Kcore::qemu_args`] logging into `fifo`) by `run` while a second
/// thread feeds the log to `tracer` through the named pipe `fifo`: the log of a whole run is
/// gigabytes, and never reaches the disk. `fifo` is made here and removed after.
pub fn traced<T>(
    fifo: &Path,
    tracer: &mut (impl ReadsTrace + Send),
    run: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let _ = std::fs::remove_file(fifo);
    let made = Command::new("mkfifo").arg(fifo).status().map_err(|e| format!("cannot run mkfifo: {e}"))?;
    if !made.success() {
        return Err(format!("mkfifo {} failed", fifo.display()));
    }
    let result = std::thread::scope(|scope| {
        let reader = scope.spawn(|| -> Result<(), String> {
            let log = std::fs::File::open(fifo).map_err(|e| format!("{}: {e}", fifo.display()))?;
            tracer.read(std::io::BufReader::with_capacity(1 << 20, log))
        });
        let ran = run();
        // A QEMU that never opened the pipe leaves the reader waiting in `open`: opening the
        // write end without blocking (fails with no reader) lets it through to end-of-file.
        if !reader.is_finished() {
            use std::os::unix::fs::OpenOptionsExt;
            const O_NONBLOCK: i32 = 0o4000; // Linux's
            let _ = std::fs::OpenOptions::new().write(true).custom_flags(O_NONBLOCK).open(fifo);
        }
        let read = reader.join().unwrap_or_else(|_| Err("the trace reader panicked".into()));
        ran.and_then(|ran| read.map(|()| ran))
    });
    let _ = std::fs::remove_file(fifo);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kcore() -> Kcore {
        let headers = "Idx Name Size VMA Type\n  1 .text 00002000 0000000040080000 TEXT\n";
        let nm = "0000000040080000 T __entry_vector_sets\n\
                  0000000040081000 T __entry_vector_sets_end\n\
                  0000000040081100 t kcore::handlers::mark::h0123456789abcdef\n";
        let disassembly = "40081204: 5f 20 03 d5  \twfe\n40081800: 3f 20 03 d5  \tyield\n40081804:      \tsevl\n";
        Kcore::parse(headers, nm, disassembly).unwrap()
    }

    fn line(cpu: usize, pc: u64) -> String {
        format!("Trace {cpu}: 0x7fea10000100 [00000000/{pc:016x}/00000061/ff022201] \n")
    }

    #[test]
    fn reads_the_elf_tools_outputs() {
        let k = kcore();
        assert_eq!(k.text, 0x4008_0000..0x4008_2000);
        assert_eq!(k.vectors, 0x4008_0000..0x4008_1000);
        assert_eq!(k.symbol("kcore::handlers::mark"), Ok(0x4008_1100));
        assert!(k.symbol("kcore::handlers").is_err(), "a path's prefix is not the symbol");
        assert!(k.pauses.contains(&0x4008_1204) && k.pauses.contains(&0x4008_1800), "wfe and yield pause");
        assert!(!k.pauses.contains(&0x4008_1804), "sevl does not");
        assert_eq!(k.vector_entry(0x4008_0400), Some(HOST_SYNC));
        assert_eq!(k.vector_entry(0x4008_0c00), Some(GUEST_SYNC));
        assert_eq!(k.vector_entry(0x4008_0404), None);
        assert_eq!(k.vector_entry(0x4008_1000), None);
        assert_eq!(
            parse_line("Trace 3: 0x7fea10000100 [00004000/0000000040200000/00000521/ff022201] "),
            Some((3, 0x4020_0000, 0x521))
        );
        assert_eq!(parse_line("Stopped execution of TB chain before 0x7fea10000100 [0000000040200000]"), None);
    }

    /// Visits per core, interleaved as QEMU's turns interleave them; windows cut at the mark;
    /// a wait counted once however many turns its loop makes.
    #[test]
    fn cuts_visits_per_core_and_counts_waits() {
        let k = kcore();
        let mut t = Tracer::new(&k, 0x4008_1100, &[0x4008_1208]);
        let mut log = String::new();
        log += &line(0, 0x4008_1300); // boot: outside any visit
        for pc in [0x4008_0400, 0x4008_1100, 0x4008_1104] {
            log += &line(0, pc); // core 0: a host trap that passes the mark
        }
        log += &line(1, 0x4008_0400); // core 1 enters, then finds the lock taken
        for _ in 0..3 {
            for pc in [0x4008_1204, 0x4008_1208, 0x4008_120c] {
                log += &line(1, pc); // three turns of one wait loop: wfe, ldaxr, cmp (b.ne)
            }
        }
        log += "Stopped execution of TB chain before 0x7fea10000100 [0000000040081200]\n";
        log += &line(2, 0x5000_0000); // outside KCore's text
        log += "Trace 2: 0x7fea10000100 [00004000/0000000040080400/00000121/ff022201] \n"; // at EL1
        log += &line(0, 0x4008_0c00); // core 0's next trap ends its first
        for i in 0..9 {
            log += &line(1, 0x4008_1300 + 4 * i); // core 1 got the lock and went on
        }
        log += &line(1, 0x4008_1204); // then found a lock taken again
        t.read(log.as_bytes()).unwrap();
        assert_eq!((t.instructions, t.outside_visits, t.other_el), (25, 1, 1));
        let visits = t.finish();
        let v = |cpu, window, entry, instructions, spins, waits, watched| Visit {
            cpu,
            window,
            entry,
            instructions,
            spins,
            waits,
            watched,
            locks: 0,
            depth: 0,
            inner_held: 0,
        };
        assert_eq!(
            visits,
            [v(0, 0, HOST_SYNC, 3, 0, 0, 0), v(0, 1, GUEST_SYNC, 1, 0, 0, 0), v(1, 1, HOST_SYNC, 20, 4, 2, 1)]
        );
        assert!(visits[2].ran(0) && !visits[0].ran(0));
    }

    /// Takes and releases from a recorded disassembly (look-alikes excluded), and a fault's hold
    /// counted from its wait's last pause to the release; two nested holds count the inner one.
    #[test]
    fn finds_lock_takes_and_releases_and_counts_the_innermost_hold() {
        let headers = "  1 .text 00030000 0000000040080000 TEXT\n";
        let nm = "0000000040081000 T __entry_vector_sets\n0000000040082000 T __entry_vector_sets_end\n";
        let k = Kcore::parse(headers, nm, include_str!("../testdata/lock-disassembly.txt")).unwrap();
        assert_eq!(k.takes, HashSet::from([0x400a_5e94]), "fetch_add's stxr inside TicketLock::lock only");
        assert_eq!(k.releases, HashSet::from([0x400a_6848]), "ldr, add #0x1, stlr to one address only");
        assert!(k.pauses.contains(&0x400a_5eb4));
        let mut log = line(0, 0x4008_1400);
        let take = [0x400a_5e8c, 0x400a_5e90, 0x400a_5e94, 0x400a_5e98];
        let turn = [0x400a_5eb4, 0x400a_5eb8, 0x400a_5ebc, 0x400a_5ec0];
        // A retried store-exclusive, the ticket not served, two turns of the wfe loop, release.
        let pcs = take.iter().chain(&take).chain(&[0x400a_5e9c, 0x400a_5ea0, 0x400a_5ea4, 0x400a_5ea8, 0x400a_5eac]);
        let pcs = pcs.chain(&[0x400a_5eb0]).chain(&turn).chain(&turn).chain(&[0x400a_5ec4, 0x400a_6840, 0x400a_6844]);
        let look_alikes = [0x400a_6900, 0x400a_6904, 0x400a_6908, 0x400a_690c, 0x400a_6910, 0x400a_6914];
        for &pc in pcs.chain(&[0x400a_6848]).chain(&look_alikes) {
            log += &line(0, pc);
        }
        // Core 1 nests two locks: 2 instructions held inside, 12 outside.
        log += &line(1, 0x4008_1400);
        let filler = |n: u64| (0..n).map(|i| line(1, 0x400a_7000 + 4 * i)).collect::<String>();
        log += &(line(1, 0x400a_5e94) + &filler(9) + &line(1, 0x400a_5e94) + &filler(1) + &line(1, 0x400a_6848));
        log += &(filler(1) + &line(1, 0x400a_6848));
        let mut t = Tracer::new(&k, 0, &[]);
        t.read(log.as_bytes()).unwrap();
        let visits = t.finish();
        let shape = |v: &Visit| (v.locks, v.depth, v.inner_held, v.waits, v.spins);
        assert_eq!(shape(&visits[0]), (1, 1, 8, 1, 2), "held from the last wfe to the stlr: 8 instructions");
        assert_eq!(shape(&visits[1]), (2, 2, 3, 0, 0));
    }
}

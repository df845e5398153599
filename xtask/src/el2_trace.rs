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
//! (how many times any core had run it when the visit began), and `yield`, the body of every
//! wait loop in KCore (`machine::cpu::relax`, `TicketLock::lock`), counts the visit's waits.

use crate::artifacts;
use std::collections::HashSet;
use std::io::BufRead;
use std::ops::Range;
use std::path::Path;
use std::process::Command;

/// Vector slots are 0x80 bytes apart; a vector set (KCore's table and the guest's) is 0x1000.
const VECTOR_SLOT: u64 = 0x80;
const VECTOR_SET: u64 = 0x1000;
/// Offsets within a vector set: the host's synchronous trap (KCore's table, lower EL AArch64)
/// and a running guest's (the guest's table, 0x800 on).
pub const HOST_SYNC: u64 = 0x400;
pub const GUEST_SYNC: u64 = 0xc00;
/// The TB flags' MMU index (bits 4-7 of `<flags>` in QEMU 10) of code running at EL2
/// (`ARMMMUIdx_E2`; EL1 code under stage 2 has 2, `ARMMMUIdx_E10_1`): a guest's code may sit at
/// the same addresses as KCore's text (a Linux kernel loaded at IPA 0x4000_0000 does).
pub(crate) const EL2_MMU_INDEX: u64 = 6;
/// Two `yield`s of one wait loop are at most this many instructions apart (a turn of
/// `TicketLock::lock`'s loop is five: `ldar`, `cmp`, `b.eq`, `yield`, `b`); farther apart, or at
/// another PC, they are two waits.
const WAIT_LOOP_SPAN: u64 = 8;

/// What the trace needs to know of KCore's ELF.
#[derive(Debug, Clone)]
pub struct Kcore {
    /// KCore's `.text`: what `-dfilter` logs.
    pub text: Range<u64>,
    /// `__entry_vector_sets..__entry_vector_sets_end`.
    pub vectors: Range<u64>,
    /// The PCs of KCore's `yield`s.
    pub yields: HashSet<u64>,
    /// `llvm-nm -C` of the ELF: (address, demangled name).
    symbols: Vec<(u64, String)>,
}

impl Kcore {
    /// Reads KCore's text, vectors, `yield`s and symbols from `elf` with the toolchain's LLVM tools.
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
        Kcore::parse(&tool("llvm-objdump", &["-h"])?, &tool("llvm-nm", &["-n", "-C"])?, &tool("llvm-objdump", &["-d"])?)
    }

    /// [`Kcore::of_elf`] from the tools' outputs: section headers, symbols, disassembly.
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
        let yields = disassembly
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "yield"))
            .filter_map(|l| u64::from_str_radix(l.split(':').next()?.trim(), 16).ok())
            .collect();
        let mut kcore = Kcore { text, vectors: 0..0, yields, symbols };
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
    /// `yield`s executed: turns of a wait loop.
    pub spins: u64,
    /// Wait loops entered: how many times the core found a lock taken.
    pub waits: u64,
    /// Bit `i` set if the visit ran the `i`th watched PC.
    pub watched: u64,
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
    /// The last `yield`'s PC and the visit's instruction count there.
    last_yield: Option<(u64, u64)>,
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
            open.last_yield = None;
            let window = self.marks;
            open.visit = Some(Visit { cpu, window, entry, instructions: 0, spins: 0, waits: 0, watched: 0 });
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
        if self.kcore.yields.contains(&pc) {
            visit.spins += 1;
            let same_wait =
                open.last_yield.is_some_and(|(at, count)| at == pc && visit.instructions - count <= WAIT_LOOP_SPAN);
            if !same_wait {
                visit.waits += 1;
            }
            open.last_yield = Some((pc, visit.instructions));
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
        let disassembly = "40081208:      \tyield\n";
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
        assert!(k.yields.contains(&0x4008_1208));
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
        let mut t = Tracer::new(&k, 0x4008_1100, &[0x4008_1200]);
        let mut log = String::new();
        log += &line(0, 0x4008_1300); // boot: outside any visit
        for pc in [0x4008_0400, 0x4008_1100, 0x4008_1104] {
            log += &line(0, pc); // core 0: a host trap that passes the mark
        }
        log += &line(1, 0x4008_0400); // core 1 enters, then finds the lock taken
        for _ in 0..3 {
            for pc in [0x4008_1200, 0x4008_1204, 0x4008_1208] {
                log += &line(1, pc); // three turns of one wait loop
            }
        }
        log += "Stopped execution of TB chain before 0x7fea10000100 [0000000040081200]\n";
        log += &line(2, 0x5000_0000); // outside KCore's text
        log += "Trace 2: 0x7fea10000100 [00004000/0000000040080400/00000121/ff022201] \n"; // at EL1
        log += &line(0, 0x4008_0c00); // core 0's next trap ends its first
        for i in 0..9 {
            log += &line(1, 0x4008_1300 + 4 * i); // core 1 got the lock and went on
        }
        log += &line(1, 0x4008_1208); // then found a lock taken again
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
        };
        assert_eq!(
            visits,
            [v(0, 0, HOST_SYNC, 3, 0, 0, 0), v(0, 1, GUEST_SYNC, 1, 0, 0, 0), v(1, 1, HOST_SYNC, 20, 4, 2, 1)]
        );
        assert!(visits[2].ran(0) && !visits[0].ran(0));
    }
}

//! The host's DMA through QEMU's edu device, behind the SMMUv3 that KCore owns (issue 15): the
//! PCI bring-up and edu driver, and the scenarios `dma-host` (the host's own DMA works),
//! `dma-attacks` (DMA at KCore's and a VM's memory is blocked) and `smmu-tamper` (the SMMU's
//! registers and KCore's tables are out of the host's reach, and its hypercall refuses bad
//! requests).

use crate::arch::{exceptions, gic, hvc};
use crate::dtb::{GicInfo, PciHost};
use crate::kprintln;
use crate::pci::{self, ConfigSpace, Function};
use crate::vm_scenarios::{create_all, VmEnv};
use crate::vmm::{Hooks, Manager, Vm};
use corevisor_abi::{host_call, HypResult, Status};

type Outcome = Result<(), &'static str>;

const PAGE: u64 = 4096;
const EDU_VENDOR: u16 = 0x1234;
const EDU_DEVICE: u16 = 0x11e8;

/// The configuration space through ECAM, with the single-instruction accessors.
struct Ecam(u64);

impl ConfigSpace for Ecam {
    fn read32(&mut self, offset: u64) -> u32 {
        hvc::read_mmio_u32(self.0 + offset)
    }
    fn write32(&mut self, offset: u64, value: u32) {
        hvc::write_mmio_u32(self.0 + offset, value)
    }
}

/// QEMU virt's PCIe host when the DTB names none.
fn board_pci() -> PciHost {
    use corevisor_boards::qemu_virt::{PCIE_ECAM, PCIE_MMIO};
    PciHost {
        ecam: (PCIE_ECAM.base, PCIE_ECAM.size),
        mmio32: (PCIE_MMIO.base, PCIE_MMIO.base, PCIE_MMIO.size),
        iommu_map: Some((0, 0, 0x1_0000)),
    }
}

/// The edu device: its BAR0 registers, and its SMMU stream.
pub struct Edu {
    bar: u64,
    pub stream: u64,
    /// Busy-bit polls over every DMA so far (one per wait: never wall time).
    pub polls: u64,
}

mod reg {
    pub const ID: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const DMA_SOURCE: u64 = 0x80;
    pub const DMA_DESTINATION: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_COMMAND: u64 = 0x98;
}
/// DMA command bits: start (reads as busy until done), and the direction edu to RAM.
const DMA_START: u64 = 1;
const DMA_TO_RAM: u64 = 1 << 1;
/// edu's 4 KiB buffer, at this device address.
const EDU_BUFFER: u64 = 0x4_0000;
/// edu starts a DMA some 100 ms of virtual time after it is told to: each wait idles 125 ms
/// (the timer armed, WFI; under `-icount sleep=off` idle time is skipped), and a DMA still busy
/// after this many waits has failed.
const DMA_WAITS: u64 = 8;

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// RAM at the address into edu's buffer: the device reads memory.
    IntoEdu,
    /// edu's buffer out to RAM at the address: the device writes memory.
    OutOfEdu,
}

impl Edu {
    /// Finds edu on the PCIe host, places its BAR0, turns on memory decoding and bus mastering,
    /// checks its id and liveness registers, and enables the physical timer's interrupt for the
    /// DMA waits. `scenario` prefixes the lines.
    pub fn bring_up(gic_info: &GicInfo, host: Option<PciHost>, scenario: &str) -> Result<Edu, &'static str> {
        let host = host.unwrap_or_else(board_pci);
        let mut ecam = Ecam(host.ecam.0);
        let f = pci::find(&mut ecam, EDU_VENDOR, EDU_DEVICE).ok_or("no edu device (1234:11e8) on PCI bus 0")?;
        let bar = pci::enable_bar0(&mut ecam, f, host.mmio32)?;
        let rid = f.requester_id();
        let stream = host.stream_id(rid).ok_or("edu's requester id is outside the PCI host's iommu-map")?;
        let Function { bus, device, function } = f;
        kprintln!(
            "{scenario}: edu {EDU_VENDOR:04x}:{EDU_DEVICE:04x} at {bus:02x}:{device:02x}.{function}, requester id \
             {rid:#06x} = stream {stream:#06x}, BAR0 {} KiB at {:#x}",
            bar.size / 1024,
            bar.cpu
        );
        let edu = Edu { bar: bar.cpu, stream, polls: 0 };
        let id = hvc::read_mmio_u32(edu.bar + reg::ID);
        if id & 0xff != 0xed {
            return Err("edu's id register does not read 0x..ed");
        }
        let probe = 0x1234_5678;
        hvc::write_mmio_u32(edu.bar + reg::LIVENESS, probe);
        let back = hvc::read_mmio_u32(edu.bar + reg::LIVENESS);
        kprintln!("{scenario}: edu id {id:#x}; liveness: wrote {probe:#x}, read back {back:#x}");
        if back != !probe {
            return Err("edu's liveness register did not invert what was written");
        }
        gic::enable_ppi(gic_info, gic::TIMER_PPI);
        Ok(edu)
    }

    /// Attaches edu's stream to the host (SMMU_ATTACH_STREAM x1 = stream, x2 = 0); KCore's answer.
    pub fn attach_to_host(&self, scenario: &str) -> Status {
        let r = hvc::hyp_call(host_call::SMMU_ATTACH_STREAM, [self.stream, 0, 0, 0, 0, 0]);
        let status = Status::from_reg(r.status).unwrap_or(Status::InternalFailure);
        kprintln!("{scenario}: SMMU_ATTACH_STREAM {:#06x} to the host: {status:?}", self.stream);
        status
    }

    /// One DMA of `len` bytes between `ram` and the start of edu's buffer, waited for: the
    /// timer armed and WFI, then the busy bit polled. Fails (with a line) if edu is still busy
    /// after [`DMA_WAITS`] waits. A DMA the SMMU refuses completes as far as edu can tell.
    pub fn transfer(&mut self, direction: Direction, ram: u64, len: u64) -> Outcome {
        let (source, destination, command) = match direction {
            Direction::IntoEdu => (ram, EDU_BUFFER, DMA_START),
            Direction::OutOfEdu => (EDU_BUFFER, ram, DMA_START | DMA_TO_RAM),
        };
        hvc::write_mmio_u64(self.bar + reg::DMA_SOURCE, source);
        hvc::write_mmio_u64(self.bar + reg::DMA_DESTINATION, destination);
        hvc::write_mmio_u64(self.bar + reg::DMA_COUNT, len);
        hvc::write_mmio_u64(self.bar + reg::DMA_COMMAND, command);
        let wait = hvc::counter_frequency() / 8;
        for _ in 0..DMA_WAITS {
            gic::idle_until(hvc::counter() + wait);
            self.polls += 1;
            if hvc::read_mmio_u64(self.bar + reg::DMA_COMMAND) & DMA_START == 0 {
                return Ok(());
            }
        }
        kprintln!("edu: DMA {direction:?} at {ram:#x} still busy after {DMA_WAITS} waits");
        Err("edu's DMA never finished")
    }
}

/// Host pages for the DMAs, in a VM region no VM of the scenario uses: `filler` and `pattern`
/// are written by the CPU, `result` is read by it, `fresh` (in another 2 MiB block) is never
/// touched by the CPU before a DMA writes it.
pub struct HostPages {
    pub filler: u64,
    pub pattern: u64,
    pub result: u64,
    pub fresh: u64,
}

/// What the filler page holds: recognisably the host's, unlike any target's contents, and never
/// zero in any 32-bit half (an attack moves the first word's low half, which must not look like
/// a refused read's zero).
fn filler_word(i: u64) -> u64 {
    0xf111_e200_f111_0000 | i
}

fn pattern_word(i: u64) -> u64 {
    0xd3a0_0000_0000_0000 | i.wrapping_mul(0x9e37_79b9) & 0xffff_ffff
}

impl HostPages {
    /// The last VM region (`dma-attacks` runs one VM, in the first).
    fn new(env: &VmEnv) -> Result<HostPages, &'static str> {
        let &(base, size) = env.regions.iter().flatten().last().ok_or("no free host RAM region")?;
        if size < 6 << 20 {
            return Err("the free host RAM region is too small");
        }
        let pages = HostPages { filler: base, pattern: base + PAGE, result: base + 2 * PAGE, fresh: base + (4 << 20) };
        for i in 0..PAGE / 8 {
            crate::arch::cpu::write_phys_u64(pages.filler + 8 * i, filler_word(i));
            crate::arch::cpu::write_phys_u64(pages.pattern + 8 * i, pattern_word(i));
        }
        Ok(pages)
    }
}

/// The pattern page into edu and back out to `destination`; how many of its bytes arrived.
fn round_trip(edu: &mut Edu, pages: &HostPages, destination: u64) -> Result<u64, &'static str> {
    edu.transfer(Direction::IntoEdu, pages.pattern, PAGE)?;
    edu.transfer(Direction::OutOfEdu, destination, PAGE)?;
    Ok((0..PAGE).filter(|&b| hvc::read_u8(destination + b) == hvc::read_u8(pages.pattern + b)).count() as u64)
}

/// `dma-host`: the host programs edu to DMA a pattern from one of its pages into the device and
/// back out to a page the CPU never touched (the host's SMMU table holds every host page from
/// the start), then to one it did: every byte arrives. edu's liveness register works.
pub fn dma_host(env: &VmEnv, gic_info: &GicInfo, host: Option<PciHost>) -> Outcome {
    let mut edu = Edu::bring_up(gic_info, host, "dma-host")?;
    let attached = edu.attach_to_host("dma-host");
    let pages = HostPages::new(env)?;
    let targets =
        [(pages.fresh, "in a 2 MiB block the CPU never touched"), (pages.result, "beside the pages the CPU wrote")];
    for (destination, what) in targets {
        let arrived = round_trip(&mut edu, &pages, destination)?;
        kprintln!(
            "dma-host: {PAGE} bytes from {:#x} into edu and out to {destination:#x} ({what}): {arrived} of {PAGE} \
             arrived",
            pages.pattern
        );
        if arrived != PAGE {
            return Err("the host's DMA did not bring its data");
        }
    }
    kprintln!("dma-host: {} DMAs waited for with {} busy-bit polls", 2 * targets.len(), edu.polls);
    match attached {
        Status::Success => Ok(()),
        _ => Err("SMMU_ATTACH_STREAM did not attach edu to the host"),
    }
}

/// Makes a host call so that KCore drains its SMMU event queue (it logs every blocked DMA
/// before the host's next call returns).
fn let_kcore_drain() {
    hvc::hyp_call(host_call::VERSION, [0; 6]);
}

/// How many bytes an attack moves: one word, so that the SMMU records exactly one fault event
/// per attempt (QEMU makes a refused DMA one access per word, each a fault event; a page's
/// worth would overflow KCore's event queue) and KCore's `blocked DMA #n` is attempt n.
const ATTACK_BYTES: u64 = 4;

/// Tries to write and then read a word at `target` through edu, with edu's buffer holding the
/// filler. The write must change nothing (the guest's and KCore's own checks tell). The read
/// must bring nothing: QEMU ends a DMA read the SMMU refuses with zeros, so the buffer's first
/// word, written out to the result page, must be zero. The filler's word there would mean the
/// write reached the target and the read brought it back; anything else, the target's own
/// contents. Returns whether the read brought nothing; `attempts` counts the two attempts, each
/// named in a line with its number and target address.
fn attack(
    edu: &mut Edu,
    pages: &HostPages,
    target: u64,
    what: &str,
    attempts: &mut u64,
    scenario: &str,
) -> Result<bool, &'static str> {
    edu.transfer(Direction::IntoEdu, pages.filler, PAGE)?;
    edu.transfer(Direction::OutOfEdu, target, ATTACK_BYTES)?;
    let_kcore_drain();
    *attempts += 1;
    kprintln!("{scenario}: attempt {attempts}: DMA write of the filler to {what} at {target:#x}");
    edu.transfer(Direction::IntoEdu, target, ATTACK_BYTES)?;
    let_kcore_drain();
    edu.transfer(Direction::OutOfEdu, pages.result, PAGE)?;
    *attempts += 1;
    let first = crate::arch::cpu::read_phys_u64(pages.result) & 0xffff_ffff;
    let rest_is_filler = (1..PAGE / 8).all(|i| crate::arch::cpu::read_phys_u64(pages.result + 8 * i) == filler_word(i));
    let (verdict, nothing_read) = match (first, rest_is_filler) {
        (0, true) => ("zero, a refused read's", true),
        (word, true) if word == filler_word(0) & 0xffff_ffff => {
            ("THE FILLER: the write reached it and the read brought it back", false)
        }
        _ => ("SOMETHING ELSE: the target's contents", false),
    };
    kprintln!("{scenario}: attempt {attempts}: DMA read of {what} at {target:#x}: edu's first word holds {verdict}");
    Ok(nothing_read)
}

/// `dma-attacks`: with a STEADY_AT guest running, the host programs edu to write and then read
/// a word of the page it gave the guest for its first stage-2 fault (read by edu just before it
/// was given, so that the SMMU's TLB holds it unless KCore invalidated it), of KCore's canary
/// page and of a page the guest checks. Every attempt must be blocked (KCore logs each), no read
/// may bring anything, the guest's memory and KCore's canary stay intact, and the host's own DMA
/// works afterwards.
pub fn dma_attacks(env: &VmEnv, gic_info: &GicInfo, host: Option<PciHost>) -> Outcome {
    struct Attacks {
        edu: Edu,
        pages: HostPages,
        canary: u64,
        /// The guest's checked buffer (guest-physical), once it said where.
        steady_gpa: Option<u64>,
        /// The page offered for a fault and read by edu before KCore took it.
        warmed: Option<u64>,
        given_attacked: bool,
        ticking: bool,
        done: bool,
        attempts: u64,
        reads_refused: u64,
        error: Option<&'static str>,
        intact: bool,
    }
    impl Attacks {
        fn attack(&mut self, target: u64, what: &str) {
            match attack(&mut self.edu, &self.pages, target, what, &mut self.attempts, "dma-attacks") {
                Ok(nothing) => self.reads_refused += u64::from(nothing),
                Err(e) => self.error = Some(e),
            }
        }
    }
    impl Hooks for Attacks {
        fn notify(&mut self, _vm: &Vm, value: u64) {
            self.steady_gpa = Some(value);
        }
        fn console_line(&mut self, _vm: &Vm, line: &str) {
            self.ticking |= line == "tick 0";
            self.intact |= line == "memory intact";
        }
        fn after_exit(&mut self, vm: &Vm) {
            if self.done || self.error.is_some() {
                return;
            }
            match (self.warmed, self.given_attacked) {
                (None, _) => {
                    // A page offered for the fault just taken: still the host's, so edu reads it.
                    if let Some(page) = vm.offered_page(0) {
                        if let Err(e) = self.edu.transfer(Direction::IntoEdu, page, PAGE) {
                            self.error = Some(e);
                        }
                        kprintln!("dma-attacks: edu read the host's page {page:#x} as it was offered to the guest");
                        self.warmed = Some(page);
                    }
                }
                (Some(page), false) => {
                    // Once the run that took the page has ended, it is the guest's.
                    if !vm.given.contains((page - vm.region) / PAGE) {
                        return;
                    }
                    self.given_attacked = true;
                    self.attack(page, "the page just given to the VM");
                }
                (Some(_), true) if self.ticking => {
                    let Some(private) = self.steady_gpa.and_then(|gpa| vm.host_page(gpa + 5 * PAGE)) else {
                        self.error = Some("the guest never said where its checked memory is");
                        return;
                    };
                    self.done = true;
                    self.attack(self.canary, "KCore's canary");
                    self.attack(private, "the running VM's private page");
                }
                _ => {}
            }
        }
    }
    let mut edu = Edu::bring_up(gic_info, host, "dma-attacks")?;
    if edu.attach_to_host("dma-attacks") != Status::Success {
        return Err("SMMU_ATTACH_STREAM did not attach edu to the host");
    }
    let pages = HostPages::new(env)?;
    if round_trip(&mut edu, &pages, pages.fresh)? != PAGE {
        return Err("the host's DMA did not work before the attacks");
    }
    let mut mgr = Manager::new(env.regions);
    mgr.timer_wakes = true;
    create_all(&mut mgr, env, 1)?;
    let canary = env.kcore_base + corevisor_abi::KCORE_CANARY_OFFSET;
    let mut hooks = Attacks {
        edu,
        pages,
        canary,
        steady_gpa: None,
        warmed: None,
        given_attacked: false,
        ticking: false,
        done: false,
        attempts: 0,
        reads_refused: 0,
        error: None,
        intact: false,
    };
    mgr.run_all(&mut hooks);
    mgr.result()?;
    if let Some(e) = hooks.error {
        return Err(e);
    }
    let reads = hooks.attempts / 2;
    kprintln!("dma-attacks: {} DMA attempts, {} of {reads} reads brought nothing", hooks.attempts, hooks.reads_refused);
    if !hooks.done || hooks.reads_refused != reads {
        return Err("a DMA read reached memory that is not the host's");
    }
    if !hooks.intact || mgr.powered_off != 1 {
        return Err("the VM did not run to its end with its memory intact");
    }
    let arrived = round_trip(&mut hooks.edu, &hooks.pages, hooks.pages.result)?;
    kprintln!("dma-attacks: afterwards, the host's own DMA brought {arrived} of {PAGE} bytes");
    if arrived != PAGE {
        return Err("the host's DMA no longer works after the attacks");
    }
    Ok(())
}

/// An SMMU_ATTACH_STREAM call and its status.
fn attach(stream: u64, principal: u64) -> Option<Status> {
    let HypResult { status, .. } = hvc::hyp_call(host_call::SMMU_ATTACH_STREAM, [stream, principal, 0, 0, 0, 0]);
    Status::from_reg(status)
}

/// The SMMUv3 registers `smmu-tamper` reads and writes: (offset, name). Page 1 (64 KiB up)
/// holds the event queue's PROD and CONS.
const SMMU_REGISTERS: [(u64, &str); 9] = [
    (0x20, "CR0"),
    (0x44, "GBPA"),
    (0x80, "STRTAB_BASE"),
    (0x88, "STRTAB_BASE_CFG"),
    (0x90, "CMDQ_BASE"),
    (0x98, "CMDQ_PROD"),
    (0xa0, "EVENTQ_BASE"),
    (0x1_00a8, "EVENTQ_PROD (page 1)"),
    (0x1_00ac, "EVENTQ_CONS (page 1)"),
];

/// A read and a write at `pa`; how many of the two aborted at `pa`.
fn poke(pa: u64) -> u64 {
    let (before, _, _) = exceptions::aborts();
    exceptions::expect_abort(true);
    let (_, load_at) = hvc::probe_read(pa);
    let (count, elr, far) = exceptions::aborts();
    let read_aborted = count == before + 1 && elr == load_at && far == pa;
    let store_at = hvc::probe_write_u32(pa, 0);
    let (count_after, elr, far) = exceptions::aborts();
    let write_aborted = count_after == count + 1 && elr == store_at && far == pa;
    exceptions::expect_abort(false);
    u64::from(read_aborted) + u64::from(write_aborted)
}

/// `smmu-tamper`: the host reads and writes the SMMU's registers (both 64 KiB pages) and KCore's
/// memory, where the stream table and queues live: every access aborts. SMMU_ATTACH_STREAM with
/// a stream outside the SMMU, a stream attached twice and a VM that does not exist is refused.
/// Isolation holds afterwards: DMA at KCore's canary is blocked, DMA at the host's page works.
pub fn smmu_tamper(env: &VmEnv, gic_info: &GicInfo, host: Option<PciHost>, smmu: Option<u64>) -> Outcome {
    let smmu = smmu.unwrap_or(0x0905_0000);
    let (mut tried, mut aborted) = (0, 0);
    for (offset, name) in SMMU_REGISTERS {
        let n = poke(smmu + offset);
        kprintln!("smmu-tamper: SMMU {name} at {:#x}: {n} of 2 accesses aborted", smmu + offset);
        (tried, aborted) = (tried + 2, aborted + n);
    }
    let kcore = crate::scenario::kcore_probes(env.kcore_base, corevisor_boards::qemu_virt::BOARD.kcore_size);
    let (mut kcore_tried, mut kcore_aborted) = (0, 0);
    for pa in kcore {
        (kcore_tried, kcore_aborted) = (kcore_tried + 2, kcore_aborted + poke(pa));
    }
    kprintln!(
        "smmu-tamper: {aborted} of {tried} accesses to the SMMU's registers aborted; {kcore_aborted} of {kcore_tried} \
         to KCore's memory (its stream table and queues among it) aborted"
    );
    let mut edu = Edu::bring_up(gic_info, host, "smmu-tamper")?;
    let refusals = [
        ("a stream outside the SMMU", attach(0x1_0000, 0), Status::InvalidParameters),
        ("a VM that does not exist", attach(edu.stream, 0x7fff), Status::InvalidParameters),
        ("edu's stream to the host", attach(edu.stream, 0), Status::Success),
        ("edu's stream again", attach(edu.stream, 0), Status::Denied),
    ];
    let mut refused_right = 0;
    for (what, got, expected) in refusals {
        kprintln!("smmu-tamper: SMMU_ATTACH_STREAM of {what}: {got:?}");
        refused_right += u64::from(got == Some(expected));
    }
    let pages = HostPages::new(env)?;
    let mut attempts = 0;
    let canary = env.kcore_base + corevisor_abi::KCORE_CANARY_OFFSET;
    let nothing_read = attack(&mut edu, &pages, canary, "KCore's canary", &mut attempts, "smmu-tamper")?;
    // A page-wide write at the canary: a fault record per word, eight times what KCore's event
    // queue holds. KCore must say records were lost and run on; the canary is checked after
    // every trap, and the round trip below shows the SMMU still translates.
    edu.transfer(Direction::IntoEdu, pages.filler, PAGE)?;
    edu.transfer(Direction::OutOfEdu, canary, PAGE)?;
    let_kcore_drain();
    kprintln!("smmu-tamper: a page-wide DMA write at KCore's canary ({} words, each a fault) went by", PAGE / 4);
    let arrived = round_trip(&mut edu, &pages, pages.fresh)?;
    kprintln!(
        "smmu-tamper: afterwards, DMA at KCore's canary {}, the host's own DMA brought {arrived} of {PAGE} bytes",
        if nothing_read { "brought nothing" } else { "READ KCORE" }
    );
    if aborted != tried || kcore_aborted != kcore_tried {
        return Err("the host reached the SMMU's registers or KCore's memory");
    }
    if refused_right != refusals.len() as u64 {
        return Err("SMMU_ATTACH_STREAM did not answer as it must");
    }
    if !nothing_read || arrived != PAGE {
        return Err("isolation did not hold after the tampering");
    }
    Ok(())
}

//! The SMMUv3 that KCore owns (issue 15): its register frame, its stream table, command queue
//! and event queue, all in KCore's memory (`layout::smmu`). KCore programs it once at boot (every
//! stream aborts), then writes stream table entries for the host's attach calls, invalidates
//! what the SMMU caches when a page leaves a device's table, and drains its event queue. The
//! formats are `machine::smmu_format`'s; docs/smmu.md says why each setting is what it is.

use super::layout;
use crate::machine::smmu_format::{self, Command, Event, EventRecord, QueueIndex, SmmuIds, Ste, Unusable};
use crate::machine::sync::{LockRank, TicketLock};
use crate::machine::PAGE_SIZE;
use core::arch::asm;
use tock_registers::{
    interfaces::{Readable, Writeable},
    register_structs,
    registers::{ReadOnly, ReadWrite},
};

register_structs! {
    /// Page 0 of the frame (the registers KCore uses).
    Page0 {
        (0x00 => idr0: ReadOnly<u32>),
        (0x04 => idr1: ReadOnly<u32>),
        (0x08 => _reserved0),
        (0x14 => idr5: ReadOnly<u32>),
        (0x18 => _reserved1),
        (0x20 => cr0: ReadWrite<u32>),
        (0x24 => cr0ack: ReadOnly<u32>),
        (0x28 => cr1: ReadWrite<u32>),
        (0x2c => cr2: ReadWrite<u32>),
        (0x30 => _reserved2),
        (0x44 => gbpa: ReadWrite<u32>),
        (0x48 => _reserved3),
        (0x50 => irq_ctrl: ReadWrite<u32>),
        (0x54 => irq_ctrl_ack: ReadOnly<u32>),
        (0x58 => _reserved4),
        (0x60 => gerror: ReadOnly<u32>),
        (0x64 => gerrorn: ReadWrite<u32>),
        (0x68 => _reserved5),
        (0x80 => strtab_base: ReadWrite<u64>),
        (0x88 => strtab_base_cfg: ReadWrite<u32>),
        (0x8c => _reserved6),
        (0x90 => cmdq_base: ReadWrite<u64>),
        (0x98 => cmdq_prod: ReadWrite<u32>),
        (0x9c => cmdq_cons: ReadWrite<u32>),
        (0xa0 => eventq_base: ReadWrite<u64>),
        (0xa8 => @END),
    }
}

register_structs! {
    /// Page 1 of the frame (64 KiB on): the event queue's pointers.
    Page1 {
        (0x00 => _reserved0),
        (0xa8 => eventq_prod: ReadWrite<u32>),
        (0xac => eventq_cons: ReadWrite<u32>),
        (0xb0 => @END),
    }
}

/// CR0 (and CR0ACK) bits.
const CR0_SMMUEN: u32 = 1 << 0;
const CR0_EVENTQEN: u32 = 1 << 2;
const CR0_CMDQEN: u32 = 1 << 3;
/// CR1: table and queue accesses inner-shareable (SH 0b11), write-back cacheable (IC/OC 0b01):
/// the SMMU is coherent with the CPU's caches (IDR0.COHACC), so KCore's plain stores reach it.
const CR1: u32 = 0b11 << 10 | 0b01 << 8 | 0b01 << 6 | 0b11 << 4 | 0b01 << 2 | 0b01;
/// CR2: PTM (the CPU's broadcast TLB invalidations do not reach the SMMU: KCore invalidates it
/// through the command queue), RECINVSID (record C_BAD_STREAMID for a stream past the table).
const CR2: u32 = 1 << 2 | 1 << 1;
/// GBPA: Update (31), Abort (20): with the SMMU off, every transaction aborts.
const GBPA_UPDATE: u32 = 1 << 31;
const GBPA_ABORT: u32 = 1 << 20;
/// GERROR's CMDQ_ERR bit; CMDQ_CONS.ERR (30:24).
const GERROR_CMDQ_ERR: u32 = 1;
/// GERROR's EVENTQ_ABT_ERR bit: an event record could not be written. QEMU reports a full event
/// queue this way rather than with EVENTQ_PROD.OVFLG, and goes on recording once there is room.
const GERROR_EVENTQ_ABT_ERR: u32 = 1 << 2;
const CMDQ_CONS_ERR_SHIFT: u32 = 24;
/// Base register bits: RA/WA (62) read- or write-allocate.
const BASE_ALLOCATE: u64 = 1 << 62;
/// EVENTQ_PROD.OVFLG and EVENTQ_CONS.OVACKFLG (31).
const EVENTQ_OVERFLOW: u32 = 1 << 31;

/// The queues' sizes (log2 entries): one page each.
const CMDQ_BITS: u32 = 8;
const EVTQ_BITS: u32 = 7;
/// Where the pieces lie in `layout::smmu()`.
const STREAM_TABLE_BYTES: u64 = 128 * 1024;
const CMDQ_OFFSET: u64 = STREAM_TABLE_BYTES;
const EVTQ_OFFSET: u64 = CMDQ_OFFSET + PAGE_SIZE;
const POOL_OFFSET: u64 = EVTQ_OFFSET + PAGE_SIZE;

/// How many times KCore polls an SMMU register for a change before it calls the SMMU broken.
const POLLS: u32 = 1_000_000;

/// What went wrong with the SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmmuError {
    Unusable(Unusable),
    /// A CR0 or GBPA update was never acknowledged.
    NoAck(&'static str),
    /// The command queue reported error `code` (CMDQ_CONS.ERR) at a command.
    Command {
        code: u32,
    },
    /// The SMMU did not consume the command queue.
    Stuck,
}

/// The command queue: KCore's producer index (the SMMU's consumer index is its register).
struct CommandQueue {
    base: u64,
    prod: QueueIndex,
}

/// The event queue: KCore's consumer index, and how many fault events it logged since boot.
struct EventQueue {
    base: u64,
    cons: QueueIndex,
    logged: u64,
}

/// The SMMU KCore owns.
pub struct Smmu {
    page0: &'static Page0,
    page1: &'static Page1,
    stream_table: u64,
    stream_bits: u32,
    /// Shared by every core: flushes come under KCore's ownership lock, attach and detach too.
    commands: TicketLock<CommandQueue>,
    /// Drained by whichever core enters KCore from the host.
    events: TicketLock<EventQueue>,
}

// SAFETY: the registers are MMIO at a fixed address, not memory owned by one core; every access
// that changes the SMMU's state goes through the two locks.
unsafe impl Sync for Smmu {}
// SAFETY: as for `Sync`.
unsafe impl Send for Smmu {}

static SMMU: spin::Once<Smmu> = spin::Once::new();

/// The SMMU KCore owns, if it took one at boot.
#[inline]
pub fn get() -> Option<&'static Smmu> {
    SMMU.get()
}

/// The pages of `layout::smmu()` after the stream table and the queues: the host's SMMU table
/// pool, `(first page, page count)`.
pub fn table_pool() -> (u64, u64) {
    let region = layout::smmu();
    let first = region.start + POOL_OFFSET;
    (first, (region.end - first) / PAGE_SIZE)
}

/// A full-system barrier: KCore's stores to the tables and queues (Normal memory) are visible
/// to the SMMU before the register write that follows, and a register read completes before
/// the memory reads after it.
fn barrier() {
    // SAFETY: a barrier has no memory effects of its own.
    unsafe { asm!("dsb sy", options(nostack)) };
}

/// Polls `done` up to [`POLLS`] times.
fn poll(mut done: impl FnMut() -> bool) -> bool {
    (0..POLLS).any(|_| {
        let finished = done();
        if !finished {
            core::hint::spin_loop();
        }
        finished
    })
}

impl Smmu {
    /// Takes the SMMUv3 whose 128 KiB register frame is at `frame` and brings it up with every
    /// stream aborting; `streams_end` is one past the highest stream id KCore should cover.
    /// On success KCore owns it ([`get`]). If it is unusable, it is left with every
    /// transaction aborting (GBPA.ABORT, SMMUEN off) where it can be.
    ///
    /// # Safety
    /// `frame` is an SMMUv3's register frame from the DT, Device memory in KCore's EL2 map and
    /// out of the host's and every VM's reach; nothing else drives it; called once, on one core,
    /// before the host runs.
    pub unsafe fn take(frame: u64, streams_end: u64) -> Result<&'static Smmu, SmmuError> {
        // SAFETY: the caller's contract: page 0 and page 1 of the frame are the SMMU's registers,
        // accessed only with volatile MMIO operations.
        let (page0, page1) = unsafe { (&*(frame as *const Page0), &*((frame + 0x1_0000) as *const Page1)) };
        let ids = SmmuIds { idr0: page0.idr0.get(), idr1: page0.idr1.get(), idr5: page0.idr5.get() };
        // First, whatever KCore finds: off, and aborting everything while off.
        set_cr0(page0, 0)?;
        page0.gbpa.set(GBPA_UPDATE | GBPA_ABORT);
        if !poll(|| page0.gbpa.get() & GBPA_UPDATE == 0) {
            return Err(SmmuError::NoAck("GBPA"));
        }
        ids.check().map_err(SmmuError::Unusable)?;
        let region = layout::smmu();
        let stream_bits = smmu_format::stream_table_bits(ids.sid_bits(), streams_end);
        let stream_table = region.start;
        assert!(
            stream_table.is_multiple_of(STREAM_TABLE_BYTES) && (64u64 << stream_bits) <= STREAM_TABLE_BYTES,
            "the SMMU's stream table does not fit its aligned place"
        );
        for sid in 0..1u32 << stream_bits {
            write_ste_words(stream_table, sid, &smmu_format::STE_ABORT);
        }
        let (cmdq, evtq) = (region.start + CMDQ_OFFSET, region.start + EVTQ_OFFSET);
        for page in [cmdq, evtq] {
            // SAFETY: the queue pages are KCore's (`layout::smmu`), used for nothing else.
            unsafe { super::phys::zero(page, PAGE_SIZE) };
        }
        page0.cr1.set(CR1);
        page0.cr2.set(CR2);
        page0.strtab_base.set(BASE_ALLOCATE | stream_table);
        // FMT = 0 (linear), LOG2SIZE.
        page0.strtab_base_cfg.set(stream_bits);
        page0.cmdq_base.set(BASE_ALLOCATE | cmdq | u64::from(CMDQ_BITS));
        page0.cmdq_prod.set(0);
        page0.cmdq_cons.set(0);
        page0.eventq_base.set(BASE_ALLOCATE | evtq | u64::from(EVTQ_BITS));
        page1.eventq_prod.set(0);
        page1.eventq_cons.set(0);
        // No interrupts: KCore drains the event queue when the host enters it, and polls syncs.
        page0.irq_ctrl.set(0);
        if !poll(|| page0.irq_ctrl_ack.get() == 0) {
            return Err(SmmuError::NoAck("IRQ_CTRL"));
        }
        barrier();
        let smmu = Smmu {
            page0,
            page1,
            stream_table,
            stream_bits,
            commands: TicketLock::new(LockRank::Smmu, CommandQueue { base: cmdq, prod: QueueIndex::new(CMDQ_BITS) }),
            events: TicketLock::new(
                LockRank::Smmu,
                EventQueue { base: evtq, cons: QueueIndex::new(EVTQ_BITS), logged: 0 },
            ),
        };
        set_cr0(page0, CR0_CMDQEN)?;
        // Nothing the firmware or an earlier boot left in the SMMU's caches survives.
        smmu.submit(&[
            smmu_format::cmd_cfgi_all(),
            smmu_format::cmd_tlbi_nsnh_all(),
            smmu_format::cmd_tlbi_s12_vmall(0),
        ])?;
        set_cr0(page0, CR0_CMDQEN | CR0_EVENTQEN)?;
        set_cr0(page0, CR0_CMDQEN | CR0_EVENTQEN | CR0_SMMUEN)?;
        Ok(SMMU.call_once(|| smmu))
    }

    /// How many stream ids the stream table covers.
    pub fn streams(&self) -> u64 {
        1 << self.stream_bits
    }

    /// Stream `sid`'s entry (`sid` < [`Smmu::streams`]).
    pub fn ste(&self, sid: u32) -> Ste {
        let base = self.ste_address(sid);
        // SAFETY: the entry lies in KCore's stream table (`sid` is checked against its size).
        core::array::from_fn(|i| unsafe { super::phys::read_u64(base + 8 * i as u64) })
    }

    /// Makes `ste` stream `sid`'s entry, and waits until the SMMU uses it: words 1-7 first and
    /// word 0 (V and Config) last, so that the SMMU, whose entry aborted, reads either the old
    /// abort or the whole new entry; then CMD_CFGI_STE, and, when `flush_vmid` names one, the
    /// TLB entries of that SMMU VMID go too; CMD_SYNC.
    pub fn set_ste(&self, sid: u32, ste: &Ste, flush_vmid: Option<u16>) -> Result<(), SmmuError> {
        let mut queue = self.commands.lock();
        write_ste_words(self.stream_table, sid, ste);
        let invalidate = smmu_format::cmd_cfgi_ste(sid);
        match flush_vmid {
            Some(vmid) => self.submit_locked(
                &mut queue,
                &[invalidate, smmu_format::cmd_tlbi_s12_vmall(vmid), smmu_format::cmd_sync()],
            ),
            None => self.submit_locked(&mut queue, &[invalidate, smmu_format::cmd_sync()]),
        }
    }

    fn ste_address(&self, sid: u32) -> u64 {
        assert!(u64::from(sid) < self.streams(), "stream {sid:#x} past the stream table");
        self.stream_table + 64 * u64::from(sid)
    }

    /// Issues `commands` and a CMD_SYNC, and waits until the SMMU has consumed the sync: every
    /// command before it has taken effect.
    pub fn submit(&self, commands: &[Command]) -> Result<(), SmmuError> {
        let mut queue = self.commands.lock();
        self.submit_locked(&mut queue, commands)?;
        self.submit_locked(&mut queue, &[smmu_format::cmd_sync()])
    }

    fn submit_locked(&self, queue: &mut CommandQueue, commands: &[Command]) -> Result<(), SmmuError> {
        for command in commands {
            if !poll(|| !queue.prod.is_full(self.page0.cmdq_cons.get())) {
                return Err(SmmuError::Stuck);
            }
            let slot = queue.base + 16 * queue.prod.slot();
            for (i, word) in command.iter().enumerate() {
                // SAFETY: the slot lies in KCore's command queue page.
                unsafe { super::phys::write_u64(slot + 8 * i as u64, *word) };
            }
            queue.prod = queue.prod.next();
        }
        barrier();
        self.page0.cmdq_prod.set(queue.prod.value());
        let mut error = None;
        let consumed = poll(|| {
            let cons = self.page0.cmdq_cons.get();
            if self.page0.gerror.get() & GERROR_CMDQ_ERR != self.page0.gerrorn.get() & GERROR_CMDQ_ERR {
                error = Some(cons);
                return true;
            }
            queue.prod.reached_by(cons)
        });
        if let Some(cons) = error {
            // Skip the bad command (it becomes a CMD_SYNC) and acknowledge the error, so that the
            // queue runs again; the caller says what failed.
            let slot = queue.base + 16 * queue.prod.slot_of(cons);
            for (i, word) in smmu_format::cmd_sync().iter().enumerate() {
                // SAFETY: as above.
                unsafe { super::phys::write_u64(slot + 8 * i as u64, *word) };
            }
            barrier();
            self.page0.gerrorn.set(self.page0.gerrorn.get() ^ GERROR_CMDQ_ERR);
            return Err(SmmuError::Command { code: (cons >> CMDQ_CONS_ERR_SHIFT) & 0x7f });
        }
        if consumed {
            Ok(())
        } else {
            Err(SmmuError::Stuck)
        }
    }

    /// Takes every record out of the event queue, calling `fault` with each (counted from 1
    /// since boot), and `overflow` if the SMMU dropped records since the last drain. One
    /// register read when the queue is empty.
    pub fn drain_events(&self, mut fault: impl FnMut(u64, &Event), overflow: impl FnOnce()) {
        let mut queue = self.events.lock();
        let prod = self.page1.eventq_prod.get();
        let overflowed = prod & EVENTQ_OVERFLOW != self.page1.eventq_cons.get() & EVENTQ_OVERFLOW;
        if queue.cons.reached_by(prod) && !overflowed {
            return;
        }
        barrier();
        while !queue.cons.reached_by(prod) {
            let slot = queue.base + 32 * queue.cons.slot();
            // SAFETY: the record lies in KCore's event queue page, which the SMMU wrote before it
            // moved EVENTQ_PROD past it.
            let record: EventRecord = core::array::from_fn(|i| unsafe { super::phys::read_u64(slot + 8 * i as u64) });
            queue.cons = queue.cons.next();
            queue.logged += 1;
            fault(queue.logged, &smmu_format::decode_event(&record));
        }
        // Hand the slots back and acknowledge an overflow.
        self.page1.eventq_cons.set(queue.cons.value() | (prod & EVENTQ_OVERFLOW));
        if overflowed {
            overflow();
        }
    }

    /// Acknowledges GERROR.EVENTQ_ABT_ERR, if it is active, and says whether it was: records
    /// were lost because the event queue was full (a burst of faults from the host's devices
    /// between two host entries), which is not an SMMU failure.
    pub fn take_event_queue_abort(&self) -> bool {
        let _queue = self.events.lock();
        let active = self.global_errors() & GERROR_EVENTQ_ABT_ERR != 0;
        if active {
            self.page0.gerrorn.set(self.page0.gerrorn.get() ^ GERROR_EVENTQ_ABT_ERR);
        }
        active
    }

    /// GERROR bits that are active (differ from GERRORN): 0 when the SMMU is healthy.
    pub fn global_errors(&self) -> u32 {
        self.page0.gerror.get() ^ self.page0.gerrorn.get()
    }
}

/// Writes `ste` as stream `sid`'s entry of the table at `table`: words 1-7, then word 0.
fn write_ste_words(table: u64, sid: u32, ste: &Ste) {
    let base = table + 64 * u64::from(sid);
    for (i, word) in ste.iter().enumerate().skip(1) {
        // SAFETY: the entry lies in KCore's stream table (`layout::smmu`).
        unsafe { super::phys::write_u64(base + 8 * i as u64, *word) };
    }
    barrier();
    // SAFETY: as above.
    unsafe { super::phys::write_u64(base, ste[0]) };
    barrier();
}

/// Sets CR0 and waits for CR0ACK to match.
fn set_cr0(page0: &Page0, value: u32) -> Result<(), SmmuError> {
    page0.cr0.set(value);
    if poll(|| page0.cr0ack.get() == value) {
        Ok(())
    } else {
        Err(SmmuError::NoAck("CR0"))
    }
}

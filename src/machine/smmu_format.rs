//! The SMMUv3's in-memory formats, as KCore writes and reads them (Arm IHI 0070, the SMMUv3
//! architecture: 5.2 the stream table entry, 4 the commands, 7.3 the event records), and the ID
//! register checks KCore makes before it takes an SMMU. Portable, so host tests check every bit;
//! `aarch64::smmu` does the MMIO.

/// A stream table entry: eight 64-bit words, 64 bytes.
pub type Ste = [u64; 8];
/// A command queue entry: two words, 16 bytes.
pub type Command = [u64; 2];
/// An event queue record: four words, 32 bytes.
pub type EventRecord = [u64; 4];

/// STE word 0: V (valid) and Config (bits 3:1).
const STE_V: u64 = 1;
const STE_CONFIG_SHIFT: u32 = 1;
const STE_CONFIG_MASK: u64 = 0b111 << STE_CONFIG_SHIFT;
/// Config: abort every transaction (no event is recorded for it).
const CONFIG_ABORT: u64 = 0b000;
/// Config: stage 1 bypass, stage 2 translate.
const CONFIG_S2_TRANSLATE: u64 = 0b110;
/// STE word 1: SHCFG (45:44) = 0b01, use the incoming shareability; EATS (29:28) stays 0: ATS off.
const STE1_SHCFG_INCOMING: u64 = 0b01 << 44;
/// STE word 2: S2VMID (15:0), the VTCR-shaped fields (T0SZ 37:32, SL0 39:38, IR0 41:40, OR0
/// 43:42, SH0 45:44, TG 47:46, PS 50:48), S2AA64 (51), S2PTW (54), S2R (58).
const STE2_VTCR_SHIFT: u32 = 32;
const STE2_VTCR_BITS: u64 = (1 << 19) - 1;
const STE2_S2AA64: u64 = 1 << 51;
const STE2_S2PTW: u64 = 1 << 54;
const STE2_S2R: u64 = 1 << 58;
/// STE word 3: S2TTB, bits 51:4.
const STE3_S2TTB_MASK: u64 = ((1 << 52) - 1) & !0xf;

/// The stream table entry that aborts every transaction of its stream: what every stream has
/// until the host attaches it, and again after it detaches it.
pub const STE_ABORT: Ste = [STE_V | CONFIG_ABORT << STE_CONFIG_SHIFT, 0, 0, 0, 0, 0, 0, 0];

/// The entry that translates its stream's DMA through the stage-2 table at `s2ttb` under SMMU
/// VMID `vmid`. `vtcr` is the CPU's VTCR_EL2 (its low 19 bits are laid out as the entry's
/// S2T0SZ..S2PS: the SMMU then walks the table exactly as the CPU does). Stage-2 faults are
/// recorded (S2R) so that KCore logs them; S2PTW makes a stage-1 walk that hits Device memory
/// fault (no stage 1 here, set as Linux sets it); EATS = 0: ATS translations are refused, so a
/// device cannot present an address it claims is already translated.
pub fn ste_stage2(vmid: u16, vtcr: u64, s2ttb: u64) -> Ste {
    let word0 = STE_V | CONFIG_S2_TRANSLATE << STE_CONFIG_SHIFT;
    let word2 = u64::from(vmid) | (vtcr & STE2_VTCR_BITS) << STE2_VTCR_SHIFT | STE2_S2AA64 | STE2_S2PTW | STE2_S2R;
    [word0, STE1_SHCFG_INCOMING, word2, s2ttb & STE3_S2TTB_MASK, 0, 0, 0, 0]
}

/// What a stream table entry does with its stream's DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteUse {
    /// Valid, Config abort.
    Abort,
    /// Valid, stage-2 translation under SMMU VMID `vmid` with the table at `s2ttb`.
    Stage2 { vmid: u16, s2ttb: u64 },
    /// Anything else (KCore never writes one).
    Other,
}

/// Reads back what `ste` does.
pub fn ste_use(ste: &Ste) -> SteUse {
    if ste[0] & STE_V == 0 {
        return SteUse::Other;
    }
    match (ste[0] & STE_CONFIG_MASK) >> STE_CONFIG_SHIFT {
        CONFIG_ABORT => SteUse::Abort,
        CONFIG_S2_TRANSLATE => SteUse::Stage2 { vmid: ste[2] as u16, s2ttb: ste[3] & STE3_S2TTB_MASK },
        _ => SteUse::Other,
    }
}

/// Command opcodes (word 0, bits 7:0).
mod op {
    pub const CFGI_STE: u64 = 0x03;
    pub const CFGI_ALL: u64 = 0x04;
    pub const TLBI_S12_VMALL: u64 = 0x28;
    pub const TLBI_S2_IPA: u64 = 0x2a;
    pub const TLBI_NSNH_ALL: u64 = 0x30;
    pub const SYNC: u64 = 0x46;
}

/// CMD_CFGI_STE: the SMMU forgets what it cached of stream `sid`'s entry (Leaf = 1: the entry
/// only, there is no second-level descriptor).
pub fn cmd_cfgi_ste(sid: u32) -> Command {
    [op::CFGI_STE | u64::from(sid) << 32, 1]
}

/// CMD_CFGI_ALL: every cached configuration (Range = 31).
pub fn cmd_cfgi_all() -> Command {
    [op::CFGI_ALL, 31]
}

/// CMD_TLBI_NSNH_ALL: every non-secure, non-hyp TLB entry.
pub fn cmd_tlbi_nsnh_all() -> Command {
    [op::TLBI_NSNH_ALL, 0]
}

/// CMD_TLBI_S12_VMALL: every TLB entry of SMMU VMID `vmid` (VMID, bits 47:32).
pub fn cmd_tlbi_s12_vmall(vmid: u16) -> Command {
    [op::TLBI_S12_VMALL | u64::from(vmid) << 32, 0]
}

/// CMD_TLBI_S2_IPA: the stage-2 TLB entries of `ipa` under `vmid` (Leaf = 0: table entries
/// too, since a break may remove a whole table; IPA bits 51:12 in word 1).
pub fn cmd_tlbi_s2_ipa(vmid: u16, ipa: u64) -> Command {
    [op::TLBI_S2_IPA | u64::from(vmid) << 32, ipa & (((1 << 52) - 1) & !0xfff)]
}

/// CMD_SYNC with no completion signal (CS = 0): KCore polls CMDQ_CONS past it.
pub fn cmd_sync() -> Command {
    [op::SYNC, 0]
}

/// One decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: u8,
    pub stream: u32,
    /// RnW: the access was a read.
    pub read: bool,
    /// The input address of the transaction (for a stage-2-only stream, its IPA = PA).
    pub address: u64,
}

/// Decodes an event record (word 0: EventType 7:0, StreamID 63:32; word 1: RnW bit 35; word 2:
/// InputAddr).
pub fn decode_event(record: &EventRecord) -> Event {
    Event { id: record[0] as u8, stream: (record[0] >> 32) as u32, read: record[1] & 1 << 35 != 0, address: record[2] }
}

/// The SMMUv3 name of event `id`, if it has one.
pub fn event_name(id: u8) -> Option<&'static str> {
    Some(match id {
        0x01 => "F_UUT",
        0x02 => "C_BAD_STREAMID",
        0x03 => "F_STE_FETCH",
        0x04 => "C_BAD_STE",
        0x05 => "F_BAD_ATS_TREQ",
        0x06 => "F_STREAM_DISABLED",
        0x07 => "F_TRANSL_FORBIDDEN",
        0x08 => "C_BAD_SUBSTREAMID",
        0x09 => "F_CD_FETCH",
        0x0a => "C_BAD_CD",
        0x0b => "F_WALK_EABT",
        0x10 => "F_TRANSLATION",
        0x11 => "F_ADDR_SIZE",
        0x12 => "F_ACCESS",
        0x13 => "F_PERMISSION",
        0x20 => "F_TLB_CONFLICT",
        0x21 => "F_CFG_CONFLICT",
        0x24 => "E_PAGE_REQUEST",
        0x25 => "F_VMS_FETCH",
        _ => return None,
    })
}

/// KCore's log line for a DMA the SMMU refused (the scenarios look for exactly this).
pub fn blocked_dma_line(n: u64, event: &Event) -> alloc::string::String {
    let name = match event_name(event.id) {
        Some(name) => alloc::string::String::from(name),
        None => alloc::format!("event {:#04x}", event.id),
    };
    alloc::format!(
        "smmu: blocked DMA #{n}: stream {:#06x} {} at {:#018x} ({name})",
        event.stream,
        if event.read { "read" } else { "write" },
        event.address
    )
}

/// A queue's producer or consumer index as the SMMU's PROD and CONS registers hold it: the slot
/// in the low `bits` bits, the wrap bit above them (it flips at every lap, so that equal slots
/// tell an empty queue, equal wrap bits, from a full one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    value: u32,
    bits: u32,
}

impl QueueIndex {
    /// Slot 0, wrap bit 0, of a queue of 2^`bits` entries.
    pub const fn new(bits: u32) -> QueueIndex {
        QueueIndex { value: 0, bits }
    }

    /// The register value (slot and wrap bit).
    pub fn value(&self) -> u32 {
        self.value
    }

    /// The slot this index names.
    pub fn slot(&self) -> u64 {
        self.slot_of(self.value)
    }

    /// The slot register value `register` names.
    pub fn slot_of(&self, register: u32) -> u64 {
        u64::from(register & ((1 << self.bits) - 1))
    }

    /// The index after this one.
    pub fn next(self) -> QueueIndex {
        QueueIndex { value: (self.value + 1) & self.mask(), ..self }
    }

    /// Whether the other side's register (CONS for a producer, PROD for a consumer) has the
    /// same slot and wrap bit: a consumer has taken everything, or a producer added nothing.
    pub fn reached_by(&self, register: u32) -> bool {
        register & self.mask() == self.value
    }

    /// Whether a producer at this index has a full queue: the consumer's register names the
    /// same slot a lap behind (the other wrap bit).
    pub fn is_full(&self, cons: u32) -> bool {
        cons & self.mask() == self.value ^ (1 << self.bits)
    }

    fn mask(&self) -> u32 {
        (2 << self.bits) - 1
    }
}

/// The ID registers KCore reads before it takes an SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuIds {
    pub idr0: u32,
    pub idr1: u32,
    pub idr5: u32,
}

/// Why KCore will not use an SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// IDR0.S2P = 0: no stage-2 translation (QEMU without `arm-smmuv3.stage=2`).
    NoStage2,
    /// IDR0.TTF has no AArch64 table format.
    NoAarch64Tables,
    /// IDR5.GRAN4K = 0.
    No4KGranule,
    /// IDR0.COHACC = 0: table walks and queue accesses are not coherent with the CPU's caches
    /// (KCore would have to clean every table write to memory; it does not).
    NotCoherent,
    /// IDR1.TABLES_PRESET or QUEUES_PRESET: the tables or queues sit at fixed addresses that
    /// KCore did not choose.
    Preset,
}

impl SmmuIds {
    /// Checks the features KCore relies on.
    pub fn check(&self) -> Result<(), Unusable> {
        const S2P: u32 = 1 << 0;
        const TTF_SHIFT: u32 = 2;
        const COHACC: u32 = 1 << 4;
        const GRAN4K: u32 = 1 << 4;
        const QUEUES_PRESET: u32 = 1 << 29;
        const TABLES_PRESET: u32 = 1 << 30;
        if self.idr0 & S2P == 0 {
            return Err(Unusable::NoStage2);
        }
        // TTF: 0b10 AArch64, 0b11 AArch32 and AArch64.
        if (self.idr0 >> TTF_SHIFT) & 0b10 == 0 {
            return Err(Unusable::NoAarch64Tables);
        }
        if self.idr5 & GRAN4K == 0 {
            return Err(Unusable::No4KGranule);
        }
        if self.idr0 & COHACC == 0 {
            return Err(Unusable::NotCoherent);
        }
        if self.idr1 & (QUEUES_PRESET | TABLES_PRESET) != 0 {
            return Err(Unusable::Preset);
        }
        Ok(())
    }

    /// IDR1.SIDSIZE: how many stream id bits the SMMU takes.
    pub fn sid_bits(&self) -> u32 {
        self.idr1 & 0x3f
    }
}

/// The most stream id bits KCore's linear stream table covers: 2^11 entries (128 KiB, eight
/// PCI buses). A stream id past the table is refused by the SMMU itself (C_BAD_STREAMID), so a
/// smaller table never lets a stream through; it only means the host cannot attach those.
pub const STREAM_TABLE_MAX_BITS: u32 = 11;

/// The stream id bits of the linear stream table for an SMMU with `sid_bits` (IDR1.SIDSIZE)
/// whose streams of interest end before `streams_end`: as few as cover them, no more than the
/// SMMU takes or [`STREAM_TABLE_MAX_BITS`].
pub fn stream_table_bits(sid_bits: u32, streams_end: u64) -> u32 {
    let needed = u64::BITS - streams_end.saturating_sub(1).leading_zeros();
    needed.min(sid_bits).min(STREAM_TABLE_MAX_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// corevisor's VTCR_EL2 (`vcpu::controls::VTCR`, which sits above this layer).
    const VTCR: u64 = 1 << 31 | 0b010 << 16 | 0b11 << 12 | 0b01 << 10 | 0b01 << 8 | 0b01 << 6 | 25;

    #[test]
    fn the_stage2_entry_has_the_bits_the_architecture_names() {
        let ste = ste_stage2(0, VTCR, 0x4123_4000);
        assert_eq!(ste[0], 0b1101, "V, Config = 0b110 (stage 1 bypass, stage 2 translate)");
        assert_eq!(ste[1] >> 28 & 0b11, 0, "EATS = 0: ATS off");
        assert_eq!(ste[2] >> 32 & 0x3f, 25, "S2T0SZ: 39-bit input");
        assert_eq!(ste[2] >> 38 & 0b11, 0b01, "S2SL0: start at level 1");
        assert_eq!(ste[2] >> 40 & 0b1111, 0b0101, "S2IR0, S2OR0: write-back walks");
        assert_eq!(ste[2] >> 44 & 0b11, 0b11, "S2SH0: inner shareable");
        assert_eq!(ste[2] >> 46 & 0b11, 0, "S2TG: 4 KiB");
        assert_eq!(ste[2] >> 48 & 0b111, 0b010, "S2PS: 40 bits");
        for (bit, name) in [(51, "S2AA64"), (54, "S2PTW"), (58, "S2R")] {
            assert_ne!(ste[2] & 1 << bit, 0, "{name}");
        }
        for (bit, name) in [(52, "S2ENDI"), (53, "S2AFFD"), (57, "S2S")] {
            assert_eq!(ste[2] & 1 << bit, 0, "{name}");
        }
        assert_eq!(ste[2] & 0xffff, 0, "S2VMID");
        assert_eq!(ste[3], 0x4123_4000, "S2TTB");
        assert_eq!(ste_use(&ste), SteUse::Stage2 { vmid: 0, s2ttb: 0x4123_4000 });
        assert_eq!(ste_use(&ste_stage2(7, VTCR, 0x4000_0000)), SteUse::Stage2 { vmid: 7, s2ttb: 0x4000_0000 });
    }

    #[test]
    fn abort_is_valid_with_config_zero_and_anything_else_is_other() {
        assert_eq!(STE_ABORT[0], 1);
        assert_eq!(ste_use(&STE_ABORT), SteUse::Abort);
        assert_eq!(ste_use(&[0; 8]), SteUse::Other, "not valid");
        assert_eq!(ste_use(&[0b1001, 0, 0, 0, 0, 0, 0, 0]), SteUse::Other, "bypass");
    }

    #[test]
    fn commands_carry_their_opcode_and_operands() {
        assert_eq!(cmd_cfgi_ste(0x10), [0x10_0000_0003, 1]);
        assert_eq!(cmd_cfgi_all(), [0x04, 31]);
        assert_eq!(cmd_tlbi_nsnh_all(), [0x30, 0]);
        assert_eq!(cmd_tlbi_s12_vmall(5), [0x5_0000_0028, 0]);
        assert_eq!(cmd_tlbi_s2_ipa(3, 0x4567_8abc), [0x3_0000_002a, 0x4567_8000]);
        assert_eq!(cmd_sync(), [0x46, 0]);
    }

    #[test]
    fn events_decode_and_log_in_the_scenarios_format() {
        let record = [0x0010_0000_0010, 1 << 35, 0x4208_0000, 0];
        let event = decode_event(&record);
        assert_eq!(event, Event { id: 0x10, stream: 0x10, read: true, address: 0x4208_0000 });
        assert_eq!(
            blocked_dma_line(1, &event),
            "smmu: blocked DMA #1: stream 0x0010 read at 0x0000000042080000 (F_TRANSLATION)"
        );
        let write = Event { read: false, id: 0x13, ..event };
        assert_eq!(
            blocked_dma_line(12, &write),
            "smmu: blocked DMA #12: stream 0x0010 write at 0x0000000042080000 (F_PERMISSION)"
        );
        let unknown = Event { id: 0x7f, ..event };
        assert!(blocked_dma_line(2, &unknown).ends_with("(event 0x7f)"));
        for (id, name) in [(0x10, "F_TRANSLATION"), (0x11, "F_ADDR_SIZE"), (0x12, "F_ACCESS"), (0x4, "C_BAD_STE")] {
            assert_eq!(event_name(id), Some(name));
        }
        assert_eq!(event_name(0x3), Some("F_STE_FETCH"));
    }

    /// QEMU's SMMUv3 with `stage=2`: S2P, TTF AArch64, COHACC; SIDSIZE 16; OAS 44 bits, GRAN4K.
    const QEMU: SmmuIds = SmmuIds { idr0: 1 | 0b10 << 2 | 1 << 4, idr1: 16, idr5: 4 | 1 << 4 };

    #[test]
    fn the_id_checks_take_qemus_stage2_smmu_and_refuse_what_kcore_cannot_use() {
        assert_eq!(QEMU.check(), Ok(()));
        assert_eq!(QEMU.sid_bits(), 16);
        let with = |f: fn(&mut SmmuIds)| {
            let mut ids = QEMU;
            f(&mut ids);
            ids.check()
        };
        assert_eq!(with(|i| i.idr0 = 0b10 << 2 | 1 << 4 | 1 << 1), Err(Unusable::NoStage2), "stage 1 only");
        assert_eq!(with(|i| i.idr0 &= !(0b11 << 2)), Err(Unusable::NoAarch64Tables));
        assert_eq!(with(|i| i.idr0 = (i.idr0 & !(0b11 << 2)) | 0b11 << 2), Ok(()), "both formats");
        assert_eq!(with(|i| i.idr5 &= !(1 << 4)), Err(Unusable::No4KGranule));
        assert_eq!(with(|i| i.idr0 &= !(1 << 4)), Err(Unusable::NotCoherent));
        assert_eq!(with(|i| i.idr1 |= 1 << 30), Err(Unusable::Preset));
    }

    #[test]
    fn queue_indexes_wrap_with_a_flipped_bit_and_tell_full_from_empty() {
        let start = QueueIndex::new(2);
        assert!(start.reached_by(0) && !start.is_full(0), "empty");
        let mut prod = start;
        for _ in 0..4 {
            prod = prod.next();
        }
        assert_eq!((prod.value(), prod.slot()), (0b100, 0), "a lap flips the wrap bit");
        assert!(prod.is_full(0), "four entries the consumer has not taken: full");
        assert!(!prod.reached_by(0));
        // One lap ahead of a consumer at slot 1 is full; level with it is empty.
        assert!(prod.next().is_full(0b001) && !prod.next().is_full(0b101) && prod.next().reached_by(0b101));
        for _ in 0..4 {
            prod = prod.next();
        }
        assert_eq!(prod, start, "two laps: back where it started");
        // Bits above the index (CMDQ_CONS.ERR, EVENTQ_PROD.OVFLG) do not count.
        assert!(start.reached_by(0x8000_0000 | 0x7f << 24));
        assert_eq!(start.slot_of(0x7f << 24 | 0b111), 0b11);
    }

    #[test]
    fn the_stream_table_covers_the_map_up_to_its_cap() {
        assert_eq!(stream_table_bits(16, 0x1_0000), STREAM_TABLE_MAX_BITS);
        assert_eq!(stream_table_bits(16, 0x100), 8);
        assert_eq!(stream_table_bits(16, 0x101), 9);
        assert_eq!(stream_table_bits(6, 0x1_0000), 6, "no more than the SMMU takes");
        assert_eq!(stream_table_bits(16, 1), 0);
    }
}

//! Translation-table descriptors (4 KiB granule) for the two regimes KCore builds: stage-2
//! (the host's and each VM's) and KCore's own EL2 stage-1.

/// Bytes one entry maps at each level: level 1 = 1 GiB, level 2 = 2 MiB, level 3 = 4 KiB.
pub const fn level_size(level: u8) -> u64 {
    1 << (12 + 9 * (3 - level as u64))
}

/// The index of `addr` in a table of `level`.
pub const fn index(addr: u64, level: u8) -> u64 {
    addr >> (12 + 9 * (3 - level as u64)) & 0x1ff
}

pub const FIRST_LEVEL: u8 = 1;
pub const LAST_LEVEL: u8 = 3;
/// Input addresses below this are translated (39-bit, start at level 1).
pub const INPUT_LIMIT: u64 = 1 << 39;
/// Output addresses (and table pages) lie below this.
pub const OUTPUT_LIMIT: u64 = crate::addr::PA_LIMIT;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const ADDRESS_MASK: u64 = (OUTPUT_LIMIT - 1) & !0xfff;
const ACCESS_FLAG: u64 = 1 << 10;
const INNER_SHAREABLE: u64 = 0b11 << 8;
const XN: u64 = 1 << 54;

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemType {
    Normal,
    Device,
}

/// What a leaf lets the translated principal do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attrs {
    pub mem: MemType,
    pub write: bool,
    pub exec: bool,
}

impl Attrs {
    /// Normal memory, read/write/execute: RAM a principal owns.
    pub const RAM: Attrs = Attrs { mem: MemType::Normal, write: true, exec: true };
    /// Device memory, read/write, never executable: MMIO.
    pub const DEVICE: Attrs = Attrs { mem: MemType::Device, write: true, exec: false };
}

/// Which translation regime a table belongs to: the leaf attribute encodings differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regime {
    /// A stage-2 table, tagged with its VMID for TLB maintenance.
    Stage2 { vmid: u16 },
    /// An SMMU stage-2 table (a stream table entry's S2TTB): the CPU's stage-2 descriptor
    /// format, tagged with its SMMU VMID; its entries are invalidated in the SMMU's TLB, through
    /// the command queue, not the CPU's.
    Smmu { vmid: u16 },
    /// KCore's own EL2 stage-1 (MAIR_EL2: index 0 Device-nGnRE, index 1 Normal write-back).
    El2,
}

/// A decoded entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Invalid,
    /// Points to the next-level table at this physical address.
    Table(u64),
    /// Maps a block (levels 1-2) or page (level 3) at this physical address.
    Leaf(u64, Attrs),
}

/// Stage-2 MemAttr values (Arm ARM D8.5.5).
const S2_NORMAL_WB: u64 = 0b1111 << 2;
const S2_DEVICE_NGNRE: u64 = 0b0001 << 2;
const S2AP_READ: u64 = 0b01 << 6;
const S2AP_WRITE: u64 = 0b10 << 6;
/// EL2 stage-1 AttrIndx and AP[2] (read-only).
const S1_ATTR_NORMAL: u64 = 1 << 2;
const S1_ATTR_DEVICE: u64 = 0;
const S1_READ_ONLY: u64 = 1 << 7;

/// Encodes a leaf at `level`.
pub fn leaf(regime: Regime, level: u8, pa: u64, attrs: Attrs) -> u64 {
    let kind = if level == LAST_LEVEL { VALID | TABLE_OR_PAGE } else { VALID };
    let shareable = if attrs.mem == MemType::Normal { INNER_SHAREABLE } else { 0 };
    let exec = if attrs.exec { 0 } else { XN };
    let bits = match regime {
        Regime::Stage2 { .. } | Regime::Smmu { .. } => {
            let mem = if attrs.mem == MemType::Normal { S2_NORMAL_WB } else { S2_DEVICE_NGNRE };
            mem | S2AP_READ | if attrs.write { S2AP_WRITE } else { 0 }
        }
        Regime::El2 => {
            let mem = if attrs.mem == MemType::Normal { S1_ATTR_NORMAL } else { S1_ATTR_DEVICE };
            mem | if attrs.write { 0 } else { S1_READ_ONLY }
        }
    };
    (pa & ADDRESS_MASK) | kind | ACCESS_FLAG | shareable | exec | bits
}

/// Encodes a pointer to a next-level table.
pub fn table(pa: u64) -> u64 {
    (pa & ADDRESS_MASK) | VALID | TABLE_OR_PAGE
}

/// Decodes a raw entry found at `level`.
pub fn decode(regime: Regime, level: u8, raw: u64) -> Entry {
    if raw & VALID == 0 {
        return Entry::Invalid;
    }
    let pa = raw & ADDRESS_MASK;
    if level < LAST_LEVEL && raw & TABLE_OR_PAGE != 0 {
        return Entry::Table(pa);
    }
    let (mem, write) = match regime {
        Regime::Stage2 { .. } | Regime::Smmu { .. } => {
            let mem = if raw & (0b1111 << 2) == S2_NORMAL_WB { MemType::Normal } else { MemType::Device };
            (mem, raw & S2AP_WRITE != 0)
        }
        Regime::El2 => {
            let mem = if raw & (0b111 << 2) == S1_ATTR_NORMAL { MemType::Normal } else { MemType::Device };
            (mem, raw & S1_READ_ONLY == 0)
        }
    };
    Entry::Leaf(pa, Attrs { mem, write, exec: raw & XN == 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_round_trip_in_both_regimes_at_every_level() {
        let attrs = [Attrs::RAM, Attrs::DEVICE, Attrs { mem: MemType::Normal, write: false, exec: false }];
        for regime in [Regime::Stage2 { vmid: 3 }, Regime::Smmu { vmid: 3 }, Regime::El2] {
            for level in FIRST_LEVEL..=LAST_LEVEL {
                for a in attrs {
                    let pa = 0x40_0000_0000 + level_size(level);
                    assert_eq!(decode(regime, level, leaf(regime, level, pa, a)), Entry::Leaf(pa, a));
                }
            }
        }
        assert_eq!(decode(Regime::El2, 2, table(0x4000_1000)), Entry::Table(0x4000_1000));
        assert_eq!(decode(Regime::El2, 2, 0), Entry::Invalid);
    }

    #[test]
    fn stage2_device_is_device_ngnre_and_never_executable() {
        let raw = leaf(Regime::Stage2 { vmid: 0 }, 3, 0x0900_0000, Attrs::DEVICE);
        assert_eq!(raw & (0b1111 << 2), S2_DEVICE_NGNRE);
        assert_ne!(raw & XN, 0);
    }

    #[test]
    fn sizes_and_indices() {
        assert_eq!(level_size(1), 1 << 30);
        assert_eq!(level_size(2), 2 << 20);
        assert_eq!(level_size(3), 4096);
        assert_eq!(index(0x4020_3000, 1), 1);
        assert_eq!(index(0x4020_3000, 2), 1);
        assert_eq!(index(0x4020_3000, 3), 3);
    }
}

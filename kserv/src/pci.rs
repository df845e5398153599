//! Just enough PCI for the host to drive one device on a generic ECAM host: find it by vendor
//! and device id on bus 0, place its BAR0 in the 32-bit memory window, and turn on memory
//! decoding and bus mastering. The configuration space is reached through [`ConfigSpace`], so
//! that the enumeration runs on the host's tests against a modelled device.

/// A PCI function's configuration space, by ECAM offset (`bus << 20 | device << 15 | fn << 12`
/// plus the register).
pub trait ConfigSpace {
    fn read32(&mut self, offset: u64) -> u32;
    fn write32(&mut self, offset: u64, value: u32);
}

const VENDOR_DEVICE: u64 = 0x00;
const COMMAND: u64 = 0x04;
const HEADER_TYPE: u64 = 0x0c;
const BAR0: u64 = 0x10;
const MEMORY_SPACE: u32 = 1 << 1;
const BUS_MASTER: u32 = 1 << 2;
const ABSENT: u32 = 0xffff_ffff;

/// A bus/device/function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Function {
    /// The requester id the function's DMA carries (its SMMU stream id through `iommu-map`).
    pub fn requester_id(self) -> u64 {
        u64::from(self.bus) << 8 | u64::from(self.device) << 3 | u64::from(self.function)
    }

    fn config(self, register: u64) -> u64 {
        u64::from(self.bus) << 20 | u64::from(self.device) << 15 | u64::from(self.function) << 12 | register
    }
}

/// The first function on bus 0 with this vendor and device id.
pub fn find(cfg: &mut dyn ConfigSpace, vendor: u16, device: u16) -> Option<Function> {
    let wanted = u32::from(device) << 16 | u32::from(vendor);
    for dev in 0..32 {
        let first = Function { bus: 0, device: dev, function: 0 };
        let id = cfg.read32(first.config(VENDOR_DEVICE));
        if id == ABSENT {
            continue;
        }
        let multi = cfg.read32(first.config(HEADER_TYPE)) >> 16 & 0x80 != 0;
        for function in 0..if multi { 8 } else { 1 } {
            let f = Function { function, ..first };
            if cfg.read32(f.config(VENDOR_DEVICE)) == wanted {
                return Some(f);
            }
        }
    }
    None
}

/// A memory BAR placed in the 32-bit window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Where the CPU reaches it.
    pub cpu: u64,
    pub size: u64,
}

/// Sizes `f`'s BAR0 (a memory BAR, 32 or 64 bits), places it at the first address of the 32-bit
/// window `(PCI address, CPU address, size)` aligned to its size, and turns on memory decoding
/// and bus mastering.
pub fn enable_bar0(cfg: &mut dyn ConfigSpace, f: Function, window: (u64, u64, u64)) -> Result<Bar, &'static str> {
    const IO_SPACE: u32 = 1;
    const TYPE_64: u32 = 0b10 << 1;
    let (pci_base, cpu_base, window_size) = window;
    let command = cfg.read32(f.config(COMMAND));
    cfg.write32(f.config(COMMAND), command & 0xffff & !(MEMORY_SPACE | BUS_MASTER));
    cfg.write32(f.config(BAR0), ABSENT);
    let probed = cfg.read32(f.config(BAR0));
    if probed & IO_SPACE != 0 || probed & !0xf == 0 {
        return Err("BAR0 is not a memory BAR");
    }
    let size = u64::from(!(probed & !0xf)) + 1;
    let pci = pci_base.next_multiple_of(size);
    if pci + size > pci_base + window_size || pci > u64::from(u32::MAX) {
        return Err("BAR0 does not fit in the 32-bit window");
    }
    cfg.write32(f.config(BAR0), pci as u32);
    if probed & TYPE_64 != 0 {
        cfg.write32(f.config(BAR0 + 4), 0);
    }
    let status_kept = command & 0xffff;
    cfg.write32(f.config(COMMAND), status_kept | MEMORY_SPACE | BUS_MASTER);
    Ok(Bar { cpu: cpu_base + (pci - pci_base), size })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bus 0 with a multi-function device at 00:01 and edu at 00:02.1, whose BAR0 is 1 MiB.
    struct Model {
        bar0: u32,
        command: u32,
    }

    impl ConfigSpace for Model {
        fn read32(&mut self, offset: u64) -> u32 {
            let (dev, func, reg) = (offset >> 15 & 0x1f, offset >> 12 & 7, offset & 0xfff);
            match (dev, func, reg) {
                (1, 0, 0x00) => 0x0001_1b36,
                (1, 0, 0x0c) => 0x0080_0000,
                (2, 0, 0x00) => 0x0002_1b36,
                (2, 0, 0x0c) => 0x0080_0000,
                (2, 1, 0x00) => 0x11e8_1234,
                (2, 1, 0x04) => self.command,
                (2, 1, 0x10) => self.bar0,
                _ => ABSENT,
            }
        }
        fn write32(&mut self, offset: u64, value: u32) {
            match offset {
                0x1_1004 => self.command = value,
                0x1_1010 => self.bar0 = value & 0xfff0_0000,
                _ => {}
            }
        }
    }

    #[test]
    fn finds_edu_behind_another_function_and_places_its_bar() {
        let mut cfg = Model { bar0: 0, command: 0x0010_0000 };
        let edu = find(&mut cfg, 0x1234, 0x11e8).unwrap();
        assert_eq!(edu, Function { bus: 0, device: 2, function: 1 });
        assert_eq!(edu.requester_id(), 0x11);
        assert_eq!(find(&mut cfg, 0x1234, 0x1111), None);
        let bar = enable_bar0(&mut cfg, edu, (0x1000_0000, 0x1000_0000, 0x2eff_0000)).unwrap();
        assert_eq!(bar, Bar { cpu: 0x1000_0000, size: 1 << 20 });
        assert_eq!(cfg.bar0, 0x1000_0000);
        assert_eq!(cfg.command & 0xffff, MEMORY_SPACE | BUS_MASTER);
        // A window that starts off the BAR's alignment, and one too small.
        let bar = enable_bar0(&mut cfg, edu, (0x1001_0000, 0x8001_0000, 0x20_0000)).unwrap();
        assert_eq!(bar.cpu, 0x8010_0000);
        assert!(enable_bar0(&mut cfg, edu, (0x1001_0000, 0x1001_0000, 0x10_0000)).is_err());
    }
}

//! The GIC's virtual CPU interface control registers, which only KCore touches: on GICv3 the
//! ICH_*_EL2 system registers, on GICv2 the GICH frame (kept out of the host's stage-2 and of
//! every VM's). The vGIC layer (`vcpu::vgic`) decides what goes in them; these primitives only
//! move words between a record and the hardware, in the hardware's own LR format.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// The GICH frame's physical address on a GICv2 with virtualization; 0 otherwise (GICv3's
/// system registers, or no virtual interface).
static GICH: AtomicU64 = AtomicU64::new(0);

/// GICH register offsets (GICv2 architecture specification, 5.3).
mod gich {
    pub const HCR: u64 = 0x000;
    pub const VTR: u64 = 0x004;
    pub const VMCR: u64 = 0x008;
    pub const MISR: u64 = 0x010;
    pub const ELRSR0: u64 = 0x030;
    pub const APR: u64 = 0x0f0;
    pub const LR0: u64 = 0x100;
}

/// Which virtual CPU interface this machine has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// GICv3: ICH_*_EL2 system registers, 64-bit LRs.
    V3,
    /// GICv2: the GICH frame, 32-bit LRs.
    V2,
    None,
}

/// The registers a vCPU's virtual interface is saved into and loaded from, in the hardware's LR
/// format (GICv2 LRs in the low 32 bits).
#[derive(Clone, Copy, Debug, Default)]
pub struct VgicRegs {
    pub lrs: [u64; 4],
    pub vmcr: u64,
    pub ap0r: u64,
    pub ap1r: u64,
}

/// Uses the GICv2 virtual interface control frame at `base` (this core's view: every core's
/// accesses to it reach its own interface).
///
/// # Safety
/// `base` is the GICH frame (8 KiB of device registers), mapped as Device memory in KCore's EL2
/// map and KCore's alone.
pub unsafe fn use_gich(base: u64) {
    GICH.store(base, Ordering::Relaxed);
}

fn gich_read(offset: u64) -> u32 {
    // SAFETY: `use_gich`'s contract: the frame is KCore's device registers; 32-bit aligned reads
    // of its registers have no side effect.
    unsafe { core::ptr::read_volatile((GICH.load(Ordering::Relaxed) + offset) as *const u32) }
}

fn gich_write(offset: u64, value: u64) {
    // SAFETY: as for `gich_read`; a write changes only the virtual interface of this core.
    unsafe { core::ptr::write_volatile((GICH.load(Ordering::Relaxed) + offset) as *mut u32, value as u32) }
}

macro_rules! ich_read {
    ($reg:literal) => {{
        let value: u64;
        // SAFETY: reading an ICH_*_EL2 register (FEAT_GICv3, checked by `interface`) has no
        // side effect.
        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) value, options(nomem, nostack)) };
        value
    }};
}

macro_rules! ich_write {
    ($reg:literal, $value:expr) => {{
        // SAFETY: ICH_*_EL2 registers only change the virtual CPU interface that EL1 sees
        // while a guest runs (FEAT_GICv3, checked by `interface`).
        unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) $value, options(nomem, nostack)) };
    }};
}

/// This machine's virtual CPU interface.
#[inline]
pub fn interface() -> Interface {
    interface_of(super::super::features::boot())
}

/// The virtual CPU interface of a machine whose CPU has the features `cpu`.
#[inline]
pub fn interface_of(cpu: &super::super::features::CpuFeatures) -> Interface {
    if cpu.gic_sysregs() {
        Interface::V3
    } else if GICH.load(Ordering::Relaxed) != 0 {
        Interface::V2
    } else {
        Interface::None
    }
}

/// How many list registers the interface has (ICH_VTR_EL2 / GICH_VTR ListRegs + 1).
pub fn lr_count(interface: Interface) -> usize {
    match interface {
        Interface::V3 => (ich_read!("S3_4_C12_C11_1") & 0x1f) as usize + 1,
        Interface::V2 => (gich_read(gich::VTR) & 0x3f) as usize + 1,
        Interface::None => 0,
    }
}

/// Empties every list register the interface has (up to 16 on GICv3, 64 on GICv2).
pub fn clear_list_registers(interface: Interface) {
    let count = lr_count(interface);
    match interface {
        Interface::V3 => {
            macro_rules! clear {
                ($($n:literal => $reg:literal),*) => {
                    $(if count > $n { ich_write!($reg, 0u64) })*
                };
            }
            clear!(0 => "S3_4_C12_C12_0", 1 => "S3_4_C12_C12_1", 2 => "S3_4_C12_C12_2", 3 => "S3_4_C12_C12_3",
                   4 => "S3_4_C12_C12_4", 5 => "S3_4_C12_C12_5", 6 => "S3_4_C12_C12_6", 7 => "S3_4_C12_C12_7",
                   8 => "S3_4_C12_C13_0", 9 => "S3_4_C12_C13_1", 10 => "S3_4_C12_C13_2", 11 => "S3_4_C12_C13_3",
                   12 => "S3_4_C12_C13_4", 13 => "S3_4_C12_C13_5", 14 => "S3_4_C12_C13_6", 15 => "S3_4_C12_C13_7");
        }
        Interface::V2 => (0..count as u64).for_each(|n| gich_write(gich::LR0 + 4 * n, 0)),
        Interface::None => {}
    }
}

/// Loads a vCPU's virtual interface: its first `count` LRs (at most 4), VMCR, active
/// priorities, and HCR (`hcr`: En turns the interface on). `lrs` false: the LRs and active
/// priorities are left as they are (empty: the vCPU never had an interrupt).
pub fn load(interface: Interface, regs: &VgicRegs, count: usize, hcr: u64, lrs: bool) {
    match interface {
        Interface::V3 => {
            if lrs {
                let l = &regs.lrs;
                if count > 0 {
                    ich_write!("S3_4_C12_C12_0", l[0])
                }
                if count > 1 {
                    ich_write!("S3_4_C12_C12_1", l[1])
                }
                if count > 2 {
                    ich_write!("S3_4_C12_C12_2", l[2])
                }
                if count > 3 {
                    ich_write!("S3_4_C12_C12_3", l[3])
                }
                ich_write!("S3_4_C12_C8_0", regs.ap0r);
                ich_write!("S3_4_C12_C9_0", regs.ap1r);
            }
        }
        Interface::V2 => {
            if lrs {
                for (n, lr) in regs.lrs.iter().take(count).enumerate() {
                    gich_write(gich::LR0 + 4 * n as u64, *lr);
                }
                gich_write(gich::APR, regs.ap0r);
            }
        }
        Interface::None => {}
    }
    load_control(interface, regs.vmcr, hcr);
}

/// Loads a vCPU's VMCR and HCR (the last of [`load`]; all of it for an interface that is off).
#[inline]
pub fn load_control(interface: Interface, vmcr: u64, hcr: u64) {
    match interface {
        Interface::V3 => {
            ich_write!("S3_4_C12_C11_7", vmcr);
            ich_write!("S3_4_C12_C11_0", hcr);
        }
        Interface::V2 => {
            gich_write(gich::VMCR, vmcr);
            gich_write(gich::HCR, hcr);
        }
        Interface::None => {}
    }
}

/// Saves what [`load`] loaded, as the guest left it, and returns the empty LR status
/// (ICH_ELRSR_EL2 / GICH_ELRSR0) and whether the LRs' words were read into `regs`. GICv2: then
/// turns the interface off (GICH_HCR 0: no maintenance interrupt reaches the host); GICv3's
/// ICH_HCR_EL2 is part of the host's EL2 controls. `lrs` false: only VMCR (ELRSR reads as all empty). When ELRSR shows all `count`
/// LRs empty (the usual exit: the guest has ended what it was given), their words are not read
/// and stay 0 in `regs` (an empty LR), which is all the caller keeps of an empty LR anyway.
pub fn save(interface: Interface, regs: &mut VgicRegs, count: usize, lrs: bool) -> (u64, bool) {
    match interface {
        Interface::V3 => {
            // ICH_HCR_EL2 goes back to the host's with its EL2 controls.
            regs.vmcr = ich_read!("S3_4_C12_C11_7");
            if !lrs {
                return (u64::MAX, false);
            }
            regs.ap0r = ich_read!("S3_4_C12_C8_0");
            regs.ap1r = ich_read!("S3_4_C12_C9_0");
            let elrsr = ich_read!("S3_4_C12_C11_5");
            if all_empty(elrsr, count) {
                return (elrsr, false);
            }
            let l = &mut regs.lrs;
            if count > 0 {
                l[0] = ich_read!("S3_4_C12_C12_0")
            }
            if count > 1 {
                l[1] = ich_read!("S3_4_C12_C12_1")
            }
            if count > 2 {
                l[2] = ich_read!("S3_4_C12_C12_2")
            }
            if count > 3 {
                l[3] = ich_read!("S3_4_C12_C12_3")
            }
            (elrsr, true)
        }
        Interface::V2 => {
            regs.vmcr = gich_read(gich::VMCR).into();
            gich_write(gich::HCR, 0);
            if !lrs {
                return (u64::MAX, false);
            }
            regs.ap0r = gich_read(gich::APR).into();
            let elrsr = gich_read(gich::ELRSR0).into();
            if all_empty(elrsr, count) {
                return (elrsr, false);
            }
            for (n, lr) in regs.lrs.iter_mut().take(count).enumerate() {
                *lr = gich_read(gich::LR0 + 4 * n as u64).into();
            }
            (elrsr, true)
        }
        Interface::None => (u64::MAX, false),
    }
}

/// Whether the empty LR status `elrsr` shows each of the first `count` LRs empty.
#[inline]
fn all_empty(elrsr: u64, count: usize) -> bool {
    let loaded = (1u64 << count.min(4)) - 1;
    elrsr & loaded == loaded
}

/// The loaded interface's empty LR status (ICH_ELRSR_EL2 / GICH_ELRSR0), while a guest's is
/// loaded.
#[inline]
pub fn elrsr(interface: Interface) -> u64 {
    match interface {
        Interface::V3 => ich_read!("S3_4_C12_C11_5"),
        Interface::V2 => gich_read(gich::ELRSR0).into(),
        Interface::None => u64::MAX,
    }
}

/// List register `n` (< 4) of the loaded interface, in the hardware's format.
#[inline]
pub fn read_lr(interface: Interface, n: usize) -> u64 {
    match (interface, n) {
        (Interface::V3, 0) => ich_read!("S3_4_C12_C12_0"),
        (Interface::V3, 1) => ich_read!("S3_4_C12_C12_1"),
        (Interface::V3, 2) => ich_read!("S3_4_C12_C12_2"),
        (Interface::V3, _) => ich_read!("S3_4_C12_C12_3"),
        (Interface::V2, _) => gich_read(gich::LR0 + 4 * (n as u64 & 3)).into(),
        (Interface::None, _) => 0,
    }
}

/// Writes list register `n` (< 4) of the loaded interface, in the hardware's format.
#[inline]
pub fn write_lr(interface: Interface, n: usize, lr: u64) {
    match (interface, n) {
        (Interface::V3, 0) => ich_write!("S3_4_C12_C12_0", lr),
        (Interface::V3, 1) => ich_write!("S3_4_C12_C12_1", lr),
        (Interface::V3, 2) => ich_write!("S3_4_C12_C12_2", lr),
        (Interface::V3, _) => ich_write!("S3_4_C12_C12_3", lr),
        (Interface::V2, _) => gich_write(gich::LR0 + 4 * (n as u64 & 3), lr),
        (Interface::None, _) => {}
    }
}

/// Whether the underflow maintenance interrupt is raised (ICH_MISR_EL2.U / GICH_MISR.U: HCR.UIE
/// is set and at most one LR holds an interrupt), while the guest's interface is loaded.
pub fn underflow(interface: Interface) -> bool {
    const U: u64 = 1 << 1;
    let misr = match interface {
        Interface::V3 => ich_read!("S3_4_C12_C11_2"),
        Interface::V2 => gich_read(gich::MISR).into(),
        Interface::None => 0,
    };
    misr & U != 0
}

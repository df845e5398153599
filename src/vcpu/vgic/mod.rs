//! Virtual interrupts (the layer between a vCPU's saved state and the world switch): each vCPU's
//! virtual CPU interface as KCore keeps it between runs, and the queue of virtual interrupts
//! waiting for a list register.
//!
//! The GIC's virtualization extension (Arm IHI 0069, chapter 6; GICv2's GICH is the same model)
//! shows a guest its interrupts through a handful of list registers (ICH_LR<n>_EL2 / GICH_LRn):
//! each holds one virtual INTID with its priority, group and state (pending, active, both). The
//! guest acknowledges and ends them through its CPU interface without trapping; the hardware
//! changes the LR's state, and ICH_ELRSR_EL2 / GICH_ELRSR says which LRs are empty again.
//!
//! So KCore keeps per vCPU: the LRs, ICH_VMCR (the guest's priority mask and enables),
//! ICH_AP0R0/AP1R0 (its active priorities), ICH_HCR (En, UIE), and a bounded queue of the
//! INTIDs that are pending but have no LR yet, each INTID at most once. On entry [`VgicState::fill`]
//! moves the highest-priority queued INTIDs into free LRs and, if some are left over, sets
//! HCR.UIE so that the underflow maintenance interrupt brings the vCPU back out to refill; on
//! exit [`VgicState::reclaim`] frees the LRs the ELRSR marks empty, and only those.
//!
//! Every LR KCore writes is built here ([`ListReg::v3`], [`ListReg::v2`]): a virtual INTID,
//! never the HW bit, so a guest's EOI never reaches a physical interrupt.

#[cfg(test)]
pub mod spec;
#[cfg(test)]
mod tests;

use crate::mutation::{planted, Mutation};

/// The most list registers KCore uses (QEMU's GICv3 and GIC-400 both have 4; ICH_VTR_EL2 /
/// GICH_VTR say how many a CPU has).
pub const MAX_LRS: usize = 4;
/// The most INTIDs one vCPU may have waiting for a list register.
pub const QUEUE_LEN: usize = 16;
/// The largest virtual INTID the host may inject: INTIDs 1020..1023 are special (spurious), and
/// a GICv2 list register holds 10 bits.
pub const MAX_INTID: u64 = 1019;
/// The virtual timer's interrupt (PPI 11).
pub const VTIMER_INTID: u16 = 27;
/// The priority KCore gives the virtual timer's interrupt: Linux's default (GICD_INT_DEF_PRI).
pub const VTIMER_PRIORITY: u8 = 0xa0;

/// Whether a virtual timer with control CNTV_CTL_EL0 = `ctl` is asserting its interrupt:
/// ENABLE and ISTATUS set, IMASK clear.
pub const fn vtimer_firing(ctl: u64) -> bool {
    const ENABLE: u64 = 1;
    const IMASK: u64 = 1 << 1;
    const ISTATUS: u64 = 1 << 2;
    ctl & (ENABLE | IMASK | ISTATUS) == ENABLE | ISTATUS
}

/// ICH_HCR_EL2 / GICH_HCR bits this layer drives (the same in both).
pub mod hcr {
    /// The virtual CPU interface is on.
    pub const EN: u64 = 1 << 0;
    /// Underflow maintenance interrupt: raised while at most one LR holds an interrupt.
    pub const UIE: u64 = 1 << 1;
}

/// A virtual INTID the host may inject: an SGI (0-15), PPI (16-31) or SPI (32..=[`MAX_INTID`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Intid(u16);

impl Intid {
    /// `raw` as an INTID, or `None` past [`MAX_INTID`].
    pub const fn new(raw: u64) -> Option<Intid> {
        if raw <= MAX_INTID {
            Some(Intid(raw as u16))
        } else {
            None
        }
    }
    pub const fn raw(self) -> u16 {
        self.0
    }
    /// The virtual timer's interrupt (PPI 11).
    pub const VTIMER: Intid = Intid(VTIMER_INTID);
}

/// A virtual interrupt to deliver: its INTID and priority (0 highest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Virq {
    pub intid: Intid,
    pub priority: u8,
}

/// A list register's state field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LrState {
    /// Empty (the ELRSR bit is set).
    #[default]
    Invalid,
    Pending,
    Active,
    PendingActive,
}

impl LrState {
    const fn from_bits(bits: u64) -> LrState {
        match bits & 3 {
            0 => LrState::Invalid,
            1 => LrState::Pending,
            2 => LrState::Active,
            _ => LrState::PendingActive,
        }
    }
    pub const fn pending(self) -> bool {
        matches!(self, LrState::Pending | LrState::PendingActive)
    }
    pub const fn active(self) -> bool {
        matches!(self, LrState::Active | LrState::PendingActive)
    }
}

/// One list register as KCore sees it: never HW; group 1 on GICv3 (the guest's ICC_IAR1_EL1),
/// group 0 on GICv2 (its GICC_IAR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListReg {
    pub intid: u16,
    pub state: LrState,
    pub priority: u8,
}

impl ListReg {
    /// ICH_LR<n>_EL2: vINTID [31:0], priority [55:48], group [60], HW [61] (0), state [63:62].
    pub const fn v3(self) -> u64 {
        self.intid as u64 | (self.priority as u64) << 48 | 1 << 60 | (self.state as u64) << 62
    }
    pub const fn from_v3(lr: u64) -> ListReg {
        ListReg { intid: (lr & 0x3ff) as u16, priority: (lr >> 48) as u8, state: LrState::from_bits(lr >> 62) }
    }
    /// GICH_LRn: VirtualID [9:0], priority [27:23] (its top 5 bits), state [29:28], Grp1 [30]
    /// (0), HW [31] (0). Group 0: a GICv2 guest acknowledges through GICC_IAR, which (AckCtl
    /// clear) answers 1022 for a group 1 interrupt.
    pub const fn v2(self) -> u32 {
        (self.intid as u32 & 0x3ff) | (self.priority as u32 >> 3) << 23 | (self.state as u32) << 28
    }
    pub const fn from_v2(lr: u32) -> ListReg {
        ListReg {
            intid: (lr & 0x3ff) as u16,
            priority: ((lr >> 23 & 0x1f) << 3) as u8,
            state: LrState::from_bits(lr as u64 >> 28),
        }
    }
}

/// Why an injection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

/// One vCPU's virtual CPU interface and pending queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VgicState {
    pub lrs: [ListReg; MAX_LRS],
    /// ICH_VMCR_EL2 / GICH_VMCR.
    pub vmcr: u64,
    /// ICH_AP0R0_EL2 / GICH_APR (group 0 active priorities; GICv2 has only this one).
    pub ap0r: u64,
    /// ICH_AP1R0_EL2.
    pub ap1r: u64,
    /// ICH_HCR_EL2 / GICH_HCR as KCore loads it for the guest ([`hcr`]).
    pub hcr: u64,
    /// The INTIDs waiting for an LR: the first `queue_len`, in no particular order (each INTID
    /// at most once, so [`Self::fill`]'s choice does not depend on the order).
    queue: [Virq; QUEUE_LEN],
    queue_len: usize,
}

/// The list registers of the interface loaded for a running vCPU: the hardware's
/// (`vcpu::world_switch`), or a model in tests.
pub trait LoadedLrs {
    /// The empty LR status (ICH_ELRSR_EL2 / GICH_ELRSR0): a bit per empty LR.
    fn elrsr(&self) -> u64;
    fn read(&self, n: usize) -> ListReg;
    fn write(&mut self, n: usize, lr: ListReg);
}

impl VgicState {
    /// Whether the vCPU has ever had a virtual interrupt: until then the world switch leaves
    /// its list registers alone.
    pub fn enabled(&self) -> bool {
        self.hcr & hcr::EN != 0
    }

    /// The INTIDs waiting for a list register.
    pub fn queued(&self) -> impl Iterator<Item = Virq> + '_ {
        self.queue[..self.queue_len].iter().copied()
    }

    /// Makes `virq` pending for this vCPU (between runs: the LRs are the saved ones). An INTID
    /// that is pending already stays pending once; one that is active in an LR becomes pending
    /// and active there; any other goes into the queue, unless it is full.
    pub fn inject(&mut self, virq: Virq) -> Result<(), QueueFull> {
        let intid = virq.intid.raw();
        self.hcr |= hcr::EN;
        if let Some(lr) = self.lrs.iter_mut().find(|lr| lr.intid == intid && lr.state != LrState::Invalid) {
            if lr.state == LrState::Active {
                lr.state = LrState::PendingActive;
            }
            return Ok(());
        }
        if self.queued().any(|q| q.intid == virq.intid) {
            return Ok(());
        }
        let slot = self.queue.get_mut(self.queue_len).ok_or(QueueFull)?;
        *slot = virq;
        self.queue_len += 1;
        Ok(())
    }

    /// On entry: each free LR among the first `lr_count` takes the highest-priority queued INTID
    /// (lowest priority value, then lowest INTID); HCR.UIE is set if the queue still holds any.
    pub fn fill(&mut self, lr_count: usize) {
        if self.queue_len != 0 {
            self.fill_from_queue(lr_count);
        }
        if self.queue_len != 0 {
            self.hcr |= hcr::UIE;
        } else {
            self.hcr &= !hcr::UIE;
        }
    }

    /// [`Self::fill`]'s LR moves, out of line: an empty queue (every VCPU_RUN but those after an
    /// injection) skips them.
    #[inline(never)]
    fn fill_from_queue(&mut self, lr_count: usize) {
        for n in 0..lr_count.min(MAX_LRS) {
            if self.queue_len == 0 {
                break;
            }
            if self.lrs[n].state != LrState::Invalid {
                continue;
            }
            let queued = &self.queue[..self.queue_len];
            let Some((priority, intid, i)) = queued.iter().enumerate().map(|(i, q)| (q.priority, q.intid, i)).min()
            else {
                break;
            };
            self.queue_len -= 1;
            self.queue[i] = self.queue[self.queue_len];
            // The slot past the queue stays default, so that equal queues compare equal.
            self.queue[self.queue_len] = Virq::default();
            self.lrs[n] = ListReg { intid: intid.raw(), state: LrState::Pending, priority };
        }
    }

    /// While the vCPU runs with its first `lr_count` LRs loaded (after [`Self::fill`]), makes
    /// `virq` pending straight in the loaded LRs `hw`, with the effect that saving them,
    /// [`Self::reclaim`], [`Self::inject`], [`Self::fill`] and loading them again would have
    /// (the world switch's IRQ fast path: a few LR accesses instead of all). Only when that
    /// needs no queue: the queue is empty (so HCR.UIE is clear: [`Self::fill`]), and an LR holds
    /// the INTID or one is empty. Otherwise returns false having changed nothing.
    pub fn inject_loaded(&mut self, virq: Virq, lr_count: usize, hw: &mut impl LoadedLrs) -> bool {
        if self.queue_len != 0 || lr_count == 0 {
            return false;
        }
        let loaded = (1u64 << lr_count.min(MAX_LRS)) - 1;
        let empty = hw.elrsr() & loaded;
        let intid = virq.intid.raw();
        let held = (0..lr_count.min(MAX_LRS)).find(|&n| empty >> n & 1 == 0 && self.lrs[n].intid == intid);
        let (n, lr) = match held {
            Some(n) => {
                let mut lr = hw.read(n);
                if lr.state == LrState::Active {
                    lr.state = LrState::PendingActive;
                }
                (n, lr)
            }
            None if empty != 0 => {
                let n = if planted(Mutation::VgicInjectLoadedOverwritesLr0) { 0 } else { empty.trailing_zeros() };
                (n as usize, ListReg { intid, state: LrState::Pending, priority: virq.priority })
            }
            None => return false,
        };
        hw.write(n, lr);
        self.lrs[n] = lr;
        true
    }

    /// On exit, with the LRs as the hardware left them: those whose bit is set in `elrsr`
    /// (the empty LR status register) are free again; every other keeps its INTID and state.
    pub fn reclaim(&mut self, elrsr: u64) {
        for (n, lr) in self.lrs.iter_mut().enumerate() {
            let lost = planted(Mutation::VgicReclaimFreesPending) && lr.state == LrState::Pending;
            if elrsr >> n & 1 != 0 || lost {
                *lr = ListReg::default();
            }
        }
    }
}

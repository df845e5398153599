//! Who a hypercall names, as types: a [`VmId`] is 1..=`MAX_VMS` and a [`VcpuId`] below
//! `MAX_VCPUS`, checked once where the host's number enters KCore. Whether that VM or vCPU
//! exists is the VM layer's question; these only say the number can name one.

/// VM ids run from 1 to `MAX_VMS`; 0 is the host (VMID 0 in its stage-2).
pub const MAX_VMS: u16 = 16;
/// vCPUs per VM.
pub const MAX_VCPUS: usize = 8;

/// A VM's id (also its stage-2 VMID): 1..=[`MAX_VMS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(u16);

/// A vCPU's index in its VM: below [`MAX_VCPUS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(u8);

impl VmId {
    /// The VM id the host passed, if it can name a VM.
    pub const fn new(raw: u64) -> Option<VmId> {
        if raw >= 1 && raw <= MAX_VMS as u64 {
            Some(VmId(raw as u16))
        } else {
            None
        }
    }
    /// The id as the stage-2 VMID field wants it.
    pub const fn vmid(self) -> u16 {
        self.0
    }
    pub const fn raw(self) -> u64 {
        self.0 as u64
    }
    /// Its index in tables of `MAX_VMS` entries.
    pub const fn index(self) -> usize {
        self.0 as usize - 1
    }
    /// Every id a VM can have, in order.
    pub fn all() -> impl Iterator<Item = VmId> {
        (1..=MAX_VMS).map(VmId)
    }
}

impl VcpuId {
    /// The vCPU index the host (or a guest's CPU_ON) passed, if it can name a vCPU.
    pub const fn new(raw: u64) -> Option<VcpuId> {
        if raw < MAX_VCPUS as u64 {
            Some(VcpuId(raw as u8))
        } else {
            None
        }
    }
    pub const fn index(self) -> usize {
        self.0 as usize
    }
    pub const fn raw(self) -> u64 {
        self.0 as u64
    }
}

impl core::fmt::Display for VmId {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl core::fmt::Display for VcpuId {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_outside_their_range_are_refused() {
        assert_eq!(VmId::new(0), None);
        assert_eq!(VmId::new(MAX_VMS as u64 + 1), None);
        assert_eq!(VmId::new(1 << 32 | 1), None);
        assert_eq!(VmId::new(1).map(VmId::index), Some(0));
        assert_eq!(VmId::all().count(), MAX_VMS as usize);
        assert_eq!(VcpuId::new(MAX_VCPUS as u64), None);
        assert_eq!(VcpuId::new(u64::MAX), None);
        assert_eq!(VcpuId::new(3).map(VcpuId::index), Some(3));
    }
}

//! The seam between KServ's Linux VM runner and its emulated GIC distributor side: the runner
//! hands every guest access to the GIC's MMIO frames (and, on GICv3, every ICC_SGI1R_EL1 write)
//! to a [`GicModel`]; the model makes interrupts pending through an [`IrqSink`], which KServ
//! forwards to KCore (INJECT_IRQ: KCore owns the list registers, so the host never touches a
//! vCPU's interrupt state itself).

/// Where a GIC model sends the interrupts it makes pending for a vCPU.
pub trait IrqSink {
    /// Makes INTID `intid` pending for vCPU `vcpu` of this VM.
    fn raise(&mut self, vcpu: usize, intid: u32);
}

/// A guest's emulated GIC: the distributor (and on GICv3 the redistributors). The CPU interface
/// is not here: it is the list registers KCore loads (v3) or the GICV frame (v2).
pub trait GicModel: Send {
    /// A guest access by `vcpu` to guest-physical `gpa`, `size` bytes (1, 2, 4 or 8), `write`
    /// holding the value stored. `Some(value read)` (0 for a write) when `gpa` is one of the
    /// model's frames, `None` when it is not (the runner tries its other devices).
    fn mmio(&mut self, vcpu: usize, gpa: u64, size: u8, write: Option<u64>, sink: &mut dyn IrqSink) -> Option<u64>;
    /// A GICv3 guest's write of `value` to ICC_SGI1R_EL1 on `vcpu` (`exit::SGI`).
    fn sgi1r(&mut self, vcpu: usize, value: u64, sink: &mut dyn IrqSink);
    /// Accesses to offsets the model does not emulate (read as zero, writes ignored) so far.
    fn unknown_accesses(&self) -> u64;
    /// Raises private or shared interrupt `intid` as a device would (a level going high):
    /// pending for the vCPU it targets if the guest enabled it, remembered as pending otherwise.
    // No emulated device raises an interrupt yet (the PL011 never needs its own): the models'
    // tests use it, the first device with an interrupt line will.
    #[allow(dead_code)]
    fn device_irq(&mut self, vcpu: usize, intid: u32, sink: &mut dyn IrqSink);
}

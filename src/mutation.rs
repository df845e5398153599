//! Planted bugs for the companion tests of every property (issue 6): each property test has a
//! twin that plants one known bug and shows the property catches it. In anything but `cargo
//! test` builds, [`planted`] is the constant `false` and the planted branches compile away.

/// The bugs that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// MemManager takes a page from the host without unmapping it there (`clear_pfn_host`).
    SkipClearPfnHost,
    /// `clear_vm_page` hands a page back to the host without scrubbing it.
    SkipScrub,
    /// The host dispatcher skips SYSTEM_OFF's range check.
    SkipSystemOffRangeCheck,
    /// Splitting a block maps its last page one page off.
    SplitShiftsLastPage,
    /// The host fault handler maps a block without checking that the host owns all of it.
    HostBlockWithoutOwnershipCheck,
    /// `assign_pfn_to_vm` accepts a page that another VM already owns.
    AssignStealsFromAnotherVm,
    /// Boot-image verification hashes one byte short of the image.
    VerifyIgnoresLastByte,
    /// A page the host offers for a guest's stage-2 fault is mapped without being scrubbed.
    SkipFaultPageScrub,
    /// A page-table pool hands out one page past its end.
    PoolOverrun,
    /// The power-down scrub leaves the VMs' pages as they are.
    SkipPowerDownVmScrub,
    /// The power-down scrub leaves KCore's heap (vCPU contexts) as it is.
    SkipPowerDownHeapScrub,
    /// An injected exception's PSTATE ignores SCTLR_EL1.SPAN: PAN stays as it was.
    InjectIgnoresSpan,
    /// The Spectre-BHB loop runs the Cortex-A72's 8 iterations on every core.
    BhbLoopTooShort,
    /// The guest exit dispatcher drops an SError found pending as the guest left.
    SErrorAtExitIgnored,
    /// A guest's HCR_EL2 leaves the ID registers untrapped (TID3 dropped).
    GuestHcrDropsTid3,
    /// A guest's emulated ID_AA64ISAR1_EL1 shows pointer authentication (APA, API).
    GuestIdShowsPauth,
    /// The host's set/way maintenance is performed, but the host resumes on the same instruction.
    HostSetWayRepeats,
    /// The host's MMIO mappings ignore the allow-list: any non-RAM block that is not emulated or
    /// KCore's is mapped (the behaviour before issue 11).
    HostMmioIgnoresAllowList,
    /// The GICv3 redistributor filter lets a write to GICR_PROPBASER through.
    GicrFilterPassesPropbaser,
    /// A host's page number is taken without checking it is below the physical address size
    /// (`Pfn::new`, where REMAP_VM_IMAGE's number enters: issue 11, finding 5).
    RemapTakesAnyPfn,
    /// An image's signature is checked over its own hash alone, not the VM's whole layout (its
    /// load address, index, the other images, the RAM window: issue 11, finding 10).
    SignatureOverImageOnly,
    /// A scrubbed page is handed on without cleaning the zeros to the point of coherency: DRAM
    /// still holds the old owner's data behind zeroed cache lines.
    SkipCleanAfterScrub,
    /// A page taken from the host is not cleaned and invalidated: the host's dirty lines stay
    /// in the caches, and what KCore reads (hashes) is not what DRAM holds.
    SkipCleanOnTake,
    /// A guest's share or unshare over a range changes the pages before the one it is refused
    /// on (no check of the whole range first).
    ShareRangeNotAtomic,
    /// The guest share call does not check that its range ends inside the VM's RAM window.
    ShareSkipsWindowEndCheck,
    /// `checked_pa` shifts any page number into an address, high bits lost (`P | k << 52` names
    /// page P).
    UncheckedPfn,
    /// The host's last share of a page is taken back without cleaning and invalidating the
    /// page, even though the host's stage-2 mapped it (so the host may have left lines of it).
    SkipCleanOnLastUnshare,
    /// The trap edge cuts a host's page number to 28 bits instead of refusing it.
    EdgeTruncatesPfn,
    /// A guest's WFI exit reports its virtual timer's deadline without the VM's counter offset.
    WfiDeadlineIgnoresCntvoff,
    /// The world switch's fast path is offered a guest's MRS into one of x19..x29, which it
    /// does not save or restore (the read value would be lost).
    InPlaceTakesCalleeSavedRegister,
    /// A guest's OSLSR_EL1 reads as 0 (no OS lock) instead of `OSLM[1]` (issue 13).
    OsLockStatusReadsZero,
    /// A guest's WFE goes to the host as a WFI, which idles it until its timer (issue 13).
    WfeReportedAsWfi,
    /// A guest's read of the write-only ICC_SGI1R_EL1 goes to the host as an SGI carrying the
    /// guest's Xt, instead of an UNDEF (issue 13).
    SgiReadLeaksRegister,
    /// BOOT_DATA is accepted after a vCPU of the VM has run (the host could then place its own
    /// bytes in a running guest's memory).
    BootDataAfterFirstRun,
    /// A 2 MiB block offered for a guest fault is checked for the host's ownership on its first
    /// page only.
    BlockOwnershipFirstPageOnly,
    /// A 2 MiB block offered for a guest fault is taken without checking that the VM's stage-2
    /// can map it there (a page of the gfn block already mapped).
    BlockOverMappedGfn,
    /// The vGIC's reclaim frees a list register that still holds a pending INTID (it is lost).
    VgicReclaimFreesPending,
    /// INJECT_IRQ makes the interrupt pending for the vCPU after the one the host named.
    VgicInjectsWrongVcpu,
    /// The SHA-256 padding ends with the message length in bytes instead of bits.
    Sha256LengthInBytes,
    /// The IRQ fast path's timer delivery writes LR 0 even when it holds a live interrupt
    /// (which is lost), instead of the first empty LR.
    VgicInjectLoadedOverwritesLr0,
    /// The host stage-2 fault handler (`vm::Kcore::host_stage2_fault`) checks that the host owns
    /// the page under the ownership lock, lets go of it, and maps the page under the lock again,
    /// trusting the check (issue 14: a check-then-act split).
    HostFaultCheckThenAct,
    /// The concurrency tests' threads take KCore's locks while holding the console-ranked
    /// history lock: the lock order inverted (issue 14).
    LockOrderInverted,
    /// A page answer naming the page the VM's stage-2 already maps at the faulting gfn (a
    /// sibling vCPU's answer mapped it first) is taken and scrubbed again, wiping the guest's
    /// data, instead of serving the fault as it is (issue 14).
    ServedFaultPageScrubbed,
    /// A stage-2 break (unmap, split) leaves out its TLB invalidation: a page KCore takes from
    /// the host stays reachable through any core's TLB that cached its translation (issue 14).
    MissingTlbInvalidation,
    /// A page taken from the host stays in the host's SMMU table: the host's devices still reach
    /// it by DMA after it went to a VM or to KCore (issue 15).
    SmmuPageLeftMapped,
    /// An SMMU stage-2 break (unmap, split) leaves out its SMMU TLB invalidation: a device keeps
    /// reaching a page taken from the host through a translation the SMMU cached (issue 15).
    MissingSmmuTlbInvalidation,
    /// A page a VM gives back stays in the VM's SMMU table: the devices assigned to the VM still
    /// reach it after it was scrubbed and went to the host (issue 15).
    VmSmmuPageLeftOnClear,
    /// REGISTER_VM trusts the free vmid it read under `core` before it took that VM's lock, and
    /// does not read it again under both: two cores registering at once get the same vmid, the
    /// second record replacing the first (issue 14, per-VM locks).
    VmidNotRecheckedUnderLock,
    /// The console byte that fills a vCPU's buffer is dropped: the host gets the buffer without
    /// it (issue 13, the PL011 served in KCore).
    ConsoleDropsByteWhenFull,
    /// KCore serves the PL011's DR and FR at their offsets on any page outside RAM, not only on
    /// the page the host registered (VM_CONSOLE): another device's registers read as a UART's.
    ConsoleServesAnyPage,
    /// VM_CONSOLE accepts a page inside the VM's RAM: KCore would answer for a page the guest
    /// may have mapped, or later fault in, as RAM.
    ConsoleInsideRam,
    /// `vcpu::fp`: the core's mark is compared without its core byte, so a vCPU whose values
    /// another core stamped with the same count skips its reload and runs with whatever this
    /// core holds (another vCPU's values).
    FpReloadSkippedForAnotherCoresMark,
    /// `vcpu::fp`: a vCPU started afresh keeps its old mark, so on the core that still holds its
    /// old values it runs with them instead of zeros.
    FpMarkKeptOnStart,
}

#[cfg(test)]
pub use active::{catches, planted, with};

/// Whether bug `m` is planted: never, outside `cargo test`.
#[cfg(not(test))]
#[inline(always)]
pub const fn planted(_m: Mutation) -> bool {
    false
}

#[cfg(test)]
mod active {
    use super::Mutation;
    use std::cell::Cell;

    thread_local! {
        static PLANTED: Cell<Option<Mutation>> = const { Cell::new(None) };
    }

    pub fn planted(m: Mutation) -> bool {
        PLANTED.with(|p| p.get() == Some(m))
    }

    /// The companion of a property: runs `property` over `cases` fresh random inputs with `bug`
    /// planted, and fails the test unless the property fails.
    pub fn catches<S: proptest::strategy::Strategy>(
        bug: Mutation,
        cases: u32,
        inputs: S,
        property: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
    ) {
        use proptest::test_runner::{Config, TestRunner};
        // No shrinking: a companion only needs to see the property fail, not the smallest case.
        let config = Config { cases, failure_persistence: None, max_shrink_iters: 0, ..Config::default() };
        let mut runner = TestRunner::new(config);
        let result = with(bug, || runner.run(&inputs, property));
        assert!(result.is_err(), "{bug:?} was planted and the property did not notice");
    }

    /// Runs `f` with `m` planted on this thread.
    pub fn with<T>(m: Mutation, f: impl FnOnce() -> T) -> T {
        PLANTED.with(|p| p.set(Some(m)));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        PLANTED.with(|p| p.set(None));
        result.unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

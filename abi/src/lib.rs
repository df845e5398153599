//! The corevisor hypercall ABI, shared by KCore (EL2), KServ (the EL1 host) and guests.
//!
//! Every call is an SMCCC 1.1 fast call, SMC64 convention, in the vendor-specific hypervisor
//! service range (`0xC600_0000 | n`), issued with `hvc #0`. Arguments travel in x1..x6; the SMCCC
//! status comes back in x0 and extra results in x1..x3. Keeping the numbers here, in one crate,
//! means the three programs cannot disagree about them.
#![no_std]

/// Owner field of an SMCCC function id: vendor-specific hypervisor service.
pub const SMCCC_OWNER_VENDOR_HYP: u32 = 6;
/// Fast call, SMC64 calling convention.
const FAST_CALL_64: u32 = 0xC000_0000;
/// First function id of corevisor's hypercall range.
pub const HYP_CALL_BASE: u32 = FAST_CALL_64 | (SMCCC_OWNER_VENDOR_HYP << 24);
/// Mask that selects the function number inside the range.
pub const HYP_CALL_NUMBER_MASK: u32 = 0xFFFF;

/// The function id of corevisor hypercall number `n`.
pub const fn hyp_call(n: u16) -> u32 {
    HYP_CALL_BASE | n as u32
}

/// Host hypercalls served by KCore's `host_hvc_dispatcher`.
pub mod host_call {
    use super::hyp_call;
    /// Returns the ABI version in x1 (`major << 16 | minor`).
    pub const VERSION: u32 = hyp_call(0);
    /// Does nothing and returns SUCCESS: the round trip that `cargo xtask bench` measures.
    pub const NULL: u32 = hyp_call(1);
    /// Powers the machine off. x1 is the host's exit status: 0 means the host's run passed.
    pub const SYSTEM_OFF: u32 = hyp_call(2);
    /// The host's own stage-2 fault counts: x1 = faults KCore mapped, x2 = faults it refused
    /// (each refused one was an abort injected into the host).
    pub const HOST_STATS: u32 = hyp_call(3);
    /// Creates a VM whose RAM is the guest-physical window x1 (base) .. x1 + x2 (size), both
    /// page-aligned. Returns the vmid in x1. The VM is READY: it takes vCPUs and images.
    pub const REGISTER_VM: u32 = hyp_call(4);
    /// Adds vCPU x2 (0-based) to READY VM x1.
    pub const REGISTER_VCPU: u32 = hyp_call(5);
    /// Declares an image of x3 bytes (signature not counted) to load at guest address x2
    /// (page-aligned, inside the VM's RAM) in READY VM x1. Returns the image index in x1. The
    /// first image is where vCPU 0 starts. A VM's images fill at most 64 MiB together (a 35 MiB
    /// kernel `Image` and its initrd fit).
    pub const SET_BOOT_INFO: u32 = hyp_call(6);
    /// Names host page x3 (a page frame number, below 2^28: 40-bit physical addresses) as the
    /// next page of image x2 of VM x1. The pages hold the image followed directly by its 64-byte
    /// signature.
    pub const REMAP_VM_IMAGE: u32 = hyp_call(7);
    /// Takes VM x1's image pages from the host and hashes them, at most
    /// [`VERIFY_CHUNK_PAGES`] per call; returns SUCCESS with x1 = pages still to check, and the
    /// host calls again until x1 is 0. Then every image's signature has been checked over the
    /// VM's whole layout ([`bundle::image_message`]) and the VM is VERIFIED; a bad signature
    /// answers DENIED and the VM can never run.
    pub const VERIFY_VM_IMAGE: u32 = hyp_call(8);
    /// Runs vCPU x2 of VM x1 until it exits to the host. x3 answers the previous exit (see
    /// [`crate::exit`]). Returns the exit record: reason in x1, details in x2..x5.
    pub const VCPU_RUN: u32 = hyp_call(9);
    /// Takes back every page of the physical range x2 .. x2 + x3 that VM x1 owns, scrubs it and
    /// gives it to the host. The VM must be off (powered off or rejected). Returns the number of
    /// pages returned in x1.
    pub const CLEAR_VM_S2_RANGE: u32 = hyp_call(10);
    /// Maps the device range x3 .. x3 + x4 (physical, not RAM, not KCore's) at guest address x2
    /// in VM x1.
    pub const PHYS_ADDR_IOREMAP: u32 = hyp_call(11);
    /// Sets VM x1's virtual counter offset (CNTVOFF_EL2) to x2.
    pub const TIMER_SET_CNTVOFF: u32 = hyp_call(12);
    /// Powers VM x1 off: its vCPUs never run again.
    pub const VM_POWER_OFF: u32 = hyp_call(13);
    /// Destroys VM x1, which must be off: every page it still owns is scrubbed and given back to
    /// the host, and its stage-2 table is freed. Returns the pages returned in x1.
    pub const DESTROY_VM: u32 = hyp_call(14);
    /// Makes virtual interrupt x3 pending for vCPU x2 of VERIFIED VM x1, at priority x4 (0 is
    /// the highest, up to 255: what the guest's distributor gives the INTID). x3 is a virtual
    /// INTID: an SGI (0-15), a PPI (16-31) or an SPI (32-1019); KCore builds the list register
    /// itself, so it never names a physical interrupt. A second injection of a pending INTID
    /// changes nothing. The vCPU must be registered and not running (DENIED while it runs: the
    /// host injects between its runs). ON_PENDING: the vCPU already has
    /// `kcore::vcpu::vgic::QUEUE_LEN` (16) INTIDs waiting for a list register; run it, then
    /// inject again.
    pub const INJECT_IRQ: u32 = hyp_call(15);
    /// Gives READY-then-VERIFIED VM x1, before any of its vCPUs has run, host page x3 (a page
    /// frame number, as for REMAP_VM_IMAGE) as unsigned boot data at guest address x2: KCore
    /// takes the page from the host with its contents (not scrubbed), and maps it for the VM.
    /// The first page may go anywhere page-aligned in the VM's RAM outside its images; each
    /// further one must follow the last, at most 16 pages (64 KiB). vCPU 0 starts with x0 = the
    /// first page's address (a Linux VM's device tree). Refused once a vCPU of the VM has run.
    pub const BOOT_DATA: u32 = hyp_call(16);
    /// Attaches device stream x1 (an SMMU stream id; for a PCI device its requester id,
    /// `bus << 8 | device << 3 | function`, through the PCI host's `iommu-map`) to principal x2:
    /// 0 is the host, whose devices then reach exactly the host's own pages, at their physical
    /// addresses; a vmid gives the device to that VM, which it reaches at guest addresses, only
    /// its own pages. NOT_SUPPORTED: the machine has no SMMU that KCore owns (raspi4b, `virt`
    /// without `iommu=smmuv3`). INVALID_PARAMETERS: a stream the SMMU does not cover, or no such
    /// VM. DENIED: the stream is attached already (detach it first).
    pub const SMMU_ATTACH_STREAM: u32 = hyp_call(17);
    /// Detaches device stream x1: every DMA of it aborts again, as at boot. NOT_SUPPORTED and
    /// INVALID_PARAMETERS as for attach; DENIED: the stream is not attached.
    pub const SMMU_DETACH_STREAM: u32 = hyp_call(18);
    /// Names x2 (page-aligned, outside VM x1's RAM, inside its IPA space; 0: none) as the guest
    /// address of the VM's PL011, whose transmit side KCore then serves without the host: a
    /// guest's byte store to its DR (+0) is kept in a per-vCPU buffer, a load of its FR (+0x18)
    /// reads TXFE|RXFE, and the buffered bytes reach the host with the vCPU's next exit
    /// ([`crate::console`]). Every other access to the page exits as MMIO, as before. The page is
    /// one the host leaves unmapped anyway: it already decides what the guest sees there.
    pub const VM_CONSOLE: u32 = hyp_call(19);
    /// How many host calls there are: ids `hyp_call(0) .. hyp_call(COUNT)`.
    pub const COUNT: u16 = 20;
    /// The most image pages one VERIFY_VM_IMAGE call takes and hashes: KCore holds its lock
    /// while it hashes, so a call's length is bounded (1 MiB of hashing), whatever the images'.
    pub const VERIFY_CHUNK_PAGES: u64 = 256;
}

/// Guest hypercalls that KCore serves itself (every other guest HVC exits to the host).
pub mod guest_call {
    use super::hyp_call;
    /// Shares the guest pages of x1 .. x1 + x2 (guest-physical, mapped) with the host.
    pub const SET_DESC_PFN: u32 = hyp_call(0x80);
    /// Takes back one share of each page of x1 .. x1 + x2: the host loses access.
    pub const UNSET_DESC_PFN: u32 = hyp_call(0x81);
}

/// The exit record that VCPU_RUN returns: why the vCPU stopped (x1) and the details (x2..x5).
/// The host answers an exit with x3 of its next VCPU_RUN for that vCPU.
pub mod exit {
    /// A load or store to a guest address outside the VM's RAM and not mapped to a device.
    /// x2 = guest address, x3 = [`mmio_flags`], x4 = the value written (stores). Answer: the
    /// value a load reads. KCore writes it into the guest's register and skips the instruction.
    pub const MMIO: u64 = 1;
    /// The guest touched RAM it has no page for yet. x2 = guest address. Answer: the frame
    /// number of a page of the host's; KCore takes it, scrubs it and maps it on the next run.
    pub const PAGE_FAULT: u64 = 2;
    /// Set in a PAGE_FAULT answer: the frame number (bit 63 clear) is the first of a 2 MiB-aligned
    /// run of 512 host pages for the 2 MiB-aligned guest block around the fault. KCore takes the
    /// whole run, scrubs it and maps it as one 2 MiB block, or refuses the run (a page not the
    /// host's, the block not wholly inside the VM's RAM, a page of the block already mapped for
    /// the VM) and changes nothing: the host then offers a single page.
    pub const PAGE_ANSWER_BLOCK: u64 = 1 << 63;
    /// WFI (WFE is [`WFE`]). x2 = when the guest's virtual timer fires, in physical counter
    /// ticks (`u64::MAX` if it is off or masked). No answer.
    pub const WFI: u64 = 3;
    /// An HVC or SMC that KCore does not serve (PSCI among them). x2..x5 = the guest's x0..x3.
    /// Answer: the guest's x0 (the call's result).
    pub const HVC: u64 = 4;
    /// A physical interrupt arrived while the guest ran. No answer.
    pub const IRQ: u64 = 5;
    /// An access KCore cannot decode (no instruction syndrome) outside the VM's RAM. x2 = guest
    /// address, x3 = ESR_EL2. No answer: the guest cannot make progress.
    pub const BAD_ACCESS: u64 = 6;
    /// WFE (ESR ISS.TI bit 0 set): the guest spins on an event, so the host should run
    /// something else and resume it soon, not idle it until its timer. No details, no answer.
    pub const WFE: u64 = 7;
    /// A GICv3 guest wrote ICC_SGI1R_EL1 to send a software-generated interrupt. x2 = the value
    /// written (target list, affinity, INTID, IRM); KCore has stepped past the MSR. No answer.
    pub const SGI: u64 = 8;
    /// A vCPU's console buffer ([`crate::console`]) filled up or got a newline: the bytes come
    /// with this exit, in x6..x17, as with any other. No details, no answer.
    pub const CONSOLE: u64 = 9;

    /// x3 of an MMIO exit.
    pub mod mmio_flags {
        /// Set for a store.
        pub const WRITE: u64 = 1;
        /// log2 of the access size in bytes, in bits 1..=2.
        pub const SIZE_SHIFT: u64 = 1;
        pub const SIZE_MASK: u64 = 0b11;
    }
}

/// The console output a successful VCPU_RUN returns beside its exit record, for a VM with a
/// console page (`host_call::VM_CONSOLE`): x6 = how many bytes, x7..x17 the bytes, the first in
/// x7's lowest byte (little-endian, eight a register), the rest of the registers zero (with a
/// count of 0 they keep the host's own values). The bytes came before the exit: the host prints
/// them first, then handles the exit.
pub mod console {
    /// The register that carries the byte count.
    pub const COUNT_REG: usize = 6;
    /// The registers that carry the bytes (x7..x17, SMCCC 1.2's result registers).
    pub const BYTE_REGS: usize = 11;
    /// The most bytes one VCPU_RUN returns: a vCPU's buffer.
    pub const BYTES: usize = BYTE_REGS * 8;
    /// The guest PL011's data register (a store transmits its low byte) and flag register, as
    /// offsets in its page: KCore (for a VM with a console page) and KServ (for every other
    /// access) serve the same UART.
    pub const PL011_DR: u64 = 0x00;
    pub const PL011_FR: u64 = 0x18;
    /// What FR reads: transmit FIFO empty (TXFE) and receive FIFO empty (RXFE), so a driver
    /// never waits and never reads.
    pub const PL011_FR_IDLE: u64 = 1 << 7 | 1 << 4;
}

/// The devices that KServ emulates for guests, at fixed guest-physical addresses (the same in
/// every VM).
pub mod guest_dev {
    /// A PL011 UART (data register at +0, flag register at +0x18).
    pub const UART: u64 = 0x0900_0000;
    /// corevisor's test device: CONFIG (read, +0) is the role KServ gives the guest; NOTIFY
    /// (write, +8) passes a value to KServ; the guest's scenario reads its answers at +0x10.
    pub const TEST_DEV: u64 = 0x0a00_0000;
    pub const TEST_DEV_CONFIG: u64 = TEST_DEV;
    pub const TEST_DEV_NOTIFY: u64 = TEST_DEV + 8;
    pub const TEST_DEV_ANSWER: u64 = TEST_DEV + 0x10;
    /// Where `vm-hello` maps the board's real UART into the guest with PHYS_ADDR_IOREMAP: the
    /// guest writes it directly, without exits.
    pub const PASSTHROUGH_UART: u64 = 0x0b00_0000;
    /// Where KServ maps the GICV frame for a GICv2 guest (PHYS_ADDR_IOREMAP): its GICC.
    pub const GUEST_GICC: u64 = 0x0c00_0000;
    /// Where guest RAM starts in every test guest, and where their image is linked.
    pub const RAM_BASE: u64 = 0x8000_0000;
    /// A Linux VM's GIC, where KServ's device tree puts it (QEMU virt's addresses): the
    /// distributor, the GICv3 redistributors (one [`GICR_STRIDE`] frame pair per vCPU), and the
    /// GICv2 CPU interface.
    pub const GICD: u64 = 0x0800_0000;
    pub const GICC: u64 = 0x0801_0000;
    pub const GICR: u64 = 0x080A_0000;
    pub const GICR_STRIDE: u64 = 0x2_0000;
    /// Guest RAM size for test guests.
    pub const RAM_SIZE: u64 = 16 << 20;
    /// Where a test guest in the BINDING role finds its second image, a signed line of text.
    pub const DATA_IMAGE: u64 = RAM_BASE + (8 << 20);
}

/// The ABI version that [`host_call::VERSION`] reports.
pub const ABI_VERSION_MAJOR: u16 = 0;
/// See [`ABI_VERSION_MAJOR`].
pub const ABI_VERSION_MINOR: u16 = 4;
/// `major << 16 | minor`, as returned in x1 by VERSION.
pub const ABI_VERSION: u64 = ((ABI_VERSION_MAJOR as u64) << 16) | ABI_VERSION_MINOR as u64;

/// SMCCC status codes, returned in x0 (as a signed 64-bit value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Status {
    Success = 0,
    NotSupported = -1,
    InvalidParameters = -2,
    Denied = -3,
    AlreadyOn = -4,
    OnPending = -5,
    InternalFailure = -6,
    NotPresent = -7,
    Disabled = -8,
    InvalidAddress = -9,
}

impl Status {
    /// The register encoding of this status.
    pub const fn as_reg(self) -> u64 {
        self as i64 as u64
    }

    /// Decodes x0 as a status; `None` for a value that is not a status code.
    pub const fn from_reg(x0: u64) -> Option<Status> {
        Some(match x0 as i64 {
            0 => Status::Success,
            -1 => Status::NotSupported,
            -2 => Status::InvalidParameters,
            -3 => Status::Denied,
            -4 => Status::AlreadyOn,
            -5 => Status::OnPending,
            -6 => Status::InternalFailure,
            -7 => Status::NotPresent,
            -8 => Status::Disabled,
            -9 => Status::InvalidAddress,
            _ => return None,
        })
    }
}

/// The result registers of a hypercall: status in x0, values in x1..x3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypResult {
    pub status: u64,
    pub values: [u64; 3],
}

impl HypResult {
    /// A bare status with no values.
    pub const fn status(status: Status) -> Self {
        HypResult { status: status.as_reg(), values: [0; 3] }
    }

    /// SUCCESS with values in x1..x3.
    pub const fn success(values: [u64; 3]) -> Self {
        HypResult { status: Status::Success.as_reg(), values }
    }
}

pub mod bundle;

/// What a test guest does, as it reads from the test device's CONFIG register (see
/// `tests/guests/`). KServ takes the role from the bundle's manifest.
pub mod guest_role {
    /// Prints, touches its RAM, exercises trapped system registers and the WFI timer, powers off.
    pub const HELLO: u32 = 0;
    /// Shares one page with the host, keeps another private, then unshares.
    pub const SHARE: u32 = 1;
    /// Reaches for the address KServ answers with (memory outside its RAM).
    pub const EVIL: u32 = 2;
    /// Ticks for a while, then checks that its memory is intact.
    pub const STEADY: u32 = 3;
    /// Obeys KServ's commands, for `cargo xtask bench`.
    pub const BENCH: u32 = 4;
    /// The BENCH role's command to write [`SYSREGS_SGI1R`] to ICC_SGI1R_EL1 once (GICv3).
    pub const BENCH_SGI: u64 = u64::MAX;
    /// The BENCH role's command that takes one virtual timer interrupt (GICv3: the timer fires at
    /// once, the guest polls ICC_IAR1_EL1 for INTID 27 and ends it) before it answers again.
    pub const BENCH_VTIMER: u64 = 1 << 32;
    /// Counts and sleeps on its timer, for the two-guest demo.
    pub const DEMO: u32 = 5;
    /// Throws random hypercalls, SMCs, trapped system registers, share calls and WFIs at KCore.
    pub const FUZZ: u32 = 6;
    /// Spins on its counter for 50 ms without exiting, then powers off.
    pub const SPIN: u32 = 7;
    /// Fills `PATTERN_PAGES` pages of its RAM with a pattern the host can recognise anywhere
    /// (each 8-byte word is `PATTERN_MAGIC` XOR the word's guest-physical address), says so, and
    /// waits for the host, which resets the machine (`reset-scrub`).
    pub const PATTERN: u32 = 8;
    pub const PATTERN_PAGES: u64 = 256;
    /// Where the PATTERN role's pages start: 12 MiB into the test guests' RAM.
    pub const PATTERN_BASE: u64 = super::guest_dev::RAM_BASE + (12 << 20);
    pub const PATTERN_MAGIC: u64 = 0x7e57_5c2b_0000_0000;

    /// Whether `word`, found anywhere in memory, is a word of the PATTERN role's pattern: it is
    /// `PATTERN_MAGIC` XOR an 8-byte aligned guest-physical address in the test guests' RAM.
    pub const fn is_pattern_word(word: u64) -> bool {
        let gpa = word ^ PATTERN_MAGIC;
        gpa >= super::guest_dev::RAM_BASE
            && gpa < super::guest_dev::RAM_BASE + super::guest_dev::RAM_SIZE
            && gpa.is_multiple_of(8)
    }
    /// Has a second signed image, a line of text at `guest_dev::DATA_IMAGE`: prints it and
    /// powers off (for `signed-binding`).
    pub const BINDING: u32 = 9;
    /// Makes share calls that KCore must refuse part-way (a range past the end of its RAM, a
    /// page at its share limit, an unshare of a partly shared range) and has the host check
    /// that none of them changed any page.
    pub const SHARE_ATOMIC: u32 = 10;
    /// Touches what a Linux boot touches first (MDSCR_EL1 with no vectors set up), the OS lock
    /// and the breakpoint and watchpoint registers, checks what they read; executes WFE; on
    /// GICv3 (the host answers 1) writes ICC_SGI1R_EL1 with [`SYSREGS_SGI1R`] (`guest-sysregs`).
    pub const SYSREGS: u32 = 11;
    /// What the SYSREGS role writes to ICC_SGI1R_EL1: Aff3 0x12, Aff2 0x34, INTID 5, target
    /// list {0, 1}.
    pub const SYSREGS_SGI1R: u64 = 0x0012_0034_0500_0003;
    /// `vm-large`: the guest has [`LARGE_RAM_SIZE`] of RAM, writes one word into every page of
    /// it, then checks them all (issue 13: KServ answers its faults with 2 MiB blocks).
    pub const LARGE: u32 = 12;
    pub const LARGE_RAM_SIZE: u64 = 128 << 20;

    /// The RAM a test guest in `role` gets.
    pub const fn ram_size(role: u32) -> u64 {
        if role == LARGE {
            LARGE_RAM_SIZE
        } else {
            super::guest_dev::RAM_SIZE
        }
    }
    /// Enables its virtual CPU interface (GICv3: the ICC system registers; GICv2: the GICV frame
    /// KServ maps at `guest_dev::GUEST_GICC`; ANSWER says which: 1 for GICv2), tells the host
    /// (NOTIFY `VGIC_READY`), acknowledges and ends the interrupts the host injects, then counts
    /// its own virtual timer's interrupts, which KCore delivers (`vm-vgic`).
    pub const VGIC: u32 = 13;
    /// What the VGIC role writes to NOTIFY once its interface is on.
    pub const VGIC_READY: u64 = 0x5617;
    /// Shares one page with the host (it tells the host its address with NOTIFY), then obeys:
    /// each ANSWER is a run number `n`; it writes `n` to the page's first word and spins (with
    /// `yield`) until the host writes `n` to the second, or for [`RACE_SPINS`] rounds, then asks
    /// again; 0 powers it off (`smp-race`: its vCPU stays Running as long as the host wants).
    /// [`RACE_TOUCH`] asks for a stage-2 fault instead.
    pub const RACE: u32 = 14;
    /// The most rounds a RACE guest spins for one run number: bounds a run the host never ends.
    pub const RACE_SPINS: u64 = 1_000_000;
    /// An ANSWER with this bit set has a RACE guest write to the guest-physical address in the
    /// other bits (a page it has not touched: a stage-2 fault for the host to answer), then ask
    /// again.
    pub const RACE_TOUCH: u64 = 1 << 63;
    /// An ANSWER with this bit set starts a run in which a RACE guest, until the host releases
    /// it (or for [`RACE_FLIPS`] rounds), fills its second page with [`RACE_PUBLIC`], shares it,
    /// unshares it and fills it with [`RACE_SECRET`], which the host must never see. It then
    /// writes the rounds it made and the share calls refused to the first page's words 2 and 3.
    /// At setup, after the first page's address, it tells the host the second page's.
    pub const RACE_FLIP: u64 = 1 << 62;
    pub const RACE_FLIPS: u64 = 10_000;
    pub const RACE_PUBLIC: u64 = 0x0b11_c0b1_1c0b_11c0;
    pub const RACE_SECRET: u64 = 0x5ec2_e75e_c2e7_5ec2;
    /// STEADY, after telling the host (NOTIFY) the guest-physical address of the 64 KiB whose
    /// contents it checks: `dma-attacks` aims the host's DMA at a page the guest checks.
    pub const STEADY_AT: u32 = 15;
    /// A BENCH command with this bit set: store to the guest-physical address in the other bits
    /// (a page the guest never touched: one stage-2 fault for the host to answer), then answer
    /// again (`cargo xtask bench`'s page move).
    pub const BENCH_TOUCH: u64 = 1 << 33;
    /// Where the BENCH role's untouched pages start: 12 MiB into its RAM, past its padded image.
    pub const BENCH_TOUCH_BASE: u64 = super::guest_dev::RAM_BASE + (12 << 20);
    /// A BENCH command with this bit set: store the byte `x` to the PL011's DR as many times as
    /// the low 8 bits say, then answer again (`cargo xtask bench`'s console store, served in
    /// KCore once the host has registered the UART with VM_CONSOLE).
    pub const BENCH_CONSOLE: u64 = 1 << 34;
}

/// PSCI function ids (PSCI 1.1, DEN0022) that KCore mediates for the host.
pub mod psci {
    pub const VERSION: u32 = 0x8400_0000;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON_32: u32 = 0x8400_0003;
    pub const CPU_ON_64: u32 = 0xC400_0003;
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const FEATURES: u32 = 0x8400_000A;
    /// MIGRATE_INFO_TYPE; a VM answers 2: no Trusted OS that needs migrating.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const MIGRATE_INFO_NO_TRUSTED_OS: u64 = 2;
    /// PSCI 1.1, as reported by PSCI_VERSION.
    pub const PSCI_VERSION_1_1: u64 = 0x0001_0001;
    /// AFFINITY_INFO results.
    pub const AFFINITY_ON: u64 = 0;
    pub const AFFINITY_OFF: u64 = 1;
}

/// KCore's canary page lies at this offset in KCore's slot (the last page of its 32 MiB). KCore
/// fills it with [`canary_word`]s at boot and, in `check-invariants` builds, checks it after every
/// host trap: a changed word means something wrote KCore's memory behind the stage-2 (a device's
/// DMA), a broken invariant. KServ aims its DMA attempts at it (`host-dma`).
pub const KCORE_CANARY_OFFSET: u64 = 0x01FF_F000;

/// Word `index` (0..512) of KCore's canary page.
pub const fn canary_word(index: u64) -> u64 {
    0xC0DE_CA4A_0000_0000 | index.wrapping_mul(0x9E37_79B9) & 0xFFFF_FFFF
}

/// Boot-argument keys that KCore and KServ read from the DTB's `/chosen/bootargs`.
pub mod bootargs {
    /// `loglevel=off|error|warn|info|debug|trace`: KCore's log level.
    pub const LOG_LEVEL: &str = "loglevel";
    /// `scenario=NAME`: the scenario KServ runs.
    pub const SCENARIO: &str = "scenario";

    /// The value of `key=value` in a space-separated argument string.
    pub fn value<'a>(args: &'a str, key: &str) -> Option<&'a str> {
        args.split_ascii_whitespace().find_map(|arg| {
            let (k, v) = arg.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_ids_are_vendor_hyp_fast_smc64() {
        assert_eq!(host_call::VERSION, 0xC600_0000);
        assert_eq!(host_call::SYSTEM_OFF, 0xC600_0002);
        assert_eq!(HYP_CALL_BASE >> 24 & 0x3F, SMCCC_OWNER_VENDOR_HYP);
    }

    #[test]
    fn pattern_words_are_recognised_and_nothing_else() {
        use guest_role::{is_pattern_word, PATTERN_MAGIC};
        assert!(is_pattern_word(PATTERN_MAGIC ^ guest_dev::RAM_BASE));
        assert!(is_pattern_word(PATTERN_MAGIC ^ (guest_dev::RAM_BASE + guest_dev::RAM_SIZE - 8)));
        assert!(!is_pattern_word(PATTERN_MAGIC ^ (guest_dev::RAM_BASE + guest_dev::RAM_SIZE)));
        assert!(!is_pattern_word(PATTERN_MAGIC ^ (guest_dev::RAM_BASE + 4)));
        assert!(!is_pattern_word(0) && !is_pattern_word(PATTERN_MAGIC) && !is_pattern_word(u64::MAX));
    }

    #[test]
    fn status_round_trips_through_a_register() {
        for s in [Status::Success, Status::NotSupported, Status::InvalidParameters, Status::InvalidAddress] {
            assert_eq!(Status::from_reg(s.as_reg()), Some(s));
        }
        assert_eq!(Status::NotSupported.as_reg(), u64::MAX);
        assert_eq!(Status::from_reg(7), None);
    }

    #[test]
    fn bootargs_value_finds_exact_keys_only() {
        let args = "console=ttyAMA0 scenario=hvc-version loglevel=debug";
        assert_eq!(bootargs::value(args, "scenario"), Some("hvc-version"));
        assert_eq!(bootargs::value(args, "loglevel"), Some("debug"));
        assert_eq!(bootargs::value(args, "level"), None);
        assert_eq!(bootargs::value("", "scenario"), None);
    }
}

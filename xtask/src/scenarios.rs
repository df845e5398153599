//! The QEMU scenarios: each is a fresh QEMU run that passes only on exit status 0 and the
//! console lines it must print. Later issues add rows to [`SCENARIOS`].

use crate::artifacts::{self, Artifacts, Flavor};
use crate::qemu::{self, Qemu};
use corevisor_abi::guest_role as role;
use std::time::Duration;

/// The machines every scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    VirtGicV3,
    VirtGicV2,
    Raspi4b,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::VirtGicV3, Variant::VirtGicV2, Variant::Raspi4b];

    pub fn name(self) -> &'static str {
        match self {
            Variant::VirtGicV3 => "virt-gicv3",
            Variant::VirtGicV2 => "virt-gicv2",
            Variant::Raspi4b => "raspi4b",
        }
    }

    fn board(self) -> &'static corevisor_boards::Board {
        match self {
            Variant::Raspi4b => &corevisor_boards::rpi4::BOARD,
            _ => &corevisor_boards::qemu_virt::BOARD,
        }
    }

    fn gic_v2(self) -> bool {
        self != Variant::VirtGicV3
    }

    /// Whether the machine has an SMMU in front of its DMA masters (QEMU `virt` with
    /// [`qemu::SMMU_ARGS`]; the Pi 4's BCM2711 has none).
    pub fn has_smmu(self) -> bool {
        self != Variant::Raspi4b
    }
}

/// Why `s` does not run on `variant`, if it does not: the line `qemu-test` prints instead of a
/// verdict. A skipped run is counted apart, never as a pass.
pub fn skip_reason(s: &Scenario, variant: Variant) -> Option<String> {
    (s.smmu && !variant.has_smmu()).then(|| {
        format!(
            "SKIP {} on {}: the BCM2711 has no SMMU, DMA cannot be isolated (README, threat model)",
            s.name,
            variant.name()
        )
    })
}

/// `qemu-test`'s last line: skipped runs are neither passes nor failures.
pub fn summary(passed: usize, failed: usize, skipped: usize) -> String {
    format!("{passed} passed, {failed} failed, {skipped} skipped")
}

/// A scenario and the console lines (substrings) it must print.
pub struct Scenario {
    pub name: &'static str,
    pub lines: &'static [&'static str],
    /// Lines required only on GICv2 machines.
    pub gic_v2_lines: &'static [&'static str],
    /// The VMs of the boot bundle the run gets with `-initrd`: (name, role, vCPUs). None if empty.
    pub bundle: &'static [(&'static str, u32, u32)],
    /// Boot arguments beyond `scenario=NAME`.
    pub bootargs: &'static str,
    /// Whether the run needs the SMMUv3 and the edu device ([`qemu::SMMU_ARGS`]): skipped on a
    /// machine that has no SMMU ([`Variant::has_smmu`]).
    pub smmu: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot",
        lines: &[
            "[INFO][cpu0] cpu0 online at EL2, MMU on",
            "[INFO][cpu1] cpu1 online at EL2, MMU on",
            "[INFO][cpu2] cpu2 online at EL2, MMU on",
            "[INFO][cpu3] cpu3 online at EL2, MMU on",
            "all 4 cpus online",
            "heap ok:",
            "platform from the DTB",
            "host stage-2 on:",
            "entering KServ at",
            "kserv: running at EL1",
            "kserv: cpu1 up at EL1",
            "kserv: scenario boot: PASS",
            "host SYSTEM_OFF, status 0",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "hvc-version",
        lines: &["kserv: VERSION returned 0.4", "kserv: scenario hvc-version: PASS"],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "hvc-unknown",
        lines: &[
            "unknown host hypercall 0xc6000fff: NOT_SUPPORTED",
            "kserv: hypercall 0xc6000fff returned NOT_SUPPORTED",
            "kserv: hypercall 0xc7000001 returned NOT_SUPPORTED",
            "kserv: scenario hvc-unknown: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "host-undef",
        lines: &[
            "host trap SMC 0xc2000001 at",
            "host trap HVC #0x1 at",
            "injecting UNDEF into the host",
            "kserv: UNDEF taken at",
            "host set/way maintenance at",
            "done as clean and invalidate",
            "kserv: dc isw, dc csw, dc cisw: performed by KCore, no UNDEF",
            "kserv: scenario host-undef: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "host-reads-kcore",
        lines: &[
            "injecting an external abort into the host",
            "kserv: 94 of 94 accesses to KCore's code, data, stacks, heap and page tables aborted",
            "kserv: scenario host-reads-kcore: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "host-maps-all-ram",
        lines: &["pages of host RAM with", "stage-2 faults, none refused", "kserv: scenario host-maps-all-ram: PASS"],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "host-device-access",
        lines: &["kserv: UART and GIC reachable from the host", "kserv: scenario host-device-access: PASS"],
        gic_v2_lines: &["is KCore's: access aborted"],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "vm-hello",
        lines: &[
            "kserv: vm hello: created, image verified by KCore",
            "kserv: vm-hello: the host's q0-q31 are intact across VERIFY_VM_IMAGE",
            "kserv: [hello] hello from a corevisor guest",
            "kserv: [hello] touched 64 pages: ok",
            "kserv: [hello] ID_AA64PFR0_EL1 = 0x",
            "kserv: [hello] dc isw: ok",
            "kserv: [hello] PMCR_EL0: UNDEF",
            "kserv: [hello] ACTLR_EL1: UNDEF",
            "kserv: [hello] hvc #1: UNDEF",
            "kserv: [hello] timer fired after wfi",
            "kserv: [hello] PSCI version 0x10001",
            "kserv: [hello] CPU_ON vcpu 1: 0",
            "kserv: [hello] hello from vcpu 1, context 0x5ec0",
            "kserv: [hello] vcpu 1 said hello and is off again",
            "kserv: vm hello: the board's UART is mapped at 0xb000000; mapping RAM was refused",
            "[hello, passthrough] written straight to the UART",
            "kserv: [hello] bye",
            "kserv: vm hello: powered off",
            "all scrubbed",
            "kserv: scenario vm-hello: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("hello", role::HELLO, 2)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "vm-two-guests",
        lines: &[
            "kserv: [alpha] tick 0",
            "kserv: [beta] reaching outside my RAM",
            "kserv: vm beta: read at",
            "kserv: vm gamma: read at",
            "outside its RAM and devices: stopping it",
            "kserv: [alpha] tick 19",
            "kserv: [alpha] memory intact",
            "kserv: [alpha] fp registers intact",
            "kserv: [delta] fp registers intact",
            "kserv: vm-two-guests: both reaching guests stopped, alpha unaffected",
            "kserv: scenario vm-two-guests: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[
            ("alpha", role::STEADY, 1),
            ("beta", role::EVIL, 1),
            ("gamma", role::EVIL, 1),
            ("delta", role::STEADY, 1),
        ],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "vm-share",
        lines: &[
            "kserv: [sharer] shared page at 0x",
            "message read; private page",
            "kserv: [sharer] host verdict: 1",
            "kserv: [sharer] unshared page",
            "kserv: vm-share: after unshare, page",
            "2 of 2 accesses aborted",
            "kserv: vm-share: PASS checks done",
            "kserv: scenario vm-share: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("sharer", role::SHARE, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "share-atomic",
        lines: &[
            "kserv: [atomic] share past the end of RAM: status 0xfffffffffffffffe",
            "kserv: share-atomic: after refused share 1: 4 of 4 accesses to 2 pages aborted",
            "kserv: [atomic] page Y shared 100 times, up to its limit",
            "kserv: [atomic] share over a page at its limit: status 0xfffffffffffffff7",
            "kserv: share-atomic: after refused share 2: 2 of 2 accesses to 1 pages aborted",
            "kserv: [atomic] unshare of a partly shared range: status 0xfffffffffffffff7",
            "kserv: share-atomic: after the refused unshare, page X still reads as shared",
            "kserv: [atomic] bye",
            "kserv: share-atomic: PASS no refused call changed a page",
            "kserv: scenario share-atomic: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("atomic", role::SHARE_ATOMIC, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "host-attacks-vm",
        lines: &[
            "kserv: [victim] tick 19",
            "accesses to the running VM's pages aborted",
            "kserv: [victim] memory intact",
            "kserv: [victim] fp registers intact",
            "kserv: scenario host-attacks-vm: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("victim", role::STEADY, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "vm-bad-image",
        lines: &[
            "VERIFY_VM_IMAGE refused: Boot(Rejected)",
            "kserv: vm-bad-image: one byte of the image flipped: VERIFY denied, VCPU_RUN denied",
            "kserv: vm-bad-image: one byte of the signature flipped: VERIFY denied, VCPU_RUN denied",
            "kserv: [hello] bye",
            "kserv: scenario vm-bad-image: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("hello", role::HELLO, 2)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "signed-binding",
        lines: &[
            // QEMU's Cortex-A72 has the SHA-256 instructions (the Pi 4's silicon does not).
            "image hashing: SHA-256 with the ARMv8 SHA-256 instructions (known-answer test passed)",
            "kserv: signed-binding: image at another address: VERIFY denied, VCPU_RUN denied",
            "kserv: signed-binding: images swapped, the data image as the entry: VERIFY denied, VCPU_RUN denied",
            "kserv: signed-binding: image from another VM's set: VERIFY denied, VCPU_RUN denied",
            "VERIFY_VM_IMAGE refused: Boot(Rejected)",
            "kserv: signed-binding: the signed layout: verified",
            "kserv: [bound] data image: signed data for bound",
            "kserv: [bound] bye",
            "kserv: vm bound: powered off",
            "all scrubbed",
            "kserv: scenario signed-binding: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("bound", role::BINDING, 1), ("other", role::BINDING, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "hvc-fuzz",
        lines: &[
            "kserv: hvc-fuzz: base seed 0x",
            "kserv: smp: cores 1-3 up in KServ, each with its timer interrupt enabled",
            "kserv: hvc-fuzz: core 0: seed 0x",
            "kserv: hvc-fuzz: core 1: seed 0x",
            "kserv: hvc-fuzz: core 2: seed 0x",
            "kserv: hvc-fuzz: core 3: seed 0x",
            "kserv: hvc-fuzz: core 0: 10000 calls,",
            "kserv: hvc-fuzz: core 1: 10000 calls,",
            "kserv: hvc-fuzz: core 2: 10000 calls,",
            "kserv: hvc-fuzz: core 3: 10000 calls,",
            "kserv: scenario hvc-fuzz: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        // Thousands of refused calls: only errors are worth printing.
        bootargs: "loglevel=error",
        smmu: false,
    },
    Scenario {
        name: "vm-irq",
        lines: &[
            "kserv: vm spinner: IRQ exit (the host's physical timer), timer silenced",
            "kserv: [spinner] spun for 50 ms",
            "kserv: vm spinner: powered off",
            "kserv: scenario vm-irq: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("spinner", role::SPIN, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "guest-fuzz",
        lines: &[
            "kserv: guest-fuzz: seed 0x",
            "kserv: [fuzzer] fuzzed 2000 operations",
            "kserv: [fuzzer] PMU hidden from ID_AA64DFR0_EL1",
            " checked, 0 wrong (PMU, physical timer, ACTLR: UNDEF; debug: zero, OSLSR 0x8)",
            "kserv: vm fuzzer: powered off",
            "all scrubbed",
            "kserv: scenario guest-fuzz: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("fuzzer", role::FUZZ, 1)],
        bootargs: "loglevel=error",
        smmu: false,
    },
    Scenario {
        name: "reset-scrub",
        lines: &[
            // First boot: the guest holds its pattern, the host resets, KCore scrubs first.
            "kserv: [pattern] filled 131072 words with the pattern",
            "kserv: reset-scrub: the guest holds 131072 pattern words; resetting the machine",
            "host SYSTEM_RESET",
            "VM pages, 2048 pages of VM page tables and KCore's heap (12288 KiB) before reset",
            // Second boot: none of the pattern is left in the host's RAM.
            "kserv: reset-scrub: after the reset, 0 of 131072 guest pattern words found in",
            "kserv: scenario reset-scrub: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("pattern", role::PATTERN, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "host-dma",
        lines: &[
            "host MMIO: ",
            "DMA-capable devices refused, 0 given",
            "at KCore's canary (0x",
            "at the VM's page (0x",
            "): refused",
            "kserv: [victim] tick 19",
            "kserv: [victim] memory intact",
            "DMA routes refused",
            "kserv: scenario host-dma: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("victim", role::STEADY, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "guest-sysregs",
        lines: &[
            "kserv: [sysregs] MDSCR_EL1 with no vectors: reads 0x0",
            "kserv: [sysregs] OSLSR_EL1 = 0x8",
            "kserv: [sysregs] debug registers: all read as zero, 0 UNDEFs",
            "kserv: [sysregs] wfe: back before its timer",
            "kserv: vm sysregs: powered off",
            "all scrubbed",
            "kserv: scenario guest-sysregs: PASS",
        ],
        gic_v2_lines: &["kserv: [sysregs] ICC_SGI1R_EL1: skipped, no GICv3 system registers"],
        bundle: &[("sysregs", role::SYSREGS, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "vm-large",
        lines: &[
            "kserv: [large] large: touched 30720 pages, 0 wrong",
            "kserv: [large] bye",
            "kserv: vm-large: 60 stage-2 faults answered with a 2 MiB block",
            "kserv: vm large: torn down, ",
            "kserv: scenario vm-large: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("large", role::LARGE, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "vm-vgic",
        lines: &[
            "kserv: vm-vgic: injection into an unverified VM: DENIED",
            "kserv: vm-vgic: injection with INTID 1020: INVALID_PARAMETERS",
            "kserv: vm-vgic: injection with vCPU 1 (not registered): INVALID_PARAMETERS",
            "kserv: vm-vgic: injection with vCPU 8: INVALID_PARAMETERS",
            "kserv: vm-vgic: injection with priority 256: INVALID_PARAMETERS",
            "kserv: [vgic] vgic: interface on",
            "kserv: vm vgic: injected SPIs 40-44 (priority 0xa0) and SGI 3 (0x80, twice)",
            "kserv: [vgic] vgic: INTID 3 first (the highest priority), then 40-44, each once",
            "kserv: [vgic] vgic: 5 virtual timer interrupts",
            "kserv: vm vgic: powered off",
            "kserv: vm-vgic: 0 IRQ exits reached the host",
            "kserv: scenario vm-vgic: PASS",
        ],
        gic_v2_lines: &["kserv: vm-vgic: GICV 0x", "mapped at the guest's GICC 0xc000000"],
        bundle: &[("vgic", role::VGIC, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "smp-vms",
        lines: &[
            "kserv: smp: cores 1-3 up in KServ, each with its timer interrupt enabled",
            "kserv: [a] tick 19",
            "kserv: [c] tick 19",
            "kserv: smp-vms: vm b: shared page 0x",
            "kserv: smp-vms: vm d: shared page 0x",
            "kserv: smp-vms: vm b: after unshare, page",
            "kserv: smp-vms: vm d: after unshare, page",
            "kserv: smp-vms: vm a vcpu 0 ran on core",
            "kserv: smp-vms: core 0: ",
            "kserv: smp-vms: core 1: ",
            "kserv: smp-vms: core 2: ",
            "kserv: smp-vms: core 3: ",
            "kserv: smp-vms: every core ran a vCPU",
            "kserv: smp-vms: vCPUs ran at the same time on different cores",
            "kserv: smp-vms: 4 guests finished intact, every page back scrubbed",
            "kserv: scenario smp-vms: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("a", role::STEADY, 1), ("b", role::SHARE, 1), ("c", role::STEADY, 1), ("d", role::SHARE, 1)],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "smp-race",
        lines: &[
            "kserv: smp: cores 1-3 up in KServ, each with its timer interrupt enabled",
            "kserv: smp-race: 8 RACE guests created, each sharing a page and waiting for a run",
            "kserv: smp-race: vcpu-run while running: 8 rounds, 8 second VCPU_RUNs DENIED while the vCPU ran, 8 runs \
             completed",
            "kserv: smp-race: vcpu-run at once: 16 rounds, exactly one winner in 16, the other DENIED; the first core won ",
            "kserv: smp-race: destroy while running: VM_POWER_OFF SUCCESS, DESTROY_VM DENIED, CLEAR_VM_S2_RANGE DENIED; \
             after the run CLEAR_VM_S2_RANGE returned ",
            "kserv: smp-race: destroy at once: 4 rounds, exactly one of VCPU_RUN and DESTROY_VM first in 4: the run ",
            "kserv: smp-race: page offered twice: 8 rounds, exactly one VM took the page in 8, the other's VCPU_RUN \
             refused (INVALID_ADDRESS) and it ran on with a page of its own; vm x took it ",
            "kserv: smp-race: page offered twice: 8 of 8 taken pages back from the winner, scrubbed",
            "kserv: smp-race: share against host access: the guest shared and unshared its page ",
            " times (0 calls refused) while cores 1-3 made 600 accesses: ",
            " aborted at its address, 0 other outcomes; the secret was read 0 times",
            "kserv: [r] bye",
            "kserv: vm r: torn down, ",
            "kserv: vm s: torn down, ",
            "kserv: vm t: torn down, ",
            "kserv: vm u: torn down, ",
            "kserv: vm v: torn down, ",
            "kserv: vm w: torn down, ",
            "kserv: vm x: torn down, ",
            "kserv: vm y: torn down, ",
            "kserv: smp-race: 8 VMs torn down, every page back scrubbed",
            "kserv: scenario smp-race: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[
            ("r", role::RACE, 1),
            ("s", role::RACE, 1),
            ("t", role::RACE, 1),
            ("u", role::RACE, 1),
            ("v", role::RACE, 1),
            ("w", role::RACE, 1),
            ("x", role::RACE, 1),
            ("y", role::RACE, 1),
        ],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "dma-host",
        lines: &[
            "kserv: dma-host: edu 1234:11e8 at 00:",
            "kserv: dma-host: edu id 0x10000ed; liveness: wrote 0x12345678, read back 0xedcba987",
            "kserv: dma-host: SMMU_ATTACH_STREAM 0x",
            " to the host: Success",
            "(in a 2 MiB block the CPU never touched): 4096 of 4096 arrived",
            "(beside the pages the CPU wrote): 4096 of 4096 arrived",
            "kserv: scenario dma-host: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: true,
    },
    Scenario {
        name: "dma-attacks",
        lines: &[
            " to the host: Success",
            "kserv: dma-attacks: edu read the host's page 0x",
            "kserv: dma-attacks: attempt 1: DMA write of the filler to the page just given to the VM at 0x",
            "kserv: dma-attacks: attempt 2: DMA read of the page just given to the VM at 0x",
            "kserv: dma-attacks: attempt 3: DMA write of the filler to KCore's canary at 0x4207f000",
            "kserv: dma-attacks: attempt 4: DMA read of KCore's canary at 0x4207f000: edu's first word holds zero, a \
             refused read's",
            "kserv: dma-attacks: attempt 5: DMA write of the filler to the running VM's private page at 0x",
            "kserv: dma-attacks: attempt 6: DMA read of the running VM's private page at 0x",
            "smmu: blocked DMA #1: stream 0x0010 write at 0x",
            "smmu: blocked DMA #2: stream 0x0010 read at 0x",
            "smmu: blocked DMA #3: stream 0x0010 write at 0x000000004207f000",
            "smmu: blocked DMA #4: stream 0x0010 read at 0x000000004207f000",
            "smmu: blocked DMA #5: stream 0x0010 write at 0x",
            "smmu: blocked DMA #6: stream 0x0010 read at 0x",
            "kserv: [victim] tick 19",
            "kserv: [victim] memory intact",
            "kserv: dma-attacks: 6 DMA attempts, 3 of 3 reads brought nothing",
            "kserv: dma-attacks: afterwards, the host's own DMA brought 4096 of 4096 bytes",
            "kserv: scenario dma-attacks: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[("victim", role::STEADY_AT, 1)],
        bootargs: "",
        smmu: true,
    },
    Scenario {
        name: "smmu-tamper",
        lines: &[
            "kserv: smmu-tamper: SMMU CR0 at 0x9050020: 2 of 2 accesses aborted",
            "kserv: smmu-tamper: SMMU EVENTQ_CONS (page 1) at 0x90600ac: 2 of 2 accesses aborted",
            "kserv: smmu-tamper: 18 of 18 accesses to the SMMU's registers aborted; 94 of 94 to KCore's memory (its \
             stream table and queues among it) aborted",
            "kserv: smmu-tamper: SMMU_ATTACH_STREAM of a stream outside the SMMU: Some(InvalidParameters)",
            "kserv: smmu-tamper: SMMU_ATTACH_STREAM of a VM that does not exist: Some(InvalidParameters)",
            "kserv: smmu-tamper: SMMU_ATTACH_STREAM of edu's stream to the host: Some(Success)",
            "kserv: smmu-tamper: SMMU_ATTACH_STREAM of edu's stream again: Some(Denied)",
            "smmu: blocked DMA #1: stream 0x0010 write at 0x000000004207f000",
            "smmu: blocked DMA #2: stream 0x0010 read at 0x000000004207f000",
            "kserv: smmu-tamper: a page-wide DMA write at KCore's canary (1024 words, each a fault) went by",
            "smmu: the event queue overflowed: the SMMU dropped fault records",
            "kserv: smmu-tamper: afterwards, DMA at KCore's canary brought nothing, the host's own DMA brought 4096 of \
             4096 bytes",
            "kserv: scenario smmu-tamper: PASS",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: true,
    },
];

/// Scenarios that boot Debian's arm64 cloud kernel (`linux::reference_guest`: the newest 6.1)
/// as a VM of 2 vCPUs (`linux-smp`: 4, [`linux_guest_cpus`]) and 128 MiB, to the test initramfs,
/// each vCPU on its own core. Beyond their lines, the console must
/// hold `/init`'s proof lines in order and none of Linux's panic lines
/// (`linux::console_problems`). They run on a build whose checks after VCPU_RUNs that moved no
/// page are sampled ([`Flavor::LinuxTest`]).
pub const LINUX_SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "linux",
        lines: &[
            "kserv: [linux] linux-guest: init started",
            // Longer than KCore's console buffer: every character, in order.
            "kserv: [linux] linux-guest: console 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 9876543210 zyxwvutsrqponmlkjihgfedcba ZYXWVUTSRQPONMLKJIHGFEDCBA end",
            "kserv: vm linux: powered off",
            "kserv: vm linux: torn down, ",
            "all scrubbed",
            "kserv: linux: vm linux vcpu 1 ran on core 1 (",
            "kserv: linux: each of the 2 vCPUs ran on its own core",
            "kserv: scenario linux: PASS",
            "host SYSTEM_OFF, status 0",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "host-attacks-linux",
        lines: &[
            "kserv: host-attacks-linux: round 1 (exit 1, after \"its first exit\"): ",
            "after \"Booting Linux on physical CPU\"): ",
            "kserv: [linux] linux-guest: init started",
            "after \"linux-guest: init started\"): ",
            "(1 in 1; ",
            "kserv: host-attacks-linux: round 6 (",
            "kserv: vm linux: powered off",
            "kserv: vm linux: torn down, ",
            "all scrubbed",
            " accesses to the running Linux VM's pages aborted (kernel text, page tables, faulted-in RAM)",
            "kserv: host-attacks-linux: vm linux vcpu 1 ran on core 1 (",
            "kserv: host-attacks-linux: each of the 2 vCPUs ran on its own core",
            "kserv: scenario host-attacks-linux: PASS",
            "host SYSTEM_OFF, status 0",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
    Scenario {
        name: "linux-smp",
        lines: &[
            "kserv: smp: cores 1-3 up in KServ",
            "kserv: [linux] linux-guest: init started",
            "kserv: vm linux: powered off",
            "kserv: vm linux: torn down, ",
            "all scrubbed",
            "kserv: linux-smp: vm linux vcpu 0 ran on core 0 (",
            "kserv: linux-smp: vm linux vcpu 1 ran on core 1 (",
            "kserv: linux-smp: vm linux vcpu 2 ran on core 2 (",
            "kserv: linux-smp: vm linux vcpu 3 ran on core 3 (",
            "kserv: linux-smp: cross-core kicks sent: ",
            "kserv: linux-smp: each of the 4 vCPUs ran on its own core",
            "kserv: scenario linux-smp: PASS",
            "host SYSTEM_OFF, status 0",
        ],
        gic_v2_lines: &[],
        bundle: &[],
        bootargs: "",
        smmu: false,
    },
];

/// The Linux scenarios whose VM has other than `linux::GUEST_CPUS` vCPUs (kept apart from
/// [`Scenario`], as [`GIC_V3_LINES`] is): `linux-smp` gives each of four cores a vCPU.
const LINUX_GUEST_CPUS: &[(&str, u32)] = &[("linux-smp", 4)];

/// The vCPUs of Linux scenario `name`'s VM.
pub fn linux_guest_cpus(name: &str) -> u32 {
    LINUX_GUEST_CPUS.iter().find(|(n, _)| *n == name).map_or(crate::linux::GUEST_CPUS, |&(_, cpus)| cpus)
}

/// Whether `s` is one of the [`LINUX_SCENARIOS`].
fn boots_linux(s: &Scenario) -> bool {
    LINUX_SCENARIOS.iter().any(|l| l.name == s.name)
}

/// Lines required only on the GICv3 machine, by scenario (kept apart from [`Scenario`] so that
/// its rows need no new field): a GICv3 guest's ICC_SGI1R_EL1 write, printed back by KServ.
const GIC_V3_LINES: &[(&str, &[&str])] =
    &[("guest-sysregs", &["kserv: vm sysregs: vcpu 0 SGI exit, ICC_SGI1R_EL1 = 0x12003405000003"])];

/// Scenarios that run without `-no-reboot`: a reset reboots the machine with RAM as it was.
const REBOOTING: &[&str] = &["reset-scrub"];

/// Whether the scenario named `name` reboots on a reset instead of ending the run.
pub fn reboots(name: &str) -> bool {
    REBOOTING.contains(&name)
}

/// Lines that fail any run where they appear.
const FORBIDDEN: &[&str] = &["panicked", "[PANIC]", "[ERROR]"];

/// Everything wrong with a run: its exit status, missing lines, forbidden lines.
pub fn check(scenario: &Scenario, variant: Variant, status: Option<i32>, console: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match status {
        None => problems.push("timed out (killed by the hang guard)".to_string()),
        Some(0) => {}
        Some(code) => problems.push(format!("QEMU exited with status {code}")),
    }
    let v2 = if variant.gic_v2() { scenario.gic_v2_lines } else { &[] };
    let v3 = GIC_V3_LINES.iter().filter(|(name, _)| !variant.gic_v2() && *name == scenario.name);
    for line in scenario.lines.iter().chain(v2).chain(v3.flat_map(|(_, lines)| lines.iter())) {
        if !console.contains(line) {
            problems.push(format!("missing line: {line}"));
        }
    }
    problems.extend(unblocked_attempts(console));
    for line in console.lines().filter(|l| l.contains("pages back (")) {
        if !gave_every_page_back(line) {
            problems.push(format!("teardown lost pages: {}", line.trim_end()));
        }
    }
    for line in console.lines() {
        let failed_scenario = line.contains("kserv: scenario") && line.contains("FAIL");
        if failed_scenario || FORBIDDEN.iter().any(|f| line.contains(f)) {
            problems.push(format!("forbidden line: {}", line.trim_end()));
        }
    }
    problems
}

/// The DMA attacks (KServ's `attempt N: DMA write|read of WHAT at 0xADDR` lines) without KCore's
/// `smmu: blocked DMA #N: stream 0xSSSS write|read at 0x<ADDR, 16 digits>` line: every attempt
/// is one fault event, and the only ones since boot, so attempt N must be KCore's event N.
pub fn unblocked_attempts(console: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for line in console.lines() {
        let Some((_, rest)) = line.split_once(": attempt ") else { continue };
        let Some((n, rest)) = rest.split_once(": DMA ") else { continue };
        let Some((direction, rest)) = rest.split_once(' ') else { continue };
        let address = rest
            .split_once(" at 0x")
            .and_then(|(_, a)| u64::from_str_radix(a.split(|c: char| !c.is_ascii_hexdigit()).next()?, 16).ok());
        let (Ok(n), Some(address)) = (n.parse::<u64>(), address) else { continue };
        let event = format!("smmu: blocked DMA #{n}: stream 0x");
        let target = format!(" {direction} at {address:#018x} (");
        if !console.lines().any(|l| l.contains(&event) && l.contains(&target)) {
            problems.push(format!("attempt {n} ({direction} at {address:#x}) has no `{event}....{target}` line"));
        }
    }
    problems
}

/// Whether KServ's teardown line `vm NAME: torn down, A pages back (B given), all scrubbed` has
/// A = B and ends in `all scrubbed`.
fn gave_every_page_back(line: &str) -> bool {
    let number = |text: &str| text.trim().parse::<u64>().ok();
    let Some((_, rest)) = line.split_once("torn down, ") else { return false };
    let Some((back, rest)) = rest.split_once(" pages back (") else { return false };
    let Some((given, rest)) = rest.split_once(" given), ") else { return false };
    number(back).is_some() && number(back) == number(given) && rest.trim_end() == "all scrubbed"
}

/// Only stops a hung QEMU; reaching it is a failure, never a pass. Runs use
/// [`qemu::DETERMINISTIC_TIME`], so a correct run executes the same instructions however loaded
/// the host is, and what it costs is QEMU's CPU time, not wall-clock time (which a busy host
/// stretches without bound: a wall-clock guard alone can fire on a correct run). Derived from measurements on the project's 2-core machine (`cargo xtask
/// qemu-test` prints each run's CPU time): the costliest correct runs, `host-maps-all-ram`
/// (every page of host RAM faulted in) and `hvc-fuzz` (10,000 calls on each of four cores), take
/// about 10 s and 5 s of CPU; most take under 2 s. The CPU budget is 12 times the costliest, far
/// beyond what cache or frequency effects of a busy host add.
/// Wall-clock time only catches a QEMU that hangs without using CPU (every core waiting for an
/// interrupt that never comes): 10 minutes is five times the CPU budget, so even a host whose 2
/// cores are shared by ten busy processes gives a correct run its 120 s of CPU before it.
const HANG_GUARD: qemu::Guard = qemu::Guard { cpu: Duration::from_secs(120), wall: Duration::from_secs(600) };

/// [`HANG_GUARD`] for the Linux scenarios: a boot under corevisor takes about 60 s of CPU on the
/// project's 2-core machine; ten times that.
const LINUX_HANG_GUARD: qemu::Guard = qemu::Guard { cpu: Duration::from_secs(600), wall: Duration::from_secs(1800) };

/// Writes the scenario's boot bundle (signed test guests), if it has one.
pub fn scenario_bundle(s: &Scenario) -> Result<Option<std::path::PathBuf>, String> {
    if s.bundle.is_empty() {
        return Ok(None);
    }
    let vms: Vec<crate::guests::GuestVm> =
        s.bundle.iter().map(|&(name, role, vcpus)| crate::guests::GuestVm { name, role, vcpus }).collect();
    let path = artifacts::root().join("target/xtask/bundles").join(format!("{}.img", s.name));
    crate::guests::write_bundle(&vms, &path)?;
    Ok(Some(path))
}

/// The scenario `run` boots by default: two guests count and sleep. No test checks its output.
pub const DEMO: &str = "demo";

/// What a scenario name is given to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameUse {
    /// `cargo xtask run --scenario NAME`: the demo or any tested scenario.
    Run,
    /// `cargo xtask qemu-test NAME...`: only scenarios with lines to check.
    Test,
}

/// The names `use_` accepts.
pub fn names(use_: NameUse) -> Vec<&'static str> {
    let demo = (use_ == NameUse::Run).then_some(DEMO);
    let linux = LINUX_SCENARIOS.iter().filter(|_| use_ == NameUse::Test).map(|s| s.name);
    demo.into_iter().chain(SCENARIOS.iter().map(|s| s.name)).chain(linux).collect()
}

/// Checks scenario names before anything is built or installed; the error lists the valid ones.
pub fn check_names<'a>(given: impl IntoIterator<Item = &'a str>, use_: NameUse) -> Result<(), String> {
    let valid = names(use_);
    match given.into_iter().find(|n| !valid.contains(n)) {
        None => Ok(()),
        Some(linux) if LINUX_SCENARIOS.iter().any(|s| s.name == linux) => Err(format!(
            "scenario {linux:?} boots a Linux kernel: `cargo xtask run --guest-kernel PATH --guest-initrd PATH` \
             (`cargo xtask linux-guest` fetches both)"
        )),
        Some(unknown) => Err(format!("unknown scenario {unknown:?}; the scenarios are: {}", valid.join(", "))),
    }
}

/// The scenarios and variants one `qemu-test` runs, checked before anything is built.
pub struct Selection {
    scenarios: Vec<&'static Scenario>,
    variants: Vec<Variant>,
    /// The Linux scenarios' kernel `Image` and initramfs, if not `linux::reference_guest`'s.
    pub linux_guest: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The named scenarios (all when `names` is empty) on the variant (all when `None`).
pub fn select(names: &[String], variant: Option<&str>) -> Result<Selection, String> {
    check_names(names.iter().map(String::as_str), NameUse::Test)?;
    let every = SCENARIOS.iter().chain(LINUX_SCENARIOS);
    let scenarios = every.filter(|s| names.is_empty() || names.iter().any(|n| n == s.name)).collect();
    let variants: Vec<Variant> = match variant {
        None => Variant::ALL.to_vec(),
        Some(v) => vec![*Variant::ALL.iter().find(|x| x.name() == v).ok_or_else(|| {
            let all: Vec<&str> = Variant::ALL.iter().map(|x| x.name()).collect();
            format!("unknown variant {v:?}; the variants are: {}", all.join(", "))
        })?],
    };
    Ok(Selection { scenarios, variants, linux_guest: None })
}

/// Runs the selected scenarios on the selected variants.
pub fn qemu_test(qemu: &Qemu, selection: &Selection) -> Result<(), String> {
    let Selection { scenarios, variants, linux_guest } = selection;
    // The Linux guest first: fetching it is what most often fails (apt), so fail before building.
    // One bundle per vCPU count the selected Linux scenarios need.
    let mut linux_bundles: Vec<(u32, std::path::PathBuf)> = Vec::new();
    for cpus in scenarios.iter().filter(|s| boots_linux(s)).map(|s| linux_guest_cpus(s.name)) {
        if !linux_bundles.iter().any(|(c, _)| *c == cpus) {
            linux_bundles.push((cpus, linux_test_bundle(linux_guest.as_ref(), cpus)?));
        }
    }
    let mut images: Vec<(&str, Flavor, Artifacts)> = Vec::new();
    for v in variants {
        for s in scenarios.iter().filter(|s| skip_reason(s, *v).is_none()) {
            let flavor = if boots_linux(s) { Flavor::LinuxTest } else { Flavor::Test };
            if !images.iter().any(|(b, f, _)| *b == v.board().name && *f == flavor) {
                images.push((v.board().name, flavor, artifacts::build(v.board(), flavor)?));
            }
        }
    }
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for v in variants {
        for s in scenarios {
            if let Some(reason) = skip_reason(s, *v) {
                skipped += 1;
                println!("{reason}");
                continue;
            }
            let linux = boots_linux(s);
            let flavor = if linux { Flavor::LinuxTest } else { Flavor::Test };
            let image = &images.iter().find(|(b, f, _)| *b == v.board().name && *f == flavor).unwrap().2;
            let cpus = linux_guest_cpus(s.name);
            let bundle = match linux {
                true => linux_bundles.iter().find(|(c, _)| *c == cpus).map(|(_, path)| path.clone()),
                false => scenario_bundle(s)?,
            };
            let append = format!("scenario={} {}", s.name, s.bootargs);
            let mut command =
                qemu::command_with_reboot(qemu, *v, image, append.trim_end(), bundle.as_deref(), reboots(s.name))?;
            command.args(qemu::DETERMINISTIC_TIME);
            if s.smmu {
                command.args(qemu::SMMU_ARGS).args(qemu::ONE_CORE);
            }
            let run = qemu::run_captured(command, if linux { LINUX_HANG_GUARD } else { HANG_GUARD })?;
            let mut problems = check(s, *v, run.status, &run.console);
            if linux {
                problems.extend(crate::linux::console_problems(&run.console, cpus));
            }
            let cost = match run.cpu {
                Some(cpu) => format!("{:.1} s, {:.1} s CPU", run.wall.as_secs_f64(), cpu.as_secs_f64()),
                None => format!("{:.1} s", run.wall.as_secs_f64()),
            };
            if problems.is_empty() {
                passed += 1;
                println!("PASS {} [{}] ({cost})", s.name, v.name());
            } else {
                failed += 1;
                println!("FAIL {} [{}] ({cost})", s.name, v.name());
                problems.iter().for_each(|p| println!("    {p}"));
                let lines: Vec<&str> = run.console.lines().collect();
                println!("    --- last console lines ---");
                lines[lines.len().saturating_sub(40)..].iter().for_each(|l| println!("    | {l}"));
            }
        }
    }
    println!("{}", summary(passed, failed, skipped));
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} QEMU scenario run(s) failed"))
    }
}

/// The Linux scenarios' bundle: `given` (kernel `Image`, initramfs), or else the cloud kernel of
/// `linux::reference_guest` and the test initramfs (fetched and built on first use); `cpus`
/// vCPUs, 128 MiB, the default corevisor command line.
fn linux_test_bundle(
    given: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    cpus: u32,
) -> Result<std::path::PathBuf, String> {
    use crate::linux;
    let (kernel, initrd) = match given {
        Some(paths) => paths.clone(),
        None => {
            let guest = linux::reference_guest()?;
            (guest.image, guest.initramfs)
        }
    };
    println!("Linux scenarios: kernel {}, initramfs {}", kernel.display(), initrd.display());
    let run = crate::GuestRun {
        kernel,
        initrd,
        cpus,
        mem_mib: linux::GUEST_MEM_MIB.into(),
        cmdline: linux::corevisor_cmdline(),
        scenario: LINUX_SCENARIOS[0].name,
    };
    let name = match cpus {
        linux::GUEST_CPUS => "linux-test.img".to_string(),
        _ => format!("linux-test-{cpus}cpus.img"),
    };
    crate::write_linux_bundle(&run, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> &'static Scenario {
        SCENARIOS.iter().find(|s| s.name == "hvc-version").unwrap()
    }

    const GOOD: &str = "kserv: VERSION returned 0.4\nkserv: scenario hvc-version: PASS\n";

    #[test]
    fn a_run_passes_only_with_status_zero_and_every_line() {
        assert!(check(version(), Variant::VirtGicV3, Some(0), GOOD).is_empty());
        assert_eq!(check(version(), Variant::VirtGicV3, Some(1), GOOD).len(), 1);
        assert_eq!(check(version(), Variant::VirtGicV3, None, GOOD), vec!["timed out (killed by the hang guard)"]);
        let missing = check(version(), Variant::VirtGicV3, Some(0), "kserv: scenario hvc-version: PASS\n");
        assert_eq!(missing, vec!["missing line: kserv: VERSION returned 0.4"]);
    }

    #[test]
    fn a_fail_or_panic_line_fails_the_run() {
        let fail = format!("{GOOD}kserv: scenario other: FAIL: reason\n");
        assert_eq!(check(version(), Variant::VirtGicV3, Some(0), &fail).len(), 1);
        let panic = format!("{GOOD}[PANIC][cpu0] KCore panicked at src/x.rs\n");
        assert!(!check(version(), Variant::VirtGicV3, Some(0), &panic).is_empty());
    }

    #[test]
    fn unknown_scenario_names_fail_listing_the_valid_ones() {
        assert_eq!(check_names(["hvc-version", "boot"], NameUse::Test), Ok(()));
        assert_eq!(check_names(["demo"], NameUse::Run), Ok(()));
        assert_eq!(check_names([], NameUse::Test), Ok(()));
        let err = check_names(["hvc-version", "hvc-vresion"], NameUse::Test).unwrap_err();
        assert!(err.starts_with("unknown scenario \"hvc-vresion\"; the scenarios are: boot, hvc-version,"), "{err}");
        assert!(!err.contains("demo"), "qemu-test has no lines to check the demo by: {err}");
        let err = check_names(["nope"], NameUse::Run).unwrap_err();
        assert!(err.contains("the scenarios are: demo, boot,") && err.contains("signed-binding"), "{err}");
        // qemu-test checks its names and variant before it builds anything.
        assert!(select(&["nope".into()], None).is_err());
        assert!(select(&["demo".into()], None).is_err());
        assert!(select(&[], Some("virt-gicv4")).err().unwrap().contains("virt-gicv3, virt-gicv2, raspi4b"));
        let one = select(&["boot".into()], Some("raspi4b")).unwrap();
        assert_eq!((one.scenarios.len(), one.variants.as_slice()), (1, &[Variant::Raspi4b][..]));
        assert_eq!(select(&[], None).unwrap().scenarios.len(), SCENARIOS.len() + LINUX_SCENARIOS.len());
        // The Linux scenarios need a kernel: `run` points at --guest-kernel instead.
        assert!(check_names(["linux"], NameUse::Run).unwrap_err().contains("--guest-kernel PATH"));
        assert_eq!(check_names(["linux"], NameUse::Test), Ok(()));
    }

    /// Every name xtask accepts is one KServ knows (kserv/src/scenario.rs), and names are unique,
    /// so a name that passes the check cannot end in KServ's "unknown scenario".
    #[test]
    fn every_accepted_name_is_a_kserv_scenario() {
        let kserv = include_str!("../../kserv/src/scenario.rs");
        let run = names(NameUse::Run);
        let test = names(NameUse::Test);
        for (name, list) in run.iter().map(|n| (n, &run)).chain(test.iter().map(|n| (n, &test))) {
            assert!(kserv.contains(&format!("=> \"{name}\",")), "KServ has no scenario {name}");
            assert_eq!(list.iter().filter(|n| *n == name).count(), 1, "{name} twice");
        }
    }

    #[test]
    fn a_teardown_that_lost_or_left_a_page_fails_the_run() {
        let vm = |line: &str| format!("{GOOD}kserv: vm linux: {line}\n");
        let good = vm("torn down, 14440 pages back (14440 given), all scrubbed");
        assert!(check(version(), Variant::VirtGicV3, Some(0), &good).is_empty());
        for bad in [
            "torn down, 14439 pages back (14440 given), all scrubbed",
            "torn down, 14440 pages back (14440 given), NOT SCRUBBED",
            "torn down, x pages back (14440 given), all scrubbed",
        ] {
            assert_eq!(check(version(), Variant::VirtGicV3, Some(0), &vm(bad)).len(), 1, "{bad}");
        }
    }

    #[test]
    fn each_linux_vcpu_count_belongs_to_a_linux_scenario_that_checks_every_core() {
        assert_eq!(linux_guest_cpus("linux"), crate::linux::GUEST_CPUS);
        assert_eq!(linux_guest_cpus("linux-smp"), 4);
        for &(name, cpus) in LINUX_GUEST_CPUS {
            let s = LINUX_SCENARIOS.iter().find(|s| s.name == name).expect("a Linux scenario");
            for vcpu in 0..cpus {
                let line = format!("kserv: linux-smp: vm linux vcpu {vcpu} ran on core {vcpu} (");
                assert!(s.lines.contains(&line.as_str()), "{name} does not require {line:?}");
            }
        }
    }

    /// KServ gives each vCPU of a Linux VM its own core (no shared core, no time slice): every
    /// Linux scenario requires KServ's line that says so, and a run on one core (which prints no
    /// placement lines) fails.
    #[test]
    fn every_linux_scenario_requires_each_vcpu_on_its_own_core() {
        for s in LINUX_SCENARIOS {
            let line = format!("kserv: {}: each of the {} vCPUs ran on its own core", s.name, linux_guest_cpus(s.name));
            assert!(s.lines.contains(&line.as_str()), "{} does not require {line:?}", s.name);
            let last = linux_guest_cpus(s.name) - 1;
            let ran = format!("kserv: {}: vm linux vcpu {last} ran on core {last} (", s.name);
            assert!(s.lines.contains(&ran.as_str()), "{} does not require {ran:?}", s.name);
        }
        let linux = &LINUX_SCENARIOS[0];
        let all: String = linux.lines.iter().map(|l| format!("{l}\n")).collect();
        assert!(check(linux, Variant::VirtGicV3, Some(0), &all).is_empty());
        let one_core: String =
            all.lines().filter(|l| !l.starts_with("kserv: linux: ")).map(|l| format!("{l}\n")).collect();
        assert_eq!(check(linux, Variant::VirtGicV3, Some(0), &one_core).len(), 2);
    }

    #[test]
    fn every_dma_attempt_needs_kcore_blocked_line_with_its_number_direction_and_address() {
        let good = "kserv: dma-attacks: attempt 1: DMA write of the filler to KCore's canary at 0x4207f000\n\
                    [WARN][cpu0] smmu: blocked DMA #1: stream 0x0010 write at 0x000000004207f000 (F_TRANSLATION)\n\
                    kserv: dma-attacks: attempt 2: DMA read of KCore's canary at 0x4207f000: edu's first word holds \
                    zero\n\
                    [WARN][cpu0] smmu: blocked DMA #2: stream 0x0010 read at 0x000000004207f000 (F_TRANSLATION)\n";
        assert!(unblocked_attempts(good).is_empty());
        // An attack at a host page: edu's DMA goes through, KCore logs nothing.
        let unlogged: String = good.lines().filter(|l| !l.contains("#2:")).map(|l| format!("{l}\n")).collect();
        assert_eq!(unblocked_attempts(&unlogged).len(), 1);
        // The event of another attempt, another direction or another address does not count.
        for (from, to) in [
            ("#2:", "#3:"),
            ("0x0010 read", "0x0010 write"),
            ("read at 0x000000004207f000", "read at 0x000000004207f008"),
        ] {
            assert_eq!(unblocked_attempts(&good.replace(from, to)).len(), 1, "{from} -> {to}");
        }
    }

    #[test]
    fn smmu_scenarios_are_skipped_on_raspi4b_and_never_count_as_passes() {
        let smmu: Vec<&Scenario> = SCENARIOS.iter().filter(|s| s.smmu).collect();
        let names: Vec<&str> = smmu.iter().map(|s| s.name).collect();
        assert_eq!(names, ["dma-host", "dma-attacks", "smmu-tamper"]);
        for s in smmu {
            let reason = skip_reason(s, Variant::Raspi4b).expect("skipped on raspi4b");
            assert_eq!(
                reason,
                format!(
                    "SKIP {} on raspi4b: the BCM2711 has no SMMU, DMA cannot be isolated (README, threat model)",
                    s.name
                )
            );
            assert_eq!(skip_reason(s, Variant::VirtGicV3), None);
            assert_eq!(skip_reason(s, Variant::VirtGicV2), None);
        }
        assert!(SCENARIOS
            .iter()
            .chain(LINUX_SCENARIOS)
            .filter(|s| !s.smmu)
            .all(|s| Variant::ALL.iter().all(|&v| skip_reason(s, v).is_none())));
        assert_eq!(summary(3, 0, 2), "3 passed, 0 failed, 2 skipped");
    }

    #[test]
    fn gic_v2_lines_are_required_on_gic_v2_only() {
        let device = SCENARIOS.iter().find(|s| s.name == "host-device-access").unwrap();
        let out = "kserv: UART and GIC reachable from the host\nkserv: scenario host-device-access: PASS\n";
        assert!(check(device, Variant::VirtGicV3, Some(0), out).is_empty());
        assert_eq!(check(device, Variant::Raspi4b, Some(0), out).len(), 1);
    }
}

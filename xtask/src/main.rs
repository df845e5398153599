//! `cargo xtask`: build corevisor, boot it under QEMU, run the scenario tests and benchmarks.
//!
//! Commands (see README): build, run, image, qemu-test, test, bench, lint.

mod artifacts;
mod bench;
mod dtb;
mod el2_trace;
mod exit_trace;
mod guests;
mod linux;
mod qemu;
mod scenarios;
mod toolchain;

use artifacts::Flavor;
use std::process::ExitCode;

/// Parsed `--name value` options and bare words.
#[derive(Debug, Default, PartialEq)]
struct Args {
    words: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

/// Options that take no value.
const FLAGS: &[&str] = &["gdb", "hw", "bare"];
/// Options that take one (`--name value` or `--name=value`).
const VALUED: &[&str] = &[
    "board",
    "gic",
    "scenario",
    "variant",
    "out",
    "kernel-version",
    "guest-kernel",
    "guest-initrd",
    "guest-cpus",
    "guest-mem",
    "guest-cmdline",
];

impl Args {
    /// Splits the command's arguments; an unknown option is an error rather than silently ignored,
    /// so a typo such as `--bord rpi4` cannot quietly build the default board.
    fn parse(raw: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut args = Args::default();
        let mut raw = raw.into_iter();
        while let Some(arg) = raw.next() {
            let Some(option) = arg.strip_prefix("--") else {
                args.words.push(arg);
                continue;
            };
            let (name, inline) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (option, None),
            };
            if FLAGS.contains(&name) && inline.is_none() {
                args.options.push((name.into(), None));
            } else if VALUED.contains(&name) {
                let value = match inline {
                    Some(value) => value,
                    None => raw.next().ok_or_else(|| format!("{arg} needs a value"))?,
                };
                args.options.push((name.into(), Some(value)));
            } else {
                return Err(format!("unknown option {arg}"));
            }
        }
        Ok(args)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }

    fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| n == name)
    }

    fn board(&self) -> Result<&'static corevisor_boards::Board, String> {
        let name = self.value("board").unwrap_or("qemu-virt");
        corevisor_boards::by_name(name).ok_or_else(|| format!("unknown board {name} (qemu-virt, rpi4)"))
    }
}

const USAGE: &str = "usage: cargo xtask <command>
  build [--board qemu-virt|rpi4] [--hw]        build KServ and KCore, write raw images
  run [--board B] [--gic 2|3] [--scenario S] [--gdb]   boot under QEMU (default: the demo)
  run --guest-kernel PATH --guest-initrd PATH [--guest-cpus N] [--guest-mem MIB] [--guest-cmdline S]
      [--gic 2|3] [--board rpi4] [--scenario linux|host-attacks-linux]
                                               boot a Linux Image as a VM (signed with the test key)
  image --board rpi4 [--out DIR]               kernel8.img + config.txt for the SD card
  qemu-test [SCENARIO...] [--variant V]        every scenario on virt-gicv3, virt-gicv2, raspi4b
      [--guest-kernel PATH --guest-initrd PATH]  the linux scenarios' guest (default: Debian 6.1, fetched)
  test                                         host cargo test, then qemu-test
  bench [contention|linux|micro]               exact EL2 instruction counts (PMU under icount; contention per core, from
                                               QEMU's execution trace); only the contention or the Linux figures, or
                                               the one bench boot's lines (micro)
  lint                                         rustfmt and clippy -D warnings, host and both boards
  guest-bundle [OUT]                           signed two-guest demo bundle (default target/xtask/bundle-demo.img)
  linux-guest [--kernel-version V] [--out DIR] [--bare [--gic 2|3]]
                                               Debian's arm64 cloud kernel + busybox initramfs; --bare boots them without corevisor";

fn main() -> ExitCode {
    let mut raw = std::env::args().skip(1);
    let command = raw.next().unwrap_or_default();
    let args = match Args::parse(raw) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("xtask: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command.as_str() {
        "build" => build(&args),
        // `run` ends with QEMU's own status, so a scenario's verdict reaches the shell.
        "run" => match run(&args) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        "image" => image(&args),
        "qemu-test" => qemu_test(&args),
        "test" => test(),
        "bench" => toolchain::ensure().and_then(|()| qemu::ensure()).and_then(|q| bench::run(&q, &args.words)),
        "lint" => toolchain::ensure().and_then(|()| lint()),
        "guest-bundle" => guest_bundle(&args),
        "linux-guest" => linux_guest(&args),
        "" | "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown command {command:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every command that builds for the boards checks its arguments first, then has
/// [`toolchain::ensure`] install the pinned toolchain's missing targets and components, then
/// (if it boots anything) [`qemu::ensure`] find or install QEMU, and only then builds.
fn build(args: &Args) -> Result<(), String> {
    let board = args.board()?;
    toolchain::ensure()?;
    let flavor = if args.flag("hw") { Flavor::Hardware } else { Flavor::Test };
    let a = artifacts::build(board, flavor)?;
    println!("KServ: {}\nKCore: {}", a.kserv.display(), a.image.display());
    Ok(())
}

fn qemu_test(args: &Args) -> Result<(), String> {
    let mut selection = scenarios::select(&args.words, args.value("variant"))?;
    selection.linux_guest = match (args.value("guest-kernel"), args.value("guest-initrd")) {
        (Some(kernel), Some(initrd)) => Some((kernel.into(), initrd.into())),
        (None, None) => None,
        _ => return Err("--guest-kernel and --guest-initrd go together (the linux scenarios' guest)".into()),
    };
    toolchain::ensure()?;
    let qemu = qemu::ensure()?;
    scenarios::qemu_test(&qemu, &selection)
}

/// The scenario `run` boots: `--scenario NAME`, checked against the names there are.
fn run_scenario(args: &Args) -> Result<&str, String> {
    let scenario = args.value("scenario").unwrap_or(scenarios::DEMO);
    scenarios::check_names([scenario], scenarios::NameUse::Run)?;
    Ok(scenario)
}

/// The QEMU variant `run` boots: the Pi board has one, virt has a GICv2 and a GICv3 flavour.
fn run_variant(args: &Args) -> Result<(&'static corevisor_boards::Board, scenarios::Variant), String> {
    let board = args.board()?;
    let variant = match (board.name, args.value("gic")) {
        ("rpi4", None | Some("2")) => scenarios::Variant::Raspi4b,
        ("rpi4", Some(other)) => return Err(format!("--gic {other}: the rpi4 board has a GICv2 (GIC-400)")),
        (_, Some("2")) => scenarios::Variant::VirtGicV2,
        (_, None | Some("3")) => scenarios::Variant::VirtGicV3,
        (_, Some(other)) => return Err(format!("--gic {other}: 2 or 3")),
    };
    Ok((board, variant))
}

/// A Linux VM that `run --guest-kernel` boots.
#[derive(Debug, PartialEq)]
pub struct GuestRun {
    pub kernel: std::path::PathBuf,
    pub initrd: std::path::PathBuf,
    pub cpus: u32,
    pub mem_mib: u64,
    pub cmdline: String,
    /// The KServ scenario that runs it: one of [`scenarios::LINUX_SCENARIOS`].
    pub scenario: &'static str,
}

/// The options that only make sense with `--guest-kernel`.
const GUEST_OPTIONS: [&str; 4] = ["guest-initrd", "guest-cpus", "guest-mem", "guest-cmdline"];
/// vCPUs a Linux VM may have: KServ schedules up to 4 per VM.
const GUEST_CPUS_MAX: u32 = 4;
/// The Linux scenario that requires cross-core kicks: `run`'s default above 2 vCPUs.
const SMP_LINUX_SCENARIO: &str = "linux-smp";
/// Guest RAM in MiB: the cloud kernel needs 64; KServ backs at most 1 GiB.
const GUEST_MEM_MIB: std::ops::RangeInclusive<u64> = 64..=1024;

/// `run`'s Linux options, checked before anything is built: `None` without `--guest-kernel`.
fn guest_run(args: &Args) -> Result<Option<GuestRun>, String> {
    let Some(kernel) = args.value("guest-kernel") else {
        return match GUEST_OPTIONS.iter().find(|o| args.value(o).is_some()) {
            Some(option) => Err(format!("--{option} goes with --guest-kernel")),
            None => Ok(None),
        };
    };
    let number = |name: &str, default: u64| match args.value(name) {
        None => Ok(default),
        Some(text) => text.parse::<u64>().map_err(|_| format!("--{name} {text}: not a number")),
    };
    let cpus = number("guest-cpus", linux::GUEST_CPUS.into())?;
    if !(1..=u64::from(GUEST_CPUS_MAX)).contains(&cpus) {
        return Err(format!("--guest-cpus {cpus}: 1 to {GUEST_CPUS_MAX}"));
    }
    // The Linux scenarios run the bundle's Linux VM, each vCPU on its own core. The default:
    // `linux` for up to the reference guest's vCPUs, `linux-smp` (which also requires kicks) for
    // more.
    let linux = scenarios::LINUX_SCENARIOS.iter().map(|s| s.name);
    let default =
        if cpus > u64::from(linux::GUEST_CPUS) { SMP_LINUX_SCENARIO } else { scenarios::LINUX_SCENARIOS[0].name };
    let scenario = match args.value("scenario") {
        None => default,
        Some(name) => linux.clone().find(|&s| s == name).ok_or_else(|| {
            format!(
                "--guest-kernel runs the Linux VM: --scenario {name}? it takes {}",
                linux.collect::<Vec<_>>().join(" or ")
            )
        })?,
    };
    let initrd = args.value("guest-initrd").ok_or("--guest-kernel needs --guest-initrd PATH")?;
    let mem_mib = number("guest-mem", linux::GUEST_MEM_MIB.into())?;
    if !GUEST_MEM_MIB.contains(&mem_mib) {
        return Err(format!("--guest-mem {mem_mib}: {} to {} MiB", GUEST_MEM_MIB.start(), GUEST_MEM_MIB.end()));
    }
    Ok(Some(GuestRun {
        kernel: kernel.into(),
        initrd: initrd.into(),
        cpus: cpus as u32,
        mem_mib,
        cmdline: args.value("guest-cmdline").map_or_else(linux::corevisor_cmdline, str::to_string),
        scenario,
    }))
}

/// Boots a Linux VM under corevisor: its Image and initrd signed with the test key into a
/// one-VM bundle, KServ running its `--scenario` (`linux` by default). QEMU's status is KServ's
/// verdict: 0 when the guest powered itself off (and, with `host-attacks-linux`, every host
/// access to its pages aborted).
fn run_linux(args: &Args, guest: &GuestRun) -> Result<u8, String> {
    let (board, variant) = run_variant(args)?;
    let path = write_linux_bundle(guest, "linux.img")?;
    toolchain::ensure()?;
    let qemu = qemu::ensure()?;
    let artifacts = artifacts::build(board, Flavor::Run)?;
    let append = format!("scenario={}", guest.scenario);
    let mut command = qemu::command(&qemu, variant, &artifacts, &append, Some(&path))?;
    if args.flag("gdb") {
        println!("QEMU waits for gdb on localhost:1234 (target remote :1234)");
        command.args(["-s", "-S"]);
    }
    let status = command.status().map_err(|e| format!("cannot start QEMU: {e}"))?;
    Ok(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)))
}

/// Writes the signed one-VM bundle for `guest` as `target/xtask/bundles/NAME`; returns its path.
pub fn write_linux_bundle(guest: &GuestRun, name: &str) -> Result<std::path::PathBuf, String> {
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let (kernel, initrd) = (read(&guest.kernel)?, read(&guest.initrd)?);
    let vm = guests::LinuxVm {
        kernel: &kernel,
        initrd: &initrd,
        vcpus: guest.cpus,
        ram_base: corevisor_abi::guest_dev::RAM_BASE,
        ram_size: guest.mem_mib << 20,
        cmdline: &guest.cmdline,
    };
    let path = artifacts::root().join("target/xtask/bundles").join(name);
    guests::write_linux_bundle(&vm, &path)?;
    Ok(path)
}

/// Boots one scenario with the console on this terminal; returns QEMU's exit status.
fn run(args: &Args) -> Result<u8, String> {
    if let Some(guest) = guest_run(args)? {
        return run_linux(args, &guest);
    }
    let (board, variant) = run_variant(args)?;
    let scenario = run_scenario(args)?;
    let tested = scenarios::SCENARIOS.iter().find(|s| s.name == scenario);
    // Nothing is built for a run that cannot happen.
    if let Some(reason) = tested.and_then(|s| scenarios::skip_reason(s, variant)) {
        return Err(reason);
    }
    toolchain::ensure()?;
    let qemu = qemu::ensure()?;
    let artifacts = artifacts::build(board, Flavor::Test)?;
    // The demo boots two guests; a test scenario gets the bundle it is tested with.
    let bundle = match tested {
        Some(s) => scenarios::scenario_bundle(s)?,
        None => {
            let path = artifacts::root().join("target/xtask/bundles/demo.img");
            guests::write_bundle(&DEMO_VMS, &path)?;
            Some(path)
        }
    };
    let append = format!("scenario={scenario}");
    let reboot = scenarios::reboots(scenario);
    let mut command = qemu::command_with_reboot(&qemu, variant, &artifacts, &append, bundle.as_deref(), reboot)?;
    if tested.is_some_and(|s| s.smmu) {
        command.args(qemu::SMMU_ARGS).args(qemu::ONE_CORE);
    }
    if args.flag("gdb") {
        println!("QEMU waits for gdb on localhost:1234 (target remote :1234)");
        command.args(["-s", "-S"]);
    }
    let status = command.status().map_err(|e| format!("cannot start QEMU: {e}"))?;
    // A signal-killed QEMU has no code: report it as a plain failure.
    Ok(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)))
}

/// The SD-card files for a real Pi 4: a no-semihosting image (its `hlt` would be an UNDEF on
/// hardware) and the firmware's `config.txt`.
fn image(args: &Args) -> Result<(), String> {
    let board = if args.value("board").is_some() { args.board()? } else { &corevisor_boards::rpi4::BOARD };
    if board.name != "rpi4" {
        return Err("image is for --board rpi4 (QEMU virt boots with `cargo xtask run`)".into());
    }
    toolchain::ensure()?;
    let artifacts = artifacts::build(board, Flavor::Hardware)?;
    let out = args.value("out").map_or_else(|| artifacts::root().join("target/rpi4-sd"), std::path::PathBuf::from);
    let io = |e: std::io::Error| format!("{}: {e}", out.display());
    std::fs::create_dir_all(&out).map_err(io)?;
    std::fs::copy(&artifacts.image, out.join("kernel8.img")).map_err(io)?;
    std::fs::write(out.join("config.txt"), corevisor_boards::rpi4::CONFIG_TXT).map_err(io)?;
    guests::write_bundle(&DEMO_VMS, &out.join("corevisor-bundle.img"))?;
    println!("SD card files in {}:", out.display());
    println!("  kernel8.img  corevisor (KCore with KServ inside), no semihosting");
    println!("  config.txt   arm_64bit=1, enable_uart=1, kernel=kernel8.img, initramfs at 0x08000000");
    println!("  corevisor-bundle.img  the demo's boot bundle: two signed test guests (test key)");
    println!("copy the three files onto the FAT boot partition of a Raspberry Pi 4 SD card that holds the firmware");
    println!("(start4.elf, fixup4.dat, bcm2711-rpi-4-b.dtb), e.g. `cp {}/* /media/$USER/bootfs/`;", out.display());
    println!("the console is the PL011 on GPIO 14/15 at 115200 baud");
    Ok(())
}

/// The two-guest demo bundle (both guests count and sleep), signed with the test key.
/// The demo's two guests: they count and sleep on their timers, interleaved.
const DEMO_VMS: [guests::GuestVm; 2] = [
    guests::GuestVm { name: "alpha", role: corevisor_abi::guest_role::DEMO, vcpus: 1 },
    guests::GuestVm { name: "beta", role: corevisor_abi::guest_role::DEMO, vcpus: 1 },
];

fn guest_bundle(args: &Args) -> Result<(), String> {
    let out = args
        .words
        .first()
        .map_or_else(|| artifacts::root().join("target/xtask/bundle-demo.img"), std::path::PathBuf::from);
    toolchain::ensure()?;
    guests::write_bundle(&DEMO_VMS, &out)?;
    println!("{}", out.display());
    Ok(())
}

/// Fetches Debian's cloud kernel and busybox, writes the test initramfs and, with `--bare`, boots
/// them on QEMU without corevisor (`--gic 2|3`, default 3).
fn linux_guest(args: &Args) -> Result<(), String> {
    let (wanted, bare_gic) = linux_guest_options(args)?;
    let qemu = bare_gic.map(|_| qemu::ensure()).transpose()?;
    let guest = linux::prepare(&wanted, args.value("out").map(std::path::Path::new))?;
    let h = &guest.header;
    println!("Linux {}: {}", guest.version, guest.image.display());
    println!(
        "  Image header: text_offset {:#x}, image_size {:#x} ({:.1} MiB), flags {:#x}",
        h.text_offset,
        h.image_size,
        h.image_size as f64 / (1 << 20) as f64,
        h.flags
    );
    println!("  initramfs: {}", guest.initramfs.display());
    println!("  kernel arguments: {}", linux::CMDLINE);
    match (qemu, bare_gic) {
        (Some(qemu), Some(gic)) => linux::bare_boot(&qemu, gic, &guest),
        _ => Ok(()),
    }
}

/// `linux-guest`'s options, checked before anything is fetched: the kernel wanted, and the GIC
/// version of the bare boot (None without `--bare`).
fn linux_guest_options(args: &Args) -> Result<(linux::Wanted, Option<u32>), String> {
    let wanted = linux::Wanted::parse(args.value("kernel-version"))?;
    let gic = match args.value("gic") {
        None | Some("3") => 3,
        Some("2") => 2,
        Some(other) => return Err(format!("--gic {other}: 2 or 3")),
    };
    match (args.flag("bare"), args.value("gic")) {
        (true, _) => Ok((wanted, Some(gic))),
        (false, None) => Ok((wanted, None)),
        (false, Some(_)) => Err("--gic chooses the machine of a --bare boot".into()),
    }
}

/// Host tests, then the QEMU scenarios. Both always run, so one failure does not hide the other.
fn test() -> Result<(), String> {
    let every = scenarios::select(&[], None)?;
    toolchain::ensure()?;
    let qemu = qemu::ensure()?;
    let host = artifacts::cargo(&["test", "--workspace"], &[]);
    let scenarios = scenarios::qemu_test(&qemu, &every);
    match (host, scenarios) {
        (Ok(()), Ok(())) => Ok(()),
        (host, scenarios) => Err([host.err(), scenarios.err()].into_iter().flatten().collect::<Vec<_>>().join("; ")),
    }
}

/// rustfmt, host clippy, then clippy for each board's bare-metal build. Every step runs, so CI
/// shows all of them at once; the result fails if any did.
fn lint() -> Result<(), String> {
    let mut steps: Vec<Vec<String>> = vec![
        ["fmt", "--all", "--", "--check"].map(String::from).to_vec(),
        ["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"].map(String::from).to_vec(),
    ];
    for board in corevisor_boards::ALL {
        let dir = format!("target/xtask/clippy-{}", board.name);
        let features = board.name;
        steps.push(
            ["clippy", "-p", "corevisor", "-p", "kserv", "--target", artifacts::TARGET, "--no-default-features"]
                .into_iter()
                .chain(["--features", features, "--target-dir", &dir, "--", "-D", "warnings"])
                .map(String::from)
                .collect(),
        );
    }
    steps.push(
        [
            "clippy",
            "-p",
            "corevisor-test-guest",
            "--target",
            artifacts::TARGET,
            "--target-dir",
            "target/xtask/clippy-guest",
        ]
        .into_iter()
        .chain(["--", "-D", "warnings"])
        .map(String::from)
        .collect(),
    );
    let failures: Vec<String> = steps
        .iter()
        .filter_map(|step| artifacts::cargo(&step.iter().map(String::as_str).collect::<Vec<_>>(), &[]).err())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Args, String> {
        Args::parse(words.iter().map(|w| w.to_string()))
    }

    #[test]
    fn parses_words_options_and_flags() {
        let args = parse(&["boot", "--variant", "raspi4b", "--gdb", "hvc-version"]).unwrap();
        assert_eq!(args.words, vec!["boot", "hvc-version"]);
        assert_eq!(args.value("variant"), Some("raspi4b"));
        assert!(args.flag("gdb") && !args.flag("hw"));
        assert_eq!(parse(&["--board=rpi4", "--hw"]).unwrap().board().unwrap().name, "rpi4");
        assert_eq!(parse(&[]).unwrap().board().unwrap().name, "qemu-virt");
        assert_eq!(parse(&["--out", "a", "--out", "b"]).unwrap().value("out"), Some("b"));
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse(&["--board"]).is_err());
        assert!(parse(&["--bord", "rpi4"]).is_err());
        assert!(parse(&["--gdb=yes"]).is_err());
        assert!(parse(&["--board", "pi5"]).unwrap().board().is_err());
    }

    #[test]
    fn picks_the_run_variant() {
        let variant = |words: &[&str]| run_variant(&parse(words).unwrap()).map(|(_, v)| v);
        assert_eq!(variant(&[]), Ok(scenarios::Variant::VirtGicV3));
        assert_eq!(variant(&["--gic", "2"]), Ok(scenarios::Variant::VirtGicV2));
        assert_eq!(variant(&["--board", "rpi4"]), Ok(scenarios::Variant::Raspi4b));
        assert!(variant(&["--gic", "4"]).is_err());
        assert!(variant(&["--board", "rpi4", "--gic", "3"]).is_err());
    }

    #[test]
    fn checks_linux_guest_options_before_fetching() {
        let options = |words: &[&str]| linux_guest_options(&parse(words).unwrap());
        assert_eq!(options(&[]), Ok((linux::Wanted::Newest, None)));
        assert_eq!(options(&["--bare"]), Ok((linux::Wanted::Newest, Some(3))));
        assert_eq!(
            options(&["--kernel-version", "6.12", "--bare", "--gic", "2"]),
            Ok((linux::Wanted::Series(6, 12), Some(2)))
        );
        assert_eq!(options(&["--kernel-version=6.1.0-57"]), Ok((linux::Wanted::Exact("6.1.0-57".into()), None)));
        assert!(options(&["--gic", "2"]).is_err());
        assert!(options(&["--bare", "--gic", "4"]).is_err());
        assert!(options(&["--kernel-version", "latest"]).is_err());
    }

    #[test]
    fn parses_the_linux_run_options() {
        let guest = |words: &[&str]| guest_run(&parse(words).unwrap());
        assert_eq!(guest(&[]), Ok(None));
        assert_eq!(guest(&["--scenario", "vm-hello"]), Ok(None));
        let run = guest(&["--guest-kernel", "Image", "--guest-initrd", "initrd.cpio"]).unwrap().unwrap();
        assert_eq!(
            run,
            GuestRun {
                kernel: "Image".into(),
                initrd: "initrd.cpio".into(),
                cpus: 2,
                mem_mib: 128,
                cmdline: "console=ttyAMA0 earlycon=pl011,0x9000000 nokaslr panic=-1 rdinit=/init".into(),
                scenario: "linux",
            }
        );
        let attacked = guest(&["--guest-kernel=k", "--guest-initrd=i", "--scenario", "host-attacks-linux"]);
        assert_eq!(attacked.unwrap().unwrap().scenario, "host-attacks-linux");
        let linux = guest(&["--guest-kernel=k", "--guest-initrd=i", "--scenario=linux"]);
        assert_eq!(linux.unwrap().unwrap().scenario, "linux");
        let custom = guest(&[
            "--guest-kernel=k",
            "--guest-initrd=i",
            "--guest-cpus",
            "4",
            "--guest-mem",
            "512",
            "--guest-cmdline",
            "console=ttyAMA0 quiet",
            "--gic",
            "2",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((custom.cpus, custom.mem_mib, custom.cmdline.as_str()), (4, 512, "console=ttyAMA0 quiet"));
        // More vCPUs than the reference guest's run on the SMP path by default, a core each.
        assert_eq!(custom.scenario, "linux-smp");
        let three = guest(&["--guest-kernel=k", "--guest-initrd=i", "--guest-cpus=3"]);
        assert_eq!(three.unwrap().unwrap().scenario, "linux-smp");
        let one_core = guest(&["--guest-kernel=k", "--guest-initrd=i", "--guest-cpus=4", "--scenario=linux"]);
        assert_eq!(one_core.unwrap().unwrap().scenario, "linux");
    }

    #[test]
    fn refuses_bad_linux_run_options() {
        let guest = |words: &[&str]| guest_run(&parse(words).unwrap());
        let base = ["--guest-kernel", "k", "--guest-initrd", "i"];
        let with = |extra: &[&str]| guest(&[&base[..], extra].concat());
        assert!(guest(&["--guest-kernel", "k"]).unwrap_err().contains("--guest-initrd"));
        assert!(guest(&["--guest-initrd", "i"]).unwrap_err().contains("--guest-kernel"));
        assert!(guest(&["--guest-cpus", "2"]).is_err());
        assert!(with(&["--guest-cpus", "0"]).is_err());
        assert!(with(&["--guest-cpus", "5"]).is_err());
        assert!(with(&["--guest-cpus", "two"]).is_err());
        assert!(with(&["--guest-mem", "32"]).is_err());
        assert!(with(&["--guest-mem", "2048"]).is_err());
        let err = with(&["--scenario", "vm-hello"]).unwrap_err();
        assert!(err.contains("vm-hello") && err.contains("linux or host-attacks-linux"), "{err}");
        assert!(parse(&["--guest-kernel"]).is_err());
        assert!(parse(&["--guest-kernal", "k"]).is_err());
    }

    /// `run` checks `--scenario` before it installs or builds anything (the check runs first in
    /// `run`); the demo is the default.
    #[test]
    fn run_takes_only_known_scenarios() {
        let scenario = |words: &[&str]| run_scenario(&parse(words).unwrap()).map(str::to_string);
        assert_eq!(scenario(&[]), Ok("demo".into()));
        assert_eq!(scenario(&["--scenario", "vm-share"]), Ok("vm-share".into()));
        let err = scenario(&["--scenario", "vm-shar"]).unwrap_err();
        assert!(err.contains("unknown scenario \"vm-shar\"") && err.contains("demo, boot,"), "{err}");
    }
}

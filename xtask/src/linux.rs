//! Linux guest images: Debian's arm64 `cloud` kernel and `busybox-static`, fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` into `target/linux/<version>/`, and a test
//! initramfs written here as a newc archive (no `cpio` binary). `--bare` boots the two under QEMU
//! without corevisor: the reference that the corevisor `linux` scenario and the bench compare
//! against, with the same kernel arguments and the same initramfs.

use crate::artifacts::root;
use crate::qemu::{self, Qemu};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The guest's kernel arguments, bare and under corevisor alike. `panic=-1` turns a panic into an
/// immediate reset, which ends a `-no-reboot` run instead of hanging it.
pub const CMDLINE: &str = "console=ttyAMA0 nokaslr panic=-1 rdinit=/init";
/// The kernel arguments of a Linux VM under corevisor (`run --guest-kernel`'s default):
/// [`CMDLINE`] with an early console on the PL011 KServ emulates.
pub fn corevisor_cmdline() -> String {
    let rest = CMDLINE.strip_prefix("console=ttyAMA0 ").unwrap_or(CMDLINE);
    format!("console=ttyAMA0 earlycon=pl011,{:#x} {rest}", corevisor_abi::guest_dev::UART)
}
/// vCPUs and RAM of the reference guest (the issue's `linux` scenario: 2 vCPUs, 128 MiB).
pub const GUEST_CPUS: u32 = 2;
pub const GUEST_MEM_MIB: u32 = 128;

/// The Debian package that holds a static arm64 busybox (`/bin/busybox`).
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The applets `/init` runs, each a symlink to `/bin/busybox`.
const APPLETS: &[&str] = &["sh", "mount", "grep", "sleep", "taskset", "cat", "cut", "poweroff"];

/// The initramfs's `/init`. Each `linux-guest:` line proves one thing, in this order: init runs;
/// a line longer than KCore's console buffer (`corevisor_abi::console::BYTES`) and shorter than
/// KServ's line buffer arrives whole, every character in order;
/// the CPUs Linux brought up (counted from /proc/cpuinfo); `sleep 1` returned (timer interrupts);
/// a task pinned to the last CPU ran there (field 39 of /proc/self/stat is the CPU it last ran on;
/// moving it there takes an IPI); then a forced power-off (PSCI SYSTEM_OFF).
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
echo "linux-guest: init started"
echo "linux-guest: console 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 9876543210 zyxwvutsrqponmlkjihgfedcba ZYXWVUTSRQPONMLKJIHGFEDCBA end"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
cpus=$(grep -c '^processor' /proc/cpuinfo)
echo "linux-guest: cpus online $cpus"
sleep 1 && echo "linux-guest: sleep 1 ok"
last=$((cpus - 1))
ran=$(taskset "$(printf '%x' $((1 << last)))" cat /proc/self/stat | cut -d ' ' -f 39)
echo "linux-guest: pinned task ran on cpu $ran"
echo "linux-guest: powering off"
poweroff -f
"#;

/// `/init`'s long line (see [`INIT`]).
pub const CONSOLE_PROOF: &str = "linux-guest: console 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 9876543210 zyxwvutsrqponmlkjihgfedcba ZYXWVUTSRQPONMLKJIHGFEDCBA end";

/// The lines a correct run of `/init` on `cpus` CPUs prints, in order; the last is the kernel's
/// own, printed only on a power-off (a panic's reset prints `reboot: Restarting system`).
pub fn proof_lines(cpus: u32) -> Vec<String> {
    vec![
        "linux-guest: init started".into(),
        CONSOLE_PROOF.into(),
        format!("linux-guest: cpus online {cpus}"),
        "linux-guest: sleep 1 ok".into(),
        format!("linux-guest: pinned task ran on cpu {}", cpus - 1),
        "linux-guest: powering off".into(),
        "reboot: Power down".into(),
    ]
}

/// Console lines that fail a Linux run wherever they appear. A panic cannot fail it through QEMU's
/// status: with `-no-reboot` the reset that `panic=-1` asks for also exits QEMU with status 0.
const FORBIDDEN: &[&str] = &["Kernel panic", "Oops", "Internal error:", "BUG:", "Unable to handle kernel"];

/// Everything wrong with a Linux run: its status, proof lines missing or out of order, forbidden
/// lines.
pub fn check(status: Option<i32>, console: &str, cpus: u32) -> Vec<String> {
    let mut problems = Vec::new();
    match status {
        None => problems.push("timed out (killed by the hang guard)".to_string()),
        Some(0) => {}
        Some(code) => problems.push(format!("QEMU exited with status {code}")),
    }
    problems.extend(console_problems(console, cpus));
    problems
}

/// The console half of [`check`]: proof lines missing or out of order, forbidden lines.
pub fn console_problems(console: &str, cpus: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let mut from = 0;
    for line in proof_lines(cpus) {
        match console[from..].find(&line) {
            Some(at) => from += at + line.len(),
            None if console.contains(&line) => problems.push(format!("out of order: {line}")),
            None => problems.push(format!("missing line: {line}")),
        }
    }
    for line in console.lines().filter(|l| FORBIDDEN.iter().any(|f| l.contains(f))) {
        problems.push(format!("forbidden line: {}", line.trim_end()));
    }
    problems
}

/// The fields of an arm64 `Image` header (Documentation/arch/arm64/booting.rst) that placing it
/// needs: load it `text_offset` above a 2 MiB-aligned base; it uses `image_size` bytes from there.
#[derive(Debug, PartialEq)]
pub struct ImageHeader {
    pub text_offset: u64,
    pub image_size: u64,
    pub flags: u64,
}

/// The header's magic, "ARM\x64", at offset 0x38.
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";

/// Reads an arm64 `Image` header; anything else (a compressed or EFI-only kernel) is an error.
pub fn image_header(bytes: &[u8]) -> Result<ImageHeader, String> {
    if bytes.len() < 64 || &bytes[0x38..0x3c] != IMAGE_MAGIC {
        return Err("not an arm64 Image (no \"ARM\\x64\" magic at offset 0x38)".into());
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    Ok(ImageHeader { text_offset: word(8), image_size: word(corevisor_abi::bundle::IMAGE_SIZE_AT), flags: word(24) })
}

/// A newc ("070701") cpio archive, the format the kernel unpacks an initramfs from. Entries get
/// inode numbers in order, owner root and mtime 0, so the same input gives the same bytes.
pub struct Newc {
    bytes: Vec<u8>,
    entries: u32,
}

/// File types for the newc `mode` field.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Newc {
    pub fn new() -> Newc {
        Newc { bytes: Vec::new(), entries: 0 }
    }

    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, permissions: u32, data: &[u8]) {
        self.entry(path, S_IFREG | permissions, 1, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node: the kernel opens `/dev/console` for init's stdio before init runs,
    /// so it must exist in the archive itself.
    pub fn char_device(&mut self, path: &str, permissions: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | permissions, 1, (major, minor), &[]);
    }

    /// The archive with its `TRAILER!!!` entry.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 1, (0, 0), 0);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.entries += 1;
        let size = u32::try_from(data.len()).expect("initramfs file over 4 GiB");
        self.header(path, self.entries, mode, nlink, rdev, size);
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// The 110-byte header (13 eight-digit hex fields after the magic), then the NUL-terminated
    /// name, padded to 4 bytes.
    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, (major, minor): (u32, u32), size: u32) {
        let name_size = name.len() as u32 + 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, major, minor, name_size, 0];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
    }
}

/// The test initramfs: busybox, its applet links, the mount points and `/init`.
pub fn initramfs_archive(busybox: &[u8]) -> Vec<u8> {
    let mut archive = Newc::new();
    for dir in ["bin", "dev", "proc", "sys"] {
        archive.dir(dir);
    }
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.file("bin/busybox", 0o755, busybox);
    for applet in APPLETS {
        archive.symlink(&format!("bin/{applet}"), "busybox");
    }
    archive.file("init", 0o755, INIT.as_bytes());
    archive.finish()
}

/// Which kernel `--kernel-version` asks for.
#[derive(Debug, PartialEq)]
pub enum Wanted {
    /// No option: the newest that apt knows.
    Newest,
    /// `6.1`, `6.12`: the newest of that series.
    Series(u32, u32),
    /// A whole ABI version as in the package name: `6.1.0-57`, `6.12.117+deb12`.
    Exact(String),
}

impl Wanted {
    pub fn parse(option: Option<&str>) -> Result<Wanted, String> {
        let Some(v) = option else { return Ok(Wanted::Newest) };
        if let Some((major, minor)) = v.split_once('.') {
            if let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) {
                return Ok(Wanted::Series(major, minor));
            }
        }
        match version_key(v).len() {
            3.. => Ok(Wanted::Exact(v.to_string())),
            _ => Err(format!("--kernel-version {v}: a series (6.1, 6.12) or a whole version (6.1.0-57)")),
        }
    }

    fn accepts(&self, version: &str) -> bool {
        match self {
            Wanted::Newest => true,
            Wanted::Series(major, minor) => version_key(version).starts_with(&[*major, *minor]),
            Wanted::Exact(exact) => version == exact,
        }
    }
}

/// The numbers in a kernel version, for ordering: `6.12.90+deb12.1` is `[6, 12, 90, 12, 1]`.
fn version_key(version: &str) -> Vec<u32> {
    version.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// The kernel version in a cloud kernel package's name (signed or `-unsigned`), if it is one;
/// meta-packages (`linux-image-6.12-cloud-arm64`) name no whole version.
fn kernel_version(package: &str) -> Option<&str> {
    let rest = package.strip_prefix("linux-image-")?;
    let version = rest.strip_suffix("-cloud-arm64").or_else(|| rest.strip_suffix("-cloud-arm64-unsigned"))?;
    (version.starts_with(|c: char| c.is_ascii_digit()) && version_key(version).len() >= 3).then_some(version)
}

/// The kernel `wanted` picks from `apt-cache search` output: its version and its packages, the
/// signed one first (either holds `boot/vmlinuz-*`; which of them apt offers varies by version).
fn choose(apt_search: &str, wanted: &Wanted) -> Option<(String, Vec<String>)> {
    let packages: Vec<(&str, &str)> = apt_search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| kernel_version(p).map(|v| (v, p)))
        .filter(|(v, _)| wanted.accepts(v))
        .collect();
    let newest = packages.iter().map(|(v, _)| *v).max_by_key(|v| version_key(v))?;
    let mut names: Vec<String> = packages.iter().filter(|(v, _)| *v == newest).map(|(_, p)| p.to_string()).collect();
    names.sort_by_key(|p| p.ends_with("-unsigned"));
    names.dedup();
    Some((newest.to_string(), names))
}

/// Runs a command; an error names it and its status.
fn run(command: &mut Command) -> Result<std::process::Output, String> {
    let shown = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("`{shown}` failed ({}): {}", output.status, stderr.trim()))
    }
}

const ADD_ARM64: &str = "dpkg --add-architecture arm64 && apt-get update";

/// What making apt offer arm64 packages takes, given dpkg's native and foreign architectures:
/// nothing, commands to run (as root), or an error that names them.
fn arm64_apt_plan(native: &str, foreign: &str, root: bool) -> Result<Option<&'static str>, String> {
    if native.trim() == "arm64" || foreign.lines().any(|a| a.trim() == "arm64") {
        Ok(None)
    } else if root {
        Ok(Some(ADD_ARM64))
    } else {
        Err(format!("apt offers no arm64 packages yet; as root, run:\n{ADD_ARM64}"))
    }
}

/// Makes apt offer arm64 packages: as root, adds the architecture; otherwise says how to.
fn ensure_arm64_apt() -> Result<(), String> {
    let stdout =
        |args: &[&str]| run(Command::new("dpkg").args(args)).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let native =
        stdout(&["--print-architecture"]).map_err(|e| format!("{e} (linux-guest needs Debian's dpkg and apt)"))?;
    let Some(script) = arm64_apt_plan(&native, &stdout(&["--print-foreign-architectures"])?, qemu::is_root())? else {
        return Ok(());
    };
    println!("xtask: adding arm64 to apt: {script}");
    run(Command::new("sh").args(["-ec", script]).env("DEBIAN_FRONTEND", "noninteractive")).map(drop)
}

/// The cloud kernel packages apt knows, as `apt-cache search` lists them.
fn apt_kernels() -> Result<String, String> {
    let search = ["search", "--names-only", "^linux-image-.*-cloud-arm64(-unsigned)?$"];
    Ok(String::from_utf8_lossy(&run(Command::new("apt-cache").args(search))?.stdout).into_owned())
}

/// The kernel version and packages for `wanted`. After one miss, root refreshes apt's lists once.
fn find_kernel(wanted: &Wanted) -> Result<(String, Vec<String>), String> {
    ensure_arm64_apt()?;
    if let Some(found) = choose(&apt_kernels()?, wanted) {
        return Ok(found);
    }
    let missing = format!("apt knows no linux-image-*-cloud-arm64 package for {wanted:?}");
    if !qemu::is_root() {
        return Err(format!("{missing}; as root, run `apt-get update`"));
    }
    println!("xtask: {missing}; running apt-get update");
    run(Command::new("apt-get").arg("update"))?;
    choose(&apt_kernels()?, wanted).ok_or(missing)
}

/// The first file in `dir` whose name starts with `prefix`.
fn find_prefixed(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|e| e.path())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Downloads `package` (arm64) into `dir/debs` unless it is there, and unpacks it into `into`.
fn fetch_package(dir: &Path, package: &str, into: &Path) -> Result<(), String> {
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let deb = match find_prefixed(&debs, &format!("{package}_")) {
        Some(deb) => deb,
        None => {
            println!("xtask: apt-get download {package}:arm64");
            let download =
                || run(Command::new("apt-get").args(["download", &format!("{package}:arm64")]).current_dir(&debs));
            // The mirror drops superseded versions: stale lists name a file it no longer has.
            if let Err(e) = download() {
                if !qemu::is_root() {
                    return Err(format!("{e}\n(apt's lists may be stale: as root, run `apt-get update`)"));
                }
                println!("xtask: download failed; running apt-get update and retrying");
                run(Command::new("apt-get").arg("update"))?;
                download()?;
            }
            find_prefixed(&debs, &format!("{package}_")).ok_or(format!("apt-get download left no {package}_*.deb"))?
        }
    };
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(into)).map(drop)
}

/// The fetched kernel and the initramfs built for it.
pub struct LinuxGuest {
    pub version: String,
    pub image: PathBuf,
    pub header: ImageHeader,
    pub initramfs: PathBuf,
}

/// The `boot/vmlinuz-*` under `dir`, if there is one.
fn vmlinuz(dir: &Path) -> Option<PathBuf> {
    find_prefixed(&dir.join("boot"), "vmlinuz-")
}

/// Reads the first bytes of a file.
fn head(path: &Path, len: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(len);
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.take(len as u64).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes)
}

/// The directory a kernel's files go in: `--out`, or `target/linux/<version>`.
fn guest_dir(out: Option<&Path>, version: &str) -> PathBuf {
    out.map_or_else(|| root().join("target/linux").join(version), Path::to_path_buf)
}

/// Fetches (unless already there) the kernel `wanted` picks and busybox, checks the Image header,
/// and writes the initramfs. A whole version already fetched needs no apt at all.
pub fn prepare(wanted: &Wanted, out: Option<&Path>) -> Result<LinuxGuest, String> {
    let cached = match wanted {
        Wanted::Exact(v) => vmlinuz(&guest_dir(out, v).join("kernel")).map(|_| v.clone()),
        _ => None,
    };
    let (version, packages) = match cached {
        Some(version) => (version, Vec::new()),
        None => find_kernel(wanted)?,
    };
    let dir = guest_dir(out, &version);
    let kernel_dir = dir.join("kernel");
    for package in &packages {
        if vmlinuz(&kernel_dir).is_some() {
            break;
        }
        fetch_package(&dir, package, &kernel_dir)?;
    }
    let image = vmlinuz(&kernel_dir).ok_or(format!("no boot/vmlinuz-* in {}", packages.join(" or ")))?;
    let header = image_header(&head(&image, 64)?).map_err(|e| format!("{}: {e}", image.display()))?;

    let busybox_dir = dir.join("busybox");
    let busybox_path = busybox_dir.join("bin/busybox");
    if !busybox_path.exists() {
        ensure_arm64_apt()?;
        fetch_package(&dir, BUSYBOX_PACKAGE, &busybox_dir)?;
    }
    let busybox = std::fs::read(&busybox_path).map_err(|e| format!("{}: {e}", busybox_path.display()))?;
    // An ELF (magic) for EM_AARCH64 (183, the 16-bit e_machine at offset 18).
    if busybox.len() < 20 || &busybox[..4] != b"\x7fELF" || busybox[18..20] != 183u16.to_le_bytes() {
        return Err(format!("{} is not an arm64 ELF", busybox_path.display()));
    }
    let initramfs = dir.join("initramfs.cpio");
    std::fs::write(&initramfs, initramfs_archive(&busybox)).map_err(|e| format!("{}: {e}", initramfs.display()))?;
    Ok(LinuxGuest { version, image, header, initramfs })
}

/// The kernel series of the reference guest: the `linux` qemu-test scenarios and the bench.
pub const REFERENCE_SERIES: (u32, u32) = (6, 1);

/// The reference guest: the newest kernel of [`REFERENCE_SERIES`] already fetched under
/// `target/linux` (no apt needed), or else the newest of that series apt offers, fetched.
pub fn reference_guest() -> Result<LinuxGuest, String> {
    let (major, minor) = REFERENCE_SERIES;
    let dir = root().join("target/linux");
    let mut cached: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    cached.retain(|v| version_key(v).starts_with(&[major, minor]) && vmlinuz(&dir.join(v).join("kernel")).is_some());
    match cached.into_iter().max_by_key(|v| version_key(v)) {
        Some(version) => prepare(&Wanted::Exact(version), None),
        None => prepare(&Wanted::Series(major, minor), None),
    }
}

/// The bare reference run: the guest straight on QEMU's `virt` (EL1, QEMU's own PSCI and GIC),
/// with deterministic time. The corevisor `linux` scenario boots the same Image, initramfs and
/// [`CMDLINE`] as a VM.
pub fn bare_command(qemu: &Qemu, gic: u32, guest: &LinuxGuest) -> Command {
    let mut c = Command::new(&qemu.path);
    // No random seed in the DTB (`dtb-randomness=off`): runs repeat, and the guest's boot does
    // what it does under corevisor, whose guest DT has none.
    c.args(["-M", &format!("virt,gic-version={gic},dtb-randomness=off"), "-cpu", "cortex-a72"]);
    c.args(["-smp", &GUEST_CPUS.to_string(), "-m", &format!("{GUEST_MEM_MIB}M")]);
    c.args(["-nographic", "-no-reboot"]);
    c.arg("-kernel").arg(&guest.image).arg("-initrd").arg(&guest.initramfs);
    c.args(["-append", CMDLINE]);
    c.args(qemu::DETERMINISTIC_TIME);
    c
}

/// Only stops a hung run: a bare boot takes about 1 to 5 s of CPU.
const HANG_GUARD: qemu::Guard = qemu::Guard { cpu: Duration::from_secs(120), wall: Duration::from_secs(600) };

/// Boots `guest` bare on a `gic` (2 or 3) machine and checks the proof lines and the status.
pub fn bare_boot(qemu: &Qemu, gic: u32, guest: &LinuxGuest) -> Result<(), String> {
    let run = qemu::run_captured(bare_command(qemu, gic, guest), HANG_GUARD)?;
    let problems = check(run.status, &run.console, GUEST_CPUS);
    let cost = match run.cpu {
        Some(cpu) => format!("{:.1} s, {:.1} s CPU", run.wall.as_secs_f64(), cpu.as_secs_f64()),
        None => format!("{:.1} s", run.wall.as_secs_f64()),
    };
    let what = format!("Linux {} bare [virt, GICv{gic}, {GUEST_CPUS} cpus, {GUEST_MEM_MIB} MiB]", guest.version);
    if problems.is_empty() {
        println!("PASS {what} ({cost})");
        run.console
            .lines()
            .filter(|l| proof_lines(GUEST_CPUS).iter().any(|p| l.contains(p.as_str())))
            .for_each(|l| println!("    | {}", l.trim_end()));
        return Ok(());
    }
    println!("FAIL {what} ({cost})");
    problems.iter().for_each(|p| println!("    {p}"));
    let lines: Vec<&str> = run.console.lines().collect();
    println!("    --- last console lines ---");
    lines[lines.len().saturating_sub(40)..].iter().for_each(|l| println!("    | {l}"));
    Err(format!("the bare Linux {} boot on GICv{gic} failed", guest.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed newc entry: the 13 header fields, the name, the data.
    #[derive(Debug)]
    struct Entry {
        fields: [u32; 13],
        name: String,
        data: Vec<u8>,
    }

    /// A newc reader written from the format (the kernel's init/initramfs.c reads the same), to
    /// round-trip archives without a `cpio` binary. Checks the magic and 4-byte alignment.
    fn parse(archive: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(at % 4, 0, "entry at {at} not 4-byte aligned");
            assert_eq!(&archive[at..at + 6], b"070701", "magic at {at}");
            let mut fields = [0u32; 13];
            for (i, field) in fields.iter_mut().enumerate() {
                let hex = std::str::from_utf8(&archive[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                *field = u32::from_str_radix(hex, 16).unwrap();
            }
            let name_start = at + 110;
            let name_size = fields[11] as usize;
            assert_eq!(archive[name_start + name_size - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&archive[name_start..name_start + name_size - 1]).unwrap().to_string();
            let data_start = (name_start + name_size).next_multiple_of(4);
            assert!(archive[name_start + name_size..data_start].iter().all(|&b| b == 0), "name padding");
            let data_end = data_start + fields[6] as usize;
            let next = data_end.next_multiple_of(4);
            assert!(archive[data_end..next].iter().all(|&b| b == 0), "data padding");
            let trailer = name == "TRAILER!!!";
            entries.push(Entry { fields, name, data: archive[data_start..data_end].to_vec() });
            at = next;
            if trailer {
                assert_eq!(at, archive.len(), "bytes after the trailer");
                return entries;
            }
        }
    }

    #[test]
    fn newc_header_fields_are_exact() {
        let mut archive = Newc::new();
        archive.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = archive.finish();
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(
            header,
            concat!(
                "070701", "00000001", "000081ed", "00000000", "00000000", "00000001", "00000000", "0000000a",
                "00000000", "00000000", "00000000", "00000000", "00000005", "00000000"
            )
        );
        // 110 + "init\0" = 115, padded to 116; 10 bytes of data padded to 12.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..128], b"#!/bin/sh\n\0\0");
        assert_eq!(&bytes[128..134], b"070701");
    }

    #[test]
    fn newc_pads_every_name_and_data_length() {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = "n".repeat(name_len);
                let data = vec![0xa5u8; data_len];
                let mut archive = Newc::new();
                archive.file(&name, 0o644, &data);
                archive.file("after", 0o644, b"x");
                let entries = parse(&archive.finish());
                assert_eq!((entries[0].name.as_str(), entries[0].data.as_slice()), (name.as_str(), &data[..]));
                assert_eq!(entries[1].name, "after");
            }
        }
    }

    #[test]
    fn newc_round_trips_dirs_files_symlinks_devices_and_the_trailer() {
        let mut archive = Newc::new();
        archive.dir("bin");
        archive.file("bin/busybox", 0o755, b"\x7fELF...");
        archive.symlink("bin/sh", "busybox");
        archive.char_device("dev/console", 0o600, 5, 1);
        let entries = parse(&archive.finish());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "dev/console", "TRAILER!!!"]);
        let [dir, file, link, console, trailer] = &entries[..] else { unreachable!() };
        // ino, mode, nlink; every inode distinct.
        assert_eq!((dir.fields[0], dir.fields[1], dir.fields[4]), (1, 0o040755, 2));
        assert_eq!((file.fields[0], file.fields[1], file.data.as_slice()), (2, 0o100755, &b"\x7fELF..."[..]));
        assert_eq!((link.fields[1], link.data.as_slice()), (0o120777, &b"busybox"[..]));
        assert_eq!((console.fields[1], console.fields[9], console.fields[10]), (0o020600, 5, 1));
        assert_eq!((trailer.fields[0], trailer.fields[1], trailer.fields[4], trailer.fields[6]), (0, 0, 1, 0));
    }

    #[test]
    fn the_initramfs_holds_busybox_its_applets_and_init() {
        let entries = parse(&initramfs_archive(b"\x7fELF-busybox"));
        let find = |name: &str| entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name}"));
        for dir in ["bin", "dev", "proc", "sys"] {
            assert_eq!(find(dir).fields[1], S_IFDIR | 0o755);
        }
        assert_eq!(find("bin/busybox").data, b"\x7fELF-busybox");
        assert_eq!(find("dev/console").fields[9..11], [5, 1]);
        let init = std::str::from_utf8(&find("init").data).unwrap().to_string();
        assert_eq!(find("init").fields[1], S_IFREG | 0o755);
        assert!(init.starts_with("#!/bin/sh\n"));
        // Every command the init runs (the first word of each line that is not a shell builtin
        // or assignment, and the ones inside `$(...)`) is a linked applet.
        for applet in ["mount", "grep", "sleep", "taskset", "cat", "cut", "poweroff"] {
            assert!(init.contains(applet), "{applet} unused");
        }
        for applet in APPLETS {
            assert_eq!(find(&format!("bin/{applet}")).data, b"busybox");
        }
        // The init echoes each proof line of its own (all but the kernel's last one).
        let lines = proof_lines(2);
        for line in &lines[..lines.len() - 1] {
            let fixed = line.split(|c: char| c.is_ascii_digit()).next().unwrap();
            assert!(init.contains(fixed), "{line}");
        }
    }

    fn good_console(cpus: u32) -> String {
        let mut console = String::from("[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd083]\n");
        for line in proof_lines(cpus) {
            console += &format!("[    1.0] {line}\n");
        }
        console
    }

    #[test]
    fn a_linux_run_passes_only_with_status_zero_and_every_line_in_order() {
        assert!(check(Some(0), &good_console(2), 2).is_empty());
        assert_eq!(check(Some(1), &good_console(2), 2), ["QEMU exited with status 1"]);
        assert_eq!(check(None, &good_console(2), 2), ["timed out (killed by the hang guard)"]);
        // One CPU came up where two were asked for: the count and the pinned CPU are both wrong.
        assert_eq!(check(Some(0), &good_console(1), 2).len(), 2);
        let missing = good_console(2).replace("linux-guest: sleep 1 ok\n", "");
        assert_eq!(check(Some(0), &missing, 2), ["missing line: linux-guest: sleep 1 ok"]);
        let swapped = good_console(2).replace("sleep 1 ok", "X").replace("cpus online 2", "sleep 1 ok");
        let swapped = swapped.replace("X", "cpus online 2");
        assert!(check(Some(0), &swapped, 2).iter().any(|p| p.starts_with("out of order:")));
    }

    /// The console's long line fails the run if one character of it is lost or two swap places.
    #[test]
    fn a_console_line_with_a_character_lost_or_moved_fails_the_run() {
        let lost = good_console(2).replace("0123456789 abc", "012345679 abc");
        assert_eq!(check(Some(0), &lost, 2), [format!("missing line: {CONSOLE_PROOF}")]);
        let swapped = good_console(2).replace("0123456789 abc", "0123457689 abc");
        assert_eq!(check(Some(0), &swapped, 2), [format!("missing line: {CONSOLE_PROOF}")]);
    }

    /// A panic resets the machine, which ends a `-no-reboot` QEMU with status 0: the console fails it.
    #[test]
    fn a_panic_fails_the_run_although_qemu_exits_zero() {
        let panicked = "linux-guest: init started\n[    1.2] Kernel panic - not syncing: Attempted to kill init!\n\
                        [    1.3] reboot: Restarting system\n";
        let problems = check(Some(0), panicked, 2);
        assert!(problems.iter().any(|p| p.starts_with("forbidden line: [    1.2] Kernel panic")), "{problems:?}");
        assert!(problems.contains(&"missing line: reboot: Power down".to_string()), "{problems:?}");
        let oops = good_console(2) + "Internal error: Oops: 0000000096000004 [#1] SMP\n";
        assert_eq!(check(Some(0), &oops, 2).len(), 1);
    }

    #[test]
    fn reads_the_image_header() {
        let mut image = vec![0u8; 64];
        image[8..16].copy_from_slice(&0u64.to_le_bytes());
        image[16..24].copy_from_slice(&0x0225_0000u64.to_le_bytes());
        image[24..32].copy_from_slice(&0xau64.to_le_bytes());
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(image_header(&image), Ok(ImageHeader { text_offset: 0, image_size: 0x0225_0000, flags: 0xa }));
        image[0x3b] = 0;
        assert!(image_header(&image).is_err());
        assert!(image_header(&[0x1f, 0x8b, 8, 0]).is_err());
    }

    /// `apt-cache search` output as seen on Debian 12 with arm64 added (trimmed).
    const APT_SEARCH: &str = "\
linux-image-6.12.95+deb12-cloud-arm64-dbg - Debug symbols for linux-image-6.12.95+deb12-cloud-arm64
linux-image-6.12.95+deb12-cloud-arm64-unsigned - Linux 6.12 for arm64 cloud
linux-image-6.12.90+deb12.1-cloud-arm64 - Linux 6.12 for arm64 cloud (signed)
linux-image-6.12.117+deb12-cloud-arm64-unsigned - Linux 6.12 for arm64 cloud
linux-image-6.12-cloud-arm64 - Linux for arm64 cloud (meta-package)
linux-image-6.12.117+deb12-cloud-arm64 - Linux 6.12 for arm64 cloud (signed)
linux-image-6.12.9+deb12-cloud-arm64 - Linux 6.12 for arm64 cloud (signed)
linux-image-6.1.0-57-cloud-arm64-unsigned - Linux 6.1 for arm64 cloud
linux-image-6.1.0-9-cloud-arm64 - Linux 6.1 for arm64 cloud (signed)
linux-image-6.1.0-57-cloud-arm64 - Linux 6.1 for arm64 cloud (signed)
linux-image-6.1.0-47-cloud-arm64-unsigned - Linux 6.1 for arm64 cloud
";

    #[test]
    fn picks_the_kernel_version() {
        let pick = |v: Option<&str>| choose(APT_SEARCH, &Wanted::parse(v).unwrap());
        let both = |v: &str| {
            Some((
                v.to_string(),
                vec![format!("linux-image-{v}-cloud-arm64"), format!("linux-image-{v}-cloud-arm64-unsigned")],
            ))
        };
        // Numerically newest, not by string order (117 > 95 > 9); never -dbg or the meta-package.
        assert_eq!(pick(None), both("6.12.117+deb12"));
        assert_eq!(pick(Some("6.12")), both("6.12.117+deb12"));
        assert_eq!(pick(Some("6.1")), both("6.1.0-57"));
        assert_eq!(
            pick(Some("6.12.95+deb12")),
            Some(("6.12.95+deb12".into(), vec!["linux-image-6.12.95+deb12-cloud-arm64-unsigned".into()]))
        );
        assert_eq!(pick(Some("6.1.0-9")), Some(("6.1.0-9".into(), vec!["linux-image-6.1.0-9-cloud-arm64".into()])));
        assert_eq!(pick(Some("6.2")), None);
        assert_eq!(pick(Some("6.1.0-58")), None);
        assert!(Wanted::parse(Some("six")).is_err());
        assert!(Wanted::parse(Some("6")).is_err());
    }

    #[test]
    fn adds_arm64_to_apt_only_when_missing_and_only_as_root() {
        assert_eq!(arm64_apt_plan("amd64\n", "i386\narm64\n", false), Ok(None));
        assert_eq!(arm64_apt_plan("arm64\n", "", false), Ok(None));
        assert_eq!(arm64_apt_plan("amd64\n", "", true), Ok(Some(ADD_ARM64)));
        let err = arm64_apt_plan("amd64\n", "armhf\n", false).unwrap_err();
        assert!(err.ends_with("dpkg --add-architecture arm64 && apt-get update"), "{err}");
    }

    #[test]
    fn the_bare_command_boots_the_reference_machine() {
        let guest = LinuxGuest {
            version: "6.1.0-57".into(),
            image: "/k/vmlinuz".into(),
            header: ImageHeader { text_offset: 0, image_size: 0, flags: 0 },
            initramfs: "/k/initramfs.cpio".into(),
        };
        let qemu = Qemu { path: "qemu-system-aarch64".into() };
        let args: Vec<String> =
            bare_command(&qemu, 2, &guest).get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let args = args.join(" ");
        assert_eq!(
            args,
            "-M virt,gic-version=2,dtb-randomness=off -cpu cortex-a72 -smp 2 -m 128M -nographic -no-reboot -kernel /k/vmlinuz \
             -initrd /k/initramfs.cpio -append console=ttyAMA0 nokaslr panic=-1 rdinit=/init -icount shift=0,sleep=off"
        );
    }
}

//! Finding (or installing) a QEMU with `raspi4b`, and running it.

use crate::artifacts::{root, Artifacts};
use crate::scenarios::Variant;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-aarch64";
/// QEMU 9 added `raspi4b`.
const MIN_MAJOR: u32 = 9;

pub struct Qemu {
    pub path: PathBuf,
}

/// The QEMU major version in `qemu-system-aarch64 --version` output.
fn major_version(version_output: &str) -> Option<u32> {
    let rest = version_output.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

fn usable() -> Option<Qemu> {
    let version = Command::new(QEMU).arg("--version").output().ok()?;
    let major = major_version(&String::from_utf8_lossy(&version.stdout))?;
    let machines = Command::new(QEMU).args(["-M", "help"]).output().ok()?;
    let has_raspi4b = String::from_utf8_lossy(&machines.stdout).lines().any(|l| l.starts_with("raspi4b "));
    (major >= MIN_MAJOR && has_raspi4b).then(|| Qemu { path: PathBuf::from(QEMU) })
}

const BACKPORTS: &str = r#"uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
[ -n "$uri" ] || uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
echo "deb $uri bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
apt-get update && apt-get install -y -t bookworm-backports qemu-system-arm"#;
const PLAIN: &str = "apt-get update && apt-get install -y qemu-system-arm";

/// The install commands for this OS, if it is one we know.
fn install_script() -> Option<&'static str> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |k: &str| os.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim_matches('"').to_string());
    match (field("ID=")?.as_str(), field("VERSION_ID=").unwrap_or_default().as_str()) {
        ("debian", "12") => Some(BACKPORTS),
        ("debian", v) if v.parse::<u32>().is_ok_and(|v| v >= 13) => Some(PLAIN),
        ("ubuntu", v) if v.split('.').next().and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= 24) => {
            Some(PLAIN)
        }
        _ => None,
    }
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A QEMU 9+ with `raspi4b`: found on PATH, or installed (as root on Debian/Ubuntu).
pub fn ensure() -> Result<Qemu, String> {
    if let Some(qemu) = usable() {
        return Ok(qemu);
    }
    let Some(script) = install_script() else {
        return Err(format!("need {QEMU} {MIN_MAJOR}+ with machine raspi4b; install QEMU 9 or later and retry"));
    };
    if !is_root() {
        return Err(format!("need {QEMU} {MIN_MAJOR}+ with machine raspi4b; as root, run:\n{script}"));
    }
    println!("xtask: installing QEMU with raspi4b:\n{script}");
    let status = Command::new("sh")
        .args(["-ec", script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("installing QEMU failed ({status})"));
    }
    usable().ok_or_else(|| "QEMU installed, but still no usable qemu-system-aarch64 with raspi4b".into())
}

/// QEMU options that make guest-visible time follow the instructions executed, not the host's
/// clock: one instruction is one nanosecond of virtual time (`shift=0`), and idle time is skipped
/// (`sleep=off`). A run then sees the same timer and counter values however loaded the host is,
/// so no time limit inside it (a guest's sleep, a timer that must fire first) depends on load.
pub const DETERMINISTIC_TIME: [&str; 2] = ["-icount", "shift=0,sleep=off"];

/// QEMU options that put an SMMUv3 in front of `virt`'s PCIe root complex and plug in the edu
/// device, whose DMA engine the host can program. A second `-M` merges into the first. Without
/// `stage=2` QEMU's SMMU translates stage 1 only; without `dma_mask` edu clamps its DMA
/// addresses to 28 bits (RAM starts at 1 GiB).
pub const SMMU_ARGS: [&str; 6] =
    ["-M", "iommu=smmuv3", "-global", "arm-smmuv3.stage=2", "-device", "edu,dma_mask=0xffffffffffffffff"];

/// The SMMU scenarios run on one core: each edu DMA starts 100 ms of virtual time after it is
/// told to, and while KServ waits in WFI, QEMU skips that time only if every core idles. KCore's
/// spare cores wait for CPU_ON in WFE, which QEMU executes as a yield, not a halt: with four
/// cores, each DMA costs some 5 s of QEMU's CPU instead of a few milliseconds. A later `-smp`
/// overrides the first.
pub const ONE_CORE: [&str; 2] = ["-smp", "1"];

/// The QEMU command line that boots `artifacts` on `variant` with `append` as kernel arguments.
/// `initrd` is the boot bundle, if any. A reset ends the run (`-no-reboot`).
pub fn command(
    qemu: &Qemu,
    variant: Variant,
    artifacts: &Artifacts,
    append: &str,
    initrd: Option<&std::path::Path>,
) -> Result<Command, String> {
    command_with_reboot(qemu, variant, artifacts, append, initrd, false)
}

/// [`command`], where `reboot` says whether a reset reboots the machine (RAM as it was, the
/// kernel, DTB and initrd loaded again) instead of ending the run.
pub fn command_with_reboot(
    qemu: &Qemu,
    variant: Variant,
    artifacts: &Artifacts,
    append: &str,
    initrd: Option<&std::path::Path>,
    reboot: bool,
) -> Result<Command, String> {
    let mut c = Command::new(&qemu.path);
    c.current_dir(root());
    match variant {
        Variant::VirtGicV3 | Variant::VirtGicV2 => {
            let gic = if variant == Variant::VirtGicV3 { 3 } else { 2 };
            c.args(["-M", &format!("{},gic-version={gic}", corevisor_boards::qemu_virt::BOARD.qemu_machine)]);
            c.args(["-cpu", "cortex-a72", "-smp", "4", "-m", "1G"]);
        }
        Variant::Raspi4b => {
            let dtb = root().join("target/xtask/raspi4b.dtb");
            let blob = crate::dtb::raspi4b().map_err(|e| format!("raspi4b DTB: {e}"))?;
            std::fs::create_dir_all(dtb.parent().unwrap()).map_err(|e| e.to_string())?;
            std::fs::write(&dtb, blob).map_err(|e| e.to_string())?;
            c.args(["-M", corevisor_boards::rpi4::BOARD.qemu_machine, "-dtb"]).arg(dtb);
        }
    }
    c.args(["-nographic", "-semihosting"]);
    if !reboot {
        c.arg("-no-reboot");
    }
    c.arg("-kernel").arg(&artifacts.image);
    c.args(["-append", append]);
    if let Some(initrd) = initrd {
        c.arg("-initrd").arg(initrd);
    }
    Ok(c)
}

/// How a captured run ended.
pub struct Captured {
    /// The exit status, or `None` when the hang guard killed QEMU.
    pub status: Option<i32>,
    pub console: String,
    /// Wall-clock time, and the CPU time QEMU used (where /proc tells it).
    pub wall: Duration,
    pub cpu: Option<Duration>,
}

/// When to stop a QEMU run that does not end by itself. `cpu` bounds the CPU time QEMU uses,
/// which a loaded host does not inflate the way it stretches wall-clock time; `wall` catches a
/// hang that uses no CPU (every core waiting for an interrupt that never comes).
#[derive(Clone, Copy, Debug)]
pub struct Guard {
    pub cpu: Duration,
    pub wall: Duration,
}

/// The CPU time (user + system) process `pid` has used, from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux the project runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Runs `command` with its output captured and stdin closed. `guard` only stops a hung QEMU;
/// a run that reaches it has failed.
pub fn run_captured(mut command: Command, guard: Guard) -> Result<Captured, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start QEMU: {e}"))?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut cpu = None;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status.code().unwrap_or(-1));
        }
        cpu = cpu_time(child.id()).or(cpu);
        if start.elapsed() > guard.wall || cpu.is_some_and(|used| used > guard.cpu) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let console = out.join().unwrap_or_default() + &err.join().unwrap_or_default();
    Ok(Captured { status, console, wall: start.elapsed(), cpu })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_major_version() {
        assert_eq!(major_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\n"), Some(10));
        assert_eq!(major_version("QEMU emulator version 7.2.15"), Some(7));
        assert_eq!(major_version("nonsense"), None);
    }

    #[test]
    fn reads_this_process_cpu_time() {
        let spent = (0..20_000_000u64).fold(0u64, |a, i| a.wrapping_add(i * i));
        assert!(spent != 1);
        assert!(cpu_time(std::process::id()).is_some());
        assert_eq!(cpu_time(u32::MAX), None);
    }
}

//! Building the images: KServ first, then KCore with KServ embedded (see docs/boot-contract.md).

use corevisor_boards::Board;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Both programs build for the soft-float target: EL2 code never touches FP/SIMD.
pub const TARGET: &str = "aarch64-unknown-none-softfloat";

/// What the image is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// QEMU scenario runs: semihosting exit, invariants checked after every host trap.
    Test,
    /// `cargo xtask bench`: semihosting, nothing extra on the measured paths, and `pmu-bench`:
    /// the host's PMU may count KCore (at EL2 and across guest runs), which the bench measures.
    Bench,
    /// Real hardware: no semihosting (its `hlt` would be an UNDEF there).
    Hardware,
    /// `run --guest-kernel`: semihosting (the run's status is the guest's), no invariant checks
    /// after every host trap (a Linux boot makes tens of thousands; checked, it takes minutes).
    Run,
    /// The Linux qemu-test scenarios: as [`Flavor::Test`], but the checks after VCPU_RUNs and
    /// interrupt injections that moved no page are sampled (`sampled-invariants`).
    LinuxTest,
}

impl Flavor {
    fn features(self) -> &'static str {
        match self {
            Flavor::Test => ",semihosting,check-invariants",
            Flavor::Bench => ",semihosting,pmu-bench",
            Flavor::Hardware => "",
            Flavor::Run => ",semihosting",
            Flavor::LinuxTest => ",semihosting,sampled-invariants",
        }
    }
    /// The suffix of the flavor's target directory: each (board, flavor) pair builds in its own
    /// directory, so switching between them does not rebuild (docs/boot-contract.md).
    fn dir_suffix(self) -> &'static str {
        match self {
            Flavor::Test => "",
            Flavor::Bench => "-bench",
            Flavor::Hardware => "-hw",
            Flavor::Run => "-run",
            Flavor::LinuxTest => "-linux",
        }
    }
}

/// The files a build produces.
pub struct Artifacts {
    pub kserv: PathBuf,
    /// KCore's raw image with KServ inside: QEMU's `-kernel`, the Pi's `kernel8.img`.
    pub image: PathBuf,
    /// KCore's ELF (with KServ inside), for its symbols.
    pub kcore_elf: PathBuf,
    /// KServ's ELF, for its text's addresses.
    pub kserv_elf: PathBuf,
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs cargo in the workspace root with `env` set; an error names the command.
pub fn cargo(args: &[&str], env: &[(&str, &Path)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    command.args(args).current_dir(root());
    for (key, value) in env {
        command.env(key, value);
    }
    let status = command.status().map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The toolchain's LLVM tool `name` (`rust-objcopy`, `llvm-nm`, `llvm-objdump`: rustc ships the
/// first, llvm-tools the others).
pub(crate) fn llvm_tool(name: &str) -> Result<PathBuf, String> {
    let output = Command::new("rustc").args(["--print", "sysroot"]).current_dir(root()).output();
    let sysroot = output.map_err(|e| format!("cannot run rustc: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let host = Command::new("rustc").args(["-vV"]).output().map_err(|e| e.to_string())?;
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or("rustc -vV names no host")?;
    let path = Path::new(&sysroot).join("lib/rustlib").join(host).join("bin").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is missing: run `rustup component add llvm-tools`", path.display()))
    }
}

pub(crate) fn to_raw(elf: &Path, raw: &Path) -> Result<(), String> {
    let status = Command::new(llvm_tool("rust-objcopy")?)
        .args(["-O", "binary"])
        .arg(elf)
        .arg(raw)
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("objcopy of {} failed", elf.display()))
    }
}

/// Builds KServ and KCore for `board`.
pub fn build(board: &Board, flavor: Flavor) -> Result<Artifacts, String> {
    let dir = root().join("target/xtask").join(format!("{}{}", board.name, flavor.dir_suffix()));
    let dir_arg = dir.to_str().ok_or("non-UTF-8 target directory")?;
    let release = dir.join(TARGET).join("release");
    let common = ["--release", "--target", TARGET, "--no-default-features", "--target-dir", dir_arg];

    let mut kserv_args = vec!["build", "-p", "kserv", "--features", board.name];
    kserv_args.extend(common);
    cargo(&kserv_args, &[])?;
    let kserv = dir.join("kserv.bin");
    let kserv_elf = release.join("kserv");
    to_raw(&kserv_elf, &kserv)?;

    let features = format!("{}{}", board.name, flavor.features());
    let mut kcore_args = vec!["build", "-p", "corevisor", "--features", &features];
    kcore_args.extend(common);
    cargo(&kcore_args, &[("COREVISOR_KSERV_BIN", &kserv)])?;
    let image = dir.join("corevisor.bin");
    let kcore_elf = release.join("corevisor");
    to_raw(&kcore_elf, &image)?;
    Ok(Artifacts { kserv, image, kcore_elf, kserv_elf })
}

#[cfg(test)]
mod tests {
    use super::Flavor;

    /// Only the bench may let the host's PMU count KCore: test and hardware images confine it.
    #[test]
    fn only_the_bench_flavor_lets_the_host_pmu_count_el2() {
        assert!(Flavor::Bench.features().contains("pmu-bench"));
        for flavor in [Flavor::Test, Flavor::Hardware, Flavor::Run, Flavor::LinuxTest] {
            assert!(!flavor.features().contains("pmu-bench"), "{flavor:?}");
        }
    }
}

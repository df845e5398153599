//! The pinned toolchain's board targets and components, installed when missing.
//!
//! Where rustup does not install on its own (`RUSTUP_AUTO_INSTALL=0`, as on CI machines), a
//! fresh clone has the pinned toolchain without the bare-metal targets, and the first board
//! build fails with "can't find crate for `core`". Every command that builds for the boards
//! calls [`ensure`] first: it checks the toolchain's sysroot for each piece that
//! `rust-toolchain.toml` pins and has rustup add the missing ones, as [`crate::qemu::ensure`]
//! installs QEMU.

use crate::artifacts::root;
use std::path::Path;
use std::process::Command;

/// What `rust-toolchain.toml` pins.
#[derive(Debug, Default, PartialEq)]
pub struct Pinned {
    pub channel: String,
    pub profile: Option<String>,
    pub targets: Vec<String>,
    pub components: Vec<String>,
}

impl Pinned {
    /// Reads the `[toolchain]` table's one-line `key = "value"` and `key = ["a", "b"]` entries.
    pub fn parse(toml: &str) -> Result<Pinned, String> {
        let mut pinned = Pinned::default();
        for line in toml.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
            let Some((key, value)) = line.split_once('=') else { continue };
            let strings = || -> Vec<String> {
                value
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(unquote)
                    .filter(|s| !s.is_empty())
                    .collect()
            };
            match key.trim() {
                "channel" => pinned.channel = unquote(value),
                "profile" => pinned.profile = Some(unquote(value)),
                "targets" => pinned.targets = strings(),
                "components" => pinned.components = strings(),
                _ => {}
            }
        }
        if pinned.channel.is_empty() {
            return Err("rust-toolchain.toml names no channel".into());
        }
        if let Some(c) = pinned.components.iter().find(|c| component_file(c, "host").is_none()) {
            return Err(format!(
                "rust-toolchain.toml pins component {c}, which xtask/src/toolchain.rs cannot find yet"
            ));
        }
        Ok(pinned)
    }

    fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        let targets = self.targets.iter().map(|t| Piece::Target(t));
        targets.chain(self.components.iter().map(|c| Piece::Component(c)))
    }
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_string()
}

/// One thing the pinned toolchain must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Target(&'a str),
    Component(&'a str),
}

impl std::fmt::Display for Piece<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Piece::Target(t) => write!(f, "target {t}"),
            Piece::Component(c) => write!(f, "component {c}"),
        }
    }
}

/// A file under the sysroot that only the component installs: for rustfmt and clippy what the
/// lint runs. xtask's `rust-objcopy` also ships with rustc itself, so llvm-tools is recognised
/// by its own `llvm-objcopy`.
fn component_file(component: &str, host: &str) -> Option<String> {
    Some(match component {
        "llvm-tools" | "llvm-tools-preview" => format!("lib/rustlib/{host}/bin/llvm-objcopy"),
        "rust-src" => "lib/rustlib/src/rust/library/core/src/lib.rs".into(),
        "rustfmt" => "bin/rustfmt".into(),
        "clippy" => "bin/cargo-clippy".into(),
        _ => return None,
    })
}

/// Whether `piece` is installed in `sysroot`: a target has a libcore rlib (the crate the build
/// misses without it), a component its own file ([`Pinned::parse`] refuses one it has none for).
fn on_disk(piece: Piece, sysroot: &Path, host: &str) -> bool {
    match piece {
        Piece::Target(target) => {
            std::fs::read_dir(sysroot.join("lib/rustlib").join(target).join("lib")).is_ok_and(|dir| {
                dir.flatten()
                    .any(|f| f.file_name().to_str().is_some_and(|n| n.starts_with("libcore-") && n.ends_with(".rlib")))
            })
        }
        Piece::Component(c) => component_file(c, host).is_some_and(|file| sysroot.join(file).exists()),
    }
}

/// What the toolchain check found.
#[derive(Debug, PartialEq)]
pub enum Found<'a> {
    /// `rustc` did not run: the pinned toolchain itself is not installed.
    NoToolchain,
    /// The toolchain runs; these pinned pieces are missing from its sysroot.
    Missing(Vec<Piece<'a>>),
}

/// rustup's version, `(major, minor)`, or `None` when rustup is not on the PATH.
pub type RustupVersion = Option<(u32, u32)>;

/// The rustup commands (each run in the workspace root) that install what `found` lacks; empty
/// when nothing is missing. Missing pieces of an installed toolchain are added one kind at a
/// time: `rustup toolchain install` would also update every other component whenever the
/// channel's manifest changed since (seen: 11 components downloaded again to add one target).
/// rustup 1.28 and later install the whole toolchain from `rust-toolchain.toml`; an older one
/// needs it spelled out (as `.ci/run` does).
pub fn plan(pinned: &Pinned, found: &Found, rustup: RustupVersion) -> Result<Vec<Vec<String>>, String> {
    let owned = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<String>>();
    let pieces = match found {
        Found::Missing(pieces) if pieces.is_empty() => return Ok(Vec::new()),
        Found::Missing(pieces) => pieces.as_slice(),
        Found::NoToolchain => &[],
    };
    if rustup.is_none() {
        let what = match found {
            Found::NoToolchain => format!("toolchain {}", pinned.channel),
            Found::Missing(pieces) => pieces.iter().map(Piece::to_string).collect::<Vec<_>>().join(", "),
        };
        return Err(format!(
            "the pinned Rust toolchain (rust-toolchain.toml) lacks {what}, and rustup, which installs it, is not on \
             the PATH: install rustup (https://rustup.rs), then run `rustup toolchain install` in {}",
            root().display()
        ));
    }
    let mut commands = Vec::new();
    if *found == Found::NoToolchain {
        if rustup.is_some_and(|v| v >= (1, 28)) {
            commands.push(owned(&["rustup", "toolchain", "install"]));
        } else {
            let mut c = owned(&["rustup", "toolchain", "install", &pinned.channel]);
            if let Some(profile) = &pinned.profile {
                c.extend(owned(&["--profile", profile]));
            }
            if !pinned.components.is_empty() {
                c.extend(["--component".to_string(), pinned.components.join(",")]);
            }
            if !pinned.targets.is_empty() {
                c.extend(["--target".to_string(), pinned.targets.join(",")]);
            }
            commands.push(c);
        }
        return Ok(commands);
    }
    let targets: Vec<&str> =
        pieces.iter().filter_map(|p| if let Piece::Target(t) = p { Some(*t) } else { None }).collect();
    let components: Vec<&str> =
        pieces.iter().filter_map(|p| if let Piece::Component(c) = p { Some(*c) } else { None }).collect();
    if !targets.is_empty() {
        commands.push(owned(&[&["rustup", "target", "add"], &targets[..]].concat()));
    }
    if !components.is_empty() {
        commands.push(owned(&[&["rustup", "component", "add"], &components[..]].concat()));
    }
    Ok(commands)
}

/// The toolchain's sysroot and host tuple, as the `rustc` that cargo runs here reports them.
fn sysroot_and_host() -> Option<(String, String)> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot", "--print", "host-tuple"])
        .current_dir(root())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (sysroot, host) = (lines.next()?.trim(), lines.next()?.trim());
    (out.status.success() && !sysroot.is_empty() && !host.is_empty()).then(|| (sysroot.into(), host.into()))
}

/// The `(major, minor)` in `rustup --version` output ("rustup 1.28.2 (...)").
fn rustup_version(output: &str) -> Option<(u32, u32)> {
    let version = output.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn find() -> Result<(Pinned, Option<(String, String)>), String> {
    let file = root().join("rust-toolchain.toml");
    let pinned = Pinned::parse(&std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?)?;
    Ok((pinned, sysroot_and_host()))
}

fn missing<'a>(pinned: &'a Pinned, toolchain: &Option<(String, String)>) -> Found<'a> {
    match toolchain {
        None => Found::NoToolchain,
        Some((sysroot, host)) => {
            Found::Missing(pinned.pieces().filter(|&p| !on_disk(p, Path::new(sysroot), host)).collect())
        }
    }
}

/// Installs the pinned toolchain's missing targets and components (or the toolchain itself).
/// Costs one `rustc` run and a few file lookups when nothing is missing.
pub fn ensure() -> Result<(), String> {
    let (pinned, toolchain) = find()?;
    let found = missing(&pinned, &toolchain);
    if found == Found::Missing(Vec::new()) {
        return Ok(());
    }
    let rustup = Command::new("rustup")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| rustup_version(&String::from_utf8_lossy(&o.stdout)));
    let commands = plan(&pinned, &found, rustup)?;
    match &found {
        Found::NoToolchain => println!("xtask: the pinned Rust toolchain {} is not installed", pinned.channel),
        Found::Missing(pieces) => println!(
            "xtask: the pinned Rust toolchain {} lacks {}",
            pinned.channel,
            pieces.iter().map(Piece::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
    for command in &commands {
        println!("xtask: running `{}` in {}", command.join(" "), root().display());
        let status = Command::new(&command[0]).args(&command[1..]).current_dir(root()).status();
        let status = status.map_err(|e| format!("cannot run {}: {e}", command[0]))?;
        if !status.success() {
            return Err(format!("`{}` failed ({status})", command.join(" ")));
        }
    }
    let (_, toolchain) = find()?;
    match missing(&pinned, &toolchain) {
        Found::Missing(still) if still.is_empty() => Ok(()),
        Found::Missing(still) => Err(format!(
            "rustup ran, but the toolchain still lacks {}",
            still.iter().map(Piece::to_string).collect::<Vec<_>>().join(", ")
        )),
        Found::NoToolchain => Err(format!("rustup ran, but `rustc` in {} still does not run", root().display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_TOML: &str = include_str!("../../rust-toolchain.toml");

    fn pinned() -> Pinned {
        Pinned::parse(
            "[toolchain]\n# a comment\nchannel = \"1.95.0\"\ntargets = [\"aarch64-unknown-none\", \"aarch64-unknown-none-softfloat\"]\n\
             components = [\"llvm-tools\", \"rust-src\"]  # trailing\nprofile = \"minimal\"\n",
        )
        .unwrap()
    }

    fn words(commands: &[Vec<String>]) -> Vec<String> {
        commands.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn reads_the_pinned_toolchain() {
        let p = pinned();
        assert_eq!(p.channel, "1.95.0");
        assert_eq!(p.profile.as_deref(), Some("minimal"));
        assert_eq!(p.targets, ["aarch64-unknown-none", "aarch64-unknown-none-softfloat"]);
        assert_eq!(p.components, ["llvm-tools", "rust-src"]);
        assert!(Pinned::parse("[toolchain]\nprofile = \"minimal\"\n").is_err());
        assert!(Pinned::parse("[toolchain]\nchannel = \"1.95.0\"\ncomponents = [\"miri\"]\n").is_err());
    }

    /// The repository's own file parses, pins the board target, and every component it lists is
    /// one this module knows how to find in a sysroot (else it would be reinstalled every run).
    #[test]
    fn the_repository_toolchain_file_is_understood() {
        let p = Pinned::parse(REPO_TOML).unwrap();
        assert!(p.targets.iter().any(|t| t == crate::artifacts::TARGET), "{p:?}");
        for c in &p.components {
            assert!(component_file(c, "x86_64-unknown-linux-gnu").is_some(), "unknown component {c}");
        }
    }

    #[test]
    fn nothing_missing_runs_nothing() {
        assert_eq!(plan(&pinned(), &Found::Missing(vec![]), Some((1, 29))), Ok(vec![]));
        // Without rustup too: a complete toolchain needs no installer.
        assert_eq!(plan(&pinned(), &Found::Missing(vec![]), None), Ok(vec![]));
    }

    #[test]
    fn missing_pieces_are_added_to_the_installed_toolchain() {
        let p = pinned();
        let one_target = Found::Missing(vec![Piece::Target("aarch64-unknown-none-softfloat")]);
        assert_eq!(
            words(&plan(&p, &one_target, Some((1, 29))).unwrap()),
            ["rustup target add aarch64-unknown-none-softfloat"]
        );
        // The same on an old rustup: `target add` and `component add` are as old as rustup.
        assert_eq!(
            words(&plan(&p, &one_target, Some((1, 27))).unwrap()),
            ["rustup target add aarch64-unknown-none-softfloat"]
        );
        let mixed = Found::Missing(vec![
            Piece::Target("aarch64-unknown-none"),
            Piece::Component("llvm-tools"),
            Piece::Target("aarch64-unknown-none-softfloat"),
            Piece::Component("rust-src"),
        ]);
        assert_eq!(
            words(&plan(&p, &mixed, Some((1, 28))).unwrap()),
            [
                "rustup target add aarch64-unknown-none aarch64-unknown-none-softfloat",
                "rustup component add llvm-tools rust-src"
            ]
        );
        let components = Found::Missing(vec![Piece::Component("llvm-tools")]);
        assert_eq!(words(&plan(&p, &components, Some((1, 29))).unwrap()), ["rustup component add llvm-tools"]);
    }

    #[test]
    fn a_missing_toolchain_is_installed_from_the_file_or_spelled_out() {
        let p = pinned();
        assert_eq!(words(&plan(&p, &Found::NoToolchain, Some((1, 28))).unwrap()), ["rustup toolchain install"]);
        assert_eq!(
            words(&plan(&p, &Found::NoToolchain, Some((1, 27))).unwrap()),
            ["rustup toolchain install 1.95.0 --profile minimal --component llvm-tools,rust-src \
                 --target aarch64-unknown-none,aarch64-unknown-none-softfloat"]
        );
    }

    #[test]
    fn without_rustup_anything_missing_is_an_error_naming_it() {
        let p = pinned();
        let err = plan(&p, &Found::Missing(vec![Piece::Target("aarch64-unknown-none")]), None).unwrap_err();
        assert!(
            err.contains("target aarch64-unknown-none") && err.contains("install rustup (https://rustup.rs)"),
            "{err}"
        );
        let err = plan(&p, &Found::NoToolchain, None).unwrap_err();
        assert!(err.contains("toolchain 1.95.0") && err.contains("rustup toolchain install"), "{err}");
    }

    #[test]
    fn reads_rustup_versions() {
        assert_eq!(rustup_version("rustup 1.29.0 (28d1352db 2026-03-05)\n"), Some((1, 29)));
        assert_eq!(rustup_version("rustup 1.27.1 (54dd3d00f 2024-04-24)"), Some((1, 27)));
        assert_eq!(rustup_version("nonsense"), None);
    }

    /// The sysroot probe, on a made-up sysroot (never the real toolchain's).
    #[test]
    fn finds_pieces_in_a_sysroot() {
        let sysroot = std::env::temp_dir().join(format!("xtask-sysroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&sysroot);
        let host = "x86_64-unknown-linux-gnu";
        let p = pinned();
        let missing_now = || match missing(&p, &Some((sysroot.to_str().unwrap().into(), host.into()))) {
            Found::Missing(pieces) => pieces.iter().map(Piece::to_string).collect::<Vec<_>>(),
            Found::NoToolchain => unreachable!(),
        };
        assert_eq!(missing_now().len(), 4);
        let touch = |path: &str| {
            let path = sysroot.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        };
        // Metadata without the rlib is not an installed target.
        touch("lib/rustlib/aarch64-unknown-none/lib/libcore-0123.rmeta");
        touch("lib/rustlib/aarch64-unknown-none-softfloat/lib/liballoc-0123.rlib");
        touch("lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy");
        assert_eq!(
            missing_now(),
            ["target aarch64-unknown-none", "target aarch64-unknown-none-softfloat", "component rust-src"]
        );
        touch("lib/rustlib/aarch64-unknown-none/lib/libcore-0123.rlib");
        touch("lib/rustlib/aarch64-unknown-none-softfloat/lib/libcore-4567.rlib");
        touch("lib/rustlib/src/rust/library/core/src/lib.rs");
        assert!(missing_now().is_empty());
        assert_eq!(missing(&p, &None), Found::NoToolchain);
        std::fs::remove_dir_all(&sysroot).unwrap();
    }
}

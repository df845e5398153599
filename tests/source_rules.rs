//! Rules about KCore's source that the compiler does not check:
//! - `unsafe` and inline assembly appear only in the machine layer (and its boot/vector assembly)
//!   and in the boot sequence (`init`). The machine layer does the raw work; its primitives that
//!   work on any address or PC are `unsafe fn` whose contract someone must vouch for. Only the
//!   boot glue can: it checks what the firmware handed over (the DTB, the UART, the PM block,
//!   KServ's slot) and builds from it the safe capabilities the layers use (`DeviceWindow`,
//!   `Power`, `Pl011`). Every other module is safe code;
//! - every `unsafe` block or impl carries a `// SAFETY:` comment;
//! - a module never names a module above it in [`LAYERS`], which lists every top-level module
//!   of KCore.

use std::fs;
use std::path::{Path, PathBuf};

/// Every top-level module of KCore, bottom to top: each uses only modules before it. `init`, the
/// boot sequence, is the top: nothing uses it.
const LAYERS: &[&str] = &[
    "mutation",
    "ids",
    "addr",
    "board",
    "machine",
    "platform",
    "cpus",
    "console",
    "page_table",
    "memory",
    "boot",
    "vcpu",
    "vm",
    "handlers",
    "init",
];
/// Top-level modules that are not part of KCore: they build only under `cargo test`.
const TEST_ONLY: &[&str] = &["noninterference"];
/// Where `unsafe` and `asm!` may appear.
const TRUSTED: &[&str] = &["src/machine/", "src/init/"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn kcore_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|p| (p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), fs::read_to_string(&p).unwrap()))
        .collect()
}

/// Code lines only: `//` comments and doc comments are dropped.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("")))
        .filter(|(_, l)| !l.trim().is_empty())
}

#[test]
fn unsafe_and_asm_live_only_in_the_machine_layer() {
    let mut violations = Vec::new();
    for (path, text) in kcore_sources() {
        if TRUSTED.iter().any(|t| path.starts_with(t)) {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if line.contains("unsafe ") || line.contains("unsafe{") || line.contains("asm!") {
                violations.push(format!("{path}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(violations.is_empty(), "unsafe or asm outside {TRUSTED:?}:\n{}", violations.join("\n"));
}

#[test]
fn every_unsafe_block_has_a_safety_comment() {
    let mut missing = Vec::new();
    for (path, text) in kcore_sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let is_unsafe_use = code.contains("unsafe {") || code.contains("unsafe impl");
            let documented =
                lines[i.saturating_sub(4)..i].iter().any(|l| l.contains("SAFETY:")) || line.contains("SAFETY:");
            if is_unsafe_use && !documented {
                missing.push(format!("{path}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(missing.is_empty(), "unsafe without a SAFETY comment:\n{}", missing.join("\n"));
}

/// The top-level module a source file belongs to (`src/vm/mod.rs` and `src/vm.rs`: `vm`).
fn top_module(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("src/")?;
    let name = rest.split('/').next()?;
    Some(name.strip_suffix(".rs").unwrap_or(name))
}

/// Every top-level module a source names through `crate::` (also inside `crate::{a, b::c}`,
/// over several lines) or `super::` (a file right below the crate root naming a sibling), with
/// its line.
fn named_modules(text: &str) -> Vec<(usize, String)> {
    // The code without comments, each line kept (empty if it held only a comment).
    let mut code = String::new();
    let mut line_of = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        line_of.extend(std::iter::repeat_n(n + 1, line.len() + 1));
        code.push_str(line);
        code.push('\n');
    }
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = Vec::new();
    for prefix in ["crate::", "super::"] {
        for (at, _) in code.match_indices(prefix) {
            let after = &code[at + prefix.len()..];
            let Some(group) = after.strip_prefix('{') else {
                found.push((line_of[at], ident(after)));
                continue;
            };
            // `crate::{a, b::{c, d}, e}`: the names at depth 1.
            let (mut depth, mut start) = (1, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => start = true,
                    c if start && depth == 1 && !c.is_whitespace() => {
                        found.push((line_of[at + prefix.len() + 1 + i], ident(&group[i..])));
                        start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
        }
    }
    found
}

/// The upward imports in `sources` (path, text): a module naming a module above it in `LAYERS`.
fn upward_imports(sources: &[(String, String)]) -> Vec<String> {
    let rank = |name: &str| LAYERS.iter().position(|l| *l == name);
    let mut violations = Vec::new();
    for (path, text) in sources {
        let Some(own) = top_module(path).and_then(rank) else { continue };
        for (n, name) in named_modules(text) {
            if let Some(other) = rank(&name).filter(|&r| r > own) {
                violations.push(format!("{path}:{n} ({} uses {})", LAYERS[own], LAYERS[other]));
            }
        }
    }
    violations
}

#[test]
fn layers_never_use_the_layers_above_them() {
    let violations = upward_imports(&kcore_sources());
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn every_top_level_module_is_in_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut missing = Vec::new();
    for entry in fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let is_module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
        if !is_module || name == "lib" || name == "main" {
            continue;
        }
        if !LAYERS.contains(&name.as_str()) && !TEST_ONLY.contains(&name.as_str()) {
            missing.push(name);
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "top-level modules of src/ missing from LAYERS: {missing:?}");
}

/// The checker itself, on fake sources: it must see an upward import in every form it takes,
/// and nothing in a downward one.
#[test]
fn the_layering_check_catches_upward_imports() {
    let fake = |path: &str, text: &str| vec![(path.to_string(), text.to_string())];
    for (path, text) in [
        ("src/vm/mod.rs", "use crate::handlers::trap_handler;"),
        ("src/vm/mod.rs", "use crate::{machine::Machine, init::CORES};"),
        ("src/handlers/trap_handler/mod.rs", "use crate::init::{power, wait_for_work};"),
        ("src/cpus.rs", "fn f() { crate::init::platform(); }"),
        ("src/machine/aarch64/cpu.rs", "use crate::{\n    vcpu::VcpuContext,\n};"),
        ("src/ids.rs", "use super::addr::Pa;"),
    ] {
        assert!(!upward_imports(&fake(path, text)).is_empty(), "not caught: {path}: {text}");
    }
    for (path, text) in [
        ("src/init/mod.rs", "use crate::handlers::trap_handler::wait_for_work;"),
        ("src/handlers/mod.rs", "use crate::{vm::Kcore, ids::VmId};"),
        ("src/handlers/trap_handler/vcpu_run.rs", "use super::super::vm_contract::typed; // crate::init"),
        ("src/vm/mod.rs", "use crate::vmids::X;"),
    ] {
        assert_eq!(upward_imports(&fake(path, text)), Vec::<String>::new(), "{path}: {text}");
    }
}

#[test]
fn the_rules_see_the_sources() {
    // Guards the tests above against passing vacuously on an empty or moved tree.
    let sources = kcore_sources();
    assert!(sources.iter().any(|(p, _)| p == "src/machine/aarch64/phys.rs"));
    assert!(sources.iter().any(|(p, t)| p.starts_with("src/handlers/") && t.contains("host_hvc_dispatcher")));
    assert!(sources.iter().filter(|(p, _)| p.starts_with(TRUSTED[0])).any(|(_, t)| t.contains("unsafe {")));
    assert!(sources.iter().any(|(p, t)| p.starts_with("src/init/") && t.contains("crate::handlers")));
}

//! Rules about KCore's source that the compiler does not check:
//! - `unsafe` and inline assembly appear only in the machine layer (and its boot/vector assembly);
//! - every `unsafe` block or impl carries a `// SAFETY:` comment;
//! - a layer module never names a module above it.

use std::fs;
use std::path::{Path, PathBuf};

/// KCore's layers, bottom to top, as module paths under `src/`.
const LAYERS: &[&str] = &["ids", "addr", "machine", "page_table", "memory", "boot", "vcpu", "vm", "handlers"];
/// Where `unsafe` and `asm!` may appear.
const TRUSTED: &str = "src/machine/";

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
        if path.starts_with(TRUSTED) {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if line.contains("unsafe ") || line.contains("unsafe{") || line.contains("asm!") {
                violations.push(format!("{path}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(violations.is_empty(), "unsafe or asm outside {TRUSTED}:\n{}", violations.join("\n"));
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

#[test]
fn layers_never_use_the_layers_above_them() {
    let sources = kcore_sources();
    let mut violations = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        let above = &LAYERS[rank + 1..];
        for (path, text) in sources.iter().filter(|(p, _)| p.starts_with(&format!("src/{layer}"))) {
            for (n, line) in code_lines(text) {
                for upper in above {
                    if line.contains(&format!("crate::{upper}")) || line.contains(&format!("super::{upper}")) {
                        violations.push(format!("{path}:{n} ({layer} uses {upper}): {}", line.trim()));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn the_rules_see_the_sources() {
    // Guards the tests above against passing vacuously on an empty or moved tree.
    let sources = kcore_sources();
    assert!(sources.iter().any(|(p, _)| p == "src/machine/aarch64/phys.rs"));
    assert!(sources.iter().any(|(p, t)| p.starts_with("src/handlers/") && t.contains("host_hvc_dispatcher")));
    assert!(sources.iter().filter(|(p, _)| p.starts_with(TRUSTED)).any(|(_, t)| t.contains("unsafe {")));
}

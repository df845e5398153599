//! `cargo xtask`: build corevisor, boot it under QEMU, run the scenario tests and benchmarks.
//!
//! Commands (see README): build, run, image, qemu-test, test, bench, lint.

mod artifacts;
mod bench;
mod dtb;
mod qemu;
mod scenarios;

use artifacts::Flavor;
use std::process::ExitCode;

/// Parsed `--name value` options and bare words.
#[derive(Debug, Default, PartialEq)]
struct Args {
    words: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

/// Options that take no value.
const FLAGS: &[&str] = &["--gdb", "--hw"];

impl Args {
    fn parse(raw: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut args = Args::default();
        let mut raw = raw.into_iter();
        while let Some(arg) = raw.next() {
            if let Some(name) = arg.strip_prefix("--") {
                if FLAGS.contains(&arg.as_str()) {
                    args.options.push((name.into(), None));
                } else {
                    let value = raw.next().ok_or_else(|| format!("{arg} needs a value"))?;
                    args.options.push((name.into(), Some(value)));
                }
            } else {
                args.words.push(arg);
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
  image --board rpi4 [--out DIR]               kernel8.img + config.txt for the SD card
  qemu-test [SCENARIO...] [--variant V]        every scenario on virt-gicv3, virt-gicv2, raspi4b
  test                                         host cargo test, then qemu-test
  bench                                        exact EL2 instruction counts (PMU under icount)
  lint                                         rustfmt and clippy -D warnings, host and both boards";

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
        "build" => args.board().and_then(|b| {
            let flavor = if args.flag("hw") { Flavor::Hardware } else { Flavor::Test };
            artifacts::build(b, flavor).map(|a| println!("KServ: {}\nKCore: {}", a.kserv.display(), a.image.display()))
        }),
        "run" => run(&args),
        "image" => image(&args),
        "qemu-test" => qemu::ensure().and_then(|q| scenarios::qemu_test(&q, &args.words, args.value("variant"))),
        "test" => test(),
        "bench" => qemu::ensure().and_then(|q| bench::run(&q)),
        "lint" => lint(),
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

fn run(args: &Args) -> Result<(), String> {
    let qemu = qemu::ensure()?;
    let board = args.board()?;
    let variant = match (board.name, args.value("gic")) {
        ("rpi4", _) => scenarios::Variant::Raspi4b,
        (_, Some("2")) => scenarios::Variant::VirtGicV2,
        (_, None | Some("3")) => scenarios::Variant::VirtGicV3,
        (_, Some(other)) => return Err(format!("--gic {other}: 2 or 3")),
    };
    let artifacts = artifacts::build(board, Flavor::Test)?;
    let scenario = args.value("scenario").unwrap_or("demo");
    let mut command = qemu::command(&qemu, variant, &artifacts, &format!("scenario={scenario}"))?;
    if args.flag("gdb") {
        println!("QEMU waits for gdb on localhost:1234 (target remote :1234)");
        command.args(["-s", "-S"]);
    }
    let status = command.status().map_err(|e| format!("cannot start QEMU: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("QEMU exited with {status}"))
    }
}

fn image(args: &Args) -> Result<(), String> {
    let board = args.board()?;
    if board.name != "rpi4" {
        return Err("image is for --board rpi4".into());
    }
    let artifacts = artifacts::build(board, Flavor::Hardware)?;
    let out = std::path::PathBuf::from(args.value("out").unwrap_or("target/rpi4-sd"));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::copy(&artifacts.image, out.join("kernel8.img")).map_err(|e| e.to_string())?;
    std::fs::write(out.join("config.txt"), corevisor_boards::rpi4::CONFIG_TXT).map_err(|e| e.to_string())?;
    println!("wrote {}/kernel8.img and {}/config.txt", out.display(), out.display());
    println!("copy both onto the FAT boot partition of a Raspberry Pi 4 SD card that holds the firmware");
    println!("(start4.elf, fixup4.dat, bcm2711-rpi-4-b.dtb); the console is the PL011 on GPIO 14/15, 115200 baud");
    Ok(())
}

fn test() -> Result<(), String> {
    let qemu = qemu::ensure()?;
    artifacts::cargo(&["test", "--workspace"], &[])?;
    scenarios::qemu_test(&qemu, &[], None)
}

fn lint() -> Result<(), String> {
    artifacts::cargo(&["fmt", "--all", "--", "--check"], &[])?;
    artifacts::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
    for board in corevisor_boards::ALL {
        let dir = format!("target/xtask/clippy-{}", board.name);
        for package in ["kserv", "corevisor"] {
            artifacts::cargo(
                &[
                    "clippy",
                    "-p",
                    package,
                    "--target",
                    artifacts::TARGET,
                    "--no-default-features",
                    "--features",
                    board.name,
                    "--target-dir",
                    &dir,
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words_options_and_flags() {
        let args = Args::parse(["boot", "--variant", "raspi4b", "--gdb", "hvc-version"].map(String::from)).unwrap();
        assert_eq!(args.words, vec!["boot", "hvc-version"]);
        assert_eq!(args.value("variant"), Some("raspi4b"));
        assert!(args.flag("gdb") && !args.flag("hw"));
        assert!(Args::parse(["--board".to_string()]).is_err());
        assert!(Args::parse(["--board".into(), "pi5".into()]).unwrap().board().is_err());
    }
}

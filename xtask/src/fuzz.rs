//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/`, each for a bounded time, seeded from
//! the repository's sites, catalogs and frames and from every input that once crashed.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup::{cargo_bin, output, say};

pub const TARGETS: [&str; 3] = ["site", "catalog", "packet"];

/// The compiler cargo-fuzz drives: it needs nightly flags (sanitizer coverage, `-Z`).
struct Toolchain {
    cargo_prefix: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
    /// AddressSanitizer needs the runtime that only rustup's nightly ships.
    sanitizer: &'static str,
    description: String,
}

fn toolchain() -> Toolchain {
    if let Some(v) = output(Command::new("rustc").args(["+nightly", "--version"])) {
        return Toolchain {
            cargo_prefix: vec!["+nightly"],
            env: vec![],
            sanitizer: "address",
            description: format!("rustup {v} with AddressSanitizer"),
        };
    }
    Toolchain {
        cargo_prefix: vec![],
        env: vec![("RUSTC", "/usr/bin/rustc"), ("RUSTC_BOOTSTRAP", "1")],
        sanitizer: "none",
        description: "Debian rustc-web with RUSTC_BOOTSTRAP=1 (no sanitizer runtime: coverage only)".into(),
    }
}

fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_bin("cargo-fuzz").exists() || output(Command::new("cargo-fuzz").arg("--version")).is_some() {
        return Ok(());
    }
    say("installing cargo-fuzz 0.13.2 from crates.io (drives libFuzzer)");
    let status = Command::new("cargo")
        .args(["install", "--locked", "cargo-fuzz", "--version", "0.13.2"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed");
    }
    Ok(())
}

/// Where a target's seeds live in the repository.
fn seeds(target: &str) -> &'static str {
    match target {
        "site" => "policies/sites",
        "catalog" => "policies/catalog",
        _ => "fuzz/seeds/packet",
    }
}

/// Runs each target for `seconds`; a crash stops the run and names the input that caused it.
pub fn run(root: &Path, ebpf_object: &Path, seconds: u64, targets: &[String]) -> Result<()> {
    ensure_cargo_fuzz()?;
    let tc = toolchain();
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target {t:?}: the targets are {}", TARGETS.join(", "));
        }
        let corpus = root.join("fuzz/corpus").join(t);
        let artifacts = root.join("fuzz/artifacts").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        say(&format!("fuzzing {t} for {seconds} s with {}", tc.description));
        let mut cmd = Command::new("cargo");
        cmd.args(&tc.cargo_prefix).args(["fuzz", "run", "-O", "-s", tc.sanitizer, t]).arg(&corpus).arg(root.join(seeds(t)));
        let regressions = root.join("fuzz/regressions").join(t);
        if regressions.is_dir() {
            cmd.arg(&regressions);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-max_len=16384")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .current_dir(root)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("DATAPLANE_EBPF_OBJECT", ebpf_object)
            .envs(tc.env.iter().copied());
        let status = cmd.status().context("running cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {t} failed: the input is in {}; copy it to fuzz/regressions/{t}/ and fix the cause",
                artifacts.display()
            );
        }
    }
    Ok(())
}

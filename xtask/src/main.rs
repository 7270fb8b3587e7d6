//! `cargo xtask`: builds the eBPF objects and the controller, and runs the project's jobs.

mod fuzz;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use setup::say;

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run and test the XDP dataplane")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF objects (the product's and the bench's) and the `dataplane` binary (installs
    /// missing build tools).
    Build,
    /// Run every test, including those that load the program into the kernel (needs root).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt --check and clippy -D warnings on every crate (what `test` runs first).
    Lint,
    /// Cost per packet through BPF_PROG_TEST_RUN against an empty XDP program (needs root).
    Bench {
        /// A shorter run: a smaller synthetic site.
        #[arg(long)]
        quick: bool,
    },
    /// Run the cargo-fuzz targets (site, catalog, packet) for a bounded time each (needs root:
    /// the packet target compares the parser with the kernel's program).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// The Debian package: target/debian/dataplane_VERSION_ARCH.deb (binary, catalogs, example
    /// sites, systemd unit, Grafana dashboard, man pages, shell completions).
    Package,
    /// Run `dataplane` as root with ARGS; with no ARGS, the built-in lab.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("[xtask] error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Lint => {
            build_ebpf()?;
            lint()
        }
        Cmd::Build => {
            build_ebpf()?;
            cargo(&["build", "--release", "-p", "dataplane-user"])
        }
        Cmd::Package => package().map(|_| ()),
        Cmd::Test { args } => test(&args),
        Cmd::Bench { quick } => {
            setup::check_kernel()?;
            setup::apt_install(
                &["nftables", "iptables"],
                "nft and iptables-legacy, the nftables and iptables comparisons of the packet-rate bench",
            )?;
            setup::apt_install(
                &["xdp-tools", "bpftool"],
                "xdp-filter, the XDP peer the cost bench compares with, and bpftool, which times it",
            )?;
            build_ebpf()?;
            // The packet-rate bench asks the release binary for the nftables export.
            cargo(&["build", "--release", "-p", "dataplane-user"])?;
            for bin in ["bench", "rate", "forward"] {
                let mut args = vec!["run", "--release", "-q", "-p", "dataplane-tests", "--bin", bin, "--"];
                if quick {
                    args.push("--quick");
                }
                cargo(&args)?;
            }
            Ok(())
        }
        Cmd::Fuzz { time, targets } => {
            setup::check_kernel()?;
            build_ebpf()?;
            let targets = if targets.is_empty() { all_fuzz_targets() } else { targets };
            fuzz::run(&workspace(), &ebpf_object(), time, &targets)
        }
        Cmd::Run { args } => {
            setup::check_kernel()?;
            build_ebpf()?;
            cargo(&["build", "--release", "-p", "dataplane-user"])?;
            let args = if args.is_empty() { vec!["lab".to_string()] } else { args };
            let bin = workspace().join("target/release/dataplane");
            check(Command::new(&bin).args(&args).status(), &format!("dataplane {}", args.join(" ")))
        }
    }
}

/// Builds the eBPF objects, the release binary and the Debian package; returns the package's path.
fn package() -> Result<PathBuf> {
    setup::apt_install(&["binutils"], "strip, which drops the debug info from the packaged binary")?;
    build_ebpf()?;
    cargo(&["build", "--release", "-p", "dataplane-user"])?;
    package::build(&workspace(), &workspace().join("target/release/dataplane"))
}

fn test(args: &[String]) -> Result<()> {
    // Kernel tests are never skipped: without root, BTF or bpffs they cannot mean anything.
    setup::check_kernel()?;
    setup::apt_install(&["iproute2"], "network namespaces and veth pairs for the kernel tests")?;
    setup::apt_install(&["sip-tester"], "sipp, the real SIP client of the end-to-end test and the calls test")?;
    setup::apt_install(&["coturn"], "turnserver and turnutils, the TURN relay of the lab and of the calls test")?;
    setup::apt_install(&["prometheus"], "promtool for the metrics test, the Prometheus server the prometheus test runs")?;
    setup::apt_install(&["nftables"], "nft, for the export's differential test against the XDP program")?;
    setup::apt_install(&["systemd", "python3-venv"], "systemd-analyze and a venv for kubernetes-validate, which check deploy/")?;
    setup::apt_install(&["man-db"], "man, which the package test runs on an installed page")?;
    build_ebpf()?;
    let started = Instant::now();
    lint()?;
    // The package test (dataplane-user/tests/package.rs) unpacks and runs the package built here.
    package()?;
    let mut unit = vec!["test", "--workspace", "--exclude", "dataplane-tests", "--"];
    unit.extend(args.iter().map(String::as_str));
    cargo(&unit)?;
    // The end-to-end tests run the real binary; the fault tests one built with the fault points
    // (`--features fault`), kept aside as dataplane-fault. The last build puts the production
    // binary back at target/debug/dataplane (cargo keeps both builds, so it is only a copy).
    cargo(&["build", "-p", "dataplane-user", "--features", "fault"])?;
    let debug = workspace().join("target/debug");
    std::fs::copy(debug.join("dataplane"), debug.join("dataplane-fault")).context("keeping the fault build aside")?;
    cargo(&["build", "-p", "dataplane-user"])?;
    // Kernel tests share interfaces and pinned paths: one at a time.
    let mut kernel = vec!["test", "-p", "dataplane-tests", "--", "--test-threads=1"];
    kernel.extend(args.iter().map(String::as_str));
    cargo(&kernel)?;
    // A short run of each fuzz target; `cargo xtask fuzz --time N` runs longer.
    fuzz::run(&workspace(), &ebpf_object(), CI_FUZZ_SECONDS, &all_fuzz_targets())?;
    say(&format!("all tests passed in {:.0?}", started.elapsed()));
    Ok(())
}

/// Formatting of every crate (rustfmt.toml) and clippy with warnings as errors on every crate:
/// the host crates with the host toolchain, the eBPF crate with the compiler that builds it.
fn lint() -> Result<()> {
    say("lint: cargo fmt --check (all crates), cargo clippy -D warnings (host crates, then the eBPF crate)");
    if !Command::new("cargo").args(["fmt", "--version"]).output().is_ok_and(|o| o.status.success()) {
        check(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]).status(), "rustup component add")?;
    }
    cargo(&["fmt", "--all", "--check"])?;
    for dir in ["dataplane-ebpf", "fuzz"] {
        let manifest = workspace().join(dir).join("Cargo.toml");
        cargo(&["fmt", "--check", "--manifest-path", manifest.to_str().expect("a UTF-8 path")])?;
    }
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    let toolchain = setup::bpf_toolchain()?;
    match setup::bpf_clippy(&toolchain)? {
        Some(mut cmd) => {
            cmd.args(["--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--", "-D", "warnings"]);
            check(ebpf_cargo(cmd, &toolchain).status(), "clippy on the eBPF crate")
        }
        None => {
            say("lint: the rustup nightly has no clippy component: the eBPF crate is not linted");
            Ok(())
        }
    }
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const CI_FUZZ_SECONDS: u64 = 20;

fn all_fuzz_targets() -> Vec<String> {
    fuzz::TARGETS.iter().map(|t| t.to_string()).collect()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// The eBPF object the controller embeds (see dataplane-user/build.rs): only what enforces.
fn ebpf_object() -> PathBuf {
    workspace().join("dataplane-ebpf/target/bpfel-unknown-none/release/dataplane")
}

/// The bench's eBPF object (empty and floor programs, live-frames injectors, count-and-drop and
/// count-and-pass), which only the benches and tests load (tests/src/bench_object.rs).
fn bench_object() -> PathBuf {
    workspace().join("dataplane-ebpf/target/bpfel-unknown-none/release/dataplane-bench")
}

fn build_ebpf() -> Result<()> {
    let toolchain = setup::bpf_toolchain()?;
    setup::ensure_bpf_linker()?;
    say(&format!("building the eBPF objects with {}", toolchain.description));
    let mut cmd = Command::new("cargo");
    cmd.args(&toolchain.cargo_prefix).args(["build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"]);
    check(ebpf_cargo(cmd, &toolchain).status(), "building the eBPF objects")?;
    for object in [ebpf_object(), bench_object()] {
        if !object.exists() {
            bail!("the eBPF build did not produce {}", object.display());
        }
    }
    Ok(())
}

/// `cmd` (a cargo run) in the eBPF crate with the toolchain's environment.
fn ebpf_cargo(mut cmd: Command, toolchain: &setup::BpfToolchain) -> Command {
    cmd.current_dir(workspace().join("dataplane-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .envs(toolchain.env.iter().map(|(k, v)| (k, v)));
    // bpf-linker may have just been installed into cargo's bin directory.
    let home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let mut paths = vec![PathBuf::from(home).join("bin")];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    if let Ok(path) = std::env::join_paths(paths) {
        cmd.env("PATH", path);
    }
    cmd
}

/// Runs host cargo in the workspace with the eBPF object to embed and the bench's object.
fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace())
        .env("DATAPLANE_EBPF_OBJECT", ebpf_object())
        .env("DATAPLANE_BENCH_OBJECT", bench_object())
        .env("DATAPLANE_BIN", workspace().join("target/debug/dataplane"))
        .env("DATAPLANE_FAULT_BIN", workspace().join("target/debug/dataplane-fault"))
        .status();
    check(status, &format!("cargo {}", args.join(" ")))
}

fn check(status: std::io::Result<ExitStatus>, what: &str) -> Result<()> {
    let status = status.with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

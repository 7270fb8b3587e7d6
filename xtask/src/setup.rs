//! Finds, and where missing installs, what building and testing the eBPF program needs:
//! a compiler with the `core` library source, bpf-linker, and a few Debian packages.
//! Every install says what it installs and why; a second run finds everything and does nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Once,
};

use anyhow::{bail, Context, Result};

/// How to run cargo for the eBPF crate (`-Z build-std=core` needs the core library's source).
pub struct BpfToolchain {
    /// Extra arguments before `build` (e.g. `+nightly`).
    pub cargo_prefix: Vec<String>,
    /// Debian's rustc-web (its clippy is the package rust-web-clippy), else a rustup nightly.
    pub debian: bool,
    /// Environment for that cargo run.
    pub env: Vec<(String, String)>,
    pub description: String,
}

pub fn say(msg: &str) {
    eprintln!("[xtask] {msg}");
}

pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn has_core_source(sysroot: &str) -> bool {
    Path::new(sysroot).join("lib/rustlib/src/rust/library/core/Cargo.toml").exists()
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).as_deref() == Some("0")
}

/// `apt-get install` the packages that are not installed yet, after one `apt-get update`.
pub fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p])).is_none_or(|s| !s.ends_with("installed")))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("{} must be installed ({why}); run as root or install them with apt-get", missing.join(" "));
    }
    static UPDATE: Once = Once::new();
    UPDATE.call_once(|| {
        say("apt-get update (once, before installing packages)");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    });
    say(&format!("installing {} ({why})", missing.join(" ")));
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

/// A rustup nightly with rust-src if there is one, else Debian's rustc-web with its source
/// (installed when missing), driven with RUSTC_BOOTSTRAP=1.
pub fn bpf_toolchain() -> Result<BpfToolchain> {
    if let Some(sysroot) = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])) {
        if has_core_source(&sysroot) {
            return Ok(BpfToolchain {
                cargo_prefix: vec!["+nightly".into()],
                debian: false,
                env: vec![],
                description: format!("rustup nightly ({sysroot})"),
            });
        }
    }
    let debian = PathBuf::from("/usr/bin/rustc");
    let debian_ok = || output(Command::new(&debian).args(["--print", "sysroot"])).is_some_and(|s| has_core_source(&s));
    if !debian_ok() {
        apt_install(
            &["rustc-web", "rust-web-src"],
            "a Rust compiler with the core library source, for -Z build-std=core on the BPF target",
        )?;
        if !debian_ok() {
            bail!("rustc-web is installed but /usr/bin/rustc has no core source under its sysroot");
        }
    }
    let version = output(Command::new(&debian).arg("--version")).unwrap_or_default();
    Ok(BpfToolchain {
        cargo_prefix: vec![],
        debian: true,
        env: vec![("RUSTC".into(), debian.display().to_string()), ("RUSTC_BOOTSTRAP".into(), "1".into())],
        description: format!("{version} (Debian rustc-web, RUSTC_BOOTSTRAP=1)"),
    })
}

pub fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin").join(name)
}

/// bpf-linker on PATH or in cargo's bin directory; built from crates.io against LLVM 22 if missing.
pub fn ensure_bpf_linker() -> Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_some() || cargo_bin("bpf-linker").exists() {
        return Ok(());
    }
    apt_install(&["llvm-22-dev", "libpolly-22-dev", "zlib1g-dev", "libzstd-dev"], "LLVM 22 to build bpf-linker against")?;
    say("installing bpf-linker 0.13.0 from crates.io against LLVM 22 (links the BPF object; takes several minutes once)");
    let status = Command::new("cargo")
        .args(["install", "--locked", "bpf-linker", "--version", "0.13.0"])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed");
    }
    Ok(())
}

/// What loading a program into the kernel needs: Linux, root, BTF, bpffs.
pub fn check_kernel() -> Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("the XDP dataplane needs Linux");
    }
    if !is_root() {
        bail!("loading XDP programs needs root (CAP_BPF, CAP_NET_ADMIN): run again as root, e.g. `sudo -E cargo xtask ...`");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF=y");
    }
    let mounted = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounted.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf")) {
        say("mounting bpffs at /sys/fs/bpf (maps are pinned there)");
        let status = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status()?;
        if !status.success() {
            bail!("could not mount bpffs at /sys/fs/bpf");
        }
    }
    Ok(())
}

/// Clippy for the eBPF crate with the compiler that builds it: Debian's cargo-clippy of the
/// same version as rustc-web (installed when missing), or the nightly's own. None: the nightly
/// has no clippy component.
pub fn bpf_clippy(t: &BpfToolchain) -> Result<Option<Command>> {
    if t.debian {
        apt_install(&["rust-web-clippy"], "clippy of the rustc-web version, for the eBPF crate")?;
        let mut cmd = Command::new("/usr/bin/cargo-clippy");
        cmd.arg("clippy");
        return Ok(Some(cmd));
    }
    if output(Command::new("cargo").args(["+nightly", "clippy", "--version"])).is_none() {
        return Ok(None);
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "clippy"]);
    Ok(Some(cmd))
}

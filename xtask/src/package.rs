//! `cargo xtask package`: the Debian package, `target/debian/dataplane_VERSION_ARCH.deb`, built
//! with dpkg-deb from a staged tree: the release binary (the eBPF programs embedded), the catalogs
//! where the binary looks for them without flags, the example sites, the systemd unit, the Grafana
//! dashboard, and the man pages and shell completions the binary writes from its own clap
//! definitions (`dataplane generate`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::setup::{output, say};

/// The package's name, and the name of the binary, the unit and the data directories.
const NAME: &str = "dataplane";

/// Where each installed file comes from, relative to the workspace and the package root.
const FILES: [(&str, &str); 2] = [
    ("deploy/dataplane.service", "usr/lib/systemd/system/dataplane.service"),
    ("deploy/grafana/dataplane.json", "usr/share/dataplane/grafana/dataplane.json"),
];

/// usr/share/doc/dataplane/copyright (the workspace's `license`).
const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
                         Upstream-Name: dataplane\n\n\
                         Files: *\n\
                         Copyright: the dataplane authors\n\
                         License: MIT or Apache-2.0\n";

/// Directories whose YAML files are installed, each into its own directory.
const TREES: [(&str, &str); 2] =
    [("policies/catalog", "usr/share/dataplane/catalog"), ("policies/sites", "usr/share/doc/dataplane/examples")];

/// The completions `dataplane generate` writes, and where each shell looks for them.
const COMPLETIONS: [(&str, &str); 3] = [
    ("dataplane.bash", "usr/share/bash-completion/completions/dataplane"),
    ("_dataplane", "usr/share/zsh/vendor-completions/_dataplane"),
    ("dataplane.fish", "usr/share/fish/vendor_completions.d/dataplane.fish"),
];

/// `systemctl daemon-reload` after the unit is installed, changed or removed; the service is
/// neither enabled nor started: it needs a site first. Nothing when dpkg installs into another
/// root (`dpkg --root`, which sets DPKG_ROOT): that root's systemd is not this one.
const MAINTAINER_SCRIPT: &str =
    "#!/bin/sh\nset -e\nif [ -z \"$DPKG_ROOT\" ] && [ -d /run/systemd/system ]; then\n    systemctl daemon-reload >/dev/null || true\nfi\n";

/// The path of the package `build` writes for this version and `arch`.
pub fn deb_path(workspace: &Path, arch: &str) -> PathBuf {
    workspace.join("target/debian").join(format!("{NAME}_{}_{arch}.deb", env!("CARGO_PKG_VERSION")))
}

/// The Debian architecture of this host (the binary is built for it).
pub fn arch() -> Result<String> {
    output(Command::new("dpkg").arg("--print-architecture")).context("dpkg --print-architecture (is this Debian?)")
}

/// Stages and builds the package from the release binary `binary`; returns its path.
pub fn build(workspace: &Path, binary: &Path) -> Result<PathBuf> {
    let arch = arch()?;
    let deb = deb_path(workspace, &arch);
    let stage = deb.with_extension("");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let bin = stage.join("usr/bin/dataplane");
    mkdir(bin.parent().expect("usr/bin"))?;
    // The release profile keeps line tables for backtraces in development; the package keeps the
    // symbols only.
    run(Command::new("strip").arg("--strip-debug").arg("-o").arg(&bin).arg(binary), "strip --strip-debug")?;
    for (from, to) in TREES {
        for file in yaml_files(&workspace.join(from))? {
            install(&file, &stage.join(to).join(file.file_name().expect("a file name")), 0o644)?;
        }
    }
    for (from, to) in FILES {
        install(&workspace.join(from), &stage.join(to), 0o644)?;
    }
    fs::write(stage.join("usr/share/doc/dataplane/copyright"), COPYRIGHT)?;
    generated(&bin, &stage)?;
    mkdir(&stage.join("etc/dataplane"))?;
    control(&stage, &arch)?;
    mkdir(deb.parent().expect("target/debian"))?;
    run(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&stage).arg(&deb), "dpkg-deb --build")?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    say(&format!("built {}", deb.display()));
    Ok(deb)
}

/// The man pages (gzipped, as Debian installs them) and completions the staged binary writes.
fn generated(bin: &Path, stage: &Path) -> Result<()> {
    let out = stage.parent().expect("target/debian").join("generated");
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    run(Command::new(bin).arg("generate").arg("--out").arg(&out), "dataplane generate")?;
    let man = stage.join("usr/share/man/man1");
    mkdir(&man)?;
    let mut pages = 0;
    for page in fs::read_dir(out.join("man1"))? {
        let page = page?.path();
        let dest = man.join(format!("{}.gz", page.file_name().and_then(|n| n.to_str()).expect("a UTF-8 name")));
        let gz = Command::new("gzip").args(["-9", "-n", "-c"]).arg(&page).output().context("starting gzip")?;
        if !gz.status.success() {
            bail!("gzip {} failed", page.display());
        }
        fs::write(&dest, gz.stdout)?;
        pages += 1;
    }
    if pages < 2 {
        bail!("dataplane generate wrote {pages} man pages");
    }
    for (from, to) in COMPLETIONS {
        install(&out.join("completions").join(from), &stage.join(to), 0o644)?;
    }
    fs::remove_dir_all(&out)?;
    Ok(())
}

/// DEBIAN/control and the maintainer scripts.
fn control(stage: &Path, arch: &str) -> Result<()> {
    let debian = stage.join("DEBIAN");
    mkdir(&debian)?;
    let installed_kib = du_kib(stage)?;
    let control = format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: dataplane maintainers <dataplane@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: libc6, libgcc-s1\n\
         Recommends: iproute2\n\
         Section: net\n\
         Priority: optional\n\
         Description: vendor-documented firewall policy for collaboration servers, enforced in XDP\n \
         Cisco documents which ports its collaboration servers use (Expressway / VCS, Meeting\n \
         Server, MeetingPlace, Unity). dataplane turns those tables into an allowlist and\n \
         enforces it on the host or gateway in front of the servers in XDP, with a counter on\n \
         every documented flow.\n \
         .\n \
         Start with `dataplane init`; the catalogs are in /usr/share/dataplane/catalog, example\n \
         sites in /usr/share/doc/dataplane/examples, the unit is dataplane.service.\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    fs::write(debian.join("control"), control)?;
    for script in ["postinst", "postrm"] {
        let path = debian.join(script);
        fs::write(&path, MAINTAINER_SCRIPT)?;
        chmod(&path, 0o755)?;
    }
    Ok(())
}

/// The size of the staged files in KiB, as dpkg expects `Installed-Size`.
fn du_kib(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        bytes += if meta.is_dir() { du_kib(&e.path())? * 1024 } else { meta.len() };
    }
    Ok(bytes.div_ceil(1024))
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("no YAML file in {}", dir.display());
    }
    Ok(out)
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    mkdir(to.parent().expect("a parent directory"))?;
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    chmod(to, mode)
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

//! The Debian package `cargo xtask package` builds (`cargo xtask test` builds it before the
//! tests): installed by dpkg into a throwaway root, its binary runs with no flags and finds the
//! installed catalogs, `man` reads an installed page, its unit passes `systemd-analyze verify`,
//! and dpkg removes it again.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[track_caller]
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// target/debian/dataplane_VERSION_ARCH.deb for this version and host.
fn deb() -> PathBuf {
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
    let deb = target.join("debian").join(format!("dataplane_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim()));
    assert!(deb.exists(), "{} is missing: run `cargo xtask package` first (`cargo xtask test` does)", deb.display());
    deb
}

/// The package installed by dpkg into a new root (`dpkg --root`, with a database of its own; the
/// maintainer scripts run outside a chroot and leave the host alone), deleted on drop.
struct Root(PathBuf);

impl Root {
    /// `tag` tells apart the roots of tests running at the same time.
    fn install(deb: &Path, tag: &str) -> Root {
        let dir = std::env::temp_dir().join(format!("dataplane-package-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
        let root = Root(dir);
        // The root has no libc6 to depend on: the binary runs with the host's.
        ok(root.dpkg(&["--force-depends", "--install"]).arg(deb));
        root
    }

    /// dpkg on this root.
    fn dpkg(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", self.0.display()))
            .args(["--log=/dev/null", "--force-script-chrootless", "--force-not-root"])
            .args(args);
        cmd
    }

    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }

    /// The installed binary, run from the root (no ./policies there) with no catalog setting.
    fn dataplane(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.path("/usr/bin/dataplane"));
        cmd.args(args).current_dir(&self.0).env_remove("DATAPLANE_CATALOG_DIR");
        cmd
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn yaml_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_package_installs_what_it_says() {
    let deb = deb();
    let fields = ok(Command::new("dpkg-deb").args(["--field"]).arg(&deb).args(["Package", "Version"]));
    assert_eq!(fields, format!("Package: dataplane\nVersion: {}\n", env!("CARGO_PKG_VERSION")));
    let root = Root::install(&deb, "contents");
    assert_eq!(yaml_names(&root.path("/usr/share/dataplane/catalog")), yaml_names(&workspace().join("policies/catalog")));
    assert_eq!(yaml_names(&root.path("/usr/share/doc/dataplane/examples")), yaml_names(&workspace().join("policies/sites")));
    for file in [
        "/usr/lib/systemd/system/dataplane.service",
        "/usr/share/dataplane/grafana/dataplane.json",
        "/usr/share/doc/dataplane/copyright",
        "/usr/share/man/man1/dataplane.1.gz",
        "/usr/share/man/man1/dataplane-run.1.gz",
        "/usr/share/bash-completion/completions/dataplane",
        "/usr/share/zsh/vendor-completions/_dataplane",
        "/usr/share/fish/vendor_completions.d/dataplane.fish",
    ] {
        assert!(root.path(file).is_file(), "{file} is not in the package");
    }
    // Every visible subcommand has its page; the hidden `generate` has none.
    let help = ok(&mut root.dataplane(&["--help"]));
    for sub in ["catalogs", "compile", "run", "init", "suggest", "diff", "lab"] {
        assert!(help.contains(&format!("  {sub} ")), "{sub} in --help:\n{help}");
        assert!(root.path(&format!("/usr/share/man/man1/dataplane-{sub}.1.gz")).is_file(), "no man page for {sub}");
    }
    assert!(!root.path("/usr/share/man/man1/dataplane-generate.1.gz").exists());
    let bash = std::fs::read_to_string(root.path("/usr/share/bash-completion/completions/dataplane")).unwrap();
    assert!(bash.contains("--protect") && bash.contains("--site"), "the bash completion knows the flags");
    // dpkg knows every file, and removes them all.
    let listed = ok(&mut root.dpkg(&["--listfiles", "dataplane"]));
    assert!(listed.lines().any(|l| l == "/usr/share/dataplane/catalog/vcs-x8.2.yaml"), "{listed}");
    ok(&mut root.dpkg(&["--remove", "dataplane"]));
    assert!(!root.path("/usr/bin/dataplane").exists() && !root.path("/usr/share/dataplane").exists());
}

/// With no flag and no environment, the installed binary reads the installed catalogs (found next
/// to it: `<bin>/../share/dataplane/catalog`, which is /usr/share/dataplane/catalog once installed);
/// DATAPLANE_CATALOG_DIR still overrides.
#[test]
fn the_installed_binary_finds_its_catalogs() {
    let root = Root::install(&deb(), "catalogs");
    let installed = root.path("/usr/share/dataplane/catalog");
    let listed: serde_json::Value = serde_json::from_str(&ok(&mut root.dataplane(&["catalogs", "--json"]))).unwrap();
    let paths: Vec<&str> = listed.as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), yaml_names(&installed).len(), "{listed}");
    for p in &paths {
        assert!(Path::new(p).starts_with(&installed), "{p} is not under {}", installed.display());
    }
    // An example site compiles as installed, and `init` starts one, both without flags.
    let example = root.path("/usr/share/doc/dataplane/examples/vcs-expressway.yaml");
    ok(&mut root.dataplane(&["compile", "--site", example.to_str().unwrap()]));
    let site = ok(&mut root.dataplane(&["init", "--catalog", "vcs-x8.2", "--protect", "vcs-expressway"]));
    assert!(site.contains("vcs-expressway: [REPLACE-ME]"), "{site}");

    let elsewhere = std::env::temp_dir().join(format!("dataplane-package-catalogs-{}", std::process::id()));
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(installed.join("unity.yaml"), elsewhere.join("unity.yaml")).unwrap();
    let listed = ok(root.dataplane(&["catalogs", "--json"]).env("DATAPLANE_CATALOG_DIR", &elsewhere));
    let _ = std::fs::remove_dir_all(&elsewhere);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["name"], "unity");
}

/// `man` reads an installed page (the one of `init`, with its flags).
#[test]
fn man_reads_an_installed_page() {
    let root = Root::install(&deb(), "man");
    let page = root.path("/usr/share/man/man1/dataplane-init.1.gz");
    let out = ok(Command::new("man").args(["-P", "cat", "-l"]).arg(&page).env("MANWIDTH", "100"));
    for want in ["dataplane-init", "SYNOPSIS", "--protect", "--force", "REPLACE-ME"] {
        assert!(out.contains(want), "{want} in man dataplane-init:\n{out}");
    }
}

/// `systemd-analyze verify` of the installed unit, its ExecStart pointed at the installed binary
/// of the root (verify checks that the command exists).
#[test]
fn the_installed_unit_verifies() {
    let root = Root::install(&deb(), "unit");
    let unit = std::fs::read_to_string(root.path("/usr/lib/systemd/system/dataplane.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/dataplane run "), "{unit}");
    let dir = root.path("/tmp-verify");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dataplane.service");
    let bin = root.path("/usr/bin/dataplane");
    std::fs::write(&path, unit.replace("/usr/bin/dataplane", bin.to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze is missing: install systemd (cargo xtask test does)");
    // Unknown keys and bad values are warnings (exit 0): any output is a problem.
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify dataplane.service:\n{}", text(&out));
}

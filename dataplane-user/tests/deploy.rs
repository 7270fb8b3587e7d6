//! The deployment files, checked offline by the tools that read them: the DaemonSet against the
//! Kubernetes API schemas (`kubernetes-validate`, strict: unknown fields fail), the systemd unit
//! with `systemd-analyze verify`. `cargo xtask test` installs systemd and python3-venv; the
//! validator is installed here, once, into a virtual environment under target/.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The validator's release: its schemas go from Kubernetes 1.25 to 1.37.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest and the newest Kubernetes the DaemonSet is checked against.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What pip prints when it cannot reach the package index at all.
fn is_network_failure(pip_output: &str) -> bool {
    [
        "NewConnectionError",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "ConnectTimeoutError",
        "ProxyError",
    ]
    .iter()
    .any(|s| pip_output.contains(s))
}

/// The `kubernetes-validate` executable, installed into target/deploy-tools on first use; None
/// (the test is skipped, saying why) only when the package index cannot be reached.
fn kubernetes_validate() -> Option<PathBuf> {
    let venv = target_dir().join("deploy-tools");
    let exe = venv.join("bin/kubernetes-validate");
    let stamp = venv.join(format!("installed-{KUBERNETES_VALIDATE}"));
    if stamp.exists() && exe.exists() {
        return Some(exe);
    }
    // Debian's python3 (python3-venv), not whatever python3 comes first on PATH.
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let out = run(Command::new(python).args(["-m", "venv", "--clear"]).arg(&venv));
    assert!(out.status.success(), "{python} -m venv {} failed (install python3-venv):\n{}", venv.display(), text(&out));
    let out = run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--retries",
        "2",
        "--timeout",
        "30",
        KUBERNETES_VALIDATE,
    ]));
    if !out.status.success() {
        let log = text(&out);
        if is_network_failure(&log) {
            eprintln!("SKIPPED: the DaemonSet is not validated: pip could not reach the package index to install {KUBERNETES_VALIDATE}:\n{log}");
            return None;
        }
        panic!("pip install {KUBERNETES_VALIDATE} failed:\n{log}");
    }
    std::fs::write(&stamp, "").unwrap();
    Some(exe)
}

fn validate(exe: &Path, manifest: &Path, version: &str) -> Output {
    run(Command::new(exe).args(["--strict", "--quiet", "--kubernetes-version", version]).arg(manifest))
}

#[test]
fn daemonset_validates_against_the_kubernetes_schemas() {
    let Some(exe) = kubernetes_validate() else { return };
    let manifest = root().join("deploy/daemonset.yaml");
    for version in KUBERNETES_VERSIONS {
        let out = validate(&exe, &manifest, version);
        assert!(out.status.success(), "deploy/daemonset.yaml against Kubernetes {version}:\n{}", text(&out));
        // --quiet prints only warnings and failures.
        assert_eq!(text(&out).trim(), "", "deploy/daemonset.yaml against Kubernetes {version}");
    }
    // The validator does read the DaemonSet: a misspelt field fails it.
    let original = std::fs::read_to_string(&manifest).unwrap();
    assert!(original.contains("hostNetwork: true"));
    let bad = std::env::temp_dir().join(format!("dataplane-daemonset-{}.yaml", std::process::id()));
    std::fs::write(&bad, original.replace("hostNetwork: true", "hostNetwrok: true")).unwrap();
    let out = validate(&exe, &bad, KUBERNETES_VERSIONS[1]);
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success() && text(&out).contains("hostNetwrok"), "{}", text(&out));
}

/// `systemd-analyze verify` of `unit` (its text) under its own name, with ExecStart pointing at
/// the dataplane binary cargo built (verify checks that the command exists): (success, output).
fn verify_unit(unit: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("dataplane-unit-{}-{}", std::process::id(), unit.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dataplane.service");
    std::fs::write(&path, unit.replace("/usr/bin/dataplane", env!("CARGO_BIN_EXE_dataplane"))).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("systemd-analyze is missing: install systemd (cargo xtask test does)");
    (out.status.success(), text(&out))
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/dataplane.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/dataplane run "));
    let (ok, log) = verify_unit(&unit);
    // Unknown keys and bad values are warnings (exit 0): any output is a problem.
    assert!(ok && log.trim().is_empty(), "systemd-analyze verify deploy/dataplane.service:\n{log}");
    // It does check the keys: a misspelt one is reported.
    let (_, log) = verify_unit(&unit.replace("ProtectHome=yes", "ProtectHom=yes"));
    assert!(log.contains("Unknown key") && log.contains("ProtectHom"), "{log}");
}

//! Bad input to `dataplane run`, with the real binary: every case exits non-zero with a clear
//! error and attaches nothing (no XDP program on the interface, nothing pinned), or, where the
//! host lacks something the daemon can do without (kernel BTF) or provide itself (bpffs), it
//! says so and enforces.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use dataplane::lab::netns::Lab;
use dataplane_tests::daemon::{dataplane_bin, root};

struct Rig {
    lab: Lab,
    dir: PathBuf,
}

impl Rig {
    fn new(tag: &str) -> Self {
        let lab = Lab::new(tag, &["10.203.0.1/24"], &["10.203.0.2/24"]).unwrap();
        let dir = std::env::temp_dir().join(format!("dataplane-bad-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Rig { lab, dir }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `dataplane ARGS` in the server namespace through `wrapper` (a command prefix), bounded in
    /// time; `env` adds variables.
    fn command(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg("20")
            .args(wrapper)
            .arg("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.lab.server))
            .arg(dataplane_bin())
            .args(args)
            .env("DATAPLANE_CATALOG_DIR", root().join("policies/catalog"))
            .envs(env.iter().copied());
        cmd
    }

    fn dataplane(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(wrapper, args, env).output().unwrap()
    }

    /// A run that must fail: its error, after checking that it attached and pinned nothing.
    fn refused(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.dataplane(wrapper, args, env);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded: {err}");
        assert_ne!(out.status.code(), Some(124), "{args:?} hung: {err}");
        self.assert_nothing_attached(&format!("{args:?}"));
        err
    }

    /// A run that must come up: reads its output until it enforces, stops it (SIGTERM), and
    /// returns whether it enforced, and its log.
    fn enforces(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        use std::io::{BufRead, BufReader, Read};
        let mut child = self.command(wrapper, args, env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let enforcing =
            BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok).any(|l| l.contains(": enforcing"));
        // `timeout` passes the signal on to the daemon.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        (enforcing && status.success(), err)
    }

    fn assert_nothing_attached(&self, what: &str) {
        let link = Command::new("ip").args(["-n", &self.lab.server, "link", "show", "veth-s"]).output().unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(!link.contains("xdp"), "{what}: an XDP program is attached: {link}");
        assert!(!Path::new("/sys/fs/bpf/dataplane").exists(), "{what}: something is pinned");
    }

    fn site(&self) -> String {
        root().join("tests/sites/e2e.yaml").display().to_string()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command prefix: a private mount namespace in which `script` runs before the command.
fn private_mounts(script: &str) -> Vec<String> {
    let script = format!("{script} && exec \"$@\"");
    ["unshare", "-m", "--propagation", "private", "sh", "-c", &script, "sh"].map(String::from).to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn run_args<'a>(site: &'a str, iface: &'a str) -> Vec<&'a str> {
    vec!["run", "--site", site, "--iface", iface]
}

#[test]
fn missing_and_malformed_site_and_catalog_files_are_refused() {
    let rig = Rig::new("dpt-bi");
    let missing = rig.dir.join("no-such-site.yaml").display().to_string();
    let err = rig.refused(&[], &run_args(&missing, "veth-s"), &[]);
    assert!(err.contains("reading site") && err.contains("no-such-site.yaml"), "{err}");

    let broken = rig.file("broken.yaml", "name: broken\ncatalogs: [vcs-x8.2\nroles: {}\n").display().to_string();
    let err = rig.refused(&[], &run_args(&broken, "veth-s"), &[]);
    assert!(err.contains("broken.yaml:"), "names the file and line: {err}");

    let not_a_site = rig.file("list.yaml", "- just\n- a list\n").display().to_string();
    let err = rig.refused(&[], &run_args(&not_a_site, "veth-s"), &[]);
    assert!(err.contains("list.yaml"), "{err}");

    // The catalog directory: missing, and holding a malformed catalog.
    let err = rig.refused(&[], &run_args(&rig.site(), "veth-s"), &[("DATAPLANE_CATALOG_DIR", "/nonexistent/catalogs")]);
    assert!(err.contains("/nonexistent/catalogs"), "{err}");
    let cat = rig.dir.join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    std::fs::write(cat.join("vcs-x8.2.yaml"), "name: vcs-x8.2\nflows: [\n").unwrap();
    let err = rig.refused(&[], &run_args(&rig.site(), "veth-s"), &[("DATAPLANE_CATALOG_DIR", cat.to_str().unwrap())]);
    assert!(err.contains("vcs-x8.2.yaml:"), "names the catalog file: {err}");
}

#[test]
fn unknown_flags_missing_interfaces_and_no_root_are_refused() {
    let rig = Rig::new("dpt-bf");
    let site = rig.site();
    let out = rig.dataplane(&[], &["run", "--site", &site, "--iface", "veth-s", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    rig.assert_nothing_attached("unknown flag");

    let err = rig.refused(&[], &["run", "--site", &site], &[]);
    assert!(err.contains("--iface"), "the interface is required: {err}");

    let err = rig.refused(&[], &run_args(&site, "nosuch0"), &[]);
    assert!(err.contains("nosuch0") && err.contains("no interface"), "{err}");
    // One good interface and one missing: nothing is attached to the good one either.
    let err = rig.refused(&[], &["run", "--site", &site, "--iface", "veth-s", "--iface", "nosuch0"], &[]);
    assert!(err.contains("nosuch0"), "{err}");

    // Not root (in the namespace, then without privileges): refused before anything is loaded.
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", rig.lab.server))
        .args(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(dataplane_bin())
        .args(run_args(&site, "veth-s"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("as root"), "{err}");
    rig.assert_nothing_attached("not root");
}

#[test]
fn no_bpffs_is_mounted_or_refused_clearly() {
    let rig = Rig::new("dpt-bb");
    let site = rig.site();
    // A private mount namespace without bpffs: the daemon mounts it, says so, and enforces.
    let unmounted = private_mounts("umount /sys/fs/bpf 2>/dev/null; true");
    let (enforced, err) = rig.enforces(&strs(&unmounted), &run_args(&site, "veth-s"), &[("RUST_LOG", "info")]);
    assert!(enforced, "{err}");
    assert!(err.contains("mounting bpffs at /sys/fs/bpf"), "says what it does: {err}");
    rig.assert_nothing_attached("stopped");
    // Nowhere to mount it: refused, and nothing attached.
    let hidden = private_mounts("umount /sys/fs/bpf 2>/dev/null; mount -t tmpfs none /sys/fs");
    let err = rig.refused(&strs(&hidden), &run_args(&site, "veth-s"), &[]);
    assert!(err.contains("could not mount bpffs"), "{err}");
}

/// The program uses no CO-RE relocation, so it needs no kernel BTF: without it (an empty file
/// over /sys/kernel/btf/vmlinux in a private mount namespace) the daemon still enforces.
#[test]
fn no_kernel_btf_is_not_needed() {
    let rig = Rig::new("dpt-bt");
    let site = rig.site();
    let empty = rig.file("empty-btf", "");
    let no_btf = private_mounts(&format!("mount --bind {} /sys/kernel/btf/vmlinux", empty.display()));
    let (enforced, err) = rig.enforces(&strs(&no_btf), &run_args(&site, "veth-s"), &[]);
    assert!(enforced, "{err}");
    rig.assert_nothing_attached("stopped");
}

#[test]
fn leftovers_of_a_dead_run_do_not_stop_a_new_one() {
    let rig = Rig::new("dpt-bl");
    let site = rig.site();
    // Garbage where the state file goes, and a stray pin: what an old or crashed run could leave.
    std::fs::create_dir_all("/run/dataplane").unwrap();
    std::fs::write("/run/dataplane/state.json", "{ not json").unwrap();
    std::fs::create_dir_all("/sys/fs/bpf/dataplane/links").unwrap();
    let (enforced, err) = rig.enforces(&[], &run_args(&site, "veth-s"), &[]);
    assert!(enforced, "{err}");
    rig.assert_nothing_attached("stopped");
    // `stats` and `detach` with no run: a clear error, not a crash.
    let _ = std::fs::remove_file("/run/dataplane/state.json");
    let out = rig.dataplane(&[], &["stats"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running dataplane"));
    rig.assert_nothing_attached("stats with no run");
}

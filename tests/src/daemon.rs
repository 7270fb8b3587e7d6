//! `dataplane run` as its own process in a network namespace, and `dataplane stats` read from
//! another: the end-to-end tests' harness.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use dataplane::lab::netns::{in_netns, SERVER_IF};
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `dataplane` binary `cargo xtask test` built (DATAPLANE_BIN).
pub fn dataplane_bin() -> PathBuf {
    built("DATAPLANE_BIN", "dataplane")
}

/// The same built with its fault points (`--features fault`, DATAPLANE_FAULT_BIN): only the fault
/// tests run it.
pub fn fault_bin() -> PathBuf {
    built("DATAPLANE_FAULT_BIN", "dataplane-fault")
}

fn built(var: &str, name: &str) -> PathBuf {
    let bin = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| root().join("target/debug").join(name));
    assert!(bin.exists(), "{} is missing: run the tests with `cargo xtask test`", bin.display());
    bin
}

/// `dataplane run` inside a network namespace, logging at debug level; SIGTERM on drop.
pub struct Daemon {
    pub child: Child,
    /// Lines of its log (stderr).
    pub log: mpsc::Receiver<String>,
    /// Lines of its standard output (the status lines).
    pub status: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(ns: &str, site: &Path) -> Self {
        Self::start_with(ns, site, &[])
    }

    /// `dataplane run --site SITE --iface veth-s ARGS...` in namespace `ns`, once it enforces.
    pub fn start_with(ns: &str, site: &Path, args: &[&str]) -> Self {
        Self::start_on(ns, site, &[SERVER_IF], args)
    }

    /// `dataplane run --site SITE --iface I... ARGS...` in namespace `ns`, once it enforces on
    /// every interface (one status line each).
    pub fn start_on(ns: &str, site: &Path, ifaces: &[&str], args: &[&str]) -> Self {
        let d = Self::spawn_on(ns, site, ifaces, args, &[]);
        for iface in ifaces {
            let status = d.status.recv_timeout(Duration::from_secs(20)).expect("no status line from dataplane run");
            let attached = status.contains("native mode") || status.contains("adopted mode");
            assert!(status.starts_with(&format!("{iface}: enforcing")) && attached, "status line: {status}");
        }
        d
    }

    /// `dataplane run` with extra environment variables, not waiting for anything.
    pub fn spawn(ns: &str, site: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_on(ns, site, &[SERVER_IF], args, env)
    }

    /// As `spawn`, on the interfaces named.
    pub fn spawn_on(ns: &str, site: &Path, ifaces: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_bin(&dataplane_bin(), ns, site, ifaces, args, env)
    }

    /// As `spawn_on`, running `bin` (`fault_bin()`).
    pub fn spawn_bin(bin: &Path, ns: &str, site: &Path, ifaces: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(bin)
            .args(["run", "--site"])
            .arg(site)
            .args(ifaces.iter().flat_map(|i| ["--iface", i]))
            .args(args)
            .env("DATAPLANE_CATALOG_DIR", root().join("policies/catalog"))
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dataplane run");
        let lines = |from: Box<dyn std::io::Read + Send>, tag: &'static str| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(from).lines().map_while(Result::ok) {
                    println!("dataplane run {tag}: {line}");
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let status = lines(Box::new(child.stdout.take().unwrap()), "stdout");
        let log = lines(Box::new(child.stderr.take().unwrap()), "log");
        Self { child, log, status }
    }

    /// Waits (bounded) for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        self.wait_log_line(needle).is_some()
    }

    /// Waits (bounded) for a log line containing `needle`, and returns it.
    pub fn wait_log_line(&self, needle: &str) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// The status line `run` printed for the interface.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Sends one raw IPv4 packet (IP header onwards) from namespace `ns`.
pub fn send_raw_ipv4(ns: &str, packet: &[u8], dst: std::net::Ipv4Addr) {
    in_netns(ns, || unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(n, packet.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        libc::close(fd);
    })
    .unwrap();
}

pub fn stats() -> Value {
    let out = Command::new(dataplane_bin()).args(["stats", "--json"]).output().unwrap();
    assert!(out.status.success(), "dataplane stats: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn flow_packets(s: &Value, id: &str, proto: &str) -> u64 {
    s["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id && f["protocol"] == proto)
        .map(|f| f["packets"].as_u64().unwrap())
        .sum()
}

pub fn reason_packets(s: &Value, verdict: &str, reason: &str) -> u64 {
    s["reasons"].as_array().unwrap().iter().find(|r| r["verdict"] == verdict && r["reason"] == reason).unwrap()["packets"]
        .as_u64()
        .unwrap()
}

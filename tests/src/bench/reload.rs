//! The packet-rate bench's reload part: the real daemon (`dataplane run`, target/release) in a
//! network namespace of its own on a veth, its site rewritten so that a probe port flips between
//! allowed and denied, then SIGHUP; measured: the time from the signal until a probe packet sent
//! over the veth gets the new verdict, and until the daemon's "reloaded" log line arrives.
//!
//! The probe: UDP datagrams from 10.201.0.3:40000 (in `any-ip`) to the protected
//! 10.201.0.1:3478 (TURN control, open to `any-ip` only with the catalog option `turn: true`),
//! with a 200 µs sleep between them (about one every 0.4 ms measured), each with a sequence number, echoed by a socket on the server side. The
//! verdict changed at the send time of the first probe echoed after the signal (deny -> allow),
//! or of the probe after the last one echoed (allow -> deny); the resolution is the probe
//! interval. The rewritten site keeps its modification time, so the daemon's file watcher (a
//! 1 s poll) does not reload it on its own: every reload measured is the SIGHUP's.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dataplane::lab::netns::{in_netns, Lab, Servers, SERVER_IF};

const PROBE_EVERY: Duration = Duration::from_micros(200);
/// Longest wait for one reload's new verdict.
const LIMIT: Duration = Duration::from_secs(5);

/// One reload: (to allowed?, SIGHUP -> verdict changed, SIGHUP -> "reloaded" line, the daemon's
/// own "reloaded in" figure).
pub type Row = (bool, Duration, Duration, Option<Duration>);

pub struct Timings {
    pub rows: Vec<Row>,
    pub probe_interval: Duration,
}

/// `dataplane run` in a namespace; its log lines with their arrival times.
struct Daemon {
    child: Child,
    log: mpsc::Receiver<(Instant, String)>,
}

impl Daemon {
    fn start(root: &Path, ns: &str, site: &Path) -> Result<Self> {
        let bin = root.join("target/release/dataplane");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(&bin)
            .args(["run", "--site"])
            .arg(site)
            // The full catalog protects servers its documents give no administration to.
            .args(["--iface", SERVER_IF, "--force"])
            .env("DATAPLANE_CATALOG_DIR", root.join("policies/catalog"))
            .env("RUST_LOG", "info")
            .env_remove("SSH_CONNECTION")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} run", bin.display()))?;
        let lines = |from: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(from).lines().map_while(Result::ok) {
                    let _ = tx.send((Instant::now(), line));
                }
            });
            rx
        };
        let status = lines(Box::new(child.stdout.take().unwrap()));
        let log = lines(Box::new(child.stderr.take().unwrap()));
        let d = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left =
                deadline.checked_duration_since(Instant::now()).context("no status line from dataplane run within 30 s")?;
            match status.recv_timeout(left) {
                Ok((_, l)) if l.starts_with(&format!("{SERVER_IF}: enforcing")) => return Ok(d),
                Ok(_) => {}
                Err(_) => {
                    let log: Vec<String> = d.log.try_iter().map(|(_, l)| l).collect();
                    bail!("dataplane run did not start enforcing: {}", log.join(" | "));
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Safety: a signal to the child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sites the reload is timed on: the end-to-end site (one catalog; the flip is the catalog
/// option `turn`), and the full catalog of every document (`policies/sites/all-documents.yaml`,
/// the Expressway moved to the probe's address; so many flows admit UDP 3478 from anywhere there
/// that the flip is the binding of `any-ip`: everywhere, or a network without the probe's
/// source).
#[derive(Clone, Copy)]
pub enum Site {
    Lab,
    FullCatalog,
}

impl Site {
    pub fn name(self) -> &'static str {
        match self {
            Site::Lab => "lab (tests/sites/e2e.yaml: one catalog)",
            Site::FullCatalog => "full catalog (policies/sites/all-documents.yaml: five catalogs)",
        }
    }

    /// The site's text with `{allowed}` where what admits the probe goes.
    fn template(self, root: &Path) -> Result<String> {
        Ok(match self {
            Site::Lab => {
                format!("{}\noptions:\n  turn: {{allowed}}\n", std::fs::read_to_string(root.join("tests/sites/e2e.yaml"))?)
            }
            Site::FullCatalog => {
                let text = std::fs::read_to_string(root.join("policies/sites/all-documents.yaml"))?;
                let text =
                    text.replace("vcs-expressway: [192.0.2.10/32, '2001:db8:1::10/128']", "vcs-expressway: [10.201.0.1/32]");
                let any = "any-ip: [0.0.0.0/0, '::/0']";
                if !text.contains("vcs-expressway: [10.201.0.1/32]") || !text.contains(any) {
                    bail!("all-documents.yaml no longer has the bindings the reload bench rewrites");
                }
                text.replace(any, "any-ip: {allowed}")
            }
        })
    }

    fn text(self, template: &str, allowed: bool) -> String {
        let value = match (self, allowed) {
            (Site::Lab, a) => a.to_string(),
            (Site::FullCatalog, true) => "[0.0.0.0/0, '::/0']".into(),
            (Site::FullCatalog, false) => "[192.0.2.0/24]".into(),
        };
        template.replace("{allowed}", &value)
    }
}

/// Replaces the site (a new file with the old modification time, renamed over it: the watcher
/// never sees another time), so that only the SIGHUP reloads it.
fn rewrite(site: &Path, text: &str) -> Result<()> {
    let mtime = std::fs::metadata(site)?.modified()?;
    let tmp = site.with_extension("yaml.new");
    std::fs::write(&tmp, text)?;
    std::fs::File::options().write(true).open(&tmp)?.set_modified(mtime)?;
    std::fs::rename(&tmp, site)?;
    Ok(())
}

/// "reloaded (SIGHUP) in 45.2ms: ..." -> 45.2 ms.
fn logged_duration(line: &str) -> Option<Duration> {
    let rest = &line[line.find("reloaded (SIGHUP) in ")? + "reloaded (SIGHUP) in ".len()..];
    let text = &rest[..rest.find(':')?];
    let (num, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" | "us" => v / 1e6,
        "ns" => v / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

pub fn run(root: &Path, reloads: usize, which: Site) -> Result<Timings> {
    let base = which.template(root)?;
    let dir = std::env::temp_dir().join(format!("dpb-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let site: PathBuf = dir.join("site.yaml");
    std::fs::write(&site, which.text(&base, false))?;
    let result = measure(root, &site, &base, reloads, which);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(root: &Path, site: &Path, base: &str, reloads: usize, which: Site) -> Result<Timings> {
    let lab = Lab::new("dpb-rl", &["10.201.0.1/24"], &["10.201.0.3/24"])?;
    let server: SocketAddr = "10.201.0.1:3478".parse()?;
    let _echo = Servers::start(&lab.server, &[], &[server])?;
    let daemon = Daemon::start(root, &lab.server, site)?;
    let sock = in_netns(&lab.client, || UdpSocket::bind("10.201.0.3:40000"))??;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    let echoes: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (sock, echoes, stop) = (sock.try_clone()?, echoes.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if n >= 4 {
                        let seq = u32::from_le_bytes(buf[..4].try_into().unwrap());
                        echoes.lock().unwrap().push((seq, Instant::now()));
                    }
                }
            }
        })
    };
    let result = (|| -> Result<Timings> {
        let mut sent: Vec<Instant> = vec![];
        let mut rows = vec![];
        let send = |sent: &mut Vec<Instant>| -> Result<()> {
            let seq = sent.len() as u32;
            sent.push(Instant::now());
            // A dropped probe is no error: the echo just never comes.
            let _ = sock.send(&seq.to_le_bytes());
            std::thread::sleep(PROBE_EVERY);
            Ok(())
        };
        let mut allowed = false;
        for i in 0..reloads {
            let to_allowed = !allowed;
            rewrite(site, &which.text(base, to_allowed))?;
            // The old verdict first, for 50 ms.
            let first = sent.len();
            let pre = Instant::now();
            while pre.elapsed() < Duration::from_millis(50) {
                send(&mut sent)?;
            }
            std::thread::sleep(Duration::from_millis(5));
            let echoed_before = echoes.lock().unwrap().iter().filter(|(s, _)| *s as usize >= first).count();
            if (echoed_before > 0) != allowed {
                bail!("reload {i}: before the SIGHUP the probe was {} ({echoed_before} of {} echoed), not what the running policy says", if echoed_before > 0 { "allowed" } else { "denied" }, sent.len() - first);
            }
            while daemon.log.try_recv().is_ok() {}
            let after = sent.len();
            let t0 = Instant::now();
            // Safety: a signal to the child we started.
            unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
            let mut logged: Option<(Instant, Option<Duration>)> = None;
            loop {
                send(&mut sent)?;
                for (at, line) in daemon.log.try_iter() {
                    if line.contains("reload (SIGHUP) failed") {
                        bail!("reload {i} failed: {line}");
                    }
                    if line.contains("reloaded (SIGHUP)") {
                        logged = Some((at, logged_duration(&line)));
                    }
                }
                let now = Instant::now();
                if now - t0 > LIMIT {
                    bail!("reload {i}: no new verdict and \"reloaded\" line within {LIMIT:?} (logged: {})", logged.is_some());
                }
                let Some((at, _)) = logged else { continue };
                if now - at < Duration::from_millis(50) {
                    continue;
                }
                let e = echoes.lock().unwrap();
                let last_echo = e.iter().filter(|(s, _)| *s as usize >= after).map(|(s, t)| (*s, *t)).max_by_key(|x| x.1);
                let done = match (to_allowed, last_echo) {
                    (true, Some(_)) => true,
                    (false, None) => true,
                    (false, Some((_, t))) => now - t > Duration::from_millis(50),
                    (true, None) => false,
                };
                if done {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
            let (at, internal) = logged.unwrap();
            let e = echoes.lock().unwrap();
            let post: Vec<u32> = e.iter().map(|(s, _)| *s).filter(|&s| s as usize >= after).collect();
            let switched = if to_allowed {
                let s = *post.iter().min().context("no echo")?;
                sent[s as usize]
            } else {
                match post.iter().max() {
                    Some(&s) => *sent.get(s as usize + 1).context("no probe after the last echo")?,
                    None => t0,
                }
            };
            rows.push((to_allowed, switched.saturating_duration_since(t0), at - t0, internal));
            allowed = to_allowed;
            drop(e);
            std::thread::sleep(Duration::from_millis(100));
        }
        let probe_interval =
            if sent.len() > 1 { (sent[sent.len() - 1] - sent[0]) / (sent.len() as u32 - 1) } else { PROBE_EVERY };
        Ok(Timings { rows, probe_interval })
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    drop(daemon);
    result
}

/// Mean, median and max of durations, in ms.
pub fn summary(v: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len().max(1);
    let median = if ms.is_empty() {
        0.0
    } else if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    (ms.iter().sum::<f64>() / n as f64, median, ms.last().copied().unwrap_or(0.0))
}

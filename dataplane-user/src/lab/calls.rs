//! Real calls across the lab: a SIP call with RTP both ways from a caller in `any-ip` to the
//! protected Expressway (sipp, Debian's sip-tester, as caller and callee), the same call with its
//! media on a port the catalog does not document, and a TURN allocation relaying data through a
//! documented relay port (coturn's turnserver on the Expressway, its turnutils outside).
//!
//! Every child process runs inside a lab namespace, bounded in time, and is killed on drop; the
//! scenario files and logs live in a directory removed on drop. `dataplane lab` prints the
//! counters each exchange moved; the kernel tests (tests/tests/calls.rs) assert on them.

use std::{
    fs::File,
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::netns::in_netns;

/// The caller's scenario: INVITE with an audio offer, 200, ACK, `RTP_PACKETS` of RTP, BYE.
const UAC_XML: &str = include_str!("sip/call-uac.xml");
/// The callee's: answers on its media port and echoes the RTP it gets (`-rtp_echo`).
const UAS_XML: &str = include_str!("sip/call-uas.xml");
/// RTP packets the caller sends: one second of G.711 A-law (payload type 8), 160 bytes each 20 ms.
pub const RTP_PACKETS: u64 = 50;
const RTP_PAYLOAD: usize = 160;
/// The callee's media port: the first RTP port of the Expressway's documented range (vcs-x8.2,
/// release new: 36002-59998, flows vcs-sip-public-rtp-in and -out).
pub const DOCUMENTED_MEDIA_PORT: u16 = 36002;
/// A media port no flow of the catalog documents: the first RTP port of many SIP phones.
pub const UNDOCUMENTED_MEDIA_PORT: u16 = 16384;
/// The caller's media port (any port from 1024 up is documented for an endpoint in any-ip).
const CALLER_MEDIA_PORT: u16 = 6000;
/// The TURN relay range of vcs-x8.2 (release new: 24000-29999, flows vcs-ice-turn-media-in and
/// -out); turnserver allocates relay ports in it only.
pub const TURN_RELAY_PORTS: (u16, u16) = (24000, 29999);
/// Messages `turnutils_uclient` sends through the relay; the peer echoes each.
pub const TURN_MESSAGES: u64 = 20;
/// The port the peer (`turnutils_peer`) listens on, outside.
const PEER_PORT: u16 = 3480;

/// Packages the calls need, with a binary each provides and why.
const PACKAGES: [(&str, &str, &str); 2] = [
    ("sip-tester", "sipp", "sipp, the caller and the callee"),
    ("coturn", "turnserver", "turnserver and turnutils, the TURN relay"),
];

/// SIP signalling transport (sipp `-t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn sipp(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Where the calls run: the caller's namespace and address, the Expressway's.
pub struct CallNet<'a> {
    pub client_ns: &'a str,
    pub server_ns: &'a str,
    /// The caller, and the TURN client and peer: an address in no named role (any-ip).
    pub caller: IpAddr,
    pub server: IpAddr,
}

/// A directory for scenario files, the audio and the logs; removed on drop.
pub struct Workdir {
    pub path: PathBuf,
}

impl Workdir {
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("dataplane-calls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::write(path.join("call-uac.xml"), UAC_XML)?;
        std::fs::write(path.join("call-uas.xml"), UAS_XML)?;
        // The caller's RTP payload: A-law silence (0xd5), played once.
        std::fs::write(path.join("audio.pcma"), vec![0xd5u8; RTP_PAYLOAD * RTP_PACKETS as usize])?;
        Ok(Self { path })
    }

    fn log(&self, name: &str) -> Result<File> {
        File::create(self.path.join(name)).with_context(|| format!("creating {name}"))
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path.join(name)).unwrap_or_default()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process killed (and reaped) on drop.
struct Bounded(Child);

impl Bounded {
    /// `args` run in namespace `ns` (`ip netns exec`), from `dir`, stdout and stderr to `log`.
    fn spawn(ns: &str, args: &[&str], dir: &Workdir, log: &str) -> Result<Self> {
        let out = dir.log(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} in {ns}", args[0]))?;
        Ok(Self(child))
    }

    /// Waits up to `limit`; Some(success) when it ended, None when it was killed.
    fn wait(&mut self, limit: Duration) -> Result<Option<bool>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(Some(status.success()));
            }
            if Instant::now() > deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Whether `binary` is on the PATH.
fn have(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
}

/// Runs `apt-get ARGS` within `limit`; true when it succeeded.
fn apt_get(args: &[&str], limit: Duration) -> bool {
    let child = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else { return false };
    matches!(Bounded(child).wait(limit), Ok(Some(true)))
}

/// Installs what the calls need when it is missing (apt-get, saying so). Err: a line saying why
/// the calls cannot run (no package mirror reachable, not Debian).
pub fn install() -> std::result::Result<(), String> {
    let missing: Vec<_> = PACKAGES.iter().filter(|(_, bin, _)| !have(bin)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(p, _, _)| *p).collect();
    let why: Vec<&str> = missing.iter().map(|(_, _, w)| *w).collect();
    println!("lab: installing {} ({}) with apt-get, once", names.join(" "), why.join("; "));
    let install = [&["install", "-y", "-qq", "--no-install-recommends"][..], &names].concat();
    let limit = Duration::from_secs(300);
    // A stale package list is refreshed once, only when the first attempt fails.
    let installed = apt_get(&install, limit) || (apt_get(&["update", "-qq"], limit) && apt_get(&install, limit));
    if !installed {
        return Err(format!(
            "apt-get could not install {} (no package mirror reachable?): skipping the calls and the TURN relay",
            names.join(" ")
        ));
    }
    if let Some((_, bin, _)) = PACKAGES.iter().find(|(_, bin, _)| !have(bin)) {
        return Err(format!("{bin} is not on the PATH after installing: skipping the calls and the TURN relay"));
    }
    // Debian's coturn enables a turnserver service listening on every address of the host: the
    // lab runs its own inside its namespace, so the one the package started is stopped again.
    if names.contains(&"coturn")
        && Command::new("systemctl").args(["is-enabled", "--quiet", "coturn"]).status().is_ok_and(|s| s.success())
    {
        let _ = Command::new("systemctl").args(["disable", "--now", "--quiet", "coturn"]).status();
        println!("lab: disabled the coturn service the package enabled (the lab runs its own turnserver in its namespace)");
    }
    Ok(())
}

/// One SIP call from the caller to the Expressway's port 5060 over `transport`, the callee's
/// media on `media_port`: Ok(true) when both sipp ended with the call completed.
pub fn sip_call(dir: &Workdir, net: &CallNet, transport: Transport, media_port: u16) -> Result<bool> {
    let (server, caller) = (net.server.to_string(), net.caller.to_string());
    let (mp, cmp) = (media_port.to_string(), CALLER_MEDIA_PORT.to_string());
    let t = transport.sipp();
    let common = ["-t", t, "-m", "1", "-nostdin", "-timeout", "8"];
    let uas_args = [&["sipp", "-sf", "call-uas.xml", "-i", &server, "-p", "5060", "-rtp_echo", "-mp", &mp][..], &common].concat();
    let mut uas = Bounded::spawn(net.server_ns, &uas_args, dir, "callee.log")?;
    wait_listening(net.server_ns, transport, 5060)?;
    let target = sip_target(net.server, 5060);
    let uac_args = [&["sipp", &target, "-sf", "call-uac.xml", "-i", &caller, "-mp", &cmp][..], &common].concat();
    let mut uac = Bounded::spawn(net.client_ns, &uac_args, dir, "caller.log")?;
    let caller_done = uac.wait(Duration::from_secs(10))?;
    let callee_done = uas.wait(Duration::from_secs(3))?;
    Ok(caller_done == Some(true) && callee_done == Some(true))
}

fn sip_target(server: IpAddr, port: u16) -> String {
    match server {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Waits (at most two seconds) until a socket listens on `port` in `ns`.
fn wait_listening(ns: &str, transport: Transport, port: u16) -> Result<()> {
    let table = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    let hex = format!(":{port:04X} ");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let text = in_netns(ns, || std::fs::read_to_string(format!("/proc/thread-self/net/{table}")))??;
        // Local address is the second column; a TCP listener is in state 0A.
        if text.lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1).is_some_and(|a| format!("{a} ").ends_with(&hex)) && (transport == Transport::Udp || cols[3] == "0A")
        }) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {table} {port} in {ns} after two seconds")
}

/// UDP datagrams the sockets of namespace `ns` received (IPv4 and IPv6, `Udp: InDatagrams`).
pub fn udp_datagrams_received(ns: &str) -> Result<u64> {
    let (v4, v6) = in_netns(ns, || {
        (std::fs::read_to_string("/proc/thread-self/net/snmp"), std::fs::read_to_string("/proc/thread-self/net/snmp6"))
    })?;
    let (v4, v6) = (v4?, v6?);
    let mut udp = v4.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap_or_default(), udp.next().unwrap_or_default());
    let at = names.split_whitespace().position(|n| n == "InDatagrams").context("no Udp InDatagrams in snmp")?;
    let v4: u64 = values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).context("Udp InDatagrams")?;
    let v6: u64 = v6
        .lines()
        .find_map(|l| l.strip_prefix("Udp6InDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .context("Udp6InDatagrams")?;
    Ok(v4 + v6)
}

/// What went through the TURN relay: messages the client sent and got back from the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    pub sent: u64,
    pub received: u64,
}

/// A TURN allocation on the Expressway (turnserver restricted to `TURN_RELAY_PORTS`, long-term
/// credentials, no TLS, no CLI, its user database and log in `dir`), the client and the peer
/// outside at the caller's address: `TURN_MESSAGES` sent to the peer through the relay, echoed
/// back. None: the client did not finish in time.
pub fn turn_relay(dir: &Workdir, net: &CallNet) -> Result<Option<Relayed>> {
    let (server, caller) = (net.server.to_string(), net.caller.to_string());
    let (min, max) = (TURN_RELAY_PORTS.0.to_string(), TURN_RELAY_PORTS.1.to_string());
    let path = |name: &str| dir.path.join(name).to_string_lossy().into_owned();
    let (db, log, pid) = (path("turndb"), path("turnserver.log"), path("turnserver.pid"));
    let mut args = vec!["turnserver", "-n", "-L", &server, "-E", &server, "-p", "3478", "--min-port", &min, "--max-port", &max];
    args.extend(["--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay", "-a", "-u", "lab:lab", "-r", "dataplane.lab"]);
    args.extend(["--userdb", &db, "--log-file", &log, "--simple-log", "--no-stdout-log", "--pidfile", &pid]);
    if net.caller.is_loopback() {
        args.push("--allow-loopback-peers");
    }
    let _server = Bounded::spawn(net.server_ns, &args, dir, "turnserver.out")?;
    let peer_port = PEER_PORT.to_string();
    let _peer = Bounded::spawn(net.client_ns, &["turnutils_peer", "-L", &caller, "-p", &peer_port], dir, "peer.log")?;
    wait_listening(net.server_ns, Transport::Udp, 3478)?;
    wait_listening(net.client_ns, Transport::Udp, PEER_PORT)?;
    let n = TURN_MESSAGES.to_string();
    let family = if net.server.is_ipv4() { "-X" } else { "-x" };
    let client = [
        "turnutils_uclient",
        "-c",
        family,
        "-n",
        &n,
        "-l",
        "120",
        "-u",
        "lab",
        "-w",
        "lab",
        "-L",
        &caller,
        "-e",
        &caller,
        "-r",
        &peer_port,
        &server,
    ];
    let mut uclient = Bounded::spawn(net.client_ns, &client, dir, "uclient.log")?;
    if uclient.wait(Duration::from_secs(15))?.is_none() {
        return Ok(None);
    }
    Ok(Some(parse_uclient(&dir.read("uclient.log"))))
}

/// The client's last summary: "start_mclient: tot_send_msgs=20, tot_recv_msgs=20".
fn parse_uclient(log: &str) -> Relayed {
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    log.lines()
        .rev()
        .find_map(|l| Some(Relayed { sent: field(l, "tot_send_msgs=")?, received: field(l, "tot_recv_msgs=")? }))
        .unwrap_or_default()
}

/// The log of a run, for a failure message: the last lines of `name` in `dir`.
pub fn tail(dir: &Workdir, name: &str, lines: usize) -> String {
    let text = dir.read(name);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uclient_summary_is_read() {
        let log = "1: : start_mclient: msz=1, tot_send_msgs=0, tot_recv_msgs=0, tot_send_bytes ~ 0\n\
                   3: : start_mclient: tot_send_msgs=20, tot_recv_msgs=19\n\
                   3: : start_mclient: tot_send_bytes ~ 2400, tot_recv_bytes ~ 2400\n";
        assert_eq!(parse_uclient(log), Relayed { sent: 20, received: 19 });
        assert_eq!(parse_uclient("no summary"), Relayed::default());
    }

    #[test]
    fn the_audio_is_one_second_of_rtp() {
        let dir = Workdir::new().unwrap();
        let len = std::fs::metadata(dir.path.join("audio.pcma")).unwrap().len();
        assert_eq!(len, RTP_PACKETS * RTP_PAYLOAD as u64);
        assert!(UAC_XML.contains("rtp_stream=\"audio.pcma,1,8\""), "the caller plays the file once as PCMA");
    }
}

//! Two network namespaces joined by a veth pair: a client side and a server side. Traffic comes
//! from real sockets opened by threads that enter a namespace, so nothing leaves the machine.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub use crate::kernel::netns::in_netns;

/// Client namespace `<tag>-c` (interface `veth-c`) and server namespace `<tag>-s` (interface
/// `veth-s`), removed on drop.
pub struct Lab {
    pub client: String,
    pub server: String,
}

pub const SERVER_IF: &str = "veth-s";
pub const CLIENT_IF: &str = "veth-c";

impl Lab {
    /// `server_addrs` and `client_addrs` are CIDRs such as "10.200.0.1/24" or "fd00:200::1/64".
    pub fn new(tag: &str, server_addrs: &[&str], client_addrs: &[&str]) -> Result<Self> {
        let lab = Self { client: format!("{tag}-c"), server: format!("{tag}-s") };
        lab.teardown();
        ip(&["netns", "add", &lab.client])?;
        ip(&["netns", "add", &lab.server])?;
        ip(&["link", "add", CLIENT_IF, "netns", &lab.client, "type", "veth", "peer", "name", SERVER_IF, "netns", &lab.server])?;
        for (ns, ifname, addrs) in [(&lab.client, CLIENT_IF, client_addrs), (&lab.server, SERVER_IF, server_addrs)] {
            // Duplicate address detection would hold IPv6 traffic back for a second or two.
            in_netns(ns, || std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"), "0"))??;
            for a in addrs {
                let mut args = vec!["-n", ns.as_str(), "addr", "add", a, "dev", ifname];
                if a.contains(':') {
                    args.push("nodad");
                }
                ip(&args)?;
            }
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        lab.wait_ready(Duration::from_secs(5))?;
        Ok(lab)
    }

    /// Waits until both ends are operationally up with no tentative address, within `limit`.
    /// A new veth pair's carrier is switched on by linkwatch up to a second later; until then
    /// the kernel holds IPv6 traffic back.
    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        let ready = |ns: &str, ifname: &str| {
            let show =
                |args: &[&str]| Command::new("ip").args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let link = show(&["-n", ns, "link", "show", ifname]).unwrap_or_default();
            let tentative = show(&["-n", ns, "-6", "addr", "show", "tentative"]).unwrap_or_else(|_| "?".into());
            link.contains("state UP") && tentative.is_empty()
        };
        loop {
            if ready(&self.client, CLIENT_IF) && ready(&self.server, SERVER_IF) {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("the veth pair is not up after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn teardown(&self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Servers on the server side: TCP listeners that accept and echo, UDP sockets that count.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub udp_received: Vec<Arc<std::sync::atomic::AtomicU64>>,
}

impl Servers {
    pub fn start(ns: &str, tcp: &[SocketAddr], udp: &[SocketAddr]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![];
        let mut udp_received = vec![];
        for &addr in tcp {
            let listener = in_netns(ns, || TcpListener::bind(addr))?.with_context(|| format!("bind tcp {addr}"))?;
            listener.set_nonblocking(true)?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || serve_tcp(listener, stop)));
        }
        for &addr in udp {
            let sock = in_netns(ns, || UdpSocket::bind(addr))?.with_context(|| format!("bind udp {addr}"))?;
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
            udp_received.push(count.clone());
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || serve_udp(sock, stop, count)));
        }
        Ok(Self { stop, threads, udp_received })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                if let Ok(n) = s.read(&mut buf) {
                    let _ = s.write_all(&buf[..n]);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_udp(sock: UdpSocket, stop: Arc<AtomicBool>, count: Arc<std::sync::atomic::AtomicU64>) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            count.fetch_add(1, Ordering::Relaxed);
            let _ = sock.send_to(&buf[..n], peer);
        }
    }
}

/// Connects from namespace `ns`, bound to `src`, sends a message and waits for its echo.
/// Ok(true): the connection completed; Ok(false): it timed out or was refused.
pub fn tcp_exchange(ns: &str, src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<bool> {
    tcp_exchange_from(ns, SocketAddr::new(src, 0), dst, timeout)
}

/// As `tcp_exchange`, from a chosen source port.
pub fn tcp_exchange_from(ns: &str, local: SocketAddr, dst: SocketAddr, timeout: Duration) -> Result<bool> {
    in_netns(ns, || -> Result<bool> {
        let stream = connect_from(local, dst, timeout);
        let Ok(mut stream) = stream else { return Ok(false) };
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"hello")?;
        let mut buf = [0u8; 5];
        Ok(stream.read_exact(&mut buf).is_ok() && &buf == b"hello")
    })?
}

/// std has no bind-before-connect: socket2 binds, then connects within `timeout`.
fn connect_from(local: SocketAddr, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&local.into())?;
    sock.connect_timeout(&dst.into(), timeout)?;
    Ok(sock.into())
}

/// Sends `count` UDP datagrams from `src` in namespace `ns` to `dst`.
pub fn udp_send(ns: &str, src: IpAddr, dst: SocketAddr, count: usize) -> Result<()> {
    udp_send_from(ns, SocketAddr::new(src, 0), dst, count)
}

/// As `udp_send`, from a chosen source port.
pub fn udp_send_from(ns: &str, local: SocketAddr, dst: SocketAddr, count: usize) -> Result<()> {
    in_netns(ns, || -> Result<()> {
        let sock = UdpSocket::bind(local).with_context(|| format!("bind {local}"))?;
        for i in 0..count {
            sock.send_to(format!("datagram {i}").as_bytes(), dst)?;
        }
        // Take the echoes before closing: a closed port would answer them with ICMP port
        // unreachable, which the server's XDP program counts on the flow (a related error).
        sock.set_read_timeout(Some(std::time::Duration::from_millis(50)))?;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
        let mut buf = [0u8; 64];
        for _ in 0..count {
            if std::time::Instant::now() > until || sock.recv_from(&mut buf).is_err() {
                break;
            }
        }
        Ok(())
    })?
}

/// Sends one datagram from `local` in namespace `ns` and waits up to `timeout` for an answer.
pub fn udp_query(ns: &str, local: SocketAddr, dst: SocketAddr, timeout: Duration) -> Result<bool> {
    in_netns(ns, || -> Result<bool> {
        let sock = UdpSocket::bind(local).with_context(|| format!("bind {local}"))?;
        sock.set_read_timeout(Some(timeout))?;
        sock.send_to(b"query", dst)?;
        let mut buf = [0u8; 64];
        Ok(matches!(sock.recv_from(&mut buf), Ok((_, from)) if from == dst))
    })?
}

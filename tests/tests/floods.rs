//! Issue 14 over veth with the real daemon: a flood of allowed inbound tuples, many times the
//! connection-tracking table's size and arriving on every CPU, evicts none of the connections
//! the protected server opened; and `run` logs once when the table passes 90%.
//!
//! Site `tests/sites/floods.yaml`: the Expressway 10.203.0.1 protected, `any-ip` the client
//! side's /24, `conntrack-size: 1024` (per IP version; the kernel gives each CPU an equal share).

use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData};
use dataplane::lab::netns::{in_netns, Lab, CLIENT_IF, SERVER_IF};
use dataplane_common::Reason;
use dataplane_tests::{
    daemon::{dataplane_bin, flow_packets, root, stats, Daemon},
    flood::{cpus, ipv4_checksum, mac, per_cpu_packets, pin_to_cpu, possible_cpus, RawSender},
    packet::Pkt,
};
use serde_json::Value;

const SIZE: u64 = 1024;
/// The flood's sources: 16 addresses of the client side, 8192 source ports each: 131,072
/// distinct tuples, 128 times the table.
const SOURCES: u32 = 16;
const PORTS: u32 = 8192;
/// Each tuple sent this many times in a row, on each CPU.
const REPEAT: usize = 3;
/// Bound on each CPU's share of the flood.
const FLOOD_TIME: Duration = Duration::from_secs(20);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn lab(tag: &str) -> Lab {
    let sources: Vec<String> = (0..SOURCES).map(|i| format!("10.203.0.{}/24", 16 + i)).collect();
    let mut client = vec!["10.203.0.2/24", "10.203.0.4/24", "10.203.0.5/24"];
    client.extend(sources.iter().map(String::as_str));
    Lab::new(tag, &["10.203.0.1/24"], &client).unwrap()
}

/// A TCP connection from `local` (bind before connect, which std lacks), within 2 s.
fn connect_from(local: SocketAddrV4, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // Safety: socket calls on a descriptor the TcpStream owns from its creation on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        // connect(2) gives up after the send timeout.
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let (l, d) = (sin(local), sin(dst));
        if libc::bind(fd, (&l as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&d as *const libc::sockaddr_in).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Packets the running daemon's program judged `reason`, per CPU (its pinned counters).
fn judged_per_cpu(reason: Reason) -> Vec<u64> {
    let data = MapData::from_pin(dataplane::kernel::pins::pin_path(dataplane::kernel::maps::MAP_REASONS)).unwrap();
    per_cpu_packets(&Map::PerCpuArray(data), reason as u32).unwrap()
}

fn conntrack(s: &Value, field: &str) -> u64 {
    s["conntrack"][field].as_u64().unwrap_or_else(|| panic!("conntrack.{field} in {}", s["conntrack"]))
}

fn reply_packets(s: &Value, id: &str) -> u64 {
    s["outbound"].as_array().unwrap().iter().filter(|f| f["id"] == id).map(|f| f["reply_packets"].as_u64().unwrap()).sum()
}

/// The flood's frames: every tuple `REPEAT` times in a row, SIP over UDP (vcs-sip-public-in-udp:
/// any-ip, source ports 1024-65535, to 5060), with the real MAC addresses and checksums.
fn flood_frames(lab: &Lab) -> Vec<Vec<u8>> {
    let (dst_mac, src_mac) = (mac(&lab.server, SERVER_IF).unwrap(), mac(&lab.client, CLIENT_IF).unwrap());
    let mut frames = Vec::with_capacity((SOURCES * PORTS) as usize * REPEAT);
    for s in 0..SOURCES {
        for p in 0..PORTS {
            let src = std::net::IpAddr::from([10, 203, 0, 16 + s as u8]);
            let mut f = Pkt::udp(src, "10.203.0.1".parse().unwrap(), 1024 + p as u16, 5060).build();
            f[0..6].copy_from_slice(&dst_mac);
            f[6..12].copy_from_slice(&src_mac);
            ipv4_checksum(&mut f[14..34]);
            for _ in 0..REPEAT {
                frames.push(f.clone());
            }
        }
    }
    frames
}

/// What the old code did with the same traffic: before the policy image (commit 6005f49) the XDP
/// program cached the verdict of every allowed inbound 5-tuple in the same LRU tables that hold
/// the server's connections (FLOW_V4/FLOW_V6), one entry per new tuple. 131,072 tuples, each
/// seen three times in a row (the LRU's second chance then takes them for entries in use), on
/// every CPU (each CPU has its own LRU list and its share of the table), push out every
/// connection the server opened. Run on that code: `stats` showed 0 entries and 2 evictions
/// after the flood, the late DNS answer was dropped (`no_flow`) and the SIP peer's message did
/// not arrive within 2 s. Now arriving packets insert nothing, and this test passes.
#[test]
fn a_flood_of_allowed_tuples_over_veth_evicts_no_connection_the_server_opened() {
    let lab = lab("dpt-flood");
    let daemon = Daemon::start(&lab.server, &root().join("tests/sites/floods.yaml"));
    let wait = Duration::from_secs(2);
    let mut buf = [0u8; 64];

    // The peers, in the client namespace: a DNS server and a SIP peer on TCP 5061.
    let dns = in_netns(&lab.client, || UdpSocket::bind("10.203.0.5:53")).unwrap().unwrap();
    dns.set_read_timeout(Some(wait)).unwrap();
    let sip = in_netns(&lab.client, || TcpListener::bind("10.203.0.4:5061")).unwrap().unwrap();

    // The server's DNS query (vcs-dns), answered: tracked.
    let resolver = in_netns(&lab.server, || UdpSocket::bind("10.203.0.1:40053")).unwrap().unwrap();
    resolver.set_read_timeout(Some(wait)).unwrap();
    resolver.send_to(b"query", "10.203.0.5:53").unwrap();
    let (_, asker) = dns.recv_from(&mut buf).expect("the query reaches the DNS server");
    assert_eq!(asker, sa("10.203.0.1:40053"));
    dns.send_to(b"answer", asker).unwrap();
    let (n, from) = resolver.recv_from(&mut buf).expect("the answer passes");
    assert_eq!((&buf[..n], from), (&b"answer"[..], sa("10.203.0.5:53")));
    // The server's SIP connection over TCP from its outbound range (vcs-sip-public-out-tcp),
    // established and used once: tracked.
    let mut call =
        in_netns(&lab.server, || connect_from("10.203.0.1:25500".parse().unwrap(), "10.203.0.4:5061".parse().unwrap()))
            .unwrap()
            .expect("the server's TCP connection to the SIP peer");
    call.set_read_timeout(Some(wait)).unwrap();
    let (mut peer, _) = sip.accept().unwrap();
    peer.set_read_timeout(Some(wait)).unwrap();
    call.write_all(b"INVITE").unwrap();
    peer.read_exact(&mut buf[..6]).unwrap();
    peer.write_all(b"100 Trying").unwrap();
    call.read_exact(&mut buf[..10]).unwrap();
    let before = stats();
    println!("before the flood: conntrack {}", before["conntrack"]);
    assert_eq!(conntrack(&before, "entries"), 2, "the DNS query and the SIP connection are tracked");
    assert_eq!(before["conntrack"]["ipv4"]["capacity"].as_u64(), Some(SIZE));

    // The flood, from a thread pinned to each CPU in turn (a frame sent over veth is received,
    // and judged by XDP, on the sender's CPU).
    let frames = flood_frames(&lab);
    let (mut sent, mut judged) = (0u64, vec![]);
    let started = Instant::now();
    for cpu in cpus() {
        let ns = lab.client.clone();
        let frames = frames.clone();
        let pass_before = judged_per_cpu(Reason::PassFlow);
        let at = Instant::now();
        let n = std::thread::spawn(move || {
            pin_to_cpu(cpu);
            in_netns(&ns, || RawSender::open(CLIENT_IF)?.send(&frames, Instant::now() + FLOOD_TIME)).unwrap().unwrap()
        })
        .join()
        .unwrap();
        let took = at.elapsed();
        std::thread::sleep(Duration::from_millis(200));
        let pass_after = judged_per_cpu(Reason::PassFlow);
        let here: Vec<u64> = pass_after.iter().zip(&pass_before).map(|(a, b)| a - b).collect();
        println!(
            "flood from CPU {cpu}: {n} frames sent in {took:.2?} ({:.0} per second); allowed packets judged per CPU: {here:?}",
            n as f64 / took.as_secs_f64()
        );
        sent += n;
        judged.push((cpu, here));
    }
    let elapsed = started.elapsed();
    let after = stats();
    let counted = flow_packets(&after, "vcs-sip-public-in-udp", "udp") - flow_packets(&before, "vcs-sip-public-in-udp", "udp");
    println!(
        "flood: {} distinct tuples ({}x the table) x {REPEAT} on {} CPUs: {sent} frames in {elapsed:.2?}, {counted} counted on vcs-sip-public-in-udp",
        SOURCES * PORTS,
        u64::from(SOURCES * PORTS) / SIZE,
        judged.len()
    );
    assert_eq!(sent, frames.len() as u64 * judged.len() as u64, "every frame sent within {FLOOD_TIME:?} per CPU");
    assert!(counted * 10 >= sent * 9, "at least 90% of the flood reached the program: {counted} of {sent}");
    for (cpu, here) in &judged {
        assert!(here[*cpu] >= 10 * SIZE, "the flood sent from CPU {cpu} was judged there: {here:?}");
    }

    // The tracked connections survived: a late answer on the DNS query's tuple, without a new
    // query (a query would record the connection again, whatever the flood did), and the SIP
    // peer's next message on the idle connection, both reach the server.
    dns.send_to(b"late answer", "10.203.0.1:40053").unwrap();
    let (n, from) = resolver.recv_from(&mut buf).expect("the late DNS answer passes after the flood");
    assert_eq!((&buf[..n], from), (&b"late answer"[..], sa("10.203.0.5:53")));
    peer.write_all(b"180 Ringing").unwrap();
    call.read_exact(&mut buf[..11]).expect("the SIP peer's message passes after the flood");
    assert_eq!(&buf[..11], b"180 Ringing");
    // And a second query on the same tuple is answered as the first.
    resolver.send_to(b"query 2", "10.203.0.5:53").unwrap();
    let (_, asker) = dns.recv_from(&mut buf).unwrap();
    dns.send_to(b"answer 2", asker).unwrap();
    resolver.recv_from(&mut buf).expect("the second answer passes");
    let end = stats();
    println!("after the flood: conntrack {}", end["conntrack"]);
    assert_eq!(conntrack(&end, "entries"), 2, "the same two connections, nothing else");
    assert_eq!(conntrack(&end, "inserts"), conntrack(&before, "inserts"), "the flood inserted nothing");
    assert_eq!(conntrack(&end, "evictions"), 0);
    assert!(
        reply_packets(&end, "vcs-dns") >= reply_packets(&before, "vcs-dns") + 2,
        "the late and the second answer, as replies"
    );
    assert!(
        reply_packets(&end, "vcs-sip-public-out-tcp") > reply_packets(&before, "vcs-sip-public-out-tcp"),
        "the peer's message, as a reply"
    );
    drop((call, peer));
    assert!(daemon.stop().success());
}

/// `run` logs once when the connection-tracking table passes 90% (and `stats` shows the fill):
/// the server opens UDP exchanges with its DNS server from 94% of each CPU's share of the table,
/// from a thread pinned to each CPU.
#[test]
fn run_logs_once_when_the_connection_table_passes_90_percent() {
    let lab = lab("dpt-fill");
    let daemon = Daemon::start(&lab.server, &root().join("tests/sites/floods.yaml"));
    let (online, possible) = (cpus(), possible_cpus());
    assert_eq!(online.len(), possible, "every possible CPU online: each has an equal share of the table");
    let share = SIZE as usize / possible;
    let per_cpu = share * 94 / 100;
    for (k, cpu) in online.iter().copied().enumerate() {
        let ns = lab.server.clone();
        std::thread::spawn(move || {
            pin_to_cpu(cpu);
            in_netns(&ns, || {
                for i in 0..per_cpu {
                    let s = UdpSocket::bind(SocketAddr::from(([10, 203, 0, 1], (30000 + k * share + i) as u16))).unwrap();
                    s.send_to(b"query", "10.203.0.5:53").unwrap();
                }
            })
            .unwrap();
        })
        .join()
        .unwrap();
    }
    let opened = (per_cpu * online.len()) as u64;
    let line = daemon.wait_log_line("connection-tracking table (IPv4) is").expect("the 90% line in run's log");
    println!("{line}");
    // Checked every second: it may have seen the table while the last exchanges were opened.
    let at: u64 = line
        .split("% full: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(at * 10 >= SIZE * 9 && at <= opened && line.contains(&format!(" of {SIZE} entries; ")), "{line}");
    let s = stats();
    println!("conntrack {}, fragments {}", s["conntrack"], s["fragments"]);
    assert_eq!(s["conntrack"]["ipv4"]["entries"].as_u64(), Some(opened));
    assert!(s["conntrack"]["fill"].as_f64().unwrap() >= 0.9);
    assert_eq!(s["fragments"]["capacity"].as_u64(), Some(8192));
    let text = Command::new(dataplane_bin()).arg("stats").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    let want = format!(
        "table fill: connections IPv4 {opened} of {SIZE} ({:.1}%), IPv6 0 of {SIZE} (0.0%); fragments 0 of 8192 (0.0%)",
        opened as f64 * 100.0 / SIZE as f64
    );
    assert!(text.contains(&want), "{want} in\n{text}");
    // Once: a few more exchanges and seconds later, nothing more.
    in_netns(&lab.server, || UdpSocket::bind("10.203.0.1:29999").unwrap().send_to(b"query", "10.203.0.5:53").unwrap()).unwrap();
    let until = Instant::now() + Duration::from_millis(2500);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Ok(line) = daemon.log.recv_timeout(left) {
            assert!(!line.contains("% full"), "logged twice: {line}");
        }
    }
    assert!(daemon.stop().success());
}

//! Differential test of `dataplane export --format nft` against the XDP program, with real
//! packets over a veth pair.
//!
//! For each site, the same probes (TCP SYNs, UDP datagrams, ICMP and other protocols, both IP
//! versions, addresses and ports at the edges of every flow in force, random ones, protected and
//! unprotected destinations) are sent twice as raw frames through an AF_PACKET socket on the
//! client's end of the pair:
//!
//! 1. with the exported ruleset loaded in the server namespace (`nft -f`), no XDP;
//! 2. with the XDP program enforcing the site on the server's end (`Enforcer::start`), no
//!    exported ruleset.
//!
//! Observation, the same for both: an observer table in the server namespace, at hook
//! prerouting priority 100 (after the exported chain's -300), adds each probe's id to a set
//! (IPv4: the IP id; IPv6: the flow label; only packets with TTL/hop limit 61, so that the
//! kernel's own traffic is not counted). A probe arrived iff its id is in the set: an XDP drop
//! never reaches the stack, an nft drop at -300 ends the packet before priority 100, and a
//! passed packet reaches prerouting in both cases (the frames carry the server's MAC and a valid
//! IPv4 header checksum; addresses that ip_rcv/ipv6_rcv refuse before prerouting, such as
//! multicast or loopback, are not used). An AF_PACKET tap on the server would not do for nft:
//! it sees packets before the prerouting hook drops them.
//!
//! The server namespace has no address of the sites, so nothing it receives is answered and
//! the XDP reply tracking never comes into play (the export is the stateless inbound policy).
//! Frames are sent in small batches with pauses so that no queue of the veth pair overflows;
//! each side is also compared with the userspace classifier, which tells a lost packet from a
//! disagreement.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dataplane::classify::{Classifier, Outcome, Probe};
use dataplane::daemon::{Enforcer, Mode};
use dataplane::lab::netns::{in_netns, ip, Lab, CLIENT_IF, SERVER_IF};
use dataplane::policy::{load_site_from, Cidr, Policy};
use dataplane_tests::{packet::Pkt, rng::Rng};

const MARK_TTL: u8 = 61;
const SERVER_MAC: &str = "02:00:00:00:00:01";
const CLIENT_MAC: &str = "02:00:00:00:00:02";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn full(v6: bool) -> u128 {
    if v6 {
        u128::MAX
    } else {
        u32::MAX as u128
    }
}

fn host_bits(c: &Cidr) -> u128 {
    let w = c.width() as u32;
    if c.len as u32 >= w {
        0
    } else {
        full(c.v6) >> c.len
    }
}

/// An address of `c`: first, last, one outside on either side, or random inside.
fn addr_near(rng: &mut Rng, c: &Cidr, inside_only: bool) -> IpAddr {
    let h = host_bits(c);
    let first = c.addr;
    let last = c.addr | h;
    let a = match rng.below(if inside_only { 3 } else { 6 }) {
        0 => first,
        1 => last,
        2 => first | (((rng.next() as u128) << 64 | rng.next() as u128) & h),
        3 => first.wrapping_sub(1) & full(c.v6),
        4 => last.wrapping_add(1) & full(c.v6),
        _ => first | (((rng.next() as u128) << 64 | rng.next() as u128) & h),
    };
    to_ip(c.v6, a)
}

fn to_ip(v6: bool, a: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

/// Addresses the IP layer refuses (or treats specially) before the prerouting hook.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] != 0 && o[0] != 127 && o[0] < 224
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let high96_zero = s[..6].iter().all(|&x| x == 0);
            let mapped = s[..5].iter().all(|&x| x == 0) && s[5] == 0xffff;
            !(high96_zero || mapped || s[0] >> 8 == 0xff)
        }
    }
}

fn port_edges(r: &[(u16, u16)]) -> Vec<u16> {
    let mut v = vec![];
    for &(a, b) in r {
        v.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1), a + (b - a) / 2]);
    }
    v
}

/// The probes for a site: (packet, frame) pairs; ids are assigned when sending.
fn probes(p: &Policy, seed: u64, n_random: usize) -> Vec<Probe> {
    let mut rng = Rng::new(seed);
    let mut out = vec![];
    let cidrs = |r: usize| p.roles[r].cidrs.clone();
    let all: Vec<Cidr> = p.roles.iter().flat_map(|r| r.cidrs.iter().copied()).collect();
    let protected: Vec<Cidr> = p.protected().flat_map(|r| r.cidrs.iter().copied()).collect();
    let common = [0u16, 1, 53, 1023, 1024, 1025, 5060, 32767, 49152, 65535];
    // Edge cases of every flow: several per flow and family.
    for f in &p.flows {
        let (from, to) = (cidrs(f.from), cidrs(f.to));
        let dports = port_edges(&f.dport);
        let sports = port_edges(&f.sport);
        for v6 in [false, true] {
            let fr: Vec<Cidr> = from.iter().filter(|c| c.v6 == v6).copied().collect();
            let tr: Vec<Cidr> = to.iter().filter(|c| c.v6 == v6).copied().collect();
            if fr.is_empty() || tr.is_empty() {
                continue;
            }
            for i in 0..12 {
                let (fc, tc) = (*rng.pick(&fr), *rng.pick(&tr));
                let s = addr_near(&mut rng, &fc, i % 4 != 3);
                let d = addr_near(&mut rng, &tc, i % 6 != 5);
                let sport = if i % 5 == 4 { *rng.pick(&common) } else { *rng.pick(&sports) };
                let dport = if i % 7 == 6 { *rng.pick(&common) } else { *rng.pick(&dports) };
                // Mostly the flow's protocol; sometimes the other one.
                let proto = if i % 8 == 7 { 6 + 17 - f.proto } else { f.proto };
                out.push(Probe { src: s, dst: d, proto, sport, dport, icmp_type: None, quote: None });
            }
        }
    }
    // Random: any role's address (or a random one) to a protected address, or near one.
    for i in 0..n_random {
        let v6 = rng.below(2) == 1;
        let fam = |v: &[Cidr]| v.iter().filter(|c| c.v6 == v6).copied().collect::<Vec<_>>();
        let (srcs, dsts) = (fam(&all), fam(&protected));
        let s = if srcs.is_empty() || rng.below(5) == 0 {
            to_ip(v6, ((rng.next() as u128) << 64 | rng.next() as u128) & full(v6))
        } else {
            let c = *rng.pick(&srcs);
            addr_near(&mut rng, &c, false)
        };
        let d = if dsts.is_empty() {
            to_ip(v6, ((rng.next() as u128) << 64 | rng.next() as u128) & full(v6))
        } else {
            let c = *rng.pick(&dsts);
            addr_near(&mut rng, &c, i % 4 != 0)
        };
        let icmp = if v6 { 58 } else { 1 };
        let (proto, icmp_type) = match rng.below(20) {
            0..=7 => (6, None),
            8..=15 => (17, None),
            16 | 17 => (icmp, Some(*rng.pick(&[0u8, 3, 4, 5, 8, 11, 12, 13, 1, 2, 128, 129, 133, 135, 136, 137, 138, 255]))),
            18 => (*rng.pick(&[47u8, 132, 50, 41]), None),
            _ => (if v6 { 1 } else { 58 }, Some(*rng.pick(&[3u8, 8, 128, 135]))),
        };
        let sport = if rng.below(2) == 0 { *rng.pick(&common) } else { rng.next() as u16 };
        let dport = if rng.below(2) == 0 { *rng.pick(&common) } else { rng.next() as u16 };
        let (sport, dport) = if proto == 6 || proto == 17 { (sport, dport) } else { (0, 0) };
        out.push(Probe { src: s, dst: d, proto, sport, dport, icmp_type, quote: None });
    }
    out.retain(|p| usable(p.src) && usable(p.dst));
    out
}

/// The frame of probe `id` (IPv4: IP id; IPv6: flow label), TTL 61, valid IPv4 checksum.
fn frame(p: &Probe, id: u32) -> Vec<u8> {
    let pkt = match p.proto {
        6 => Pkt::tcp(p.src, p.dst, p.sport, p.dport),
        17 => Pkt::udp(p.src, p.dst, p.sport, p.dport),
        1 | 58 => Pkt::raw(p.src, p.dst, p.proto, vec![p.icmp_type.unwrap_or(8), 0, 0, 0, 0, 0, 0, 0]),
        n => Pkt::raw(p.src, p.dst, n, vec![0; 8]),
    };
    let mut f = pkt.build();
    let l3 = 14;
    if p.dst.is_ipv4() {
        f[l3 + 4..l3 + 6].copy_from_slice(&(id as u16).to_be_bytes());
        f[l3 + 8] = MARK_TTL;
        f[l3 + 10] = 0;
        f[l3 + 11] = 0;
        let ihl = (f[l3] & 0xf) as usize * 4;
        let mut sum = 0u32;
        for c in f[l3..l3 + ihl].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[l3 + 10..l3 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    } else {
        f[l3] = 0x60;
        f[l3 + 1] = ((id >> 16) & 0x0f) as u8;
        f[l3 + 2] = (id >> 8) as u8;
        f[l3 + 3] = id as u8;
        f[l3 + 7] = MARK_TTL;
    }
    f
}

fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft"]).args(args);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("nft (Debian package nftables) must be installed");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const OBSERVER: &str = "table inet observe
delete table inet observe
table inet observe {
    set seen4 { typeof ip id; size 65536; flags dynamic; }
    set seen6 { typeof ip6 flowlabel; size 65536; flags dynamic; }
    chain pre {
        type filter hook prerouting priority 100; policy accept;
        ip ttl 61 add @seen4 { ip id }
        ip6 hoplimit 61 add @seen6 { ip6 flowlabel }
    }
}
";

/// The ids in an observer set.
fn seen(ns: &str, set: &str) -> std::collections::HashSet<u32> {
    let out = nft(ns, &["-j", "list", "set", "inet", "observe", set], None);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ids = std::collections::HashSet::new();
    for item in v["nftables"].as_array().unwrap() {
        if let Some(elems) = item["set"]["elem"].as_array() {
            for e in elems {
                let n = e.as_u64().or_else(|| e["elem"]["val"].as_u64()).unwrap_or_else(|| panic!("set element {e}"));
                ids.insert(n as u32);
            }
        }
    }
    ids
}

/// Sends every frame from the client's end; paced so that no queue overflows.
fn send_all(ns: &str, frames: &[Vec<u8>]) {
    in_netns(ns, || {
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(CLIENT_IF).unwrap();
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0);
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        let r =
            unsafe { libc::bind(fd, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32) };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        for (i, f) in frames.iter().enumerate() {
            let n = unsafe { libc::send(fd, f.as_ptr() as *const _, f.len(), 0) };
            assert_eq!(n, f.len() as isize, "send: {}", std::io::Error::last_os_error());
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        unsafe { libc::close(fd) };
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

/// Which probes arrived: one bool per probe.
fn arrived(lab: &Lab, probes: &[Probe], frames: &[Vec<u8>], ids: &[u32]) -> Vec<bool> {
    nft(&lab.server, &["flush", "set", "inet", "observe", "seen4"], None);
    nft(&lab.server, &["flush", "set", "inet", "observe", "seen6"], None);
    send_all(&lab.client, frames);
    let (s4, s6) = (seen(&lab.server, "seen4"), seen(&lab.server, "seen6"));
    probes.iter().zip(ids).map(|(p, id)| if p.dst.is_ipv4() { s4.contains(id) } else { s6.contains(id) }).collect()
}

fn describe(p: &Probe) -> String {
    let proto = match p.proto {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        1 => "icmp".to_string(),
        58 => "icmpv6".to_string(),
        n => n.to_string(),
    };
    let icmp = p.icmp_type.map(|t| format!(", \"icmp_type\": {t}")).unwrap_or_default();
    format!(
        "{{\"src\": \"{}\", \"dst\": \"{}\", \"proto\": \"{proto}\", \"sport\": {}, \"dport\": {}{icmp}}}",
        p.src, p.dst, p.sport, p.dport
    )
}

fn run_site(site: &Path, seed: u64) {
    let started = Instant::now();
    let catalogs = root().join("policies/catalog");
    std::env::set_var("DATAPLANE_CATALOG_DIR", &catalogs);
    let policy = load_site_from(site, &catalogs).unwrap();
    let tables = dataplane::compile::compile(&policy).unwrap();
    let cls = Classifier::new(&tables);
    let export = dataplane::export::nft::render(&policy, &Default::default()).unwrap();

    let probes = probes(&policy, seed, 4000);
    let (mut n4, mut n6) = (0u32, 0u32);
    let ids: Vec<u32> = probes
        .iter()
        .map(|p| {
            let n = if p.dst.is_ipv4() { &mut n4 } else { &mut n6 };
            *n += 1;
            *n
        })
        .collect();
    assert!(n4 < 65536 && n6 < (1 << 20));
    let frames: Vec<Vec<u8>> = probes.iter().zip(&ids).map(|(p, &id)| frame(p, id)).collect();
    let expected: Vec<bool> = probes.iter().map(|p| cls.classify(p).allows()).collect();

    let lab = Lab::new("dpt-nft", &[], &[]).unwrap();
    ip(&["-n", &lab.server, "link", "set", SERVER_IF, "address", SERVER_MAC]).unwrap();
    ip(&["-n", &lab.client, "link", "set", CLIENT_IF, "address", CLIENT_MAC]).unwrap();
    nft(&lab.server, &["-f", "-"], Some(OBSERVER));

    // 1. The exported ruleset.
    nft(&lab.server, &["-f", "-"], Some(&export.text));
    let by_nft = arrived(&lab, &probes, &frames, &ids);
    nft(&lab.server, &["delete", "table", "inet", "dataplane"], None);

    // 2. The XDP program.
    let (enforcer, modes) = Enforcer::start(
        dataplane::policy::sources::SiteFiles::new(site, None),
        tables.clone(),
        &[SERVER_IF.to_string()],
        Mode::Auto,
        Some(&lab.server),
        Default::default(),
    )
    .unwrap();
    let by_xdp = arrived(&lab, &probes, &frames, &ids);
    drop(enforcer);

    let mut mismatches = vec![];
    let (mut lost_nft, mut lost_xdp) = (0, 0);
    for (i, p) in probes.iter().enumerate() {
        if by_nft[i] != by_xdp[i] {
            mismatches.push(format!(
                "  probe {i} (id {}): nft {} xdp {} (classifier {}; {:?}): {}",
                ids[i],
                if by_nft[i] { "pass" } else { "drop" },
                if by_xdp[i] { "pass" } else { "drop" },
                if expected[i] { "pass" } else { "drop" },
                cls.classify(p).reason,
                describe(p)
            ));
        }
        lost_nft += usize::from(by_nft[i] != expected[i]);
        lost_xdp += usize::from(by_xdp[i] != expected[i]);
    }
    let passed = expected.iter().filter(|&&e| e).count();
    println!(
        "{}: {} probes ({n4} IPv4, {n6} IPv6; {passed} expected to pass, {} to drop), XDP mode {:?}, \
         export {} rules; nft vs XDP mismatches {}, nft vs classifier {lost_nft}, XDP vs classifier {lost_xdp}; {:.1?}",
        policy.name,
        probes.len(),
        probes.len() - passed,
        modes,
        export.rules,
        mismatches.len(),
        started.elapsed()
    );
    assert!(passed > 100 && probes.len() - passed > 100, "probes should both pass and drop");
    assert!(
        mismatches.is_empty(),
        "{}: {} of {} probes differ between nft and XDP:\n{}",
        policy.name,
        mismatches.len(),
        probes.len(),
        mismatches.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!((lost_nft, lost_xdp), (0, 0), "{}: verdicts differ from the classifier (lost packets?)", policy.name);
}

#[test]
fn nft_export_matches_xdp_on_real_packets() {
    // One site at a time: the enforcer pins under /sys/fs/bpf/dataplane and the lab's
    // namespace names are fixed.
    run_site(&root().join("tests/sites/e2e.yaml"), 0x6e66_7401);
    run_site(&root().join("policies/sites/vcs-expressway.yaml"), 0x6e66_7402);
}

//! Differential test: the real XDP program (through BPF_PROG_TEST_RUN) against the userspace
//! classifier that `dataplane explain` answers from. Random and edge-case packets (both IP
//! versions, VLAN and QinQ, IPv4 options, IPv6 extension headers, addresses at and just outside
//! prefix edges, destination and source ports at the edges of the compiled port prefixes,
//! fragments) are built for several sites; for every packet the kernel's action and the reason
//! and flow counters that moved must be exactly what the classifier says.
//!
//! Everything is deterministic: each test prints its seeds, and a mismatch names the site, seed,
//! packet index, the packet and the frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use dataplane::classify::{verdict, Classifier, Outcome, Probe, Quote};
use dataplane::compile::tables::{PortValue, Tables};
use dataplane::policy::Cidr;
use dataplane_common::walk::Verdict;
use dataplane_common::{walk, Reason};
use dataplane_tests::{
    packet::{FragSpec, Pkt, TPID_8021AD, TPID_8021Q},
    rng::Rng,
    Harness, Observed, XDP_DROP, XDP_PASS,
};

// ---------------------------------------------------------------------------------------------
// Sites and what their compiled tables say about interesting addresses and ports.

/// An address prefix as an integer of `w` bits.
#[derive(Clone, Copy, Debug)]
struct Prefix {
    addr: u128,
    len: u32,
}

fn full(w: u32) -> u128 {
    if w == 128 {
        u128::MAX
    } else {
        (1u128 << w) - 1
    }
}

/// Host bits of a `len`-bit prefix in a `w`-bit address.
fn host_mask(len: u32, w: u32) -> u128 {
    if len >= w {
        0
    } else {
        full(w) >> len
    }
}

fn prefix(c: &Cidr) -> Prefix {
    Prefix { addr: c.addr, len: c.len as u32 }
}

/// The prefixes of one family of a prefix list.
fn prefixes<'a>(entries: impl IntoIterator<Item = &'a (Cidr, u32)>, v6: bool) -> Vec<Prefix> {
    entries.into_iter().filter(|(c, _)| c.v6 == v6).map(|(c, _)| prefix(c)).collect()
}

/// An address inside one of `ps`: its first or last address, or a random one.
fn addr_in(rng: &mut Rng, ps: &[Prefix], w: u32) -> u128 {
    let p = *rng.pick(ps);
    let host = host_mask(p.len, w);
    let net = p.addr & !host & full(w);
    match rng.below(4) {
        0 => net,
        1 => net | host,
        _ => net | (rng.u128() & host),
    }
}

/// An address at an edge of one of `ps` (first, last, one before, one after) or inside it.
fn addr_near(rng: &mut Rng, ps: &[Prefix], w: u32) -> u128 {
    let p = *rng.pick(ps);
    let host = host_mask(p.len, w);
    let net = p.addr & !host & full(w);
    match rng.below(10) {
        0 | 1 => net,
        2 | 3 => net | host,
        4 => net.wrapping_sub(1) & full(w),
        5 => (net | host).wrapping_add(1) & full(w),
        _ => net | (rng.u128() & host),
    }
}

fn to_ip(v6: bool, a: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

/// The first port of an interval and the last port before it.
fn port_edges(start: u16, out: &mut Vec<u16>) {
    out.extend([start, start.wrapping_sub(1)]);
}

/// A port at an edge of one of a table's intervals (or just outside it), or inside it.
fn port_near(rng: &mut Rng, starts: &[u16], i: usize) -> u16 {
    let first = starts[i];
    let last = starts.get(i + 1).map_or(u16::MAX, |s| s - 1);
    match rng.below(10) {
        0..=2 => first,
        3..=5 => last,
        6 => first.wrapping_sub(1),
        7 => last.wrapping_add(1),
        _ => first + (rng.next() as u16) % (last - first).saturating_add(1).max(1),
    }
}

const COMMON_PORTS: [u16; 9] = [0, 1, 53, 1023, 1024, 1025, 32767, 65534, 65535];

struct Site {
    name: String,
    tables: Tables,
    cls: Classifier,
    src_v4: Vec<Prefix>,
    dst_v4: Vec<Prefix>,
    src_v6: Vec<Prefix>,
    dst_v6: Vec<Prefix>,
    dports: Vec<u16>,
    sports: Vec<u16>,
}

impl Site {
    fn new(name: &str, tables: Tables) -> Self {
        let d = &tables.dir;
        let mut dports = COMMON_PORTS.to_vec();
        let mut sports = COMMON_PORTS.to_vec();
        let named: std::collections::HashSet<u32> = d
            .ports
            .iter()
            .flat_map(|t| t.values.iter())
            .filter_map(|v| if let PortValue::Sport(t) = v { Some(*t) } else { None })
            .collect();
        for (i, t) in d.ports.iter().enumerate() {
            let out = if named.contains(&(i as u32)) { &mut sports } else { &mut dports };
            t.starts.iter().for_each(|&s| port_edges(s, out));
        }
        dports.sort_unstable();
        dports.dedup();
        sports.sort_unstable();
        sports.dedup();
        let src = |v6| prefixes(d.src.iter().flatten(), v6);
        Site {
            name: name.into(),
            cls: Classifier::new(&tables),
            src_v4: src(false),
            dst_v4: prefixes(&d.dst_v4, false),
            src_v6: src(true),
            dst_v6: prefixes(&d.dst_v6, true),
            dports,
            sports,
            tables,
        }
    }

    /// A TCP/UDP packet aimed at one interval of one port table: to an address of a
    /// destination class, from an address its source trie maps to a policy with that table, to
    /// a destination port at (or just outside) the edges of the interval, from a source port at
    /// the edges of the interval's source-port table if it has one. None if the draw finds none.
    fn directed(&self, rng: &mut Rng, v6: bool) -> Option<Case> {
        let d = &self.tables.dir;
        if d.classes.is_empty() {
            return None;
        }
        let class = rng.below(d.classes.len() as u64) as u32 + 1;
        let dsts: Vec<Prefix> =
            d.dst_v4.iter().chain(&d.dst_v6).filter(|(c, v)| *v == class && c.v6 == v6).map(|(c, _)| prefix(c)).collect();
        if dsts.is_empty() {
            return None;
        }
        let record = d.classes[class as usize - 1];
        let trie = &d.src[if v6 { record.src_v6 } else { record.src_v4 } as usize];
        let with_policy: Vec<&(Cidr, u32)> = trie.iter().filter(|(_, p)| *p != 0).collect();
        if with_policy.is_empty() {
            return None;
        }
        let &&(src, policy) = rng.pick(&with_policy);
        let w = if v6 { 128 } else { 32 };
        let [tcp, udp] = d.policies[policy as usize - 1];
        let (proto, table) = match (tcp, udp) {
            (Some(t), Some(u)) => {
                if rng.chance(50) {
                    (6, t)
                } else {
                    (17, u)
                }
            }
            (Some(t), None) => (6, t),
            (None, Some(u)) => (17, u),
            (None, None) => return None,
        };
        let t = &d.ports[table as usize];
        let i = rng.below(t.starts.len() as u64) as usize;
        let sport = match t.values[i] {
            PortValue::Sport(s) if rng.chance(80) => {
                let st = &d.ports[s as usize];
                let j = rng.below(st.starts.len() as u64) as usize;
                port_near(rng, &st.starts, j)
            }
            _ => self.port(rng, &self.sports),
        };
        Some(Case {
            src: to_ip(v6, addr_in(rng, &[prefix(&src)], w)),
            dst: to_ip(v6, addr_in(rng, &dsts, w)),
            proto,
            sport,
            dport: port_near(rng, &t.starts, i),
            icmp_type: None,
            quote: None,
            payload: vec![0; 8],
        })
    }

    fn file(name: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/sites").join(format!("{name}.yaml"));
        let tables = dataplane::daemon::compile_site(&dataplane::policy::sources::SiteFiles::new(&path, None))
            .unwrap_or_else(|e| panic!("compiling {}: {e:#}", path.display()));
        Site::new(name, tables)
    }

    /// A synthetic site (overlapping CIDRs in 10/8 and fd00::/16), with the site-wide switches set.
    fn synthetic(flows: usize, cidrs: usize, seed: u64, drop_unprotected: bool, allow_echo: bool) -> Self {
        let mut policy = dataplane::policy::synth::synthetic_site(flows, cidrs, seed);
        policy.drop_unprotected = drop_unprotected;
        policy.allow_echo = allow_echo;
        let tables = dataplane::compile::compile(&policy).expect("compiling a synthetic site");
        Site::new(
            &format!("synthetic({flows}, {cidrs}, {seed}, drop_unprotected={drop_unprotected}, allow_echo={allow_echo})"),
            tables,
        )
    }

    fn harness(&self) -> Harness {
        Harness::new(&self.tables).unwrap_or_else(|e| panic!("{}: loading the XDP program: {e:#}", self.name))
    }

    /// An address of family `v6`: mostly near a prefix of the destination (or source) table,
    /// sometimes near one of the other table's, sometimes anywhere.
    fn address(&self, rng: &mut Rng, v6: bool, dst_side: bool) -> IpAddr {
        let w = if v6 { 128 } else { 32 };
        let (src, dst) = if v6 { (&self.src_v6, &self.dst_v6) } else { (&self.src_v4, &self.dst_v4) };
        let (mine, other) = if dst_side { (dst, src) } else { (src, dst) };
        let r = rng.below(100);
        let a = if r < 75 && !mine.is_empty() {
            addr_near(rng, mine, w)
        } else if r < 90 && !other.is_empty() {
            addr_near(rng, other, w)
        } else {
            rng.u128() & full(w)
        };
        to_ip(v6, a)
    }

    fn port(&self, rng: &mut Rng, edges: &[u16]) -> u16 {
        match rng.below(100) {
            0..=64 => *rng.pick(edges),
            65..=74 => *rng.pick(&COMMON_PORTS),
            _ => rng.next() as u16,
        }
    }

    /// A random packet of family `v6`: TCP or UDP only, or of every kind.
    fn case(&self, rng: &mut Rng, v6: bool, only_ports: bool) -> Case {
        if rng.chance(50) {
            if let Some(c) = self.directed(rng, v6) {
                // An ICMP error about the server's answer to a (probably) documented packet.
                if !only_ports && rng.chance(15) {
                    return c.error_about_reply(rng);
                }
                return c;
            }
        }
        let src = self.address(rng, v6, false);
        let dst = self.address(rng, v6, true);
        let icmp = if v6 { 58 } else { 1 };
        let proto = match rng.below(100) {
            _ if only_ports => {
                if rng.chance(50) {
                    6
                } else {
                    17
                }
            }
            0..=37 => 6,
            38..=75 => 17,
            76..=87 => icmp,
            // ICMP of the other family: just another protocol here.
            88..=89 => {
                if v6 {
                    1
                } else {
                    58
                }
            }
            // Other protocols (none of them an IPv6 extension header).
            _ => *rng.pick(&[2, 4, 41, 47, 50, 59, 89, 103, 132, 136, 253, 255]),
        };
        let icmp_type = (proto == icmp).then(|| {
            if rng.chance(85) {
                if v6 {
                    *rng.pick(&[0, 1, 2, 3, 4, 5, 127, 128, 129, 130, 132, 133, 134, 135, 136, 137, 138, 143, 255])
                } else {
                    *rng.pick(&[0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 17, 30, 255])
                }
            } else {
                rng.next() as u8
            }
        });
        // Most errors quote a packet: from the server or not, TCP, UDP or another protocol.
        let quote = icmp_type.filter(|&t| walk::icmp_error(v6, t) && rng.chance(70)).map(|_| Quote {
            src: if rng.chance(85) { dst } else { self.address(rng, v6, true) },
            dst: self.address(rng, v6, false),
            proto: *rng.pick(&[6, 6, 17, 17, 1, 58, 132]),
            sport: self.port(rng, &self.dports),
            dport: self.port(rng, &self.sports),
        });
        Case {
            src,
            dst,
            proto,
            sport: self.port(rng, &self.sports),
            dport: self.port(rng, &self.dports),
            icmp_type,
            quote,
            payload: (0..8).map(|_| rng.next() as u8).collect(),
        }
    }

    fn family(&self, rng: &mut Rng) -> bool {
        let has_v6 = !self.dst_v6.is_empty();
        let has_v4 = !self.dst_v4.is_empty();
        match (has_v4, has_v6) {
            (true, true) | (false, false) => rng.chance(50),
            (false, true) => rng.chance(90),
            (true, false) => rng.chance(10),
        }
    }
}

/// What the classifier and the frame builder both need.
#[derive(Clone, Debug)]
struct Case {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    icmp_type: Option<u8>,
    /// The packet an ICMP error quotes.
    quote: Option<Quote>,
    /// Body of "other protocol" packets.
    payload: Vec<u8>,
}

impl Case {
    fn packet(&self) -> Probe {
        Probe {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
            icmp_type: self.icmp_type,
            // The classifier reads a quote as the parser does: only a TCP or UDP one.
            quote: self.quote.filter(|q| matches!(q.proto, 6 | 17)),
        }
    }

    /// An ICMP error (unreachable, packet too big) from a router to this case's destination,
    /// quoting the server's answer to this case's packet.
    fn error_about_reply(self, rng: &mut Rng) -> Case {
        let v6 = self.dst.is_ipv6();
        let quote = Quote { src: self.dst, dst: self.src, proto: self.proto, sport: self.dport, dport: self.sport };
        let router = if v6 { "2001:db8:ffff::1".parse().unwrap() } else { "203.0.113.254".parse().unwrap() };
        let icmp_type = Some(if v6 { *rng.pick(&[1u8, 2]) } else { *rng.pick(&[3u8, 11]) });
        Case { src: router, proto: if v6 { 58 } else { 1 }, sport: 0, dport: 0, icmp_type, quote: Some(quote), ..self }
    }

    fn pkt(&self) -> Pkt {
        match (self.proto, self.icmp_type) {
            (6, _) => Pkt::tcp(self.src, self.dst, self.sport, self.dport),
            (17, _) => Pkt::udp(self.src, self.dst, self.sport, self.dport),
            (_, Some(ty)) if self.quote.is_some() => {
                let q = self.quote.unwrap();
                let inner = match q.proto {
                    6 => Pkt::tcp(q.src, q.dst, q.sport, q.dport),
                    17 => Pkt::udp(q.src, q.dst, q.sport, q.dport),
                    p => Pkt::raw(q.src, q.dst, p, vec![0; 8]),
                };
                Pkt::icmp_quoting(self.src, self.dst, ty, &inner, Pkt::quoted_len(&inner))
            }
            (_, Some(ty)) => Pkt::icmp(self.src, self.dst, ty),
            (p, None) => Pkt::raw(self.src, self.dst, p, self.payload.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wrappers that must not change the verdict.

#[derive(Clone, Copy, Debug)]
enum Tags {
    None,
    Dot1q,
    QinQ,
}

impl Tags {
    const ALL: [Tags; 3] = [Tags::None, Tags::Dot1q, Tags::QinQ];

    fn tpids(self) -> &'static [u16] {
        match self {
            Tags::None => &[],
            Tags::Dot1q => &[TPID_8021Q],
            Tags::QinQ => &[TPID_8021AD, TPID_8021Q],
        }
    }

    fn random(rng: &mut Rng) -> Self {
        *rng.pick(&Tags::ALL)
    }
}

/// A random IPv4 option length or IPv6 extension header chain of `max` headers at most.
fn random_l3_extras(rng: &mut Rng, p: Pkt, max: u64) -> Pkt {
    if !rng.chance(40) {
        return p;
    }
    if p.dst.is_ipv6() {
        let n = 1 + rng.below(max);
        let ext: Vec<u8> = (0..n).map(|_| *rng.pick(&[0u8, 43, 60])).collect();
        p.v6_ext(&ext)
    } else {
        p.v4_options(1 + rng.below(10) as u8)
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison.

fn expected(d: &Verdict) -> Observed {
    Observed {
        action: if d.allows() { XDP_PASS } else { XDP_DROP },
        reasons: vec![d.reason],
        flows: d.flow().into_iter().collect(),
        // No egress traffic in these tests: no connection is tracked, nothing is a reply.
        reply_flows: vec![],
    }
}

fn observed(reason: Reason, flow: Option<usize>) -> Observed {
    expected(&verdict(reason, flow))
}

/// Runs frames through the kernel and collects mismatches (all of them are reported at the end,
/// so that one run shows the whole picture).
struct Checker {
    site: String,
    seed: u64,
    sent: usize,
    /// Packets per expected reason, to show what the packets exercised.
    by_reason: [usize; Reason::ALL.len()],
    failures: Vec<String>,
}

impl Checker {
    fn new(site: &Site, seed: u64) -> Self {
        Checker { site: site.name.clone(), seed, sent: 0, by_reason: [0; Reason::ALL.len()], failures: vec![] }
    }

    fn check(&mut self, h: &mut Harness, what: &str, pkt: &Pkt, want: &Observed) -> Observed {
        let frame = pkt.build();
        let got = h.observe(&frame).expect("BPF_PROG_TEST_RUN");
        self.sent += 1;
        for r in &want.reasons {
            self.by_reason[*r as usize] += 1;
        }
        if &got != want {
            self.failures.push(format!(
                "site {} seed {:#x} packet #{} ({what}):\n  kernel:   {got:?}\n  expected: {want:?}\n  packet:   {pkt:?}\n  frame ({} bytes): {:02x?}",
                self.site,
                self.seed,
                self.sent - 1,
                frame.len(),
                frame
            ));
        }
        got
    }

    fn finish(self) -> Checked {
        Checked { sent: self.sent, by_reason: self.by_reason, failures: self.failures }
    }
}

struct Checked {
    sent: usize,
    by_reason: [usize; Reason::ALL.len()],
    failures: Vec<String>,
}

fn report(test: &str, started: Instant, results: Vec<Checked>, min_packets: usize) {
    let sent: usize = results.iter().map(|r| r.sent).sum();
    let by_reason: Vec<String> = Reason::ALL
        .iter()
        .map(|&r| (r, results.iter().map(|c| c.by_reason[r as usize]).sum::<usize>()))
        .filter(|&(_, n)| n > 0)
        .map(|(r, n)| format!("{r:?} {n}"))
        .collect();
    let failures: Vec<String> = results.into_iter().flat_map(|r| r.failures).collect();
    println!("{test}: {sent} packets through the kernel in {:.2?}, {} mismatches", started.elapsed(), failures.len());
    println!("{test}: expected verdicts: {}", by_reason.join(", "));
    assert!(sent >= min_packets, "{test}: only {sent} packets sent");
    if !failures.is_empty() {
        for f in failures.iter().take(20) {
            eprintln!("{f}\n");
        }
        panic!("{test}: {} of {sent} packets differ between the kernel and explain (first 20 above)", failures.len());
    }
}

fn sites() -> Vec<Site> {
    vec![
        Site::file("all-documents"),
        Site::file("vcs-expressway"),
        // source-ports: any, and "Any IP" bound with exceptions (its prefixes split around them).
        Site::file("vcs-expressway-nat"),
        Site::file("lab"),
        Site::file("meeting-server"),
        Site::synthetic(200, 48, 11, true, false),
        Site::synthetic(600, 160, 23, false, true),
    ]
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Random packets of every kind, each in a random wrapper, against `explain`.
#[test]
fn random_packets_match_explain() {
    const PER_SITE: usize = 1200;
    let started = Instant::now();
    let mut results = vec![];
    for (i, site) in sites().iter().enumerate() {
        let seed = 0xd1ff_0000 + i as u64;
        println!("random: site {} seed {seed:#x}", site.name);
        let mut rng = Rng::new(seed);
        let mut h = site.harness();
        let mut c = Checker::new(site, seed);
        for _ in 0..PER_SITE {
            let v6 = site.family(&mut rng);
            let case = site.case(&mut rng, v6, false);
            let want = expected(&site.cls.classify(&case.packet()));
            let tags = Tags::random(&mut rng);
            let pkt = random_l3_extras(&mut rng, case.pkt().vlans(tags.tpids()), 5);
            c.check(&mut h, "random", &pkt, &want);
        }
        results.push(c.finish());
    }
    report("random_packets_match_explain", started, results, 6000);
}

/// The same packet with no tag, an 802.1Q tag and QinQ, each with and without IPv4 options or
/// IPv6 extension headers (hop-by-hop, destination options, routing) and as an atomic fragment:
/// always the verdict `explain` gives.
#[test]
fn wrappers_do_not_change_the_decision() {
    const PER_SITE: usize = 60;
    let started = Instant::now();
    let mut results = vec![];
    for (i, site) in sites().iter().enumerate() {
        let seed = 0x3a9_0000 + i as u64;
        println!("wrappers: site {} seed {seed:#x}", site.name);
        let mut rng = Rng::new(seed);
        let mut h = site.harness();
        let mut c = Checker::new(site, seed);
        for n in 0..PER_SITE {
            let v6 = site.family(&mut rng);
            let case = site.case(&mut rng, v6, false);
            let want = expected(&site.cls.classify(&case.packet()));
            let l3: Vec<(&str, Pkt)> = if v6 {
                vec![
                    ("plain", case.pkt()),
                    ("hop-by-hop", case.pkt().v6_ext(&[0])),
                    ("destination options", case.pkt().v6_ext(&[60])),
                    ("routing", case.pkt().v6_ext(&[43])),
                    ("hop-by-hop, routing, destination options", case.pkt().v6_ext(&[0, 43, 60])),
                    ("six extension headers", case.pkt().v6_ext(&[0, 60, 43, 60, 43, 60])),
                    ("atomic fragment", case.pkt().v6_ext(&[0]).frag(FragSpec { offset8: 0, more: false, id: n as u32 })),
                ]
            } else {
                vec![
                    ("plain", case.pkt()),
                    ("1 word of options", case.pkt().v4_options(1)),
                    ("3 words of options", case.pkt().v4_options(3)),
                    ("10 words of options", case.pkt().v4_options(10)),
                    ("unfragmented with an id", case.pkt().frag(FragSpec { offset8: 0, more: false, id: n as u32 })),
                ]
            };
            for tags in Tags::ALL {
                for (what, p) in &l3 {
                    let p = p.clone().vlans(tags.tpids());
                    c.check(&mut h, &format!("{tags:?}, {what}"), &p, &want);
                }
            }
        }
        results.push(c.finish());
    }
    report("wrappers_do_not_change_the_decision", started, results, 2000);
}

/// Fragments: a first fragment gets the verdict of the whole packet; a later fragment of an
/// allowed datagram passes as `PassFragment` on the first fragment's flow slot; a later fragment
/// of a denied datagram, of an unseen datagram, or (TCP) one that would overlap the transport
/// header is dropped as `DropFragment`; to an unprotected address fragments are unprotected.
///
/// Most datagrams are TCP or UDP; some are ICMP or other protocols: a passed ICMP first fragment
/// is remembered too, so its later fragments pass with no flow counter.
#[test]
fn fragments_follow_their_first_fragment() {
    const PER_SITE: usize = 250;
    let started = Instant::now();
    let mut results = vec![];
    for (i, site) in sites().iter().enumerate() {
        let seed = 0xf4a6_0000 + i as u64;
        println!("fragments: site {} seed {seed:#x}", site.name);
        let mut rng = Rng::new(seed);
        let mut h = site.harness();
        let mut c = Checker::new(site, seed);
        // Fresh datagram ids (IPv4 ids are 16 bits: this stays well below 65536 per harness).
        let mut next_id = 1u32;
        let mut fresh = || {
            next_id += 1;
            next_id
        };
        for _ in 0..PER_SITE {
            let v6 = site.family(&mut rng);
            let only_ports = rng.chance(80);
            let case = site.case(&mut rng, v6, only_ports);
            let whole = site.cls.classify(&case.packet());
            let unprotected = matches!(whole.reason, Reason::PassUnprotected | Reason::DropUnprotected);
            let (id, stranger) = (fresh(), fresh());
            let tags = Tags::random(&mut rng);
            let extras = |rng: &mut Rng, p: Pkt| random_l3_extras(rng, p.vlans(tags.tpids()), 4);
            let frag = |offset8: u16, more: bool, id: u32| FragSpec { offset8, more, id };
            let later_off = 3 + rng.below(200) as u16;
            // What a later fragment gets, given what its first fragment was recorded as.
            // `recorded`: the first fragment passed, crediting this flow slot (None for ICMP).
            let later_want = |recorded: Option<Option<usize>>, offset8: u16| {
                if unprotected {
                    expected(&whole)
                } else if case.proto == 6 && offset8 < 3 {
                    observed(Reason::DropFragment, None)
                } else {
                    match recorded {
                        Some(slot) => observed(Reason::PassFragment, slot),
                        None => observed(Reason::DropFragment, None),
                    }
                }
            };

            // A later fragment before any first fragment of its datagram.
            let more = rng.chance(50);
            let p = extras(&mut rng, case.pkt().frag(frag(later_off, more, id)));
            c.check(&mut h, "later fragment before its first", &p, &later_want(None, later_off));

            // The first fragment: the verdict of the whole packet.
            let p = extras(&mut rng, case.pkt().frag(frag(0, true, id)));
            c.check(&mut h, "first fragment", &p, &expected(&whole));
            let recorded = (!whole.reason.is_drop()).then_some(whole.flow());

            // Later fragments of the same datagram (the last one, and one in the middle).
            for more in [true, false] {
                let off = if more { 3 + rng.below(100) as u16 } else { later_off };
                let p = extras(&mut rng, case.pkt().frag(frag(off, more, id)));
                c.check(&mut h, "later fragment", &p, &later_want(recorded, off));
            }
            // TCP at offset 8 or 16 bytes would rewrite the first fragment's header (RFC 1858).
            if case.proto == 6 {
                let off = 1 + rng.below(2) as u16;
                let p = extras(&mut rng, case.pkt().frag(frag(off, true, id)));
                c.check(&mut h, "overlapping TCP fragment", &p, &later_want(recorded, off));
            }
            // A later fragment of a datagram whose first fragment never came.
            let p = extras(&mut rng, case.pkt().frag(frag(later_off, false, stranger)));
            c.check(&mut h, "later fragment with an unseen id", &p, &later_want(None, later_off));
        }
        results.push(c.finish());
    }
    report("fragments_follow_their_first_fragment", started, results, 2000);
}

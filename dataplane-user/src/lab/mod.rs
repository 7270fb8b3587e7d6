//! `dataplane lab`: the product on a built-in lab. Two network namespaces joined by a veth pair;
//! the server side is protected by the lab site; a client with addresses in several roles sends
//! documented and undocumented TCP and UDP; what got through is compared with what `explain`
//! predicts, next to the live counters; the protected server also queries a DNS server itself, and
//! only the documented query gets its answer back. Then real calls (`call_rounds`): SIP with RTP
//! on a documented and an undocumented media port, and a TURN relay. Everything is torn down at
//! the end, on Ctrl-C too.
//!
//! `dataplane lab --gateway`: the same, with the protected server behind a gateway (three
//! namespaces, see `gateway`): `dataplane` enforces on the gateway's outside interface, for an
//! address that is not the gateway's own.

pub mod call_rounds;
pub mod calls;
pub mod gateway;
pub mod netns;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Result};
use dataplane_common::walk::Verdict;

use crate::{
    classify::{self, verdict::Action, Outcome},
    daemon::{compile_site, Enforcer, Mode},
    observe::stats::Stats,
    policy::sources::SiteFiles,
};
use netns::{Lab, Servers, SERVER_IF};

/// Where the lab's protected server sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// The client and the server joined by a veth pair, enforcing on the server's side.
    Direct,
    /// Behind a gateway, enforcing on the gateway; `forward`: on both its interfaces, forwarding
    /// the allowed packets in XDP (`run --forward`).
    Gateway { forward: bool },
}

/// The addresses of one lab: the protected server (IPv4, IPv6), the clients with their roles,
/// and the DNS server the protected server queries (a client-side address).
pub struct Addrs {
    pub server: [&'static str; 2],
    pub clients: [(&'static str, &'static str); 6],
    pub dns: &'static str,
}

const DIRECT: Addrs = Addrs { server: SERVER, clients: CLIENTS, dns: DNS_SERVER };

/// Where a lab's traffic runs: the client's and the protected server's namespaces.
pub struct Net<'a> {
    pub client: &'a str,
    pub server: &'a str,
    pub addrs: &'a Addrs,
}

const SERVER: [&str; 2] = ["10.200.0.1", "fd00:200::1"];
/// Client addresses: the management PC, the VCS Control, and an address in no named role.
const CLIENTS: [(&str, &str); 6] = [
    ("10.200.0.2", "management PC"),
    ("10.200.0.3", "VCS Control"),
    ("10.200.0.9", "no named role"),
    ("fd00:200::2", "management PC"),
    ("fd00:200::3", "VCS Control"),
    ("fd00:200::9", "no named role"),
];
/// The caller of the real calls and the TURN client: the address in no named role (any-ip).
const CALLER: &str = "10.200.0.9";
/// Documented and undocumented ports the clients try.
const PROBES: [(u8, u16); 10] =
    [(6, 22), (6, 443), (6, 5061), (6, 7001), (6, 8080), (17, 161), (17, 5060), (17, 3478), (17, 36000), (17, 9999)];
const UDP_BURST: usize = 5;
/// The lab's DNS server, in the client namespace: the Expressway queries it itself.
const DNS_SERVER: &str = "10.200.0.5";
/// Queries the protected server sends: (source port base, destination port, what it is). The
/// mDNS query comes from a port outside every outbound range of the catalog (media, SIP, TURN).
const OUTBOUND: [(u16, u16, &str); 2] = [(41000, 53, "DNS query"), (61000, 5353, "mDNS query")];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn default_site(name: &str) -> PathBuf {
    let local = PathBuf::from("policies/sites").join(name);
    if local.exists() {
        return local;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/sites")).join(name)
}

/// Runs the lab: `site` (default: the lab's own for the topology) for `rounds` of traffic.
pub fn lab(site: Option<PathBuf>, rounds: u32, topology: Topology) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces and loads an XDP program: run it as root");
    }
    // Ctrl-C and SIGTERM stop the traffic; the namespaces are then removed on the way out.
    stop_on_signals();
    let default = if topology == Topology::Direct { "lab.yaml" } else { "lab-gateway.yaml" };
    let site = site.unwrap_or_else(|| default_site(default));
    println!("lab: compiling {}", site.display());
    let files = SiteFiles::new(&site, None);
    let tables = compile_site(&files)?;
    if let Topology::Gateway { forward } = topology {
        return crate::lab::gateway::lab(files, tables, rounds, forward);
    }

    println!("lab: creating namespaces dp-lab-c (client) and dp-lab-s (server) joined by a veth pair");
    let server_addrs = [format!("{}/24", SERVER[0]), format!("{}/64", SERVER[1])];
    let mut client_addrs: Vec<String> =
        CLIENTS.iter().map(|(a, _)| format!("{a}/{}", if a.contains(':') { 64 } else { 24 })).collect();
    client_addrs.push(format!("{DNS_SERVER}/24"));
    let lab = Lab::new(
        "dp-lab",
        &server_addrs.iter().map(String::as_str).collect::<Vec<_>>(),
        &client_addrs.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;

    let (mut enforcer, modes) =
        Enforcer::start(files, tables, &[SERVER_IF.to_string()], Mode::Auto, Some(&lab.server), Default::default())?;
    let tables = &enforcer.tables;
    println!(
        "lab: XDP attached to {SERVER_IF} in dp-lab-s ({} mode): {} flows, {} protected prefixes",
        modes[0],
        tables.flows.len(),
        tables.dir.dst_v4.len() + tables.dir.dst_v6.len()
    );
    let mismatches = traffic(&Net { client: &lab.client, server: &lab.server, addrs: &DIRECT }, tables, rounds)?;
    let mut failed_calls = 0;
    if !STOP.load(Ordering::Relaxed) {
        let net = calls::CallNet {
            client_ns: &lab.client,
            server_ns: &lab.server,
            caller: CALLER.parse()?,
            server: SERVER[0].parse()?,
        };
        failed_calls = call_rounds::run(&mut enforcer, &net)?;
    }
    drop(enforcer);
    println!("\nlab: tearing down namespaces");
    drop(lab);
    verdict(mismatches)?;
    if failed_calls > 0 {
        bail!("{failed_calls} calls or relays did not go as the catalog documents");
    }
    Ok(())
}

/// The end of a lab: every probe as explain predicted, or an error saying how many were not.
pub fn verdict(mismatches: usize) -> Result<()> {
    if mismatches > 0 {
        bail!("{mismatches} probes did not get the verdict explain predicted");
    }
    println!("lab: every probe got the verdict explain predicted");
    Ok(())
}

/// Installs signal handlers that stop `traffic` between rounds (Ctrl-C, SIGTERM).
pub fn stop_on_signals() {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// The lab's rounds of traffic against the enforcing `tables`, the counters after each; returns
/// the probes that did not get the verdict explain predicted.
pub fn traffic(net: &Net, tables: &crate::compile::tables::Tables, rounds: u32) -> Result<usize> {
    let servers = start_servers(net)?;
    let dns: IpAddr = net.addrs.dns.parse()?;
    let peers = Servers::start(net.client, &[], &OUTBOUND.map(|(_, port, _)| SocketAddr::new(dns, port)))?;
    let classifier = classify::Classifier::new(tables);

    let mut mismatches = 0;
    for round in 0..rounds {
        if STOP.load(Ordering::Relaxed) {
            println!("lab: interrupted");
            break;
        }
        println!("\nlab: round {} of {}", round + 1, rounds);
        mismatches += run_round(net, &servers, &classifier, tables, round)?;
        mismatches += run_outbound(net, tables, round)?;
        print!("{}", Stats::read_pinned(&tables.flows, tables.outbound_flows())?.render());
    }
    drop((servers, peers));
    Ok(mismatches)
}

fn start_servers(net: &Net) -> Result<Servers> {
    let mut tcp = vec![];
    let mut udp = vec![];
    for server in net.addrs.server {
        let ip: IpAddr = server.parse()?;
        for (proto, port) in PROBES {
            let list = if proto == 6 { &mut tcp } else { &mut udp };
            list.push(SocketAddr::new(ip, port));
        }
    }
    Servers::start(net.server, &tcp, &udp)
}

/// One send of a round, with the verdict `explain` predicts for it.
struct Trial {
    client: IpAddr,
    role: &'static str,
    proto: u8,
    sport: u16,
    dst: SocketAddr,
    udp_index: Option<usize>,
    expect: Verdict,
}

fn allows(v: &Verdict) -> bool {
    v.action() == Action::Allow
}

/// Sends every probe at once (threads), then compares the outcome with the prediction.
fn run_round(
    net: &Net,
    servers: &Servers,
    classifier: &classify::Classifier,
    tables: &crate::compile::tables::Tables,
    round: u32,
) -> Result<usize> {
    let mut probes = vec![];
    let mut udp_index = 0;
    for (si, server) in net.addrs.server.iter().enumerate() {
        let server: IpAddr = server.parse()?;
        for (i, (proto, port)) in PROBES.iter().copied().enumerate() {
            let this_udp = (proto == 17).then(|| {
                udp_index += 1;
                udp_index - 1
            });
            for (ci, (client, role)) in net.addrs.clients.iter().enumerate() {
                let client: IpAddr = client.parse()?;
                if client.is_ipv4() != server.is_ipv4() {
                    continue;
                }
                let sport = 40000 + (round as u16) * 600 + (si * 300 + ci * 30 + i) as u16;
                let packet = classify::Probe::ported(client, server, proto, sport, port);
                probes.push(Trial {
                    client,
                    role,
                    proto,
                    sport,
                    dst: SocketAddr::new(server, port),
                    udp_index: this_udp,
                    expect: classifier.classify(&packet),
                });
            }
        }
    }
    let before: Vec<u64> = servers.udp_received.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let outcomes: Vec<Result<bool>> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .filter(|p| p.proto == 6)
            .map(|p| {
                s.spawn(|| {
                    netns::tcp_exchange_from(net.client, SocketAddr::new(p.client, p.sport), p.dst, Duration::from_millis(800))
                })
            })
            .collect();
        for p in probes.iter().filter(|p| p.proto == 17) {
            let _ = netns::udp_send_from(net.client, SocketAddr::new(p.client, p.sport), p.dst, UDP_BURST);
        }
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Ok(false))).collect()
    });
    std::thread::sleep(Duration::from_millis(200));

    // UDP: several clients share a server socket, so compare the total each socket received.
    let mut expected_udp = vec![0u64; servers.udp_received.len()];
    for p in probes.iter().filter(|p| allows(&p.expect)) {
        if let Some(i) = p.udp_index {
            expected_udp[i] += UDP_BURST as u64;
        }
    }
    let mut mismatches = 0;
    let mut tcp_results = outcomes.into_iter();
    for p in &probes {
        let got = match p.udp_index {
            None => tcp_results.next().transpose()?.unwrap_or(false),
            Some(i) => servers.udp_received[i].load(Ordering::Relaxed) - before[i] == expected_udp[i] && allows(&p.expect),
        };
        let ok = match p.udp_index {
            None => got == allows(&p.expect),
            Some(i) => servers.udp_received[i].load(Ordering::Relaxed) - before[i] == expected_udp[i],
        };
        if !ok {
            mismatches += 1;
            if let Some(i) = p.udp_index {
                println!(
                    "    udp {}: the server socket received {} datagrams, {} expected",
                    p.dst,
                    servers.udp_received[i].load(Ordering::Relaxed) - before[i],
                    expected_udp[i]
                );
            }
        }
        let flow = p.expect.flow().map(|s| tables.flows[s].id.as_str()).unwrap_or("-");
        println!(
            "  {:<12} {:<14} -> {:<5} {:>5}  explain: {:<5} {:<14} {:<34} {}",
            p.client.to_string(),
            p.role,
            if p.proto == 6 { "tcp" } else { "udp" },
            p.dst.port(),
            p.expect.action(),
            p.expect.reason.name(),
            flow,
            match (ok, got) {
                (true, true) => "got through",
                (true, false) => "blocked",
                (false, _) => "MISMATCH",
            }
        );
    }
    Ok(mismatches)
}

/// The protected server queries the lab's DNS server itself: the documented query's answer
/// comes back (a tracked connection), the undocumented one's is dropped.
fn run_outbound(net: &Net, tables: &crate::compile::tables::Tables, round: u32) -> Result<usize> {
    let outbound = classify::Classifier::new_outbound(tables);
    let (server, dns): (IpAddr, IpAddr) = (net.addrs.server[0].parse()?, net.addrs.dns.parse()?);
    let mut mismatches = 0;
    for (base, port, what) in OUTBOUND {
        let sport = base + round as u16;
        let packet = classify::Probe::ported(server, dns, 17, sport, port);
        let expect = outbound.as_ref().map(|c| c.classify_outbound(&packet));
        let tracked = expect.as_ref().is_some_and(allows);
        let flow = expect.and_then(|d| d.flow()).and_then(|s| tables.outbound_flows().get(s).map(|f| f.id.clone()));
        let answered =
            netns::udp_query(net.server, SocketAddr::new(server, sport), SocketAddr::new(dns, port), Duration::from_millis(500))?;
        if answered != tracked {
            mismatches += 1;
        }
        println!(
            "  {:<12} {:<14} -> {:<5} {:>5}  explain: {:<5} {:<14} {:<34} {}",
            server.to_string(),
            "(the server)",
            "udp",
            port,
            if tracked { "track" } else { "deny" },
            what,
            flow.as_deref().unwrap_or("-"),
            match (answered == tracked, answered) {
                (true, true) => "answered",
                (true, false) => "answer dropped",
                (false, _) => "MISMATCH",
            }
        );
    }
    Ok(mismatches)
}

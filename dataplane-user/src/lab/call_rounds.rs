//! The lab's last rounds: real calls (`calls`) across the enforcing program, each with the flow
//! `explain` says carries it and the counters it moved.

use std::net::IpAddr;

use anyhow::Result;

use super::calls::{self, CallNet, Transport, Workdir, RTP_PACKETS, TURN_MESSAGES};
use crate::{
    classify::{Classifier, Outcome, Probe},
    compile::tables::Tables,
    daemon::Enforcer,
    observe::stats::Stats,
    policy::sources::SiteFiles,
};

/// Counters of one moment: inbound flows, outbound flows (sent, replies), drops for no flow.
struct Snapshot {
    inbound: Vec<u64>,
    outbound: Vec<u64>,
    no_flow: u64,
}

impl Snapshot {
    fn read(tables: &Tables) -> Result<Self> {
        let s = Stats::read_pinned(&tables.flows, tables.outbound_flows())?;
        let no_flow = s.reasons.iter().find(|r| r.reason == dataplane_common::Reason::DropNoFlow).map_or(0, |r| r.packets);
        Ok(Self {
            inbound: s.flows.iter().map(|f| f.packets).collect(),
            outbound: s.outbound.iter().map(|f| f.packets).collect(),
            no_flow,
        })
    }
}

/// What an exchange moved: per flow slot, and the drops.
struct Moved<'a> {
    tables: &'a Tables,
    before: Snapshot,
    after: Snapshot,
}

impl Moved<'_> {
    fn inbound(&self, slot: Option<usize>) -> u64 {
        slot.map_or(0, |s| self.after.inbound[s] - self.before.inbound[s])
    }

    fn outbound(&self, slot: Option<usize>) -> u64 {
        slot.map_or(0, |s| self.after.outbound[s] - self.before.outbound[s])
    }

    fn no_flow(&self) -> u64 {
        self.after.no_flow - self.before.no_flow
    }

    /// "flow +n, ..., out: flow +n, ..., dropped (no flow) +n": every counter that moved.
    fn render(&self) -> String {
        let mut parts = vec![];
        for (i, f) in self.tables.flows.iter().enumerate() {
            if self.inbound(Some(i)) > 0 {
                parts.push(format!("{} +{}", f.id, self.inbound(Some(i))));
            }
        }
        for (i, f) in self.tables.outbound_flows().iter().enumerate() {
            if self.outbound(Some(i)) > 0 {
                parts.push(format!("out {} +{}", f.id, self.outbound(Some(i))));
            }
        }
        if self.no_flow() > 0 {
            parts.push(format!("dropped (no flow) +{}", self.no_flow()));
        }
        if parts.is_empty() {
            "no counter moved".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The slot of the flow `explain` says allows `src:sport -> dst:dport` (udp), inbound or
/// sent by the protected server.
fn inbound_slot(tables: &Tables, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Option<usize> {
    let v = Classifier::new(tables).classify(&Probe::ported(src, dst, 17, sport, dport));
    v.flow().filter(|_| v.allows())
}

fn outbound_slot(tables: &Tables, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Option<usize> {
    let v = Classifier::new_outbound(tables)?.classify_outbound(&Probe::ported(src, dst, 17, sport, dport));
    v.flow().filter(|_| v.allows())
}

fn name(flows: &[crate::compile::tables::FlowInfo], slot: Option<usize>) -> &str {
    slot.map_or("no flow", |s| flows[s].id.as_str())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "as expected"
    } else {
        "MISMATCH"
    }
}

/// Installs what the calls need, runs them, and switches the site's TURN option on for the relay
/// when it is off. Returns the exchanges that did not go as documented.
pub fn run(enforcer: &mut Enforcer, net: &CallNet) -> Result<usize> {
    println!("\nlab: real calls from {} (no named role: any-ip) to the Expressway {}", net.caller, net.server);
    if let Err(skip) = calls::install() {
        println!("lab: {skip}");
        return Ok(0);
    }
    let dir = Workdir::new()?;
    let mut mismatches = 0;
    for (transport, media) in [
        (Transport::Udp, calls::DOCUMENTED_MEDIA_PORT),
        (Transport::Tcp, calls::DOCUMENTED_MEDIA_PORT),
        (Transport::Udp, calls::UNDOCUMENTED_MEDIA_PORT),
    ] {
        mismatches += usize::from(!call(&enforcer.tables, &dir, net, transport, media)?);
    }
    mismatches += usize::from(!turn(enforcer, &dir, net)?);
    Ok(mismatches)
}

/// One call (sipp caller and callee), its signalling and its media on their flows.
fn call(tables: &Tables, dir: &Workdir, net: &CallNet, transport: Transport, media: u16) -> Result<bool> {
    let (caller, server) = (net.caller, net.server);
    let rtp_in = inbound_slot(tables, caller, 6000, server, media);
    let rtp_out = outbound_slot(tables, server, media, caller, 6000);
    let udp_before = calls::udp_datagrams_received(net.server_ns)?;
    let before = Snapshot::read(tables)?;
    let completed = calls::sip_call(dir, net, transport, media)?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let moved = Moved { tables, before, after: Snapshot::read(tables)? };
    let sip_in = inbound_slot(tables, caller, 5060, server, 5060).filter(|_| transport == Transport::Udp);
    // Datagrams the Expressway's sockets got other than the caller's SIP: the RTP it received.
    let received = (calls::udp_datagrams_received(net.server_ns)? - udp_before).saturating_sub(moved.inbound(sip_in));
    let close = |n: u64| n + 2 >= RTP_PACKETS && n <= RTP_PACKETS;
    let ok = completed
        && if rtp_in.is_some() {
            close(moved.inbound(rtp_in)) && close(moved.outbound(rtp_out)) && close(received)
        } else {
            received == 0 && moved.no_flow() + 2 >= RTP_PACKETS
        };
    println!(
        "  SIP call over {} to port 5060, the Expressway's media on udp {media}: {}; {}",
        transport.name(),
        if completed { "INVITE, 200, ACK, BYE completed" } else { "the call FAILED" },
        verdict(ok)
    );
    let echoed = match rtp_out {
        Some(_) => format!("{} on {}", moved.outbound(rtp_out), name(tables.outbound_flows(), rtp_out)),
        None => "none".into(),
    };
    println!(
        "    caller's RTP: {RTP_PACKETS} sent, {received} reached the Expressway (explain: {}); the callee's echo: {echoed}",
        name(&tables.flows, rtp_in),
    );
    println!("    counters moved: {}", moved.render());
    if !completed {
        println!("    caller: {}", calls::tail(dir, "caller.log", 3).replace('\n', "\n    caller: "));
    }
    Ok(ok)
}

/// The TURN relay; when the site has TURN off, the site is reloaded with it on first (and the
/// lab says so).
fn turn(enforcer: &mut Enforcer, dir: &Workdir, net: &CallNet) -> Result<bool> {
    let control = |t: &Tables| inbound_slot(t, net.caller, 40000, net.server, 3478);
    if control(&enforcer.tables).is_none() {
        match turn_on(enforcer, dir) {
            Ok(()) if control(&enforcer.tables).is_some() => {}
            Ok(()) => {
                println!("  TURN relay: the site documents no TURN flow even with turn: true; skipped");
                return Ok(true);
            }
            Err(e) => {
                println!("  TURN relay: cannot switch the site's option turn on ({e:#}); skipped");
                return Ok(true);
            }
        }
    }
    let tables = &enforcer.tables;
    let (first, _) = calls::TURN_RELAY_PORTS;
    let relay_in = inbound_slot(tables, net.caller, 3480, net.server, first);
    let relay_out = outbound_slot(tables, net.server, first, net.caller, 3480);
    let before = Snapshot::read(tables)?;
    let relayed = calls::turn_relay(dir, net)?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let moved = Moved { tables, before, after: Snapshot::read(tables)? };
    let r = relayed.unwrap_or_default();
    let ok = r.sent == TURN_MESSAGES
        && r.received == TURN_MESSAGES
        && moved.inbound(relay_in) >= TURN_MESSAGES
        && moved.outbound(relay_out) >= TURN_MESSAGES
        && moved.inbound(control(tables)) > 0;
    println!(
        "  TURN allocation on udp 3478, relay ports {}-{}: {} messages sent to the peer through the relay, {} echoed back; {}",
        calls::TURN_RELAY_PORTS.0,
        calls::TURN_RELAY_PORTS.1,
        r.sent,
        r.received,
        verdict(ok)
    );
    println!(
        "    control on {}; relay to the peer on {} +{}, the peer's data on {} +{}",
        name(&tables.flows, control(tables)),
        name(tables.outbound_flows(), relay_out),
        moved.outbound(relay_out),
        name(&tables.flows, relay_in),
        moved.inbound(relay_in)
    );
    println!("    counters moved: {}", moved.render());
    if relayed.is_none() || !ok {
        println!("    turnutils_uclient: {}", calls::tail(dir, "uclient.log", 3).replace('\n', "\n    turnutils_uclient: "));
    }
    Ok(ok)
}

/// Reloads the enforced site with its option `turn` set to true (a copy in `dir`).
fn turn_on(enforcer: &mut Enforcer, dir: &Workdir) -> Result<()> {
    let files = enforcer.files().clone();
    let mut site: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&files.site)?)?;
    let options = site
        .as_mapping_mut()
        .ok_or_else(|| anyhow::anyhow!("the site is not a mapping"))?
        .entry("options".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    options.as_mapping_mut().ok_or_else(|| anyhow::anyhow!("options is not a mapping"))?.insert("turn".into(), true.into());
    let copy = dir.path.join("lab-turn.yaml");
    std::fs::write(&copy, serde_yaml::to_string(&site)?)?;
    println!(
        "  TURN is off in {} (option turn): reloading it with turn: true, as `dataplane run` reloads an edited site",
        files.site.display()
    );
    Ok(enforcer.reload_from(SiteFiles { site: copy, catalog_dir: files.catalog_dir })?)
}

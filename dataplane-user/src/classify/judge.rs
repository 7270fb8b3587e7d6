//! A policy compiled once and judging tuples the way `explain` does (the same compiler, the same
//! classifier over the same tables), for `diff` and `suggest`: whatever they claim about a tuple,
//! `explain` on it agrees.

use std::net::IpAddr;

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};

use crate::classify::{Classifier, Decision, Packet, IPPROTO_TCP, IPPROTO_UDP};
use crate::compile::tables::{FlowInfo, Tables};
use crate::policy::{Flow, Policy};
use dataplane_common::Reason;

/// Which way a packet goes: to a protected address, or sent by a protected server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    In,
    Out,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::In, Dir::Out];

    /// The flows of this direction.
    pub fn flows(self, p: &Policy) -> &[Flow] {
        match self {
            Dir::In => &p.flows,
            Dir::Out => &p.out_flows,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dir::In => "inbound",
            Dir::Out => "outbound",
        }
    }
}

pub use crate::policy::FlowKey as Key;

/// The compiled tables of a policy and a classifier per direction.
pub struct Judge {
    pub tables: Tables,
    inbound: Classifier,
    outbound: Option<Classifier>,
}

/// What `explain` answers for a tuple: verdict, credited flow, reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub verdict: &'static str,
    pub flow: Option<String>,
    pub reason: &'static str,
    #[serde(skip)]
    pub key: Option<Key>,
}

impl Verdict {
    pub fn allow(&self) -> bool {
        self.verdict == "allow"
    }
}

impl Judge {
    pub fn new(p: &Policy) -> Result<Judge> {
        let tables = crate::compile::compile(p)?;
        Ok(Judge { inbound: Classifier::new(&tables), outbound: Classifier::new_outbound(&tables), tables })
    }

    pub fn decide(&self, dir: Dir, p: &Packet) -> Decision {
        match (dir, &self.outbound) {
            (Dir::In, _) => self.inbound.classify(p),
            (Dir::Out, Some(c)) => c.classify_outbound(p),
            (Dir::Out, None) => Decision::new(Reason::DropNoFlow, None),
        }
    }

    /// The flow a slot of this direction counts.
    pub fn info(&self, dir: Dir, slot: Option<usize>) -> Option<&FlowInfo> {
        let flows = match dir {
            Dir::In => &self.tables.flows,
            Dir::Out => &self.tables.outbound.as_ref()?.flows,
        };
        flows.get(slot?)
    }

    /// `explain`'s answer (`reason` "outbound" for a tracked outbound connection).
    pub fn verdict(&self, dir: Dir, p: &Packet) -> Verdict {
        let d = self.decide(dir, p);
        let info = self.info(dir, d.flow);
        Verdict {
            verdict: if d.allow { "allow" } else { "deny" },
            flow: info.map(|f| f.id.clone()),
            reason: if dir == Dir::Out && d.allow { "outbound" } else { d.reason.name() },
            key: info.map(FlowInfo::key),
        }
    }
}

pub fn proto_name(p: u8) -> Value {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        1 | 58 => "icmp".into(),
        n => n.into(),
    }
}

/// The tuple as an `explain` input line (`"direction": "out"` for outbound).
pub fn packet_json(dir: Dir, p: &Packet) -> Value {
    let mut v = json!({"src": p.src, "dst": p.dst, "proto": proto_name(p.proto)});
    if p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP {
        v["sport"] = p.sport.into();
        v["dport"] = p.dport.into();
    }
    if dir == Dir::Out {
        v["direction"] = "out".into();
    }
    v
}

/// `udp 10.0.0.1:40000 -> 10.0.0.2:3478` (`icmp 10.0.0.1 -> 10.0.0.2`).
pub fn render_packet(p: &Packet) -> String {
    let proto = match proto_name(p.proto) {
        Value::String(s) => s,
        n => format!("proto {n}"),
    };
    let ported = p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP;
    let at = |ip: IpAddr, port: u16| match (ported, ip) {
        (false, _) => ip.to_string(),
        (true, IpAddr::V6(a)) => format!("[{a}]:{port}"),
        (true, IpAddr::V4(a)) => format!("{a}:{port}"),
    };
    format!("{proto} {} -> {}", at(p.src, p.sport), at(p.dst, p.dport))
}

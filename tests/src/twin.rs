//! The kernel's verdict predicted in userspace: the parser the XDP program runs (compiled here
//! from `dataplane_common::parse` over a byte slice) followed by the userspace classifier that
//! `dataplane explain` answers from, with a model of the fragment table. Tests and the packet
//! fuzzer run raw frames through both this and the real program and require the same action and
//! the same counters.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane::classify::{Classifier, Decision, Packet as Tuple};
use dataplane::tables::Tables;
use dataplane_common::parse::{parse, Bytes, Frag, Packet, Parsed, L4};
use dataplane_common::Reason;

use crate::{Observed, XDP_DROP, XDP_PASS};

/// Later fragments the kernel keeps in its LRU (`FRAGS`, 8192 entries); stay well below it.
pub const MAX_TRACKED_DATAGRAMS: usize = 4096;

/// A stateful model of one loaded program with no egress traffic and an empty verdict cache's
/// worth of difference (cached verdicts equal fresh ones under one policy).
pub struct Twin {
    classifier: Classifier,
    /// Datagrams whose first fragment passed -> flow slot.
    frags: HashMap<FragKey, Option<usize>>,
}

/// A datagram, as the kernel's `FRAGS` keys it: (src, dst, id, proto).
type FragKey = ([u8; 16], [u8; 16], u32, u8);

impl Twin {
    pub fn new(tables: &Tables) -> Self {
        Twin { classifier: Classifier::new(tables), frags: HashMap::new() }
    }

    /// Datagrams remembered so far (the model is exact while this stays below the LRU's size).
    pub fn tracked(&self) -> usize {
        self.frags.len()
    }

    /// What the program must do with `frame`.
    pub fn judge(&mut self, frame: &[u8]) -> Observed {
        let d = match parse(&Bytes(frame)) {
            Parsed::NonIp => decision(Reason::PassNonIp, None),
            Parsed::Malformed => decision(Reason::DropMalformed, None),
            Parsed::TooManyTags => decision(Reason::DropUnparsed, None),
            Parsed::Ip(p) => self.ip(&p),
        };
        Observed {
            action: if d.allow { XDP_PASS } else { XDP_DROP },
            reasons: vec![d.reason],
            flows: d.flow.into_iter().collect(),
            reply_flows: vec![],
        }
    }

    fn ip(&mut self, p: &Packet) -> Decision {
        let key = (p.src, p.dst, p.frag_id, p.proto);
        let d = self.decide(p, key);
        if p.frag == Frag::First && d.allow {
            self.frags.insert(key, d.flow);
        }
        d
    }

    fn decide(&self, p: &Packet, key: FragKey) -> Decision {
        let (src, dst) = (addr(p.v6, p.src), addr(p.v6, p.dst));
        if self.classifier.dst_class(dst).is_none() {
            return self.classifier.unprotected();
        }
        let tuple = |sport, dport, icmp_type| Tuple { src, dst, proto: p.proto, sport, dport, icmp_type };
        match p.l4 {
            L4::Malformed => decision(Reason::DropMalformed, None),
            L4::Unparsed => decision(Reason::DropUnparsed, None),
            L4::BadFragment => decision(Reason::DropFragment, None),
            _ if p.frag == Frag::Later => match self.frags.get(&key) {
                Some(&flow) => decision(Reason::PassFragment, flow),
                None => decision(Reason::DropFragment, None),
            },
            L4::Icmp { ty } => self.classifier.classify(&tuple(0, 0, Some(ty))),
            L4::Ports { sport, dport, .. } => self.classifier.classify(&tuple(sport, dport, None)),
            L4::None => decision(Reason::DropNoFlow, None),
        }
    }
}

fn decision(reason: Reason, flow: Option<usize>) -> Decision {
    Decision::new(reason, flow)
}

fn addr(v6: bool, b: [u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

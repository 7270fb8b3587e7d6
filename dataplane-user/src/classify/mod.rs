//! The verdict the kernel gives a packet, computed in userspace: [`Classifier`] runs the same
//! walk the XDP and tc programs run (`dataplane_common::walk`) over the same policy image the
//! `POLICY` map holds, so `explain` previews the kernel by construction. [`reference`] and
//! [`reference_outbound`] evaluate the policy's flows directly, with no table at all: the
//! property tests compare the walk with them. [`judge`] answers tuples as `explain` does, in the
//! vocabulary of [`verdict`], for `explain` and the rollout tools; [`request`] is an `explain`
//! input line.

pub mod judge;
pub mod request;
pub mod verdict;

use std::net::IpAddr;

use dataplane_common::parse::{self, Frag, L4};
use dataplane_common::walk::{self, NoMemory, Verdict};
use dataplane_common::{Config, Reason};

use crate::compile::tables::Tables;
use crate::policy::{Flow, Policy};
pub use verdict::{verdict, Outcome};

pub const IPPROTO_ICMP: u8 = parse::IPPROTO_ICMP;
pub const IPPROTO_TCP: u8 = parse::IPPROTO_TCP;
pub const IPPROTO_UDP: u8 = parse::IPPROTO_UDP;
pub const IPPROTO_ICMPV6: u8 = parse::IPPROTO_ICMPV6;

/// Source port assumed when a packet does not give one: the first IANA ephemeral port.
pub const DEFAULT_SPORT: u16 = 49152;

/// A packet as `explain`, the lab and the rollout tools describe it: addresses, protocol, ports,
/// and for ICMP its type and the packet an error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// ICMP type; `None` means an echo request.
    pub icmp_type: Option<u8>,
    /// The packet an ICMP error quotes (an error without one quotes nothing readable).
    pub quote: Option<Quote>,
}

/// The start of the packet an ICMP error quotes: one the protected server sent, so `src` is
/// normally the error's destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quote {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Probe {
    /// A TCP or UDP packet.
    pub fn ported(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Probe {
        Probe { src, dst, proto, sport, dport, icmp_type: None, quote: None }
    }

    /// The packet as the parser reports a whole (unfragmented) one.
    pub fn parsed(&self) -> parse::Packet {
        let v6 = self.dst.is_ipv6();
        let icmp = if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
        let mut quoted = parse::Addr::default();
        let l4 = match self.proto {
            IPPROTO_TCP | IPPROTO_UDP => L4::ports(self.sport, self.dport, 0),
            p if p == icmp => {
                let ty = self.icmp_type.unwrap_or(if v6 { 128 } else { 8 });
                match self.relatable_quote() {
                    Some(q) if parse::icmp_error(v6, ty) => {
                        quoted = addr(q.dst);
                        L4::icmp_error(ty, q.proto, q.sport, q.dport)
                    }
                    _ => L4::icmp(ty),
                }
            }
            _ => L4::NONE,
        };
        parse::Packet {
            v6,
            src: addr(self.src),
            dst: addr(self.dst),
            proto: self.proto,
            frag: Frag::Whole,
            frag_id: 0,
            l4,
            quoted,
        }
    }

    /// The quote, when the parser would read it as one an error can be related by: a TCP or
    /// UDP packet of the same family sent from this packet's destination.
    pub fn relatable_quote(&self) -> Option<&Quote> {
        self.quote.as_ref().filter(|q| {
            q.src == self.dst && q.dst.is_ipv6() == self.dst.is_ipv6() && matches!(q.proto, IPPROTO_TCP | IPPROTO_UDP)
        })
    }
}

/// An address as the parser holds it.
pub fn addr(ip: IpAddr) -> parse::Addr {
    match ip {
        IpAddr::V4(a) => parse::Addr { hi: (u32::from(a) as u64) << 32, lo: 0 },
        IpAddr::V6(a) => parse::Addr { hi: (u128::from(a) >> 64) as u64, lo: u128::from(a) as u64 },
    }
}

impl std::fmt::Display for Probe {
    /// `udp 10.0.0.1:40000 -> 10.0.0.2:3478` (`icmp 10.0.0.1 -> 10.0.0.2`).
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let ported = self.proto == IPPROTO_TCP || self.proto == IPPROTO_UDP;
        let at = |ip: IpAddr, port: u16| match (ported, ip) {
            (false, _) => ip.to_string(),
            (true, IpAddr::V6(a)) => format!("[{a}]:{port}"),
            (true, IpAddr::V4(a)) => format!("{a}:{port}"),
        };
        let proto = request::ProtoName::of(self.proto);
        write!(f, "{proto} {} -> {}", at(self.src, self.sport), at(self.dst, self.dport))
    }
}

/// The walk over a policy image, as the kernel runs it.
pub struct Classifier {
    image: Vec<u64>,
    config: Config,
}

impl Classifier {
    pub fn new(t: &Tables) -> Self {
        Classifier { image: t.image(), config: t.config }
    }

    /// The image this classifier walks (what `load` writes into `POLICY`).
    pub fn image(&self) -> &[u64] {
        &self.image
    }

    /// The kernel's verdict on a whole packet arriving at a protected host.
    pub fn classify(&self, p: &Probe) -> Verdict {
        walk::decide(self.image.as_slice(), &mut NoMemory, &self.config, &p.parsed())
    }

    /// Whether the destination is an address of a protected role.
    pub fn protected(&self, dst: IpAddr) -> bool {
        walk::dst_class(self.image.as_slice(), dataplane_common::image::INBOUND, dst.is_ipv6(), &addr(dst)).is_some()
    }

    /// Whether some inbound flow names this protocol and destination port (the port filter).
    pub fn port_named(&self, proto: u8, dport: u16) -> bool {
        use dataplane_common::image::{port_filter_bit, port_filter_word, proto_index, INBOUND};
        self.image[port_filter_word(INBOUND, proto_index(proto), dport) as usize] & port_filter_bit(dport) != 0
    }

    /// The verdict on a packet to an address no protected role holds.
    pub fn unprotected(&self) -> Verdict {
        let drop = self.config.flags & dataplane_common::CONFIG_DROP_UNPROTECTED != 0;
        Verdict::new(if drop { Reason::DropUnprotected } else { Reason::PassUnprotected })
    }
}

/// Classifies one packet through `t` (builds the image each call; use [`Classifier`] for many
/// packets).
pub fn classify(t: &Tables, p: &Probe) -> Verdict {
    Classifier::new(t).classify(p)
}

impl Classifier {
    /// A classifier for the packets protected servers send, over the image of `t` (its outbound
    /// half). None when the policy has no outbound flow: then no connection is tracked.
    pub fn new_outbound(t: &Tables) -> Option<Classifier> {
        t.outbound.as_ref().map(|_| Classifier::new(t))
    }

    /// The tc program's walk for a packet a protected server sends (source = the server,
    /// destination = the peer): `PassFlow` with the outbound slot (index into
    /// `Tables::outbound.flows`) when an allow flow documents the connection (it is tracked and
    /// its replies admitted), `DropDenyFlow` with the slot of the deny flow that wins, or
    /// `DropNoFlow`. Site switches (`unprotected`, `icmp-echo`) do not apply; anything but TCP
    /// and UDP has no flow.
    pub fn classify_outbound(&self, p: &Probe) -> Verdict {
        if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
            return Verdict::new(Reason::DropNoFlow);
        }
        walk::outbound(self.image.as_slice(), &p.parsed(), p.sport, p.dport)
    }
}

/// Classifies one outbound packet (server -> peer) through `t.outbound`; `DropNoFlow` when there
/// are no outbound tables. See [`Classifier::classify_outbound`].
pub fn classify_outbound(t: &Tables, p: &Probe) -> Verdict {
    match Classifier::new_outbound(t) {
        Some(c) => c.classify_outbound(p),
        None => Verdict::new(Reason::DropNoFlow),
    }
}

/// The outbound semantics stated directly over `policy.out_flows`: a TCP or UDP packet from a
/// protected server is documented iff an outbound flow has `from` containing the source, `to`
/// containing the destination, and matches protocol, destination port (the peer's) and source
/// port (the server's); the first matching deny flow wins (`DropDenyFlow`), else the first
/// allow flow (`PassFlow`); slots index `out_flows`.
pub fn reference_outbound(policy: &Policy, p: &Probe) -> Verdict {
    if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
        return Verdict::new(Reason::DropNoFlow);
    }
    first_match(policy, &policy.out_flows, p)
}

/// The semantics stated directly over the policy's flows, without tables: the packet is allowed
/// iff a flow to a protected role containing the destination, from a role containing the source,
/// matches protocol and ports; the first matching deny flow wins, else the first allow flow.
/// A role bound with exceptions contains an address by set membership on its binding as
/// written ([`Policy::role_holds`]), not through the prefixes the compiler is given.
pub fn reference(policy: &Policy, p: &Probe) -> Verdict {
    let protected = policy.roles.iter().enumerate().any(|(i, r)| r.protected && policy.role_holds(i, p.dst));
    if !protected {
        let r = if policy.drop_unprotected { Reason::DropUnprotected } else { Reason::PassUnprotected };
        return Verdict::new(r);
    }
    let v6 = p.dst.is_ipv6();
    if p.proto == if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP } {
        let ty = p.icmp_type.unwrap_or(if v6 { 128 } else { 8 });
        if let (true, Some(q)) = (parse::icmp_error(v6, ty), p.relatable_quote()) {
            // The peer's packet the quoted one answers: an error about it is related.
            let answer =
                Probe { src: q.dst, dst: p.dst, proto: q.proto, sport: q.dport, dport: q.sport, icmp_type: None, quote: None };
            let d = first_match(policy, &policy.flows, &answer);
            let admitted = d.reason == Reason::PassFlow;
            return verdict(if admitted { Reason::PassIcmp } else { Reason::DropIcmpUnrelated }, d.flow().filter(|_| admitted));
        }
        let flags = if policy.allow_echo { dataplane_common::CONFIG_ALLOW_ECHO } else { 0 };
        return Verdict::new(walk::icmp(v6, ty, flags));
    }
    if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
        return Verdict::new(Reason::DropNoFlow);
    }
    first_match(policy, &policy.flows, p)
}

/// The first matching deny flow of `flows`, else the first matching allow flow.
fn first_match(policy: &Policy, flows: &[Flow], p: &Probe) -> Verdict {
    let has = |role: usize, ip: IpAddr| policy.role_holds(role, ip);
    let matching = flows.iter().enumerate().filter(|(_, f)| {
        f.proto == p.proto && has(f.to, p.dst) && has(f.from, p.src) && f.dport.contains(p.dport) && f.sport.contains(p.sport)
    });
    let (mut first_allow, mut first_deny) = (None, None);
    for (slot, f) in matching {
        let first = if f.deny { &mut first_deny } else { &mut first_allow };
        first.get_or_insert(slot);
    }
    match (first_deny, first_allow) {
        (Some(s), _) => verdict(Reason::DropDenyFlow, Some(s)),
        (None, Some(s)) => verdict(Reason::PassFlow, Some(s)),
        (None, None) => Verdict::new(Reason::DropNoFlow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_rules() {
        use dataplane_common::CONFIG_ALLOW_ECHO as ECHO;
        // An error reaches this function only when it quotes nothing relatable.
        assert_eq!(walk::icmp(false, 3, 0), Reason::DropIcmpUnrelated);
        assert_eq!(walk::icmp(true, 2, ECHO), Reason::DropIcmpUnrelated);
        assert_eq!(walk::icmp(false, 8, 0), Reason::DropIcmp);
        assert_eq!(walk::icmp(false, 8, ECHO), Reason::PassIcmp);
        assert_eq!(walk::icmp(false, 5, ECHO), Reason::DropIcmp);
        assert_eq!(walk::icmp(true, 135, 0), Reason::PassIcmp);
        assert_eq!(walk::icmp(true, 129, 0), Reason::DropIcmp);
    }
}

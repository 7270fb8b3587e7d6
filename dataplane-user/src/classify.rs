//! The userspace twin of the XDP classifier: walks the compiled [`Tables`] exactly as the kernel
//! walks its maps (so `explain` previews the kernel), plus [`reference`], a direct evaluation of
//! the policy's flows that the property tests compare it with.
//!
//! Outbound packets (a protected server sends them; the kernel's tc egress program) walk the
//! `OUT_*` maps ([`Tables::outbound`]) with [`Classifier::new_outbound`] and
//! [`Classifier::classify_outbound`], or [`classify_outbound`]; [`reference_outbound`] is their
//! direct evaluation over `Policy::out_flows`.

use std::collections::HashMap;
use std::net::IpAddr;

use dataplane_common::{
    PairKey, PortKey, Reason, SportKey, CLASS_NONE, CONFIG_ALLOW_ECHO, CONFIG_DROP_UNPROTECTED,
    VALUE_DENY, VALUE_INDEX_MASK, VALUE_SPORT_TABLE,
};

use crate::policy::{Flow, Policy};
use crate::tables::{LpmEntry, Tables};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// ICMP type; `None` means an echo request.
    pub icmp_type: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The credited flow's slot (index into `Tables::flows`).
    pub flow: Option<usize>,
    pub reason: Reason,
}

impl Decision {
    pub fn new(reason: Reason, flow: Option<usize>) -> Self {
        Decision {
            allow: !reason.is_drop(),
            flow,
            reason,
        }
    }
}

/// What ICMP gets at a protected address, before any flow lookup. `None`: not ICMP of the
/// packet's family (handled as another protocol).
pub fn icmp_verdict(
    v6: bool,
    proto: u8,
    icmp_type: Option<u8>,
    allow_echo: bool,
) -> Option<Reason> {
    let echo = if allow_echo {
        Reason::PassIcmp
    } else {
        Reason::DropIcmp
    };
    match (v6, proto) {
        (false, IPPROTO_ICMP) => Some(match icmp_type.unwrap_or(8) {
            3 | 11 | 12 => Reason::PassIcmp,
            0 | 8 => echo,
            _ => Reason::DropIcmp,
        }),
        (true, IPPROTO_ICMPV6) => Some(match icmp_type.unwrap_or(128) {
            1..=4 | 133..=137 => Reason::PassIcmp,
            128 | 129 => echo,
            _ => Reason::DropIcmp,
        }),
        _ => None,
    }
}

/// An LPM trie over raw key bytes: prefix length in bits from the first byte's top bit.
struct Lpm {
    /// (prefix length, entries by masked key), longest first.
    by_len: Vec<(u32, HashMap<Vec<u8>, u32>)>,
}

fn masked(key: &[u8], bits: u32) -> Vec<u8> {
    key.iter()
        .enumerate()
        .map(|(i, &b)| {
            let lo = i as u32 * 8;
            if bits >= lo + 8 {
                b
            } else if bits <= lo {
                0
            } else {
                b & (0xffu8 << (8 - (bits - lo)))
            }
        })
        .collect()
}

impl Lpm {
    fn new<K>(entries: &[LpmEntry<K>], bytes: impl Fn(&K) -> Vec<u8>) -> Self {
        let mut m: HashMap<u32, HashMap<Vec<u8>, u32>> = HashMap::new();
        for e in entries {
            m.entry(e.prefix_len)
                .or_default()
                .insert(masked(&bytes(&e.key), e.prefix_len), e.value);
        }
        let mut by_len: Vec<_> = m.into_iter().collect();
        by_len.sort_by_key(|e| std::cmp::Reverse(e.0));
        Lpm { by_len }
    }

    fn lookup(&self, key: &[u8]) -> Option<u32> {
        self.by_len
            .iter()
            .find_map(|(len, m)| m.get(&masked(key, *len)).copied())
    }
}

fn port_key_bytes(k: &PortKey) -> Vec<u8> {
    let mut v = k.policy.to_vec();
    v.push(k.proto);
    v.extend_from_slice(&k.dport);
    v.push(k.pad);
    v
}

fn sport_key_bytes(k: &SportKey) -> Vec<u8> {
    let mut v = k.table.to_vec();
    v.extend_from_slice(&k.sport);
    v.extend_from_slice(&k.pad);
    v
}

/// Lookup structures over a `Tables`, built once.
pub struct Classifier {
    src_v4: Lpm,
    src_v6: Lpm,
    dst_v4: Lpm,
    dst_v6: Lpm,
    pairs: HashMap<PairKey, u32>,
    ports: Lpm,
    sports: Lpm,
    flags: u32,
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl Classifier {
    pub fn new(t: &Tables) -> Self {
        Classifier {
            src_v4: Lpm::new(&t.src_v4, |k| k.to_vec()),
            src_v6: Lpm::new(&t.src_v6, |k| k.to_vec()),
            dst_v4: Lpm::new(&t.dst_v4, |k| k.to_vec()),
            dst_v6: Lpm::new(&t.dst_v6, |k| k.to_vec()),
            pairs: t.pairs.iter().copied().collect(),
            ports: Lpm::new(&t.ports, port_key_bytes),
            sports: Lpm::new(&t.sports, sport_key_bytes),
            flags: t.config.flags,
        }
    }

    /// The destination's class: `None` when no protected role holds it.
    pub fn dst_class(&self, dst: IpAddr) -> Option<u32> {
        let trie = if dst.is_ipv6() { &self.dst_v6 } else { &self.dst_v4 };
        trie.lookup(&addr_bytes(dst))
    }

    /// The verdict on a packet to an address no protected role holds.
    pub fn unprotected(&self) -> Decision {
        let drop = self.flags & CONFIG_DROP_UNPROTECTED != 0;
        Decision::new(if drop { Reason::DropUnprotected } else { Reason::PassUnprotected }, None)
    }

    /// The kernel's walk: destination class, ICMP, source class, pair, ports, source ports.
    pub fn classify(&self, p: &Packet) -> Decision {
        let v6 = p.dst.is_ipv6();
        let src_trie = if v6 { &self.src_v6 } else { &self.src_v4 };
        let Some(dst_class) = self.dst_class(p.dst) else {
            return self.unprotected();
        };
        if let Some(r) = icmp_verdict(
            v6,
            p.proto,
            p.icmp_type,
            self.flags & CONFIG_ALLOW_ECHO != 0,
        ) {
            return Decision::new(r, None);
        }
        if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
            return Decision::new(Reason::DropNoFlow, None);
        }
        let src_class = src_trie.lookup(&addr_bytes(p.src)).unwrap_or(CLASS_NONE);
        self.flow(p, src_class, dst_class)
    }
}

/// Classifies one packet through `t` (builds the lookup structures each call; use
/// [`Classifier`] for many packets).
pub fn classify(t: &Tables, p: &Packet) -> Decision {
    Classifier::new(t).classify(p)
}

impl Classifier {
    /// A classifier over the outbound tables `t.outbound` (the `OUT_*` maps), for
    /// [`Classifier::classify_outbound`]. None when the policy has no outbound flow: then no
    /// connection is tracked.
    pub fn new_outbound(t: &Tables) -> Option<Classifier> {
        t.outbound.as_deref().map(Classifier::new)
    }

    /// The walk for a packet a protected server sends (source = the server, destination = the
    /// peer), over a classifier built by [`Classifier::new_outbound`]: peer address -> class
    /// (`OUT_DST_*`; miss: no flow), server address -> class (`OUT_SRC_*`), `OUT_PAIRS`,
    /// `OUT_PORTS` (the peer's port, `dport`), `OUT_SPORTS` (the server's port, `sport`).
    /// Site switches (`unprotected`, `icmp-echo`) do not apply; anything but TCP and UDP has no
    /// flow.
    ///
    /// Returns `PassFlow` with the outbound slot (index into `Tables::outbound.flows`) when an
    /// allow flow documents the connection (it is tracked and its replies admitted),
    /// `DropDenyFlow` with the slot of the deny flow that wins, or `DropNoFlow`.
    pub fn classify_outbound(&self, p: &Packet) -> Decision {
        if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
            return Decision::new(Reason::DropNoFlow, None);
        }
        let (dst_trie, src_trie) = if p.dst.is_ipv6() {
            (&self.dst_v6, &self.src_v6)
        } else {
            (&self.dst_v4, &self.src_v4)
        };
        let Some(dst_class) = dst_trie.lookup(&addr_bytes(p.dst)) else {
            return Decision::new(Reason::DropNoFlow, None);
        };
        let src_class = src_trie.lookup(&addr_bytes(p.src)).unwrap_or(CLASS_NONE);
        self.flow(p, src_class, dst_class)
    }

    /// Pair, ports and source ports: the end of both walks.
    fn flow(&self, p: &Packet, src_class: u32, dst_class: u32) -> Decision {
        let Some(&policy) = self.pairs.get(&PairKey {
            src_class,
            dst_class,
        }) else {
            return Decision::new(Reason::DropNoFlow, None);
        };
        let Some(mut value) = self
            .ports
            .lookup(&port_key_bytes(&PortKey::new(policy, p.proto, p.dport)))
        else {
            return Decision::new(Reason::DropNoFlow, None);
        };
        if value & VALUE_SPORT_TABLE != 0 {
            let key = SportKey::new(value & VALUE_INDEX_MASK, p.sport);
            match self.sports.lookup(&sport_key_bytes(&key)) {
                Some(v) => value = v,
                None => return Decision::new(Reason::DropNoFlow, None),
            }
        }
        let slot = Some((value & VALUE_INDEX_MASK) as usize);
        Decision::new(
            if value & VALUE_DENY != 0 {
                Reason::DropDenyFlow
            } else {
                Reason::PassFlow
            },
            slot,
        )
    }
}

/// Classifies one outbound packet (server -> peer) through `t.outbound`; `DropNoFlow` when there
/// are no outbound tables. See [`Classifier::classify_outbound`].
pub fn classify_outbound(t: &Tables, p: &Packet) -> Decision {
    match Classifier::new_outbound(t) {
        Some(c) => c.classify_outbound(p),
        None => Decision::new(Reason::DropNoFlow, None),
    }
}

/// The outbound semantics stated directly over `policy.out_flows`: a TCP or UDP packet from a
/// protected server is documented iff an outbound flow has `from` containing the source, `to`
/// containing the destination, and matches protocol, destination port (the peer's) and source
/// port (the server's); the first matching deny flow wins (`DropDenyFlow`), else the first
/// allow flow (`PassFlow`); slots index `out_flows`.
pub fn reference_outbound(policy: &Policy, p: &Packet) -> Decision {
    if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
        return Decision::new(Reason::DropNoFlow, None);
    }
    first_match(policy, &policy.out_flows, p)
}

/// The semantics stated directly over the policy's flows, without tables: the packet is allowed
/// iff a flow to a protected role containing the destination, from a role containing the source,
/// matches protocol and ports; the first matching deny flow wins, else the first allow flow.
pub fn reference(policy: &Policy, p: &Packet) -> Decision {
    let has = |role: usize, ip: IpAddr| policy.roles[role].cidrs.iter().any(|c| c.contains_ip(ip));
    let protected = policy
        .roles
        .iter()
        .enumerate()
        .any(|(i, r)| r.protected && has(i, p.dst));
    if !protected {
        let r = if policy.drop_unprotected {
            Reason::DropUnprotected
        } else {
            Reason::PassUnprotected
        };
        return Decision::new(r, None);
    }
    if let Some(r) = icmp_verdict(p.dst.is_ipv6(), p.proto, p.icmp_type, policy.allow_echo) {
        return Decision::new(r, None);
    }
    first_match(policy, &policy.flows, p)
}

/// The first matching deny flow of `flows`, else the first matching allow flow.
fn first_match(policy: &Policy, flows: &[Flow], p: &Packet) -> Decision {
    let has = |role: usize, ip: IpAddr| policy.roles[role].cidrs.iter().any(|c| c.contains_ip(ip));
    let in_ranges = |r: &[(u16, u16)], x: u16| r.iter().any(|&(a, b)| (a..=b).contains(&x));
    let matching = flows.iter().enumerate().filter(|(_, f)| {
        f.proto == p.proto
            && has(f.to, p.dst)
            && has(f.from, p.src)
            && in_ranges(&f.dport, p.dport)
            && in_ranges(&f.sport, p.sport)
    });
    let (mut first_allow, mut first_deny) = (None, None);
    for (slot, f) in matching {
        let first = if f.deny {
            &mut first_deny
        } else {
            &mut first_allow
        };
        first.get_or_insert(slot);
    }
    match (first_deny, first_allow) {
        (Some(s), _) => Decision::new(Reason::DropDenyFlow, Some(s)),
        (None, Some(s)) => Decision::new(Reason::PassFlow, Some(s)),
        (None, None) => Decision::new(Reason::DropNoFlow, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking() {
        assert_eq!(masked(&[0xff, 0xff], 12), vec![0xff, 0xf0]);
        assert_eq!(masked(&[0xff, 0xff], 0), vec![0, 0]);
        assert_eq!(masked(&[0xab, 0xcd], 16), vec![0xab, 0xcd]);
    }

    #[test]
    fn icmp_rules() {
        assert_eq!(
            icmp_verdict(false, 1, Some(3), false),
            Some(Reason::PassIcmp)
        );
        assert_eq!(icmp_verdict(false, 1, None, false), Some(Reason::DropIcmp));
        assert_eq!(icmp_verdict(false, 1, None, true), Some(Reason::PassIcmp));
        assert_eq!(
            icmp_verdict(false, 1, Some(5), true),
            Some(Reason::DropIcmp)
        );
        assert_eq!(
            icmp_verdict(true, 58, Some(135), false),
            Some(Reason::PassIcmp)
        );
        assert_eq!(
            icmp_verdict(true, 58, Some(129), false),
            Some(Reason::DropIcmp)
        );
        assert_eq!(icmp_verdict(true, 1, Some(3), false), None);
        assert_eq!(icmp_verdict(false, 58, Some(3), false), None);
    }
}

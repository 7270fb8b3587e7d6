//! The tuples `diff` tries: from the flows that differ (the edges of their port ranges and
//! CIDRs, and just outside), and for the site's switches.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::classify::{Probe, DEFAULT_SPORT, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP};
use crate::policy::cidr::mask;
use crate::policy::{Cidr, Flow, Policy, PortRanges};

/// Addresses to try in a CIDR list: the first of each CIDR (the first host of a longer one;
/// a documentation address for `/0`), then those just outside each.
pub fn sample_addresses(cidrs: &[Cidr]) -> Vec<IpAddr> {
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for c in cidrs.iter().take(8) {
        let w = c.width();
        let full = mask(w, w);
        let last = c.addr | (!mask(c.len, w) & full);
        inside.push(match c.len {
            0 if c.v6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            0 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
            l if l + 1 < w => ip(c.v6, c.addr + 1),
            _ => ip(c.v6, c.addr),
        });
        if c.addr > 0 {
            outside.push(ip(c.v6, c.addr - 1));
        }
        if last < full {
            outside.push(ip(c.v6, last + 1));
        }
    }
    dedup(inside.into_iter().chain(outside).collect())
}

/// Addresses to try for a role: for a binding with exceptions, first an address of each
/// exception (what the binding leaves out, so that a flip it makes is shown), then
/// [`sample_addresses`] of its prefixes.
fn role_addresses(p: &Policy, role: usize) -> Vec<IpAddr> {
    let r = &p.roles[role];
    let mut v = Vec::new();
    if let Some(x) = &r.exceptions {
        let except = x.except.iter().chain(x.except_roles.iter().filter_map(|&j| p.roles[j].cidrs.first()));
        v.extend(except.filter_map(|c| sample_addresses(std::slice::from_ref(c)).into_iter().next()));
    }
    v.extend(sample_addresses(&r.cidrs));
    dedup(v)
}

fn ip(v6: bool, a: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

fn dedup<T: PartialEq + Clone>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Ports to try in port ranges: the first and last of each range, then those just outside.
fn sample_ports(ranges: &[(u16, u16)]) -> Vec<u16> {
    let inside = ranges.iter().flat_map(|&(a, b)| [a, b]);
    let outside = ranges.iter().flat_map(|&(a, b)| [a.checked_sub(1), b.checked_add(1)]).flatten();
    dedup(inside.chain(outside).collect())
}

/// A source port in the ranges (the first IANA ephemeral port when it is in), then the others.
fn sample_sports(ranges: &PortRanges) -> Vec<u16> {
    let inside = |p: u16| ranges.contains(p);
    let first = if inside(DEFAULT_SPORT) { DEFAULT_SPORT } else { ranges.first().map_or(DEFAULT_SPORT, |r| r.0) };
    let mut v = vec![first];
    if !ranges.is_any() {
        v.extend(sample_ports(ranges));
    }
    dedup(v)
}

/// Tuples to try for a flow (in one or both versions): every pair of sample addresses with the
/// first ports, then every sample port with the first addresses, per IP version.
pub fn tuples(versions: &[(&Policy, &Flow)]) -> Vec<Probe> {
    let Some(&(_, f0)) = versions.first() else { return Vec::new() };
    let collect = |pick: &dyn Fn(&Policy, &Flow) -> Vec<IpAddr>| -> Vec<IpAddr> {
        dedup(versions.iter().flat_map(|(p, f)| pick(p, f)).collect())
    };
    let dsts = collect(&|p, f| role_addresses(p, f.to));
    let srcs = collect(&|p, f| role_addresses(p, f.from));
    let dports = dedup(versions.iter().flat_map(|(_, f)| sample_ports(&f.dport)).collect());
    let sports = dedup(versions.iter().flat_map(|(_, f)| sample_sports(&f.sport)).collect());
    let (Some(&dp0), Some(&sp0)) = (dports.first(), sports.first()) else { return Vec::new() };
    let packet = |src, dst, sport, dport| Probe::ported(src, dst, f0.proto, sport, dport);
    // The first tuple of each IP version first, so that the first examples show both.
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for v6 in [false, true] {
        let ds: Vec<IpAddr> = dsts.iter().copied().filter(|a| a.is_ipv6() == v6).take(8).collect();
        let ss: Vec<IpAddr> = srcs.iter().copied().filter(|a| a.is_ipv6() == v6).take(8).collect();
        let (Some(&d0), Some(&s0)) = (ds.first(), ss.first()) else { continue };
        first.push(packet(s0, d0, sp0, dp0));
        rest.extend(dports.iter().map(|&dp| packet(s0, d0, sp0, dp)));
        rest.extend(sports.iter().map(|&sp| packet(s0, d0, sp, dp0)));
        for &d in &ds {
            rest.extend(ss.iter().map(|&s| packet(s, d, sp0, dp0)));
        }
    }
    dedup([first, rest].concat())
}

fn protected_cidrs(p: &Policy) -> Vec<Cidr> {
    p.protected().flat_map(|r| r.cidrs.iter().copied()).collect()
}

fn any_source(dst: IpAddr) -> IpAddr {
    sample_addresses(&[if dst.is_ipv6() { Cidr::ANY_V6 } else { Cidr::ANY_V4 }])[0]
}

/// Tuples to addresses just outside the protected CIDRs (`unprotected` decides them).
pub(super) fn unprotected_tuples(o: &Policy, n: &Policy) -> Vec<Probe> {
    let cidrs = dedup([protected_cidrs(o), protected_cidrs(n)].concat());
    let inside: Vec<IpAddr> = sample_addresses(&cidrs);
    inside
        .into_iter()
        .filter(|a| !cidrs.iter().any(|c| c.contains_ip(*a)))
        .map(|dst| Probe::ported(any_source(dst), dst, IPPROTO_UDP, DEFAULT_SPORT, 9))
        .collect()
}

/// Echo requests to the first protected addresses (`icmp-echo` decides them).
pub(super) fn echo_tuples(o: &Policy, n: &Policy) -> Vec<Probe> {
    let cidrs = dedup([protected_cidrs(o), protected_cidrs(n)].concat());
    sample_addresses(&cidrs)
        .into_iter()
        .filter(|a| cidrs.iter().any(|c| c.contains_ip(*a)))
        .map(|dst| {
            let proto = if dst.is_ipv6() { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
            Probe::ported(any_source(dst), dst, proto, 0, 0)
        })
        .collect()
}

/// For each inbound flow whose source ports the document names: a tuple from its `from` role to
/// its `to` role at the source ports just outside them (1023 for `>= 1024`), on the side that
/// keeps them as documented (`source-ports` decides them).
pub(super) fn source_port_tuples(o: &Policy, n: &Policy) -> Vec<Probe> {
    let p = if o.source_ports.is_documented() { o } else { n };
    let mut out = Vec::new();
    for f in p.flows.iter().filter(|f| !f.sport.is_any()) {
        let Some(&(dport, _)) = f.dport.first() else { continue };
        let held = |role: usize| -> Vec<IpAddr> {
            sample_addresses(&p.roles[role].cidrs)
                .into_iter()
                .filter(|a| p.roles[role].cidrs.iter().any(|c| c.contains_ip(*a)))
                .collect()
        };
        let (srcs, dsts) = (held(f.from), held(f.to));
        let pair = [false, true].into_iter().find_map(|v6| {
            let first = |v: &[IpAddr]| v.iter().copied().find(|a| a.is_ipv6() == v6);
            Some((first(&srcs)?, first(&dsts)?))
        });
        let Some((src, dst)) = pair else { continue };
        let outside = sample_ports(&f.sport).into_iter().filter(|sp| !f.sport.contains(*sp));
        out.extend(outside.map(|sp| Probe::ported(src, dst, f.proto, sp, dport)));
    }
    dedup(out)
}

//! The site's inbound policy as classic iptables / ip6tables rules, for the packet-rate bench's
//! iptables comparison: the same layout as `dataplane export --format nft`
//! (dataplane-user/src/export/nft.rs), in the raw table's PREROUTING chain (the hook and priority
//! of the exported nftables chain: before routing and before conntrack), written as plain rules:
//! no ipset, so a role's addresses are one rule per (source CIDR, destination CIDR), and
//! destination ports are `--dport a:b` or `-m multiport --dports` lists of at most 15 ports (a
//! range counts as two).
//!
//! Chains (per family):
//! - `PREROUTING -j dp_inbound`;
//! - `dp_inbound`: `-i lo` accepts; each protected CIDR jumps to `dp_protected`; the rest is
//!   unprotected (accept, or drop per the site);
//! - `dp_protected`: ICMP control types accept (echo per the site), other ICMP drops; TCP and UDP
//!   jump to `dp_flows`; every other protocol drops;
//! - `dp_flows`: deny flows (DROP) then allow flows (ACCEPT), in the nft export's groups
//!   (`export::nft::groups`: same roles, protocol, source ports and action), then DROP (no flow).
//!
//! A packet that matches no flow is compared with every rule of `dp_flows`: the linear cost that
//! iptables without ipset has and nftables sets and the XDP tables do not.

use std::fmt::Write as _;

use dataplane::policy::{Cidr, Policy};

/// The rules of both families, ready for `iptables-restore` / `ip6tables-restore`.
pub struct Rules {
    pub v4: String,
    pub v6: String,
    /// Rules per family (every chain).
    pub rules_v4: usize,
    pub rules_v6: usize,
    /// Of those, the rules in `dp_flows` (what a packet matching no flow walks through).
    pub flow_rules_v4: usize,
    pub flow_rules_v6: usize,
}

/// Prefixes of one family with those inside another of the list removed, sorted (as the nft
/// export writes them).
fn family(cidrs: &[Cidr], v6: bool) -> Vec<Cidr> {
    dataplane::export::nft::family_cidrs(cidrs, v6)
}

/// `--dport`-style items: `a` or `a:b`; multiport lists hold at most 15 ports, a range two.
fn chunks(r: &[(u16, u16)]) -> Vec<String> {
    let item = |&(a, b): &(u16, u16)| if a == b { a.to_string() } else { format!("{a}:{b}") };
    let mut out = vec![];
    let (mut cur, mut weight) = (Vec::<String>::new(), 0);
    for x in r {
        let w = if x.0 == x.1 { 1 } else { 2 };
        if weight + w > 15 {
            out.push(cur.join(","));
            cur.clear();
            weight = 0;
        }
        cur.push(item(x));
        weight += w;
    }
    if !cur.is_empty() {
        out.push(cur.join(","));
    }
    out
}

/// Port matches for `dir` ("sport" or "dport"), one alternative per rule to write: a simple
/// `--sport a:b` for the protocol match, or a `-m multiport` option, or nothing (any port).
enum PortMatch {
    Any,
    Simple(String),
    Multi(String),
}

fn port_matches(dir: &str, r: &[(u16, u16)]) -> Vec<PortMatch> {
    if r.is_empty() || r == [(0, u16::MAX)] {
        return vec![PortMatch::Any];
    }
    if r.len() == 1 {
        let (a, b) = r[0];
        return vec![PortMatch::Simple(if a == b { format!("--{dir} {a}") } else { format!("--{dir} {a}:{b}") })];
    }
    chunks(r).into_iter().map(|c| PortMatch::Multi(format!("-m multiport --{dir}s {c}"))).collect()
}

/// `-m PROTO` with the simple port options, then the multiport matches.
fn match_text(proto: &str, ms: [&PortMatch; 2]) -> String {
    let simple: Vec<&str> =
        ms.iter().filter_map(|m| if let PortMatch::Simple(s) = m { Some(s.as_str()) } else { None }).collect();
    let mut t = String::new();
    if !simple.is_empty() {
        t = format!(" -m {proto} {}", simple.join(" "));
    }
    for m in ms {
        if let PortMatch::Multi(s) = m {
            t.push(' ');
            t.push_str(s);
        }
    }
    t
}

pub fn render(p: &Policy) -> Rules {
    // The nft export's rules, one for one.
    let groups = dataplane::export::nft::groups(p);

    let protected: Vec<Cidr> = p.protected().flat_map(|r| r.cidrs.iter().copied()).collect();
    let mut out = [(String::new(), 0usize, 0usize), (String::new(), 0, 0)];
    for (v6, (text, rules, flow_rules)) in [false, true].into_iter().zip(out.iter_mut()) {
        let w = text;
        let mut lines: Vec<String> = vec![];
        lines.push("-A PREROUTING -j dp_inbound".into());
        lines.push("-A dp_inbound -i lo -j ACCEPT".into());
        for c in family(&protected, v6) {
            lines.push(format!("-A dp_inbound -d {c} -j dp_protected"));
        }
        lines.push(format!("-A dp_inbound -j {}", if p.drop_unprotected { "DROP" } else { "ACCEPT" }));
        let icmp = if v6 { "-p ipv6-icmp -m icmp6 --icmpv6-type" } else { "-p icmp -m icmp --icmp-type" };
        for t in dataplane_common::walk::icmp_types(v6, p.allow_echo) {
            lines.push(format!("-A dp_protected {icmp} {t} -j ACCEPT"));
        }
        lines.push(format!("-A dp_protected -p {} -j DROP", if v6 { "ipv6-icmp" } else { "icmp" }));
        lines.push("-A dp_protected -p tcp -j dp_flows".into());
        lines.push("-A dp_protected -p udp -j dp_flows".into());
        lines.push("-A dp_protected -j DROP".into());
        let mut flows = 0;
        for g in &groups {
            let proto = if g.proto == 6 { "tcp" } else { "udp" };
            let from = family(&p.roles[g.from].cidrs, v6);
            let to = family(&p.roles[g.to].cidrs, v6);
            if from.is_empty() || to.is_empty() {
                continue;
            }
            let srcs: Vec<String> = if from.iter().any(|c| c.len == 0) {
                vec![String::new()]
            } else {
                from.iter().map(|c| format!(" -s {c}")).collect()
            };
            let target = if g.deny { "DROP" } else { "ACCEPT" };
            for s in &srcs {
                for d in &to {
                    for sp in &port_matches("sport", &g.sport) {
                        for dp in &port_matches("dport", &g.dport) {
                            let m = match_text(proto, [sp, dp]);
                            lines.push(format!("-A dp_flows{s} -d {d} -p {proto}{m} -j {target}"));
                            flows += 1;
                        }
                    }
                }
            }
        }
        lines.push("-A dp_flows -j DROP".into());
        let _ = writeln!(
            w,
            "# dataplane bench: site `{}` as {} rules (raw PREROUTING, plain rules, no ipset)",
            p.name,
            if v6 { "ip6tables" } else { "iptables" }
        );
        let _ = writeln!(w, "*raw");
        let _ = writeln!(w, ":PREROUTING ACCEPT [0:0]");
        let _ = writeln!(w, ":OUTPUT ACCEPT [0:0]");
        for c in ["dp_inbound", "dp_protected", "dp_flows"] {
            let _ = writeln!(w, ":{c} - [0:0]");
        }
        for l in &lines {
            let _ = writeln!(w, "{l}");
        }
        let _ = writeln!(w, "COMMIT");
        *rules = lines.len();
        *flow_rules = flows + 1;
    }
    let [(v4, rules_v4, flow_rules_v4), (v6, rules_v6, flow_rules_v6)] = out;
    Rules { v4, v6, rules_v4, rules_v6, flow_rules_v4, flow_rules_v6 }
}

//! The site's inbound policy as an nftables ruleset (`dataplane export --format nft`).
//!
//! Generated from the resolved [`Policy`] (the flows in force, ports resolved under the site's
//! options), not from the LPM tables: one named interval set per role and IP version, the
//! protected addresses as two more sets, and one rule per flow (or per group of flows that
//! differ only in their destination ports), deny flows first. See [`render`] for the layout and
//! the header comment it writes for what is and is not equivalent to the XDP program.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::classify::{IPPROTO_TCP, IPPROTO_UDP};
use crate::policy::{Cidr, Policy, PortRanges};

/// How to render the ruleset.
#[derive(Clone, Debug)]
pub struct NftOptions {
    /// The table name (family `inet`).
    pub table: String,
    /// Interfaces filtered; empty: every interface but `lo`.
    pub interfaces: Vec<String>,
}

impl Default for NftOptions {
    fn default() -> Self {
        NftOptions { table: "dataplane".into(), interfaces: Vec::new() }
    }
}

/// The ruleset and its size.
#[derive(Clone, Debug)]
pub struct NftExport {
    pub text: String,
    /// Rules in the filter chain.
    pub rules: usize,
    /// Rules that stand for flows (allow and deny).
    pub flow_rules: usize,
    /// Named sets.
    pub sets: usize,
    /// Flows in force (slots) that some rule covers; the others can never match.
    pub flows_covered: usize,
}

/// Prefixes of one family, with those inside another of the list removed (nft refuses
/// overlapping elements in an interval set), sorted.
pub fn family_cidrs<'a>(cidrs: impl IntoIterator<Item = &'a Cidr>, v6: bool) -> Vec<Cidr> {
    let mut v: Vec<Cidr> = cidrs.into_iter().filter(|c| c.v6 == v6).copied().collect();
    v.sort_by_key(|c| (c.len, c.addr));
    v.dedup();
    let mut out: Vec<Cidr> = Vec::new();
    for c in v {
        if !out.iter().any(|o| o.contains(&c)) {
            out.push(c);
        }
    }
    out.sort_by_key(|c| (c.addr, c.len));
    out
}

fn is_all(cidrs: &[Cidr]) -> bool {
    cidrs.iter().any(|c| c.len == 0)
}

fn ports(r: &PortRanges) -> String {
    let item = |&(a, b): &(u16, u16)| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    if r.len() == 1 {
        item(&r[0])
    } else {
        format!("{{ {} }}", r.iter().map(item).collect::<Vec<_>>().join(", "))
    }
}

fn elements(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(|c| {
            if c.len == c.width() {
                // A host: the bare address.
                let s = c.to_string();
                s[..s.rfind('/').unwrap()].to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// nft identifiers: letters, digits, `_`; role ids also have `-` and `.`.
fn ident(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn quote(s: &str) -> String {
    // Comments are at most 128 bytes; no double quotes inside.
    let mut s: String = s.chars().map(|c| if c == '"' { '\'' } else { c }).collect();
    if s.len() > 127 {
        let mut end = 124;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    format!("\"{s}\"")
}

/// One rule for a group of flows with the same roles, protocol, source ports and action.
pub struct Group {
    pub from: usize,
    pub to: usize,
    pub proto: u8,
    pub sport: PortRanges,
    pub deny: bool,
    pub dport: PortRanges,
    pub ids: Vec<String>,
    pub slots: usize,
}

/// The flows of `p` as rules: flows with the same roles, protocol, source ports and action in
/// one group (flows with no port left out), destination ports normalized; deny groups first,
/// both in slot order of their first flow.
pub fn groups(p: &Policy) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    // Each group's destination ports, gathered before they are merged.
    let mut dports: Vec<Vec<(u16, u16)>> = Vec::new();
    let mut index: HashMap<(usize, usize, u8, PortRanges, bool), usize> = HashMap::new();
    for f in &p.flows {
        if f.dport.is_empty() || f.sport.is_empty() {
            continue;
        }
        let key = (f.from, f.to, f.proto, f.sport.clone(), f.deny);
        match index.get(&key) {
            Some(&g) => {
                dports[g].extend_from_slice(&f.dport);
                let g = &mut groups[g];
                if !g.ids.contains(&f.info.id) {
                    g.ids.push(f.info.id.clone());
                }
                g.slots += 1;
            }
            None => {
                index.insert(key, groups.len());
                dports.push(f.dport.to_vec());
                groups.push(Group {
                    from: f.from,
                    to: f.to,
                    proto: f.proto,
                    sport: f.sport.clone(),
                    deny: f.deny,
                    dport: PortRanges::default(),
                    ids: vec![f.info.id.clone()],
                    slots: 1,
                });
            }
        }
    }
    for (g, d) in groups.iter_mut().zip(dports) {
        g.dport = PortRanges::new(d);
    }
    groups.sort_by_key(|g| !g.deny); // stable: deny groups first, slot order kept
    groups
}

/// Why a policy has no nftables form.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A flow of a protocol the ruleset has no match for (the policy reader admits TCP and UDP only).
    #[error("flow protocol {0} is neither TCP nor UDP")]
    Protocol(u8),
    #[error(transparent)]
    Write(#[from] std::fmt::Error),
}

/// Renders the ruleset. Layout of the chain (hook prerouting, priority raw = -300):
///
/// 1. traffic from interfaces the dataplane does not enforce on passes;
/// 2. a destination outside the protected sets: unprotected (pass, or drop per site);
/// 3. ICMP control (errors, neighbour discovery, echo per `icmp-echo`) passes; errors are then
///    judged after conntrack, in chain `icmp_errors` (only `related` ones pass);
///    any other protocol than TCP and UDP (other ICMP included) is dropped;
/// 4. deny flows (drop), then allow flows (accept), in slot order;
/// 5. the rest is dropped (`no_flow`).
pub fn render(p: &Policy, o: &NftOptions) -> Result<NftExport, NftError> {
    let t = ident(&o.table);
    let groups = groups(p);

    // Role sets (per family), only for roles a rule uses.
    let mut set_names: HashMap<usize, String> = HashMap::new();
    let mut taken: Vec<String> = vec!["protected".into()];
    let role_cidrs = |r: usize, v6: bool| family_cidrs(&p.roles[r].cidrs, v6);
    let mut name_of = |r: usize| -> String {
        set_names
            .entry(r)
            .or_insert_with(|| {
                let base = ident(&p.roles[r].id);
                let mut n = base.clone();
                let mut k = 2;
                while taken.contains(&n) {
                    n = format!("{base}_{k}");
                    k += 1;
                }
                taken.push(n.clone());
                n
            })
            .clone()
    };

    let mut rules: Vec<String> = Vec::new();
    let mut used_sets: Vec<(String, bool, Vec<Cidr>, String)> = Vec::new(); // name, v6, cidrs, role id
    let mut use_set = |r: usize, v6: bool, used: &mut Vec<(String, bool, Vec<Cidr>, String)>| {
        let name = format!("{}_{}", name_of(r), if v6 { "v6" } else { "v4" });
        if !used.iter().any(|u| u.0 == name) {
            used.push((name.clone(), v6, role_cidrs(r, v6), p.roles[r].id.clone()));
        }
        name
    };
    let mut flow_rules = 0;
    let mut flows_covered = 0;
    let mut flow_lines: Vec<String> = Vec::new();
    for g in &groups {
        let proto = match g.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            n => return Err(NftError::Protocol(n)),
        };
        let mut any = false;
        for v6 in [false, true] {
            let (from, to) = (role_cidrs(g.from, v6), role_cidrs(g.to, v6));
            if from.is_empty() || to.is_empty() {
                continue;
            }
            let ip = if v6 { "ip6" } else { "ip" };
            let mut r = String::new();
            if !is_all(&from) {
                write!(r, "{ip} saddr @{} ", use_set(g.from, v6, &mut used_sets))?;
            }
            write!(r, "{ip} daddr @{} ", use_set(g.to, v6, &mut used_sets))?;
            if !g.sport.is_any() {
                write!(r, "{proto} sport {} ", ports(&g.sport))?;
            }
            if g.dport.is_any() {
                write!(r, "meta l4proto {proto} ")?;
            } else {
                write!(r, "{proto} dport {} ", ports(&g.dport))?;
            }
            let verdict = if g.deny { "drop" } else { "accept" };
            write!(r, "counter {verdict} comment {}", quote(&g.ids.join(" ")))?;
            flow_lines.push(r);
            flow_rules += 1;
            any = true;
        }
        if any {
            flows_covered += g.slots;
        }
    }

    // The chain.
    let (prot4, prot6): (Vec<Cidr>, Vec<Cidr>) = {
        let all: Vec<Cidr> = p.protected().flat_map(|r| r.cidrs.iter().copied()).collect();
        (family_cidrs(&all, false), family_cidrs(&all, true))
    };
    if o.interfaces.is_empty() {
        rules.push("iif \"lo\" accept comment \"local traffic never crosses XDP\"".into());
    } else {
        let ifs: Vec<String> = o.interfaces.iter().map(|i| format!("\"{i}\"")).collect();
        rules.push(format!("iifname != {{ {} }} accept comment \"not an enforced interface\"", ifs.join(", ")));
    }
    let unprot = if p.drop_unprotected { "drop" } else { "accept" };
    rules.push(format!("ip daddr != @protected_v4 counter {unprot} comment \"unprotected\""));
    rules.push(format!("ip6 daddr != @protected_v6 counter {unprot} comment \"unprotected\""));
    let types = |v6| dataplane_common::walk::icmp_types(v6, p.allow_echo).map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
    rules.push(format!("meta nfproto ipv4 icmp type {{ {} }} counter accept comment \"icmp_control\"", types(false)));
    rules.push(format!("meta nfproto ipv6 icmpv6 type {{ {} }} counter accept comment \"icmp_control\"", types(true)));
    rules.push("meta l4proto { icmp, ipv6-icmp } counter drop comment \"icmp: other types\"".into());
    rules.push("meta l4proto != { tcp, udp } counter drop comment \"no_flow: other protocols\"".into());
    rules.extend(flow_lines);
    rules.push("counter drop comment \"no_flow\"".into());

    // Text.
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "#!/usr/sbin/nft -f")?;
    writeln!(w, "# dataplane export --format nft: site `{}` ({})", p.name, p.path.display())?;
    writeln!(w, "# The stateless inbound policy of the XDP program, as nftables rules:")?;
    writeln!(w, "#  - hook prerouting, priority raw (-300): like XDP, before routing decides input or")?;
    writeln!(w, "#    forward (a protected address may be this host's or one it routes to), and before")?;
    writeln!(w, "#    conntrack (-200), so dropped packets never create connection entries. Unlike the")?;
    writeln!(w, "#    ingress hook it sees datagrams after defragmentation (-400, active when conntrack")?;
    writeln!(w, "#    is used in the netns), so later fragments share their datagram's verdict as XDP's")?;
    writeln!(w, "#    fragment tracking gives them. Without defragmentation, later fragments to a")?;
    writeln!(w, "#    protected address carry no ports and are dropped (no_flow).")?;
    writeln!(
        w,
        "#  - only traffic arriving on the enforced interfaces is filtered ({}).",
        if o.interfaces.is_empty() { "all but lo".to_string() } else { o.interfaces.join(", ") }
    )?;
    writeln!(w, "#  - non-IP traffic (ARP, ...) never reaches an inet chain: it passes, as in XDP.")?;
    writeln!(w, "#  - NOT exported: replies to connections the protected server opens (the XDP reply")?;
    writeln!(w, "#    tracking, outbound flows); add e.g. `ct state established,related accept` in a")?;
    writeln!(w, "#    chain of your own if you need them. This is the policy `dataplane explain` answers.")?;
    writeln!(w, "#  - ICMP errors pass the raw chain and are judged in chain icmp_errors, after conntrack")?;
    writeln!(w, "#    (priority mangle): only errors conntrack relates to a connection pass, where XDP")?;
    writeln!(w, "#    passes an error whose quoted packet is the reverse of an admitted flow or of a")?;
    writeln!(w, "#    tracked connection (the same on traffic that made connections, stricter otherwise).")?;
    writeln!(w, "#  - deny flows come first, so the first matching rule holds the flow XDP credits; a rule")?;
    writeln!(w, "#    groups flows that differ only in destination ports (its comment lists their ids).")?;
    writeln!(w, "# Loading this file replaces the table atomically.")?;
    writeln!(w, "table inet {t}")?;
    writeln!(w, "delete table inet {t}")?;
    writeln!(w)?;
    writeln!(w, "table inet {t} {{")?;
    let mut sets = 0;
    let mut set = |w: &mut String, name: &str, v6: bool, cidrs: &[Cidr], comment: &str| -> std::fmt::Result {
        sets += 1;
        writeln!(w, "\tset {name} {{")?;
        writeln!(w, "\t\ttype {}", if v6 { "ipv6_addr" } else { "ipv4_addr" })?;
        writeln!(w, "\t\tflags interval")?;
        writeln!(w, "\t\tcomment {}", quote(comment))?;
        if !cidrs.is_empty() {
            writeln!(w, "\t\telements = {{ {} }}", elements(cidrs))?;
        }
        writeln!(w, "\t}}")?;
        writeln!(w)
    };
    let prot_ids: Vec<&str> = p.protected().map(|r| r.id.as_str()).collect();
    set(w, "protected_v4", false, &prot4, &format!("protected: {}", prot_ids.join(" ")))?;
    set(w, "protected_v6", true, &prot6, &format!("protected: {}", prot_ids.join(" ")))?;
    used_sets.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v6, cidrs, id) in &used_sets {
        set(w, name, *v6, cidrs, &format!("role {id}"))?;
    }
    writeln!(w, "\tchain inbound {{")?;
    writeln!(w, "\t\ttype filter hook prerouting priority raw; policy accept;")?;
    for r in &rules {
        writeln!(w, "\t\t{r}")?;
    }
    writeln!(w, "\t}}")?;
    writeln!(w)?;
    writeln!(w, "\tchain icmp_errors {{")?;
    writeln!(w, "\t\ttype filter hook prerouting priority mangle; policy accept;")?;
    writeln!(w, "\t\t{}", rules[0])?;
    let errors = |v6| {
        (0..=u8::MAX).filter(|&t| dataplane_common::walk::icmp_error(v6, t)).map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
    };
    writeln!(
        w,
        "\t\tip daddr @protected_v4 icmp type {{ {} }} ct state != related counter drop comment \"icmp_unrelated\"",
        errors(false)
    )?;
    writeln!(
        w,
        "\t\tip6 daddr @protected_v6 icmpv6 type {{ {} }} ct state != related counter drop comment \"icmp_unrelated\"",
        errors(true)
    )?;
    writeln!(w, "\t}}")?;
    writeln!(w, "}}")?;
    Ok(NftExport { text: s, rules: rules.len(), flow_rules, sets, flows_covered })
}

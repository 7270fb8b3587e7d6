//! The lockout guard of `dataplane run`: refuse to enforce a site that would cut the
//! administrators off the servers it protects, unless `--force`.
//!
//! Two checks, both answered by the compiled [`Tables`] through the [`Classifier`] (so they
//! predict what the kernel will do, overlapping roles and deny flows included):
//!
//! 1. **The SSH session this runs over.** When `SSH_CONNECTION` is set
//!    ([`ssh_session_from_env`]), the session's own packet (client address and port -> server
//!    address and port, TCP) must be allowed. A protected server address with no flow for it (or a
//!    deny flow) is refused; so is an unprotected server address when the site drops unprotected
//!    traffic (`unprotected: drop`).
//! 2. **Every protected role keeps a management flow.** A *management flow* is an allow flow,
//!    included by the site's options, that is TCP and either
//!    - starts at the role `management-pc` ([`MANAGEMENT_ROLE`]: the administrator workstations
//!      of every catalog: "Administrator PCs", "system administrators", ...), on any port (ssh 22,
//!      telnet 23, web administration 80 / 443 / 7443 / 8443, RDP 3389, VNC 5900, ...), or
//!    - has destination port 22 (ssh), from any role.
//!
//!    Web ports 80 / 443 from other roles do not count: they serve users (the Cisco Meeting
//!    WebRTC App, subscriber web access), not administration. A protected role is *managed* when
//!    some management flow admits a packet to it: for each management flow, each prefix of the
//!    role and each prefix of the flow's `from` role of the same family, a packet from the
//!    prefix's first address to the role prefix's first address, on the flow's port 22, else 443,
//!    else 80, else its first destination port, from source port 50000 (else the flow's first
//!    source port), is classified; one packet admitted *and credited to a management flow* is
//!    enough (user web access to the same address and port does not make it managed). A role nothing admits is
//!    refused, with hints: the catalog's management flows to it that the site's options turn off,
//!    or whose `from` role has no addresses in the site, or that a deny flow shadows.
//!
//! `run` calls [`guard`] (or [`check`]) after compiling and before attaching; `--force`
//! overrides.

//!
//! It reads the SSH session ([`ssh`]), concludes here, and words its refusals in `render`.

mod render;
pub mod ssh;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_common::walk::Verdict;
use dataplane_common::Reason;

use crate::classify::{Classifier, Outcome, Probe, IPPROTO_TCP};
use crate::compile::tables::Tables;
use crate::policy::{Action, Cidr, Flow, Policy, PortRanges, Proto};
pub use ssh::{ssh_session_from_env, SshSession};

/// The role id the catalogs give the administrators' workstations.
pub const MANAGEMENT_ROLE: &str = "management-pc";
/// A flow to this TCP port is a management flow whatever its `from` role.
pub const SSH_PORT: u16 = 22;
/// Destination ports tried first when probing a management flow: ssh, https, http.
const PROBE_DPORTS: [u16; 3] = [22, 443, 80];
/// Source port of the probes (an ephemeral port), when the flow's source ports allow it.
const PROBE_SPORT: u16 = 50000;

/// One reason to refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lockout {
    /// The compiled tables drop the SSH session's packets.
    SshSession {
        session: SshSession,
        /// Whether the server address is protected by the site.
        protected: bool,
        reason: Reason,
        /// The deny flow that forbids it (`reason` is `DropDenyFlow`): "id (catalog)".
        deny_flow: Option<String>,
    },
    /// No management flow reaches a protected role.
    Unmanaged {
        role: String,
        prefixes: Vec<Cidr>,
        /// Why the catalog's management flows to the role do not help, one each.
        hints: Vec<Hint>,
    },
}

/// A catalog flow a hint is about: `id` (catalog, from -> to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintFlow {
    pub id: String,
    pub catalog: String,
    pub from: String,
    pub to: String,
}

/// Why a catalog's management flow to an unmanaged role does not reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// The site's options do not meet the flow's `when` (each `option: value(s)`).
    Off { flow: HintFlow, when: Vec<String> },
    /// The flow's `from` role has no addresses in the site.
    Unbound { flow: HintFlow, role: String },
    /// The `from` role has no address of the protected role's IP version.
    NoFamily { flow: HintFlow, from: String, role: String },
    /// A deny flow ("id (catalog)") wins over it.
    Shadowed { flow: HintFlow, deny: String },
    /// Its packets are counted on another flow, which is not a management flow.
    Credited { flow: HintFlow, other: String },
    /// The compiled tables drop its packets for this reason.
    Dropped { flow: HintFlow, reason: Reason },
}

/// Why `run` refuses a site: every [`Lockout`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockoutError {
    pub site: String,
    pub problems: Vec<Lockout>,
}

impl std::error::Error for LockoutError {}

/// Whether `f` is a management flow (see the module documentation): allow, TCP, and from
/// [`MANAGEMENT_ROLE`] or to port 22.
pub fn is_management(policy: &Policy, f: &Flow) -> bool {
    !f.deny && f.proto == IPPROTO_TCP && (policy.roles[f.from].id == MANAGEMENT_ROLE || f.dport.contains(SSH_PORT))
}

/// A port of `r`: the first of `preferred` it contains, else its first port.
fn pick(r: &PortRanges, preferred: &[u16]) -> Option<u16> {
    preferred.iter().copied().find(|&p| r.contains(p)).or_else(|| r.first().map(|&(a, _)| a))
}

fn first_addr(c: &Cidr) -> IpAddr {
    if c.v6 {
        IpAddr::V6(Ipv6Addr::from(c.addr))
    } else {
        IpAddr::V4(Ipv4Addr::from(c.addr as u32))
    }
}

/// "id (catalog)" of a slot of `tables.flows`.
fn slot_name(tables: &Tables, slot: Option<usize>) -> Option<String> {
    let f = tables.flows.get(slot?)?;
    Some(format!("{} ({})", f.id, f.catalog))
}

/// The probes of management flow `f` towards `role`: the first one admitted and credited to a
/// management flow, else the decision of the last one tried (None: nothing to probe, e.g. `from` has no address of the family).
fn probe(policy: &Policy, c: &Classifier, f: &Flow, role: usize) -> Option<Result<Probe, Verdict>> {
    let dport = pick(&f.dport, &PROBE_DPORTS)?;
    let sport = pick(&f.sport, &[PROBE_SPORT])?;
    let mut last = None;
    for dst in &policy.roles[role].cidrs {
        for src in policy.roles[f.from].cidrs.iter().filter(|s| s.v6 == dst.v6) {
            let p = Probe::ported(first_addr(src), first_addr(dst), IPPROTO_TCP, sport, dport);
            let d = c.classify(&p);
            // Admitted as management: a flow that serves users on the same port does not count.
            if d.action() == Action::Allow && d.flow().is_some_and(|s| is_management(policy, &policy.flows[s])) {
                return Some(Ok(p));
            }
            last = Some(Err(d));
        }
    }
    last
}

/// The roles whose addresses cover every prefix of `role` (the role itself included).
fn covering_roles(policy: &Policy, role: usize) -> Vec<&str> {
    let prefixes = &policy.roles[role].cidrs;
    policy
        .roles
        .iter()
        .filter(|r| !r.any && !prefixes.is_empty() && prefixes.iter().all(|p| r.cidrs.iter().any(|c| c.contains(p))))
        .map(|r| r.id.as_str())
        .chain(std::iter::once(policy.roles[role].id.as_str()))
        .collect()
}

/// What the hints of unmanaged roles look up, indexed once: a site may have a million flows.
struct Hints<'a> {
    policy: &'a Policy,
    tables: &'a Tables,
    c: &'a Classifier,
    /// The first TCP flow slot of each flow id.
    tcp_slot: HashMap<&'a str, usize>,
    /// (catalog, flow) indices of the catalogs' TCP allow flows, by their `to` role.
    to_role: HashMap<&'a str, Vec<(usize, usize)>>,
}

impl<'a> Hints<'a> {
    fn new(policy: &'a Policy, tables: &'a Tables, c: &'a Classifier) -> Self {
        let mut tcp_slot = HashMap::new();
        for (slot, f) in policy.flows.iter().enumerate().filter(|(_, f)| f.proto == IPPROTO_TCP) {
            tcp_slot.entry(f.info.id.as_str()).or_insert(slot);
        }
        let mut to_role: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        for (ci, cat) in policy.catalogs.iter().enumerate() {
            for (fi, fd) in cat.flows.iter().enumerate() {
                if fd.action == Action::Allow && fd.protocols.contains(&Proto::Tcp) {
                    to_role.entry(fd.to.as_str()).or_default().push((ci, fi));
                }
            }
        }
        Hints { policy, tables, c, tcp_slot, to_role }
    }

    /// Why no management flow reaches `role`: the catalogs' TCP allow management flows to it or
    /// to a role covering it (in catalog order), each with why it does not help.
    fn of(&self, role: usize) -> Vec<Hint> {
        let (policy, tables, c) = (self.policy, self.tables, self.c);
        let mut flows: Vec<(usize, usize)> =
            covering_roles(policy, role).iter().filter_map(|t| self.to_role.get(t)).flatten().copied().collect();
        flows.sort_unstable();
        flows.dedup();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (cat, fd) in flows.into_iter().map(|(ci, fi)| (&policy.catalogs[ci], &policy.catalogs[ci].flows[fi])) {
            let resolved = self.tcp_slot.get(fd.id.as_str()).map(|&s| &policy.flows[s]);
            let management = match resolved {
                Some(f) => is_management(policy, f),
                // Off: judged on its catalog's default option values (the port of a `by` spec).
                None => fd.from == MANAGEMENT_ROLE || fd.dport().resolve(&cat.default_values()).contains(SSH_PORT),
            };
            if !management || !seen.insert(fd.id.clone()) {
                continue;
            }
            let flow = HintFlow { id: fd.id.clone(), catalog: cat.name.clone(), from: fd.from.clone(), to: fd.to.clone() };
            let Some(f) = resolved else {
                let when: Vec<String> = fd
                    .when
                    .0
                    .iter()
                    .map(|(name, vals)| match vals.as_slice() {
                        [one] => format!("{name}: {one}"),
                        many => format!("{name}: [{}]", many.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")),
                    })
                    .collect();
                out.push(Hint::Off { flow, when });
                continue;
            };
            let from = &policy.roles[f.from];
            if from.cidrs.is_empty() {
                out.push(Hint::Unbound { flow, role: from.id.clone() });
                continue;
            }
            match probe(policy, c, f, role) {
                None => out.push(Hint::NoFamily { flow, from: from.id.clone(), role: policy.roles[role].id.clone() }),
                Some(Err(d)) => out.push(match slot_name(tables, d.flow()) {
                    Some(deny) if d.reason == Reason::DropDenyFlow => Hint::Shadowed { flow, deny },
                    Some(other) if d.action() == Action::Allow => Hint::Credited { flow, other },
                    _ => Hint::Dropped { flow, reason: d.reason },
                }),
                Some(Ok(_)) => {}
            }
        }
        out
    }
}

/// The management flow (slot in `policy.flows`) and packet that reach protected role `role`.
pub fn management_path(policy: &Policy, tables: &Tables, role: usize) -> Option<(usize, Probe)> {
    management_path_with(policy, &Classifier::new(tables), &management_flows(policy), role)
}

/// The slots of the management flows, ascending.
fn management_flows(policy: &Policy) -> Vec<usize> {
    policy.flows.iter().enumerate().filter(|(_, f)| is_management(policy, f)).map(|(slot, _)| slot).collect()
}

fn management_path_with(policy: &Policy, c: &Classifier, mgmt: &[usize], role: usize) -> Option<(usize, Probe)> {
    mgmt.iter().find_map(|&slot| match probe(policy, c, &policy.flows[slot], role) {
        Some(Ok(p)) => Some((slot, p)),
        _ => None,
    })
}

/// The guard: `Ok` when the site keeps the SSH session `ssh` (if any) and a management flow to
/// every protected role; else every problem found. `tables` must be compiled from `policy`.
pub fn check(policy: &Policy, tables: &Tables, ssh: Option<&SshSession>) -> Result<(), LockoutError> {
    let c = Classifier::new(tables);
    let mgmt = management_flows(policy);
    let mut problems = Vec::new();
    if let Some(s) = ssh {
        let d = c.classify(&s.packet());
        if d.action() == Action::Deny {
            let protected = policy.protected().any(|r| r.cidrs.iter().any(|p| p.contains_ip(s.server)));
            problems.push(Lockout::SshSession {
                session: *s,
                protected,
                reason: d.reason,
                deny_flow: slot_name(tables, d.flow()).filter(|_| d.reason == Reason::DropDenyFlow),
            });
        }
    }
    let protected = policy.roles.iter().enumerate().filter(|(_, r)| r.protected);
    let unmanaged: Vec<usize> =
        protected.filter(|&(i, _)| management_path_with(policy, &c, &mgmt, i).is_none()).map(|(i, _)| i).collect();
    if !unmanaged.is_empty() {
        let h = Hints::new(policy, tables, &c);
        problems.extend(unmanaged.into_iter().map(|i| Lockout::Unmanaged {
            role: policy.roles[i].id.clone(),
            prefixes: policy.roles[i].cidrs.clone(),
            hints: h.of(i),
        }));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LockoutError { site: policy.name.clone(), problems })
    }
}

/// [`check`] as `run` uses it: with `force`, every problem is logged as a warning and `Ok` is
/// returned; without, the [`LockoutError`] (its message names each role or tuple and `--force`).
pub fn guard(policy: &Policy, tables: &Tables, ssh: Option<&SshSession>, force: bool) -> Result<(), LockoutError> {
    match check(policy, tables, ssh) {
        Ok(()) => Ok(()),
        Err(e) if force => {
            for p in &e.problems {
                log::warn!("--force: enforcing `{}` although {p}", e.site);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

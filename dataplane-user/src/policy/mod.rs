//! Policy sources: catalogs and sites, validated with `file:line:column` errors, resolved into a
//! [`Policy`]: roles with addresses and the flows that can reach a protected role, in counter-slot
//! order, and the flows a protected role starts (outbound: the connections whose replies are
//! admitted). `compile` turns a `Policy` into map tables; `classify::reference` and
//! `classify::reference_outbound` evaluate it directly.

pub mod catalog;
pub mod cidr;
pub mod error;
pub mod options;
pub mod ports;
pub mod scaffold;
pub mod site;
pub mod sources;
pub mod synth;
mod yaml;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dataplane_common::{Config, CONFIG_ALLOW_ECHO, CONFIG_DROP_UNPROTECTED};

pub use catalog::{Action, Catalog, FlowDecl, Proto, RoleDecl};
pub use cidr::Cidr;
pub use error::{ErrorKind, PolicyError, Position};
pub use options::{ConntrackOptions, OptValue, OptionValues, SiteOptions, SourcePorts};
pub use ports::{PortRanges, PortSpec};
pub use site::{Exceptions, Site};

/// Which way a packet goes: to a protected address (the inbound flows), or sent by a protected
/// server (the outbound flows, whose connections are tracked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// To a protected address: the inbound policy.
    #[default]
    In,
    /// Sent by a protected server: the outbound flows (connection tracking).
    Out,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::In, Direction::Out];

    /// The policy's flows of this direction.
    pub fn flows(self, p: &Policy) -> &[Flow] {
        match self {
            Direction::In => &p.flows,
            Direction::Out => &p.out_flows,
        }
    }

    /// `inbound` or `outbound`, as reports name the direction.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::In => "inbound",
            Direction::Out => "outbound",
        }
    }

    pub fn is_in(&self) -> bool {
        *self == Direction::In
    }

    /// What messages put before a noun of this direction's tables: nothing inbound (the tables
    /// a site is about), `outbound ` for the others.
    pub const fn qualifier(self) -> &'static str {
        match self {
            Direction::In => "",
            Direction::Out => "outbound ",
        }
    }
}

/// A role as the site sees it.
#[derive(Clone, Debug)]
pub struct Role {
    pub id: String,
    pub any: bool,
    /// The site's binding; for an unbound `any` role 0.0.0.0/0 and ::/0; else none. For a
    /// binding with exceptions, the exact difference as prefixes (what everything compiles).
    pub cidrs: Vec<Cidr>,
    pub protected: bool,
    /// The binding as written when it has exceptions: what `reference` evaluates directly.
    pub exceptions: Option<RoleExceptions>,
}

/// A binding with exceptions: the role holds what `cidrs` holds, except what `except` and the
/// roles of `except_roles` hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleExceptions {
    pub cidrs: Vec<Cidr>,
    pub except: Vec<Cidr>,
    /// Indices into `Policy::roles`.
    pub except_roles: Vec<usize>,
}

/// An address a role's `cidrs` hold that its exceptions leave out (`explain` shows why).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Excepted {
    pub role: String,
    /// The `except` prefix that holds the address, or `role ID` for an except-role.
    pub by: String,
}

/// One compiled flow (one protocol of a catalog flow); its index in `Policy::flows` is its slot.
#[derive(Clone, Debug)]
pub struct Flow {
    pub info: FlowInfo,
    /// Role indices into `Policy::roles`.
    pub from: usize,
    pub to: usize,
    pub proto: u8,
    pub sport: PortRanges,
    pub dport: PortRanges,
    pub deny: bool,
}

/// A site resolved against its catalogs: what the compiler needs.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub path: PathBuf,
    /// Selected catalogs, in the site's order (flow precedence follows it).
    pub catalogs: Vec<Catalog>,
    /// Every role of the selected catalogs, in first-declared order.
    pub roles: Vec<Role>,
    /// Flows whose `to` is protected and whose `when` holds, in slot order.
    pub flows: Vec<Flow>,
    /// Catalog flows included (before the tcp/udp split).
    pub catalog_flows: usize,
    /// Outbound flows: those whose `from` is protected and whose `when` holds (allow and deny,
    /// split by protocol), in the same precedence order as `flows`; the index is the outbound
    /// slot. A flow between two protected roles is in both lists.
    pub out_flows: Vec<Flow>,
    /// Catalog flows included in `out_flows` (before the tcp/udp split).
    pub out_catalog_flows: usize,
    pub drop_unprotected: bool,
    pub allow_echo: bool,
    /// `conntrack-*` site options.
    pub conntrack: ConntrackOptions,
    /// `source-ports`: with `any`, every flow's `sport` above is 0-65535.
    pub source_ports: SourcePorts,
}

impl Policy {
    /// Whether `role` holds `ip`, by set membership on the binding as written (no prefix list
    /// is computed): in its `cidrs`, in no `except`, held by no except-role.
    pub fn role_holds(&self, role: usize, ip: IpAddr) -> bool {
        let r = &self.roles[role];
        let any = |v: &[Cidr]| v.iter().any(|c| c.contains_ip(ip));
        match &r.exceptions {
            None => any(&r.cidrs),
            Some(x) => any(&x.cidrs) && !any(&x.except) && !x.except_roles.iter().any(|&j| self.role_holds(j, ip)),
        }
    }

    /// The roles whose `cidrs` hold `ip` but whose exceptions leave it out, with the exception.
    pub fn excepted(&self, ip: IpAddr) -> Vec<Excepted> {
        let mut out = Vec::new();
        for r in &self.roles {
            let Some(x) = &r.exceptions else { continue };
            if !x.cidrs.iter().any(|c| c.contains_ip(ip)) {
                continue;
            }
            let by = match x.except.iter().find(|c| c.contains_ip(ip)) {
                Some(c) => c.to_string(),
                // An except-role's prefixes are its exact addresses (and need no recursion).
                None => match x.except_roles.iter().find(|&&j| self.roles[j].cidrs.iter().any(|c| c.contains_ip(ip))) {
                    Some(&j) => format!("role {}", self.roles[j].id),
                    None => continue,
                },
            };
            out.push(Excepted { role: r.id.clone(), by });
        }
        out
    }

    pub fn config(&self) -> Config {
        let mut flags = 0;
        if self.drop_unprotected {
            flags |= CONFIG_DROP_UNPROTECTED;
        }
        if self.allow_echo {
            flags |= CONFIG_ALLOW_ECHO;
        }
        Config {
            flags,
            generation: 1,
            ct_tcp_established: self.conntrack.tcp_established,
            ct_tcp_transitory: self.conntrack.tcp_transitory,
            ct_udp: self.conntrack.udp,
            events_per_sec: dataplane_common::DEFAULT_EVENTS_PER_SEC,
            // Measured when the program is loaded (`load::load_with`).
            hz: 0,
        }
    }

    /// The policy the outbound tables are compiled from: packets a protected server sends,
    /// seen as the inbound compiler sees packets to protected roles. Its flows are `out_flows`
    /// (same slots) and its protected roles are the `to` roles of the outbound flows (the peers),
    /// so the destination tries map the peer's address, the source tries the server's, PORTS
    /// keys the peer's port and SPORTS the server's source port. `out_flows` of the result is
    /// empty.
    pub fn outbound_policy(&self) -> Policy {
        let mut roles = self.roles.clone();
        roles.iter_mut().for_each(|r| r.protected = false);
        for f in &self.out_flows {
            roles[f.to].protected = true;
        }
        Policy {
            name: self.name.clone(),
            path: self.path.clone(),
            catalogs: self.catalogs.clone(),
            roles,
            flows: self.out_flows.clone(),
            catalog_flows: self.out_catalog_flows,
            out_flows: Vec::new(),
            out_catalog_flows: 0,
            drop_unprotected: self.drop_unprotected,
            allow_echo: self.allow_echo,
            conntrack: self.conntrack,
            source_ports: self.source_ports,
        }
    }

    pub fn protected(&self) -> impl Iterator<Item = &Role> {
        self.roles.iter().filter(|r| r.protected)
    }

    /// Builds a policy from a checked site and its catalogs (in the site's order).
    pub fn resolve(site: &Site, catalogs: Vec<Catalog>) -> Result<Policy, PolicyError> {
        let mut roles: Vec<Role> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for r in catalogs.iter().flat_map(|c| &c.roles) {
            match index.get(&r.id) {
                Some(&i) => roles[i].any |= r.any,
                None => {
                    index.insert(r.id.clone(), roles.len());
                    roles.push(Role { id: r.id.clone(), any: r.any, cidrs: Vec::new(), protected: false, exceptions: None });
                }
            }
        }
        let role_of = |id: &str| {
            index.get(id).copied().ok_or_else(|| PolicyError::new(ErrorKind::UnknownRole, format!("unknown role `{id}`")))
        };
        for r in roles.iter_mut().filter(|r| r.any) {
            r.cidrs = vec![Cidr::ANY_V4, Cidr::ANY_V6];
        }
        for (id, cidrs) in &site.roles {
            roles[role_of(id)?].cidrs = cidrs.clone();
        }
        for (id, x) in &site.exceptions {
            let i = role_of(id)?;
            let except_roles = x.except_roles.iter().map(|r| role_of(r)).collect::<Result<_, _>>()?;
            roles[i].exceptions = Some(RoleExceptions { cidrs: roles[i].cidrs.clone(), except: x.except.clone(), except_roles });
        }
        effective_bindings(&mut roles)?;
        let source_ports = SourcePorts::from_site(&site.options);
        for id in &site.protect {
            let i = role_of(id)?;
            if roles[i].cidrs.is_empty() {
                let msg = format!("protected role `{id}` has no addresses");
                return Err(PolicyError::new(ErrorKind::ProtectedRoleUnbound, msg));
            }
            roles[i].protected = true;
        }
        let (mut flows, mut out_flows) = (Vec::new(), Vec::new());
        let (mut catalog_flows, mut out_catalog_flows) = (0, 0);
        for c in &catalogs {
            let values = OptionValues::resolve(&c.options, &site.options.0);
            for f in &c.flows {
                let (from, to) = (role_of(&f.from)?, role_of(&f.to)?);
                let (inbound, outbound) = (roles[to].protected, roles[from].protected);
                if !(inbound || outbound) || !f.when.holds(&values) {
                    continue;
                }
                catalog_flows += usize::from(inbound);
                out_catalog_flows += usize::from(outbound);
                let sport = match source_ports {
                    SourcePorts::AsDocumented => f.sport().resolve(&values),
                    SourcePorts::Any => PortRanges::any(),
                };
                let dport = f.dport().resolve(&values);
                for p in &f.protocols {
                    let flow = Flow {
                        info: flow_info(c, f, *p),
                        from,
                        to,
                        proto: p.number(),
                        sport: sport.clone(),
                        dport: dport.clone(),
                        deny: f.action == Action::Deny,
                    };
                    if outbound {
                        out_flows.push(flow.clone());
                    }
                    if inbound {
                        flows.push(flow);
                    }
                }
            }
        }
        let opt = |n: &str| site.options.get(n).map(|v| v.to_string());
        Ok(Policy {
            name: site.name.clone(),
            path: site.path.clone(),
            catalogs,
            roles,
            flows,
            catalog_flows,
            out_flows,
            out_catalog_flows,
            drop_unprotected: opt("unprotected").as_deref() == Some("drop"),
            allow_echo: opt("icmp-echo").as_deref() == Some("allow"),
            conntrack: ConntrackOptions::from_site(&site.options),
            source_ports,
        })
    }
}

/// Sets the `cidrs` of every role bound with exceptions to the exact difference, except-roles
/// first (their own effective binding is what they take away).
fn effective_bindings(roles: &mut [Role]) -> Result<(), PolicyError> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Todo,
        Busy,
        Done,
    }
    fn visit(roles: &mut [Role], state: &mut [State], i: usize) -> Result<(), PolicyError> {
        match state[i] {
            State::Done => return Ok(()),
            State::Busy => {
                let msg = format!("a cycle of except-roles through `{}`", roles[i].id);
                return Err(PolicyError::new(ErrorKind::ExceptCycle, msg));
            }
            State::Todo => state[i] = State::Busy,
        }
        if let Some(x) = roles[i].exceptions.clone() {
            let mut minus = x.except.clone();
            for &j in &x.except_roles {
                visit(roles, state, j)?;
                minus.extend(roles[j].cidrs.iter().copied());
            }
            roles[i].cidrs = cidr::difference(&x.cidrs, &minus);
        }
        state[i] = State::Done;
        Ok(())
    }
    let mut state = vec![State::Todo; roles.len()];
    (0..roles.len()).try_for_each(|i| visit(roles, &mut state, i))
}

/// One flow of a policy in force, as counters, the state and metrics name it; its position in
/// `Tables::flows` is its counter slot in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowInfo {
    pub id: String,
    pub catalog: String,
    pub from: String,
    pub to: String,
    /// A catalog flow with both protocols compiles to two slots with the same id.
    pub protocol: Proto,
    pub action: Action,
    pub description: String,
    pub document: String,
    pub table: String,
}

/// A flow's identity across policies: its id and protocol (a counter slot's key).
pub type FlowKey = (String, Proto);

impl FlowInfo {
    pub fn key(&self) -> FlowKey {
        (self.id.clone(), self.protocol)
    }
}

pub fn flow_info(c: &Catalog, f: &FlowDecl, p: Proto) -> FlowInfo {
    FlowInfo {
        id: f.id.clone(),
        catalog: c.name.clone(),
        from: f.from.clone(),
        to: f.to.clone(),
        protocol: p,
        action: f.action,
        description: f.description.clone(),
        document: c.document.clone(),
        table: f.table.clone(),
    }
}

/// Where the Debian package installs the catalogs (`cargo xtask package`).
pub const INSTALLED_CATALOG_DIR: &str = "/usr/share/dataplane/catalog";

/// The catalog directory: `explicit`, else `$DATAPLANE_CATALOG_DIR`, else `<site dir>/../catalog`,
/// else `./policies/catalog`, else the installed catalogs (`<binary dir>/../share/dataplane/catalog`,
/// which is [`INSTALLED_CATALOG_DIR`] for the package's `/usr/bin/dataplane` and holds for an
/// unpacked or `/usr/local` tree too, then [`INSTALLED_CATALOG_DIR`] itself), else the source
/// tree's `policies/catalog`.
pub fn catalog_dir(explicit: Option<&Path>, site: Option<&Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_owned();
    }
    if let Some(d) = std::env::var_os("DATAPLANE_CATALOG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = site.and_then(Path::parent) {
        // `policies/sites` -> `policies/catalog`, written without `..` when the name allows.
        candidates.push(match (dir.parent(), dir.file_name()) {
            (Some(up), Some(_)) => up.join("catalog"),
            _ => dir.join("../catalog"),
        });
    }
    candidates.push(PathBuf::from("policies/catalog"));
    if let Some(prefix) = std::env::current_exe().ok().as_deref().and_then(Path::parent).and_then(Path::parent) {
        candidates.push(prefix.join("share/dataplane/catalog"));
    }
    candidates.push(PathBuf::from(INSTALLED_CATALOG_DIR));
    candidates
        .into_iter()
        .find(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/catalog")))
}

/// Loads and checks a site with its catalogs from the default catalog directory ([`catalog_dir`]).
pub fn load_site(path: &Path) -> Result<Policy, PolicyError> {
    load_site_from(path, &sources::SiteFiles::new(path, None).catalog_dir)
}

/// Loads and checks a site with its catalogs from `catalog_dir`.
pub fn load_site_from(path: &Path, catalog_dir: &Path) -> Result<Policy, PolicyError> {
    let (site, catalogs) = site::load_site_file(path, catalog_dir)?;
    Policy::resolve(&site, catalogs)
}

/// Every catalog in `dir`, sorted by name (flow ids unique across them).
pub fn load_all_catalogs(dir: &Path) -> Result<Vec<Catalog>, PolicyError> {
    let files = catalog_files(dir)?;
    catalog::load_catalogs(&files.into_iter().map(|(_, p)| p).collect::<Vec<_>>())
}

use catalog::catalog_files;

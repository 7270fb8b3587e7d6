//! The guard's refusals as text: what `run` prints, and what `--force` logs.

use std::fmt;

use super::{Hint, HintFlow, Lockout, LockoutError, MANAGEMENT_ROLE, SSH_PORT};
use crate::policy::Cidr;
use dataplane_common::Reason;

impl fmt::Display for Lockout {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Lockout::SshSession { session, protected, reason, deny_flow } => {
                write!(f, "the SSH session this runs over ({session}, from SSH_CONNECTION) would be dropped: ")?;
                match (reason, deny_flow, protected) {
                    (Reason::DropDenyFlow, Some(id), _) => {
                        write!(f, "{} is protected and deny flow `{id}` forbids it", session.server)
                    }
                    (Reason::DropNoFlow, _, true) => write!(
                        f,
                        "{} is protected and no flow of the site allows tcp port {} from {}",
                        session.server, session.server_port, session.client
                    ),
                    (Reason::DropUnprotected, _, _) => write!(
                        f,
                        "{} is not protected and the site drops unprotected traffic (unprotected: drop)",
                        session.server
                    ),
                    (r, _, _) => write!(f, "verdict {}", r.name()),
                }
            }
            Lockout::Unmanaged { role, prefixes, hints } => {
                let p: Vec<String> = prefixes.iter().map(Cidr::to_string).collect();
                write!(
                    f,
                    "protected role `{role}` ({}) has no management flow: no allowed TCP flow from \
                     `{MANAGEMENT_ROLE}` (any port), nor to ssh port {SSH_PORT} (from any role), \
                     reaches its addresses",
                    p.join(", ")
                )?;
                if hints.is_empty() {
                    write!(f, "; its catalogs document no administration access to it from `{MANAGEMENT_ROLE}`")?;
                }
                for h in hints {
                    write!(f, "\n      {h}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for LockoutError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "refusing to enforce site `{}`: it would lock the administrators out", self.site)?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        write!(
            f,
            "fix the site (bind `{MANAGEMENT_ROLE}`, turn on a management option, allow the session), \
             or pass --force to enforce it anyway"
        )
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Hint::Off { flow, when } => {
                write!(f, "{flow} is off: the site's options do not meet its condition ({})", when.join(", "))
            }
            Hint::Unbound { flow, role } => {
                write!(f, "{flow} is on, but role `{role}` has no addresses in the site: bind it under `roles:`")
            }
            Hint::NoFamily { flow, from, role } => {
                write!(f, "{flow}: role `{from}` has no address of the same IP version as `{role}`")
            }
            Hint::Shadowed { flow, deny } => write!(f, "{flow} is on, but deny flow `{deny}` shadows it"),
            Hint::Credited { flow, other } => {
                write!(f, "{flow} is on, but its packets are credited to `{other}`, not a management flow")
            }
            Hint::Dropped { flow, reason } => write!(f, "{flow} is on, but the compiled tables drop it ({})", reason.name()),
        }
    }
}

impl fmt::Display for HintFlow {
    /// `` `id` (catalog, from -> to) ``
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "`{}` ({}, {} -> {})", self.id, self.catalog, self.from, self.to)
    }
}

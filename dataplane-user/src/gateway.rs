//! A gateway in front of the servers: three network namespaces, the outside client `<tag>-c`,
//! the gateway `<tag>-g` (forwarding on) and the inside server subnet `<tag>-s`, joined by two
//! veth pairs. `dataplane` runs on the gateway and protects addresses that are not its own.
//!
//! ```text
//!  <tag>-c                 <tag>-g                              <tag>-s
//!  gw-client  <--veth-->  gw-outside [forwarding] gw-inside  <--veth-->  gw-server
//! ```

use std::{process::Command, time::Duration};

use anyhow::{bail, Context, Result};

use crate::netns::{in_netns, ip};

/// The gateway's interface toward the clients: the one `dataplane run --iface` names.
pub const OUTSIDE_IF: &str = "gw-outside";
/// The gateway's interface toward the protected servers.
pub const INSIDE_IF: &str = "gw-inside";
/// The client's interface (outside namespace).
pub const CLIENT_IF: &str = "gw-client";
/// The servers' interface (inside namespace).
pub const SERVER_IF: &str = "gw-server";

/// The addresses of one topology, as CIDRs ("10.203.1.1/24", "fd00:203:1::1/64"). The first
/// IPv4 and IPv6 address of each gateway side is the default route of that side's namespace.
pub struct Plan<'a> {
    pub client: &'a [&'a str],
    pub outside: &'a [&'a str],
    pub inside: &'a [&'a str],
    pub server: &'a [&'a str],
}

/// The three namespaces, removed on drop.
pub struct Gateway {
    pub client: String,
    pub gateway: String,
    pub server: String,
}

impl Gateway {
    pub fn new(tag: &str, plan: &Plan) -> Result<Self> {
        let g = Self { client: format!("{tag}-c"), gateway: format!("{tag}-g"), server: format!("{tag}-s") };
        g.teardown();
        for ns in [&g.client, &g.gateway, &g.server] {
            ip(&["netns", "add", ns])?;
        }
        ip(&["link", "add", CLIENT_IF, "netns", &g.client, "type", "veth", "peer", "name", OUTSIDE_IF, "netns", &g.gateway])?;
        ip(&["link", "add", SERVER_IF, "netns", &g.server, "type", "veth", "peer", "name", INSIDE_IF, "netns", &g.gateway])?;
        // The gateway routes between its two sides; everything else is as a fresh host.
        in_netns(&g.gateway, || -> Result<()> {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
            Ok(())
        })??;
        let sides = [
            (&g.client, CLIENT_IF, plan.client),
            (&g.gateway, OUTSIDE_IF, plan.outside),
            (&g.gateway, INSIDE_IF, plan.inside),
            (&g.server, SERVER_IF, plan.server),
        ];
        for (ns, ifname, addrs) in sides {
            configure(ns, ifname, addrs)?;
        }
        for (ns, via) in [(&g.client, plan.outside), (&g.server, plan.inside)] {
            for family in ["-4", "-6"] {
                let v6 = family == "-6";
                if let Some(gw) = via.iter().find(|a| a.contains(':') == v6) {
                    let gw = gw.split('/').next().unwrap_or(gw);
                    ip(&["-n", ns, family, "route", "add", "default", "via", gw])?;
                }
            }
        }
        g.wait_ready(&sides.map(|(ns, ifname, _)| (ns.clone(), ifname)), Duration::from_secs(5))?;
        Ok(g)
    }

    /// Waits until every end is operationally up with no tentative address, within `limit`.
    fn wait_ready(&self, ends: &[(String, &str)], limit: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        let show = |args: &[&str]| Command::new("ip").args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        loop {
            let ready = ends.iter().all(|(ns, ifname)| {
                let link = show(&["-n", ns, "link", "show", ifname]).unwrap_or_default();
                let tentative = show(&["-n", ns, "-6", "addr", "show", "tentative"]).unwrap_or_else(|_| "?".into());
                link.contains("state UP") && tentative.is_empty()
            });
            if ready {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("the gateway's veth pairs are not up after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn teardown(&self) {
        for ns in [&self.client, &self.gateway, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Addresses on an interface, no duplicate address detection (it would hold IPv6 back for a
/// second or two), interface and loopback up.
fn configure(ns: &str, ifname: &str, addrs: &[&str]) -> Result<()> {
    in_netns(ns, || std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"), "0"))?
        .with_context(|| format!("{ns}: {ifname}"))?;
    for a in addrs {
        let mut args = vec!["-n", ns, "addr", "add", a, "dev", ifname];
        if a.contains(':') {
            args.push("nodad");
        }
        ip(&args)?;
    }
    ip(&["-n", ns, "link", "set", ifname, "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// The IPv4 datagrams the kernel of namespace `ns` forwarded (`Ip: ForwDatagrams`; this
/// thread's namespace, not the process's: `/proc/thread-self`).
pub fn forwarded(ns: &str) -> u64 {
    let snmp = in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/snmp")).ok().and_then(Result::ok).unwrap_or_default();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else { return 0 };
    names.split_whitespace().zip(values.split_whitespace()).find(|(n, _)| *n == "ForwDatagrams").and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

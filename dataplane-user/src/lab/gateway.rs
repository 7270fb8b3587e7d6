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

use crate::lab::netns::{in_netns, ip};
use crate::policy::sources::SiteFiles;

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
        let show =
            |args: &[&str]| Command::new("ip").args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
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

/// `dataplane lab --gateway`: the lab's server behind this topology.
const LAB_ADDRS: crate::lab::Addrs = crate::lab::Addrs {
    server: ["10.200.2.10", "fd00:200:2::10"],
    clients: [
        ("10.200.1.2", "management PC"),
        ("10.200.1.3", "VCS Control"),
        ("10.200.1.9", "no named role"),
        ("fd00:200:1::2", "management PC"),
        ("fd00:200:1::3", "VCS Control"),
        ("fd00:200:1::9", "no named role"),
    ],
    dns: "10.200.1.5",
};

/// The gateway lab: the three namespaces, `tables` enforced on the gateway's outside interface,
/// the lab's traffic from the outside client to the inside server and from the server out.
pub fn lab(files: SiteFiles, tables: crate::compile::tables::Tables, rounds: u32, forward: bool) -> Result<()> {
    use crate::daemon::{Enforcer, Mode, StartOptions};
    println!("lab: creating namespaces dp-gw-c (outside client), dp-gw-g (gateway, forwarding) and dp-gw-s (inside server)");
    let client: Vec<String> = LAB_ADDRS
        .clients
        .iter()
        .map(|(a, _)| *a)
        .chain([LAB_ADDRS.dns])
        .map(|a| format!("{a}/{}", if a.contains(':') { 64 } else { 24 }))
        .collect();
    let server = [format!("{}/24", LAB_ADDRS.server[0]), format!("{}/64", LAB_ADDRS.server[1])];
    let (client, server): (Vec<&str>, Vec<&str>) =
        (client.iter().map(String::as_str).collect(), server.iter().map(String::as_str).collect());
    let plan = Plan {
        client: &client,
        outside: &["10.200.1.1/24", "fd00:200:1::1/64"],
        inside: &["10.200.2.1/24", "fd00:200:2::1/64"],
        server: &server,
    };
    let gw = Gateway::new("dp-gw", &plan)?;
    println!("lab: {OUTSIDE_IF} (10.200.1.1) faces the clients, {INSIDE_IF} (10.200.2.1) the server 10.200.2.10; the gateway routes between them");
    let mut ifaces = vec![OUTSIDE_IF.to_string()];
    if forward {
        // The veths as a NIC would be: the server's end takes redirected frames (GRO), the
        // client's sockets send complete checksums.
        set_gro(&gw.server, SERVER_IF)?;
        disable_tx_checksum(&gw.client, CLIENT_IF)?;
        ifaces.push(INSIDE_IF.to_string());
    }
    let opts = StartOptions { forward, ..Default::default() };
    let (enforcer, modes) = Enforcer::start(files, tables, &ifaces, Mode::Auto, Some(&gw.gateway), opts)?;
    println!(
        "lab: XDP attached to {OUTSIDE_IF} in dp-gw-g ({} mode), tc egress too: what reaches the server is judged as it enters the gateway, \
         the server's own connections are recorded as they leave it",
        modes[0]
    );
    if forward {
        println!("lab: and to {INSIDE_IF}, forwarding the allowed packets to the server in XDP (run --forward)");
    }
    let forwarded_before = forwarded(&gw.gateway);
    let net = crate::lab::Net { client: &gw.client, server: &gw.server, addrs: &LAB_ADDRS };
    let mismatches = crate::lab::traffic(&net, &enforcer.tables, rounds)?;
    println!(
        "\nlab: the gateway's kernel forwarded {} packets (Ip ForwDatagrams)",
        forwarded(&gw.gateway).saturating_sub(forwarded_before)
    );
    drop(enforcer);
    println!("lab: tearing down namespaces");
    drop(gw);
    crate::lab::verdict(mismatches)
}

/// The IPv4 datagrams the kernel of namespace `ns` forwarded (`Ip: ForwDatagrams`; this
/// thread's namespace, not the process's: `/proc/thread-self`).
pub fn forwarded(ns: &str) -> u64 {
    let snmp =
        in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/snmp")).ok().and_then(Result::ok).unwrap_or_default();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ForwDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Switches GRO on for `ifname` in namespace `ns` (ethtool -K gro on): a veth receives frames
/// redirected to its peer by XDP only when it runs an XDP program or has GRO on (its NAPI
/// handler then takes them).
pub fn set_gro(ns: &str, ifname: &str) -> Result<()> {
    const ETHTOOL_SGRO: u32 = 0x2c;
    ethtool_set(ns, ifname, ETHTOOL_SGRO, 1)
}

/// Switches transmit checksum offload off for `ifname` (ethtool -K tx off). A local socket's
/// packets leave a veth with the transport checksum left to the hardware (CHECKSUM_PARTIAL);
/// the stack forwards them with that note, but a frame redirected by XDP carries none, and the
/// receiver finds a bad checksum. Packets from a real NIC always arrive complete.
pub fn disable_tx_checksum(ns: &str, ifname: &str) -> Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    ethtool_set(ns, ifname, ETHTOOL_STXCSUM, 0)
}

/// One ethtool "set value" request (SIOCETHTOOL), without the ethtool binary.
fn ethtool_set(ns: &str, ifname: &str, cmd: u32, data: u32) -> Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq { name: [0; 16], data: &mut value, _pad: [0; 16] };
    if ifname.len() >= req.name.len() {
        bail!("interface name too long: {ifname}");
    }
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    in_netns(ns, || {
        // Safety: a datagram socket for the ioctl, closed at once; the request outlives the call.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let r = libc::ioctl(fd, libc::SIOCETHTOOL, &mut req as *mut IfReq);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 0 {
                bail!("{ns}: ethtool request {cmd:#x} on {ifname}: {err}");
            }
        }
        Ok(())
    })?
}

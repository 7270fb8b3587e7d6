//! What the guard reads: the SSH session this process runs over, from `SSH_CONNECTION`.

use std::fmt;
use std::net::IpAddr;

use crate::classify::{Probe, IPPROTO_TCP};

/// An SSH connection as `SSH_CONNECTION` describes it: "client_ip client_port server_ip
/// server_port".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SshSession {
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
}

/// An address as sshd writes it: IPv6 may carry a zone (`fe80::1%eth0`) or be IPv4-mapped.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.split('%').next()?;
    let s = s.trim_start_matches('[').trim_end_matches(']');
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(a) => Some(match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        }),
        a => Some(a),
    }
}

impl SshSession {
    /// Parses the value of `SSH_CONNECTION`; None when it is not four fields of the right kinds.
    pub fn parse(s: &str) -> Option<SshSession> {
        let f: Vec<&str> = s.split_whitespace().collect();
        let [client, cport, server, sport] = f.as_slice() else {
            return None;
        };
        let (client, server) = (parse_addr(client)?, parse_addr(server)?);
        if client.is_ipv4() != server.is_ipv4() {
            return None;
        }
        Some(SshSession { client, client_port: cport.parse().ok()?, server, server_port: sport.parse().ok()? })
    }

    /// The packet the client sends to the server: what the XDP program sees of the session.
    pub fn packet(&self) -> Probe {
        Probe::ported(self.client, self.server, IPPROTO_TCP, self.client_port, self.server_port)
    }
}

fn sockaddr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl fmt::Display for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} -> {} tcp", sockaddr(self.client, self.client_port), sockaddr(self.server, self.server_port))
    }
}

/// The SSH session this process runs over, from `SSH_CONNECTION`; None outside SSH or when the
/// variable is malformed.
pub fn ssh_session_from_env() -> Option<SshSession> {
    std::env::var("SSH_CONNECTION").ok().and_then(|s| SshSession::parse(&s))
}

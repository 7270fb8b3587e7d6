//! `dataplane explain`: the verdict the kernel will give each packet, from JSON lines on stdin
//! (`classify::request`) or one packet given by flags.

use std::io::{BufRead, Write};
use std::net::IpAddr;

use anyhow::{bail, Context, Result};

use super::args::SiteArgs;
use crate::classify::judge::Judge;
use crate::classify::request::{BadRequest, Ip, Port, ProtoName, Quoted, Request};
use crate::classify::verdict::Direction;
use crate::compile::compile_with_summary;

#[derive(clap::Args, Debug, Default)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub site: SiteArgs,
    /// One packet from flags instead of JSON lines on stdin: source address.
    #[arg(long, value_name = "IP", requires_all = ["dst", "proto"])]
    pub src: Option<IpAddr>,
    #[arg(long, value_name = "IP", requires = "src")]
    pub dst: Option<IpAddr>,
    /// tcp, udp, icmp, icmpv6 or a protocol number.
    #[arg(long, value_name = "PROTO", requires = "src")]
    pub proto: Option<String>,
    /// Source port (default 49152).
    #[arg(long, value_name = "N", requires = "src")]
    pub sport: Option<u16>,
    #[arg(long, value_name = "N", requires = "src")]
    pub dport: Option<u16>,
    /// ICMP type (default: echo request).
    #[arg(long, value_name = "N", requires = "src")]
    pub icmp_type: Option<u8>,
    /// The packet an ICMP error quotes, as the protected server sent it:
    /// `udp 192.0.2.10:5060 -> 198.51.100.7:5060` (IPv6 as `[2001:db8::1]:5060`).
    #[arg(long, value_name = "TUPLE", requires = "icmp_type")]
    pub quoted: Option<String>,
    /// `out`: the protected server sends the packet (is the connection tracked and its replies
    /// admitted?). Default `in`: a packet to a protected address.
    #[arg(long, value_enum, value_name = "DIR", requires = "src")]
    pub direction: Option<Direction>,
}

pub fn explain(a: ExplainArgs) -> Result<()> {
    let policy = a.site.read()?.policy;
    let (tables, _) = compile_with_summary(&policy)?;
    let judge = Judge::of(tables);
    let line = |r: &Request| -> Result<String> {
        let p = r.probe()?;
        Ok(serde_json::to_string(&judge.explain_in(&policy, r.direction, &p))?)
    };
    if let Some(r) = flags_request(&a)? {
        println!("{}", line(&r)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let mut bad = 0;
    for (i, text) in std::io::stdin().lock().lines().enumerate() {
        let text = text.context("reading stdin")?;
        if text.trim().is_empty() {
            continue;
        }
        match Request::parse(&text).map_err(anyhow::Error::from).and_then(|r| line(&r)) {
            Ok(answer) => {
                writeln!(out, "{answer}")?;
                out.flush()?;
            }
            Err(e) => {
                bad += 1;
                eprintln!("stdin:{}: {e:#}", i + 1);
            }
        }
    }
    if bad > 0 {
        bail!("{bad} bad input line(s)");
    }
    Ok(())
}

/// The request the flags give, if they give one (`--src` and what it requires).
fn flags_request(a: &ExplainArgs) -> Result<Option<Request>> {
    let (Some(src), Some(dst), Some(proto)) = (a.src, a.dst, &a.proto) else { return Ok(None) };
    let quoted = a.quoted.as_deref().map(parse_quoted).transpose().context("--quoted")?;
    Ok(Some(Request {
        src: Ip(src),
        dst: Ip(dst),
        proto: proto_flag(proto)?,
        sport: a.sport.map(Port),
        dport: a.dport.map(Port),
        icmp_type: a.icmp_type.map(crate::classify::request::IcmpType),
        quoted,
        direction: a.direction.unwrap_or_default(),
    }))
}

/// `tcp`, `udp`, `icmp`, `icmpv6` or a number 0-255.
fn proto_flag(s: &str) -> Result<ProtoName, BadRequest> {
    serde_json::from_value(s.parse::<u8>().map_or_else(|_| s.into(), serde_json::Value::from))
        .map_err(|e| BadRequest::field("proto", &e.to_string()))
}

/// `--quoted`: `PROTO SRC:PORT -> DST:PORT` (IPv6 in brackets).
fn parse_quoted(s: &str) -> Result<Quoted> {
    let bad = || anyhow::anyhow!("`{s}` is not `PROTO SRC:PORT -> DST:PORT`");
    let (proto, rest) = s.trim().split_once(' ').ok_or_else(bad)?;
    let (from, to) = rest.split_once("->").ok_or_else(bad)?;
    let at = |x: &str| -> Result<(Ip, Port)> {
        let sa: std::net::SocketAddr = x.trim().parse().map_err(|_| anyhow::anyhow!("`{}` is not ADDRESS:PORT", x.trim()))?;
        Ok((Ip(sa.ip()), Port(sa.port())))
    };
    let ((src, sport), (dst, dport)) = (at(from)?, at(to)?);
    Ok(Quoted { src: Some(src), dst, proto: proto_flag(proto)?, sport, dport })
}

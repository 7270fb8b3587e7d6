//! One `explain` input line, `{"src", "dst", "proto", "sport"?, "dport"?, "icmp_type"?,
//! "quoted"?, "direction"?}`, as one derived struct: `explain` reads it, and `diff` and
//! `suggest` print their example tuples in it, so that each example can be fed to `explain`.
//! Each field's type says what is wrong with a bad value in the words the error shows.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::verdict::Direction;
use super::{Probe, Quote, DEFAULT_SPORT, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// A bad `explain` line: what is wrong, with the field it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(String);

impl BadRequest {
    /// A bad value of field `name`, in the words of `msg`.
    pub fn field(name: &str, msg: &str) -> BadRequest {
        BadRequest(field_error(name, msg))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub src: Ip,
    pub dst: Ip,
    pub proto: ProtoName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<Port>,
    /// ICMP type; none means an echo request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<IcmpType>,
    /// The packet an ICMP error quotes, as the protected server sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quoted: Option<Quoted>,
    #[serde(default, skip_serializing_if = "Direction::is_in", deserialize_with = "direction")]
    pub direction: Direction,
}

/// `"quoted"`: the packet an ICMP error quotes (`src` defaults to the error's destination).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quoted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Ip>,
    pub dst: Ip,
    pub proto: ProtoName,
    pub sport: Port,
    pub dport: Port,
}

impl Request {
    /// Parses one line; errors name the field as `field "quoted.dport": ...`.
    pub fn parse(line: &str) -> Result<Request, BadRequest> {
        let mut de = serde_json::Deserializer::from_str(line);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return BadRequest(format!("not valid JSON: {inner}"));
            }
            if path.starts_with('[') {
                // A struct also reads from an array: this line is one.
                return BadRequest("expected a JSON object".into());
            }
            // serde_json appends the position; the line is short and the field is named.
            let msg = inner.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg);
            BadRequest(field_error(&path, msg))
        })
    }

    /// The line for a probe (`"direction": "out"` for a packet a protected server sends).
    pub fn of(dir: Direction, p: &Probe) -> Request {
        let ported = p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP;
        Request {
            src: Ip(p.src),
            dst: Ip(p.dst),
            proto: ProtoName::of(p.proto),
            sport: ported.then_some(Port(p.sport)),
            dport: ported.then_some(Port(p.dport)),
            icmp_type: None,
            quoted: None,
            direction: dir,
        }
    }

    /// The packet the line describes: ports required for TCP and UDP, the source port 49152 when
    /// not given, one IP version.
    pub fn probe(&self) -> Result<Probe, BadRequest> {
        let (src, dst) = (self.src.0, self.dst.0);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(BadRequest("fields \"src\" and \"dst\" must be the same IP version".into()));
        }
        let proto = self.proto.number(dst.is_ipv6());
        let ported = proto == IPPROTO_TCP || proto == IPPROTO_UDP;
        let dport = match self.dport {
            Some(Port(d)) => d,
            None if ported => return Err(BadRequest("field \"dport\" is required for tcp and udp".into())),
            None => 0,
        };
        let sport = self.sport.map_or(DEFAULT_SPORT, |p| p.0);
        let quote = self.quoted.as_ref().map(|q| q.quote(dst)).transpose()?;
        Ok(Probe { src, dst, proto, sport, dport, icmp_type: self.icmp_type.map(|t| t.0), quote })
    }
}

impl Quoted {
    fn quote(&self, error_dst: IpAddr) -> Result<Quote, BadRequest> {
        let proto @ (IPPROTO_TCP | IPPROTO_UDP) = self.proto.number(error_dst.is_ipv6()) else {
            return Err(BadRequest("field \"quoted.proto\": the quoted packet must be tcp or udp".into()));
        };
        let src = self.src.map_or(error_dst, |s| s.0);
        Ok(Quote { src, dst: self.dst.0, proto, sport: self.sport.0, dport: self.dport.0 })
    }
}

/// `field "x" is missing`, `field "x" must be ...`, `field "x": ...`.
fn field_error(path: &str, msg: &str) -> String {
    if let Some(name) = msg.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
        let full = if path == "." { name.to_owned() } else { format!("{path}.{name}") };
        return format!("field \"{full}\" is missing");
    }
    if msg.starts_with("invalid type") {
        // Only the line and `quoted` are objects; every other field's type words its own error.
        return if path == "." { "expected a JSON object".into() } else { format!("field \"{path}\" must be an object") };
    }
    if path == "." {
        return msg.to_owned();
    }
    let sep = if msg.starts_with("must ") { " " } else { ": " };
    format!("field \"{path}\"{sep}{msg}")
}

/// An IP address, written as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Ip(pub IpAddr);

impl<'de> Deserialize<'de> for Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => s.parse().map(Ip).map_err(|_| de::Error::custom(format!("`{s}` is not an IP address"))),
            _ => Err(de::Error::custom("must be a string")),
        }
    }
}

/// A port 0-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded(d, u16::MAX.into()).map(|n| Port(n as u16))
    }
}

/// An ICMP type 0-255.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct IcmpType(pub u8);

impl<'de> Deserialize<'de> for IcmpType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded(d, u8::MAX.into()).map(|n| IcmpType(n as u8))
    }
}

/// A non-negative integer up to `max`.
fn bounded<'de, D: Deserializer<'de>>(d: D, max: u64) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    match v.as_u64().filter(|&n| n <= u32::MAX.into()) {
        Some(n) if n <= max => Ok(n),
        Some(n) => Err(de::Error::custom(format!("{n} is above {max}"))),
        None => Err(de::Error::custom("must be a non-negative integer")),
    }
}

fn direction<'de, D: Deserializer<'de>>(d: D) -> Result<Direction, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Direction::In),
        Value::String(s) if s == "in" => Ok(Direction::In),
        Value::String(s) if s == "out" => Ok(Direction::Out),
        Value::String(s) => Err(de::Error::custom(format!("`{s}` is not in or out"))),
        _ => Err(de::Error::custom("must be a string (in or out)")),
    }
}

/// A protocol as `explain` spells it: `tcp`, `udp`, `icmp` (ICMPv6 for an IPv6 destination),
/// `icmpv6`, or a number 0-255.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtoName {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Number(u8),
}

impl ProtoName {
    /// The name of protocol number `p` (ICMP and ICMPv6 both `icmp`).
    pub fn of(p: u8) -> ProtoName {
        match p {
            IPPROTO_TCP => ProtoName::Tcp,
            IPPROTO_UDP => ProtoName::Udp,
            IPPROTO_ICMP | IPPROTO_ICMPV6 => ProtoName::Icmp,
            n => ProtoName::Number(n),
        }
    }

    /// The protocol number, for a packet to an IPv6 destination or not.
    pub fn number(self, v6: bool) -> u8 {
        match self {
            ProtoName::Tcp => IPPROTO_TCP,
            ProtoName::Udp => IPPROTO_UDP,
            ProtoName::Icmp if v6 => IPPROTO_ICMPV6,
            ProtoName::Icmp => IPPROTO_ICMP,
            ProtoName::Icmpv6 => IPPROTO_ICMPV6,
            ProtoName::Number(n) => n,
        }
    }

    /// Parses a name (not a number).
    pub fn parse(s: &str) -> Option<ProtoName> {
        match s {
            "tcp" => Some(ProtoName::Tcp),
            "udp" => Some(ProtoName::Udp),
            "icmp" => Some(ProtoName::Icmp),
            "icmpv6" => Some(ProtoName::Icmpv6),
            _ => None,
        }
    }

    const fn name(self) -> Option<&'static str> {
        match self {
            ProtoName::Tcp => Some("tcp"),
            ProtoName::Udp => Some("udp"),
            ProtoName::Icmp => Some("icmp"),
            ProtoName::Icmpv6 => Some("icmpv6"),
            ProtoName::Number(_) => None,
        }
    }
}

impl fmt::Display for ProtoName {
    /// `tcp`, or `proto 47` for a number.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (self.name(), self) {
            (Some(n), _) => f.write_str(n),
            (None, ProtoName::Number(n)) => write!(f, "proto {n}"),
            (None, _) => unreachable!("every other protocol has a name"),
        }
    }
}

impl Serialize for ProtoName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.name(), self) {
            (Some(n), _) => s.serialize_str(n),
            (None, ProtoName::Number(n)) => s.serialize_u8(*n),
            (None, _) => unreachable!("every other protocol has a name"),
        }
    }
}

impl<'de> Deserialize<'de> for ProtoName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => {
                ProtoName::parse(&s).ok_or_else(|| de::Error::custom(format!("`{s}` is not tcp, udp, icmp, icmpv6 or a number")))
            }
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .map(ProtoName::Number)
                .ok_or_else(|| de::Error::custom(format!("{n} is not a protocol number 0-255"))),
            _ => Err(de::Error::custom("must be a string or a number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> String {
        Request::parse(line).and_then(|r| r.probe()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let base = r#""src": "8.8.8.8", "dst": "192.0.2.10""#;
        assert_eq!(err(r#"{"dst": "192.0.2.10", "proto": "tcp"}"#), "field \"src\" is missing");
        assert_eq!(
            err(r#"{"src": "1.2.3.300", "dst": "192.0.2.10", "proto": 6}"#),
            "field \"src\": `1.2.3.300` is not an IP address"
        );
        assert_eq!(err(r#"{"src": 5, "dst": "192.0.2.10", "proto": 6}"#), "field \"src\" must be a string");
        assert_eq!(
            err(&format!(r#"{{{base}, "proto": "gre"}}"#)),
            "field \"proto\": `gre` is not tcp, udp, icmp, icmpv6 or a number"
        );
        assert_eq!(err(&format!(r#"{{{base}, "proto": 300}}"#)), "field \"proto\": 300 is not a protocol number 0-255");
        assert_eq!(err(&format!(r#"{{{base}, "proto": "udp", "dport": 70000}}"#)), "field \"dport\": 70000 is above 65535");
        assert_eq!(err(&format!(r#"{{{base}, "proto": "udp", "dport": -1}}"#)), "field \"dport\" must be a non-negative integer");
        assert_eq!(err(&format!(r#"{{{base}, "proto": "udp"}}"#)), "field \"dport\" is required for tcp and udp");
        assert_eq!(
            err(&format!(r#"{{{base}, "proto": "udp", "dport": 1, "direction": "up"}}"#)),
            "field \"direction\": `up` is not in or out"
        );
        assert_eq!(
            err(&format!(r#"{{{base}, "proto": "udp", "dport": 1, "direction": 1}}"#)),
            "field \"direction\" must be a string (in or out)"
        );
        assert_eq!(
            err(&format!(r#"{{{base}, "proto": 1, "quoted": {{"proto": "udp", "sport": 1, "dport": 2}}}}"#)),
            "field \"quoted.dst\" is missing"
        );
        assert_eq!(
            err(&format!(r#"{{{base}, "proto": 1, "quoted": {{"dst": "1.1.1.1", "proto": "icmp", "sport": 1, "dport": 2}}}}"#)),
            "field \"quoted.proto\": the quoted packet must be tcp or udp"
        );
        assert_eq!(
            err(r#"{"src": "8.8.8.8", "dst": "2001:db8::1", "proto": 6, "dport": 1}"#),
            "fields \"src\" and \"dst\" must be the same IP version"
        );
        assert_eq!(err("[1]"), "expected a JSON object");
        assert!(err(r#"{"src": "8.8"#).starts_with("not valid JSON: "));
    }

    #[test]
    fn a_probe_round_trips_through_its_line() {
        let line = r#"{"src":"2001:db8::7","dst":"2001:db8::10","proto":"udp","sport":40000,"dport":3478,"direction":"out"}"#;
        let r = Request::parse(line).unwrap();
        let p = r.probe().unwrap();
        assert_eq!(serde_json::to_string(&Request::of(Direction::Out, &p)).unwrap(), line);
        let icmp = Request::of(Direction::In, &Probe { proto: IPPROTO_ICMPV6, ..p });
        assert_eq!(serde_json::to_string(&icmp).unwrap(), r#"{"src":"2001:db8::7","dst":"2001:db8::10","proto":"icmp"}"#);
    }
}

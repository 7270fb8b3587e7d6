//! IPv4 and IPv6 prefixes, as one type so that class computation is written once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::de::{DeserializeSeed, Deserializer};
use serde::Deserialize;

use super::error::ErrorKind;
use super::yaml::StrWith;

/// A prefix; IPv4 addresses live in the low 32 bits of `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub v6: bool,
    pub addr: u128,
    pub len: u8,
}

/// Width in bits of an address family.
pub const fn width(v6: bool) -> u8 {
    if v6 {
        128
    } else {
        32
    }
}

/// The network mask of a `len`-bit prefix in a `w`-bit address.
pub const fn mask(len: u8, w: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let full = if w == 128 { u128::MAX } else { (1u128 << w) - 1 };
        (u128::MAX << (w - len)) & full
    }
}

/// (is IPv6, address as an integer).
pub fn ip_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u32::from(a) as u128),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

impl Cidr {
    pub const ANY_V4: Cidr = Cidr { v6: false, addr: 0, len: 0 };
    pub const ANY_V6: Cidr = Cidr { v6: true, addr: 0, len: 0 };

    pub fn width(&self) -> u8 {
        width(self.v6)
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        let (v6, a) = ip_bits(ip);
        v6 == self.v6 && a & mask(self.len, self.width()) == self.addr
    }

    /// Whether `other` lies inside this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.v6 == self.v6 && other.len >= self.len && other.addr & mask(self.len, self.width()) == self.addr
    }

    /// `10.0.0.0/8`, `fd00::/16`, or a bare address (a host prefix). Host bits must be zero.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        let (a, len) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (t, None),
        };
        let ip: IpAddr = a.parse().map_err(|_| format!("`{s}` is not an IPv4 or IPv6 address or CIDR"))?;
        let (v6, addr) = ip_bits(ip);
        let w = width(v6);
        let len = match len {
            None => w,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= w && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("`{s}`: prefix length must be 0-{w}")),
            },
        };
        let c = Cidr { v6, addr: addr & mask(len, w), len };
        if c.addr != addr {
            return Err(format!("`{s}` has host bits set (did you mean {c}?)"));
        }
        Ok(c)
    }

    /// The prefix as big-endian bytes (4 or 16).
    pub fn octets(&self) -> Vec<u8> {
        if self.v6 {
            self.addr.to_be_bytes().to_vec()
        } else {
            (self.addr as u32).to_be_bytes().to_vec()
        }
    }
}

/// The addresses of `base` that are in none of `minus`, as the fewest prefixes that hold exactly
/// them (sorted; siblings merged, nested prefixes dropped). A prefix of `minus` that only
/// partly covers one of `base` splits it: the halves on the way down to the exception stay.
pub fn difference(base: &[Cidr], minus: &[Cidr]) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = aggregate(base.to_vec());
    for m in aggregate(minus.to_vec()) {
        out = out.into_iter().flat_map(|c| subtract(c, m)).collect();
    }
    aggregate(out)
}

/// `c` without the addresses of `m`.
fn subtract(c: Cidr, m: Cidr) -> Vec<Cidr> {
    if m.contains(&c) {
        return Vec::new();
    }
    if !c.contains(&m) {
        return vec![c];
    }
    // Walk down from `c` to `m`, keeping the half that does not hold `m` at each step.
    let w = c.width();
    let mut out = Vec::with_capacity(usize::from(m.len - c.len));
    let mut at = c;
    while at.len < m.len {
        let bit = 1u128 << (w - at.len - 1);
        let len = at.len + 1;
        let (low, high) = (Cidr { len, ..at }, Cidr { addr: at.addr | bit, len, ..at });
        let (keep, down) = if m.addr & bit == 0 { (high, low) } else { (low, high) };
        out.push(keep);
        at = down;
    }
    out
}

/// The same addresses as the fewest prefixes: nested ones dropped, sibling halves merged.
fn aggregate(mut v: Vec<Cidr>) -> Vec<Cidr> {
    loop {
        v.sort_unstable();
        v.dedup();
        let mut kept: Vec<Cidr> = Vec::with_capacity(v.len());
        for c in v {
            if !kept.last().is_some_and(|k| k.contains(&c)) {
                kept.push(c);
            }
        }
        let mut merged: Vec<Cidr> = Vec::with_capacity(kept.len());
        let mut changed = false;
        for c in kept {
            match merged.last_mut() {
                Some(p) if p.len == c.len && p.len > 0 && p.v6 == c.v6 && sibling(p, &c) => {
                    p.len -= 1;
                    changed = true;
                }
                _ => merged.push(c),
            }
        }
        v = merged;
        if !changed {
            return v;
        }
    }
}

/// Whether `b` is the upper half of the prefix whose lower half is `a` (same length, same family).
fn sibling(a: &Cidr, b: &Cidr) -> bool {
    let bit = 1u128 << (a.width() - a.len);
    a.addr & bit == 0 && b.addr == a.addr | bit
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.v6 {
            write!(f, "{}/{}", Ipv6Addr::from(self.addr), self.len)
        } else {
            write!(f, "{}/{}", Ipv4Addr::from(self.addr as u32), self.len)
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StrWith("a CIDR like 10.0.0.0/8 or fd00::/16", |s: &str| Cidr::parse(s).map_err(|e| ErrorKind::BadCidr.fault(e)))
            .deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("10.1.2.3").unwrap().len, 32);
        assert_eq!(Cidr::parse("fd00::2").unwrap().len, 128);
        assert_eq!(Cidr::parse("::/0").unwrap(), Cidr::ANY_V6);
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0-32"));
        assert!(Cidr::parse("10.0.0/8").unwrap_err().contains("not an IPv4"));
        assert!(Cidr::parse("10.0.0.0/+8").is_err());
    }

    fn list(v: &[Cidr]) -> Vec<String> {
        v.iter().map(Cidr::to_string).collect()
    }

    fn cs(v: &[&str]) -> Vec<Cidr> {
        v.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    #[test]
    fn difference_splits_around_the_exception() {
        let d = difference(&cs(&["0.0.0.0/0"]), &cs(&["10.0.0.0/8"]));
        assert_eq!(
            list(&d),
            ["0.0.0.0/5", "8.0.0.0/7", "11.0.0.0/8", "12.0.0.0/6", "16.0.0.0/4", "32.0.0.0/3", "64.0.0.0/2", "128.0.0.0/1"]
        );
        assert_eq!(list(&difference(&cs(&["10.0.0.0/8"]), &cs(&["10.0.0.0/8"]))), Vec::<String>::new());
        assert_eq!(list(&difference(&cs(&["10.0.0.0/8"]), &cs(&["0.0.0.0/0"]))), Vec::<String>::new());
        // Another family or a disjoint prefix takes nothing away.
        assert_eq!(list(&difference(&cs(&["10.0.0.0/8", "::/0"]), &cs(&["11.0.0.0/8"]))), ["10.0.0.0/8", "::/0"]);
        let d = difference(&cs(&["::/0"]), &cs(&["fd00::/8"]));
        assert_eq!(d.len(), 8);
        assert!(d.iter().all(|c| !c.contains_ip("fd00::1".parse().unwrap())));
        assert!(d.iter().any(|c| c.contains_ip("fe00::1".parse().unwrap())));
    }

    #[test]
    fn difference_merges_what_is_left() {
        // Two exceptions that together are a /7: what remains of the /6 is its other half.
        let d = difference(&cs(&["8.0.0.0/6"]), &cs(&["8.0.0.0/8", "9.0.0.0/8"]));
        assert_eq!(list(&d), ["10.0.0.0/7"]);
        // Nested and sibling bases come out as one prefix.
        assert_eq!(list(&difference(&cs(&["10.0.0.0/9", "10.128.0.0/9", "10.1.0.0/16"]), &[])), ["10.0.0.0/8"]);
    }

    #[test]
    fn contains() {
        let a = Cidr::parse("10.0.0.0/8").unwrap();
        let b = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(a.contains(&b) && !b.contains(&a));
        assert!(a.contains_ip("10.255.0.1".parse().unwrap()));
        assert!(!a.contains_ip("::a00:1".parse().unwrap()));
        assert!(Cidr::ANY_V4.contains_ip("1.2.3.4".parse().unwrap()));
    }
}

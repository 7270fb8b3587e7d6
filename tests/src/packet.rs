//! Crafted frames for BPF_PROG_TEST_RUN: Ethernet with VLAN tags, IPv4 with options and
//! fragments, IPv6 with extension headers, TCP/UDP/ICMP. Checksums are left zero: XDP does not
//! check them.

use std::net::IpAddr;

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88A8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragSpec {
    /// Offset in 8-byte units.
    pub offset8: u16,
    pub more: bool,
    pub id: u32,
}

#[derive(Clone, Debug)]
pub struct Pkt {
    /// VLAN TPIDs, outermost first.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Transport header and payload.
    pub l4: Vec<u8>,
    /// Extra 32-bit words of IPv4 options (0..=10).
    pub v4_options: u8,
    pub frag: Option<FragSpec>,
    /// IPv6 extension headers (0 hop-by-hop, 43 routing, 60 destination options) before the
    /// fragment header (if any) and the transport header.
    pub v6_ext: Vec<u8>,
}

pub fn tcp_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = 0x02; // SYN
    h
}

pub fn udp_header(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut h = vec![0u8; 8 + payload];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    h
}

impl Pkt {
    fn new(src: IpAddr, dst: IpAddr, proto: u8, l4: Vec<u8>) -> Self {
        Self { vlans: vec![], src, dst, proto, l4, v4_options: 0, frag: None, v6_ext: vec![] }
    }

    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self::new(src, dst, 6, tcp_header(sport, dport))
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self::new(src, dst, 17, udp_header(sport, dport, 16))
    }

    /// ICMP (IPv4) or ICMPv6 (IPv6) message of the given type.
    pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8) -> Self {
        let proto = if dst.is_ipv6() { 58 } else { 1 };
        Self::new(src, dst, proto, vec![ty, 0, 0, 0, 0, 0, 0, 0])
    }

    /// An ICMP error of type `ty` quoting the first `keep` bytes of `quoted`'s IP packet (a
    /// router quotes its IP header and at least 8 transport bytes).
    pub fn icmp_quoting(src: IpAddr, dst: IpAddr, ty: u8, quoted: &Pkt, keep: usize) -> Self {
        let mut l4 = vec![ty, 0, 0, 0, 0, 0, 0, 0];
        let ip = &quoted.build()[14 + 4 * quoted.vlans.len()..];
        l4.extend_from_slice(&ip[..keep.min(ip.len())]);
        let proto = if dst.is_ipv6() { 58 } else { 1 };
        Self::new(src, dst, proto, l4)
    }

    /// The quoted packet's IP header and 8 transport bytes: what an ICMPv4 error carries.
    pub fn quoted_len(quoted: &Pkt) -> usize {
        let ip = if quoted.dst.is_ipv6() { 40 + quoted.v6_ext.len() * 8 } else { 20 + 4 * quoted.v4_options as usize };
        ip + 8
    }

    pub fn raw(src: IpAddr, dst: IpAddr, proto: u8, l4: Vec<u8>) -> Self {
        Self::new(src, dst, proto, l4)
    }

    /// Sets the TCP flags byte (the builder's default is a bare SYN).
    pub fn tcp_flags(mut self, flags: u8) -> Self {
        assert_eq!(self.proto, 6, "TCP flags on a non-TCP packet");
        self.l4[13] = flags;
        self
    }

    pub fn vlans(mut self, tpids: &[u16]) -> Self {
        self.vlans = tpids.to_vec();
        self
    }

    pub fn frag(mut self, f: FragSpec) -> Self {
        self.frag = Some(f);
        self
    }

    pub fn v4_options(mut self, words: u8) -> Self {
        self.v4_options = words;
        self
    }

    pub fn v6_ext(mut self, ext: &[u8]) -> Self {
        self.v6_ext = ext.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let mut ethertype = match self.dst {
            IpAddr::V4(_) => 0x0800u16,
            IpAddr::V6(_) => 0x86DD,
        };
        // Each tag carries the TPID of the next layer; build from the inside out.
        let mut tags: Vec<[u8; 4]> = vec![];
        for &tpid in self.vlans.iter().rev() {
            let vid = 100u16 + tags.len() as u16;
            let [a, b] = vid.to_be_bytes();
            let [c, d] = ethertype.to_be_bytes();
            tags.push([a, b, c, d]);
            ethertype = tpid;
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        for t in tags.iter().rev() {
            f.extend_from_slice(t);
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => f.extend(self.ipv4(s.octets(), d.octets())),
            (IpAddr::V6(s), IpAddr::V6(d)) => f.extend(self.ipv6(s.octets(), d.octets())),
            _ => panic!("mixed address families"),
        }
        f
    }

    fn payload(&self) -> &[u8] {
        // A later fragment carries no transport header: only data.
        match self.frag {
            Some(f) if f.offset8 != 0 => &self.l4[..8.min(self.l4.len())],
            _ => &self.l4,
        }
    }

    fn ipv4(&self, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let ihl = 5 + self.v4_options as usize;
        let mut h = vec![0u8; ihl * 4];
        h[0] = 0x40 | ihl as u8;
        let total = (ihl * 4 + self.payload().len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        if let Some(fr) = self.frag {
            h[4..6].copy_from_slice(&(fr.id as u16).to_be_bytes());
            let v = (fr.offset8 & 0x1fff) | if fr.more { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&v.to_be_bytes());
        }
        h[8] = 64;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        for b in &mut h[20..] {
            *b = 1; // NOP options
        }
        h.extend_from_slice(self.payload());
        h
    }

    fn ipv6(&self, src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
        let mut chain: Vec<u8> = self.v6_ext.clone();
        if self.frag.is_some() {
            chain.push(44);
        }
        let mut ext = vec![];
        for (i, &ty) in chain.iter().enumerate() {
            let next = chain.get(i + 1).copied().unwrap_or(self.proto);
            if ty == 44 {
                let fr = self.frag.expect("fragment header needs a FragSpec");
                let v = (fr.offset8 << 3) | u16::from(fr.more);
                ext.extend_from_slice(&[next, 0]);
                ext.extend_from_slice(&v.to_be_bytes());
                ext.extend_from_slice(&fr.id.to_be_bytes());
            } else {
                // 8 bytes: next header, length 0 (one 8-byte unit), PadN option.
                ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        let first = chain.first().copied().unwrap_or(self.proto);
        let payload_len = (ext.len() + self.payload().len()) as u16;
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&payload_len.to_be_bytes());
        h.push(first);
        h.push(64);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend(ext);
        h.extend_from_slice(self.payload());
        h
    }
}

//! The policy hash (`dataplane_policy_info{hash}`, state and logs): 16 hex digits of 64-bit FNV-1a
//! over a defined byte encoding of what a policy loads into the kernel, so that the same site
//! hashes the same on every machine, build and reload, and only a change to what is enforced or
//! counted changes it.
//!
//! The encoding, every integer little-endian, every section a tag then a length:
//! - `b"image"`, the word count (u64), then each word of the policy image (u64): both
//!   directions' tables and the site's settings, in the layout of `dataplane_common::image`
//!   (versioned by its `MAGIC`). It has no generation number, monitor flag or clock rate.
//! - `b"flows"` then `b"outbound"`: the flow count (u32), then for each counter slot in order its
//!   labels (id, catalog, from, to, protocol, action, description, document, table), each a
//!   length (u32) and UTF-8 bytes. No outbound direction is a count of 0.
//! - `b"conntrack"`, 4, then the connection-tracking table size (u32).

use crate::compile::tables::{FlowInfo, Tables};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a, fed in pieces.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// A section tag, then the length of what follows (in units the section defines).
    fn section(&mut self, tag: &[u8], len: u64) {
        self.bytes(tag);
        self.bytes(&len.to_le_bytes());
    }

    fn text(&mut self, s: &str) {
        self.bytes(&(s.len() as u32).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    fn flows(&mut self, tag: &[u8], flows: &[FlowInfo]) {
        self.section(tag, flows.len() as u64);
        for f in flows {
            let (protocol, action) = (f.protocol.name(), f.action.name());
            for s in [&f.id, &f.catalog, &f.from, &f.to, protocol, action, &f.description, &f.document, &f.table] {
                self.text(s);
            }
        }
    }
}

/// The hash of `tables` (see the module's doc for what it covers). Of `Enforcer::tables` it
/// covers what is loaded, stable slot numbering included; of the tables `compile_site` returns,
/// the policy alone.
pub fn policy_hash(tables: &Tables) -> String {
    let mut h = Fnv(FNV_OFFSET);
    let image = tables.image();
    h.section(b"image", image.len() as u64);
    for w in &image {
        h.bytes(&w.to_le_bytes());
    }
    h.flows(b"flows", &tables.flows);
    h.flows(b"outbound", tables.outbound_flows());
    h.section(b"conntrack", 4);
    h.bytes(&tables.conntrack_size.to_le_bytes());
    format!("{:016x}", h.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a's published test vectors: the function is the one its name says.
    #[test]
    fn fnv1a_64_vectors() {
        for (input, want) in
            [(&b""[..], 0xcbf2_9ce4_8422_2325u64), (b"a", 0xaf63_dc4c_8601_ec8c), (b"foobar", 0x8594_4171_f739_67e8)]
        {
            let mut h = Fnv(FNV_OFFSET);
            h.bytes(input);
            assert_eq!(h.0, want, "{input:?}");
        }
    }
}

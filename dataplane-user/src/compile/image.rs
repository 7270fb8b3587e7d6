//! The policy image: `DirectionTables` tables as the words the walk reads (layout and encodings in
//! `dataplane_common::image`).

use std::collections::HashMap;

use dataplane_common::image::*;
use dataplane_common::Config;

use crate::compile::tables::{DirectionTables, PortTable, PortValue, Prefixes};
use crate::policy::Cidr;

/// Words of each kind of structure in an image, for `compile`'s size report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Breakdown {
    pub header: usize,
    pub port_filters: usize,
    pub records: usize,
    pub dst_tries: usize,
    pub src_tries: usize,
    pub port_tables: usize,
}

impl Breakdown {
    pub fn total(&self) -> usize {
        self.header + self.port_filters + self.records + self.dst_tries + self.src_tries + self.port_tables
    }
}

/// The image of both directions (`outbound` None: no outbound flow, nothing is tracked).
pub fn build(config: &Config, inbound: &DirectionTables, outbound: Option<&DirectionTables>) -> Vec<u64> {
    build_with_breakdown(config, inbound, outbound).0
}

pub fn build_with_breakdown(
    config: &Config,
    inbound: &DirectionTables,
    outbound: Option<&DirectionTables>,
) -> (Vec<u64>, Breakdown) {
    let mut w = Writer { words: vec![0; IMAGE_MIN_WORDS as usize], sizes: Breakdown::default() };
    w.words[..SETTINGS_WORDS as usize].copy_from_slice(&settings(config));
    w.sizes.header = (IMAGE_MIN_WORDS - 2 * PORT_FILTER_WORDS) as usize;
    w.sizes.port_filters = 2 * PORT_FILTER_WORDS as usize;
    let dirs: Vec<(u32, &DirectionTables)> =
        [(INBOUND, Some(inbound)), (OUTBOUND, outbound)].into_iter().filter_map(|(dir, d)| d.map(|d| (dir, d))).collect();
    // What every packet reads first, so that it lies in the first page (see `PAGE_WORDS`): the
    // records and the destination tries of both directions; then the source tries; then the
    // port tables, the bulk of a large policy.
    let records: Vec<(u32, u32)> = dirs.iter().map(|&(dir, d)| w.head(dir, d)).collect();
    let tries: Vec<Vec<u64>> = dirs.iter().map(|(_, d)| w.src_tries(d)).collect();
    for (((_, d), &(classes, policies)), src) in dirs.iter().zip(&records).zip(&tries) {
        let tables = w.port_tables(d);
        for (i, c) in d.classes.iter().enumerate() {
            let at = (classes + i as u32 * DST_RECORD_WORDS) as usize;
            w.words[at] = src[c.src_v4 as usize];
            w.words[at + 1] = src[c.src_v6 as usize];
        }
        for (i, p) in d.policies.iter().enumerate() {
            let [tcp, udp] = p.map(|t| t.map_or(0, |t| tables[t as usize]));
            w.words[policies as usize + i] = policy_record(tcp, udp);
        }
    }
    (w.words, w.sizes)
}

struct Writer {
    words: Vec<u64>,
    sizes: Breakdown,
}

impl Writer {
    fn here(&self) -> u32 {
        u32::try_from(self.words.len()).expect("images stay below 2^32 words (compile limits)")
    }

    /// Appends `n` zero words; returns where they start.
    fn alloc(&mut self, n: usize) -> u32 {
        let at = self.here();
        self.words.resize(self.words.len() + n, 0);
        at
    }

    /// A direction's header, port filter, destination tries and (empty) records; returns where
    /// the class records and the policy records start.
    fn head(&mut self, dir: u32, d: &DirectionTables) -> (u32, u32) {
        for &(proto, a, b) in &d.filter {
            let base = port_filter_word(dir, proto_index(proto), 0) as usize;
            set_bits(&mut self.words[base..base + PORT_FILTER_PROTO_WORDS as usize], a as usize, b as usize);
        }
        let before = self.words.len();
        let classes = self.alloc(d.classes.len() * DST_RECORD_WORDS as usize);
        let policies = self.alloc(d.policies.len());
        self.sizes.records += self.words.len() - before;
        let before = self.words.len();
        let dst = [false, true].map(|v6| self.trie(if v6 { &d.dst_v6 } else { &d.dst_v4 }));
        self.sizes.dst_tries += self.words.len() - before;
        let h = header(dir) as usize;
        self.words[h + H_DST_V4 as usize] = dst[0];
        self.words[h + H_DST_V6 as usize] = dst[1];
        self.words[h + H_RECORDS as usize] = ((policies as u64) << 32) | classes as u64;
        self.words[h + H_PORT_FILTER as usize] = !d.filter.is_empty() as u64;
        (classes, policies)
    }

    /// The source tries' root entries.
    fn src_tries(&mut self, d: &DirectionTables) -> Vec<u64> {
        let before = self.words.len();
        let roots = d.src.iter().map(|t| self.trie(t)).collect();
        self.sizes.src_tries += self.words.len() - before;
        roots
    }

    /// The port tables' offsets: source-port tables before the tables whose values name them.
    fn port_tables(&mut self, d: &DirectionTables) -> Vec<u32> {
        let before = self.words.len();
        let mut tables = vec![0u32; d.ports.len()];
        for i in sport_first(d) {
            tables[i] = self.port_table(&d.ports[i], &tables);
        }
        self.sizes.port_tables += self.words.len() - before;
        tables
    }

    /// A port table as a static B+ tree (see `dataplane_common::image`); returns its offset.
    fn port_table(&mut self, t: &PortTable, offsets: &[u32]) -> u32 {
        let keys: Vec<u16> = t.starts[1..].iter().map(|&s| range_key(s)).collect();
        // Levels from the leaves up: each a list of node words.
        let mut levels: Vec<Vec<u64>> = Vec::new();
        if !keys.is_empty() {
            let leaves: Vec<&[u16]> = keys.chunks(RANGE_KEYS as usize).collect();
            // The smallest key under each node of the level being built.
            let mut mins: Vec<u16> = leaves.iter().map(|c| c[0]).collect();
            levels.push(leaves.iter().map(|c| pack(c)).collect());
            while mins.len() > 1 {
                let groups: Vec<&[u16]> = mins.chunks(RANGE_FANOUT as usize).collect();
                levels.push(groups.iter().map(|g| pack(&g[1..])).collect());
                mins = groups.iter().map(|g| g[0]).collect();
            }
            levels.reverse();
        }
        assert!(levels.len() <= RANGE_MAX_DEPTH as usize, "a port table of {} intervals", t.starts.len());
        let at = self.here();
        let depth = levels.len() as u32;
        let mut starts = [0u64; 2];
        let mut next = range_root(depth);
        for (l, level) in levels.iter().enumerate() {
            if l > 0 {
                starts[(l - 1) / 4] |= (next as u64) << (16 * ((l - 1) % 4));
            }
            next += level.len() as u32;
        }
        assert!(next <= u16::MAX as u32 + 1, "port table levels start within 16 bits");
        self.words.push(range_header(depth, next));
        if depth > 1 {
            self.words.extend_from_slice(&starts);
        }
        levels.iter().for_each(|l| self.words.extend_from_slice(l));
        let values: Vec<u32> = t.values.iter().map(|v| encode(*v, offsets)).collect();
        self.words.extend(values.chunks(2).map(|p| p[0] as u64 | (p.get(1).copied().unwrap_or(0) as u64) << 32));
        at
    }

    /// An address trie; returns its root entry.
    fn trie(&mut self, prefixes: &Prefixes) -> u64 {
        let mut v4: Vec<(Cidr, u32)> = prefixes.iter().filter(|(c, _)| !c.v6).copied().collect();
        let mut v6: Vec<(Cidr, u32)> = prefixes.iter().filter(|(c, _)| c.v6).copied().collect();
        assert!(v4.is_empty() || v6.is_empty(), "one family per trie");
        let v6_trie = !v6.is_empty();
        let all = if v6_trie { &mut v6 } else { &mut v4 };
        // The value of the whole address space: a /0, else 0.
        let root_value = all.iter().find(|(c, _)| c.len == 0).map_or(0, |p| p.1);
        all.retain(|(c, _)| c.len > 0);
        let shared = if all.len() > BUCKET_MAX as usize { shared_bytes(all, 0) } else { 0 };
        if shared == 0 {
            return self.subtrie(all, 0, root_value, v6_trie);
        }
        // An address that differs in the shared bytes is held by no prefix but a /0.
        let at = self.alloc(SKIP_WORDS as usize);
        let run = all[0].0.addr & crate::policy::cidr::mask(8 * shared as u8, if v6_trie { 128 } else { 32 });
        let run = if v6_trie { run } else { run << 96 };
        let next = self.subtrie(all, shared, root_value, v6_trie);
        let record = [(run >> 64) as u64, run as u64, skip_meta(shared, root_value), next];
        self.words[at as usize..(at + SKIP_WORDS) as usize].copy_from_slice(&record);
        skip_entry(at)
    }

    /// The entry for the region of the addresses whose first `depth` bytes are those of every
    /// prefix in `prefixes` (all longer than `depth` bytes), inheriting `value`.
    fn subtrie(&mut self, prefixes: &[(Cidr, u32)], depth: u32, value: u32, v6: bool) -> u64 {
        if prefixes.is_empty() {
            return value_entry(value);
        }
        if prefixes.len() <= BUCKET_MAX as usize {
            return self.bucket(prefixes, value, v6);
        }
        let node = self.alloc(TRIE_FANOUT as usize);
        // Per next byte: the value the byte's region inherits, and the longer prefixes in it.
        let mut inherited = [value; TRIE_FANOUT as usize];
        let mut below: HashMap<u32, Vec<(Cidr, u32)>> = HashMap::new();
        let mut ending: Vec<&(Cidr, u32)> = Vec::new();
        for p in prefixes {
            if p.0.len as u32 <= 8 * (depth + 1) {
                ending.push(p);
            } else {
                below.entry(byte(&p.0, depth)).or_default().push(*p);
            }
        }
        // Shorter prefixes first, so that longer ones overwrite the bytes they cover.
        ending.sort_by_key(|p| p.0.len);
        for (c, v) in ending {
            let first = byte(c, depth);
            let span = 1u32 << (8 * (depth + 1) - c.len as u32);
            (first..first + span).for_each(|b| inherited[b as usize] = *v);
        }
        for b in 0..TRIE_FANOUT {
            let sub = below.get(&b).map_or(&[][..], |v| v.as_slice());
            let e = self.subtrie(sub, depth + 1, inherited[b as usize], v6);
            self.words[(node + b) as usize] = e;
        }
        node_entry(node, depth)
    }

    fn bucket(&mut self, prefixes: &[(Cidr, u32)], value: u32, v6: bool) -> u64 {
        let mut sorted = prefixes.to_vec();
        sorted.sort_by_key(|p| std::cmp::Reverse(p.0.len));
        let at = self.here();
        self.words.push(value as u64);
        for (c, v) in &sorted {
            if v6 {
                self.words.extend([(c.addr >> 64) as u64, c.addr as u64, bucket_v6_tail(c.len, *v)]);
            } else {
                assert!(*v < 1 << BUCKET_V4_VALUE_BITS, "classes and policies stay below 2^26 (compile limits)");
                self.words.push(bucket_v4(c.addr as u32, c.len, *v));
            }
        }
        bucket_entry(at, sorted.len() as u32)
    }
}

/// Sets bits `a..=b` of a bitmap: bit `i` is bit `i % 64` of word `i / 64`, as [`port_filter_bit`] reads it.
fn set_bits(words: &mut [u64], a: usize, b: usize) {
    for (w, word) in words.iter_mut().enumerate().take(b / 64 + 1).skip(a / 64) {
        let lo = if w == a / 64 { a % 64 } else { 0 };
        let hi = if w == b / 64 { b % 64 } else { 63 };
        *word |= (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
    }
}

/// How many bytes from `depth` on every prefix has in common and is longer than: the run a
/// root skip compares at once.
fn shared_bytes(prefixes: &[(Cidr, u32)], depth: u32) -> u32 {
    let shortest = prefixes.iter().map(|p| p.0.len as u32).min().unwrap_or(0);
    let mut n = 0;
    while 8 * (depth + n + 1) < shortest {
        let b = byte(&prefixes[0].0, depth + n);
        if prefixes.iter().any(|p| byte(&p.0, depth + n) != b) {
            break;
        }
        n += 1;
    }
    n
}

/// Byte `depth` of a prefix's address.
fn byte(c: &Cidr, depth: u32) -> u32 {
    let w = if c.v6 { 128 } else { 32 };
    ((c.addr >> (w - 8 * (depth + 1))) & 0xff) as u32
}

/// Up to 4 keys in a node word, padded.
fn pack(keys: &[u16]) -> u64 {
    (0..RANGE_KEYS as usize).fold(0, |w, i| w | (keys.get(i).copied().unwrap_or(RANGE_PAD) as u64) << (16 * i))
}

fn encode(v: PortValue, offsets: &[u32]) -> u32 {
    match v {
        PortValue::NoFlow => 0,
        PortValue::Flow { slot, deny } => V_FLOW | slot | if deny { V_DENY } else { 0 },
        PortValue::Sport(t) => V_SPORT | offsets[t as usize],
    }
}

/// Table indices with every source-port table before the tables that name it.
fn sport_first(d: &DirectionTables) -> Vec<usize> {
    let named = |t: &PortTable| t.values.iter().any(|v| matches!(v, PortValue::Sport(_)));
    let (dport, sport): (Vec<usize>, Vec<usize>) = (0..d.ports.len()).partition(|&i| named(&d.ports[i]));
    sport.into_iter().chain(dport).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::parse::{IPPROTO_TCP, IPPROTO_UDP};
    use dataplane_common::walk::{self, Addr};
    use proptest::prelude::*;

    /// The longest prefix holding `addr` (integer form), by brute force.
    fn lpm(prefixes: &[(Cidr, u32)], v6: bool, addr: u128) -> u32 {
        let w = if v6 { 128 } else { 32 };
        prefixes
            .iter()
            .filter(|(c, _)| c.v6 == v6 && (c.len == 0 || (addr ^ c.addr) >> (w - c.len as u32) == 0))
            .max_by_key(|(c, _)| c.len)
            .map_or(0, |p| p.1)
    }

    fn addr_bytes(v6: bool, addr: u128) -> [u8; 16] {
        let mut b = [0; 16];
        if v6 {
            b = addr.to_be_bytes();
        } else {
            b[..4].copy_from_slice(&(addr as u32).to_be_bytes());
        }
        b
    }

    /// Prefixes that nest: a few random roots, children inside them, lengths of every kind.
    fn prefixes(v6: bool) -> impl Strategy<Value = Vec<(Cidr, u32)>> {
        let w: u8 = if v6 { 128 } else { 32 };
        prop::collection::vec((any::<u128>(), 0..=w, 1u32..1000, 0usize..4), 0..60).prop_map(move |raw| {
            let mut out: Vec<(Cidr, u32)> = Vec::new();
            for (bits, len, value, parent) in raw {
                // Half of them under an earlier prefix, so that prefixes nest and share bytes.
                let base = out.get(parent % out.len().max(1)).filter(|_| parent > 0).map(|p| p.0);
                let addr = match base {
                    Some(b) if b.len < len => {
                        b.addr | (bits & !crate::policy::cidr::mask(b.len, w) & crate::policy::cidr::mask(w, w))
                    }
                    _ => bits & crate::policy::cidr::mask(w, w),
                };
                let c = Cidr { v6, addr: addr & crate::policy::cidr::mask(len, w), len };
                if !out.iter().any(|(o, _)| *o == c) {
                    out.push((c, value));
                }
            }
            out
        })
    }

    /// Hosts that share all but their last byte: a node at every byte of the address.
    #[test]
    fn trie_down_to_the_last_byte() {
        for v6 in [false, true] {
            let w: u8 = if v6 { 128 } else { 32 };
            let base: u128 = if v6 { 0x2001_0db8_0010_0001 << 64 } else { 0x0a00_0200 };
            let mut list: Vec<(Cidr, u32)> = (0..20u128).map(|i| (Cidr { v6, addr: base | i, len: w }, i as u32 + 1)).collect();
            list.push((Cidr { v6, addr: 0, len: 0 }, 99));
            let mut wr = Writer { words: vec![0; 1], sizes: Breakdown::default() };
            let root = wr.trie(&list);
            for i in 0..25u128 {
                let got = walk::trie(wr.words.as_slice(), root, v6, &Addr::from_bytes(v6, &addr_bytes(v6, base | i)));
                assert_eq!(got, Some(if i < 20 { i as u32 + 1 } else { 99 }), "v6 {v6}, host {i}");
            }
        }
    }

    /// The ranges the compiler sets are the bits the walk reads, and no others.
    #[test]
    fn port_filter_bits_are_the_walks() {
        let mut words = vec![0u64; IMAGE_MIN_WORDS as usize];
        let ranges = [(IPPROTO_TCP, 22, 22), (IPPROTO_TCP, 60, 130), (IPPROTO_UDP, 0, 0), (IPPROTO_UDP, 65000, 65535)];
        for &(proto, a, b) in &ranges {
            let base = port_filter_word(OUTBOUND, proto_index(proto), 0) as usize;
            set_bits(&mut words[base..base + PORT_FILTER_PROTO_WORDS as usize], a, b);
        }
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            for port in 0..=u16::MAX {
                let set = words[port_filter_word(OUTBOUND, proto_index(proto), port) as usize] & port_filter_bit(port) != 0;
                let want = ranges.iter().any(|&(p, a, b)| p == proto && (a..=b).contains(&(port as usize)));
                assert_eq!(set, want, "proto {proto}, port {port}");
            }
        }
        let filter = port_filter(OUTBOUND) as usize..port_filter(OUTBOUND) as usize + PORT_FILTER_WORDS as usize;
        let ones = |w: &[u64]| w.iter().map(|w| w.count_ones()).sum::<u32>();
        assert_eq!(ones(&words), ones(&words[filter]), "a bit outside the direction's filter");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The walk over the built trie answers what a longest-prefix match over the list does,
        /// at every prefix's first and last address and just outside them.
        #[test]
        fn trie_is_longest_prefix_match((v6, list) in any::<bool>().prop_flat_map(|v6| (Just(v6), prefixes(v6)))) {
            let mut w = Writer { words: vec![0; 1], sizes: Breakdown::default() };
            let root = w.trie(&list);
            let w_bits: u32 = if v6 { 128 } else { 32 };
            let full = crate::policy::cidr::mask(w_bits as u8, w_bits as u8);
            let mut probes: Vec<u128> = vec![0, full];
            for (c, _) in &list {
                let last = c.addr | (!crate::policy::cidr::mask(c.len, w_bits as u8) & full);
                probes.extend([c.addr, last, c.addr.wrapping_sub(1) & full, last.wrapping_add(1) & full]);
            }
            for a in probes {
                let got = walk::trie(w.words.as_slice(), root, v6, &Addr::from_bytes(v6, &addr_bytes(v6, a)));
                prop_assert_eq!(got, Some(lpm(&list, v6, a)), "address {:x}", a);
            }
        }

        /// The walk over a built port table answers what the table says, at every boundary and
        /// next to it, for tables of 1 to thousands of intervals.
        #[test]
        fn port_table_lookup(cuts in prop::collection::btree_set(1u16..=u16::MAX, 0..3000), seed in any::<u32>()) {
            let starts: Vec<u16> = std::iter::once(0).chain(cuts.iter().copied()).collect();
            let values: Vec<PortValue> = (0..starts.len() as u32)
                .map(|i| if (i ^ seed) % 3 == 0 { PortValue::NoFlow } else { PortValue::Flow { slot: i, deny: i % 2 == 0 } })
                .collect();
            let t = PortTable { starts, values };
            let mut w = Writer { words: vec![0; 7], sizes: Breakdown::default() };
            let at = w.port_table(&t, &[]);
            let mut probes = vec![0u16, u16::MAX];
            for &c in &cuts {
                probes.extend([c, c - 1, c.saturating_add(1)]);
            }
            for x in probes {
                let want = encode(t.get(x), &[]);
                prop_assert_eq!(walk::range(w.words.as_slice(), at, x), Some(want), "port {}", x);
            }
        }
    }
}

//! The policy image: every table of a compiled policy, both directions, as one array of 64-bit
//! words (the `POLICY` array map). The controller writes it (`dataplane-user/src/compile/image.rs`),
//! the walk ([`crate::walk`]) reads it, in the kernel through the map and in userspace from a slice.
//!
//! Only array reads: the verifier inlines every lookup of an array map into a bounds check and
//! an address computation (a few ns), where a hash lookup costs tens of ns and an LPM-trie walk
//! tens to hundreds. The structures are chosen so that no lookup depends on how many flows,
//! roles or addresses the site has, only on the width of an address or a port.
//!
//! Layout (word offsets):
//! - `0`: [`MAGIC`] in the high half, the site's `CONFIG_*` switches in the low half;
//! - `1 ..= 2`: the site's timeouts and event budget ([`settings`]);
//! - per direction ([`INBOUND`], [`OUTBOUND`]) a header of [`HEADER_WORDS`] words at
//!   `1 + direction * HEADER_WORDS`: the destination tries' root entries (IPv4, IPv6), the offsets
//!   of the destination class records and the policy records, and whether it has flows;
//! - the two port filters, at [`port_filter`].
//!
//! Structures:
//! - **Address trie** (destination address -> destination class; source address -> policy):
//!   256-way nodes of [`TRIE_FANOUT`] entries, one per byte of the address, so at most 4 steps
//!   for IPv4 and 16 for IPv6; an entry is a value, a child node, or a bucket: a sorted list of
//!   at most [`BUCKET_MAX`] prefixes checked longest first, which ends a walk where few prefixes
//!   remain (so a host route costs one bucket, not a chain of nodes). The root may be a skip:
//!   the bytes every prefix shares, compared at once (a site's IPv6 prefixes share a /32 or a
//!   /64). Entries already hold the value inherited from shorter prefixes (controlled prefix
//!   expansion).
//! - **Destination class record** ([`DST_RECORD_WORDS`] words, class `d` at `records + (d - 1) *
//!   2`): the root entries of the source tries (IPv4, IPv6) of that class: source address ->
//!   policy, computed from the roles that have flows to this class only.
//! - **Policy record** (one word, policy `p` at `policies + p - 1`): the offsets of the port
//!   tables of TCP (low half) and UDP (high half); 0 for none.
//! - **Port table** (destination ports of one policy and protocol; source ports of one table):
//!   a static B+ tree over the first ports of its intervals, 4 keys of 16 bits per word (a node
//!   has 5 children), leaves in order, then the interval values. See [`range_header`].
//! - **Port filter**: a bitmap of [`PORT_FILTER_WORDS`] words, one bit per (protocol, destination
//!   port): set when any flow of the direction admits or forbids that port. A clear bit is
//!   `no_flow` after one read, whatever the addresses.
//!
//! Verdict values (port table values): 0 no flow; [`V_FLOW`] | slot, with [`V_DENY`] for a
//! prohibition; [`V_SPORT`] | offset of a source-port table that decides.

/// Words per element of the `POLICY` array map: the program reads the first page through one
/// pointer taken per packet (a read is then an offset and a load, about a third of an inlined
/// lookup), and the rest, for images this large, a page lookup per read. Small sites fit in one.
/// 2 MiB: within what the kernel allows one array value (KMALLOC_MAX_SIZE, 4 MiB on x86).
pub const PAGE_WORDS: usize = 1 << 18;
/// `PAGE_WORDS` as a shift: a word's page is `index >> PAGE_SHIFT`.
pub const PAGE_SHIFT: u32 = 18;

/// High half of word 0 of every image: the format, so that a program never walks an image of
/// another layout.
pub const MAGIC: u32 = 0x6470_6903; // "dpi", version 3

/// Words of the site's settings, from word 0.
pub const SETTINGS_WORDS: u32 = 3;

/// The words of a site's settings (`Config` without what belongs to the run).
pub const fn settings(c: &crate::Config) -> [u64; SETTINGS_WORDS as usize] {
    let flags = c.flags & (crate::CONFIG_DROP_UNPROTECTED | crate::CONFIG_ALLOW_ECHO);
    [
        ((MAGIC as u64) << 32) | flags as u64,
        ((c.events_per_sec as u64) << 32) | c.ct_udp as u64,
        ((c.ct_tcp_established as u64) << 32) | c.ct_tcp_transitory as u64,
    ]
}

/// A site's settings from an image's first words (None: not an image of this layout), with the
/// run's `flags` and `hz`.
pub const fn config_of(w: [u64; SETTINGS_WORDS as usize], run: &crate::RunConfig) -> Option<crate::Config> {
    if (w[0] >> 32) as u32 != MAGIC {
        return None;
    }
    Some(crate::Config {
        flags: w[0] as u32 | run.flags,
        generation: run.generation,
        ct_tcp_established: (w[2] >> 32) as u32,
        ct_tcp_transitory: w[2] as u32,
        ct_udp: w[1] as u32,
        events_per_sec: (w[1] >> 32) as u32,
        hz: run.hz,
    })
}

/// The direction of arriving packets, to protected servers (the XDP program).
pub const INBOUND: u32 = 0;
/// The direction of packets protected servers send (the tc program), whose replies are tracked.
pub const OUTBOUND: u32 = 1;

/// Header words per direction.
pub const HEADER_WORDS: u32 = 5;
/// Offset within a direction's header of the IPv4 destination trie's root entry.
pub const H_DST_V4: u32 = 0;
/// Offset of the IPv6 destination trie's root entry.
pub const H_DST_V6: u32 = 1;
/// Offset of the destination class records (low half) and of the policy records (high half).
pub const H_RECORDS: u32 = 2;
/// Whether the direction has flows (1) or none (0): its port filter is at [`port_filter`].
pub const H_PORT_FILTER: u32 = 3;
/// Reserved.
pub const H_SPARE: u32 = 4;

/// The word where direction `dir`'s header starts.
#[inline(always)]
pub const fn header(dir: u32) -> u32 {
    SETTINGS_WORDS + dir * HEADER_WORDS
}

/// Words of an image before its tables: the settings, both headers and both port filters.
pub const IMAGE_MIN_WORDS: u32 = SETTINGS_WORDS + 2 * HEADER_WORDS + 2 * PORT_FILTER_WORDS;

/// Where direction `dir`'s port filter is: at a fixed place, so that a closed port costs one
/// read of the image besides the destination's.
#[inline(always)]
pub const fn port_filter(dir: u32) -> u32 {
    SETTINGS_WORDS + 2 * HEADER_WORDS + dir * PORT_FILTER_WORDS
}

// ---- Address tries ----------------------------------------------------------------------------

/// Entries of a trie node: one per value of the next address byte.
pub const TRIE_FANOUT: u32 = 256;
/// Prefixes a bucket holds at most.
pub const BUCKET_MAX: u32 = 4;
/// Steps of a walk: one per address byte.
pub const TRIE_MAX_DEPTH: u32 = 16;

/// Entry tag (bits 62-63) of a value: the walk ends with it.
pub const TAG_VALUE: u64 = 0;
/// Entry tag of a child node: the walk goes on with the next address byte.
pub const TAG_NODE: u64 = 1;
/// Entry tag of a bucket: the walk ends in its few prefixes.
pub const TAG_BUCKET: u64 = 2;
/// Only as a trie's root: the bytes every prefix of the trie shares (path compression). Its
/// record holds them as an address (two words), then their count and the value of an address
/// that differs, then the entry that follows them.
pub const TAG_SKIP: u64 = 3;
const TAG_SHIFT: u32 = 62;
/// Words of a skip record.
pub const SKIP_WORDS: u32 = 4;

/// An entry that answers `value`.
#[inline(always)]
pub const fn value_entry(value: u32) -> u64 {
    value as u64
}

/// An entry that continues at the node at `offset`, which the address byte `depth` indexes (a
/// root skip moves the first node's depth past the shared bytes).
#[inline(always)]
pub const fn node_entry(offset: u32, depth: u32) -> u64 {
    (TAG_NODE << TAG_SHIFT) | ((depth as u64) << DEPTH_SHIFT) | offset as u64
}

const DEPTH_SHIFT: u32 = 40;

/// The address byte a node entry indexes.
#[inline(always)]
pub const fn entry_depth(e: u64) -> u32 {
    ((e >> DEPTH_SHIFT) & 15) as u32
}

/// An entry that ends at the bucket at `offset` with `count` prefixes (its first word is the
/// value when none matches).
#[inline(always)]
pub const fn bucket_entry(offset: u32, count: u32) -> u64 {
    (TAG_BUCKET << TAG_SHIFT) | ((count as u64) << 32) | offset as u64
}

/// A root that compares the address's first bytes with the skip record at `offset`.
#[inline(always)]
pub const fn skip_entry(offset: u32) -> u64 {
    (TAG_SKIP << TAG_SHIFT) | offset as u64
}

/// The second word of a skip record: how many bytes, and the value when they differ.
#[inline(always)]
pub const fn skip_meta(bytes: u32, otherwise: u32) -> u64 {
    ((bytes as u64) << 32) | otherwise as u64
}

/// The `TAG_*` of an entry.
#[inline(always)]
pub const fn entry_tag(e: u64) -> u64 {
    e >> TAG_SHIFT
}

/// The value, node offset or bucket offset of an entry.
#[inline(always)]
pub const fn entry_low(e: u64) -> u32 {
    e as u32
}

/// How many prefixes the bucket of a bucket entry holds.
#[inline(always)]
pub const fn bucket_count(e: u64) -> u32 {
    ((e >> 32) & 0xff) as u32
}

/// Words of one IPv4 bucket prefix: address, length and value packed in one.
pub const BUCKET_V4_WORDS: u32 = 1;
/// Words of one IPv6 bucket prefix: the address in two words, length and value in a third.
pub const BUCKET_V6_WORDS: u32 = 3;
/// Values a bucket can hold (IPv4 packs them in 26 bits).
pub const BUCKET_V4_VALUE_BITS: u32 = 26;

/// An IPv4 bucket prefix: address (high half), length (6 bits), value (26 bits).
#[inline(always)]
pub const fn bucket_v4(addr: u32, len: u8, value: u32) -> u64 {
    ((addr as u64) << 32) | ((len as u64) << BUCKET_V4_VALUE_BITS) | value as u64
}

/// The third word of an IPv6 bucket prefix: length (high half), value (low half).
#[inline(always)]
pub const fn bucket_v6_tail(len: u8, value: u32) -> u64 {
    ((len as u64) << 32) | value as u64
}

// ---- Records -----------------------------------------------------------------------------------

/// Words of a destination class record: source trie roots, IPv4 then IPv6.
pub const DST_RECORD_WORDS: u32 = 2;

/// A policy record: the port tables of TCP and UDP.
#[inline(always)]
pub const fn policy_record(tcp: u32, udp: u32) -> u64 {
    ((udp as u64) << 32) | tcp as u64
}

// ---- Port tables -------------------------------------------------------------------------------

/// Keys per B+ tree node word: a node is one word.
pub const RANGE_KEYS: u32 = 4;
/// Children per internal node: one more than its keys.
pub const RANGE_FANOUT: u32 = 5;
/// Levels of a port table at most: 65,536 intervals need 8.
pub const RANGE_MAX_DEPTH: u32 = 8;
/// Words before the nodes of a port table: the header; with two levels or more, two more words
/// with the start of each level below the root (16 bits each, relative to the table). A table of
/// up to 5 intervals (one leaf) is read in three words: header, leaf, value.
pub const RANGE_HEADER_WORDS: u32 = 3;

/// Where the root of a port table of `depth` levels starts, relative to the table.
#[inline(always)]
pub const fn range_root(depth: u32) -> u32 {
    if depth <= 1 {
        1
    } else {
        RANGE_HEADER_WORDS
    }
}
/// Key of a padding slot: never below a port.
pub const RANGE_PAD: u16 = u16::MAX;

/// Port table header: levels (low 4 bits), values offset relative to the table (high half).
#[inline(always)]
pub const fn range_header(depth: u32, values: u32) -> u64 {
    ((values as u64) << 32) | depth as u64
}

/// The key stored for an interval starting at `port` (>= 1): `port - 1`, so that "starts at or
/// below x" is "key < x" and the padding key 0xffff is never below any port.
#[inline(always)]
pub const fn range_key(first_port: u16) -> u16 {
    first_port - 1
}

/// How many of the 4 keys in `w` are below `x`, without a branch per key: each key sits in a
/// 32-bit container with a guard bit above it, so one subtraction compares all four at once.
#[inline(always)]
pub const fn keys_below(w: u64, x: u16) -> u32 {
    const LANES: u64 = 0x0000_ffff_0000_ffff;
    const GUARD: u64 = 0x0001_0000_0001_0000;
    const ONE: u64 = 0x0000_0001_0000_0001;
    let xs = (x as u64) * ONE;
    let even = w & LANES;
    let odd = (w >> 16) & LANES;
    // Per container: 0x10000 + x - key - 1 >= 0x10000 exactly when key < x.
    let e = ((xs | GUARD) - even - ONE) & GUARD;
    let o = ((xs | GUARD) - odd - ONE) & GUARD;
    ((e >> 16) + (e >> 48) + (o >> 16) + (o >> 48)) as u32 & 7
}

/// Bitmap words of one protocol in a port filter: one bit per destination port.
pub const PORT_FILTER_PROTO_WORDS: u32 = 65536 / 64;
/// Bitmap words of a port filter: 65,536 TCP then 65,536 UDP destination ports.
pub const PORT_FILTER_WORDS: u32 = 2 * PORT_FILTER_PROTO_WORDS;

/// The image word that holds the port filter bit of (`proto`, `dport`) in direction `dir`
/// (`proto` a [`proto_index`]); the bit in it is [`port_filter_bit`].
#[inline(always)]
pub const fn port_filter_word(dir: u32, proto: u32, dport: u16) -> u32 {
    port_filter(dir) + proto * PORT_FILTER_PROTO_WORDS + (dport as u32 >> 6)
}

/// The bit of `dport` in its port filter word.
#[inline(always)]
pub const fn port_filter_bit(dport: u16) -> u64 {
    1 << (dport & 63)
}

/// Index of a protocol in port filters and policy records: TCP 0, UDP 1.
#[inline(always)]
pub const fn proto_index(proto: u8) -> u32 {
    (proto == crate::parse::IPPROTO_UDP) as u32
}

// ---- Verdict values ---------------------------------------------------------------------------

/// A flow matches: the low bits are its counter slot.
pub const V_FLOW: u32 = 1 << 29;
/// The matching flow is a documented prohibition.
pub const V_DENY: u32 = 1 << 31;
/// The source port decides: the low bits are the offset of a source-port table.
pub const V_SPORT: u32 = 1 << 30;
/// Slot or table offset of a verdict value.
pub const V_INDEX: u32 = V_FLOW - 1;

//! `dataplane export`: the site's inbound policy in another firewall's language, for a host
//! without XDP or to compare with (tests/tests/nft_differential.rs). One format: [`nft`].

pub mod nft;

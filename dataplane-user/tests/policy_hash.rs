//! The policy hash is a function of what a site loads, over a defined encoding
//! (`dataplane::compile::hash`): a fixed site has a fixed hash, on every machine and build.

use std::path::{Path, PathBuf};

use dataplane::{
    compile::{compile, hash::policy_hash, tables::Tables},
    policy::load_site_from,
};
use dataplane_common::CONFIG_MONITOR;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/outbound")
}

/// The outbound test site, or `site_text` in its place (written to a file named after `tag`).
fn compiled(site_text: Option<(&str, usize)>) -> Tables {
    let dir = data();
    let site = match site_text {
        None => dir.join("sites/outbound.yaml"),
        Some((text, tag)) => {
            let path = std::env::temp_dir().join(format!("dataplane-hash-{}-{tag}.yaml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            path
        }
    };
    let policy = load_site_from(&site, &dir.join("catalog")).expect("the outbound test site loads");
    compile(&policy).expect("the outbound test site compiles")
}

/// The value for tests/data/outbound: it changes only when what that site loads changes (the
/// image layout, the compiler's tables or slot order, the flows' labels), and then on purpose.
const OUTBOUND_SITE_HASH: &str = "6cb7a3b96a66aa75";

#[test]
fn a_fixed_site_has_a_fixed_hash() {
    let t = compiled(None);
    assert!(t.outbound.is_some(), "the site has outbound flows: both directions are hashed");
    assert_eq!(policy_hash(&t), OUTBOUND_SITE_HASH);
}

#[test]
fn the_hash_follows_what_is_enforced_not_the_run() {
    let t = compiled(None);
    let h = policy_hash(&t);
    assert_eq!(h.len(), 16);
    assert!(h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{h}");
    // Generation, monitor mode and clock rate belong to the run.
    let mut run = t.clone();
    run.config.generation = 7;
    run.config.flags |= CONFIG_MONITOR;
    run.config.hz = 1000;
    assert_eq!(policy_hash(&run), h);
    // An address, a timeout, a table size, a flow's label: each changes it.
    let text = std::fs::read_to_string(data().join("sites/outbound.yaml")).unwrap();
    for (i, (from, to)) in [
        ("192.0.2.10", "192.0.2.11"),
        ("conntrack-udp: 30", "conntrack-udp: 31"),
        ("conntrack-size: 2048", "conntrack-size: 4096"),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(text.contains(from), "{from}");
        assert_ne!(policy_hash(&compiled(Some((&text.replace(from, to), i)))), h, "{from} -> {to}");
    }
    let mut labels = t.clone();
    labels.flows[0].description.push('!');
    assert_ne!(policy_hash(&labels), h);
    let mut outbound = t.clone();
    outbound.outbound.as_mut().unwrap().flows.pop();
    assert_ne!(policy_hash(&outbound), h);
}

//! Shared helpers: the test catalogs and site under `tests/data`, and scratch directories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use dataplane::policy::{load_site_from, Policy, PolicyError};

pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub fn test_policy() -> Policy {
    load_site_from(&data().join("sites/test.yaml"), &data().join("catalog")).expect("test site loads")
}

/// A fresh directory with `catalog/` (a copy of the test catalogs) and `sites/`.
pub fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("dataplane-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("catalog")).expect("scratch dir");
    std::fs::create_dir_all(dir.join("sites")).expect("scratch dir");
    for c in ["alpha", "beta"] {
        std::fs::copy(data().join(format!("catalog/{c}.yaml")), dir.join(format!("catalog/{c}.yaml"))).expect("copy catalog");
    }
    dir
}

/// Replaces the first `from` with `to` in a scratch catalog.
pub fn edit(dir: &Path, catalog: &str, from: &str, to: &str) {
    let p = dir.join(format!("catalog/{catalog}.yaml"));
    let text = std::fs::read_to_string(&p).expect("read catalog");
    assert!(text.contains(from), "{from:?} not in {catalog}");
    std::fs::write(&p, text.replacen(from, to, 1)).expect("write catalog");
}

/// Writes `text` as `sites/s.yaml` and loads it; returns the error.
pub fn site_error(dir: &Path, text: &str) -> PolicyError {
    let site = dir.join("sites/s.yaml");
    std::fs::write(&site, text).expect("write site");
    match load_site_from(&site, &dir.join("catalog")) {
        Ok(_) => panic!("site loaded but should fail:\n{text}"),
        Err(e) => e,
    }
}

/// A valid site over the test catalogs.
pub const GOOD_SITE: &str = "name: s\ncatalogs: [alpha, beta]\nroles:\n  server: 10.0.0.1\nprotect: [server]\n";

/// The outbound test site (`tests/data/outbound`): a protected server reaching DNS, LDAP and a
/// mail relay.
pub fn outbound_policy() -> Policy {
    let d = data().join("outbound");
    load_site_from(&d.join("sites/outbound.yaml"), &d.join("catalog")).expect("outbound site loads")
}

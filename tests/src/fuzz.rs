//! What the fuzz targets (`fuzz/`) check, shared with the test that replays their seeds and
//! the inputs they once crashed on (`tests/fuzz_regressions.rs`), so that stable CI keeps every
//! finding fixed.
//!
//! - `site` and `catalog`: any text is either refused with an error that names the file, or
//!   loads and compiles; never a panic.
//! - `packet`: the userspace twin of the kernel's parser agrees with the real XDP program on any
//!   frame (BPF_PROG_TEST_RUN; needs root).

use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use dataplane::classify::Classifier;
use dataplane::compile::compile;
use dataplane::policy::{
    catalog::{catalog_files, load_catalogs, parse_catalog, Catalog},
    site::parse_site,
    Policy, PolicyError,
};

use crate::{
    simple_tables,
    twin::{Twin, MAX_TRACKED_DATAGRAMS},
    Harness,
};

/// The name fuzzed texts go by in errors.
const SITE_NAME: &str = "fuzzed-site.yaml";
const CATALOG_NAME: &str = "fuzzed-catalog.yaml";

/// Catalog files (name, path) and the catalogs loaded from them.
type Catalogs = (Vec<(String, PathBuf)>, Vec<Catalog>);

/// The repository's catalogs, loaded once.
static CATALOGS: LazyLock<Catalogs> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog");
    let available = catalog_files(&dir).expect("listing the catalogs");
    let paths: Vec<PathBuf> = available.iter().map(|(_, p)| p.clone()).collect();
    (available, load_catalogs(&paths).expect("loading the catalogs"))
});

/// A site text against the repository's catalogs.
pub fn site(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (available, all) = &*CATALOGS;
    let load = |paths: &[PathBuf]| -> Result<Vec<Catalog>, PolicyError> {
        Ok(paths.iter().filter_map(|p| all.iter().find(|c| &c.path == p).cloned()).collect())
    };
    let parsed = parse_site(Path::new(SITE_NAME), text, available, load);
    compile_or_explain(parsed.and_then(|(site, catalogs)| Policy::resolve(&site, catalogs)), SITE_NAME);
}

/// A catalog text, bound by a site made for it: every role gets addresses, every bindable role is
/// protected.
pub fn catalog(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new(CATALOG_NAME);
    let c = match parse_catalog(path, text, &Default::default()) {
        Ok(c) => c,
        Err(e) => return named(&e.into(), CATALOG_NAME),
    };
    let site = site_for(&c);
    let available = vec![(c.name.clone(), path.to_owned())];
    let parsed = parse_site(Path::new(SITE_NAME), &site, &available, |_| Ok(vec![c.clone()]));
    compile_or_explain(parsed.and_then(|(site, catalogs)| Policy::resolve(&site, catalogs)), "fuzzed-");
}

fn site_for(c: &Catalog) -> String {
    use serde_yaml::{Mapping, Value};
    let mut roles = Mapping::new();
    let mut protect = vec![];
    for (i, r) in c.roles.iter().enumerate() {
        let cidrs = vec![Value::from(format!("10.{}.0.0/16", i % 256)), Value::from(format!("fd00:{i:x}::/32"))];
        roles.insert(Value::from(r.id.clone()), Value::Sequence(cidrs));
        protect.push(Value::from(r.id.clone()));
    }
    let mut site = Mapping::new();
    site.insert("name".into(), "fuzz".into());
    site.insert("catalogs".into(), Value::Sequence(vec![c.name.clone().into()]));
    site.insert("roles".into(), Value::Mapping(roles));
    site.insert("protect".into(), Value::Sequence(protect));
    serde_yaml::to_string(&site).expect("a site made of strings serialises")
}

/// A policy compiles (and its tables build a classifier), or its error names the input.
fn compile_or_explain(p: Result<Policy, PolicyError>, name: &str) {
    match p.map_err(anyhow::Error::from).and_then(|p| Ok(compile(&p)?)) {
        Ok(t) => drop(Classifier::new(&t)),
        Err(e) => named(&e, name),
    }
}

fn named(e: &anyhow::Error, name: &str) {
    let msg = format!("{e:#}");
    assert!(msg.contains(name), "an error that does not name its file: {msg}");
}

/// The kernel program and its twin, loaded once per process and renewed before the twin's
/// fragment model could outgrow the kernel's LRU.
static KERNEL: Mutex<Option<(Harness, Twin)>> = Mutex::new(None);

/// A raw frame through the real program and through the twin: the same action and counters.
pub fn packet(frame: &[u8]) {
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
    if frame.len() < 14 {
        return;
    }
    let mut k = KERNEL.lock().unwrap();
    if k.as_ref().is_none_or(|(_, twin)| twin.tracked() > MAX_TRACKED_DATAGRAMS) {
        let t = simple_tables();
        *k = Some((Harness::new(&t).expect("loading the XDP program (as root)"), Twin::new(&t)));
    }
    let (h, twin) = k.as_mut().unwrap();
    let got = h.observe(frame).expect("BPF_PROG_TEST_RUN");
    let want = twin.judge(frame);
    assert_eq!(got, want, "kernel (left) and twin (right) disagree on {frame:02x?}");
}

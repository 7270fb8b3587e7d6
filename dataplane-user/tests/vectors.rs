//! Runs every `policies/vectors/*.yaml` through load_site + compile + classify and reports every
//! mismatch with its `why`. A vector file names its `site:` and may override that site's
//! `options:` (to check one reading under each of its values). Passes vacuously only when the
//! directory holds no vector file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dataplane::classify::request::Request;
use dataplane::classify::{Classifier, Outcome};
use dataplane::compile::compile;
use dataplane::compile::tables::Tables;
use dataplane::policy::options::OptValue;
use dataplane::policy::site::load_site_file;
use dataplane::policy::sources::SiteFiles;
use dataplane::policy::{load_site, Policy};

fn vector_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/vectors");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "yaml")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Line numbers of the list items under `cases:` (vector files write one case per item).
fn case_lines(text: &str) -> Vec<usize> {
    let mut in_cases = false;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.starts_with("cases:") {
            in_cases = true;
        } else if in_cases && l.trim_start().starts_with("- ") {
            out.push(i + 1);
        } else if in_cases && !l.starts_with(' ') && !l.starts_with('#') && !l.trim().is_empty() {
            in_cases = false;
        }
    }
    out
}

/// Loads `site` with its `options:` overridden (or added) by `options` (a map of option name to
/// value, checked against the catalogs' declarations), so that one site can be checked under every
/// value of a reading.
fn load_with_options(site: &Path, options: &BTreeMap<String, OptValue>) -> Result<Policy, String> {
    if options.is_empty() {
        return load_site(site).map_err(|e| format!("{e:#}"));
    }
    let dir = SiteFiles::new(site, None).catalog_dir;
    let (mut site, catalogs) = load_site_file(site, &dir).map_err(|e| format!("{e:#}"))?;
    for (name, value) in options {
        let decls: Vec<_> = catalogs.iter().flat_map(|c| &c.options).filter(|(n, _)| n == name).collect();
        if decls.is_empty() {
            return Err(format!("`options:`: no selected catalog declares `{name}`"));
        }
        let mut canonical = value.clone();
        for (_, d) in decls {
            canonical = d.kind.check(value).map_err(|e| format!("`options:` {name}: {e}"))?;
        }
        site.options.0.retain(|(n, _)| n != name);
        site.options.0.push((name.clone(), canonical));
    }
    Policy::resolve(&site, catalogs).map_err(|e| format!("{e:#}"))
}

/// An `options:` map of a vector file or case (none: empty).
fn options_of(v: &serde_yaml::Value) -> Result<BTreeMap<String, OptValue>, String> {
    match v.get("options") {
        None => Ok(BTreeMap::new()),
        Some(o) => serde_yaml::from_value(o.clone()).map_err(|e| format!("`options:`: {e}")),
    }
}

/// Checks one vector file; returns (cases, mismatch descriptions). The file's `options:` apply to
/// every case; a case's own `options:` override them for that case.
fn check_file(path: &Path) -> (usize, Vec<String>) {
    let fail = |msg: String| (0, vec![format!("{}: {msg}", path.display())]);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let doc: serde_yaml::Value = match serde_yaml::from_str(&text) {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    let Some(site) = doc.get("site").and_then(|s| s.as_str()) else {
        return fail("no `site:`".into());
    };
    let site = path.parent().unwrap_or(Path::new(".")).join(site);
    let file_options = match options_of(&doc) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let cases = doc.get("cases").and_then(|c| c.as_sequence()).cloned().unwrap_or_default();
    // Every distinct set of options is compiled once, before the cases are classified.
    let mut sets = vec![file_options.clone()];
    for case in &cases {
        let mut o = file_options.clone();
        o.extend(options_of(case).unwrap_or_default());
        sets.push(o);
    }
    let mut compiled: BTreeMap<BTreeMap<String, OptValue>, Result<Tables, String>> = BTreeMap::new();
    for o in sets {
        compiled
            .entry(o)
            .or_insert_with_key(|o| load_with_options(&site, o).and_then(|p| compile(&p).map_err(|e| format!("{e:#}"))));
    }
    if let Some(Err(e)) = compiled.get(&file_options) {
        return fail(e.clone());
    }
    let classifiers: BTreeMap<_, _> =
        compiled.iter().filter_map(|(o, t)| t.as_ref().ok().map(|t| (o.clone(), (Classifier::new(t), t)))).collect();
    let lines = case_lines(&text);
    let mut bad = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let at = format!("{}:{}", path.display(), lines.get(i).copied().unwrap_or(0));
        let s = |k: &str| case.get(k).map(|v| serde_yaml::to_string(v).unwrap_or_default().trim().to_owned());
        let why = s("why").unwrap_or_default();
        let mut options = file_options.clone();
        let found = options_of(case).and_then(|o| {
            options.extend(o);
            match (classifiers.get(&options), compiled.get(&options)) {
                (Some(c), _) => Ok(c),
                (None, Some(Err(e))) => Err(e.clone()),
                (None, _) => Err("options not compiled".into()),
            }
        });
        let (cls, tables) = match found {
            Ok(c) => c,
            Err(e) => {
                bad.push(format!("{at}: {e} (why: {why})"));
                continue;
            }
        };
        let mut probe = case.clone();
        if let Some(m) = probe.as_mapping_mut() {
            m.remove("options");
        }
        let json = serde_json::to_string(&probe).unwrap_or_default();
        let packet = match Request::parse(&json).and_then(|r| r.probe()) {
            Ok(p) => p,
            Err(e) => {
                bad.push(format!("{at}: bad case: {e:#} (why: {why})"));
                continue;
            }
        };
        let d = cls.classify(&packet);
        let got_verdict = if d.allows() { "allow" } else { "deny" };
        let got_flow = d.flow().map(|f| tables.flows[f].id.clone());
        let want_verdict = s("verdict").unwrap_or_default();
        let want_flow = s("flow");
        let want_reason = s("reason");
        let ok = want_verdict == got_verdict
            && (want_flow.is_none() || want_flow == got_flow)
            && (want_reason.is_none() || want_reason.as_deref() == Some(d.reason.name()));
        if !ok {
            bad.push(format!(
                "{at}: {} {} -> {} sport {} dport {}: want {want_verdict}{}{}, got {got_verdict} flow {} reason {} (why: {why})",
                s("proto").unwrap_or_default(),
                s("src").unwrap_or_default(),
                s("dst").unwrap_or_default(),
                s("sport").unwrap_or_default(),
                s("dport").unwrap_or_default(),
                want_flow.map(|f| format!(" flow {f}")).unwrap_or_default(),
                want_reason.map(|r| format!(" reason {r}")).unwrap_or_default(),
                got_flow.unwrap_or_else(|| "-".into()),
                d.reason.name(),
            ));
        }
    }
    (cases.len(), bad)
}

#[test]
fn vectors() {
    let files = vector_files();
    if files.is_empty() {
        eprintln!("no vector files: nothing to check");
        return;
    }
    let (mut total, mut bad) = (0, Vec::new());
    for f in &files {
        let (n, b) = check_file(f);
        eprintln!("{}: {n} cases, {} mismatches", f.display(), b.len());
        total += n;
        bad.extend(b);
    }
    assert!(bad.is_empty(), "{} of {total} vector cases fail:\n{}", bad.len(), bad.join("\n"));
}

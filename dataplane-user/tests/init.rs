//! `dataplane init`: the scaffold it writes refuses to compile, naming every role still to bind
//! at its file:line:column, and once the placeholders are replaced by addresses it compiles to
//! exactly what the same site written by hand gives (the policy hash covers every table, the
//! config and the flows' labels).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use dataplane::compile::{compile, hash::policy_hash};
use dataplane::policy::options::DATAPLANE_OPTIONS;
use dataplane::policy::scaffold::{scaffold, ScaffoldError, PLACEHOLDER};
use dataplane::policy::{load_all_catalogs, load_site_from, Catalog, ErrorKind};

fn catalog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog")
}

fn catalogs() -> Vec<Catalog> {
    load_all_catalogs(&catalog_dir()).expect("the catalogs load")
}

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dataplane-init-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The addresses the `k`-th bound role gets.
fn addresses(k: usize) -> String {
    format!("[10.{}.{}.0/24, \"fd00:{k:x}::/64\"]", k / 256, k % 256)
}

/// The roles `text` binds to the placeholder, in file order.
fn placeholder_roles(text: &str) -> Vec<String> {
    let marker = format!(": [{PLACEHOLDER}]");
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| Some(l.strip_suffix(&marker)?.trim().to_owned()))
        .collect()
}

/// `text` with every placeholder replaced by [`addresses`], and the same bindings as a
/// hand-written site's `roles:` lines.
fn fill(text: &str) -> (String, String) {
    let roles = placeholder_roles(text);
    let mut filled = text.to_owned();
    let mut by_hand = String::new();
    for (k, role) in roles.iter().enumerate() {
        let line = format!("  {role}: {}", addresses(k));
        filled = filled.replacen(&format!("  {role}: [{PLACEHOLDER}]"), &line, 1);
        by_hand.push_str(&line);
        by_hand.push('\n');
    }
    (filled, by_hand)
}

/// Init, compile (refused), fill, compile, and compare with the hand-written site.
fn round_trip(tag: &str, selected: &[&str], protect: &[&str]) {
    let all = catalogs();
    let selected: Vec<String> = selected.iter().map(|s| s.to_string()).collect();
    let protect: Vec<String> = protect.iter().map(|s| s.to_string()).collect();
    let text = scaffold(tag, &all, &selected, &protect).unwrap();
    let dir = temp(tag);
    let roles = placeholder_roles(&text);
    assert!(roles.len() > protect.len(), "{tag}: the peers have placeholders too:\n{text}");
    assert_eq!(&roles[..protect.len()], &protect[..], "{tag}: the protected roles come first");

    // Untouched: one error line per role to bind, each with its position.
    let path = dir.join("init.yaml");
    std::fs::write(&path, &text).unwrap();
    let e = load_site_from(&path, &catalog_dir()).expect_err("an untouched scaffold must not compile");
    assert_eq!(e.kind, ErrorKind::Placeholder, "{e}");
    let printed = e.to_string();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), roles.len(), "{tag}: one line per role to bind:\n{printed}");
    let file_lines: Vec<&str> = text.lines().collect();
    for (line, role) in lines.iter().zip(&roles) {
        let rest = line.strip_prefix(&format!("{}:", path.display())).unwrap_or_else(|| panic!("{line}"));
        let mut parts = rest.splitn(3, ':');
        let (l, c): (usize, usize) = (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap());
        assert!(parts.next().unwrap().contains(&format!("role `{role}` is still to bind")), "{line}");
        // The position is the placeholder's own.
        assert!(file_lines[l - 1][c - 1..].starts_with(PLACEHOLDER), "{line} -> {:?}", file_lines[l - 1]);
        assert!(file_lines[l - 1].trim_start().starts_with(&format!("{role}:")), "{line}");
    }

    // Filled in: the same tables as the site written by hand, without comments or options.
    let (filled, by_hand) = fill(&text);
    std::fs::write(&path, &filled).unwrap();
    let loaded = load_site_from(&path, &catalog_dir()).unwrap_or_else(|e| panic!("{tag}: the filled scaffold: {e}"));
    let hand = format!(
        "name: {tag}\ncatalogs: [{}]\nprotect: [{}]\nroles:\n{by_hand}",
        selected.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "),
        protect.join(", ")
    );
    let hand_path = dir.join("hand.yaml");
    std::fs::write(&hand_path, &hand).unwrap();
    let by_hand = load_site_from(&hand_path, &catalog_dir()).unwrap_or_else(|e| panic!("{tag}: the site by hand: {e}"));
    let (a, b) = (compile(&loaded).unwrap(), compile(&by_hand).unwrap());
    assert!(!loaded.flows.is_empty(), "{tag}: the site enforces flows");
    assert_eq!(policy_hash(&a), policy_hash(&b), "{tag}: the filled scaffold and the site by hand differ\n{filled}\n---\n{hand}");
    assert_eq!(a.image(), b.image(), "{tag}");

    // Every option of the catalogs and of the dataplane is written.
    let (site, _) = dataplane::policy::site::load_site_file(&path, &catalog_dir()).unwrap();
    let written: BTreeSet<&str> = site.options.0.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected: BTreeSet<&str> = DATAPLANE_OPTIONS.into_iter().collect();
    for c in all.iter().filter(|c| selected.contains(&c.name)) {
        expected.extend(c.options.iter().map(|(n, _)| n.as_str()));
    }
    assert_eq!(written, expected, "{tag}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_catalog_round_trips() {
    for c in catalogs() {
        let protect = c.roles.iter().find(|r| !r.any && c.flows.iter().any(|f| f.to == r.id)).unwrap();
        round_trip(&c.name, &[&c.name], &[&protect.id]);
    }
}

#[test]
fn several_catalogs_and_protected_roles_round_trip() {
    round_trip("two", &["vcs-x8.2", "meeting-server-expressway"], &["vcs-control", "vcs-expressway"]);
}

#[test]
fn names_that_are_not_in_the_catalogs_are_refused() {
    let all = catalogs();
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let e = scaffold("x", &all, &s(&["vcs-x9"]), &s(&["vcs-expressway"])).unwrap_err();
    assert!(matches!(&e, ScaffoldError::UnknownCatalog { name, known } if name == "vcs-x9" && known.contains("vcs-x8.2")), "{e}");
    let e = scaffold("x", &all, &s(&["vcs-x8.2"]), &s(&["expressway"])).unwrap_err();
    assert!(matches!(&e, ScaffoldError::UnknownRole { role, known } if role == "expressway" && known.contains("vcs-expressway")));
    let e = scaffold("x", &all, &s(&["vcs-x8.2", "vcs-x8.2"]), &s(&["vcs-expressway"])).unwrap_err();
    assert_eq!(e, ScaffoldError::DuplicateCatalog("vcs-x8.2".into()));
    let e = scaffold("x", &all, &s(&["vcs-x8.2"]), &s(&["vcs-control", "vcs-control"])).unwrap_err();
    assert_eq!(e, ScaffoldError::DuplicateRole("vcs-control".into()));
}

fn dataplane(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(args)
        .arg("--catalog-dir")
        .arg(catalog_dir())
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// The command: standard output without --out, --out never overwrites without --force, and
/// `compile` of the untouched file fails naming the roles.
#[test]
fn the_command_writes_a_new_file_or_standard_output() {
    let dir = temp("cli");
    let args = ["init", "--catalog", "unity", "--protect", "unity-server"];
    let out = dataplane(&args, &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected = scaffold("site", &catalogs(), &["unity".into()], &["unity-server".into()]).unwrap();
    assert_eq!(stdout, expected);

    let with_out = |extra: &[&str]| dataplane(&[&args[..], &["--out", "unity-site.yaml"], extra].concat(), &dir);
    assert!(with_out(&[]).status.success());
    let file = dir.join("unity-site.yaml");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("name: unity-site\n"), "the file's stem names the site");
    std::fs::write(&file, "mine").unwrap();
    let again = with_out(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine", "an existing file is left alone");
    assert!(with_out(&["--force"]).status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);

    let compiled = Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(["compile", "--site", "unity-site.yaml", "--catalog-dir"])
        .arg(catalog_dir())
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(compiled.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&compiled.stderr);
    for role in placeholder_roles(&written) {
        assert!(stderr.contains(&format!("roles.{role}[0]: role `{role}` is still to bind")), "{role}: {stderr}");
    }
    assert!(stderr.starts_with("error: unity-site.yaml:"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

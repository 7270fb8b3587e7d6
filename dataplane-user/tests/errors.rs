//! Bad input: every error names `file:line:column`, the field and what is wrong; nothing panics.

mod common;

use common::{edit, scratch, site_error, GOOD_SITE};

/// Asserts that `err` starts with `FILE:LINE:COL:` (FILE ending in `file`) and mentions `parts`.
#[track_caller]
fn expect(err: &str, file: &str, line: usize, col: usize, parts: &[&str]) {
    let at = format!("{file}:{line}:{col}: ");
    let pos = err.find(&at).unwrap_or_else(|| panic!("expected position {at:?} in: {err}"));
    assert!(err[..pos].chars().all(|c| c != ' '), "the message should start with the position: {err}");
    for p in parts {
        assert!(err.contains(p), "expected {p:?} in: {err}");
    }
}

fn catalog_error(catalog: &str, from: &str, to: &str) -> String {
    let dir = scratch();
    edit(&dir, catalog, from, to);
    site_error(&dir, GOOD_SITE)
}

#[test]
fn unknown_role_in_flow() {
    let e = catalog_error("alpha", "from: lan\n", "from: lann\n");
    expect(&e, "catalog/alpha.yaml", 39, 11, &["flows[1].from", "unknown role `lann`", "admin-pc, internet"]);
}

#[test]
fn unknown_role_in_site() {
    let e =
        site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: 10.0.0.1\n  sever: 10.0.0.2\nprotect: [server]\n");
    expect(&e, "sites/s.yaml", 5, 3, &["roles", "unknown role `sever`"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: 10.0.0.1\nprotect: [server, nobody]\n");
    expect(&e, "sites/s.yaml", 5, 19, &["protect[1]", "unknown role `nobody`"]);
}

#[test]
fn unknown_catalog() {
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha, gamma]\nprotect: [server]\n");
    expect(&e, "sites/s.yaml", 2, 19, &["catalogs[1]", "unknown catalog `gamma`", "alpha, beta"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha, alpha]\nprotect: [server]\n");
    expect(&e, "sites/s.yaml", 2, 19, &["catalogs[1]", "listed twice"]);
}

#[test]
fn unknown_and_bad_options() {
    let base = "name: s\ncatalogs: [alpha, beta]\nroles:\n  server: 10.0.0.1\nprotect: [server]\noptions:\n";
    let e = site_error(&scratch(), &format!("{base}  zone: 1\n"));
    expect(&e, "sites/s.yaml", 7, 3, &["options", "unknown option `zone`", "zones"]);
    let e = site_error(&scratch(), &format!("{base}  zones: 11\n"));
    expect(&e, "sites/s.yaml", 7, 10, &["options.zones", "`11`", "1..10"]);
    // Valid in beta but not in alpha: names the catalog.
    let e = site_error(&scratch(), &format!("{base}  release: legacy\n"));
    expect(&e, "sites/s.yaml", 7, 12, &["options.release", "`legacy`", "catalog `alpha`"]);
    let e = site_error(&scratch(), &format!("{base}  unprotected: maybe\n"));
    expect(&e, "sites/s.yaml", 7, 16, &["options.unprotected", "pass, drop"]);
    let e = site_error(&scratch(), &format!("{base}  turn: \"yes\"\n"));
    expect(&e, "sites/s.yaml", 7, 9, &["options.turn", "true or false"]);
}

#[test]
fn bad_cidr() {
    let bad = [("10.0.0.1/8", "host bits"), ("10.0.0.0/33", "0-32"), ("10.0.0", "not an IPv4"), ("fd00::/129", "0-128")];
    for (cidr, why) in bad {
        let e = site_error(
            &scratch(),
            &format!("name: s\ncatalogs: [alpha]\nroles:\n  server: [10.0.0.1, \"{cidr}\"]\nprotect: [server]\n"),
        );
        expect(&e, "sites/s.yaml", 4, 22, &["roles.server[1]", why]);
    }
}

#[test]
fn bad_ports() {
    let e = catalog_error("alpha", "dport: 53\n", "dport: 0\n");
    expect(&e, "catalog/alpha.yaml", 42, 12, &["flows[1].dport", "port 0"]);
    let e = catalog_error("alpha", "dport: 53\n", "dport: 65536\n");
    expect(&e, "catalog/alpha.yaml", 42, 12, &["flows[1].dport", "above 65535"]);
    let e = catalog_error("alpha", "\"5061\"", "\"1-70000\"");
    expect(&e, "catalog/alpha.yaml", 49, 19, &["flows[2].dport[1]", "70000 is above 65535"]);
    let e = catalog_error("alpha", "dport: 20-25", "dport: 25-20");
    expect(&e, "catalog/alpha.yaml", 94, 12, &["flows[8].dport", "25-20 is reversed"]);
    let e = catalog_error("alpha", "dport: 3478", "dport: any");
    expect(&e, "catalog/alpha.yaml", 70, 12, &["flows[5].dport", "only allowed for sport"]);
    let e = catalog_error("alpha", "sport: 5060", "sport: 0");
    expect(&e, "catalog/alpha.yaml", 101, 12, &["flows[9].sport", "port 0"]);
}

#[test]
fn duplicate_flow_ids() {
    let e = catalog_error("alpha", "id: alpha-lan-dns", "id: alpha-admin-https");
    expect(&e, "catalog/alpha.yaml", 37, 9, &["flows[1].id", "`alpha-admin-https` is used twice"]);
    // Across catalogs: reported in the later one.
    let e = catalog_error("beta", "id: beta-db", "id: alpha-zones");
    expect(&e, "catalog/beta.yaml", 21, 9, &["flows[1].id", "already used by catalog `alpha`"]);
}

#[test]
fn unknown_keys() {
    let e = catalog_error("alpha", "    table: \"Services\"", "    tabel: \"Services\"");
    expect(&e, "catalog/alpha.yaml", 43, 5, &["flows[1]", "unknown field `tabel`"]);
    let e = catalog_error("alpha", "title:", "titel:");
    expect(&e, "catalog/alpha.yaml", 4, 1, &["unknown field `titel`"]);
    let e = catalog_error("alpha", "dport: { base: 7001", "dport: { bass: 7001");
    expect(&e, "catalog/alpha.yaml", 63, 14, &["flows[4].dport", "unknown key `bass`"]);
    let e = site_error(&scratch(), &format!("{GOOD_SITE}foo: 1\n"));
    expect(&e, "sites/s.yaml", 6, 1, &["unknown field `foo`"]);
}

#[test]
fn empty_sites() {
    let e = site_error(&scratch(), "");
    expect(&e, "sites/s.yaml", 1, 1, &["empty"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: []\nprotect: [server]\n");
    expect(&e, "sites/s.yaml", 2, 11, &["catalogs", "at least one catalog"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nprotect: []\n");
    expect(&e, "sites/s.yaml", 3, 10, &["protect", "at least one role"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\n");
    expect(&e, "sites/s.yaml", 1, 1, &["missing field `protect`"]);
}

#[test]
fn wrong_types() {
    let e = site_error(&scratch(), "name: s\ncatalogs: alpha\nprotect: [server]\n");
    expect(&e, "sites/s.yaml", 2, 11, &["catalogs", "invalid type"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nprotect: [server]\nroles: 5\n");
    expect(&e, "sites/s.yaml", 4, 8, &["roles", "invalid type"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: [10.0.0.1, 5]\nprotect: [server]\n");
    expect(&e, "sites/s.yaml", 4, 22, &["roles.server[1]", "not an IPv4"]);
    let e = catalog_error("alpha", "protocol: [tcp, udp]", "protocol: {tcp: 1}");
    expect(&e, "catalog/alpha.yaml", 41, 15, &["flows[1].protocol", "invalid type"]);
    let e = catalog_error("alpha", "protocol: [tcp, udp]", "protocol: [tcp, sctp]");
    expect(&e, "catalog/alpha.yaml", 41, 21, &["flows[1].protocol[1]", "`sctp`"]);
    let e = catalog_error("alpha", "    any: true", "    any: \"yes\"");
    expect(&e, "catalog/alpha.yaml", 26, 10, &["roles[3].any", "invalid type"]);
    let e = catalog_error("alpha", "dport: 53\n", "dport: 1.5\n");
    expect(&e, "catalog/alpha.yaml", 42, 12, &["flows[1].dport", "invalid type"]);
    let e = catalog_error("alpha", "flows:\n", "flows: 3\nx:\n");
    expect(&e, "catalog/alpha.yaml", 28, 8, &["flows", "invalid type"]);
}

#[test]
fn protected_role_without_addresses() {
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: 10.0.0.1\nprotect: [server, lan]\n");
    expect(&e, "sites/s.yaml", 5, 19, &["protect[1]", "`lan` has no addresses"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: []\nprotect: [server]\n");
    expect(&e, "sites/s.yaml", 5, 11, &["protect[0]", "`server` has no addresses"]);
}

#[test]
fn bad_options_in_catalogs() {
    let e = catalog_error("alpha", "when: { turn: true }", "when: { turns: true }");
    expect(&e, "catalog/alpha.yaml", 72, 13, &["flows[5].when", "`turns` is not an option"]);
    let e = catalog_error("alpha", "when: { turn: true }", "when: { turn: maybe }");
    expect(&e, "catalog/alpha.yaml", 72, 19, &["flows[5].when.turn", "`maybe`"]);
    let e = catalog_error("alpha", ", upgraded: 40000-49999 }", " }");
    expect(&e, "catalog/alpha.yaml", 56, 12, &["flows[3].dport", "missing: upgraded"]);
    let e = catalog_error("alpha", "upgraded: 40000-49999", "old: 40000-49999");
    expect(&e, "catalog/alpha.yaml", 56, 54, &["flows[3].dport.cases", "`old`"]);
    let e = catalog_error("alpha", "by: release", "by: zones");
    expect(&e, "catalog/alpha.yaml", 56, 18, &["flows[3].dport.by", "not an enum or bool option"]);
    let e = catalog_error("alpha", "count: zones", "count: turn");
    expect(&e, "catalog/alpha.yaml", 63, 33, &["flows[4].dport.count", "not an integer option"]);
    let e = catalog_error("alpha", "base: 7001", "base: 65530");
    expect(&e, "catalog/alpha.yaml", 63, 12, &["flows[4].dport", "above port 65535"]);
    let e = catalog_error("alpha", "default: new", "default: old");
    expect(&e, "catalog/alpha.yaml", 7, 5, &["options.release", "default", "`old`"]);
    let e = catalog_error("alpha", "    bool: true\n", "    bool: true\n    values: [a]\n");
    expect(&e, "catalog/alpha.yaml", 15, 5, &["options.turn", "exactly one of"]);
    let e = catalog_error("alpha", "  zones:\n", "  unprotected:\n");
    expect(&e, "catalog/alpha.yaml", 10, 3, &["options", "reserved"]);
}

#[test]
fn catalog_identity() {
    let e = catalog_error("alpha", "name: alpha", "name: alfa");
    expect(&e, "catalog/alpha.yaml", 2, 7, &["name", "must equal the file name `alpha`"]);
    let e = catalog_error("alpha", "id: alpha-zones", "id: Alpha_Zones");
    expect(&e, "catalog/alpha.yaml", 58, 9, &["flows[4].id", "kebab-case"]);
    let e = catalog_error("alpha", "  - id: lan\n", "  - id: server\n");
    expect(&e, "catalog/alpha.yaml", 23, 9, &["roles[2].id", "declared twice"]);
}

#[test]
fn yaml_syntax() {
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha\nprotect: [server]\n");
    assert!(e.contains("sites/s.yaml:3:"), "{e}");
}

#[test]
fn catalog_syntax_and_empty() {
    let e = catalog_error("alpha", "  - id: lan\n", "  - id: [lan\n");
    assert!(e.contains("catalog/alpha.yaml:"), "{e}");
    let dir = scratch();
    std::fs::write(dir.join("catalog/alpha.yaml"), "\n").expect("write");
    let e = site_error(&dir, GOOD_SITE);
    expect(&e, "catalog/alpha.yaml", 1, 1, &["empty"]);
    std::fs::write(dir.join("catalog/alpha.yaml"), "- 1\n").expect("write");
    let e = site_error(&dir, GOOD_SITE);
    expect(&e, "catalog/alpha.yaml", 1, 1, &["invalid type"]);
}

#[test]
fn bad_conntrack_options() {
    let base = "name: s\ncatalogs: [alpha, beta]\nroles:\n  server: 10.0.0.1\nprotect: [server]\noptions:\n";
    for (line, col, parts) in [
        ("  conntrack-size: 1000\n", 19, &["options.conntrack-size", "`1000`", "1024..4194304"][..]),
        ("  conntrack-size: 4194305\n", 19, &["options.conntrack-size", "`4194305`", "1024..4194304"]),
        ("  conntrack-size: big\n", 19, &["options.conntrack-size", "`big`", "an integer"]),
        ("  conntrack-tcp-established: 9\n", 30, &["options.conntrack-tcp-established", "`9`", "10..604800"]),
        ("  conntrack-tcp-established: 604801\n", 30, &["options.conntrack-tcp-established", "10..604800"]),
        ("  conntrack-tcp-transitory: 0\n", 29, &["options.conntrack-tcp-transitory", "`0`", "1..3600"]),
        ("  conntrack-tcp-transitory: 3601\n", 29, &["options.conntrack-tcp-transitory", "`3601`", "1..3600"]),
        ("  conntrack-udp: -5\n", 18, &["options.conntrack-udp", "`-5`", "1..3600"]),
        ("  conntrack-udp: \"60\"\n", 18, &["options.conntrack-udp", "`60`", "an integer 1..3600"]),
        ("  conntrack-udp: true\n", 18, &["options.conntrack-udp", "`true`", "an integer"]),
        ("  conntrack-udp: 60\n  conntrack-udp: 30\n", 3, &["options", "duplicate", "conntrack-udp"]),
        ("  conntrack-udb: 60\n", 3, &["options", "unknown option `conntrack-udb`", "conntrack-udp"]),
    ] {
        let e = site_error(&scratch(), &format!("{base}{line}"));
        expect(&e, "sites/s.yaml", 7, col, parts);
    }
    // The bounds themselves are accepted.
    let dir = scratch();
    let site = dir.join("sites/s.yaml");
    std::fs::write(
        &site,
        format!(
            "{base}  conntrack-size: 4194304\n  conntrack-tcp-established: 10\n  conntrack-tcp-transitory: 3600\n  conntrack-udp: 1\n"
        ),
    )
    .expect("write");
    let p = dataplane::policy::load_site_from(&site, &dir.join("catalog")).expect("loads");
    let c = p.config();
    assert_eq!((c.ct_tcp_established, c.ct_tcp_transitory, c.ct_udp), (10, 3600, 1));
    assert_eq!(p.conntrack.size, 4194304);
    // Catalogs may not declare the dataplane's options.
    let e = catalog_error("alpha", "  zones:\n", "  conntrack-udp:\n");
    expect(&e, "catalog/alpha.yaml", 10, 3, &["options", "reserved"]);
}

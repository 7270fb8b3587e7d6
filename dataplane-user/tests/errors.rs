//! Bad input: every error has the kind of what is wrong, names `file:line:column` and the field;
//! nothing panics.

mod common;

use common::{edit, scratch, site_error, GOOD_SITE};
use dataplane::policy::{ErrorKind, PolicyError, Position};

/// Asserts that `e` is a `kind` error at `line:column` of a file ending in `file`, in `field`
/// (`""`: at the top of the file).
#[track_caller]
fn expect(e: &PolicyError, kind: ErrorKind, file: &str, line: usize, column: usize, field: &str) {
    assert_eq!(e.kind, kind, "{e}");
    assert!(e.file.as_ref().is_some_and(|f| f.ends_with(file)), "expected file {file}: {e}");
    assert_eq!(e.at, Some(Position { line, column }), "{e}");
    assert_eq!(e.field.as_deref(), Some(field).filter(|f| !f.is_empty()), "{e}");
}

/// Asserts that the message of `e` names each of `parts` (the alternatives, the bounds).
#[track_caller]
fn names(e: &PolicyError, parts: &[&str]) {
    for p in parts {
        assert!(e.message.contains(p), "expected {p:?} in: {e}");
    }
}

fn catalog_error(catalog: &str, from: &str, to: &str) -> PolicyError {
    let dir = scratch();
    edit(&dir, catalog, from, to);
    site_error(&dir, GOOD_SITE)
}

/// The printed form, which users and the CLI's tests read: `FILE:LINE:COLUMN: FIELD: MESSAGE`.
#[test]
fn printed_with_position_and_field() {
    let dir = scratch();
    edit(&dir, "alpha", "from: lan\n", "from: lann\n");
    let e = site_error(&dir, GOOD_SITE);
    let file = dir.join("catalog/alpha.yaml");
    let want = format!(
        "{}:39:11: flows[1].from: unknown role `lann` (roles of this catalog: admin-pc, internet, lan, partner, server)",
        file.display()
    );
    assert_eq!(e.to_string(), want);
    assert_eq!(format!("{:#}", anyhow::Error::from(e)), want);
}

#[test]
fn unknown_role_in_flow() {
    let e = catalog_error("alpha", "from: lan\n", "from: lann\n");
    expect(&e, ErrorKind::UnknownRole, "catalog/alpha.yaml", 39, 11, "flows[1].from");
    names(&e, &["`lann`", "admin-pc, internet"]);
}

#[test]
fn unknown_role_in_site() {
    let e =
        site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: 10.0.0.1\n  sever: 10.0.0.2\nprotect: [server]\n");
    expect(&e, ErrorKind::UnknownRole, "sites/s.yaml", 5, 3, "roles");
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: 10.0.0.1\nprotect: [server, nobody]\n");
    expect(&e, ErrorKind::UnknownRole, "sites/s.yaml", 5, 19, "protect[1]");
}

#[test]
fn unknown_catalog() {
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha, gamma]\nprotect: [server]\n");
    expect(&e, ErrorKind::UnknownCatalog, "sites/s.yaml", 2, 19, "catalogs[1]");
    names(&e, &["`gamma`", "alpha, beta"]);
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha, alpha]\nprotect: [server]\n");
    expect(&e, ErrorKind::Duplicate, "sites/s.yaml", 2, 19, "catalogs[1]");
}

#[test]
fn unknown_and_bad_options() {
    let base = "name: s\ncatalogs: [alpha, beta]\nroles:\n  server: 10.0.0.1\nprotect: [server]\noptions:\n";
    let e = site_error(&scratch(), &format!("{base}  zone: 1\n"));
    expect(&e, ErrorKind::UnknownOption, "sites/s.yaml", 7, 3, "options");
    names(&e, &["zones"]);
    let e = site_error(&scratch(), &format!("{base}  zones: 11\n"));
    expect(&e, ErrorKind::BadValue, "sites/s.yaml", 7, 10, "options.zones");
    names(&e, &["`11`", "1..10"]);
    // Valid in beta but not in alpha: names the catalog.
    let e = site_error(&scratch(), &format!("{base}  release: legacy\n"));
    expect(&e, ErrorKind::BadValue, "sites/s.yaml", 7, 12, "options.release");
    names(&e, &["`legacy`", "catalog `alpha`"]);
    let e = site_error(&scratch(), &format!("{base}  unprotected: maybe\n"));
    expect(&e, ErrorKind::BadValue, "sites/s.yaml", 7, 16, "options.unprotected");
    names(&e, &["pass, drop"]);
    let e = site_error(&scratch(), &format!("{base}  turn: \"yes\"\n"));
    expect(&e, ErrorKind::BadValue, "sites/s.yaml", 7, 9, "options.turn");
    names(&e, &["true or false"]);
}

#[test]
fn bad_cidr() {
    // Why each is refused is `Cidr::parse`'s to say (its unit tests).
    for cidr in ["10.0.0.1/8", "10.0.0.0/33", "10.0.0", "fd00::/129"] {
        let e = site_error(
            &scratch(),
            &format!("name: s\ncatalogs: [alpha]\nroles:\n  server: [10.0.0.1, \"{cidr}\"]\nprotect: [server]\n"),
        );
        expect(&e, ErrorKind::BadCidr, "sites/s.yaml", 4, 22, "roles.server[1]");
    }
}

#[test]
fn bad_ports() {
    for (from, to, line, column, field) in [
        ("dport: 53\n", "dport: 0\n", 42, 12, "flows[1].dport"),
        ("dport: 53\n", "dport: 65536\n", 42, 12, "flows[1].dport"),
        ("\"5061\"", "\"1-70000\"", 49, 19, "flows[2].dport[1]"),
        ("dport: 20-25", "dport: 25-20", 94, 12, "flows[8].dport"),
        ("dport: 3478", "dport: any", 70, 12, "flows[5].dport"),
        ("sport: 5060", "sport: 0", 101, 12, "flows[9].sport"),
    ] {
        let e = catalog_error("alpha", from, to);
        expect(&e, ErrorKind::BadPorts, "catalog/alpha.yaml", line, column, field);
    }
}

#[test]
fn duplicate_flow_ids() {
    let e = catalog_error("alpha", "id: alpha-lan-dns", "id: alpha-admin-https");
    expect(&e, ErrorKind::DuplicateFlow, "catalog/alpha.yaml", 37, 9, "flows[1].id");
    // Across catalogs: reported in the later one, naming the other.
    let e = catalog_error("beta", "id: beta-db", "id: alpha-zones");
    expect(&e, ErrorKind::DuplicateFlow, "catalog/beta.yaml", 21, 9, "flows[1].id");
    names(&e, &["catalog `alpha`"]);
}

#[test]
fn unknown_keys() {
    let e = catalog_error("alpha", "    table: \"Services\"", "    tabel: \"Services\"");
    expect(&e, ErrorKind::UnknownField, "catalog/alpha.yaml", 43, 5, "flows[1]");
    names(&e, &["`tabel`"]);
    let e = catalog_error("alpha", "title:", "titel:");
    expect(&e, ErrorKind::UnknownField, "catalog/alpha.yaml", 4, 1, "");
    let e = catalog_error("alpha", "dport: { base: 7001", "dport: { bass: 7001");
    expect(&e, ErrorKind::UnknownField, "catalog/alpha.yaml", 63, 14, "flows[4].dport");
    names(&e, &["`bass`"]);
    let e = site_error(&scratch(), &format!("{GOOD_SITE}foo: 1\n"));
    expect(&e, ErrorKind::UnknownField, "sites/s.yaml", 6, 1, "");
}

#[test]
fn empty_sites() {
    let e = site_error(&scratch(), "");
    expect(&e, ErrorKind::Empty, "sites/s.yaml", 1, 1, "");
    let e = site_error(&scratch(), "name: s\ncatalogs: []\nprotect: [server]\n");
    expect(&e, ErrorKind::EmptyList, "sites/s.yaml", 2, 11, "catalogs");
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nprotect: []\n");
    expect(&e, ErrorKind::EmptyList, "sites/s.yaml", 3, 10, "protect");
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\n");
    expect(&e, ErrorKind::MissingField, "sites/s.yaml", 1, 1, "");
    names(&e, &["`protect`"]);
}

#[test]
fn wrong_types() {
    let e = site_error(&scratch(), "name: s\ncatalogs: alpha\nprotect: [server]\n");
    expect(&e, ErrorKind::WrongType, "sites/s.yaml", 2, 11, "catalogs");
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nprotect: [server]\nroles: 5\n");
    expect(&e, ErrorKind::WrongType, "sites/s.yaml", 4, 8, "roles");
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: [10.0.0.1, 5]\nprotect: [server]\n");
    expect(&e, ErrorKind::BadCidr, "sites/s.yaml", 4, 22, "roles.server[1]");
    for (from, to, kind, line, column, field) in [
        ("protocol: [tcp, udp]", "protocol: {tcp: 1}", ErrorKind::WrongType, 41, 15, "flows[1].protocol"),
        ("protocol: [tcp, udp]", "protocol: [tcp, sctp]", ErrorKind::BadProtocol, 41, 21, "flows[1].protocol[1]"),
        ("    any: true", "    any: \"yes\"", ErrorKind::WrongType, 26, 10, "roles[3].any"),
        ("dport: 53\n", "dport: 1.5\n", ErrorKind::WrongType, 42, 12, "flows[1].dport"),
        ("flows:\n", "flows: 3\nx:\n", ErrorKind::WrongType, 28, 8, "flows"),
    ] {
        let e = catalog_error("alpha", from, to);
        expect(&e, kind, "catalog/alpha.yaml", line, column, field);
    }
}

#[test]
fn protected_role_without_addresses() {
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: 10.0.0.1\nprotect: [server, lan]\n");
    expect(&e, ErrorKind::ProtectedRoleUnbound, "sites/s.yaml", 5, 19, "protect[1]");
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha]\nroles:\n  server: []\nprotect: [server]\n");
    expect(&e, ErrorKind::ProtectedRoleUnbound, "sites/s.yaml", 5, 11, "protect[0]");
}

#[test]
fn bad_options_in_catalogs() {
    for (from, to, kind, line, column, field) in [
        ("when: { turn: true }", "when: { turns: true }", ErrorKind::UnknownOption, 72, 13, "flows[5].when"),
        ("when: { turn: true }", "when: { turn: maybe }", ErrorKind::BadValue, 72, 19, "flows[5].when.turn"),
        ("upgraded: 40000-49999", "old: 40000-49999", ErrorKind::BadValue, 56, 54, "flows[3].dport.cases"),
        ("by: release", "by: zones", ErrorKind::BadPorts, 56, 18, "flows[3].dport.by"),
        ("count: zones", "count: turn", ErrorKind::BadPorts, 63, 33, "flows[4].dport.count"),
        ("base: 7001", "base: 65530", ErrorKind::BadPorts, 63, 12, "flows[4].dport"),
        ("default: new", "default: old", ErrorKind::BadValue, 7, 5, "options.release"),
        ("    bool: true\n", "    bool: true\n    values: [a]\n", ErrorKind::BadOptionDecl, 15, 5, "options.turn"),
        ("  zones:\n", "  unprotected:\n", ErrorKind::ReservedOption, 10, 3, "options"),
    ] {
        let e = catalog_error("alpha", from, to);
        expect(&e, kind, "catalog/alpha.yaml", line, column, field);
    }
    // A `by` spec names the values it has no case for.
    let e = catalog_error("alpha", ", upgraded: 40000-49999 }", " }");
    expect(&e, ErrorKind::BadPorts, "catalog/alpha.yaml", 56, 12, "flows[3].dport");
    names(&e, &["missing: upgraded"]);
}

#[test]
fn catalog_identity() {
    let e = catalog_error("alpha", "name: alpha", "name: alfa");
    expect(&e, ErrorKind::NameMismatch, "catalog/alpha.yaml", 2, 7, "name");
    let e = catalog_error("alpha", "id: alpha-zones", "id: Alpha_Zones");
    expect(&e, ErrorKind::NotKebab, "catalog/alpha.yaml", 58, 9, "flows[4].id");
    let e = catalog_error("alpha", "  - id: lan\n", "  - id: server\n");
    expect(&e, ErrorKind::DuplicateRole, "catalog/alpha.yaml", 23, 9, "roles[2].id");
}

#[test]
fn yaml_syntax() {
    let e = site_error(&scratch(), "name: s\ncatalogs: [alpha\nprotect: [server]\n");
    assert_eq!(e.kind, ErrorKind::Syntax, "{e}");
    assert!(e.file.as_ref().is_some_and(|f| f.ends_with("sites/s.yaml")) && e.at.is_some_and(|at| at.line == 3), "{e}");
}

#[test]
fn catalog_syntax_and_empty() {
    let e = catalog_error("alpha", "  - id: lan\n", "  - id: lan: x\n");
    assert_eq!(e.kind, ErrorKind::Syntax, "{e}");
    assert!(e.file.as_ref().is_some_and(|f| f.ends_with("catalog/alpha.yaml")), "{e}");
    // Valid YAML (a list runs on to the end of the file), not a role id.
    let e = catalog_error("alpha", "  - id: lan\n", "  - id: [lan\n");
    expect(&e, ErrorKind::WrongType, "catalog/alpha.yaml", 23, 9, "roles[2].id");
    let dir = scratch();
    std::fs::write(dir.join("catalog/alpha.yaml"), "\n").expect("write");
    let e = site_error(&dir, GOOD_SITE);
    expect(&e, ErrorKind::Empty, "catalog/alpha.yaml", 1, 1, "");
    std::fs::write(dir.join("catalog/alpha.yaml"), "- 1\n").expect("write");
    let e = site_error(&dir, GOOD_SITE);
    expect(&e, ErrorKind::WrongType, "catalog/alpha.yaml", 1, 1, "");
}

#[test]
fn missing_files() {
    let dir = scratch();
    let e = dataplane::policy::load_site_from(&dir.join("sites/none.yaml"), &dir.join("catalog")).unwrap_err();
    assert_eq!((e.kind, e.file.as_ref()), (ErrorKind::Io, None), "{e}");
    assert!(format!("{e:#}").starts_with(&format!("reading site {}: ", dir.join("sites/none.yaml").display())), "{e:#}");
    let site = dir.join("sites/s.yaml");
    std::fs::write(&site, GOOD_SITE).expect("write site");
    let e = dataplane::policy::load_site_from(&site, &dir.join("nowhere")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io, "{e}");
    assert!(e.to_string().starts_with("reading catalog directory "), "{e}");
}

#[test]
fn bad_conntrack_options() {
    let base = "name: s\ncatalogs: [alpha, beta]\nroles:\n  server: 10.0.0.1\nprotect: [server]\noptions:\n";
    for (line, kind, col, field, bounds) in [
        ("  conntrack-size: 1000\n", ErrorKind::BadValue, 19, "options.conntrack-size", "1024..4194304"),
        ("  conntrack-size: 4194305\n", ErrorKind::BadValue, 19, "options.conntrack-size", "1024..4194304"),
        ("  conntrack-size: big\n", ErrorKind::BadValue, 19, "options.conntrack-size", "an integer"),
        ("  conntrack-tcp-established: 9\n", ErrorKind::BadValue, 30, "options.conntrack-tcp-established", "10..604800"),
        ("  conntrack-tcp-established: 604801\n", ErrorKind::BadValue, 30, "options.conntrack-tcp-established", "10..604800"),
        ("  conntrack-tcp-transitory: 0\n", ErrorKind::BadValue, 29, "options.conntrack-tcp-transitory", "1..3600"),
        ("  conntrack-tcp-transitory: 3601\n", ErrorKind::BadValue, 29, "options.conntrack-tcp-transitory", "1..3600"),
        ("  conntrack-udp: -5\n", ErrorKind::BadValue, 18, "options.conntrack-udp", "1..3600"),
        ("  conntrack-udp: \"60\"\n", ErrorKind::BadValue, 18, "options.conntrack-udp", "an integer 1..3600"),
        ("  conntrack-udp: true\n", ErrorKind::BadValue, 18, "options.conntrack-udp", "an integer"),
        ("  conntrack-udp: 60\n  conntrack-udp: 30\n", ErrorKind::Duplicate, 3, "options", "conntrack-udp"),
        ("  conntrack-udb: 60\n", ErrorKind::UnknownOption, 3, "options", "conntrack-udp"),
    ] {
        let e = site_error(&scratch(), &format!("{base}{line}"));
        expect(&e, kind, "sites/s.yaml", 7, col, field);
        names(&e, &[bounds]);
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
    expect(&e, ErrorKind::ReservedOption, "catalog/alpha.yaml", 10, 3, "options");
}

/// `dataplane init`'s placeholder, alone or in a list, is named as a role still to bind, at the
/// placeholder; the other roles still bound to it follow, one line each with its own position.
#[test]
fn placeholder_roles_are_still_to_bind() {
    let site = "name: s\ncatalogs: [alpha]\nprotect: [server]\nroles:\n  server: [10.0.0.1, REPLACE-ME]\n  lan: REPLACE-ME\n";
    let e = site_error(&scratch(), site);
    expect(&e, ErrorKind::Placeholder, "sites/s.yaml", 5, 22, "roles.server[1]");
    assert!(e.message.starts_with("role `server` is still to bind: replace [REPLACE-ME]"), "{e}");
    let printed = e.to_string();
    let second = printed.lines().nth(1).unwrap_or_default();
    assert!(
        second.ends_with(
            "s.yaml:6:8: roles.lan: role `lan` is still to bind: replace [REPLACE-ME] with its addresses (CIDRs), or [] for none"
        ),
        "{printed}"
    );
    assert_eq!(printed.lines().count(), 2, "{printed}");
}

/// A site binding `internet` with exceptions (`server` protected), `rest` appended.
fn except_site(binding: &str, rest: &str) -> PolicyError {
    let text = format!("name: s\ncatalogs: [alpha]\nroles:\n  server: 10.0.0.1\n{binding}protect: [server]\n{rest}");
    site_error(&scratch(), &text)
}

#[test]
fn except_outside_the_cidrs() {
    let e = except_site("  internet: { cidrs: [10.0.0.0/8], except: [10.1.0.0/16, 11.0.0.0/8] }\n", "");
    expect(&e, ErrorKind::ExceptOutside, "sites/s.yaml", 5, 58, "roles.internet.except[1]");
    names(&e, &["`11.0.0.0/8`", "`internet`", "10.0.0.0/8"]);
    // Another family is outside too; the block form points at the item.
    let e = except_site("  internet:\n    cidrs: [0.0.0.0/0]\n    except:\n      - \"fd00::/8\"\n", "");
    expect(&e, ErrorKind::ExceptOutside, "sites/s.yaml", 8, 9, "roles.internet.except[0]");
    let e = except_site("  internet: { cidrs: [10.0.0.0/8], except: [10.0.0.1/8] }\n", "");
    expect(&e, ErrorKind::BadCidr, "sites/s.yaml", 5, 45, "roles.internet.except[0]");
}

#[test]
fn unknown_except_role() {
    let e = except_site("  internet: { cidrs: [0.0.0.0/0], except-roles: [lan, lann] }\n", "");
    expect(&e, ErrorKind::UnknownRole, "sites/s.yaml", 5, 55, "roles.internet.except-roles[1]");
    names(&e, &["`lann`", "admin-pc, internet, lan"]);
}

#[test]
fn cycle_of_except_roles() {
    let e = except_site(
        "  internet: { cidrs: [0.0.0.0/0], except-roles: [lan] }\n  lan: { cidrs: [10.0.0.0/8], except-roles: [internet] }\n",
        "",
    );
    expect(&e, ErrorKind::ExceptCycle, "sites/s.yaml", 5, 50, "roles.internet.except-roles[0]");
    names(&e, &["internet -> lan -> internet"]);
    let e = except_site("  internet: { cidrs: [0.0.0.0/0], except-roles: [internet] }\n", "");
    expect(&e, ErrorKind::ExceptCycle, "sites/s.yaml", 5, 50, "roles.internet.except-roles[0]");
    names(&e, &["internet -> internet"]);
}

#[test]
fn protected_role_emptied_by_its_exceptions() {
    let text = "name: s\ncatalogs: [alpha]\nroles:\n  lan: [10.0.0.0/9]\n  server: { cidrs: [10.0.0.0/8], except: [10.128.0.0/9], except-roles: [lan] }\nprotect: [server]\n";
    let e = site_error(&scratch(), text);
    expect(&e, ErrorKind::ProtectedRoleUnbound, "sites/s.yaml", 6, 11, "protect[0]");
    names(&e, &["`server`", "exceptions"]);
}

#[test]
fn binding_map_keys() {
    let e = except_site("  internet: { cidr: [0.0.0.0/0] }\n", "");
    expect(&e, ErrorKind::UnknownField, "sites/s.yaml", 5, 15, "roles.internet");
    names(&e, &["cidrs, except, except-roles"]);
    let e = except_site("  internet: { except: [10.0.0.0/8] }\n", "");
    assert_eq!(e.kind, ErrorKind::MissingField, "{e}");
    assert_eq!(e.at.map(|p| p.line), Some(5), "{e}");
}

#[test]
fn source_ports_values() {
    let e = except_site("", "options:\n  source-ports: anything\n");
    expect(&e, ErrorKind::BadValue, "sites/s.yaml", 7, 17, "options.source-ports");
    names(&e, &["as-documented, any"]);
}

/// `source-ports` written at the top level of a site is the same setting as under `options:`;
/// set in both places it is refused where the top-level one is written, and a bad value names
/// the two readings.
#[test]
fn source_ports_at_the_top_level() {
    use dataplane::policy::{load_site_from, SourcePorts};
    let dir = scratch();
    let load = |text: &str| {
        let site = dir.join("sites/s.yaml");
        std::fs::write(&site, text).expect("write site");
        load_site_from(&site, &dir.join("catalog")).expect("the site loads")
    };
    let top = load(&format!("{GOOD_SITE}source-ports: any\n"));
    let under = load(&format!("{GOOD_SITE}options:\n  source-ports: any\n"));
    assert_eq!(top.source_ports, SourcePorts::Any);
    assert_eq!(under.source_ports, SourcePorts::Any);
    let sports = |p: &dataplane::policy::Policy| p.flows.iter().map(|f| f.sport.clone()).collect::<Vec<_>>();
    assert_eq!(sports(&top), sports(&under));
    assert_eq!(load(GOOD_SITE).source_ports, SourcePorts::AsDocumented);
    let e = site_error(&dir, &format!("{GOOD_SITE}options:\n  source-ports: any\nsource-ports: any\n"));
    expect(&e, ErrorKind::Duplicate, "sites/s.yaml", 8, 1, "source-ports");
    let e = site_error(&dir, &format!("{GOOD_SITE}source-ports: sideways\n"));
    assert!(e.to_string().contains("sites/s.yaml:6:") && e.to_string().contains("as-documented"), "{e}");
}

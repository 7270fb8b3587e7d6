//! The lockout guard of `dataplane run` (`dataplane::rollout::lockout`): the SSH session's own tuple and
//! a management flow to every protected role, on the sites under `tests/data/lockout` and on the
//! real sites under `policies/sites`.

use std::path::{Path, PathBuf};

use dataplane::compile::compile;
use dataplane::compile::tables::Tables;
use dataplane::policy::{load_site, load_site_from, Policy};
use dataplane::rollout::lockout::{self, check, guard, Lockout, LockoutError, SshSession};
use dataplane_common::Reason;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lockout")
}

fn site(name: &str) -> (Policy, Tables) {
    let p = load_site_from(&data().join(format!("sites/{name}.yaml")), &data().join("catalog"))
        .unwrap_or_else(|e| panic!("site {name}: {e:#}"));
    let t = compile(&p).expect("compiles");
    (p, t)
}

fn ssh(s: &str) -> SshSession {
    SshSession::parse(s).unwrap_or_else(|| panic!("SSH_CONNECTION `{s}`"))
}

fn problems(r: Result<(), LockoutError>) -> Vec<Lockout> {
    match r {
        Ok(()) => vec![],
        Err(e) => e.problems,
    }
}

fn unmanaged(ps: &[Lockout]) -> Vec<&str> {
    ps.iter()
        .filter_map(|p| match p {
            Lockout::Unmanaged { role, .. } => Some(role.as_str()),
            _ => None,
        })
        .collect()
}

// --- SSH_CONNECTION ----------------------------------------------------------------------------

#[test]
fn parses_ssh_connection() {
    let s = ssh("10.9.0.7 50123 10.1.0.10 22");
    assert_eq!(s.client, "10.9.0.7".parse::<std::net::IpAddr>().unwrap());
    assert_eq!((s.client_port, s.server_port), (50123, 22));
    assert_eq!(s.server, "10.1.0.10".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(s.to_string(), "10.9.0.7:50123 -> 10.1.0.10:22 tcp");
    let p = s.packet();
    assert_eq!((p.proto, p.sport, p.dport, p.icmp_type), (6, 50123, 22, None));

    let v6 = ssh("2001:db8:9::7 40000 2001:db8:1::10 2222\n");
    assert_eq!(v6.to_string(), "[2001:db8:9::7]:40000 -> [2001:db8:1::10]:2222 tcp");
    // A zone and IPv4-mapped addresses (a dual-stack sshd socket).
    let z = ssh("fe80::1%eth0 40000 fe80::2%eth0 22");
    assert_eq!(z.server, "fe80::2".parse::<std::net::IpAddr>().unwrap());
    let m = ssh("::ffff:10.9.0.7 40000 ::ffff:10.1.0.10 22");
    assert_eq!(m.to_string(), "10.9.0.7:40000 -> 10.1.0.10:22 tcp");

    for bad in [
        "",
        "10.9.0.7 50123 10.1.0.10",
        "10.9.0.7 50123 10.1.0.10 22 extra",
        "10.9.0.7 port 10.1.0.10 22",
        "10.9.0.7 50123 10.1.0.10 70000",
        "host 50123 10.1.0.10 22",
        "10.9.0.7 50123 2001:db8:1::10 22",
    ] {
        assert_eq!(SshSession::parse(bad), None, "`{bad}`");
    }
}

#[test]
fn ssh_session_from_environment() {
    // The only test that touches the variable.
    std::env::set_var("SSH_CONNECTION", "10.9.0.7 50123 10.1.0.10 22");
    assert_eq!(lockout::ssh_session_from_env(), Some(ssh("10.9.0.7 50123 10.1.0.10 22")));
    std::env::set_var("SSH_CONNECTION", "garbage");
    assert_eq!(lockout::ssh_session_from_env(), None);
    std::env::remove_var("SSH_CONNECTION");
    assert_eq!(lockout::ssh_session_from_env(), None);
}

// --- the SSH session ---------------------------------------------------------------------------

#[test]
fn allowed_ssh_session_is_ok() {
    let (p, t) = site("ok");
    assert_eq!(check(&p, &t, None), Ok(()));
    for s in [
        "10.9.0.7 50123 10.1.0.10 22",
        "10.9.0.7 50123 10.1.0.11 22",
        "2001:db8:9::7 50123 2001:db8:1::10 22",
        // https administration is allowed too: a session to 443 (sshd on another port) is kept.
        "10.9.0.7 50123 10.1.0.10 443",
    ] {
        assert_eq!(check(&p, &t, Some(&ssh(s))), Ok(()), "{s}");
    }
}

#[test]
fn dropped_ssh_session_is_refused() {
    let (p, t) = site("ok");
    // Not a management PC; a port no flow opens; a source port under 1024 (lk-admin-ssh wants
    // 1024-65535).
    for s in [
        "10.8.0.1 50123 10.1.0.10 22",
        "10.9.0.7 50123 10.1.0.10 2222",
        "10.9.0.7 1000 10.1.0.10 22",
        "10.9.0.7 50123 10.1.0.20 22",
    ] {
        let e = check(&p, &t, Some(&ssh(s))).expect_err(s);
        assert_eq!(
            e.problems,
            vec![Lockout::SshSession { session: ssh(s), protected: true, reason: Reason::DropNoFlow, deny_flow: None }],
            "{s}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&ssh(s).to_string()), "{msg}");
        assert!(msg.contains("is protected and no flow of the site allows"), "{msg}");
        assert!(msg.contains("--force"), "{msg}");
        assert!(msg.contains("lockout-ok"), "{msg}");
    }
}

#[test]
fn ssh_session_denied_by_a_deny_flow_is_refused() {
    let (p, t) = site("ok");
    let s = ssh("10.9.0.70 50123 10.1.0.10 22");
    let e = check(&p, &t, Some(&s)).expect_err("quarantined");
    assert_eq!(
        e.problems,
        vec![Lockout::SshSession {
            session: s,
            protected: true,
            reason: Reason::DropDenyFlow,
            deny_flow: Some("lk-no-ssh-from-quarantine (lockout)".into()),
        }]
    );
    assert!(e.to_string().contains("deny flow `lk-no-ssh-from-quarantine (lockout)` forbids it"));
    // https from the same PC is not denied.
    assert_eq!(check(&p, &t, Some(&ssh("10.9.0.70 50123 10.1.0.10 443"))), Ok(()));
}

#[test]
fn unprotected_destination_is_ok() {
    let (p, t) = site("ok");
    // db is bound but not protected; .99 is in no role; unprotected: pass.
    for s in ["10.8.0.1 50123 10.1.0.30 22", "10.8.0.1 50123 10.1.0.99 22"] {
        assert_eq!(check(&p, &t, Some(&ssh(s))), Ok(()), "{s}");
    }
}

#[test]
fn unprotected_destination_is_refused_when_the_site_drops_it() {
    let (p, t) = site("drop-unprotected");
    assert_eq!(check(&p, &t, Some(&ssh("10.9.0.7 50123 10.1.0.10 22"))), Ok(()));
    let s = ssh("10.9.0.7 50123 10.1.0.99 22");
    let e = check(&p, &t, Some(&s)).expect_err("unprotected: drop");
    assert_eq!(
        e.problems,
        vec![Lockout::SshSession { session: s, protected: false, reason: Reason::DropUnprotected, deny_flow: None }]
    );
    assert!(e.to_string().contains("unprotected: drop"));
}

// --- management flows --------------------------------------------------------------------------

#[test]
fn every_protected_role_managed() {
    // server: ssh and https; server-primary: through server's flows (overlapping roles);
    // web: 8443 from management-pc (any port counts from management-pc).
    let (p, t) = site("ok");
    assert_eq!(check(&p, &t, None), Ok(()));
    let web = p.roles.iter().position(|r| r.id == "web").unwrap();
    let (slot, pkt) = lockout::management_path(&p, &t, web).expect("web is managed");
    assert_eq!(p.flows[slot].info.id, "lk-web-admin");
    assert_eq!(pkt.dport, 8443);
    let primary = p.roles.iter().position(|r| r.id == "server-primary").unwrap();
    let (slot, pkt) = lockout::management_path(&p, &t, primary).expect("primary is managed");
    assert_eq!(p.flows[slot].info.id, "lk-admin-ssh");
    assert_eq!((pkt.dport, pkt.dst.to_string().as_str()), (22, "10.1.0.10"));
}

#[test]
fn protected_role_without_management_flow_is_refused() {
    let (p, t) = site("db-unmanaged");
    let e = check(&p, &t, None).expect_err("db has no management flow");
    assert_eq!(unmanaged(&e.problems), ["db"]);
    let Lockout::Unmanaged { prefixes, hints, .. } = &e.problems[0] else { unreachable!() };
    assert_eq!(prefixes.iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["10.1.0.30/32"]);
    // The port-22 flow from the jump host is documented but off.
    assert_eq!(hints.len(), 1, "{hints:?}");
    assert!(hints[0].to_string().contains("`lk-db-jump-ssh`") && hints[0].to_string().contains("jump-ssh: true"), "{hints:?}");
    let msg = e.to_string();
    assert!(msg.contains("protected role `db` (10.1.0.30/32) has no management flow"), "{msg}");
    assert!(msg.contains("`management-pc`") && msg.contains("ssh port 22"), "{msg}");
    assert!(msg.contains("--force"), "{msg}");

    // A database flow from the server (tcp 5432) is not management; the SSH session is fine,
    // the role still is not: both are reported, the session only when dropped.
    let e = check(&p, &t, Some(&ssh("10.9.0.7 50123 10.1.0.10 22"))).expect_err("db");
    assert_eq!(e.problems.len(), 1);
}

#[test]
fn ssh_from_a_jump_host_is_management() {
    let (p, t) = site("db-jump");
    assert_eq!(check(&p, &t, None), Ok(()));
}

#[test]
fn management_turned_off_by_options_is_refused() {
    let (p, t) = site("options-off");
    let e = check(&p, &t, None).expect_err("options off");
    assert_eq!(unmanaged(&e.problems), ["server"]);
    let Lockout::Unmanaged { hints, .. } = &e.problems[0] else { unreachable!() };
    assert_eq!(hints.len(), 2, "{hints:?}");
    assert!(hints[0].to_string().contains("`lk-admin-ssh`") && hints[0].to_string().contains("management-ssh: true"));
    assert!(hints[1].to_string().contains("`lk-admin-https`") && hints[1].to_string().contains("web-admin: true"));
}

#[test]
fn unbound_management_role_is_refused() {
    let (p, t) = site("unbound");
    let e = check(&p, &t, None).expect_err("management-pc unbound");
    assert_eq!(unmanaged(&e.problems), ["server"]);
    let msg = e.to_string();
    assert!(msg.contains("role `management-pc` has no addresses in the site"), "{msg}");
}

#[test]
fn management_shadowed_by_a_deny_flow_is_refused() {
    let (p, t) = site("shadowed");
    let e = check(&p, &t, None).expect_err("shadowed");
    assert_eq!(unmanaged(&e.problems), ["server"]);
    let msg = e.to_string();
    assert!(msg.contains("deny flow `lk-no-ssh-from-quarantine (lockout)` shadows it"), "{msg}");
    assert!(msg.contains("`lk-admin-https`") && msg.contains("is off"), "{msg}");
}

#[test]
fn several_problems_are_reported_together() {
    let (p, t) = site("db-unmanaged");
    let e = check(&p, &t, Some(&ssh("10.8.0.1 50123 10.1.0.10 22"))).expect_err("both");
    assert_eq!(e.problems.len(), 2);
    assert!(matches!(e.problems[0], Lockout::SshSession { .. }));
    assert_eq!(unmanaged(&e.problems), ["db"]);
}

#[test]
fn force_overrides() {
    let (p, t) = site("db-unmanaged");
    let s = ssh("10.8.0.1 50123 10.1.0.10 22");
    guard(&p, &t, Some(&s), true).expect("--force");
    let e: LockoutError = guard(&p, &t, Some(&s), false).expect_err("refused");
    assert_eq!(e.problems.len(), 2);
    let (p, t) = site("ok");
    guard(&p, &t, Some(&ssh("10.9.0.7 50123 10.1.0.10 22")), false).expect("ok");
}

// --- the real sites ----------------------------------------------------------------------------

/// What the guard says about each site under `policies/sites` (no SSH session): the roles it
/// finds without a management flow. Printed with `--nocapture`.
#[test]
fn real_sites() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/sites");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("policies/sites")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut verdicts = Vec::new();
    for f in &files {
        let p = load_site(f).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        let t = compile(&p).expect("compiles");
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        match check(&p, &t, None) {
            Ok(()) => println!("{name}: ok"),
            Err(e) => println!("{name}: {e}\n"),
        }
        let mut roles: Vec<String> = problems(check(&p, &t, None))
            .iter()
            .filter_map(|p| match p {
                Lockout::Unmanaged { role, .. } => Some(role.clone()),
                _ => None,
            })
            .collect();
        roles.sort();
        verdicts.push((name, roles));
    }
    let lab = verdicts.iter().find(|(n, _)| n == "lab").expect("lab site");
    assert!(lab.1.is_empty(), "the lab site keeps its management flows");

    // The lab: the management PC's ssh is kept, an SSH session from "the Internet" is not.
    let p = load_site(&dir.join("lab.yaml")).unwrap();
    let t = compile(&p).unwrap();
    assert_eq!(check(&p, &t, Some(&ssh("10.200.0.2 40000 10.200.0.1 22"))), Ok(()));
    assert_eq!(check(&p, &t, Some(&ssh("fd00:200::2 40000 fd00:200::1 22"))), Ok(()));
    let e = check(&p, &t, Some(&ssh("10.200.0.9 40000 10.200.0.1 22"))).expect_err("internet");
    assert!(matches!(e.problems[..], [Lockout::SshSession { reason: Reason::DropNoFlow, protected: true, .. }]));
    // An SSH session to the VCS Control (not protected by the lab; unprotected: pass) is kept.
    assert_eq!(check(&p, &t, Some(&ssh("10.200.0.9 40000 10.200.0.3 22"))), Ok(()));
}

#[test]
fn user_web_access_is_not_management() {
    let (p, t) = site("web-users-only");
    let e = check(&p, &t, None).expect_err("web unmanaged");
    assert_eq!(unmanaged(&e.problems), ["web"]);
    let msg = e.to_string();
    assert!(msg.contains("`lk-web-admin`") && msg.contains("web-8443: true"), "{msg}");
    // The management PCs reach web's 443 all the same, credited to the users' flow.
    let d = dataplane::classify::classify(&t, &ssh("10.9.0.7 50123 10.1.0.20 443").packet());
    assert!(dataplane::classify::Outcome::allows(&d));
    assert_eq!(t.flows[dataplane::classify::Outcome::flow(&d).unwrap()].id, "lk-web-users");
}

/// The site skeleton of `deploy/daemonset.yaml` (the `dataplane-site` ConfigMap) compiles with the
/// repository's catalogs and passes the guard.
#[test]
fn daemonset_site_skeleton() {
    use serde::Deserialize;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("deploy/daemonset.yaml")).expect("daemonset");
    let site = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("yaml"))
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "dataplane-site")
        .expect("the dataplane-site ConfigMap");
    let site = site["data"]["site.yaml"].as_str().expect("site.yaml");
    let dir = std::env::temp_dir().join(format!("dataplane-lockout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("site.yaml");
    std::fs::write(&path, site).unwrap();
    let p = load_site_from(&path, &root.join("policies/catalog")).expect("the skeleton loads");
    let t = compile(&p).expect("compiles");
    assert_eq!(check(&p, &t, None), Ok(()));
    let _ = std::fs::remove_dir_all(&dir);
}

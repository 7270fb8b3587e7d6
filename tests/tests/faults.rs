//! Faults, with the real daemon over veth: `dataplane run` killed (SIGKILL, by the
//! `DATAPLANE_FAULT` hook of a binary built with `--features fault`) at every stage of start-up and of a reload leaves the host with the old
//! policy or the new one enforcing, never with none or half of one, and the next run takes over
//! without a gap. The interface going down and up, and being removed and created again, has a
//! defined outcome too.
//!
//! Which policy enforces is read from real traffic: UDP to SIP (allowed by both policies), SNMP
//! (allowed only by the new one) and TURN (allowed by neither).

use std::{
    net::SocketAddr,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::Duration,
};

use dataplane::lab::netns::SERVER_IF;
use dataplane::lab::netns::{ip, udp_send, Lab, Servers};
use dataplane_tests::daemon::{fault_bin, root, Daemon};

const SIP: &str = "10.202.0.1:5060";
const SNMP: &str = "10.202.0.1:161";
const TURN: &str = "10.202.0.1:3478";
const CLIENT: &str = "10.202.0.2";

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Enforcing {
    Nothing,
    Old,
    New,
    /// Anything else: half a policy, or a host that drops what both policies allow.
    Broken(u64, u64, u64),
}

struct Rig {
    lab: Lab,
    servers: Servers,
    dir: PathBuf,
    site: PathBuf,
    old: String,
}

impl Rig {
    fn new(tag: &str) -> Self {
        let lab = Lab::new(tag, &["10.202.0.1/24"], &[&format!("{CLIENT}/24")]).unwrap();
        let servers = Servers::start(&lab.server, &[], &[sa(SIP), sa(SNMP), sa(TURN)]).unwrap();
        let dir = std::env::temp_dir().join(format!("dataplane-faults-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = std::fs::read_to_string(root().join("tests/sites/e2e.yaml"))
            .unwrap()
            .replace("10.201.0.", "10.202.0.")
            .replace("fd00:201::", "fd00:202::");
        let site = dir.join("site.yaml");
        let rig = Rig { lab, servers, dir, site, old };
        rig.write(false);
        rig
    }

    /// The site: the old policy, or the new one (SNMP switched on).
    fn write(&self, new: bool) {
        let text = if new { format!("{}options:\n  management-snmp: true\n", self.old) } else { self.old.clone() };
        std::fs::write(&self.site, text).unwrap();
    }

    /// Which policy the traffic meets.
    fn enforcing(&self) -> Enforcing {
        let got = |i: usize| self.servers.udp_received[i].load(Ordering::Relaxed);
        let before = [got(0), got(1), got(2)];
        for dst in [SIP, SNMP, TURN] {
            udp_send(&self.lab.client, CLIENT.parse().unwrap(), sa(dst), 5).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        match (got(0) - before[0], got(1) - before[1], got(2) - before[2]) {
            (5, 5, 5) => Enforcing::Nothing,
            (5, 0, 0) => Enforcing::Old,
            (5, 5, 0) => Enforcing::New,
            (a, b, c) => Enforcing::Broken(a, b, c),
        }
    }

    fn spawn_faulty(&self, stage: &str) -> Daemon {
        Daemon::spawn_bin(&fault_bin(), &self.lab.server, &self.site, &[SERVER_IF], &[], &[("DATAPLANE_FAULT", stage)])
    }

    /// A clean run takes over what is enforcing and enforces `want`; SIGTERM then leaves nothing.
    fn restart_and_stop(&self, want: Enforcing, what: &str) {
        let d = Daemon::start(&self.lab.server, &self.site);
        assert_eq!(self.enforcing(), want, "{what}: the next run enforces the site");
        assert!(d.stop().success());
        assert_eq!(self.enforcing(), Enforcing::Nothing, "{what}: a clean stop detaches");
        assert!(!Path::new("/sys/fs/bpf/dataplane").exists(), "{what}: a clean stop unpins everything");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Whatever a failed assertion left behind.
        let _ = std::fs::remove_dir_all("/sys/fs/bpf/dataplane");
        let _ = std::fs::remove_file("/run/dataplane/state.json");
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn killed(d: &mut Daemon, stage: &str) {
    let status =
        d.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("{stage}: the daemon did not reach its fault point"));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{stage}: killed, not exited ({status})");
    assert!(d.wait_log(&format!("DATAPLANE_FAULT: killed at {stage}")), "{stage}: the fault point was reached");
}

#[test]
fn killed_at_every_stage_of_start_up() {
    let rig = Rig::new("dpt-fs");
    // Before the first link exists nothing enforces yet (there was no old policy); from the XDP
    // attachment on, the whole policy does, and stays after the kill.
    let stages = [
        ("start:prepared", Enforcing::Nothing),
        ("start:loaded", Enforcing::Nothing),
        ("start:recorded", Enforcing::Nothing),
        ("start:attached-xdp", Enforcing::Old),
        ("start:attached", Enforcing::Old),
    ];
    for (stage, want) in stages {
        let mut d = rig.spawn_faulty(stage);
        killed(&mut d, stage);
        assert_eq!(rig.enforcing(), want, "{stage}: after the kill");
        rig.restart_and_stop(Enforcing::Old, stage);
    }
}

#[test]
fn the_production_binary_has_no_fault_points() {
    let rig = Rig::new("dpt-fp");
    let d = Daemon::spawn(&rig.lab.server, &rig.site, &[], &[("DATAPLANE_FAULT", "start:loaded")]);
    let status = d.status.recv_timeout(Duration::from_secs(20)).expect("no status line: the hook killed the production run");
    assert!(status.starts_with("veth-s: enforcing"), "{status}");
    assert_eq!(rig.enforcing(), Enforcing::Old);
    assert!(d.stop().success());
}

#[test]
fn killed_at_every_stage_of_a_reload() {
    let rig = Rig::new("dpt-fr");
    // A reload writes the new image into the image map not in force, then switches to it.
    let stages = [("reload:compiled", Enforcing::Old), ("reload:written", Enforcing::Old), ("reload:switched", Enforcing::New)];
    for (stage, want) in stages {
        rig.write(false);
        let mut d = rig.spawn_faulty(stage);
        assert!(d.status.recv_timeout(Duration::from_secs(20)).is_ok(), "{stage}: started");
        assert_eq!(rig.enforcing(), Enforcing::Old, "{stage}: before the reload");
        rig.write(true);
        unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
        killed(&mut d, stage);
        assert_eq!(rig.enforcing(), want, "{stage}: after the kill");
        rig.restart_and_stop(Enforcing::New, stage);
    }
}

#[test]
fn state_from_another_version_is_taken_over_with_new_maps() {
    let rig = Rig::new("dpt-fv");
    let mut d = rig.spawn_faulty("start:attached");
    killed(&mut d, "start:attached");
    assert_eq!(rig.enforcing(), Enforcing::Old);
    // What an older dataplane would have left: a state file of another format.
    let state = "/run/dataplane/state.json";
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    v["format"] = 0.into();
    std::fs::write(state, v.to_string()).unwrap();
    rig.write(true);
    let d = Daemon::start(&rig.lab.server, &rig.site);
    assert!(d.wait_log("from another version: taking over the links"), "says why the counters restart");
    assert_eq!(rig.enforcing(), Enforcing::New, "the new run took the links over");
    assert!(d.stop().success());
    assert_eq!(rig.enforcing(), Enforcing::Nothing);
}

#[test]
fn the_interface_going_down_and_up_keeps_the_policy() {
    let rig = Rig::new("dpt-fd");
    let d = Daemon::start(&rig.lab.server, &rig.site);
    assert_eq!(rig.enforcing(), Enforcing::Old);
    let link = |state: &str| ip(&["-n", &rig.lab.server, "link", "set", "veth-s", state]).unwrap();
    link("down");
    std::thread::sleep(Duration::from_millis(200));
    link("up");
    // veth carries traffic once both ends are up again.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.enforcing(), Enforcing::Old, "still enforcing after down and up");
    assert!(d.stop().success());
}

#[test]
fn an_interface_removed_and_created_again_gets_the_policy_back() {
    let rig = Rig::new("dpt-fi");
    let d = Daemon::start(&rig.lab.server, &rig.site);
    assert_eq!(rig.enforcing(), Enforcing::Old);
    let (s, c) = (rig.lab.server.as_str(), rig.lab.client.as_str());
    // Removing one end of a veth pair removes both.
    ip(&["-n", s, "link", "del", "veth-s"]).unwrap();
    assert!(d.wait_log("veth-s: the interface is gone"), "the removal is logged");
    // A reload meanwhile succeeds, for the interfaces there are.
    rig.write(true);
    assert!(d.wait_log("reloaded"), "reloads without the interface");
    ip(&["link", "add", "veth-c", "netns", c, "type", "veth", "peer", "name", "veth-s", "netns", s]).unwrap();
    for (ns, ifname, addr) in [(c, "veth-c", format!("{CLIENT}/24")), (s, "veth-s", "10.202.0.1/24".to_string())] {
        ip(&["-n", ns, "addr", "add", &addr, "dev", ifname]).unwrap();
        ip(&["-n", ns, "link", "set", ifname, "up"]).unwrap();
    }
    assert!(d.wait_log("veth-s: the interface is back"), "the return is logged");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.enforcing(), Enforcing::New, "the running (reloaded) policy is attached again");
    assert!(d.stop().success());
    assert_eq!(rig.enforcing(), Enforcing::Nothing);
}

/// The counter maps are sized at start with room to grow; a reload that needs more slots than
/// that is refused, says why, and leaves the running policy enforcing.
#[test]
fn a_reload_past_the_counter_maps_is_refused() {
    use serde_yaml::Value;
    let rig = Rig::new("dpt-fc");
    // A catalog directory with the real VCS catalog and a synthetic one of 400 flows.
    let dir = rig.dir.join("big");
    let synthetic_site = dataplane::policy::synth::write_synthetic(&dir, 400, 50, 7).unwrap();
    std::fs::copy(root().join("policies/catalog/vcs-x8.2.yaml"), dir.join("catalog/vcs-x8.2.yaml")).unwrap();
    // --force: the synthetic roles have no management flow for the lockout guard to find.
    let catalogs = dir.join("catalog");
    let mut d = Daemon::spawn(&rig.lab.server, &rig.site, &["--force"], &[("DATAPLANE_CATALOG_DIR", catalogs.to_str().unwrap())]);
    assert!(d.status.recv_timeout(Duration::from_secs(20)).is_ok(), "started");
    assert_eq!(rig.enforcing(), Enforcing::Old);
    // The site with the synthetic catalog's roles and flows added.
    let mut site: Value = serde_yaml::from_str(&rig.old).unwrap();
    let extra: Value = serde_yaml::from_str(&std::fs::read_to_string(&synthetic_site).unwrap()).unwrap();
    site["catalogs"].as_sequence_mut().unwrap().push("synthetic".into());
    for (k, v) in extra["roles"].as_mapping().unwrap() {
        site["roles"].as_mapping_mut().unwrap().insert(k.clone(), v.clone());
    }
    site["protect"].as_sequence_mut().unwrap().extend(extra["protect"].as_sequence().unwrap().iter().cloned());
    std::fs::write(&rig.site, serde_yaml::to_string(&site).unwrap()).unwrap();
    let failure = d.wait_log_line("failed, the previous policy keeps enforcing").expect("the reload is refused");
    assert!(failure.contains("this run made room for: restart dataplane run"), "{failure}");
    assert_eq!(rig.enforcing(), Enforcing::Old, "the running policy stays");
    assert!(d.wait_exit(Duration::from_millis(10)).is_none(), "still running");
}

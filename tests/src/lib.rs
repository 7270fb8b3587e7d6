//! Helpers for the tests that need a real kernel: crafted frames through BPF_PROG_TEST_RUN, and
//! network namespaces joined by a veth pair for real traffic.

pub mod bench_object;
pub mod daemon;
pub mod flood;
pub mod fuzz;
pub mod packet;
pub mod rng;
pub mod twin;

use anyhow::{Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use dataplane::{
    compile::tables::{Outbound, Tables},
    kernel::{images::ImageMaps, load},
    observe::counters::Counters,
};
use dataplane_common::{Counter, Reason};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The real XDP program loaded with `tables`, run on crafted frames.
pub struct Harness {
    pub ebpf: Ebpf,
    /// Its policy images and run config (a reload's swap).
    pub images: ImageMaps,
}

impl Harness {
    pub fn new(tables: &Tables) -> Result<Self> {
        let load::Object { ebpf, images } = load::load(tables)?;
        Ok(Self { ebpf, images })
    }

    /// Runs one frame through the program; returns the XDP action.
    pub fn run(&mut self, frame: &[u8]) -> Result<u32> {
        let prog = load::program(&mut self.ebpf)?;
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok(r.return_value)
    }

    /// Runs one frame `repeat` times through the program in one BPF_PROG_TEST_RUN (on the
    /// calling thread's CPU); returns the XDP action of the last run.
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<u32> {
        let prog = load::program(&mut self.ebpf)?;
        let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
        Ok(prog.test_run(opts).context("BPF_PROG_TEST_RUN")?.return_value)
    }

    /// Runs one frame through the tc egress program (what a protected server sends); returns
    /// the tc action.
    pub fn run_egress(&mut self, frame: &[u8]) -> Result<u32> {
        let prog = load::egress(&mut self.ebpf)?;
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        Ok(prog.test_run(opts).context("BPF_PROG_TEST_RUN (egress)")?.return_value)
    }

    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters::read(&self.ebpf)?)
    }

    /// Runs a frame and returns the action and which reason and flow counters moved.
    pub fn observe(&mut self, frame: &[u8]) -> Result<Observed> {
        let before = self.counters()?;
        let action = self.run(frame)?;
        let after = self.counters()?;
        let moved = |a: &[Counter], b: &[Counter]| -> Vec<usize> {
            a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i).collect()
        };
        let reasons = moved(&before.reasons, &after.reasons).into_iter().map(|i| Reason::ALL[i]).collect();
        Ok(Observed {
            action,
            reasons,
            flows: moved(&before.flows, &after.flows),
            reply_flows: moved(&before.reply_flows, &after.reply_flows),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Observed {
    pub action: u32,
    pub reasons: Vec<Reason>,
    pub flows: Vec<usize>,
    /// Outbound flow slots whose reply counter moved.
    pub reply_flows: Vec<usize>,
}

/// A small hand-built policy: 10.0.0.1 and fd00::1 are protected; any source may reach TCP 80
/// (flow slot 0) and UDP 5000-5001 (slot 1). For parser tests that do not need a catalog.
pub fn simple_tables() -> Tables {
    let dir = direction(
        [cidr("10.0.0.1/32"), cidr("fd00::1/128")],
        [cidr("0.0.0.0/0"), cidr("::/0")],
        [(6, 80, 80, 0), (17, 5000, 5001, 1)],
    );
    Tables {
        flows: vec![flow("web", "tcp", "any", "server"), flow("media", "udp", "any", "server")],
        dir,
        outbound: Some(simple_outbound()),
        config: dataplane_common::Config {
            generation: 1,
            ct_tcp_established: 3600,
            ct_tcp_transitory: 60,
            ct_udp: 60,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Outbound part of `simple_tables`: the protected servers (10.0.0.1, fd00::1) may query DNS
/// (UDP 53, outbound slot 0) and LDAP (TCP 389, slot 1) on 192.0.2.0/24 and 2001:db8::/32.
pub fn simple_outbound() -> Outbound {
    let dir = direction(
        [cidr("192.0.2.0/24"), cidr("2001:db8::/32")],
        [cidr("10.0.0.1/32"), cidr("fd00::1/128")],
        [(17, 53, 53, 0), (6, 389, 389, 1)],
    );
    Outbound { flows: vec![flow("dns", "udp", "server", "peer"), flow("ldap", "tcp", "server", "peer")], dir }
}

fn cidr(s: &str) -> dataplane::policy::Cidr {
    dataplane::policy::Cidr::parse(s).expect("a CIDR")
}

fn flow(id: &str, proto: &str, from: &str, to: &str) -> dataplane::compile::tables::FlowInfo {
    dataplane::compile::tables::FlowInfo {
        id: id.into(),
        catalog: "test".into(),
        from: from.into(),
        to: to.into(),
        protocol: dataplane::policy::Proto::parse(proto).expect("tcp or udp"),
        action: dataplane::policy::Action::Allow,
        description: String::new(),
        document: String::new(),
        table: String::new(),
    }
}

/// One destination class (`dst`, IPv4 and IPv6) reached from `src` by one policy: per
/// (protocol, first port, last port, slot) a port table.
fn direction(
    dst: [dataplane::policy::Cidr; 2],
    src: [dataplane::policy::Cidr; 2],
    ports: [(u8, u16, u16, u32); 2],
) -> dataplane::compile::tables::DirectionTables {
    use dataplane::compile::tables::{ClassRecord, DirectionTables, PortTable, PortValue};
    let table = |(_, a, b, slot): (u8, u16, u16, u32)| {
        let mut t = PortTable { starts: vec![0, a], values: vec![PortValue::NoFlow, PortValue::Flow { slot, deny: false }] };
        if b < u16::MAX {
            t.starts.push(b + 1);
            t.values.push(PortValue::NoFlow);
        }
        t
    };
    let tcp = ports.iter().position(|p| p.0 == 6).map(|i| i as u32);
    let udp = ports.iter().position(|p| p.0 == 17).map(|i| i as u32);
    DirectionTables {
        dst_v4: vec![(dst[0], 1)],
        dst_v6: vec![(dst[1], 1)],
        classes: vec![ClassRecord { src_v4: 0, src_v6: 1 }],
        src: vec![vec![(src[0], 1)], vec![(src[1], 1)]],
        policies: vec![[tcp, udp]],
        ports: ports.map(table).to_vec(),
        filter: ports.iter().map(|&(p, a, b, _)| (p, a, b)).collect(),
    }
}

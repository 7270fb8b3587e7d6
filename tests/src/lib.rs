//! Helpers for the tests that need a real kernel: crafted frames through BPF_PROG_TEST_RUN, and
//! network namespaces joined by a veth pair for real traffic.

pub mod daemon;
pub mod fuzz;
pub mod packet;
pub mod rng;
pub mod twin;

use anyhow::{Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use dataplane::{load, tables::Tables};
use dataplane_common::{Counter, Reason};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The real XDP program loaded with `tables`, run on crafted frames.
pub struct Harness {
    pub ebpf: Ebpf,
}

impl Harness {
    pub fn new(tables: &Tables) -> Result<Self> {
        Ok(Self { ebpf: load::load(tables)? })
    }

    /// Runs one frame through the program; returns the XDP action.
    pub fn run(&mut self, frame: &[u8]) -> Result<u32> {
        let prog = load::program(&mut self.ebpf)?;
        let mut opts = TestRunOptions::default();
        opts.data_in = Some(frame);
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok(r.return_value)
    }

    /// Runs one frame through the tc egress program (what a protected server sends); returns
    /// the tc action.
    pub fn run_egress(&mut self, frame: &[u8]) -> Result<u32> {
        let prog = load::egress(&mut self.ebpf)?;
        let mut opts = TestRunOptions::default();
        opts.data_in = Some(frame);
        Ok(prog.test_run(opts).context("BPF_PROG_TEST_RUN (egress)")?.return_value)
    }

    pub fn counters(&self) -> Result<load::Counters> {
        load::Counters::read(&self.ebpf)
    }

    /// Runs a frame and returns the action and which reason and flow counters moved.
    pub fn observe(&mut self, frame: &[u8]) -> Result<Observed> {
        let before = self.counters()?;
        let action = self.run(frame)?;
        let after = self.counters()?;
        let moved = |a: &[Counter], b: &[Counter]| -> Vec<usize> {
            a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i).collect()
        };
        let reasons = moved(&before.reasons, &after.reasons)
            .into_iter()
            .map(|i| Reason::ALL[i])
            .collect();
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
    use dataplane::tables::{FlowInfo, LpmEntry};
    use dataplane_common::{PairKey, PortKey, PORT_KEY_FIXED_BITS};
    let flow = |id: &str, proto: &str| FlowInfo {
        id: id.into(),
        catalog: "test".into(),
        from: "any".into(),
        to: "server".into(),
        protocol: proto.into(),
        action: "allow".into(),
        description: String::new(),
        document: String::new(),
        table: String::new(),
    };
    let mut v6 = [0u8; 16];
    v6[0] = 0xfd;
    v6[15] = 1;
    Tables {
        flows: vec![flow("web", "tcp"), flow("media", "udp")],
        src_v4: vec![LpmEntry { prefix_len: 0, key: [0; 4], value: 1 }],
        src_v6: vec![LpmEntry { prefix_len: 0, key: [0; 16], value: 1 }],
        dst_v4: vec![LpmEntry { prefix_len: 32, key: [10, 0, 0, 1], value: 1 }],
        dst_v6: vec![LpmEntry { prefix_len: 128, key: v6, value: 1 }],
        pairs: vec![(PairKey { src_class: 1, dst_class: 1 }, 7)],
        ports: vec![
            LpmEntry { prefix_len: PORT_KEY_FIXED_BITS + 16, key: PortKey::new(7, 6, 80), value: 0 },
            LpmEntry { prefix_len: PORT_KEY_FIXED_BITS + 15, key: PortKey::new(7, 17, 5000), value: 1 },
        ],
        sports: vec![],
        outbound: Some(Box::new(simple_outbound())),
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
pub fn simple_outbound() -> Tables {
    use dataplane::tables::{FlowInfo, LpmEntry};
    use dataplane_common::{PairKey, PortKey, PORT_KEY_FIXED_BITS};
    let flow = |id: &str, proto: &str| FlowInfo {
        id: id.into(),
        catalog: "test".into(),
        from: "server".into(),
        to: "peer".into(),
        protocol: proto.into(),
        action: "allow".into(),
        description: String::new(),
        document: String::new(),
        table: String::new(),
    };
    let mut server6 = [0u8; 16];
    server6[0] = 0xfd;
    server6[15] = 1;
    Tables {
        flows: vec![flow("dns", "udp"), flow("ldap", "tcp")],
        src_v4: vec![LpmEntry { prefix_len: 32, key: [10, 0, 0, 1], value: 1 }],
        src_v6: vec![LpmEntry { prefix_len: 128, key: server6, value: 1 }],
        dst_v4: vec![LpmEntry { prefix_len: 24, key: [192, 0, 2, 0], value: 1 }],
        dst_v6: vec![LpmEntry { prefix_len: 32, key: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], value: 1 }],
        pairs: vec![(PairKey { src_class: 1, dst_class: 1 }, 3)],
        ports: vec![
            LpmEntry { prefix_len: PORT_KEY_FIXED_BITS + 16, key: PortKey::new(3, 17, 53), value: 0 },
            LpmEntry { prefix_len: PORT_KEY_FIXED_BITS + 16, key: PortKey::new(3, 6, 389), value: 1 },
        ],
        ..Default::default()
    }
}

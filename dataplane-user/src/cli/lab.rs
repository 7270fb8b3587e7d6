//! `dataplane lab`: the built-in lab (`lab`).

use std::path::PathBuf;

use anyhow::Result;

use crate::lab::{self, Topology};

#[derive(clap::Args)]
pub struct LabArgs {
    /// Site to enforce (default: policies/sites/lab.yaml).
    #[arg(long)]
    pub site: Option<PathBuf>,
    /// Rounds of traffic, with the counters printed after each.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The server behind a gateway: client, gateway and server namespaces, enforcing on the
    /// gateway (default site: policies/sites/lab-gateway.yaml).
    #[arg(long)]
    pub gateway: bool,
    /// With --gateway: the program on both gateway interfaces, forwarding the allowed packets in
    /// XDP (`run --forward`).
    #[arg(long, requires = "gateway")]
    pub forward: bool,
}

impl Default for LabArgs {
    fn default() -> Self {
        Self { site: None, rounds: 3, gateway: false, forward: false }
    }
}

pub fn lab(a: LabArgs) -> Result<()> {
    let topology = match (a.gateway, a.forward) {
        (false, _) => Topology::Direct,
        (true, forward) => Topology::Gateway { forward },
    };
    lab::lab(a.site, a.rounds, topology)
}

//! A policy compiled once and judging tuples the way the kernel does (the same compiler, the same
//! walk over the same image), both ways: `explain` prints its answers, and `diff` and `suggest`
//! reason with them, so whatever they claim about a tuple, `explain` on it agrees.

use dataplane_common::walk::Verdict;
use dataplane_common::Reason;

use super::verdict::{Answer, Direction, Explained, Outcome, Why};
use super::{Classifier, Probe};
use crate::compile::{
    tables::{FlowInfo, Tables},
    CompileError,
};
use crate::policy::{Policy, SourcePorts};

/// The compiled tables of a policy and a classifier per direction.
pub struct Judge {
    pub tables: Tables,
    inbound: Classifier,
    /// None when no flow starts at a protected role: no connection is tracked.
    outbound: Option<Classifier>,
}

impl Judge {
    /// Compiles `p`.
    pub fn new(p: &Policy) -> Result<Judge, CompileError> {
        Ok(Judge::of(crate::compile::compile(p)?))
    }

    /// Judges with tables already compiled.
    pub fn of(tables: Tables) -> Judge {
        Judge { inbound: Classifier::new(&tables), outbound: Classifier::new_outbound(&tables), tables }
    }

    /// The walk's verdict on a packet going `dir`.
    pub fn decide(&self, dir: Direction, p: &Probe) -> Verdict {
        match (dir, &self.outbound) {
            (Direction::In, _) => self.inbound.classify(p),
            (Direction::Out, Some(c)) => c.classify_outbound(p),
            (Direction::Out, None) => Verdict::new(Reason::DropNoFlow),
        }
    }

    /// The flow a slot of this direction counts.
    pub fn info(&self, dir: Direction, slot: Option<usize>) -> Option<&FlowInfo> {
        let flows = match dir {
            Direction::In => &self.tables.flows,
            Direction::Out => &self.tables.outbound.as_ref()?.flows,
        };
        flows.get(slot?)
    }

    /// `explain`'s answer (reason `outbound` for a connection an outbound flow documents).
    pub fn answer(&self, dir: Direction, p: &Probe) -> Answer {
        self.explain(dir, p).answer
    }

    /// `explain`'s whole line for a packet, with what the site's settings of `policy` (the policy
    /// these tables were compiled from) add: `source-ports` and the exceptions of bindings.
    pub fn explain_in<'a>(&'a self, policy: &Policy, dir: Direction, p: &Probe) -> Explained<'a> {
        let mut e = self.explain(dir, p);
        e.source_ports = policy.source_ports;
        e.src_excepted = policy.excepted(p.src);
        e.dst_excepted = policy.excepted(p.dst);
        e
    }

    /// `explain`'s whole line for a packet.
    pub fn explain(&self, dir: Direction, p: &Probe) -> Explained<'_> {
        let v = self.decide(dir, p);
        let info = self.info(dir, v.flow());
        let reason = match (dir, v.action()) {
            (Direction::Out, crate::policy::Action::Allow) => Why::Outbound,
            _ => Why::Reason(v.reason),
        };
        Explained {
            answer: Answer { verdict: v.action(), flow: info.map(|f| f.id.clone()), reason, key: info.map(FlowInfo::key) },
            slot: v.flow(),
            catalog: info.map(|f| f.catalog.as_str()),
            description: info.map(|f| f.description.as_str()),
            direction: dir,
            source_ports: SourcePorts::default(),
            src_excepted: Vec::new(),
            dst_excepted: Vec::new(),
        }
    }
}

//! One vocabulary for a verdict, from the walk to the JSON. The kernel's walk answers a
//! [`walk::Verdict`] (a [`Reason`] and a counter slot); userspace reads it through [`Outcome`]
//! (the [`Action`] and the credited flow), and `explain`, `diff` and `suggest` print it as an
//! [`Answer`]. Every name printed comes from these types' serde derives, never from a string
//! compared by hand.

use std::fmt;

use dataplane_common::walk::{self, NO_SLOT};
use dataplane_common::Reason;
use serde::{Serialize, Serializer};

pub use crate::policy::{Action, Direction};
use crate::policy::{Excepted, FlowKey, SourcePorts};

/// What a walk's verdict means in userspace, where no reply slot occurs (nothing is tracked).
pub trait Outcome {
    /// Allow, unless the reason drops.
    fn action(&self) -> Action;
    /// The credited flow's slot (an index into the direction's `flows`).
    fn flow(&self) -> Option<usize>;
    /// Whether the packet passes.
    fn allows(&self) -> bool {
        self.action() == Action::Allow
    }
}

impl Outcome for walk::Verdict {
    fn action(&self) -> Action {
        if self.reason.is_drop() {
            Action::Deny
        } else {
            Action::Allow
        }
    }

    fn flow(&self) -> Option<usize> {
        (self.slot != NO_SLOT).then_some(self.slot as usize)
    }
}

/// A walk verdict credited to `flow` (None: to no flow).
pub fn verdict(reason: Reason, flow: Option<usize>) -> walk::Verdict {
    walk::Verdict { reason, slot: flow.map_or(NO_SLOT, |s| s as u32) }
}

/// What the program does with a packet, as `stats` and the metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAction {
    Pass,
    Drop,
}

impl XdpAction {
    /// The action a reason takes (monitor mode aside: it passes what it counts as a drop).
    pub const fn of(r: Reason) -> XdpAction {
        if r.is_drop() {
            XdpAction::Drop
        } else {
            XdpAction::Pass
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            XdpAction::Pass => "pass",
            XdpAction::Drop => "drop",
        }
    }
}

impl fmt::Display for XdpAction {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Why `explain` answers as it does: the kernel's reason, or, for a packet a protected server
/// sends, an outbound flow that documents it (the connection is tracked, its replies admitted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Reason(Reason),
    Outbound,
}

impl Why {
    /// The name printed: the reason's (`stats`, metrics and events use the same), or `outbound`.
    pub const fn name(self) -> &'static str {
        match self {
            Why::Reason(r) => r.name(),
            Why::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Why {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A reason as JSON: its name.
pub fn serialize_reason<S: Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.name())
}

/// The drop reason of this name (a drop event's `reason`); None for a name no drop has.
pub fn drop_reason(name: &str) -> Option<Reason> {
    Reason::ALL.into_iter().find(|r| r.is_drop() && r.name() == name)
}

/// What `explain` answers for a tuple: verdict, credited flow, reason. `diff` prints it for both
/// sides of a tuple whose verdict flips.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub verdict: Action,
    /// The credited flow's id.
    pub flow: Option<String>,
    pub reason: Why,
    /// The credited flow's identity across policies.
    #[serde(skip)]
    pub key: Option<FlowKey>,
}

/// One line of `explain` output: the answer, with the credited flow's slot, catalog and
/// description, and `"direction": "out"` for a packet a protected server sends.
#[derive(Serialize)]
pub struct Explained<'a> {
    #[serde(flatten)]
    pub answer: Answer,
    pub slot: Option<usize>,
    pub catalog: Option<&'a str>,
    pub description: Option<&'a str>,
    #[serde(skip_serializing_if = "Direction::is_in")]
    pub direction: Direction,
    /// `"source_ports": "any"` when the site's `source-ports: any` is in force (no flow's
    /// documented source ports were checked); absent as documented.
    #[serde(skip_serializing_if = "SourcePorts::is_documented")]
    pub source_ports: SourcePorts,
    /// Roles bound with exceptions whose `cidrs` hold the source (destination) but whose
    /// exceptions leave it out, and the exception that does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub src_excepted: Vec<Excepted>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dst_excepted: Vec<Excepted>,
}

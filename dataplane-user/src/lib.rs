//! The controller of the XDP enforcement dataplane. A site goes down the folders in order:
//!
//! - [`policy`]: catalogs and sites read, validated and resolved into a [`policy::Policy`].
//! - [`compile`]: the policy compiled into tables and the policy image the kernel walks.
//! - [`classify`]: the same walk in userspace (`explain`), and what judges tuples with it
//!   (`diff`, `suggest`, the lockout guard).
//! - [`kernel`]: the XDP object loaded, its maps, attaching, pins and the state file.
//! - [`daemon`]: `dataplane run`: enforcing, reloading, watching.
//! - [`observe`]: counters, `stats`, Prometheus metrics, drop events.
//! - [`export`]: the policy as an nftables ruleset.
//! - [`cli`]: the subcommands; [`lab`]: the built-in lab (namespaces, veth, traffic).
//!
//! The packet parser and the classifier walk the kernel runs are in `dataplane-common`.

pub mod classify;
pub mod cli;
pub mod compile;
pub mod daemon;
pub mod export;
pub mod kernel;
pub mod lab;
pub mod observe;
pub mod policy;

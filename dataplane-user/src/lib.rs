//! The controller of the XDP enforcement dataplane. A site goes down the folders in order:
//!
//! - [`policy`]: catalogs and sites read, validated and resolved into a [`policy::Policy`].
//! - [`compile`]: the policy compiled into tables and the policy image the kernel walks.
//! - [`classify`]: the same walk in userspace, the reference evaluation, and the vocabulary of a
//!   verdict (`explain`'s answers and requests).
//! - [`kernel`]: the XDP object loaded, its maps, attaching, pins and the state file.
//! - [`observe`]: counters, `stats`, Prometheus metrics, drop events.
//! - [`rollout`]: `diff`, `suggest` and the lockout guard, which judge tuples with `classify`.
//! - [`daemon`]: `dataplane run`: enforcing, reloading, watching.
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
pub mod rollout;

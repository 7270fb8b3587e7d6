//! The controller: policy catalogs and sites, the compiler, the userspace classifier that
//! `explain` uses, and loading, running and reading the XDP program.

pub mod classify;
pub mod cli_policy;
pub mod compile;
pub mod diff;
pub mod events;
pub mod export;
pub mod fill;
pub mod forward;
pub mod gateway;
pub mod hash;
pub mod judge;
pub mod lab;
pub mod load;
pub mod lockout;
pub mod metrics;
pub mod netns;
pub mod persist;
pub mod policy;
pub mod run;
pub mod slots;
pub mod sources;
pub mod state;
pub mod stats;
pub mod suggest;
pub mod synth;
pub mod tables;

//! The controller: policy catalogs and sites, the compiler, the userspace classifier that
//! `explain` uses, and loading, running and reading the XDP program.

pub mod cli_policy;
pub mod lab;
pub mod load;
pub mod run;
pub mod stats;
pub mod tables;

//! What the running dataplane reports: the counters read from its maps ([`counters`]), how full
//! its tables are ([`fill`]), `dataplane stats` ([`stats`]), the Prometheus endpoint
//! ([`metrics`]) and the drop events ([`events`]); what goes wrong reading them: [`ObserveError`].

pub mod counters;
pub mod error;
pub mod events;
pub mod fill;
pub mod metrics;
pub mod stats;

pub use error::ObserveError;

//! Why the running dataplane's maps could not be read, or its metrics served. Each variant prints
//! what was printed when these were strings; the cause stays as its source, so `{:#}` prints the
//! same chain.

use std::{net::SocketAddr, path::PathBuf};

use aya::maps::MapError;

use crate::kernel::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// No map pinned there: no run, or a run of another version.
    #[error("opening pinned map {}", path.display())]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// The drop events' ring buffer is not pinned.
    #[error("opening {}", path.display())]
    OpenEvents {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("map {0} missing from the XDP object")]
    MissingMap(String),
    /// A counter map missing from a loaded object.
    #[error("map {0} missing")]
    MissingCounters(String),
    #[error("{0} is not a hash map")]
    NotHashMap(String),
    #[error("reading a map's size")]
    MapSize(#[source] MapError),
    #[error("reading a map's key and value sizes")]
    KeyValueSizes(#[source] MapError),
    #[error("BPF_MAP_LOOKUP_BATCH")]
    LookupBatch(#[source] std::io::Error),
    #[error("counting the entries of {name}")]
    CountEntries {
        name: String,
        #[source]
        source: Box<ObserveError>,
    },
    #[error("reading a per-CPU counter")]
    ReadCounter(#[source] MapError),
    /// A map of another type, or a failed read of it.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The state file (`dataplane events`).
    #[error(transparent)]
    State(#[from] StateError),
    /// The metrics address is taken or not this host's.
    #[error("metrics: listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The listener or the runtime serving it.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The encoder failed with no error of the maps' (it gives no message of its own).
    #[error("encoding the metrics failed")]
    Encode,
    #[error("scrape task")]
    ScrapeTask(#[source] tokio::task::JoinError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:#}` prints each context, then the cause, as the `anyhow` contexts did.
    #[test]
    fn nested_causes_print_in_order() {
        let e = ObserveError::CountEntries {
            name: "FLOW_V4".into(),
            source: Box::new(ObserveError::LookupBatch(std::io::Error::from_raw_os_error(libc::EPERM))),
        };
        assert_eq!(e.to_string(), "counting the entries of FLOW_V4");
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "counting the entries of FLOW_V4: BPF_MAP_LOOKUP_BATCH: Operation not permitted (os error 1)"
        );
        let e = ObserveError::Listen { addr: "127.0.0.1:9".parse().unwrap(), source: std::io::ErrorKind::AddrInUse.into() };
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "metrics: listening on 127.0.0.1:9: address in use");
        assert_eq!(ObserveError::MissingCounters("REASONS".into()).to_string(), "map REASONS missing");
    }
}

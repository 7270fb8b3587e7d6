//! `dataplane events`: follows the drop events of the running dataplane (a ring buffer the
//! program fills, rate-limited per CPU), each with the flow that came nearest to allowing it.

use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{Map, MapData, RingBuf};
use dataplane_common::{DropEvent, Reason};
use serde::Serialize;

use crate::{
    kernel::{maps::MAP_DROP_EVENTS, pins, state},
    policy::Policy,
};

use super::ObserveError;

type Result<T, E = ObserveError> = std::result::Result<T, E>;

#[derive(Serialize)]
pub struct Event {
    /// Wall-clock time, seconds since the epoch.
    pub time: f64,
    pub interface: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// The drop's reason (`?` for a number this version does not know).
    #[serde(serialize_with = "reason_name")]
    pub reason: Option<Reason>,
    /// The deny flow that dropped it (`deny_flow`).
    pub flow: Option<String>,
    /// A flow in force to this destination, protocol and port: what the source lacked was the
    /// role (or the source port).
    pub nearest: Option<String>,
    /// Events the rate limit suppressed on that CPU before this one.
    pub suppressed: u32,
}

fn reason_name<S: serde::Serializer>(r: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.map_or("?", Reason::name))
}

fn addr(bytes: [u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(bytes)
    } else {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

fn interface(ifindex: u32) -> String {
    match nix::net::if_::if_indextoname(ifindex) {
        Ok(name) => name.to_string_lossy().into_owned(),
        // In another network namespace than this process.
        Err(_) => format!("ifindex {ifindex}"),
    }
}

/// The first flow in force to `dst` for this protocol and destination port.
fn nearest(policy: &Policy, dst: IpAddr, proto: u8, dport: u16) -> Option<String> {
    policy
        .flows
        .iter()
        .find(|f| f.proto == proto && f.dport.contains(dport) && policy.roles[f.to].cidrs.iter().any(|c| c.contains_ip(dst)))
        .map(|f| f.info.id.clone())
}

/// CLOCK_MONOTONIC (what bpf_ktime_get_ns counts) now, in nanoseconds.
fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

impl Event {
    fn new(e: &DropEvent, st: &state::StateFile, policy: Option<&Policy>) -> Self {
        let (src, dst) = (addr(e.src, e.v6 != 0), addr(e.dst, e.v6 != 0));
        let age = Duration::from_nanos(monotonic_ns().saturating_sub(e.time_ns));
        let time = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().saturating_sub(age);
        let reason = Reason::ALL.get(e.reason as usize).copied();
        Self {
            time: time.as_secs_f64(),
            interface: interface(e.ifindex),
            src,
            dst,
            proto: e.proto,
            sport: e.sport,
            dport: e.dport,
            reason,
            flow: st.flows.get(e.slot as usize).map(|f| f.id.clone()),
            nearest: policy.and_then(|p| nearest(p, dst, e.proto, e.dport)),
            suppressed: e.suppressed,
        }
    }

    pub fn render(&self) -> String {
        let mut line = format!(
            "{:.3} {} {} {}:{} -> {}:{} dropped: {}",
            self.time,
            self.interface,
            proto_name(self.proto),
            self.src,
            self.sport,
            self.dst,
            self.dport,
            self.reason.map_or("?", Reason::name)
        );
        if let Some(f) = &self.flow {
            line.push_str(&format!(" by {f}"));
        }
        if let Some(f) = &self.nearest {
            line.push_str(&format!("; nearest flow {f} (the source is not in its role, or not from its ports)"));
        }
        if self.suppressed > 0 {
            line.push_str(&format!(" [{} suppressed before]", self.suppressed));
        }
        line
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

/// Follows the drop events of the running dataplane from now on, handing each to `each` until
/// it returns false or `timeout` has passed (`dataplane events`, `dataplane suggest --follow`).
///
/// `each` may fail with an error of the caller's (writing the event out), which ends following.
pub fn follow<E: From<ObserveError>>(
    timeout: Option<Duration>,
    mut each: impl FnMut(&Event) -> Result<bool, E>,
) -> Result<(), E> {
    let st = state::StateFile::read().map_err(ObserveError::from)?;
    // Only for the nearest-flow hint: events are shown without it if the site no longer loads.
    let policy = st.files().read().ok().map(|l| l.policy);
    let path = pins::pin_path(MAP_DROP_EVENTS);
    let data = MapData::from_pin(&path).map_err(|source| ObserveError::OpenEvents { path, source })?;
    let mut ring: RingBuf<MapData> = RingBuf::try_from(Map::RingBuf(data)).map_err(ObserveError::from)?;
    // Follow from now on: what the ring holds from before is skipped.
    while ring.next().is_some() {}
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<DropEvent>() {
                continue;
            }
            // Safety: the program writes whole DropEvents; read unaligned from the ring.
            let e: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if !each(&Event::new(&e, &st, policy.as_ref()))? {
                return Ok(());
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! `run --forward`: the interfaces a frame forwarded in XDP may leave through (the program's
//! `FORWARD_PORTS` device map), and what the program did with the allowed packets it tried to
//! forward (`FORWARD_STATS`). See `dataplane-ebpf/src/forward.rs`.

use aya::{maps::DevMapHash, Ebpf};
use dataplane_common::forward::{FWD_STAT_COUNT, FWD_STAT_NAMES};

use crate::kernel::{
    maps::{MAP_FORWARD_PORTS, MAP_FORWARD_STATS},
    KernelError,
};

/// Puts the interfaces of `ifindex` (0: gone) in the device map. Run in the interfaces'
/// network namespace: the kernel resolves an index in the namespace of whoever writes it.
pub fn fill(ebpf: &mut Ebpf, ifindex: &[u32]) -> Result<(), KernelError> {
    let mut ports: DevMapHash<_> =
        DevMapHash::try_from(ebpf.map_mut(MAP_FORWARD_PORTS).ok_or(KernelError::MissingForwardPorts)?)?;
    for &i in ifindex.iter().filter(|&&i| i != 0) {
        ports.insert(i, i, None, 0).map_err(|source| KernelError::ForwardPort { ifindex: i, source })?;
    }
    Ok(())
}

/// Packets per forwarding outcome, summed over CPUs, from the pinned map (None: no run pinned
/// one, or a program without forwarding).
pub fn read_pinned() -> Option<Vec<(&'static str, u64)>> {
    let path = crate::kernel::pins::pin_path(MAP_FORWARD_STATS);
    let data = aya::maps::MapData::from_pin(path).ok()?;
    let map = aya::maps::PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(data)).ok()?;
    let mut out = vec![];
    for i in 0..FWD_STAT_COUNT {
        let v = map.get(&i, 0).ok()?;
        out.push((FWD_STAT_NAMES[i as usize], v.iter().sum()));
    }
    Some(out)
}

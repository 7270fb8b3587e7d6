//! The bpf(2) commands aya 0.14 does not wrap, through aya-obj's bindings of the kernel's
//! `bpf_cmd` and `union bpf_attr`: a descriptor for a pinned link (BPF_OBJ_GET), detaching a link
//! at once (BPF_LINK_DETACH), and a hash map's entries a bucket at a time
//! (BPF_MAP_LOOKUP_BATCH).

use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// The kernel's ENOTSUPP (not in libc).
const ENOTSUPP: i32 = 524;

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // Safety: a whole `bpf_attr`, zeroed where the command does not set it; its pointers point
    // to buffers that outlive the call and are as large as the attributes say.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>() as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn zeroed() -> bpf_attr {
    // Safety: `bpf_attr` is plain integers; all zeroes is the kernel's "unset".
    unsafe { std::mem::zeroed() }
}

/// A descriptor for the object pinned at `path`.
pub fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut attr = zeroed();
    attr.__bindgen_anon_4.pathname = c.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // Safety: a descriptor the kernel just returned, ours to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches a link from its hook now, whoever else holds it (Linux 5.9).
pub fn link_detach(link: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut attr = zeroed();
    attr.link_detach.link_fd = link.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Entries asked for per batch (more when one hash bucket holds more).
const BATCH: usize = 4096;

/// Entries in a hash map (not per-CPU) now, with BPF_MAP_LOOKUP_BATCH (Linux 5.6): a few system
/// calls per 4096 entries, where a key-by-key walk costs one per entry and starts over when the
/// key it stands on is deleted meanwhile. Reading never touches an entry's LRU state.
pub fn count_entries(map: impl AsFd, key_size: usize, value_size: usize) -> std::io::Result<u64> {
    let fd = map.as_fd().as_raw_fd() as u32;
    let mut chunk = BATCH;
    let (mut keys, mut values) = (vec![0u8; key_size * chunk], vec![0u8; value_size * chunk]);
    // The batch position (a bucket number for hash maps); none: from the start.
    let (mut at, mut next) = (None::<[u8; 8]>, [0u8; 8]);
    let mut total = 0u64;
    loop {
        let mut attr = zeroed();
        // Safety: writing plain integers into the union's batch view.
        let batch = unsafe { &mut attr.batch };
        batch.in_batch = at.as_ref().map_or(0, |b| b.as_ptr() as u64);
        batch.out_batch = next.as_mut_ptr() as u64;
        batch.keys = keys.as_mut_ptr() as u64;
        batch.values = values.as_mut_ptr() as u64;
        batch.count = chunk as u32;
        batch.map_fd = fd;
        let r = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // Safety: the kernel writes the entries it returned into `count`, error or not.
        let count = u64::from(unsafe { attr.batch.count });
        match r.map_err(|e| e.raw_os_error().unwrap_or(0)) {
            Ok(_) => {
                total += count;
                at = Some(next);
            }
            // The last batch (possibly with entries).
            Err(libc::ENOENT) => return Ok(total + count),
            // One bucket holds more entries than asked for: ask for more.
            Err(libc::ENOSPC) if chunk < 1 << 20 => {
                chunk *= 4;
                keys.resize(key_size * chunk, 0);
                values.resize(value_size * chunk, 0);
            }
            Err(ENOTSUPP) => return Err(std::io::Error::other("BPF_MAP_LOOKUP_BATCH is not supported for this map")),
            Err(e) => return Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

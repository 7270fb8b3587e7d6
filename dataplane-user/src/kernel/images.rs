//! The maps the controller writes while the program runs, as typed handles taken out of the
//! object once after the load: the two policy images (`POLICY_A`, `POLICY_B`, mmapable arrays of
//! 2 MiB pages, written through a shared mapping) and the run config (`CONFIG`, whose `active`
//! says which image is in force). A reload writes the image not in force and switches `active`
//! with one store ([`Swap`]): nothing is loaded or verified again.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{Array, IterableMap, Map, MapData},
    Ebpf,
};
use dataplane_common::{image::PAGE_WORDS, RunConfig};

use crate::{
    compile::tables::Tables,
    kernel::{
        maps::{MAP_CONFIG, MAP_POLICY},
        pins, KernelError,
    },
};

type Result<T> = std::result::Result<T, KernelError>;

/// `POLICY_A`, `POLICY_B` and `CONFIG` of one loaded program.
pub struct ImageMaps {
    images: [MapData; 2],
    config: Array<MapData, RunConfig>,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).ok_or_else(|| KernelError::MissingMap(name.to_owned()))
}

fn array(map: Map, name: &'static str) -> Result<MapData> {
    match map {
        Map::Array(data) => Ok(data),
        _ => Err(KernelError::NotArray(name)),
    }
}

impl ImageMaps {
    /// Takes the maps out of a freshly loaded object (the programs keep their own references).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let images = [array(take(ebpf, MAP_POLICY[0])?, MAP_POLICY[0])?, array(take(ebpf, MAP_POLICY[1])?, MAP_POLICY[1])?];
        let config = Array::try_from(take(ebpf, MAP_CONFIG)?).map_err(KernelError::ConfigType)?;
        Ok(Self { images, config })
    }

    /// Pages image map `which` holds.
    fn pages(&self, which: usize) -> Result<usize> {
        self.images[which].info().map(|i| i.max_entries() as usize).map_err(|e| KernelError::MapSize(MAP_POLICY[which], e))
    }

    /// Copies a policy image into image map `which` through a shared mapping of it: one copy,
    /// however many words, where updates would take a system call per word.
    pub fn write_image(&mut self, which: usize, image: &[u64]) -> Result<()> {
        let room = self.pages(which)? * PAGE_WORDS;
        if image.len() > room {
            return Err(KernelError::ImageTooLarge { words: image.len(), map: MAP_POLICY[which], room });
        }
        let bytes = size_of_val(image);
        let mapping = Mapping::new(&self.images[which], bytes)?;
        // Safety: within the mapping, which is as long as the image.
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr() as *const u8, mapping.at as *mut u8, bytes) };
        Ok(())
    }

    pub fn run_config(&self) -> Result<RunConfig> {
        self.config.get(&0, 0).map_err(KernelError::ReadConfig)
    }

    pub fn write_run_config(&mut self, run: RunConfig) -> Result<()> {
        self.config.set(0, run, 0).map_err(KernelError::WriteConfig)
    }

    /// Writes a new policy's image into the image map not in force, without loading or verifying
    /// a program. None, changing nothing, when the image does not fit (the caller then loads a
    /// program with larger maps). The caller spaces swaps by more than a packet's time, so that
    /// no packet still walks the image being overwritten.
    pub fn write_inactive(&mut self, tables: &Tables) -> Result<Option<Swap>> {
        let image = tables.image();
        let next = (self.run_config()?.active == 0) as usize;
        if image.len() > self.pages(next)? * PAGE_WORDS {
            return Ok(None);
        }
        self.write_image(next, &image)?;
        Ok(Some(Swap { active: next as u32, generation: tables.config.generation }))
    }

    /// `write_inactive` then `commit`: true when the new policy is in force.
    pub fn swap_image(&mut self, tables: &Tables) -> Result<bool> {
        match self.write_inactive(tables)? {
            Some(swap) => swap.commit(self).map(|()| true),
            None => Ok(false),
        }
    }

    /// Pins the three maps (for inspection: nothing reads them back by pin).
    pub fn pin(&self) -> Result<()> {
        pins::replace_pin(MAP_POLICY[0], |p| self.images[0].pin(p))?;
        pins::replace_pin(MAP_POLICY[1], |p| self.images[1].pin(p))?;
        pins::replace_pin(MAP_CONFIG, |p| self.config.map().pin(p))
    }
}

/// A new policy written into the image map not in force, ready to be put in force.
#[must_use = "the written image is not in force until `commit`"]
pub struct Swap {
    active: u32,
    generation: u32,
}

impl Swap {
    /// Puts the written image in force with one 32-bit store of `RunConfig::active`: every packet
    /// (XDP and tc alike) reads it once, so it is judged wholly by the old image or the new one.
    pub fn commit(self, maps: &mut ImageMaps) -> Result<()> {
        let mapping = Mapping::new(maps.config.map(), size_of::<RunConfig>())?;
        // Safety: `active` is the first field of the RunConfig in the mapping, 4-byte aligned.
        let active = unsafe { &*(mapping.at as *const AtomicU32) };
        active.store(self.active, Ordering::SeqCst);
        drop(mapping);
        // The generation the run reports (not read per packet: a torn read of it harms nothing).
        let run = maps.run_config()?;
        maps.write_run_config(RunConfig { generation: self.generation, ..run })
    }
}

/// A shared mapping of the first `len` bytes of an mmapable array map, unmapped on drop.
struct Mapping {
    at: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(map: &MapData, len: usize) -> Result<Self> {
        let len = len.max(1);
        let fd = map.fd().as_fd().as_raw_fd();
        // Safety: a fresh shared mapping of the map's own memory.
        let at = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if at == libc::MAP_FAILED {
            return Err(KernelError::Mmap { len, source: std::io::Error::last_os_error() });
        }
        Ok(Mapping { at, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Safety: the mapping made in `new`.
        unsafe { libc::munmap(self.at, self.len) };
    }
}

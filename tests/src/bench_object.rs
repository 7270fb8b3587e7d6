//! The bench's eBPF object (`dataplane-bench`, dataplane-ebpf/src/bench/): the empty and floor
//! programs the cost bench times next to the product's, the live-frames injectors, count-and-drop
//! and count-and-pass. The object `dataplane` embeds holds only what enforces; the benches and
//! tests load this one beside it. Its path: `DATAPLANE_BENCH_OBJECT` (`cargo xtask` sets it),
//! else the eBPF crate's release build.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::{maps::PerCpuArray, programs::Xdp, Ebpf, EbpfLoader};

/// The XDP programs of the bench's object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// Passes everything: the empty program.
    Baseline,
    /// Parse, one 5-tuple hash lookup (`FLOOR_V4`, `FLOOR_V6`), one per-CPU counter.
    Floor,
    /// The live-frames injector of tests/src/bench/live.rs (configured through `BENCH_INJECT`).
    Inject,
    /// The gateway forwarding bench's injector (`BENCH_FWD`).
    ForwardInject,
    /// One per-CPU counter (`BENCH_COUNT` 0), then XDP_DROP.
    CountDrop,
    /// One per-CPU counter (`BENCH_COUNT` 1), then XDP_PASS.
    CountPass,
}

impl Program {
    pub const ALL: [Program; 6] =
        [Program::Baseline, Program::Floor, Program::Inject, Program::ForwardInject, Program::CountDrop, Program::CountPass];

    /// Its name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Program::Baseline => "baseline",
            Program::Floor => "floor",
            Program::Inject => "bench_inject",
            Program::ForwardInject => "bench_forward_inject",
            Program::CountDrop => "bench_drop",
            Program::CountPass => "bench_pass",
        }
    }
}

/// Where the object is: `DATAPLANE_BENCH_OBJECT`, else where `cargo xtask build` writes it.
pub fn path() -> PathBuf {
    std::env::var_os("DATAPLANE_BENCH_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataplane-ebpf/target/bpfel-unknown-none/release/dataplane-bench")
    })
}

/// The object loaded: its maps made, no program verified yet ([`program`] does it).
pub fn load() -> Result<Ebpf> {
    let path = path();
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading the bench's eBPF object {} (build it with `cargo xtask build`)", path.display()))?;
    EbpfLoader::new().load(&bytes).with_context(|| format!("loading {}", path.display()))
}

/// `program` of the loaded object, verified on first use.
pub fn program(ebpf: &mut Ebpf, program: Program) -> Result<&mut Xdp> {
    let name = program.name();
    let xdp: &mut Xdp =
        ebpf.program_mut(name).with_context(|| format!("XDP program {name} missing from the bench's object"))?.try_into()?;
    if xdp.fd().is_err() {
        xdp.load().with_context(|| format!("loading {name}"))?;
    }
    Ok(xdp)
}

/// Frames count-and-drop or count-and-pass counted so far, summed over the CPUs.
pub fn counted(ebpf: &Ebpf, program: Program) -> Result<u64> {
    let index: u32 = match program {
        Program::CountDrop => 0,
        Program::CountPass => 1,
        other => bail!("{} has no counter in BENCH_COUNT", other.name()),
    };
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map("BENCH_COUNT").context("BENCH_COUNT map")?)?;
    Ok(map.get(&index, 0)?.iter().sum())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use dataplane::kernel::load;

    use super::Program;

    /// The object the controller embeds (dataplane-user/build.rs reads the same variable).
    fn product_path() -> PathBuf {
        std::env::var_os("DATAPLANE_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataplane-ebpf/target/bpfel-unknown-none/release/dataplane")
        })
    }

    fn parse(path: &Path) -> aya_obj::Object {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e} (build it with `cargo xtask build`)", path.display()));
        aya_obj::Object::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// What `dataplane run` loads holds only what enforces: none of the bench's programs or maps.
    #[test]
    fn the_product_object_holds_nothing_of_the_bench() {
        let (product, bench) = (parse(&product_path()), parse(&super::path()));
        for p in Program::ALL {
            assert!(bench.programs.contains_key(p.name()), "{} missing from the bench's object", p.name());
        }
        let programs = bench.programs.keys().filter(|n| product.programs.contains_key(*n));
        // Sections such as `.rodata` are maps to aya too, one per object: not the bench's own.
        let maps = bench.maps.keys().filter(|n| !n.starts_with('.') && product.maps.contains_key(*n));
        let shared: Vec<&String> = programs.chain(maps).collect();
        assert!(shared.is_empty(), "the product's object holds the bench's {shared:?}");
        for p in [load::PROGRAM, load::EGRESS, load::CLOCK] {
            assert!(product.programs.contains_key(p), "{p} missing from the product's object");
        }
    }
}

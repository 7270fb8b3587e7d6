//! Embeds the eBPF object that `cargo xtask build` produced. Without it the controller still
//! builds (so the policy compiler can be tested alone), and says at run time what is missing.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DATAPLANE_EBPF_OBJECT");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = std::env::var_os("DATAPLANE_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../dataplane-ebpf/target/bpfel-unknown-none/release/dataplane"));
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("dataplane.bpf.o");
    let bytes = std::fs::read(&object).unwrap_or_default();
    std::fs::write(&out, bytes).expect("writing the embedded eBPF object");
}

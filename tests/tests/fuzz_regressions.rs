//! The fuzz targets' checks (`dataplane_tests::fuzz`) on stable, over their seeds and every
//! input that once made a target fail (`fuzz/regressions/<target>/`), so that a finding stays
//! fixed even where no nightly compiler runs the fuzzer.

use std::path::{Path, PathBuf};

use dataplane_tests::fuzz;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let Ok(rd) = std::fs::read_dir(&dir) else { return vec![] };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

fn replay(dirs: &[&str], check: fn(&[u8])) -> usize {
    let mut n = 0;
    for d in dirs {
        for f in files(d) {
            if f.file_name().is_some_and(|n| n == "README.md") {
                continue;
            }
            println!("{}", f.display());
            check(&std::fs::read(&f).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn site_inputs_load_or_fail_cleanly() {
    assert!(replay(&["policies/sites", "fuzz/regressions/site"], fuzz::site) >= 7);
}

#[test]
fn catalog_inputs_load_or_fail_cleanly() {
    assert!(replay(&["policies/catalog", "fuzz/regressions/catalog"], fuzz::catalog) >= 5);
}

#[test]
fn packet_inputs_agree_with_the_kernel() {
    assert!(replay(&["fuzz/seeds/packet", "fuzz/regressions/packet"], fuzz::packet) >= 10);
}

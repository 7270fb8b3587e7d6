#![no_main]
//! See `dataplane_tests::fuzz::catalog`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| dataplane_tests::fuzz::catalog(data));

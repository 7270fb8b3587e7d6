#![no_main]
//! See `dataplane_tests::fuzz::site`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| dataplane_tests::fuzz::site(data));

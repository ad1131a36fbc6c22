#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stowage_fuzz::plugin(data));

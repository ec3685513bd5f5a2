#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| newt_core::fuzzing::store_records(data));

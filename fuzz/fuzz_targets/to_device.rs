#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| newt_core::fuzzing::to_device(data));

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| newt_core::fuzzing::room_event_decryption(data));

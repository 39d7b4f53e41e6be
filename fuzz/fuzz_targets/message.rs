//! libFuzzer entry for [`wxgate_fuzz::message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxgate_fuzz::message(data));

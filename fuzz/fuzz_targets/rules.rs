//! libFuzzer entry for [`wxgate_fuzz::rules`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxgate_fuzz::rules(data));

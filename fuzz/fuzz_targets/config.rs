//! libFuzzer entry for [`wxgate_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxgate_fuzz::config(data));

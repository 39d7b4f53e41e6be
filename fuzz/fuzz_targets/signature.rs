//! libFuzzer entry for [`wxgate_fuzz::signature`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxgate_fuzz::signature(data));

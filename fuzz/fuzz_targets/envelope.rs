//! libFuzzer entry for [`wxgate_fuzz::envelope`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxgate_fuzz::envelope(data));

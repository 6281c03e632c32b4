#![no_main]

// The body lives in the harness so that the normal test run replays the corpus through the same code.
libfuzzer_sys::fuzz_target!(|data: &[u8]| upglobe_fuzz_harness::workflow(data));

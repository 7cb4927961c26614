#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    blindrelay_protocol::fuzz::punch(data);
});

//! JPEG decoding through `decode_bytes`: the SOI marker is forced so every input reaches the JPEG path.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = vec![0xFF, 0xD8, 0xFF];
    input.extend_from_slice(data.get(3..).unwrap_or_default());
    let _ = medpatch_engine::decode::decode_bytes(&input, "fuzz.jpg");
});

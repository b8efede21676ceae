//! PNG decoding through `decode_bytes`: the signature is forced so every input reaches the PNG path.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = b"\x89PNG\r\n\x1a\n".to_vec();
    input.extend_from_slice(data.get(8..).unwrap_or_default());
    let _ = medpatch_engine::decode::decode_bytes(&input, "fuzz.png");
});

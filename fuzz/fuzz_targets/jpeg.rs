//! JPEG decoding through `decode_bytes`: the SOI marker is forced so every input reaches the JPEG path.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Dependency panics that decode's guard catches become errors, which is the contract; the
    // panic hook of libfuzzer-sys would abort on them first. An escaping panic still aborts (it
    // cannot unwind into libFuzzer), so panics across the library boundary are still found.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let mut input = vec![0xFF, 0xD8, 0xFF];
    input.extend_from_slice(data.get(3..).unwrap_or_default());
    let _ = medpatch_decode::decode_bytes(&input, "fuzz.jpg");
});

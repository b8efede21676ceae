//! The exporter's weight reader: torch.save zip (pickle + tensor records) and safetensors.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medpatch_weights::weights::load_bytes(data, "fuzz.pt");
});

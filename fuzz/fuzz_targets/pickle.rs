//! The exporter's pickle parser alone (inside a torch zip, CRCs keep mutations from reaching it).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medpatch_weights::pickle::parse(data);
});

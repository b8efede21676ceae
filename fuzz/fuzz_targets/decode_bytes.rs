//! The whole decoding entry point, format sniffing included (bare DICOM data sets too).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medpatch_engine::decode::decode_bytes(data, "fuzz.dcm");
});

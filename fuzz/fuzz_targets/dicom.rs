//! DICOM decoding through `decode_bytes`: a preamble and `DICM` are forced so every input reaches
//! the DICOM path (seeds are whole files, whose first 132 bytes are exactly that).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = vec![0u8; 128];
    input.extend_from_slice(b"DICM");
    input.extend_from_slice(data.get(132..).unwrap_or_default());
    let _ = medpatch_engine::decode::decode_bytes(&input, "fuzz.dcm");
});

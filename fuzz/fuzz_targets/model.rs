//! Model loading: ONNX protobuf, medpatch metadata, input/output shapes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medpatch_engine::{Model, ModelOrigin};

fuzz_target!(|data: &[u8]| {
    let _ = Model::from_bytes(data.into(), ModelOrigin::Memory("fuzz".into()));
});

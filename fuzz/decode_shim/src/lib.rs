//! `medpatch_engine::decode`, the same source file, without the rest of the engine.
#[path = "../../../engine/src/decode/mod.rs"]
pub mod decode;

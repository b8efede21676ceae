//! A MedicalPatchNet ONNX model and what its metadata promises (see `medpatch_models::contract`).

use crate::EngineError;
use medpatch_models::ModelMetadata;
use medpatch_models::contract::{INPUT_NAME, OUTPUT_NAME};
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::pb;

/// Where a model came from, for messages and for the output's `model` field.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelOrigin {
    File(PathBuf),
    /// The small demo model compiled into medpatch.
    Embedded,
    Memory(String),
}

impl std::fmt::Display for ModelOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelOrigin::File(p) => write!(f, "{}", p.display()),
            ModelOrigin::Embedded => write!(f, "embedded default model"),
            ModelOrigin::Memory(name) => write!(f, "{name}"),
        }
    }
}

/// The bytes of a checked model and its metadata. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Model {
    pub bytes: Arc<[u8]>,
    pub metadata: ModelMetadata,
    pub origin: ModelOrigin,
    /// Input channels (1 for MedicalPatchNet).
    pub channels: usize,
}

impl Model {
    pub fn from_path(path: &Path) -> Result<Self, EngineError> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::Model {
            origin: path.display().to_string(),
            problem: format!("cannot read it: {e}"),
        })?;
        Self::from_bytes(bytes.into(), ModelOrigin::File(path.to_path_buf()))
    }

    /// Parse and check the model: medpatch metadata present and valid, one input `patches` of
    /// shape `[N, C, P, P]` with P the metadata's patch size, one output `logits` `[N, classes]`.
    pub fn from_bytes(bytes: Arc<[u8]>, origin: ModelOrigin) -> Result<Self, EngineError> {
        let fail = |problem: String| EngineError::Model { origin: origin.to_string(), problem };
        let proto = pb::ModelProto::decode(&*bytes).map_err(|e| fail(format!("not an ONNX model ({e})")))?;
        let metadata =
            ModelMetadata::from_props(proto.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())))
                .map_err(|e| fail(e.to_string()))?;
        let graph = proto.graph.as_ref().ok_or_else(|| fail("the model has no graph".into()))?;
        let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> =
            graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).collect();
        let [input] = inputs.as_slice() else {
            return Err(fail(format!("expected one input '{INPUT_NAME}', found {}", inputs.len())));
        };
        let [output] = graph.output.as_slice() else {
            return Err(fail(format!("expected one output '{OUTPUT_NAME}', found {}", graph.output.len())));
        };
        let in_dims = static_dims(input);
        let p = metadata.patch_size as i64;
        let channels = match in_dims.as_slice() {
            [_, Some(c), Some(h), Some(w)] if *h == p && *w == p && *c > 0 => *c as usize,
            _ => {
                return Err(fail(format!(
                    "input '{}' has shape {}, expected [N, C, {p}, {p}] (the metadata's patch size)",
                    input.name,
                    show_dims(&in_dims)
                )));
            }
        };
        let out_dims = static_dims(output);
        let classes = metadata.classes.len() as i64;
        if !matches!(out_dims.as_slice(), [_, Some(c)] if *c == classes) {
            return Err(fail(format!(
                "output '{}' has shape {}, expected [N, {classes}] (one logit per class in the metadata)",
                output.name,
                show_dims(&out_dims)
            )));
        }
        Ok(Self { bytes, metadata, origin, channels })
    }

    pub fn num_classes(&self) -> usize {
        self.metadata.classes.len()
    }
    pub fn patch_size(&self) -> usize {
        self.metadata.patch_size as usize
    }
    pub fn grid(&self) -> usize {
        self.metadata.grid() as usize
    }
    pub fn image_size(&self) -> usize {
        self.metadata.image_size as usize
    }
}

fn static_dims(info: &pb::ValueInfoProto) -> Vec<Option<i64>> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) = info.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Vec::new();
    };
    t.shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn show_dims(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.map_or("?".into(), |v| v.to_string())).collect();
    format!("[{}]", parts.join(", "))
}

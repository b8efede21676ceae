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

/// Largest model file read: protobuf, and so ONNX without external data, stops at 2 GiB.
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Operators that make a graph compute in integers (ONNX's QDQ pair and its integer operators).
const INTEGER_OPERATORS: [&str; 6] =
    ["QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"];

/// ONNX's `TensorProto.DataType.FLOAT`.
const ONNX_FLOAT: i32 = 1;

/// The bytes of a checked model and its metadata. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Model {
    pub bytes: Arc<[u8]>,
    pub metadata: ModelMetadata,
    pub origin: ModelOrigin,
    /// Input channels (1 for MedicalPatchNet).
    pub channels: usize,
    /// The SHA-256 of `bytes`, computed when first asked for and shared by clones.
    digest: Arc<std::sync::OnceLock<String>>,
    /// Does the graph compute in integers (quantize/dequantize or integer operators)? Such a graph
    /// runs in integer kernels whatever precision is asked for, so the engine needs its
    /// `medpatch.quantization` record to run it at int8, and runs it at nothing else.
    pub(crate) integer_graph: bool,
}

impl Model {
    pub fn from_path(path: &Path) -> Result<Self, EngineError> {
        let bytes = medpatch_models::read_regular_file(path, MAX_MODEL_BYTES)
            .map_err(|e| EngineError::Model { origin: path.display().to_string(), problem: e.to_string() })?;
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
        let c = metadata.input.channels as i64;
        let channels = match in_dims.as_slice() {
            [None, Some(channels), Some(h), Some(w)] if *h == p && *w == p && *channels == c => c as usize,
            _ => {
                return Err(fail(format!(
                    "input '{}' has shape {}, expected [N, {c}, {p}, {p}]: a free batch size N (medpatch runs \
                     many patches per call), the metadata's {c} channel(s) and patch size {p}",
                    input.name,
                    show_dims(&in_dims)
                )));
            }
        };
        for (role, info) in [("input", *input), ("output", output)] {
            let element = elem_type(info);
            if element != Some(ONNX_FLOAT) {
                return Err(fail(format!(
                    "{role} '{}' has element type {}, expected float32 (ONNX type 1): medpatch feeds and reads \
                     float32 tensors",
                    info.name,
                    element.map_or("unknown".to_string(), |t| t.to_string())
                )));
            }
        }
        let out_dims = static_dims(output);
        let classes = metadata.classes.len() as i64;
        if !matches!(out_dims.as_slice(), [None, Some(c)] if *c == classes) {
            return Err(fail(format!(
                "output '{}' has shape {}, expected [N, {classes}] (one logit per class in the metadata)",
                output.name,
                show_dims(&out_dims)
            )));
        }
        let integer_graph = graph.node.iter().any(|n| INTEGER_OPERATORS.contains(&n.op_type.as_str()));
        Ok(Self { bytes, metadata, origin, channels, digest: Arc::default(), integer_graph })
    }

    /// SHA-256 (hex) of the model file: what identifies it in results (DICOM's algorithm
    /// identification). Computed once.
    pub fn sha256(&self) -> &str {
        self.digest.get_or_init(|| {
            use sha2::Digest;
            sha2::Sha256::digest(&*self.bytes).iter().map(|b| format!("{b:02x}")).collect()
        })
    }

    /// The model's name in results that leave this machine: its file name, not its path.
    pub fn name(&self) -> String {
        match &self.origin {
            ModelOrigin::File(path) => {
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
            }
            other => other.to_string(),
        }
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

fn elem_type(info: &pb::ValueInfoProto) -> Option<i32> {
    match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => Some(t.elem_type),
        _ => None,
    }
}

fn show_dims(dims: &[Option<i64>]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.map_or("?".into(), |v| v.to_string())).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded model's bytes after `edit` changed its protobuf.
    fn edited(edit: impl FnOnce(&mut pb::ModelProto)) -> Result<Model, EngineError> {
        let mut proto = pb::ModelProto::decode(crate::DEFAULT_MODEL_BYTES).unwrap();
        edit(&mut proto);
        Model::from_bytes(proto.encode_to_vec().into(), ModelOrigin::Memory("edited.onnx".into()))
    }

    fn input_type(proto: &mut pb::ModelProto) -> &mut pb::type_proto::Tensor {
        let graph = proto.graph.as_mut().unwrap();
        let input = graph.input.iter_mut().find(|i| i.name == INPUT_NAME).unwrap();
        let Some(pb::type_proto::Value::TensorType(t)) = input.r#type.as_mut().unwrap().value.as_mut() else {
            panic!("the input is a tensor")
        };
        t
    }

    fn input_dims(proto: &mut pb::ModelProto) -> &mut Vec<pb::tensor_shape_proto::Dimension> {
        &mut input_type(proto).shape.as_mut().unwrap().dim
    }

    #[test]
    fn inputs_the_engine_cannot_feed_are_refused_at_load() {
        use pb::tensor_shape_proto::dimension::Value;
        assert!(edited(|_| {}).is_ok());
        let err = edited(|p| input_dims(p)[1].value = Some(Value::DimValue(3))).unwrap_err().to_string();
        assert!(err.contains("has shape [?, 3, 64, 64], expected [N, 1, 64, 64]"), "{err}");
        let err = edited(|p| input_dims(p)[0].value = Some(Value::DimValue(1))).unwrap_err().to_string();
        assert!(err.starts_with("model edited.onnx: input 'patches' has shape [1, 1, 64, 64]"), "{err}");
        let err = edited(|p| input_type(p).elem_type = 10).unwrap_err().to_string(); // float16
        assert!(err.contains("element type 10, expected float32"), "{err}");
    }

    #[test]
    fn model_files_must_be_regular_files() {
        let err = Model::from_path(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(err, "model /dev/zero: it is a character device, not a regular file");
        let dir = tempfile::tempdir().unwrap();
        let err = Model::from_path(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("it is a folder, not a regular file"), "{err}");
    }
}

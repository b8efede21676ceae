//! Reading trained weights: PyTorch `torch.save` state dicts (a zip holding a pickle and raw
//! storages) in pure Rust, and safetensors. Everything becomes named f32 tensors with torchvision
//! names; the published checkpoint's `_orig_mod.` (torch.compile) and `baseBackbone.` (the seed's
//! wrapper) prefixes, and DataParallel's `module.`, are stripped.

use crate::pickle::{self, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
}

/// Named tensors with torchvision names, plus the sha256 of the file they came from.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
    pub source_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a PyTorch checkpoint (a zip written by torch.save) nor safetensors{hint}")]
    UnknownFormat { path: String, hint: &'static str },
    #[error("{path}: {problem}")]
    Corrupt { path: String, problem: String },
}

const PREFIXES: [&str; 3] = ["_orig_mod.", "module.", "baseBackbone."];

fn strip_prefixes(mut name: &str) -> &str {
    // Prefixes can stack (`_orig_mod.baseBackbone.`), in any order a wrapper put them.
    while let Some(rest) = PREFIXES.iter().find_map(|p| name.strip_prefix(p)) {
        name = rest;
    }
    name
}

pub fn load(path: &Path) -> Result<Weights, WeightsError> {
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io { path: display.clone(), source })?;
    let mut weights = load_bytes(&bytes, &display)?;
    weights.source_sha256 = sha256_hex(&bytes);
    Ok(weights)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn load_bytes(bytes: &[u8], path: &str) -> Result<Weights, WeightsError> {
    let corrupt = |problem: String| WeightsError::Corrupt { path: path.to_string(), problem };
    let raw = if bytes.starts_with(b"PK\x03\x04") {
        torch_zip(bytes).map_err(corrupt)?
    } else if looks_like_safetensors(bytes) {
        safetensors_tensors(bytes).map_err(corrupt)?
    } else {
        let hint = if bytes.starts_with(&[0x80, 0x02, 0x8a]) {
            " (this is the pre-1.6 torch.save format: load it in PyTorch and save it again)"
        } else if bytes.starts_with(b"\x08") || path.ends_with(".onnx") {
            " (an ONNX file is an export result, not an input)"
        } else {
            ""
        };
        return Err(WeightsError::UnknownFormat { path: path.to_string(), hint });
    };
    let mut tensors = BTreeMap::new();
    for (name, tensor) in raw {
        let short = strip_prefixes(&name).to_string();
        if tensors.insert(short.clone(), tensor).is_some() {
            return Err(corrupt(format!("two tensors map to '{short}' once prefixes are stripped")));
        }
    }
    Ok(Weights { tensors, source_sha256: String::new() })
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 10 && {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        n < bytes.len() as u64 && bytes[8] == b'{'
    }
}

fn safetensors_tensors(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    use safetensors::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes).map_err(|e| format!("invalid safetensors: {e}"))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => decode_le(data, 4, |b| f32::from_le_bytes(b.try_into().unwrap())),
            Dtype::F64 => decode_le(data, 8, |b| f64::from_le_bytes(b.try_into().unwrap()) as f32),
            Dtype::F16 => decode_le(data, 2, |b| f16_to_f32(u16::from_le_bytes(b.try_into().unwrap()))),
            Dtype::BF16 => {
                decode_le(data, 2, |b| f32::from_bits((u16::from_le_bytes(b.try_into().unwrap()) as u32) << 16))
            }
            // Integer tensors (num_batches_tracked) carry no weights.
            Dtype::I64 | Dtype::I32 | Dtype::U8 | Dtype::BOOL => continue,
            other => return Err(format!("tensor '{name}' has unsupported dtype {other:?}")),
        };
        out.push((name, Tensor::new(view.shape().to_vec(), values)));
    }
    Ok(out)
}

fn decode_le(data: &[u8], width: usize, f: impl Fn(&[u8]) -> f32) -> Vec<f32> {
    data.chunks_exact(width).map(f).collect()
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal: value = frac * 2^-24
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// `torch.save` (zip) → tensors. Layout: `<archive>/data.pkl`, `<archive>/data/<key>`, `<archive>/byteorder`.
fn torch_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip ({e}): the file is truncated or corrupt"))?;
    let pickle_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(str::to_string)
        .ok_or("zip without data.pkl: not a torch.save file")?;
    let prefix = pickle_name.strip_suffix("data.pkl").unwrap_or("").to_string();
    let mut read_entry = |name: &str| -> Result<Vec<u8>, String> {
        let mut file = zip.by_name(name).map_err(|e| format!("missing zip entry {name}: {e}"))?;
        let mut out = Vec::with_capacity(file.size() as usize);
        file.read_to_end(&mut out).map_err(|e| format!("cannot read zip entry {name}: {e}"))?;
        Ok(out)
    };
    if let Ok(order) = read_entry(&format!("{prefix}byteorder"))
        && order != b"little"
    {
        return Err(format!(
            "storages are {} endian; only little endian is supported",
            String::from_utf8_lossy(&order)
        ));
    }
    let root = pickle::parse(&read_entry(&pickle_name)?).map_err(|e| format!("data.pkl: {e}"))?;
    let entries = match root {
        Value::Dict(entries) => entries,
        _ => return Err("data.pkl holds no dict: save `model.state_dict()`, not the model object".into()),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let name = key.as_str().ok_or("a state dict key is not a string")?.to_string();
        let Some(spec) = TensorSpec::from_value(&value).map_err(|p| format!("tensor '{name}': {p}"))? else {
            continue; // not a tensor (e.g. an int): carries no weights
        };
        let storage = read_entry(&format!("{prefix}data/{}", spec.storage_key))?;
        if let Some(tensor) = spec.materialise(&storage).map_err(|p| format!("tensor '{name}': {p}"))? {
            out.push((name, tensor));
        }
    }
    Ok(out)
}

/// What `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` describes.
struct TensorSpec {
    storage_type: String,
    storage_key: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorSpec {
    fn from_value(value: &Value) -> Result<Option<Self>, String> {
        let Value::Call { callable, args } = value else { return Ok(None) };
        if callable.is_global("torch._utils", "_rebuild_parameter") {
            return match args.first() {
                Some(inner) => Self::from_value(inner),
                None => Err("_rebuild_parameter without data".into()),
            };
        }
        if !callable.is_global("torch._utils", "_rebuild_tensor_v2") {
            return Err(format!("unsupported object {callable:?}: only plain tensors are read"));
        }
        if args.len() < 4 {
            return Err("_rebuild_tensor_v2 with too few arguments".into());
        }
        let Value::PersistentId(pid) = &args[0] else { return Err("tensor without a storage".into()) };
        let pid = pid.as_items().ok_or("storage id is not a tuple")?;
        let (Some(Value::Global { name: storage_type, .. }), Some(key)) = (pid.get(1), pid.get(2)) else {
            return Err("unrecognised storage id".into());
        };
        let dims = |v: &Value| -> Result<Vec<usize>, String> {
            v.as_items()
                .ok_or("size/stride is not a tuple")?
                .iter()
                .map(|d| d.as_int().filter(|&d| d >= 0).map(|d| d as usize).ok_or_else(|| "bad dimension".to_string()))
                .collect()
        };
        let spec = TensorSpec {
            storage_type: storage_type.clone(),
            storage_key: key
                .as_str()
                .map(str::to_string)
                .or_else(|| key.as_int().map(|i| i.to_string()))
                .ok_or("bad storage key")?,
            offset: args[1].as_int().filter(|&o| o >= 0).ok_or("bad storage offset")? as usize,
            size: dims(&args[2])?,
            stride: dims(&args[3])?,
        };
        if spec.size.len() != spec.stride.len() {
            return Err("size and stride ranks differ".into());
        }
        Ok(Some(spec))
    }

    /// Gather the (possibly strided) tensor out of its storage; `None` for integer tensors.
    fn materialise(&self, storage: &[u8]) -> Result<Option<Tensor>, String> {
        let (width, decode): (usize, fn(&[u8]) -> f32) = match self.storage_type.as_str() {
            "FloatStorage" => (4, |b| f32::from_le_bytes(b.try_into().unwrap())),
            "DoubleStorage" => (8, |b| f64::from_le_bytes(b.try_into().unwrap()) as f32),
            "HalfStorage" => (2, |b| f16_to_f32(u16::from_le_bytes(b.try_into().unwrap()))),
            "BFloat16Storage" => (2, |b| f32::from_bits((u16::from_le_bytes(b.try_into().unwrap()) as u32) << 16)),
            "LongStorage" | "IntStorage" | "ShortStorage" | "ByteStorage" | "CharStorage" | "BoolStorage" => {
                return Ok(None);
            }
            other => return Err(format!("unsupported storage type {other}")),
        };
        let elements = storage.len() / width;
        let count: usize = self.size.iter().product();
        let mut data = Vec::with_capacity(count);
        if count > 0 {
            let last = self.offset + self.size.iter().zip(&self.stride).map(|(s, st)| (s - 1) * st).sum::<usize>();
            if last >= elements {
                return Err(format!(
                    "needs element {last} but its storage holds {elements}: the file is truncated or corrupt"
                ));
            }
            let mut index = vec![0usize; self.size.len()];
            for _ in 0..count {
                let at = self.offset + index.iter().zip(&self.stride).map(|(i, s)| i * s).sum::<usize>();
                data.push(decode(&storage[at * width..(at + 1) * width]));
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < self.size[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
        Ok(Some(Tensor::new(self.size.clone(), data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stripped_in_any_combination() {
        assert_eq!(strip_prefixes("_orig_mod.baseBackbone.features.0.0.weight"), "features.0.0.weight");
        assert_eq!(strip_prefixes("module._orig_mod.classifier.1.bias"), "classifier.1.bias");
        assert_eq!(strip_prefixes("features.1.0.block.0.0.weight"), "features.1.0.block.0.0.weight");
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn strided_storage_is_gathered() {
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        // A 3x2 transposed view of a 2x3 storage: element (i, j) at j*3 + i.
        let spec = TensorSpec {
            storage_type: "FloatStorage".into(),
            storage_key: "0".into(),
            offset: 0,
            size: vec![3, 2],
            stride: vec![1, 3],
        };
        let t = spec.materialise(&storage).unwrap().unwrap();
        assert_eq!(t.data, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let short = TensorSpec { size: vec![4, 2], ..spec };
        assert!(short.materialise(&storage).unwrap_err().contains("truncated"));
    }

    #[test]
    fn unknown_bytes_are_refused_with_the_path() {
        let err = load_bytes(b"hello world, not weights", "w.bin").unwrap_err().to_string();
        assert!(err.starts_with("w.bin: not a PyTorch checkpoint"), "{err}");
        let err = load_bytes(b"PK\x03\x04truncated", "w.pt").unwrap_err().to_string();
        assert!(err.contains("truncated or corrupt"), "{err}");
    }
}

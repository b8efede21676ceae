//! Reading trained weights: PyTorch `torch.save` state dicts (a zip holding a pickle and raw
//! storages) in pure Rust, and safetensors. Everything becomes named f32 tensors with torchvision
//! names; the published checkpoint's `_orig_mod.` (torch.compile) and `baseBackbone.` (the seed's
//! wrapper) prefixes, and DataParallel's `module.`, are stripped.

pub mod pickle;

use pickle::Value;
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
    /// The checkpoint key the state dict was found under, when the file wraps it (a training
    /// checkpoint such as `{"epoch": …, "state_dict": …, "optimizer": …}`).
    pub found_under: Option<String>,
}

/// Largest weights file read (an EfficientNetV2-L checkpoint with optimizer state is ~1.5 GB).
pub const MAX_WEIGHTS_FILE_BYTES: u64 = 4 << 30;

/// Most elements in one tensor (1 GiB of f32): far above any EfficientNetV2 layer (the largest
/// holds 1.6 M), checked before a tensor is allocated.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 28;

/// Keys under which training loops store the model's state dict in a checkpoint, in the order
/// they are tried (PyTorch Lightning, torchvision's and timm's reference scripts, common loops).
pub const STATE_DICT_KEYS: [&str; 11] = [
    "state_dict",
    "model_state_dict",
    "model",
    "state_dict_ema",
    "model_ema",
    "ema",
    "ema_state_dict",
    "module",
    "net",
    "network",
    "weights",
];

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io { path: String, source: medpatch_models::ReadError },
    #[error("{path}: not a PyTorch checkpoint (a zip written by torch.save) nor safetensors{hint}")]
    UnknownFormat { path: String, hint: &'static str },
    #[error("{path}: {problem}")]
    Corrupt { path: String, problem: String },
}

/// Wrappers' prefixes: torch.compile, DataParallel, the seed's backbone wrapper, and a
/// LightningModule's `self.model`.
const PREFIXES: [&str; 4] = ["_orig_mod.", "module.", "baseBackbone.", "model."];

fn strip_prefixes(mut name: &str) -> &str {
    // Prefixes can stack (`_orig_mod.baseBackbone.`), in any order a wrapper put them.
    while let Some(rest) = PREFIXES.iter().find_map(|p| name.strip_prefix(p)) {
        name = rest;
    }
    name
}

pub fn load(path: &Path) -> Result<Weights, WeightsError> {
    let display = path.display().to_string();
    let bytes = medpatch_models::read_regular_file(path, MAX_WEIGHTS_FILE_BYTES)
        .map_err(|source| WeightsError::Io { path: display.clone(), source })?;
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
    let (raw, found_under) = if bytes.starts_with(b"PK\x03\x04") {
        torch_zip(bytes).map_err(corrupt)?
    } else if looks_like_safetensors(bytes) {
        (safetensors_tensors(bytes).map_err(corrupt)?, None)
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
    Ok(Weights { tensors, source_sha256: String::new(), found_under })
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

/// `torch.save` (zip) → tensors, and the checkpoint key they were under if the file wraps its
/// state dict. Layout: `<archive>/data.pkl`, `<archive>/data/<key>`, `<archive>/byteorder`.
fn torch_zip(bytes: &[u8]) -> Result<(NamedTensors, Option<String>), String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip ({e}): the file is truncated or corrupt"))?;
    let pickle_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(str::to_string)
        .ok_or("zip without data.pkl: not a torch.save file")?;
    let prefix = pickle_name.strip_suffix("data.pkl").unwrap_or("").to_string();
    // torch.save stores its entries uncompressed; a re-compressed checkpoint of float weights
    // shrinks little. So everything read together stays within a few times the archive, however
    // large the entries' headers say they are (a header can claim 4 GiB for a 100-byte entry).
    let archive_len = bytes.len() as u64;
    let mut budget = archive_len.saturating_mul(4).saturating_add(64 << 20);
    let mut read_entry = |name: &str| -> Result<Vec<u8>, String> {
        let file = zip.by_name(name).map_err(|e| format!("missing zip entry {name}: {e}"))?;
        let declared = file.size();
        if declared > budget {
            return Err(format!(
                "zip entry {name} declares {declared} bytes, more than this {archive_len}-byte archive can hold"
            ));
        }
        let mut out = Vec::with_capacity(declared.min(archive_len) as usize);
        file.take(declared + 1).read_to_end(&mut out).map_err(|e| format!("cannot read zip entry {name}: {e}"))?;
        if out.len() as u64 != declared {
            return Err(format!("zip entry {name} holds {} bytes where its header says {declared}", out.len()));
        }
        budget -= declared;
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
    let (entries, found_under) = state_dict(root)?;
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
    Ok((out, found_under))
}

type NamedTensors = Vec<(String, Tensor)>;
type DictEntries = Vec<(Value, Value)>;

/// A `torch._utils._rebuild_tensor_v2(…)` or `_rebuild_parameter(…)` record.
fn is_tensor(value: &Value) -> bool {
    matches!(value, Value::Call { callable, .. }
        if callable.is_global("torch._utils", "_rebuild_tensor_v2")
            || callable.is_global("torch._utils", "_rebuild_parameter"))
}

/// Does `value` hold a tensor anywhere inside? (Its depth is bounded by the pickle reader.)
fn holds_tensors(value: &Value) -> bool {
    match value {
        Value::Dict(entries) => entries.iter().any(|(_, v)| holds_tensors(v)),
        Value::List(items) | Value::Tuple(items) => items.iter().any(holds_tensors),
        other => is_tensor(other),
    }
}

/// The state dict in a checkpoint's root: the root itself when it maps names to tensors, else
/// the first of [`STATE_DICT_KEYS`] that does, with that key. Otherwise an error that says which
/// keys hold tensors, so the user can pick one.
fn state_dict(root: Value) -> Result<(DictEntries, Option<String>), String> {
    let Value::Dict(entries) = root else {
        return Err("data.pkl holds no dict: save `model.state_dict()`, not the model object".into());
    };
    if entries.iter().any(|(_, v)| is_tensor(v)) {
        return Ok((entries, None));
    }
    let key_name = |k: &Value| k.as_str().map(str::to_string);
    let position = STATE_DICT_KEYS.iter().find_map(|wanted| {
        entries.iter().position(|(k, v)| {
            k.as_str() == Some(wanted) && matches!(v, Value::Dict(inner) if inner.iter().any(|(_, t)| is_tensor(t)))
        })
    });
    if let Some(i) = position {
        let (key, inner) = entries.into_iter().nth(i).expect("position is in range");
        let Value::Dict(inner) = inner else { unreachable!("matched as a dict above") };
        return Ok((inner, key_name(&key)));
    }
    let holding: Vec<String> = entries
        .iter()
        .filter(|(_, v)| holds_tensors(v))
        .map(|(k, _)| key_name(k).unwrap_or_else(|| "?".into()))
        .collect();
    let keys: Vec<String> = entries.iter().take(20).map(|(k, _)| key_name(k).unwrap_or_else(|| "?".into())).collect();
    Err(if holding.is_empty() {
        format!("data.pkl holds no tensors (its keys: {}): not a state dict or checkpoint", keys.join(", "))
    } else {
        format!(
            "the checkpoint wraps its weights under {}, none of them a key medpatch knows ({}); save the one to \
             export on its own: torch.save(torch.load(path)['{}'], 'weights.pt')",
            holding.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", "),
            STATE_DICT_KEYS.join(", "),
            holding[0]
        )
    })
}

/// A short description of a pickled callable for messages (never its whole tree).
fn describe(value: &Value) -> String {
    match value {
        Value::Global { module, name } => format!("{module}.{name}"),
        Value::Call { callable, .. } => format!("the result of {}", describe(callable)),
        other => format!(
            "a {}",
            match other {
                Value::Dict(_) => "dict",
                Value::List(_) => "list",
                Value::Tuple(_) => "tuple",
                Value::Str(_) => "string",
                _ => "value",
            }
        ),
    }
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
            return Err(format!("unsupported object {}: only plain tensors are read", describe(callable)));
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
        let count =
            self.size
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
                .ok_or_else(|| format!("its shape {:?} holds more than {MAX_TENSOR_ELEMENTS} elements", self.size))?;
        if count > 0 {
            // The last element it reads, in checked arithmetic: sizes and strides come from the file.
            let last = self
                .size
                .iter()
                .zip(&self.stride)
                .try_fold(self.offset, |at, (&s, &st)| (s - 1).checked_mul(st).and_then(|d| at.checked_add(d)));
            match last {
                Some(last) if last < elements => {}
                _ => {
                    return Err(format!(
                        "its offset {}, shape {:?} and strides {:?} reach past its storage of {elements} elements: \
                         the file is truncated or corrupt",
                        self.offset, self.size, self.stride
                    ));
                }
            }
        }
        let mut data = Vec::with_capacity(count);
        if count > 0 {
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

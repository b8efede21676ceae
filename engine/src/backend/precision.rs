//! Numeric precision of a backend, and the self-check that a reduced-precision backend must pass
//! before the engine uses it.
//!
//! f32 is exact and reproducible: every provider runs it, and the parity tests hold them to 1e-4.
//! bf16 (OpenVINO on CPUs with AVX512-BF16 or AMX) and fp16 (TensorRT; tract on ARM CPUs with
//! FP16) change the numbers, so a backend at reduced precision runs fixed patches once, at engine
//! creation, and is refused when its logits leave [`REDUCED_PRECISION_BOUND`] of an f32 run on the
//! same patches. The check is per model: the error scales with the logits' magnitude, and so does
//! the bound's second half, measured on the model itself (what rounding the check image to 8 bits
//! does to its f32 logits). int8 has its own bound, around the quantized graph's measured error.

use super::Backend;
use crate::model::Model;
use serde::Serialize;

/// The arithmetic a backend computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: exact (to ~1e-6) and reproducible; every provider.
    #[default]
    F32,
    /// bfloat16 compute: OpenVINO on CPUs that report BF16 (AVX512-BF16 or AMX).
    Bf16,
    /// IEEE half precision: TensorRT, and tract on ARM CPUs with FP16 arithmetic.
    Fp16,
    /// 8-bit integer kernels on a model quantized by `medpatch quantize` (a QDQ graph): ONNX
    /// Runtime's CPU provider, OpenVINO, TensorRT.
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 4] = [Precision::F32, Precision::Bf16, Precision::Fp16, Precision::Int8];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }

    /// Names accepted for this precision: its name first, then aliases.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Precision::F32 => &["f32", "fp32", "float32"],
            Precision::Bf16 => &["bf16", "bfloat16"],
            Precision::Fp16 => &["fp16", "f16", "float16", "half"],
            Precision::Int8 => &["int8", "i8"],
        }
    }

    /// Which providers run it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Precision::F32 => "32-bit float (exact, every provider)",
            Precision::Bf16 => "bfloat16 (OpenVINO on a CPU with AVX512-BF16 or AMX)",
            Precision::Fp16 => "half precision (TensorRT; tract on ARM CPUs with FP16)",
            Precision::Int8 => "8-bit integers (a model from medpatch quantize; ONNX Runtime CPU, OpenVINO, TensorRT)",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        Precision::ALL.into_iter().find(|p| p.names().contains(&lower.as_str())).ok_or_else(|| {
            let names: Vec<&str> = Precision::ALL.iter().map(|p| p.name()).collect();
            format!("unknown precision '{s}': use {}", names.join(", "))
        })
    }
}

/// How far a bf16 or fp16 backend's logits may be from f32 on the same patches. Either bound
/// passes:
/// * every patch logit within `absolute + relative·|z_f32|`: a model whose logits are small;
/// * max and mean |Δ| within `input_rounding_factor` times what rounding the check image to 8 bits
///   does to the f32 logits (max and mean |Δ| of f32 on the rounded image against f32): a
///   reduced precision may move the logits about as much as the image's own 8-bit storage.
///
/// The second bound follows from the arithmetic: bf16 keeps 8 significant bits, so rounding an
/// activation to bf16 is an error of the size of rounding a mid-grey pixel to 8 bits (2^-9
/// relative), and a model whose logits move far for the one moves far for the other. The demo
/// model's patch logits reach ±170, and an 8-bit rounding of the check image moves them by up to
/// 2.5 in f32 (mean 0.09): a per-logit bound alone (0.05 at a logit near 0) asks more of bf16 than
/// f32 gives on 8-bit images, and refuses every mix of bf16 layers that is faster than f32
/// (docs/precision.md). Twice that deviation leaves room for other CPUs' kernels (bf16 with the
/// stem and classifier in f32 used about 40% of it on a Zen 4); a broken kernel (garbage, NaN, a
/// wrong-precision path) moves the logits by about their own size and fails both.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bound {
    pub absolute: f32,
    pub relative: f32,
    pub input_rounding_factor: f32,
}

pub const REDUCED_PRECISION_BOUND: Bound = Bound { absolute: 0.05, relative: 0.05, input_rounding_factor: 2.0 };

impl Bound {
    /// The allowed deviation of one logit whose f32 value is `reference`.
    pub fn allowed(&self, reference: f32) -> f32 {
        self.absolute + self.relative * reference.abs()
    }

    /// The worst deviation of `values` from `reference` as a fraction of the allowed one
    /// (≤ 1 passes), with the logit where it happened. Non-finite values never pass.
    pub fn worst(&self, values: &[f32], reference: &[f32]) -> (f32, usize) {
        let mut worst = (0f32, 0usize);
        for (i, (&v, &r)) in values.iter().zip(reference).enumerate() {
            let ratio = if v.is_finite() && r.is_finite() { (v - r).abs() / self.allowed(r) } else { f32::INFINITY };
            if ratio > worst.0 || (ratio.is_infinite() && worst.0.is_finite()) {
                worst = (ratio, i);
            }
        }
        worst
    }
}

/// How far an int8 backend's logits may be from f32 on the self-check patches, given the
/// quantized graph's own deviation `E` there (its QDQ arithmetic evaluated in f32 when it was
/// quantized, stored in the model): mean |Δ| ≤ `factor`·E_mean + `slack`·mean|z_f32| and
/// max |Δ| ≤ `factor`·E_max + 2·`slack`·max|z_f32|.
///
/// Integer kernels compute the same QDQ arithmetic but for rounding: a requantization that lands
/// on the other side of a half step moves one 8-bit value by one step, and OpenVINO requantizes
/// fewer times than the graph says. Measured on the demo model (docs/precision.md), ONNX Runtime
/// and OpenVINO int8 on a Zen 4 moved the logits from f32 by 1.0–1.05× E_mean and ≤ E_max; twice
/// E leaves room for other CPUs' kernels. The slack covers a model whose int8 error is near 0. A
/// broken kernel (garbage, saturated sums) moves the logits by about their own size and fails.
/// Aggregates, not each logit: a single 8-bit step early in the demo model moves single logits
/// by up to ±2.6 (ONNX Runtime against the exact QDQ arithmetic), far beyond a per-logit bound
/// around its int8 error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Int8Bound {
    pub factor: f32,
    pub slack: f32,
}

pub const INT8_BOUND: Int8Bound = Int8Bound { factor: 2.0, slack: 0.05 };

/// The bound a self-check used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckBound {
    /// bf16, fp16: every logit within `absolute + relative·|z_f32|`, or max and mean |Δ| within
    /// `input_rounding_factor` times `input_rounding_max` and `input_rounding_mean` (what rounding
    /// the check image to 8 bits does to the f32 logits). See [`Bound`].
    Reduced { bound: Bound, per_logit_fraction: f32, input_rounding_max: f32, input_rounding_mean: f32 },
    /// The max and mean |Δ| within these (int8, from [`Int8Bound`] and the model's measured error).
    Aggregate {
        allowed_max: f32,
        allowed_mean: f32,
        /// The quantized graph's own deviation on these patches, measured when it was quantized.
        quantized_max: f32,
        quantized_mean: f32,
    },
}

/// What the self-check measured (reported by the engine and the CLI).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrecisionCheck {
    pub precision: Precision,
    /// The f32 logits it was compared with: a provider's run ("tract f32"), or the ones stored in
    /// a quantized model.
    pub reference: String,
    pub patches: usize,
    /// max |z − z_f32| over every patch logit.
    pub max_abs_diff: f32,
    /// mean |z − z_f32| over every patch logit.
    pub mean_abs_diff: f32,
    /// The largest ratio of a measured deviation to what the bound allows: at most 1 to pass.
    pub worst_fraction_of_bound: f32,
    pub bound: CheckBound,
    /// The layers the backend left in f32 (bf16 on OpenVINO; an int8 model's, from its record).
    pub kept_f32: Vec<String>,
}

impl std::fmt::Display for PrecisionCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} self-check on {} fixed patches against {}: max |Δ logit| {:.2e}, mean {:.2e} ",
            self.precision, self.patches, self.reference, self.max_abs_diff, self.mean_abs_diff,
        )?;
        match self.bound {
            CheckBound::Reduced { bound: b, per_logit_fraction, input_rounding_max, input_rounding_mean } => write!(
                f,
                "({:.0}% of the bound: {:.0}% of {} + {}·|logit| per logit, {:.0}% of {}× what rounding the image to 8 \
                 bits does in f32, {input_rounding_max:.2e} and {input_rounding_mean:.2e})",
                100.0 * self.worst_fraction_of_bound,
                100.0 * per_logit_fraction,
                b.absolute,
                b.relative,
                100.0
                    * aggregate_fraction(
                        self.max_abs_diff,
                        self.mean_abs_diff,
                        b,
                        input_rounding_max,
                        input_rounding_mean
                    ),
                b.input_rounding_factor,
            ),
            CheckBound::Aggregate { allowed_max, allowed_mean, quantized_max, quantized_mean } => write!(
                f,
                "(allowed {allowed_max:.2e} and {allowed_mean:.2e}: {:.0}% of the bound; the quantized graph's own \
                 deviation, measured when it was made: {quantized_max:.2e} and {quantized_mean:.2e})",
                100.0 * self.worst_fraction_of_bound
            ),
        }?;
        if !self.kept_f32.is_empty() {
            write!(f, "; layers in f32: {}", self.kept_f32.join(", "))?;
        }
        Ok(())
    }
}

/// max and mean |Δ| as a fraction of `factor` times what rounding the image to 8 bits does (NaN
/// never passes).
fn aggregate_fraction(max_abs: f32, mean_abs: f32, b: Bound, rounding_max: f32, rounding_mean: f32) -> f32 {
    let f =
        (max_abs / (b.input_rounding_factor * rounding_max)).max(mean_abs / (b.input_rounding_factor * rounding_mean));
    if f.is_nan() { f32::INFINITY } else { f }
}

/// A synthetic chest-X-ray-like image (`side²`, values in [0, 1]): smooth background, two darker
/// lung fields, a bright spine and mediastinum, rib arcs, and fine deterministic noise. No file
/// access and the same values on every machine: the self-check's input.
pub fn synthetic_xray(side: usize) -> Vec<f32> {
    let s = side as f32;
    let mut state: u32 = 0x9E37_79B9;
    let mut noise = move || {
        // xorshift32: fixed sequence, same everywhere.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as f32 / u32::MAX as f32 - 0.5
    };
    let mut pixels = Vec::with_capacity(side * side);
    for y in 0..side {
        for x in 0..side {
            let (u, v) = (x as f32 / s, y as f32 / s);
            let mut p = 0.55 + 0.15 * v - 0.1 * ((u - 0.5) * 2.0).powi(2);
            for cx in [0.3f32, 0.7] {
                let d = ((u - cx) / 0.17).powi(2) + ((v - 0.48) / 0.3).powi(2);
                if d < 1.0 {
                    p -= 0.35 * (1.0 - d).sqrt();
                }
            }
            p += 0.3 * (-((u - 0.5) / 0.06).powi(2)).exp();
            let rib = (v * 40.0 + 6.0 * (u - 0.5).powi(2) * 10.0).sin();
            if rib > 0.85 && (0.12..0.88).contains(&u) {
                p += 0.08;
            }
            p += 0.03 * noise();
            pixels.push(p.clamp(0.0, 1.0));
        }
    }
    pixels
}

/// The self-check's patches for `model`: one synthetic image cut into the model's grid, each
/// patch repeated over the model's channels. Returns `(patches, n)`.
pub fn check_patches(model: &Model) -> (Vec<f32>, usize) {
    patches_of(model, &synthetic_xray(model.image_size()))
}

/// The check image rounded to 8 bits, cut as [`check_patches`].
fn check_patches_in_8_bits(model: &Model) -> Vec<f32> {
    let image: Vec<f32> = synthetic_xray(model.image_size()).iter().map(|v| (v * 255.0).round() / 255.0).collect();
    patches_of(model, &image).0
}

fn patches_of(model: &Model, image: &[f32]) -> (Vec<f32>, usize) {
    let (side, patch, channels) = (model.image_size(), model.patch_size(), model.channels);
    let one_channel = crate::tile::tile(image, side, patch);
    let per = patch * patch;
    let n = one_channel.len() / per;
    let mut patches = Vec::with_capacity(n * channels * per);
    for p in one_channel.chunks_exact(per) {
        for _ in 0..channels {
            patches.extend_from_slice(p);
        }
    }
    (patches, n)
}

/// Run the check patches through `backend` and `reference` (f32) and compare them against `bound`.
pub fn self_check(
    model: &Model,
    backend: &dyn Backend,
    reference: &dyn Backend,
    bound: Bound,
) -> Result<PrecisionCheck, String> {
    let (patches, n) = check_patches(model);
    let reduced = backend.run(&patches, n).map_err(|e| e.to_string())?;
    let exact = reference.run(&patches, n).map_err(|e| e.to_string())?;
    let in_8_bits = reference.run(&check_patches_in_8_bits(model), n).map_err(|e| e.to_string())?;
    if reduced.len() != exact.len() || in_8_bits.len() != exact.len() {
        return Err(format!("self-check: {} logits against {} from f32", reduced.len(), exact.len()));
    }
    let (per_logit_fraction, at) = bound.worst(&reduced, &exact);
    let (max_abs_diff, mean_abs_diff) = deviation(&reduced, &exact);
    let (input_rounding_max, input_rounding_mean) = deviation(&in_8_bits, &exact);
    let aggregate = aggregate_fraction(max_abs_diff, mean_abs_diff, bound, input_rounding_max, input_rounding_mean);
    let check = PrecisionCheck {
        precision: backend.precision(),
        reference: format!("{} f32", reference.provider()),
        patches: n,
        max_abs_diff,
        mean_abs_diff,
        worst_fraction_of_bound: per_logit_fraction.min(aggregate),
        bound: CheckBound::Reduced { bound, per_logit_fraction, input_rounding_max, input_rounding_mean },
        kept_f32: backend.kept_f32().to_vec(),
    };
    if check.worst_fraction_of_bound <= 1.0 {
        Ok(check)
    } else {
        let classes = model.num_classes();
        Err(format!(
            "{} results are too far from f32 on the self-check patches: patch {} class {} gave {} where f32 gives {}; \
             {check}. Use precision f32{}",
            backend.precision(),
            at / classes,
            model.metadata.classes.get(at % classes).map_or("?", String::as_str),
            reduced[at],
            exact[at],
            if backend.precision() == Precision::Bf16 { ", or keep more layers in f32" } else { "" }
        ))
    }
}

/// max and mean |a − b| (max infinite if any is NaN).
fn deviation(a: &[f32], b: &[f32]) -> (f32, f32) {
    let diffs = a.iter().zip(b).map(|(x, y)| (x - y).abs());
    let max = diffs.clone().fold(0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) });
    let mean = (diffs.map(f64::from).sum::<f64>() / b.len().max(1) as f64) as f32;
    (max, mean)
}

/// The f32 logits an int8 backend is checked against.
pub enum Int8Reference<'a> {
    /// An f32 run of the model it was quantized from.
    Run(&'a dyn Backend),
    /// The f32 logits stored in the quantized model.
    Stored,
}

/// Run the check patches through an int8 `backend` and compare them with f32 logits against
/// [`INT8_BOUND`] around the quantized graph's own deviation (stored in `model`).
pub fn self_check_int8(
    model: &Model,
    backend: &dyn Backend,
    reference: Int8Reference<'_>,
    bound: Int8Bound,
) -> Result<PrecisionCheck, String> {
    let q = model.metadata.quantization.as_ref().ok_or("the model is not quantized (medpatch quantize)")?;
    let (patches, n) = check_patches(model);
    let quantized = backend.run(&patches, n).map_err(|e| e.to_string())?;
    let (exact, source) = match reference {
        Int8Reference::Run(r) => (r.run(&patches, n).map_err(|e| e.to_string())?, format!("{} f32", r.provider())),
        Int8Reference::Stored => {
            use sha2::Digest;
            let bytes: Vec<u8> = patches.iter().flat_map(|v| v.to_le_bytes()).collect();
            let digest: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            if digest != q.self_check.patches_sha256 {
                return Err(format!(
                    "the f32 logits stored in the model are for other self-check patches (another medpatch version made \
                     it): give its f32 model ({}) as the reference model, or quantize it again",
                    q.reference.name
                ));
            }
            (q.self_check.f32_logits.clone(), format!("the f32 logits of {} stored in the model", q.reference.name))
        }
    };
    if quantized.len() != exact.len() {
        return Err(format!("self-check: {} logits against {} from f32", quantized.len(), exact.len()));
    }
    let (max_abs_diff, mean_abs_diff) = deviation(&quantized, &exact);
    let largest = exact.iter().fold(0f32, |m, z| m.max(z.abs()));
    let mean_size = (exact.iter().map(|z| z.abs() as f64).sum::<f64>() / exact.len().max(1) as f64) as f32;
    let e = q.self_check.deviation;
    let allowed_max = bound.factor * e.max_abs + 2.0 * bound.slack * largest;
    let allowed_mean = bound.factor * e.mean_abs + bound.slack * mean_size;
    let fraction = (max_abs_diff / allowed_max).max(mean_abs_diff / allowed_mean);
    let fraction = if fraction.is_nan() { f32::INFINITY } else { fraction };
    let check = PrecisionCheck {
        precision: backend.precision(),
        reference: source,
        patches: n,
        max_abs_diff,
        mean_abs_diff,
        worst_fraction_of_bound: fraction,
        bound: CheckBound::Aggregate {
            allowed_max,
            allowed_mean,
            quantized_max: e.max_abs,
            quantized_mean: e.mean_abs,
        },
        kept_f32: q.kept_f32.clone(),
    };
    if fraction <= 1.0 {
        Ok(check)
    } else {
        Err(format!(
            "int8 results are too far from f32 on the self-check patches: {check}. The runtime's int8 kernels do not \
             compute the quantized model's arithmetic on this CPU; use the f32 model"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use crate::backend::Provider;

    #[test]
    fn names_parse_and_unknown_ones_say_what_is_accepted() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.names()[0], p.name());
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("half".parse::<Precision>().unwrap(), Precision::Fp16);
        assert_eq!("I8".parse::<Precision>().unwrap(), Precision::Int8);
        let err = "int4".parse::<Precision>().unwrap_err();
        assert_eq!(err, "unknown precision 'int4': use f32, bf16, fp16, int8");
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn bound_scales_with_the_logit_and_never_passes_non_finite_values() {
        let b = Bound { absolute: 0.1, relative: 0.1, input_rounding_factor: 2.0 };
        assert!((b.allowed(-10.0) - 1.1).abs() < 1e-6);
        assert_eq!(b.worst(&[1.0, 2.0], &[1.0, 2.0]), (0.0, 0));
        let (fraction, at) = b.worst(&[1.0, 10.5], &[1.0, 10.0]);
        assert_eq!(at, 1);
        assert!((fraction - 0.5 / 1.1).abs() < 1e-5);
        assert_eq!(b.worst(&[0.0, f32::NAN, 9.0], &[0.0, 0.0, 0.0]).1, 1);
        assert!(b.worst(&[f32::INFINITY], &[0.0]).0.is_infinite());
    }

    #[test]
    fn synthetic_xray_is_fixed_in_range_and_structured() {
        let a = synthetic_xray(512);
        assert_eq!(a, synthetic_xray(512));
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(var.sqrt() > 0.05, "the image must have structure, not be flat (std {})", var.sqrt());
        // A lung field is darker than the spine between them.
        let at = |u: f32, v: f32| a[(v * 512.0) as usize * 512 + (u * 512.0) as usize];
        assert!(at(0.3, 0.48) + 0.2 < at(0.5, 0.48));
    }

    /// A backend that returns `f(i)` for logit i.
    struct Fake(Provider, Precision, fn(usize) -> f32, usize);
    impl Backend for Fake {
        fn provider(&self) -> Provider {
            self.0
        }
        fn precision(&self) -> Precision {
            self.1
        }
        fn run(&self, _: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
            Ok((0..n * self.3).map(self.2).collect())
        }
    }

    #[test]
    fn self_check_passes_close_results_and_refuses_far_ones_naming_the_logit() {
        let model = Model::from_bytes(crate::DEFAULT_MODEL_BYTES.into(), crate::ModelOrigin::Embedded).unwrap();
        let classes = model.num_classes();
        let exact = Fake(Provider::Tract, Precision::F32, |i| (i % 7) as f32 - 3.0, classes);
        let close = Fake(Provider::OpenVino, Precision::Bf16, |i| (i % 7) as f32 - 3.0 + 0.01, classes);
        let check = self_check(&model, &close, &exact, REDUCED_PRECISION_BOUND).unwrap();
        assert_eq!((check.patches, check.reference.as_str(), check.precision), (64, "tract f32", Precision::Bf16));
        assert!((check.max_abs_diff - 0.01).abs() < 1e-4 && (check.mean_abs_diff - 0.01).abs() < 1e-4);
        assert!(check.to_string().contains("bf16 self-check on 64 fixed patches against tract f32"), "{check}");
        // One logit far off: refused, and the message says which and what to do.
        let far = Fake(
            Provider::OpenVino,
            Precision::Bf16,
            |i| if i == 3 * 14 + 2 { 5.0 } else { (i % 7) as f32 - 3.0 },
            classes,
        );
        let err = self_check(&model, &far, &exact, REDUCED_PRECISION_BOUND).unwrap_err();
        assert!(err.contains("patch 3 class") && err.contains("precision f32"), "{err}");
        let nan = Fake(Provider::OpenVino, Precision::Bf16, |_| f32::NAN, classes);
        assert!(self_check(&model, &nan, &exact, REDUCED_PRECISION_BOUND).is_err());
    }

    /// A backend whose logit c of a patch is `scale`·(its first pixel − 0.5) + c/100 + `shift`:
    /// rounding the image to 8 bits moves its logits by up to `scale`/510.
    struct FirstPixel {
        precision: Precision,
        scale: f32,
        shift: f32,
        classes: usize,
    }
    impl Backend for FirstPixel {
        fn provider(&self) -> Provider {
            Provider::OpenVino
        }
        fn precision(&self) -> Precision {
            self.precision
        }
        fn run(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
            let per = patches.len() / n;
            Ok((0..n * self.classes)
                .map(|i| {
                    self.scale * (patches[i / self.classes * per] - 0.5)
                        + (i % self.classes) as f32 / 100.0
                        + self.shift
                })
                .collect())
        }
    }

    #[test]
    fn self_check_allows_what_rounding_the_image_to_8_bits_does_and_twice_no_more() {
        let model = Model::from_bytes(crate::DEFAULT_MODEL_BYTES.into(), crate::ModelOrigin::Embedded).unwrap();
        let classes = model.num_classes();
        let exact = FirstPixel { precision: Precision::F32, scale: 1000.0, shift: 0.0, classes };
        // What rounding does here, computed as the check does.
        let (patches, n) = check_patches(&model);
        let (r_max, r_mean) =
            deviation(&exact.run(&check_patches_in_8_bits(&model), n).unwrap(), &exact.run(&patches, n).unwrap());
        assert!(r_max > 0.5 && r_max <= 1000.0 / 510.0 + 1e-3 && r_mean > 0.1, "{r_max} {r_mean}");
        // Every logit moved by the mean rounding deviation: far outside the per-logit bound near
        // 0, within twice the rounding one (max and mean both at r_mean).
        let shifted = |shift: f32| FirstPixel { precision: Precision::Bf16, scale: 1000.0, shift, classes };
        let check = self_check(&model, &shifted(r_mean), &exact, REDUCED_PRECISION_BOUND).unwrap();
        let CheckBound::Reduced { per_logit_fraction, input_rounding_max, input_rounding_mean, .. } = check.bound
        else {
            panic!("a reduced-precision bound")
        };
        assert!(per_logit_fraction > 1.0, "{check}");
        assert_eq!((input_rounding_max, input_rounding_mean), (r_max, r_mean));
        let expected = (r_mean / (2.0 * r_max)).max(0.5);
        assert!((check.worst_fraction_of_bound - expected).abs() < 1e-3, "{check}");
        // Three times the mean: refused.
        let err = self_check(&model, &shifted(3.0 * r_mean), &exact, REDUCED_PRECISION_BOUND).unwrap_err();
        assert!(err.contains("bf16 results are too far from f32") && err.contains("keep more layers in f32"), "{err}");
    }

    /// The demo model with a quantization record whose stored f32 logits are `f(i)` and whose
    /// quantized graph deviated from them by max 2, mean 0.5.
    fn quantized_model(f: fn(usize) -> f32) -> Model {
        use medpatch_models::contract::*;
        use sha2::Digest;
        let mut model = Model::from_bytes(crate::DEFAULT_MODEL_BYTES.into(), crate::ModelOrigin::Embedded).unwrap();
        let (patches, n) = check_patches(&model);
        let bytes: Vec<u8> = patches.iter().flat_map(|v| v.to_le_bytes()).collect();
        let deviation = Deviation { patches: n, max_abs: 2.0, mean_abs: 0.5 };
        model.metadata.quantization = Some(Quantization {
            scheme: "qdq".into(),
            target: None,
            method: "minmax".into(),
            calibration: CalibrationRecord { images: 1, patches: 64, sha256: String::new() },
            kept_f32: vec![],
            reference: ModelReference { name: "f32.onnx".into(), sha256: String::new() },
            self_check: QuantizedSelfCheck {
                patches_sha256: sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect(),
                f32_logits: (0..n * model.num_classes()).map(f).collect(),
                deviation,
            },
            calibration_error: deviation,
        });
        model
    }

    #[test]
    fn int8_self_check_allows_the_quantized_graphs_own_error_and_refuses_more() {
        let model = quantized_model(|i| (i % 7) as f32 - 3.0);
        let classes = model.num_classes();
        // Logits of size ≤ 3 (mean 12/7): allowed max 2·2 + 0.1·3 = 4.3, mean 2·0.5 + 0.05·12/7.
        let close = Fake(
            Provider::Cpu,
            Precision::Int8,
            |i| (i % 7) as f32 - 3.0 + if i % 2 == 0 { 1.0 } else { -0.2 },
            classes,
        );
        let check = self_check_int8(&model, &close, Int8Reference::Stored, INT8_BOUND).unwrap();
        assert!((check.max_abs_diff - 1.0).abs() < 1e-6 && (check.mean_abs_diff - 0.6).abs() < 1e-3, "{check}");
        let CheckBound::Aggregate { allowed_max, allowed_mean, .. } = check.bound else { panic!("aggregate bound") };
        assert!((allowed_max - 4.3).abs() < 1e-4 && (allowed_mean - (1.0 + 0.05 * 12.0 / 7.0)).abs() < 1e-4);
        assert!(check.to_string().contains("against the f32 logits of f32.onnx stored in the model"), "{check}");
        // A broken kernel: every logit off by the logits' own size.
        let broken = Fake(Provider::Cpu, Precision::Int8, |i| -((i % 7) as f32 - 3.0) * 2.0, classes);
        let err = self_check_int8(&model, &broken, Int8Reference::Stored, INT8_BOUND).unwrap_err();
        assert!(err.contains("int8 results are too far from f32") && err.contains("use the f32 model"), "{err}");
        let nan = Fake(Provider::Cpu, Precision::Int8, |_| f32::NAN, classes);
        assert!(self_check_int8(&model, &nan, Int8Reference::Stored, INT8_BOUND).is_err());
        // Stored logits for other patches (another medpatch's check patches) are not used.
        let mut stale = model.clone();
        stale.metadata.quantization.as_mut().unwrap().self_check.patches_sha256 = "00".into();
        let err = self_check_int8(&stale, &close, Int8Reference::Stored, INT8_BOUND).unwrap_err();
        assert!(err.contains("stored in the model are for other self-check patches"), "{err}");
        // A given f32 run instead.
        let run = Fake(Provider::Tract, Precision::F32, |i| (i % 7) as f32 - 3.0, classes);
        let check = self_check_int8(&stale, &close, Int8Reference::Run(&run), INT8_BOUND).unwrap();
        assert_eq!(check.reference, "tract f32");
    }
}

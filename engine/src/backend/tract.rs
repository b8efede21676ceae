//! tract, the pure-Rust runtime: data-parallel, channels-last plans (see [`ConvLayout`]), f32 or,
//! on ARM CPUs with half-precision arithmetic, fp16 (see [`native_fp16`]).
use super::{Backend, BackendOptions, Precision, Provider};
use super::{BackendError, guard, run_in_parts};
use crate::model::Model;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

type Plan = Arc<TypedSimplePlan>;

/// tract optimises far better with every dimension known (measured: EfficientNetV2-S with a
/// symbolic batch ran ~7× slower), so a plan is made per batch size actually used (usually one
/// or two per run: [`PATCHES_PER_RUN`] and a last, shorter one). Plans run channels-last (see
/// [`ConvLayout`]).
///
/// tract runs a graph's nodes one after the other, and its multithreaded kernels sit behind a
/// tract-linalg feature (`multithread-mm`) medpatch does not enable, so threads are used
/// data-parallel instead (1.7–1.9× on 2 cores, docs/speed.md): each batch is split into one contiguous
/// part per thread, and every part runs the same (immutable, shared) plan single-threaded on its
/// own thread.
pub(crate) struct TractBackend {
    model: InferenceModel,
    precision: Precision,
    plans: Mutex<HashMap<usize, Plan>>,
    patch_shape: [usize; 3],
    classes: usize,
    threads: usize,
}

impl TractBackend {
    /// `precision` is f32, or fp16 where [`native_fp16`] (the caller checks the provider runs it).
    pub(crate) fn new(model: &Model, precision: Precision, options: &BackendOptions) -> Result<Self, String> {
        if precision == Precision::Fp16 && !native_fp16() {
            return Err("tract runs fp16 only on ARM CPUs with half-precision arithmetic (FEAT_FP16, \"asimdhp\" in \
                        /proc/cpuinfo), where it has native fp16 kernels; this CPU would emulate it, slower than f32"
                .into());
        }
        let p = model.patch_size();
        let onnx = guard(
            || tract_onnx::onnx().model_for_read(&mut &model.bytes[..]).map_err(|e| format!("{e:#}")),
            |panic| format!("tract panicked: {panic}"),
        )
        .map_err(|e| format!("tract cannot read the model: {e}"))?;
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let backend = Self {
            model: onnx,
            precision,
            plans: Mutex::new(HashMap::new()),
            patch_shape: [model.channels, p, p],
            classes: model.num_classes(),
            threads,
        };
        // Fail now, not at the first image, if tract cannot run this graph; the run size is the plan
        // every full batch uses.
        backend.plan(PATCHES_PER_RUN)?;
        Ok(backend)
    }

    fn plan(&self, n: usize) -> Result<Plan, String> {
        // Held while optimising: parallel parts usually ask for the same batch size at once, and
        // optimising it twice would only waste seconds of CPU.
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = plans.get(&n) {
            return Ok(plan.clone());
        }
        let [c, h, w] = self.patch_shape;
        let optimise = || {
            optimise(&self.model, [n, c, h, w], ConvLayout::ChannelsLast, self.precision)
                .and_then(|m| m.into_runnable())
                .map_err(|e| format!("{e:#}"))
        };
        let plan = guard(optimise, |panic| format!("tract panicked: {panic}"))
            .map_err(|e| format!("tract cannot optimise the model for batch {n}: {e}"))?;
        plans.insert(n, plan.clone());
        Ok(plan)
    }
}

/// Why tract does not run int8. tract 0.23 reads a QDQ graph but runs its QuantizeLinear and
/// DequantizeLinear as float operations around float kernels (it fuses no `DQ → Conv → Q` into an
/// integer convolution), so the quantized graph costs more than the f32 one: 16-patch plans,
/// channels-last, on a loaded 2-core Zen 4 (2026-12-03): demo model 82–89 ms against 27–31 ms f32,
/// full S 498 against 209 ms. (It is the quantizer's reference for the QDQ arithmetic, where
/// speed does not matter.)
pub const INT8_REFUSAL: &str = "tract runs a quantized (QDQ) model's quantize and dequantize steps in float around float \
    kernels, with no integer convolution: 2.4–3× slower than the f32 model; int8 needs ONNX Runtime's CPU provider or \
    OpenVINO (or use precision f32 with the f32 model)";

/// Patches per plan run: each thread runs its share of a batch in runs of at most this many.
/// Smaller runs keep the activations of the early, large layers closer to the cache: 16 measured
/// 1.04–1.05× faster than 32 (a thread's half of an image) and 64 no faster than 32
/// (`cargo bench -p medpatch-engine --bench tract_tuning`, three runs).
pub const PATCHES_PER_RUN: usize = 16;

/// The data layout tract runs convolutions in. ONNX convolutions are channels-first (NCHW), and
/// tract keeps them so unless told otherwise; channels-last (tract's `conv_nhwc` transform: the
/// moves it inserts between layers mostly cancel when the graph is decluttered) runs the S model
/// 1.7–1.8× faster on 2 AVX2 cores (`cargo bench -p medpatch-engine --bench tract_tuning`, table
/// in docs/speed.md; per operator: `cargo run --example tract_profile`). Channels-first, tract's
/// depthwise kernel walks every (patch, channel) plane on its own, nearly all overhead on
/// EfficientNetV2's 4×4 and 2×2 late-stage planes (a third of the time), and each 1×1
/// convolution is a matrix product only one plane wide; channels-last, the depthwise kernel runs
/// along contiguous channels and a 1×1 convolution is one product over every pixel of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvLayout {
    /// The ONNX graph's own layout (NCHW), as tract runs it by default.
    ChannelsFirst,
    /// Every convolution channels-last (NHWC); what medpatch runs.
    ChannelsLast,
}

/// Does tract have native fp16 kernels on this CPU? Only on 64-bit ARM with FEAT_FP16 (tract's own
/// test: "asimdhp" among /proc/cpuinfo's Features, or a known fp16 core; or a build for such a
/// CPU, `--cfg feature_cpu="fp16"`). Elsewhere tract would still run an fp16 graph, emulated,
/// several times slower than f32, so medpatch refuses fp16 there.
pub fn native_fp16() -> bool {
    tract_onnx::tract_core::tract_linalg::has_fp16()
}

/// `model` typed, decluttered and optimised for one fixed input shape, in `layout`, computing in
/// `precision` (f32, or fp16 by tract's `f32_to_f16` transform: every operator, the input and the
/// output too, in half precision; [`input`] makes the input). Public for the benchmarks that
/// compare layouts; the backend always uses [`ConvLayout::ChannelsLast`].
pub fn optimise(
    model: &InferenceModel,
    input_shape: [usize; 4],
    layout: ConvLayout,
    precision: Precision,
) -> TractResult<TypedModel> {
    let mut typed =
        model.clone().with_input_fact(0, f32::fact(input_shape).into())?.into_typed()?.into_decluttered()?;
    let mut apply = |name: &str| match tract_onnx::tract_core::transform::get_transform(name)? {
        Some(transform) => transform.transform(&mut typed),
        None => Err(TractError::msg(format!("this tract has no {name} transform"))),
    };
    match precision {
        Precision::F32 => {}
        Precision::Fp16 => apply("f32_to_f16")?,
        Precision::Bf16 | Precision::Int8 => {
            return Err(TractError::msg(format!("tract runs f32 or fp16, not {precision}")));
        }
    }
    if layout == ConvLayout::ChannelsLast {
        apply("conv_nhwc")?;
    }
    typed.into_optimized()
}

/// The input tensor of a plan made by [`optimise`] at `precision`: `patches` (`[n, c, h, w]`
/// row-major), cast to fp16 for an fp16 plan.
pub fn input(patches: &[f32], shape: [usize; 4], precision: Precision) -> TractResult<TValue> {
    let tensor = Tensor::from_shape(&shape, patches)?;
    Ok(match precision {
        Precision::Fp16 => tensor.cast_to::<f16>()?.into_owned(),
        Precision::F32 | Precision::Bf16 | Precision::Int8 => tensor,
    }
    .into_tvalue())
}

impl Backend for TractBackend {
    fn provider(&self) -> Provider {
        Provider::Tract
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn run(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        let per_patch: usize = self.patch_shape.iter().product();
        run_in_parts(Provider::Tract, patches, n, per_patch, self.threads, |_, part, m| self.run_part(part, m))
    }
}

impl TractBackend {
    /// Run `n` patches on the calling thread, at most [`PATCHES_PER_RUN`] per plan run.
    fn run_part(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        let per_patch: usize = self.patch_shape.iter().product();
        let mut logits = Vec::with_capacity(n * self.classes);
        for run in patches.chunks(PATCHES_PER_RUN * per_patch) {
            logits.extend(self.run_plan(run, run.len() / per_patch)?);
        }
        Ok(logits)
    }

    /// Run `n` patches through the plan for batch `n`.
    fn run_plan(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        let [c, h, w] = self.patch_shape;
        let fail =
            |what: &str, e: &dyn std::fmt::Display| BackendError::runtime(Provider::Tract, format!("{what}: {e:#}"));
        let plan = self.plan(n).map_err(|e| fail("planning", &e))?;
        let input = input(patches, [n, c, h, w], self.precision).map_err(|e| fail("input", &e))?;
        let outputs = guard(
            || plan.run(tvec!(input)).map_err(|e| fail("running", &e)),
            |panic| fail("running", &format!("tract panicked: {panic}")),
        )?;
        let logits = outputs[0].cast_to::<f32>().map_err(|e| fail("output", &e))?;
        let logits = logits.to_plain_array_view::<f32>().map_err(|e| fail("output", &e))?;
        BackendError::check_shape(Provider::Tract, logits.shape(), n, self.classes)?;
        Ok(logits.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::precision::{REDUCED_PRECISION_BOUND, check_patches};
    use crate::{DEFAULT_MODEL_BYTES, ModelOrigin};

    fn default_model() -> Model {
        Model::from_bytes(DEFAULT_MODEL_BYTES.into(), ModelOrigin::Embedded).unwrap()
    }

    /// tract's fp16 graph computes what the f32 graph computes, to half precision's accuracy: on
    /// the self-check's patches, the default model's patch logits stay within 3% of their scale
    /// (measured: 2.8 where they reach ±170, 1.6%). That is outside the self-check's per-logit
    /// bound for this overconfident demo model (a logit near 0 moves as much as the large ones)
    /// but within its other half, twice what rounding the image to 8 bits does; tests/edge_build.rs
    /// runs tract's ARM fp16 kernels under qemu on this model and a small one. Here (x86, no fp16) tract runs its
    /// portable fp16 kernels: the same graph, so this checks the transform and the casts.
    #[test]
    fn the_fp16_plan_computes_the_f32_plans_logits_to_half_precision() {
        let model = default_model();
        let onnx = tract_onnx::onnx().model_for_read(&mut &model.bytes[..]).unwrap();
        let (patches, n) = check_patches(&model);
        let shape = [n, model.channels, model.patch_size(), model.patch_size()];
        let run = |precision, datum_type| {
            let plan = optimise(&onnx, shape, ConvLayout::ChannelsLast, precision).unwrap().into_runnable().unwrap();
            let outputs = plan.run(tvec!(input(&patches, shape, precision).unwrap())).unwrap();
            assert_eq!(outputs[0].datum_type(), datum_type, "{precision} plan's output");
            let logits = outputs[0].cast_to::<f32>().unwrap().into_owned();
            logits.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<f32>>()
        };
        let exact = run(Precision::F32, f32::datum_type());
        let half = run(Precision::Fp16, f16::datum_type());
        let scale = exact.iter().fold(0f32, |m, z| m.max(z.abs()));
        let max = half.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let (fraction, _) = REDUCED_PRECISION_BOUND.worst(&half, &exact);
        eprintln!(
            "tract fp16 vs f32 (portable kernels), {n} patches: max |Δ logit| {max:.2e}, logits up to ±{scale:.1}, \
             {:.0}% of the self-check's bound",
            100.0 * fraction
        );
        assert!(max <= 0.03 * scale, "fp16 is {max} off, logits up to {scale}");
        assert!(max > 0.0, "the fp16 plan gave f32's logits exactly: it did not compute in fp16");
    }

    #[test]
    fn fp16_is_refused_where_tract_has_no_native_kernels() {
        let result = TractBackend::new(&default_model(), Precision::Fp16, &BackendOptions::default());
        if native_fp16() {
            assert!(result.is_ok());
        } else {
            let err = result.err().expect("refused");
            assert!(err.contains("tract runs fp16 only on ARM CPUs") && err.contains("slower than f32"), "{err}");
        }
    }
}

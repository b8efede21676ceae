//! tract, the pure-Rust runtime: data-parallel, channels-last plans (see [`ConvLayout`]).
use super::{Backend, BackendOptions, Provider};
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
/// data-parallel instead (1.7–1.9× on 2 cores, README): each batch is split into one contiguous
/// part per thread, and every part runs the same (immutable, shared) plan single-threaded on its
/// own thread.
pub(crate) struct TractBackend {
    model: InferenceModel,
    plans: Mutex<HashMap<usize, Plan>>,
    patch_shape: [usize; 3],
    classes: usize,
    threads: usize,
}

impl TractBackend {
    pub(crate) fn new(model: &Model, options: &BackendOptions) -> Result<Self, String> {
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
            optimise(&self.model, [n, c, h, w], ConvLayout::ChannelsLast)
                .and_then(|m| m.into_runnable())
                .map_err(|e| format!("{e:#}"))
        };
        let plan = guard(optimise, |panic| format!("tract panicked: {panic}"))
            .map_err(|e| format!("tract cannot optimise the model for batch {n}: {e}"))?;
        plans.insert(n, plan.clone());
        Ok(plan)
    }
}

/// Patches per plan run: each thread runs its share of a batch in runs of at most this many.
/// Smaller runs keep the activations of the early, large layers closer to the cache: 16 measured
/// 1.04–1.05× faster than 32 (a thread's half of an image) and 64 no faster than 32
/// (`cargo bench -p medpatch-engine --bench tract_tuning`, three runs).
pub const PATCHES_PER_RUN: usize = 16;

/// The data layout tract runs convolutions in. ONNX convolutions are channels-first (NCHW), and
/// tract keeps them so unless told otherwise; channels-last (tract's `conv_nhwc` transform: the
/// moves it inserts between layers mostly cancel when the graph is decluttered) runs the S model
/// 1.7–1.8× faster on 2 AVX2 cores (`cargo bench -p medpatch-engine --bench tract_tuning`, table
/// in the README; per operator: `cargo run --example tract_profile`). Channels-first, tract's
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

/// `model` typed, decluttered and optimised for one fixed input shape, in `layout`. Public for the
/// benchmarks that compare layouts; the backend always uses [`ConvLayout::ChannelsLast`].
pub fn optimise(model: &InferenceModel, input_shape: [usize; 4], layout: ConvLayout) -> TractResult<TypedModel> {
    let mut typed =
        model.clone().with_input_fact(0, f32::fact(input_shape).into())?.into_typed()?.into_decluttered()?;
    if layout == ConvLayout::ChannelsLast {
        let Some(nhwc) = tract_onnx::tract_core::transform::get_transform("conv_nhwc")? else {
            return Err(TractError::msg("this tract has no conv_nhwc transform"));
        };
        nhwc.transform(&mut typed)?;
    }
    typed.into_optimized()
}

impl Backend for TractBackend {
    fn provider(&self) -> Provider {
        Provider::Tract
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
        let input =
            tract_ndarray::Array4::from_shape_vec((n, c, h, w), patches.to_vec()).map_err(|e| fail("input", &e))?;
        let outputs = guard(
            || plan.run(tvec!(Tensor::from(input).into_tvalue())).map_err(|e| fail("running", &e)),
            |panic| fail("running", &format!("tract panicked: {panic}")),
        )?;
        let logits = outputs[0].to_plain_array_view::<f32>().map_err(|e| fail("output", &e))?;
        BackendError::check_shape(Provider::Tract, logits.shape(), n, self.classes)?;
        Ok(logits.iter().copied().collect())
    }
}

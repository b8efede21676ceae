use super::{Backend, BackendOptions, Provider};
use super::{BackendError, guard, run_in_parts};
use crate::model::Model;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

type Plan = Arc<TypedSimplePlan>;

/// tract optimises far better with every dimension known (measured: EfficientNetV2-S with a
/// symbolic batch ran ~7× slower), so a plan is made per batch size actually used (usually one
/// or two per run: the full batch and the last, shorter one).
///
/// tract runs a graph's nodes one after the other, and its own multithreaded matrix products
/// barely use a second core (see the README's speed figures), so threads are used data-parallel
/// instead: each batch
/// is split into one contiguous part per thread, and every part runs the same (immutable, shared)
/// plan single-threaded on its own thread.
pub struct TractBackend {
    model: InferenceModel,
    plans: Mutex<HashMap<usize, Plan>>,
    patch_shape: [usize; 3],
    classes: usize,
    threads: usize,
}

impl TractBackend {
    pub fn new(model: &Model, options: &BackendOptions) -> Result<Self, String> {
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
        // Fail now, not at the first image, if tract cannot run this graph.
        backend.plan(1)?;
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
            self.model
                .clone()
                .with_input_fact(0, f32::fact([n, c, h, w]).into())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(|e| format!("{e:#}"))
        };
        let plan = guard(optimise, |panic| format!("tract panicked: {panic}"))
            .map_err(|e| format!("tract cannot optimise the model for batch {n}: {e}"))?;
        plans.insert(n, plan.clone());
        Ok(plan)
    }
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
    /// Run `n` patches through the plan for batch `n`, on the calling thread.
    fn run_part(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
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

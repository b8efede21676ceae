use super::{Backend, BackendOptions, Provider};
use crate::EngineError;
use crate::model::Model;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;

type Plan = Arc<TypedSimplePlan>;

/// tract optimises far better with every dimension known (measured: EfficientNetV2-S with a
/// symbolic batch ran ~7× slower), so a plan is made per batch size actually used (usually one
/// or two per run: the full batch and the last, shorter one).
pub struct TractBackend {
    model: InferenceModel,
    plans: Mutex<HashMap<usize, Plan>>,
    patch_shape: [usize; 3],
    classes: usize,
    executor: Executor,
}

impl TractBackend {
    pub fn new(model: &Model, options: &BackendOptions) -> Result<Self, String> {
        let p = model.patch_size();
        let onnx = tract_onnx::onnx()
            .model_for_read(&mut &model.bytes[..])
            .map_err(|e| format!("tract cannot read the model: {e:#}"))?;
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // tract's matrix products run single-threaded unless given an executor.
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        let backend = Self {
            model: onnx,
            plans: Mutex::new(HashMap::new()),
            patch_shape: [model.channels, p, p],
            classes: model.num_classes(),
            executor,
        };
        // Fail now, not at the first image, if tract cannot run this graph.
        backend.plan(1)?;
        Ok(backend)
    }

    fn plan(&self, n: usize) -> Result<Plan, String> {
        if let Some(plan) = self.plans.lock().unwrap_or_else(|p| p.into_inner()).get(&n) {
            return Ok(plan.clone());
        }
        let [c, h, w] = self.patch_shape;
        let plan = self
            .model
            .clone()
            .with_input_fact(0, f32::fact([n, c, h, w]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("tract cannot optimise the model for batch {n}: {e:#}"))?;
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).insert(n, plan.clone());
        Ok(plan)
    }
}

impl Backend for TractBackend {
    fn provider(&self) -> Provider {
        Provider::Tract
    }

    fn run(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, EngineError> {
        let [c, h, w] = self.patch_shape;
        let plan = self.plan(n).map_err(EngineError::Backend)?;
        let input = tract_ndarray::Array4::from_shape_vec((n, c, h, w), patches.to_vec())
            .map_err(|e| EngineError::Backend(format!("tract input: {e}")))?;
        let outputs =
            multithread_tract_scope(self.executor.clone(), || plan.run(tvec!(Tensor::from(input).into_tvalue())))
                .map_err(|e| EngineError::Backend(format!("tract: {e:#}")))?;
        let logits = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| EngineError::Backend(format!("tract output: {e:#}")))?;
        if logits.shape() != [n, self.classes] {
            return Err(EngineError::Backend(format!(
                "tract returned shape {:?}, expected [{n}, {}]",
                logits.shape(),
                self.classes
            )));
        }
        Ok(logits.iter().copied().collect())
    }
}

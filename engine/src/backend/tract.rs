use super::{Backend, BackendOptions, Provider};
use crate::model::Model;
use crate::EngineError;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

type Plan = std::sync::Arc<TypedSimplePlan>;

pub struct TractBackend {
    plan: Plan,
    patch_shape: [usize; 3],
    classes: usize,
    executor: Executor,
}

impl TractBackend {
    pub fn new(model: &Model, options: &BackendOptions) -> Result<Self, String> {
        let p = model.patch_size();
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &model.bytes[..])
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("tract cannot load the model: {e:#}"))?;
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // tract's matrix products run single-threaded unless given an executor.
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        Ok(Self { plan, patch_shape: [model.channels, p, p], classes: model.num_classes(), executor })
    }
}

impl Backend for TractBackend {
    fn provider(&self) -> Provider {
        Provider::Tract
    }

    fn run(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, EngineError> {
        let [c, h, w] = self.patch_shape;
        let input = tract_ndarray::Array4::from_shape_vec((n, c, h, w), patches.to_vec())
            .map_err(|e| EngineError::Backend(format!("tract input: {e}")))?;
        let outputs = multithread_tract_scope(self.executor.clone(), || self.plan.run(tvec!(Tensor::from(input).into_tvalue())))
            .map_err(|e| EngineError::Backend(format!("tract: {e:#}")))?;
        let logits = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| EngineError::Backend(format!("tract output: {e:#}")))?;
        if logits.shape() != [n, self.classes] {
            return Err(EngineError::Backend(format!("tract returned shape {:?}, expected [{n}, {}]", logits.shape(), self.classes)));
        }
        Ok(logits.iter().copied().collect())
    }
}

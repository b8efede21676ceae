//! AdamW exactly as PyTorch's single-tensor implementation (the one PyTorch uses for CPU tensors)
//! and a dynamic loss scaler as `torch.amp.GradScaler` for fp16 autocast on CUDA.
//!
//! Written out rather than taken from tch's `nn::AdamW` so that the moment buffers can be saved
//! in checkpoints (for resume) and beta1 can follow OneCycle's momentum cycle, as PyTorch's
//! scheduler makes it do.

use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug)]
pub struct AdamW {
    /// (name, parameter), sorted by name.
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Optimizer steps taken (PyTorch's per-parameter `step`; all parameters step together here).
    pub step: u64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// Over every trainable variable of `vs` (batch-norm running statistics are not trainable),
    /// PyTorch's defaults besides lr and weight decay: betas (0.9, 0.999), eps 1e-8.
    pub fn new(vs: &nn::VarStore, lr: f64, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let exp_avg = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self { params, exp_avg, exp_avg_sq, step: 0, lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// The gradients, in parameter order (undefined tensors for parameters without one).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).collect()
    }

    /// One step of `torch.optim._single_tensor_adam` with `decoupled_weight_decay=True`:
    /// `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β1)`, `v ← β2·v + (1 − β2)·g²`,
    /// `p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)`.
    pub fn step(&mut self) {
        self.step += 1;
        let t = self.step as f64;
        let (lr, b1, b2) = (self.lr, self.beta1, self.beta2);
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2_sqrt = (1.0 - b2.powf(t)).sqrt();
        let step_size = lr / bias_correction1;
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                if self.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = self.exp_avg[i].lerp_(&grad, 1.0 - b1);
                let _ = self.exp_avg_sq[i].g_mul_scalar_(b2).addcmul_(&(&grad * (1.0 - b2)), &grad);
                let denom = (self.exp_avg_sq[i].sqrt() / bias_correction2_sqrt) + self.eps;
                let _ = p.g_add_(&((&self.exp_avg[i] / denom) * (-step_size)));
            }
        });
    }

    /// Moment buffers by name (`exp_avg.{param}`, `exp_avg_sq.{param}`), on the CPU, for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), self.exp_avg[i].to_device(Device::Cpu)));
            out.push((format!("exp_avg_sq.{name}"), self.exp_avg_sq[i].to_device(Device::Cpu)));
        }
        out
    }

    /// Restore moment buffers written by [`AdamW::state_tensors`]; every buffer must be present.
    pub fn load_state_tensors(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        tch::no_grad(|| -> anyhow::Result<()> {
            for (i, (name, p)) in self.params.iter().enumerate() {
                for (kind, buffer) in [("exp_avg", &mut self.exp_avg[i]), ("exp_avg_sq", &mut self.exp_avg_sq[i])] {
                    let key = format!("{kind}.{name}");
                    let src = tensors.get(&key).ok_or_else(|| anyhow::anyhow!("optimizer state lacks {key}"))?;
                    anyhow::ensure!(src.size() == p.size(), "optimizer state {key} has shape {:?}, the parameter {:?}", src.size(), p.size());
                    buffer.copy_(&src.to_device(p.device()).to_kind(Kind::Float));
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// `torch.amp.GradScaler` defaults: initial scale 2¹⁶, ×2 after 2000 finite steps, ×0.5 and the
/// step skipped on inf/NaN gradients.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_tracker: u64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self { scale: 65536.0, growth_tracker: 0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl GradScaler {
    /// Unscale the gradients in place; `true` if they are all finite (then step the optimizer).
    pub fn unscale(&self, grads: &[Tensor]) -> bool {
        let Some(first) = grads.iter().find(|g| g.defined()) else { return true };
        let mut found_inf = Tensor::zeros([1], (Kind::Float, first.device()));
        let inv_scale = Tensor::full([1], 1.0 / self.scale, (Kind::Float, first.device()));
        for g in grads.iter().filter(|g| g.defined()) {
            let mut g = g.shallow_clone();
            g.internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv_scale);
        }
        found_inf.double_value(&[0]) == 0.0
    }

    /// Update the scale after a step with (`finite`) or without finite gradients.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        }
    }
}

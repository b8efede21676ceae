//! AdamW exactly as PyTorch's single-tensor implementation (the one PyTorch uses for CPU tensors)
//! and a dynamic loss scaler as `torch.amp.GradScaler` for fp16 autocast on CUDA.
//!
//! Written out rather than taken from tch's `nn::AdamW` so that the moment buffers can be saved
//! in checkpoints (for resume) and beta1 can follow OneCycle's momentum cycle, as PyTorch's
//! scheduler makes it do.
//!
//! All parameters live in one flat buffer (each parameter tensor becomes a view of its slice),
//! and so do the moments and, each step, the gradients: a step is a dozen kernels whatever the
//! number of parameter tensors (PyTorch gets the same effect on CUDA from its `foreach` kernels;
//! a loop over ~450 tensors costs thousands of launches). The arithmetic is elementwise, so the
//! result is the same as the per-tensor loop.

use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor, nn};

#[derive(Debug)]
pub struct AdamW {
    /// (name, parameter, offset in the flat buffer), sorted by name.
    params: Vec<(String, Tensor, i64)>,
    /// Every parameter, concatenated; the parameters are views of it.
    flat: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Scratch buffers (flat gradient, denominator, update): no allocation per step (fresh
    /// multi-megabyte temporaries cost page faults that dwarf the arithmetic on CPU).
    grad: Tensor,
    denom: Tensor,
    scratch: Tensor,
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
    ///
    /// The variables are re-homed into one flat buffer: create the optimizer after moving the
    /// variable store to its device (`VarStore::set_device` would undo the sharing).
    pub fn new(vs: &nn::VarStore, lr: f64, weight_decay: f64) -> Self {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let total: i64 = named.iter().map(|(_, p)| p.numel() as i64).sum();
        let device = named.first().map_or(Device::Cpu, |(_, p)| p.device());
        let flat = Tensor::zeros([total], (Kind::Float, device));
        let mut params = Vec::with_capacity(named.len());
        let mut offset = 0i64;
        tch::no_grad(|| {
            for (name, mut p) in named {
                let n = p.numel() as i64;
                let slice = flat.narrow(0, offset, n);
                slice.view(p.size().as_slice()).copy_(&p);
                p.set_data(&slice.view(p.size().as_slice()));
                params.push((name, p, offset));
                offset += n;
            }
        });
        let (exp_avg, exp_avg_sq) = (flat.zeros_like(), flat.zeros_like());
        let (grad, denom, scratch) = (flat.zeros_like(), flat.zeros_like(), flat.zeros_like());
        Self {
            params,
            flat,
            exp_avg,
            exp_avg_sq,
            grad,
            denom,
            scratch,
            step: 0,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Gradients of `loss` with respect to every parameter, as one flat tensor (autograd's
    /// `grad()`: nothing accumulates in the parameters' `.grad`, so there is nothing to zero).
    /// The result is the optimizer's own buffer, overwritten by the next call.
    pub fn gradients(&self, loss: &Tensor) -> Tensor {
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p, _)| p).collect();
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        let flat: Vec<Tensor> = grads
            .iter()
            .zip(&self.params)
            .map(|(g, (_, p, _))| if g.defined() { g.reshape([-1]) } else { p.zeros_like().reshape([-1]) })
            .collect();
        let _ = tch::no_grad(|| Tensor::cat_out(&self.grad, &flat, 0));
        self.grad.shallow_clone()
    }

    /// A flat gradient from named per-parameter gradients (missing ones are zero).
    pub fn flat_from_named(&self, grads: &BTreeMap<String, Tensor>) -> Tensor {
        let parts: Vec<Tensor> = self
            .params
            .iter()
            .map(|(name, p, _)| {
                grads
                    .get(name)
                    .map_or_else(|| p.zeros_like(), |g| g.to_device(p.device()).to_kind(Kind::Float))
                    .reshape([-1])
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// The slice of a flat tensor (gradient, moment) that belongs to parameter `name`.
    pub fn slice_of(&self, flat: &Tensor, name: &str) -> Option<Tensor> {
        self.params
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, p, off)| flat.narrow(0, *off, p.numel() as i64).view(p.size().as_slice()))
    }

    /// One step of `torch.optim._single_tensor_adam` with `decoupled_weight_decay=True`, on all
    /// parameters at once: `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β1)`, `v ← β2·v + (1 − β2)·g²`,
    /// `p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)`.
    pub fn step(&mut self, grad: &Tensor) {
        self.step += 1;
        let t = self.step as f64;
        let (lr, b1, b2) = (self.lr, self.beta1, self.beta2);
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2_sqrt = (1.0 - b2.powf(t)).sqrt();
        let step_size = lr / bias_correction1;
        tch::no_grad(|| {
            if self.weight_decay != 0.0 {
                let _ = self.flat.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = self.exp_avg.lerp_(grad, 1.0 - b1);
            // v ← β2·v + ((1 − β2)·g)·g
            self.scratch.copy_(grad);
            let _ = self.scratch.g_mul_scalar_(1.0 - b2);
            let _ = self.exp_avg_sq.g_mul_scalar_(b2).addcmul_(&self.scratch, grad);
            // denom = √v / √(1 − β2ᵗ) + eps
            self.denom.copy_(&self.exp_avg_sq);
            let _ = self.denom.sqrt_().g_div_scalar_(bias_correction2_sqrt).g_add_scalar_(self.eps);
            // p ← p + (m / denom)·(−lr / (1 − β1ᵗ))
            self.scratch.copy_(&self.exp_avg);
            let _ = self.scratch.g_div_(&self.denom).g_mul_scalar_(-step_size);
            let _ = self.flat.g_add_(&self.scratch);
        });
    }

    /// Moment buffers by name (`exp_avg.{param}`, `exp_avg_sq.{param}`), on the CPU, for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (name, _, _) in &self.params {
            for (kind, buffer) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
                let t = self.slice_of(buffer, name).expect("own parameter");
                out.push((format!("{kind}.{name}"), t.to_device(Device::Cpu).contiguous().copy()));
            }
        }
        out
    }

    /// Restore moment buffers written by [`AdamW::state_tensors`]; every buffer must be present.
    pub fn load_state_tensors(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> anyhow::Result<()> {
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, p, _) in &self.params {
                for (kind, buffer) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
                    let key = format!("{kind}.{name}");
                    let src = tensors.get(&key).ok_or_else(|| anyhow::anyhow!("optimizer state lacks {key}"))?;
                    anyhow::ensure!(
                        src.size() == p.size(),
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        src.size(),
                        p.size()
                    );
                    self.slice_of(buffer, name)
                        .expect("own parameter")
                        .copy_(&src.to_device(p.device()).to_kind(Kind::Float));
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
    /// Unscale the (flat) gradient in place; `true` if it is all finite (then step the optimizer).
    pub fn unscale(&self, grad: &mut Tensor) -> bool {
        let mut found_inf = Tensor::zeros([1], (Kind::Float, grad.device()));
        let inv_scale = Tensor::full([1], 1.0 / self.scale, (Kind::Float, grad.device()));
        grad.internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv_scale);
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

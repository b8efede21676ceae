//! PyTorch's `OneCycleLR` with its defaults, as the seed uses it:
//! `OneCycleLR(optimizer, max_lr, total_steps, pct_start)` with `anneal_strategy="cos"`,
//! `div_factor=25`, `final_div_factor=1e4`, `three_phase=False` and `cycle_momentum=True` — which,
//! for Adam/AdamW, cycles **beta1** between `max_momentum` 0.95 and `base_momentum` 0.85, inversely
//! to the learning rate. Stepped once per batch. Pure arithmetic (no tensors), checked against
//! PyTorch in the parity tests.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneCycle {
    pub max_lr: f64,
    pub total_steps: u64,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
    pub base_momentum: f64,
    pub max_momentum: f64,
}

impl OneCycle {
    /// The seed's schedule: PyTorch defaults besides `max_lr`, `total_steps` and `pct_start`.
    pub fn new(max_lr: f64, total_steps: u64, pct_start: f64) -> Self {
        Self {
            max_lr,
            total_steps,
            pct_start,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    }

    /// `(learning rate, beta1)` for optimizer step `step` (0-based), as PyTorch's `get_lr` computes
    /// them after `step` scheduler steps. Steps past the end are clamped to the last one (PyTorch
    /// raises). Where PyTorch divides by zero (`pct_start · total_steps == 1`), the phase's end
    /// value is used.
    pub fn at(&self, step: u64) -> (f64, f64) {
        let initial_lr = self.max_lr / self.div_factor;
        let min_lr = initial_lr / self.final_div_factor;
        let total = self.total_steps.max(1) as f64;
        let phases = [
            (self.pct_start * total - 1.0, initial_lr, self.max_lr, self.max_momentum, self.base_momentum),
            (total - 1.0, self.max_lr, min_lr, self.base_momentum, self.max_momentum),
        ];
        let step = (step.min(self.total_steps.saturating_sub(1))) as f64;
        let mut start_step = 0.0;
        for (i, &(end_step, lr0, lr1, m0, m1)) in phases.iter().enumerate() {
            if step <= end_step || i == phases.len() - 1 {
                let span = end_step - start_step;
                let pct = if span == 0.0 { 1.0 } else { (step - start_step) / span };
                return (cos_anneal(lr0, lr1, pct), cos_anneal(m0, m1, pct));
            }
            start_step = end_step;
        }
        unreachable!("the last phase always matches")
    }
}

/// PyTorch's `_annealing_cos`: from `start` (pct 0) to `end` (pct 1) on half a cosine.
fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_of_the_cycle() {
        let s = OneCycle::new(1e-4, 1000, 0.05);
        let (lr0, b0) = s.at(0);
        assert!((lr0 - 4e-6).abs() < 1e-12 && (b0 - 0.95).abs() < 1e-12);
        let (peak, b_peak) = s.at(49);
        assert!((peak - 1e-4).abs() < 1e-12 && (b_peak - 0.85).abs() < 1e-12);
        let (last, b_last) = s.at(999);
        assert!((last - 4e-10).abs() < 1e-16 && (b_last - 0.95).abs() < 1e-12);
        // Monotone up, then down.
        assert!((1..49).all(|i| s.at(i).0 > s.at(i - 1).0));
        assert!((50..1000).all(|i| s.at(i).0 < s.at(i - 1).0));
    }
}

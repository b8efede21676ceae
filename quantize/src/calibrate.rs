//! Running a model over calibration patches with tract and collecting what the quantizer needs:
//! each activation's range (pass 1), its histogram (pass 2, for the percentile method), and
//! final logits (to measure what the quantized graph does to them).
//!
//! tract runs the f32 graph with every activation the quantizer needs as an extra output, in runs
//! of [`PATCHES_PER_RUN`] patches, one single-threaded plan shared by the threads (as the engine's
//! tract backend does); each thread keeps its own statistics, merged at the end.

use medpatch_engine::Precision;
use medpatch_engine::backend::tract::{ConvLayout, input, optimise};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;

/// Patches per plan run: small enough that every activation of the full S model for one run
/// fits in a few hundred MB.
pub const PATCHES_PER_RUN: usize = 16;

/// Bins of a percentile histogram, over each tensor's [min, max] of pass 1.
pub const HISTOGRAM_BINS: usize = 2048;

type Plan = Arc<TypedSimplePlan>;

/// A model prepared to run with chosen outputs (names of ONNX tensors), one plan per batch size.
pub struct Runner {
    model: InferenceModel,
    plans: Mutex<HashMap<usize, Plan>>,
    patch_shape: [usize; 3],
    threads: usize,
}

impl Runner {
    /// `bytes` is an ONNX model; `outputs` are the tensors each run returns, in this order.
    pub fn new(bytes: &[u8], outputs: &[String], patch_shape: [usize; 3], threads: usize) -> TractResult<Self> {
        let mut model = tract_onnx::onnx().model_for_read(&mut &bytes[..])?;
        let outlets = outputs
            .iter()
            .map(|name| {
                // Node outputs carry their tensor's name as a label; the graph input (the stem's
                // input, quantized when the stem is) is a source node of that name.
                model
                    .find_outlet_label(name)
                    .or_else(|| model.node_by_name(name).ok().map(|node| OutletId::new(node.id, 0)))
                    .ok_or_else(|| TractError::msg(format!("the graph has no tensor named {name}")))
            })
            .collect::<TractResult<Vec<OutletId>>>()?;
        model.select_output_outlets(&outlets)?;
        Ok(Self { model, plans: Mutex::new(HashMap::new()), patch_shape, threads: threads.max(1) })
    }

    fn plan(&self, n: usize) -> TractResult<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = plans.get(&n) {
            return Ok(plan.clone());
        }
        let [c, h, w] = self.patch_shape;
        let plan = optimise(&self.model, [n, c, h, w], ConvLayout::ChannelsLast, Precision::F32)?.into_runnable()?;
        plans.insert(n, plan.clone());
        Ok(plan)
    }

    /// Run `n` patches (at most [`PATCHES_PER_RUN`]) and return every chosen output as f32 values.
    pub fn run(&self, patches: &[f32], n: usize) -> TractResult<Vec<Vec<f32>>> {
        let [c, h, w] = self.patch_shape;
        let plan = self.plan(n)?;
        let outputs = plan.run(tvec!(input(patches, [n, c, h, w], Precision::F32)?))?;
        outputs
            .iter()
            .map(|t| Ok(t.cast_to::<f32>()?.to_plain_array_view::<f32>()?.iter().copied().collect()))
            .collect()
    }

    /// Run all `n` patches in runs of [`PATCHES_PER_RUN`], spread over the threads; each thread
    /// folds its runs' outputs into its own state (`start()` makes one), and the states are
    /// returned in no particular order.
    pub fn fold<S: Send>(
        &self,
        patches: &[f32],
        n: usize,
        start: impl Fn() -> S + Sync,
        fold: impl Fn(&mut S, usize, &[Vec<f32>]) + Sync,
    ) -> TractResult<Vec<S>> {
        let per_patch: usize = self.patch_shape.iter().product();
        assert_eq!(patches.len(), n * per_patch, "patches do not fill {n} patches");
        let runs: Vec<(usize, &[f32])> =
            patches.chunks(PATCHES_PER_RUN * per_patch).enumerate().map(|(i, c)| (i * PATCHES_PER_RUN, c)).collect();
        let threads = self.threads.min(runs.len()).max(1);
        let (start, fold, runs) = (&start, &fold, &runs);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || -> TractResult<S> {
                        let mut state = start();
                        for (first, chunk) in runs.iter().skip(t).step_by(threads) {
                            let outputs = self.run(chunk, chunk.len() / per_patch)?;
                            fold(&mut state, *first, &outputs);
                        }
                        Ok(state)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err(TractError::msg("a calibration thread panicked"))))
                .collect()
        })
    }

    /// The first output (the logits) of all `n` patches, in patch order.
    pub fn logits(&self, patches: &[f32], n: usize) -> TractResult<Vec<f32>> {
        let parts = self.fold(patches, n, Vec::new, |parts: &mut Vec<(usize, Vec<f32>)>, first, outputs| {
            parts.push((first, outputs[0].clone()))
        })?;
        let mut parts: Vec<(usize, Vec<f32>)> = parts.into_iter().flatten().collect();
        parts.sort_by_key(|(first, _)| *first);
        Ok(parts.into_iter().flat_map(|(_, logits)| logits).collect())
    }
}

/// The smallest and largest value of each tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

impl Ranges {
    fn empty(tensors: usize) -> Self {
        Self { min: vec![f32::INFINITY; tensors], max: vec![f32::NEG_INFINITY; tensors] }
    }

    fn add(&mut self, outputs: &[Vec<f32>]) {
        for (k, values) in outputs.iter().enumerate() {
            for &v in values {
                // NaN fails both comparisons and is left out.
                if v < self.min[k] {
                    self.min[k] = v;
                }
                if v > self.max[k] {
                    self.max[k] = v;
                }
            }
        }
    }

    fn merge(mut self, other: Ranges) -> Self {
        for k in 0..self.min.len() {
            self.min[k] = self.min[k].min(other.min[k]);
            self.max[k] = self.max[k].max(other.max[k]);
        }
        self
    }
}

/// Pass 1: the range of every output of `runner` over the patches.
pub fn ranges(runner: &Runner, tensors: usize, patches: &[f32], n: usize) -> TractResult<Ranges> {
    let parts = runner.fold(patches, n, || Ranges::empty(tensors), |r, _, outputs| r.add(outputs))?;
    Ok(parts.into_iter().fold(Ranges::empty(tensors), Ranges::merge))
}

/// Counts of each tensor's values in [`HISTOGRAM_BINS`] equal bins over `[low, high]` (its
/// range widened to contain 0, as the quantization's is).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub low: f32,
    pub high: f32,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(min: f32, max: f32) -> Self {
        Self { low: min.min(0.0), high: max.max(0.0), counts: vec![0; HISTOGRAM_BINS] }
    }

    fn bin(&self, v: f32) -> usize {
        let at = ((v - self.low) as f64 / (self.high - self.low) as f64 * HISTOGRAM_BINS as f64).floor();
        // Below 0 only by rounding; NaN goes to bin 0 (`as` saturates), never out of bounds.
        (at.max(0.0) as usize).min(HISTOGRAM_BINS - 1)
    }

    /// Is the range empty (a tensor that is 0 everywhere)? Then every value counts in bin 0.
    fn degenerate(&self) -> bool {
        self.high.partial_cmp(&self.low) != Some(std::cmp::Ordering::Greater)
    }

    pub fn add(&mut self, values: &[f32]) {
        if self.degenerate() {
            self.counts[0] += values.len() as u64;
            return;
        }
        for &v in values {
            let b = self.bin(v);
            self.counts[b] += 1;
        }
    }

    /// The value below which `fraction` of the counted values lie, linear within a bin.
    pub fn quantile(&self, fraction: f64) -> f32 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || self.degenerate() {
            return self.low;
        }
        let target = fraction.clamp(0.0, 1.0) * total as f64;
        let width = (self.high - self.low) as f64 / HISTOGRAM_BINS as f64;
        let mut below = 0f64;
        for (b, &count) in self.counts.iter().enumerate() {
            let count = count as f64;
            if count > 0.0 && below + count >= target {
                let inside = ((target - below) / count).clamp(0.0, 1.0);
                return (self.low as f64 + (b as f64 + inside) * width) as f32;
            }
            below += count;
        }
        self.high
    }

    /// The range that leaves out `(1 − percentile/100)` of the values at each end (widened to
    /// contain 0, and never wider than the values' own range).
    pub fn percentile_range(&self, percentile: f64) -> (f32, f32) {
        let tail = 1.0 - percentile / 100.0;
        let low = self.quantile(tail).min(0.0).max(self.low);
        let high = self.quantile(1.0 - tail).max(0.0).min(self.high);
        (low, high)
    }
}

/// Pass 2: every output's histogram over its range from pass 1.
pub fn histograms(runner: &Runner, ranges: &Ranges, patches: &[f32], n: usize) -> TractResult<Vec<Histogram>> {
    let start = || ranges.min.iter().zip(&ranges.max).map(|(&lo, &hi)| Histogram::new(lo, hi)).collect::<Vec<_>>();
    let parts = runner.fold(patches, n, start, |hists: &mut Vec<Histogram>, _, outputs| {
        for (h, values) in hists.iter_mut().zip(outputs) {
            h.add(values);
        }
    })?;
    let mut total = start();
    for part in parts {
        for (t, p) in total.iter_mut().zip(part) {
            for (a, b) in t.counts.iter_mut().zip(p.counts) {
                *a += b;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_nan_and_merge() {
        let mut a = Ranges::empty(2);
        a.add(&[vec![1.0, f32::NAN, -2.0], vec![5.0]]);
        let mut b = Ranges::empty(2);
        b.add(&[vec![3.0], vec![-1.0]]);
        let m = a.merge(b);
        assert_eq!((m.min, m.max), (vec![-2.0, -1.0], vec![3.0, 5.0]));
    }

    #[test]
    fn percentiles_of_a_uniform_histogram_are_linear() {
        let mut h = Histogram::new(0.0, 1.0);
        let values: Vec<f32> = (0..100_000).map(|i| (i as f32 + 0.5) / 100_000.0).collect();
        h.add(&values);
        assert!((h.quantile(0.5) - 0.5).abs() < 1e-3, "{}", h.quantile(0.5));
        let (lo, hi) = h.percentile_range(99.0);
        assert_eq!(lo, 0.0, "the range keeps 0");
        assert!((hi - 0.99).abs() < 1e-3, "{hi}");
        // One outlier far out: the percentile range leaves it out, min–max would not.
        let mut h = Histogram::new(-1.0, 1000.0);
        h.add(&values);
        h.add(&[1000.0, -1.0]);
        let (lo, hi) = h.percentile_range(99.99);
        assert!(hi < 2.0 && lo > -0.6, "{lo} {hi}");
        // Degenerate tensors.
        let mut zero = Histogram::new(0.0, 0.0);
        zero.add(&[0.0; 10]);
        assert_eq!(zero.percentile_range(99.9), (0.0, 0.0));
    }
}

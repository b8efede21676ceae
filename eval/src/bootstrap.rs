//! Bootstrap confidence intervals for the classification metrics, as the seed reports them: the
//! test set resampled with replacement (size n) `resamples` times (the paper: 100,000), each metric
//! recomputed on every resample, and the sorted values read at indices `round(0.025·m)` and
//! `round(0.975·m)` (Python's `round`, half to even), with the median at `round(0.5·m)` and the mean.
//!
//! Differences from the seed, on purpose:
//! * one resample is shared by all classes (a paired bootstrap), so the means over classes get
//!   intervals too; the seed drew fresh indices per class and metric;
//! * resample `r` draws its indices from its own stream `Rng::derive(seed, [r])`, so the result is
//!   the same for any number of threads and any split of the work;
//! * a resample on which a metric is undefined (AUROC or sensitivity without positives, AUROC or
//!   specificity without negatives) is left out of that metric's interval and counted
//!   ([`Interval::undefined`]); the seed's torchmetrics returned 0 there.
//!
//! Speed: each resample is turned into per-sample multiplicities; the scores are sorted once per
//! class, so AUROC (Mann–Whitney with ties counted half) and the confusion counts at the threshold
//! are one O(n) pass over the multiplicities in score order, in exact integer arithmetic.

use crate::metrics::ThresholdRule;
use medpatch_models::Rng;
use rayon::prelude::*;

/// The metrics bootstrapped per class, in this order.
pub const METRICS: [&str; 4] = ["auroc", "accuracy", "sensitivity", "specificity"];

/// One class: its test scores and labels, and the operating threshold (from validation), if any.
#[derive(Debug, Clone)]
pub struct ClassInput<'a> {
    pub scores: &'a [f32],
    pub labels: &'a [bool],
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
pub struct BootstrapOptions {
    pub resamples: usize,
    pub seed: u64,
    pub rule: ThresholdRule,
}

/// A percentile interval and the summary of one metric's bootstrap distribution.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
    pub median: f64,
    pub mean: f64,
    /// Resamples on which the metric was defined (the interval is over these).
    pub defined: usize,
    /// Resamples left out because the metric was undefined on them.
    pub undefined: usize,
}

/// The indices of resample `r` of `n` samples (with replacement).
pub fn resample_indices(seed: u64, r: u64, n: usize) -> Vec<usize> {
    let mut rng = Rng::derive(seed, &[r]);
    (0..n).map(|_| rng.below(n as u64) as usize).collect()
}

fn multiplicities(seed: u64, r: u64, counts: &mut [u32]) {
    counts.fill(0);
    let n = counts.len() as u64;
    let mut rng = Rng::derive(seed, &[r]);
    for _ in 0..n {
        counts[rng.below(n) as usize] += 1;
    }
}

/// A class prepared for the O(n) pass: in increasing score order, each sample's index, a code
/// (bit 1: label, bit 0: predicted positive) and whether it ends a run of equal scores.
struct Prepared {
    index: Vec<u32>,
    code: Vec<u8>,
    ends_run: Vec<bool>,
    has_threshold: bool,
}

impl Prepared {
    fn new(class: &ClassInput, rule: ThresholdRule) -> Self {
        let n = class.scores.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| class.scores[a].total_cmp(&class.scores[b]));
        let predict = |i: usize| class.threshold.is_some_and(|t| rule.positive(class.scores[i], t));
        Self {
            index: order.iter().map(|&i| i as u32).collect(),
            code: order.iter().map(|&i| ((class.labels[i] as u8) << 1) | predict(i) as u8).collect(),
            ends_run: (0..n).map(|k| k + 1 == n || class.scores[order[k + 1]] != class.scores[order[k]]).collect(),
            has_threshold: class.threshold.is_some(),
        }
    }

    /// The four metrics on a resample given by its multiplicities (NaN where undefined).
    fn evaluate(&self, counts: &[u32], out: &mut [f64]) {
        // by_code[label·2 + predicted]: fn… counts of (negative, not predicted) = tn, (negative,
        // predicted) = fp, (positive, not predicted) = fn, (positive, predicted) = tp.
        let mut by_code = [0u64; 4];
        let (mut neg_below, mut auc2) = (0u64, 0u64);
        let mut run = [0u64; 2]; // [negatives, positives] in the current run of equal scores
        for ((&i, &code), &end) in self.index.iter().zip(&self.code).zip(&self.ends_run) {
            let c = counts[i as usize] as u64;
            by_code[code as usize] += c;
            run[(code >> 1) as usize] += c;
            if end {
                // Positives beat every negative below them and tie half with those in the run.
                auc2 += run[1] * (2 * neg_below + run[0]);
                neg_below += run[0];
                run = [0, 0];
            }
        }
        let [tn, fp, fn_, tp] = by_code;
        let (p, q) = (tp + fn_, tn + fp);
        out[0] = if p > 0 && q > 0 { auc2 as f64 / (2 * p * q) as f64 } else { f64::NAN };
        if self.has_threshold {
            out[1] = (tp + tn) as f64 / (p + q) as f64;
            out[2] = if p > 0 { tp as f64 / p as f64 } else { f64::NAN };
            out[3] = if q > 0 { tn as f64 / q as f64 } else { f64::NAN };
        } else {
            out[1..4].fill(f64::NAN);
        }
    }
}

/// Per-resample metric values: `values[r * slots + slot]`, slot = class · 4 + metric for the
/// classes, then group · 4 + metric for the means over `groups` (lists of class indices; a
/// resample's mean is undefined if any of its classes is). NaN where undefined.
pub struct Distribution {
    pub resamples: usize,
    pub classes: usize,
    pub groups: usize,
    pub values: Vec<f64>,
}

impl Distribution {
    pub fn slots(&self) -> usize {
        (self.classes + self.groups) * METRICS.len()
    }

    pub fn values_of(&self, slot: usize) -> impl Iterator<Item = f64> + '_ {
        let slots = self.slots();
        (0..self.resamples).map(move |r| self.values[r * slots + slot])
    }

    /// The interval of every slot (None where the metric is never defined).
    pub fn intervals(&self) -> Vec<Option<Interval>> {
        (0..self.slots()).into_par_iter().map(|slot| summarize(self.values_of(slot))).collect()
    }
}

/// All metrics of all classes (and class-set means) on `resamples` resamples, in parallel.
/// Every class must have the same number of samples (the test set).
pub fn bootstrap(classes: &[ClassInput], groups: &[Vec<usize>], options: &BootstrapOptions) -> Distribution {
    let n = classes.first().map_or(0, |c| c.scores.len());
    assert!(classes.iter().all(|c| c.scores.len() == n && c.labels.len() == n), "classes of unequal length");
    let prepared: Vec<Prepared> = classes.iter().map(|c| Prepared::new(c, options.rule)).collect();
    let m = METRICS.len();
    let slots = (classes.len() + groups.len()) * m;
    let mut values = vec![f64::NAN; options.resamples * slots];
    // Chunks of resamples per task: enough to amortise the scratch buffer, small enough to balance.
    const CHUNK: usize = 256;
    values.par_chunks_mut(CHUNK * slots).enumerate().for_each(|(chunk, out)| {
        let mut counts = vec![0u32; n];
        for (k, row) in out.chunks_mut(slots).enumerate() {
            let r = (chunk * CHUNK + k) as u64;
            multiplicities(options.seed, r, &mut counts);
            for (c, class) in prepared.iter().enumerate() {
                class.evaluate(&counts, &mut row[c * m..(c + 1) * m]);
            }
            for (g, members) in groups.iter().enumerate() {
                for metric in 0..m {
                    let sum: f64 = members.iter().map(|&c| row[c * m + metric]).sum();
                    row[(classes.len() + g) * m + metric] = sum / members.len() as f64;
                }
            }
        }
    });
    Distribution { resamples: options.resamples, classes: classes.len(), groups: groups.len(), values }
}

/// Python's `round(x)` for non-negative x: to the nearest integer, halves to even.
pub fn python_round(x: f64) -> usize {
    let floor = x.floor();
    let diff = x - floor;
    let r = if diff > 0.5 || (diff == 0.5 && floor % 2.0 != 0.0) { floor + 1.0 } else { floor };
    r as usize
}

/// The seed's summary of a bootstrap distribution (NaN values left out and counted).
pub fn summarize(values: impl Iterator<Item = f64>) -> Option<Interval> {
    let mut defined = Vec::new();
    let mut undefined = 0;
    for v in values {
        if v.is_nan() {
            undefined += 1;
        } else {
            defined.push(v);
        }
    }
    if defined.is_empty() {
        return None;
    }
    let m = defined.len();
    let mean = defined.iter().sum::<f64>() / m as f64;
    // Order statistics by selection (O(m)) rather than a full sort.
    let mut at = |q: f64| *defined.select_nth_unstable_by(python_round(m as f64 * q).min(m - 1), f64::total_cmp).1;
    Some(Interval { low: at(0.025), high: at(0.975), median: at(0.5), mean, defined: m, undefined })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Confusion, auroc};

    fn data(n: usize, seed: u64) -> (Vec<f32>, Vec<bool>) {
        let mut rng = Rng::new(seed);
        // Coarse scores so that ties occur, labels correlated with them.
        let labels: Vec<bool> = (0..n).map(|_| rng.bool(0.3)).collect();
        let scores =
            labels.iter().map(|&l| ((rng.f64() + if l { 0.4 } else { 0.0 }) * 10.0).round() as f32 / 10.0).collect();
        (scores, labels)
    }

    /// The multiplicity pass equals the direct metrics on the materialised resample.
    #[test]
    fn fast_pass_equals_direct_computation() {
        let (scores, labels) = data(57, 1);
        let threshold = Some(0.6);
        let class = ClassInput { scores: &scores, labels: &labels, threshold };
        let options = BootstrapOptions { resamples: 300, seed: 9, rule: ThresholdRule::Ge };
        let dist = bootstrap(std::slice::from_ref(&class), &[vec![0]], &options);
        for r in 0..options.resamples {
            let idx = resample_indices(options.seed, r as u64, scores.len());
            let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
            let l: Vec<bool> = idx.iter().map(|&i| labels[i]).collect();
            let row = &dist.values[r * 8..r * 8 + 8];
            let expected_auc = auroc(&s, &l).unwrap_or(f64::NAN);
            assert!((row[0] - expected_auc).abs() < 1e-12 || (row[0].is_nan() && expected_auc.is_nan()));
            let c = Confusion::at(&s, &l, 0.6, ThresholdRule::Ge);
            assert_eq!(row[1], c.accuracy().unwrap());
            assert_eq!(row[2], c.sensitivity().unwrap_or(f64::NAN));
            assert_eq!(row[3], c.specificity().unwrap_or(f64::NAN));
            assert_eq!(&row[4..8], &row[0..4], "a one-class group mean is the class itself");
        }
    }

    #[test]
    fn independent_of_threads_and_seeded() {
        let (scores, labels) = data(40, 2);
        let class = ClassInput { scores: &scores, labels: &labels, threshold: Some(0.5) };
        let options = BootstrapOptions { resamples: 1000, seed: 3, rule: ThresholdRule::Ge };
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let a = one.install(|| bootstrap(std::slice::from_ref(&class), &[], &options)).values;
        let b = bootstrap(std::slice::from_ref(&class), &[], &options).values;
        assert!(a.iter().zip(&b).all(|(x, y)| x == y || (x.is_nan() && y.is_nan())));
        let c = bootstrap(std::slice::from_ref(&class), &[], &BootstrapOptions { seed: 4, ..options }).values;
        assert!(a.iter().zip(&c).any(|(x, y)| x != y));
    }

    #[test]
    fn percentile_indices_follow_the_seed() {
        assert_eq!(python_round(2.5), 2);
        assert_eq!(python_round(3.5), 4);
        assert_eq!(python_round(100_000.0 * 0.975), 97_500);
        // 0..40: m = 40 → indices round(1.0) = 1, round(39.0) = 39, round(20.0) = 20.
        let i = summarize((0..40).map(|v| v as f64).chain([f64::NAN])).unwrap();
        assert_eq!((i.low, i.high, i.median, i.defined, i.undefined), (1.0, 39.0, 20.0, 40, 1));
        assert_eq!(i.mean, 19.5);
        assert!(summarize([f64::NAN].into_iter()).is_none());
    }
}

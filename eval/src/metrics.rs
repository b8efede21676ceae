//! Classification metrics, as scikit-learn computes them: AUROC (`roc_auc_score`), the ROC curve
//! (`roc_curve` with its default `drop_intermediate=True`), the Youden-J threshold (the first
//! argmax of `tpr − fpr` over that curve) and the confusion counts at a threshold.
//!
//! Scores are f32 (the model's sigmoid outputs, as the seed keeps them); sums and ratios are f64.

/// Area under the ROC curve (the Mann–Whitney statistic with tied scores counted half, which is
/// what scikit-learn's `roc_auc_score` computes). `None` if one of the classes is absent.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len());
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over ties; sum them over the positives.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * avg;
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// Per-class AUROC of `[n, classes]` scores (row-major) against 0/1 targets.
pub fn per_class_auroc(scores: &[f32], targets: &[f32], classes: usize) -> Vec<Option<f64>> {
    let n = scores.len() / classes;
    (0..classes)
        .map(|c| {
            let s: Vec<f32> = (0..n).map(|i| scores[i * classes + c]).collect();
            let l: Vec<bool> = (0..n).map(|i| targets[i * classes + c] > 0.5).collect();
            auroc(&s, &l)
        })
        .collect()
}

/// Mean over the classes where AUROC is defined.
pub fn mean_defined(values: &[Option<f64>]) -> Option<f64> {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

/// scikit-learn's `roc_curve(y_true, y_score)` (drop_intermediate=True): false and true positive
/// rates and the thresholds, decreasing, the first one `+inf` (nothing predicted positive).
/// `None` if one of the classes is absent (sklearn warns and returns NaN rates).
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    pub thresholds: Vec<f64>,
}

pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Option<RocCurve> {
    assert_eq!(scores.len(), labels.len());
    let n = scores.len();
    // Decreasing scores; sklearn reverses a stable ascending sort, so among equal scores the later
    // sample comes first. Counts at tie boundaries do not depend on that order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order.reverse();
    // One point per distinct score: cumulative true and false positives at its last sample.
    let (mut tps, mut fps, mut thresholds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tp, mut fp) = (0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        if k + 1 == n || scores[order[k + 1]] != scores[i] {
            tps.push(tp);
            fps.push(fp);
            thresholds.push(scores[i] as f64);
        }
    }
    if tp == 0 || fp == 0 {
        return None;
    }
    // drop_intermediate: keep the ends and every point where the curve bends (second differences).
    let m = tps.len();
    let keep: Vec<usize> = (0..m)
        .filter(|&k| {
            k == 0 || k + 1 == m || {
                let d2 = |v: &[u64]| v[k + 1] as i64 - 2 * v[k] as i64 + v[k - 1] as i64;
                d2(&fps) != 0 || d2(&tps) != 0
            }
        })
        .collect();
    let (p, q) = (tp as f64, fp as f64);
    let mut curve = RocCurve { fpr: vec![0.0], tpr: vec![0.0], thresholds: vec![f64::INFINITY] };
    for k in keep {
        curve.fpr.push(fps[k] as f64 / q);
        curve.tpr.push(tps[k] as f64 / p);
        curve.thresholds.push(thresholds[k]);
    }
    Some(curve)
}

/// The Youden-J operating point of a ROC curve: the first argmax of `tpr − fpr` (numpy's argmax),
/// returned as (threshold, J). The threshold may be `+inf` (no threshold beats predicting nothing).
pub fn youden(curve: &RocCurve) -> (f64, f64) {
    let mut best = (curve.thresholds[0], curve.tpr[0] - curve.fpr[0]);
    for k in 1..curve.thresholds.len() {
        let j = curve.tpr[k] - curve.fpr[k];
        if j > best.1 {
            best = (curve.thresholds[k], j);
        }
    }
    best
}

/// How a score is compared with a threshold. scikit-learn's ROC curve (and so the Youden point)
/// means `score >= threshold`; the seed's torchmetrics calls used `score > threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdRule {
    #[default]
    Ge,
    Gt,
}

impl ThresholdRule {
    pub fn positive(self, score: f32, threshold: f64) -> bool {
        match self {
            ThresholdRule::Ge => score as f64 >= threshold,
            ThresholdRule::Gt => score as f64 > threshold,
        }
    }
}

/// Confusion counts of binary predictions against labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
}

impl Confusion {
    pub fn at(scores: &[f32], labels: &[bool], threshold: f64, rule: ThresholdRule) -> Self {
        let mut c = Confusion::default();
        for (&s, &l) in scores.iter().zip(labels) {
            match (rule.positive(s, threshold), l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }
    pub fn accuracy(&self) -> Option<f64> {
        let n = self.total();
        (n > 0).then(|| (self.tp + self.tn) as f64 / n as f64)
    }
    /// Recall of the positives; undefined without positives.
    pub fn sensitivity(&self) -> Option<f64> {
        let p = self.tp + self.fn_;
        (p > 0).then(|| self.tp as f64 / p as f64)
    }
    /// Recall of the negatives; undefined without negatives.
    pub fn specificity(&self) -> Option<f64> {
        let n = self.tn + self.fp;
        (n > 0).then(|| self.tn as f64 / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_values() {
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        assert_eq!(auroc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(auroc(&[0.1, 0.9], &[false, true]), Some(1.0));
        assert_eq!(auroc(&[0.1, 0.9], &[true, true]), None);
        // Ties across classes: positives {0.5, 0.9}, negatives {0.5, 0.1}: pairs (0.5>0.1)=1,
        // (0.5=0.5)=0.5, (0.9>0.5)=1, (0.9>0.1)=1 → 3.5/4.
        assert_eq!(auroc(&[0.5, 0.9, 0.5, 0.1], &[true, true, false, false]), Some(0.875));
    }

    #[test]
    fn roc_curve_hand_checked() {
        // Scores 0.9 (+), 0.8 (−), 0.7 (+), 0.7 (−), 0.2 (−): distinct thresholds 0.9, 0.8, 0.7, 0.2;
        // (fps, tps) = (0,1), (1,1), (2,2), (3,2): second differences at 0.8: fps 0, tps 1 → kept.
        let scores = [0.9, 0.8, 0.7, 0.7, 0.2];
        let labels = [true, false, true, false, false];
        let c = roc_curve(&scores, &labels).unwrap();
        assert_eq!(c.thresholds.len(), 5);
        assert!(c.thresholds[0].is_infinite());
        assert_eq!(c.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(c.fpr, vec![0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
        // J = 0, 0.5, 0.1667, 0.3333, 0 → threshold 0.9.
        assert_eq!(youden(&c), (0.9f32 as f64, 0.5));
        // Collinear points are dropped: four positives then four negatives at distinct scores.
        let s: Vec<f32> = (0..8).map(|i| 1.0 - i as f32 / 10.0).collect();
        let l: Vec<bool> = (0..8).map(|i| i < 4).collect();
        let c = roc_curve(&s, &l).unwrap();
        assert_eq!(c.tpr, vec![0.0, 0.25, 1.0, 1.0]);
        let cm = Confusion::at(&s, &l, youden(&c).0, ThresholdRule::Ge);
        assert_eq!((cm.tp, cm.fp, cm.tn, cm.fn_), (4, 0, 4, 0));
        assert!(roc_curve(&[0.1, 0.2], &[true, true]).is_none());
    }

    #[test]
    fn threshold_rules_differ_only_at_ties() {
        let c = Confusion::at(&[0.5, 0.5, 0.7], &[true, false, true], 0.5, ThresholdRule::Ge);
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (2, 1, 0, 0));
        let c = Confusion::at(&[0.5, 0.5, 0.7], &[true, false, true], 0.5, ThresholdRule::Gt);
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (1, 0, 1, 1));
        assert_eq!(c.sensitivity(), Some(0.5));
        assert_eq!(c.specificity(), Some(1.0));
        assert_eq!(Confusion::default().accuracy(), None);
    }
}

//! Classification metrics.

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
}

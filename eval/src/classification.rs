//! Table 1 of the paper for one split: per class AUROC, the Youden threshold chosen on this split,
//! and accuracy, sensitivity and specificity at the threshold that applies (one from the
//! validation split, via a thresholds file, or none), with bootstrap intervals; means over
//! CheXlocalize's 10 classes and over all classes.

use crate::bootstrap::{self, BootstrapOptions, ClassInput, Interval, METRICS};
use crate::labels::class_task;
use crate::metrics::{Confusion, RocCurve, ThresholdRule, auroc, roc_curve, youden};
use std::collections::BTreeMap;

/// Scores and labels of one split: `scores[i][c]`, `labels[i][c]` for case i and class c.
pub struct SplitData<'a> {
    pub classes: &'a [String],
    pub scores: &'a [Vec<f32>],
    pub labels: &'a [Vec<bool>],
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassResult {
    pub class: String,
    pub positives: usize,
    pub negatives: usize,
    pub auroc: Option<f64>,
    /// Youden-J threshold chosen on this split (`None` without both classes; may be +inf).
    #[serde(serialize_with = "crate::report::serialize_threshold")]
    pub youden_threshold: Option<f64>,
    /// The threshold applied here (from the thresholds file, else none).
    #[serde(serialize_with = "crate::report::serialize_threshold")]
    pub threshold: Option<f64>,
    pub confusion: Option<Confusion>,
    pub accuracy: Option<f64>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    /// Bootstrap intervals by metric name.
    pub intervals: BTreeMap<String, Interval>,
    #[serde(skip)]
    pub roc: Option<RocCurve>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupResult {
    pub name: String,
    pub classes: Vec<String>,
    /// Mean over the classes of each metric (None if a class lacks it).
    pub means: BTreeMap<String, Option<f64>>,
    pub intervals: BTreeMap<String, Interval>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassificationReport {
    pub cases: usize,
    pub rule: ThresholdRule,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    pub classes: Vec<ClassResult>,
    pub groups: Vec<GroupResult>,
}

/// The class groups whose means the paper reports: CheXlocalize's classes and all classes.
pub fn default_groups(classes: &[String]) -> Vec<(String, Vec<usize>)> {
    let localized: Vec<usize> = (0..classes.len()).filter(|&c| class_task(&classes[c]).is_some()).collect();
    let mut groups = Vec::new();
    if !localized.is_empty() {
        groups.push((format!("Mean, {} CheXlocalize classes", localized.len()), localized));
    }
    groups.push((format!("Mean, all {} classes", classes.len()), (0..classes.len()).collect()));
    groups
}

pub fn evaluate(
    data: &SplitData,
    thresholds: &BTreeMap<String, f64>,
    options: &BootstrapOptions,
) -> ClassificationReport {
    let n = data.scores.len();
    let column = |c: usize| -> (Vec<f32>, Vec<bool>) {
        (data.scores.iter().map(|s| s[c]).collect(), data.labels.iter().map(|l| l[c]).collect())
    };
    let columns: Vec<(Vec<f32>, Vec<bool>)> = (0..data.classes.len()).map(column).collect();
    let mut results: Vec<ClassResult> = data
        .classes
        .iter()
        .zip(&columns)
        .map(|(name, (scores, labels))| {
            let positives = labels.iter().filter(|&&l| l).count();
            let roc = roc_curve(scores, labels);
            let threshold = thresholds.get(name).copied();
            let confusion = threshold.map(|t| Confusion::at(scores, labels, t, options.rule));
            ClassResult {
                class: name.clone(),
                positives,
                negatives: n - positives,
                auroc: auroc(scores, labels),
                youden_threshold: roc.as_ref().map(|r| youden(r).0),
                threshold,
                accuracy: confusion.and_then(|c| c.accuracy()),
                sensitivity: confusion.and_then(|c| c.sensitivity()),
                specificity: confusion.and_then(|c| c.specificity()),
                confusion,
                intervals: BTreeMap::new(),
                roc,
            }
        })
        .collect();
    let groups = default_groups(data.classes);
    if options.resamples > 0 && n > 0 {
        let inputs: Vec<ClassInput> = columns
            .iter()
            .zip(&results)
            .map(|((s, l), r)| ClassInput { scores: s, labels: l, threshold: r.threshold })
            .collect();
        let members: Vec<Vec<usize>> = groups.iter().map(|(_, m)| m.clone()).collect();
        let intervals = bootstrap::bootstrap(&inputs, &members, options).intervals();
        for (c, result) in results.iter_mut().enumerate() {
            for (k, metric) in METRICS.iter().enumerate() {
                if let Some(i) = intervals[c * METRICS.len() + k] {
                    result.intervals.insert(metric.to_string(), i);
                }
            }
        }
        let offset = results.len() * METRICS.len();
        return ClassificationReport {
            cases: n,
            rule: options.rule,
            bootstrap_resamples: options.resamples,
            bootstrap_seed: options.seed,
            groups: groups
                .iter()
                .enumerate()
                .map(|(g, (name, members))| {
                    let mut result = group_means(name, members, &results);
                    for (k, metric) in METRICS.iter().enumerate() {
                        if let Some(i) = intervals[offset + g * METRICS.len() + k] {
                            result.intervals.insert(metric.to_string(), i);
                        }
                    }
                    result
                })
                .collect(),
            classes: results,
        };
    }
    ClassificationReport {
        cases: n,
        rule: options.rule,
        bootstrap_resamples: 0,
        bootstrap_seed: options.seed,
        groups: groups.iter().map(|(name, members)| group_means(name, members, &results)).collect(),
        classes: results,
    }
}

fn group_means(name: &str, members: &[usize], results: &[ClassResult]) -> GroupResult {
    let mean = |get: &dyn Fn(&ClassResult) -> Option<f64>| -> Option<f64> {
        let values: Option<Vec<f64>> = members.iter().map(|&c| get(&results[c])).collect();
        values.map(|v| v.iter().sum::<f64>() / v.len() as f64)
    };
    let means = BTreeMap::from([
        ("auroc".to_string(), mean(&|r| r.auroc)),
        ("accuracy".to_string(), mean(&|r| r.accuracy)),
        ("sensitivity".to_string(), mean(&|r| r.sensitivity)),
        ("specificity".to_string(), mean(&|r| r.specificity)),
    ]);
    GroupResult {
        name: name.to_string(),
        classes: members.iter().map(|&c| results[c].class.clone()).collect(),
        means,
        intervals: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_thresholds() {
        let classes: Vec<String> = ["Cardiomegaly", "Pneumonia"].iter().map(|s| s.to_string()).collect();
        let scores = vec![vec![0.9, 0.2], vec![0.1, 0.8], vec![0.7, 0.6], vec![0.3, 0.1]];
        let labels = vec![vec![true, false], vec![false, true], vec![true, true], vec![false, false]];
        let data = SplitData { classes: &classes, scores: &scores, labels: &labels };
        let thresholds = BTreeMap::from([("Cardiomegaly".to_string(), 0.5)]);
        let options = BootstrapOptions { resamples: 50, seed: 1, rule: ThresholdRule::Ge };
        let r = evaluate(&data, &thresholds, &options);
        assert_eq!(r.classes[0].auroc, Some(1.0));
        assert_eq!(r.classes[0].accuracy, Some(1.0));
        assert_eq!(r.classes[1].accuracy, None, "no threshold for Pneumonia");
        assert_eq!(r.classes[0].youden_threshold, Some(0.7f32 as f64));
        assert_eq!(r.groups[0].classes, vec!["Cardiomegaly".to_string()]);
        assert_eq!(r.groups[1].means["auroc"], Some(1.0));
        assert!(r.groups[1].means["accuracy"].is_none());
        assert!(r.classes[0].intervals.contains_key("auroc"));
    }
}

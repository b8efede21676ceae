//! Reports people read (a markdown page shaped like the paper's Tables 1–3) and files machines
//! read (CSV, JSON), plus the thresholds file that carries a validation split's choices to the
//! test split.

use crate::classification::ClassificationReport;
use crate::localization::{IouSlice, TaskResult, threshold_index};
use crate::metrics::ThresholdRule;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Thresholds as JSON: a number, or the string "inf" for +∞ (JSON has no infinity).
pub fn threshold_json(t: f64) -> serde_json::Value {
    if t.is_infinite() && t > 0.0 { serde_json::json!("inf") } else { serde_json::json!(t) }
}

pub fn serialize_threshold<S: serde::Serializer>(t: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    t.map(threshold_json).serialize(s)
}

/// What a validation run hands to a test run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    /// Youden thresholds per class (probability units).
    pub classification: BTreeMap<String, f64>,
    pub rule: ThresholdRule,
    /// Segmentation thresholds per slice and task (multiples of 1/2048).
    pub localization: BTreeMap<IouSlice, BTreeMap<String, f64>>,
    /// How the maps were made (a test run should use the same).
    pub map: Option<String>,
    pub geometry: Option<String>,
}

impl Thresholds {
    pub fn to_json(&self, source: &str) -> serde_json::Value {
        let classification: serde_json::Map<String, serde_json::Value> =
            self.classification.iter().map(|(k, &v)| (k.clone(), threshold_json(v))).collect();
        let localization: serde_json::Map<String, serde_json::Value> = self
            .localization
            .iter()
            .map(|(slice, tasks)| (slice.key().to_string(), serde_json::json!(tasks)))
            .collect();
        serde_json::json!({
            "format": "medpatch-thresholds/1",
            "chosen_on": source,
            "rule": self.rule,
            "classification": classification,
            "localization": localization,
            "map": self.map,
            "geometry": self.geometry,
        })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text =
            medpatch_models::read_regular_text(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("{}: not a thresholds file written by `medpatch evaluate`", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        if v["format"] != "medpatch-thresholds/1" {
            bail!("missing \"format\": \"medpatch-thresholds/1\"");
        }
        let number = |x: &serde_json::Value, what: &str| -> Result<f64> {
            match x {
                serde_json::Value::String(s) if s == "inf" => Ok(f64::INFINITY),
                _ => x.as_f64().with_context(|| format!("{what}: not a number ({x})")),
            }
        };
        let mut out =
            Thresholds { rule: serde_json::from_value(v["rule"].clone()).unwrap_or_default(), ..Default::default() };
        if let Some(map) = v["classification"].as_object() {
            for (class, t) in map {
                out.classification.insert(class.clone(), number(t, class)?);
            }
        }
        for slice in IouSlice::ALL {
            if let Some(map) = v["localization"][slice.key()].as_object() {
                let mut tasks = BTreeMap::new();
                for (task, t) in map {
                    let t = number(t, task)?;
                    if threshold_index(t).is_none() {
                        bail!(
                            "{}/{task}: segmentation threshold {t} is not a multiple of 1/2048 in [0, 1]",
                            slice.key()
                        );
                    }
                    tasks.insert(task.clone(), t);
                }
                out.localization.insert(slice, tasks);
            }
        }
        out.map = v["map"].as_str().map(str::to_string);
        out.geometry = v["geometry"].as_str().map(str::to_string);
        Ok(out)
    }
}

/// A skipped case and why (reported, never silently dropped).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub case: String,
    /// Which part of the evaluation lost it ("classification", "localization: Cardiomegaly", …).
    pub stage: String,
    pub reason: String,
}

/// Everything one run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub split: String,
    pub model: String,
    pub cases_listed: usize,
    pub classification: Option<ClassificationReport>,
    pub localization: Option<LocalizationSection>,
    pub skipped: Vec<Skipped>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LocalizationSection {
    pub map: String,
    pub geometry: String,
    pub tasks: Vec<TaskResult>,
}

fn f3(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
}

fn with_interval(v: Option<f64>, i: Option<&crate::bootstrap::Interval>) -> String {
    match (v, i) {
        (Some(v), Some(i)) => format!("{v:.3} [{:.3}, {:.3}]", i.low, i.high),
        (v, _) => f3(v),
    }
}

fn chexlocalize_text(s: Option<crate::chexlocalize_bootstrap::Summary>) -> String {
    s.map_or_else(|| "–".to_string(), |s| format!("{:.3} [{:.3}, {:.3}]", s.mean, s.lower, s.upper))
}

fn threshold_text(t: Option<f64>) -> String {
    match t {
        Some(t) if t.is_infinite() => "∞".into(),
        Some(t) => format!("{t:.4}"),
        None => "–".into(),
    }
}

/// The markdown page: Table 1 (classification), Table 2 (hit rate), Table 3 (mIoU), what was
/// skipped and why.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# medpatch evaluation: {}\n", report.split);
    let _ = writeln!(md, "Model: {}. Cases listed: {}.\n", report.model, report.cases_listed);
    if let Some(c) = &report.classification {
        let interval_note = if c.bootstrap_resamples > 0 {
            format!(
                "95% percentile bootstrap intervals in brackets ({} resamples of the {} cases, seed {}).",
                c.bootstrap_resamples, c.cases, c.bootstrap_seed
            )
        } else {
            "No bootstrap (--bootstrap 0).".to_string()
        };
        let rule = match c.rule {
            ThresholdRule::Ge => "score ≥ threshold",
            ThresholdRule::Gt => "score > threshold",
        };
        let _ = writeln!(md, "## Table 1: classification\n");
        let _ = writeln!(
            md,
            "{interval_note} Accuracy, sensitivity and specificity at the threshold from the validation split \
             (positive when {rule}); \"Youden here\" is the threshold this split would choose.\n"
        );
        let _ = writeln!(
            md,
            "| class | n+ / n− | AUROC | accuracy | sensitivity | specificity | threshold | Youden here |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for r in &c.classes {
            let _ = writeln!(
                md,
                "| {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                r.class,
                r.positives,
                r.negatives,
                with_interval(r.auroc, r.intervals.get("auroc")),
                with_interval(r.accuracy, r.intervals.get("accuracy")),
                with_interval(r.sensitivity, r.intervals.get("sensitivity")),
                with_interval(r.specificity, r.intervals.get("specificity")),
                threshold_text(r.threshold),
                threshold_text(r.youden_threshold),
            );
        }
        for g in &c.groups {
            let cell = |m: &str| with_interval(g.means[m], g.intervals.get(m));
            let _ = writeln!(
                md,
                "| **{}** | | {} | {} | {} | {} | | |",
                g.name,
                cell("auroc"),
                cell("accuracy"),
                cell("sensitivity"),
                cell("specificity")
            );
        }
        let undefined: Vec<String> = c
            .classes
            .iter()
            .flat_map(|r| {
                r.intervals
                    .iter()
                    .filter(|(_, i)| i.undefined > 0)
                    .map(move |(m, i)| format!("{} {m}: {} of {}", r.class, i.undefined, i.undefined + i.defined))
            })
            .collect();
        if !undefined.is_empty() {
            let _ = writeln!(
                md,
                "\nResamples where a metric was undefined (left out of its interval): {}.",
                undefined.join("; ")
            );
        }
        md.push('\n');
    }
    if let Some(l) = &report.localization {
        let _ = writeln!(md, "## Table 2: hit rate (pointing game)\n");
        let _ = writeln!(
            md,
            "Map: {}; geometry: {}. A hit: the map's first maximum lies in the ground truth; counted on images whose \
             ground truth is non-empty (CheXlocalize).\n",
            l.map, l.geometry
        );
        let _ = writeln!(md, "| task | hit rate | images counted | maps | CheXlocalize bootstrap mean [95% CI] |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for t in &l.tasks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                t.task,
                f3(t.hit_rate),
                t.hit_cases,
                t.maps,
                chexlocalize_text(t.hit_rate_chexlocalize)
            );
        }
        let rates: Vec<f64> = l.tasks.iter().filter_map(|t| t.hit_rate).collect();
        if !rates.is_empty() {
            let _ = writeln!(
                md,
                "| **Mean over {} tasks** | {:.3} | | |",
                rates.len(),
                rates.iter().sum::<f64>() / rates.len() as f64
            );
        }
        let _ = writeln!(md, "\n## Table 3: mIoU\n");
        let _ = writeln!(
            md,
            "Maps min–max normalised per image, segmented where > the task's threshold (tuned on the validation split \
             with the seed's search). In parentheses: CheXlocalize's bootstrap mean [95% CI] (1,000 replicates, \
             numpy seed 0), the form the paper reports. \"Tuned here\" is what this split would choose.\n"
        );
        let _ = writeln!(
            md,
            "| task | mIoU (TP, FP, FN) | n | threshold | mIoU (TP only) | n | threshold | tuned here (TP, FP, FN / TP only) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for t in &l.tasks {
            let cell = |key: &str| match t.miou.get(key) {
                Some(s) => (
                    format!("{} ({})", f3(s.miou), chexlocalize_text(s.chexlocalize)),
                    s.cases.to_string(),
                    format!("{:.4}", s.threshold),
                ),
                None => ("–".into(), "".into(), "–".into()),
            };
            let (a, an, at) = cell("tp_fp_fn");
            let (b, bn, bt) = cell("tp_only");
            let tuned = |key: &str| t.tuned.get(key).map_or("–".to_string(), |s| format!("{:.4}", s.threshold));
            let _ = writeln!(
                md,
                "| {} | {a} | {an} | {at} | {b} | {bn} | {bt} | {} / {} |",
                t.task,
                tuned("tp_fp_fn"),
                tuned("tp_only")
            );
        }
        for key in ["tp_fp_fn", "tp_only"] {
            let values: Vec<f64> = l.tasks.iter().filter_map(|t| t.miou.get(key).and_then(|s| s.miou)).collect();
            if !values.is_empty() {
                let _ = writeln!(
                    md,
                    "\nMean mIoU ({key}) over {} tasks: {:.3}.",
                    values.len(),
                    values.iter().sum::<f64>() / values.len() as f64
                );
            }
        }
        md.push('\n');
    }
    if !report.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &report.notes {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## Skipped\n");
    if report.skipped.is_empty() {
        let _ = writeln!(md, "Nothing: every listed case was scored.");
    } else {
        let _ = writeln!(md, "{} case(s) left out of a metric:\n", report.skipped.len());
        let _ = writeln!(md, "| case | stage | reason |");
        let _ = writeln!(md, "|---|---|---|");
        for s in &report.skipped {
            let _ = writeln!(md, "| {} | {} | {} |", s.case, s.stage, s.reason.replace('|', "\\|"));
        }
    }
    md
}

fn csv_number(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| if v.is_infinite() { "inf".into() } else { format!("{v}") })
}

/// One row per (row, metric): `table,row,metric,value,low,high,median,mean,cases`.
pub fn csv(report: &Report) -> String {
    let mut out = String::from("table,row,metric,value,ci_low,ci_high,ci_median,ci_mean,n\n");
    let field =
        |s: &str| if s.contains([',', '"']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    if let Some(c) = &report.classification {
        for r in &c.classes {
            let values = [
                ("auroc", r.auroc),
                ("accuracy", r.accuracy),
                ("sensitivity", r.sensitivity),
                ("specificity", r.specificity),
                ("threshold", r.threshold),
                ("youden_threshold", r.youden_threshold),
            ];
            for (metric, v) in values {
                let i = r.intervals.get(metric);
                let _ = writeln!(
                    out,
                    "classification,{},{metric},{},{},{},{},{},{}",
                    field(&r.class),
                    csv_number(v),
                    csv_number(i.map(|i| i.low)),
                    csv_number(i.map(|i| i.high)),
                    csv_number(i.map(|i| i.median)),
                    csv_number(i.map(|i| i.mean)),
                    r.positives + r.negatives
                );
            }
        }
        for g in &c.groups {
            for (metric, v) in &g.means {
                let i = g.intervals.get(metric);
                let _ = writeln!(
                    out,
                    "classification,{},{metric},{},{},{},{},{},{}",
                    field(&g.name),
                    csv_number(*v),
                    csv_number(i.map(|i| i.low)),
                    csv_number(i.map(|i| i.high)),
                    csv_number(i.map(|i| i.median)),
                    csv_number(i.map(|i| i.mean)),
                    c.cases
                );
            }
        }
    }
    if let Some(l) = &report.localization {
        for t in &l.tasks {
            let _ =
                writeln!(out, "hit_rate,{},hit_rate,{},,,,,{}", field(&t.task), csv_number(t.hit_rate), t.hit_cases);
            if let Some(c) = t.hit_rate_chexlocalize {
                let _ = writeln!(
                    out,
                    "hit_rate,{},chexlocalize_bootstrap,{},{},{},,{},",
                    field(&t.task),
                    c.mean,
                    c.lower,
                    c.upper,
                    c.mean
                );
            }
            for (key, s) in &t.miou {
                let _ = writeln!(out, "miou,{},{key},{},,,,,{}", field(&t.task), csv_number(s.miou), s.cases);
                if let Some(c) = s.chexlocalize {
                    let _ = writeln!(
                        out,
                        "miou,{},{key}_chexlocalize_bootstrap,{},{},{},,{},",
                        field(&t.task),
                        c.mean,
                        c.lower,
                        c.upper,
                        c.mean
                    );
                }
                let _ = writeln!(out, "miou,{},{key}_threshold,{},,,,,", field(&t.task), s.threshold);
            }
            for (key, s) in &t.tuned {
                let _ = writeln!(out, "miou,{},{key}_tuned_threshold,{},,,,,", field(&t.task), s.threshold);
            }
        }
    }
    out
}

/// The report's ROC section, linking each class's curve (`links`: "[class](roc/x.png) (AUROC …)").
pub fn roc_section(links: &[String]) -> String {
    if links.is_empty() {
        return String::new();
    }
    format!(
        "\n## ROC curves\n\nFalse positive rate across, true positive rate up; grey: chance; red dot: this split's \
         Youden point. {}\n",
        links.join(", ")
    )
}

/// The report's saliency-sheet section starts with this; a line per sheet follows.
pub const SHEETS_INTRODUCTION: &str = "\n## Saliency sheets\n\nLeft: the X-ray with the ground truth outlined \
    (yellow). Right: the map over the part of the image it covers (red = high), the segmentation at the applied \
    (else tuned) TP, FP, FN threshold (cyan) and the map's first maximum (green cross).\n\n";

/// Per task, the segmentation threshold a sheet shows: the applied TP, FP, FN threshold, else
/// the one tuned on this split.
pub fn sheet_thresholds(report: &Report) -> BTreeMap<&str, f64> {
    report
        .localization
        .iter()
        .flat_map(|l| &l.tasks)
        .filter_map(|t| {
            let s = t.miou.get("tp_fp_fn").or(t.tuned.get("tp_fp_fn"))?;
            Some((t.task.as_str(), s.threshold))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_round_trip() {
        let mut t = Thresholds { rule: ThresholdRule::Gt, map: Some("raw".into()), ..Default::default() };
        t.classification.insert("Cardiomegaly".into(), 0.25);
        t.classification.insert("Edema".into(), f64::INFINITY);
        t.localization.insert(IouSlice::TpOnly, BTreeMap::from([("Edema".to_string(), 0.625)]));
        let text = serde_json::to_string(&t.to_json("valid.csv")).unwrap();
        assert_eq!(Thresholds::parse(&text).unwrap(), t);
        assert!(Thresholds::parse("{}").is_err());
        let off_grid = text.replace("0.625", "0.3");
        assert!(format!("{:#}", Thresholds::parse(&off_grid).unwrap_err()).contains("1/2048"));
    }
}

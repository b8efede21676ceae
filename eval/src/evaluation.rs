//! One split's evaluation, without I/O: the CSV's cases in, each case's scores and maps fed as a
//! front end gets them (from a model, or from predictions already written), the report out.
//!
//! [`Evaluation`] holds the cases, the ground truth and everything left out with its reason;
//! [`Evaluation::localize`] reduces one case's maps against its masks (the per-case work of the
//! localisation tables); [`Evaluation::finish`] assembles Table 1, Tables 2–3, the thresholds
//! this split would choose and the per-case tables. Reading files, running a model and writing
//! the outputs are the front end's (`medpatch evaluate`).

use crate::bootstrap::BootstrapOptions;
use crate::classification::{self, SplitData};
use crate::geometry::{Geometry, Rect};
use crate::labels::{LOCALIZATION_TASKS, Record, chexlocalize_id, task_class};
use crate::localization::{self, IouSlice, MapSummary, SaliencyMap, threshold_index};
use crate::report::{LocalizationSection, Report, Skipped, Thresholds};
use crate::rle;
use medpatch_models::CHEXPERT_CLASSES;
use serde_json::Value;
use std::collections::BTreeMap;

/// One CSV row on its way through the evaluation.
#[derive(Debug, Clone)]
pub struct Case {
    pub record: Record,
    /// CheXlocalize's image id.
    pub id: String,
    /// Scores per model class (None: the case could not be scored).
    pub scores: Option<Vec<f32>>,
}

/// CheXlocalize's ground truth: image id → task → RLE mask, and where it came from (for messages).
#[derive(Debug, Clone)]
pub struct GroundTruth {
    pub masks: BTreeMap<String, Value>,
    pub source: String,
}

/// A map kept for a saliency sheet: values (`width × height`, row-major) and the rectangle of
/// the original image it covers.
#[derive(Debug, Clone)]
pub struct SheetMap {
    pub values: Vec<f32>,
    pub width: usize,
    pub height: usize,
    pub target: Rect,
}

/// How the split is scored.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Resamples, seed and the threshold rule (≥ or >) for the whole evaluation.
    pub bootstrap: BootstrapOptions,
    /// Thresholds chosen on another split (the validation split) to apply here.
    pub thresholds: Option<Thresholds>,
    /// What the maps are, for the report ("raw patch logits", "dense raw (S = 8)", …).
    pub map_label: String,
    pub geometry: Geometry,
    /// Saliency sheets kept per task (the first positive cases).
    pub sheets: usize,
}

pub struct Evaluation {
    cases: Vec<Case>,
    ground_truth: Option<GroundTruth>,
    settings: Settings,
    /// task → (image id, summary)
    summaries: BTreeMap<&'static str, Vec<(String, MapSummary)>>,
    sheets: BTreeMap<(&'static str, String), SheetMap>,
    skipped: Vec<Skipped>,
    notes: Vec<String>,
}

/// What [`Evaluation::finish`] gives.
pub struct Finished {
    pub report: Report,
    /// The thresholds this split would choose (Youden per class, tuned segmentation thresholds).
    pub thresholds: Thresholds,
    /// `cases.csv`: id, path, then per evaluated class its score and label.
    pub cases_csv: String,
    /// `localization_cases.csv`: per task and image, the hit and the map's first maximum.
    pub localization_csv: Option<String>,
    /// Maps kept for saliency sheets, by task and image id.
    pub sheets: Vec<Sheet>,
}

/// What a saliency sheet shows: one case's map for one task, its ground truth and its summary.
pub struct Sheet {
    pub task: String,
    pub id: String,
    /// The case's CSV path (its image, relative to the data root).
    pub path: String,
    pub map: SheetMap,
    pub mask: rle::Mask,
    pub summary: MapSummary,
}

impl Evaluation {
    pub fn new(records: Vec<Record>, ground_truth: Option<GroundTruth>, settings: Settings) -> Self {
        let cases = records
            .into_iter()
            .map(|record| Case { id: chexlocalize_id(&record.path), record, scores: None })
            .collect();
        let mut evaluation = Evaluation {
            cases,
            ground_truth,
            settings,
            summaries: BTreeMap::new(),
            sheets: BTreeMap::new(),
            skipped: Vec::new(),
            notes: Vec::new(),
        };
        evaluation.note_threshold_provenance();
        evaluation
    }

    pub fn cases(&self) -> &[Case] {
        &self.cases
    }

    /// Are maps wanted (is there ground truth to reduce them against)?
    pub fn localizes(&self) -> bool {
        self.ground_truth.is_some()
    }

    /// Leave `case` out of `stage` ("all", "localization", "localization: <task>") for `reason`.
    pub fn skip(&mut self, case: &str, stage: &str, reason: impl Into<String>) {
        self.skipped.push(Skipped { case: case.to_string(), stage: stage.to_string(), reason: reason.into() });
    }

    /// A note for the report.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Case `index`'s scores, one per model class, in [0, 1].
    pub fn score(&mut self, index: usize, scores: Vec<f32>) {
        self.cases[index].scores = Some(scores);
    }

    /// A thresholds file made another way than this run scores: say so.
    fn note_threshold_provenance(&mut self) {
        let Some(t) = &self.settings.thresholds else { return };
        let mut notes = Vec::new();
        if t.rule != self.settings.bootstrap.rule {
            notes.push(format!(
                "the thresholds file was made with --threshold-rule {:?}; this run uses {:?}",
                t.rule, self.settings.bootstrap.rule
            ));
        }
        let geometry = geometry_name(self.settings.geometry);
        if let (Some(m), Some(g)) = (&t.map, &t.geometry)
            && (*m != self.settings.map_label || *g != geometry)
        {
            notes.push(format!(
                "segmentation thresholds were tuned on {m} maps with {g} geometry; this run scores {} with {geometry} \
                 geometry",
                self.settings.map_label
            ));
        }
        self.notes.extend(notes);
    }

    /// Reduce case `index`'s maps against its ground truth, for every CheXlocalize task among the
    /// model's `classes`. `map(task, class)` gives the task's map (values, width, height) in the
    /// model's space, or why there is none; `image_size` (width, height), when known, is checked
    /// against each mask's; `on_map` sees every map that was reduced (to save it), and its error
    /// leaves the case out of that task. Each problem is recorded with its reason.
    pub fn localize(
        &mut self,
        index: usize,
        classes: &[String],
        image_size: Option<(usize, usize)>,
        mut map: impl FnMut(&str, usize) -> Result<(Vec<f32>, usize, usize), String>,
        mut on_map: impl FnMut(&str, &[f32], usize, usize) -> Result<(), String>,
    ) {
        let Some(gt) = &self.ground_truth else { return };
        let id = self.cases[index].id.clone();
        let Some(entry) = gt.masks.get(&id) else {
            let reason = format!("no ground truth for this image id in {}", gt.source);
            self.skip(&id, "localization", reason);
            return;
        };
        let mut problems = Vec::new();
        for task in LOCALIZATION_TASKS {
            let stage = format!("localization: {task}");
            let Some(class) = classes.iter().position(|c| c == task_class(task)) else { continue };
            let Some(rle_value) = entry.get(task) else {
                problems.push((stage, format!("{} has no '{task}' mask for this image", gt.source)));
                continue;
            };
            let mask = match rle::decode_json(rle_value) {
                Ok(m) => m,
                Err(e) => {
                    problems.push((stage, format!("bad RLE in {}: {e}", gt.source)));
                    continue;
                }
            };
            if let Some((w, h)) = image_size
                && (w, h) != (mask.width, mask.height)
            {
                problems.push((
                    stage,
                    format!("the mask is {}×{} (w×h) but the image is {w}×{h}", mask.width, mask.height),
                ));
                continue;
            }
            let (values, width, height) = match map(task, class) {
                Ok(m) => m,
                Err(e) => {
                    problems.push((stage, e));
                    continue;
                }
            };
            let (left, top, side) = medpatch_models::contract::center_crop_box(mask.width as u32, mask.height as u32);
            let crop = Rect { left: left as usize, top: top as usize, width: side as usize, height: side as usize };
            let target = self.settings.geometry.target(mask.width, mask.height, crop);
            let summary =
                match localization::summarize_map(&SaliencyMap { values: &values, width, height }, &mask, target) {
                    Ok(s) => s,
                    Err(e) => {
                        problems.push((stage, e));
                        continue;
                    }
                };
            if let Err(e) = on_map(task, &values, width, height) {
                problems.push((stage, e));
            }
            let kept = self.sheets.keys().filter(|(t, _)| *t == task).count();
            if summary.gt_pixels > 0 && kept < self.settings.sheets {
                self.sheets.insert((task, id.clone()), SheetMap { values, width, height, target });
            }
            self.summaries.entry(task).or_default().push((id.clone(), summary));
        }
        for (stage, reason) in problems {
            self.skip(&id, &stage, reason);
        }
    }

    /// Table 1, Tables 2–3 and the rest, for a model named `model` with `classes` (its output
    /// order; the cases' scores follow it), on the split named `split`.
    pub fn finish(mut self, split: &str, model: &str, classes: &[String]) -> Finished {
        // Classes: the model's, where the CSV has a column of that name.
        let mut evaluated: Vec<(usize, usize)> = Vec::new(); // (model index, CSV column)
        for (m, class) in classes.iter().enumerate() {
            match CHEXPERT_CLASSES.iter().position(|c| c == class) {
                Some(k) => evaluated.push((m, k)),
                None => self.note(format!("the model's class '{class}' has no CSV column: not evaluated")),
            }
        }
        for class in CHEXPERT_CLASSES {
            if !classes.iter().any(|c| c == class) {
                self.note(format!("the CSV's class '{class}' is absent from the model: not evaluated"));
            }
        }
        let class_names: Vec<String> = evaluated.iter().map(|&(m, _)| classes[m].clone()).collect();
        let scored: Vec<&Case> = self.cases.iter().filter(|c| c.scores.is_some()).collect();
        let scores: Vec<Vec<f32>> = scored
            .iter()
            .map(|c| evaluated.iter().map(|&(m, _)| c.scores.as_ref().expect("filtered")[m]).collect())
            .collect();
        let labels: Vec<Vec<bool>> =
            scored.iter().map(|c| evaluated.iter().map(|&(_, k)| c.record.labels[k] > 0.5).collect()).collect();
        let settings = &self.settings;
        let class_thresholds: BTreeMap<String, f64> =
            settings.thresholds.as_ref().map(|t| t.classification.clone()).unwrap_or_default();
        let mut notes = Vec::new();
        if settings.thresholds.is_none() {
            notes.push(
                "no --thresholds-from: accuracy, sensitivity, specificity and mIoU need thresholds chosen on a \
                 validation split (this run's own choices are in thresholds.json)"
                    .to_string(),
            );
        } else {
            for name in &class_names {
                if !class_thresholds.contains_key(name) {
                    notes.push(format!("the thresholds file has no threshold for '{name}'"));
                }
            }
        }
        let classification = classification::evaluate(
            &SplitData { classes: &class_names, scores: &scores, labels: &labels },
            &class_thresholds,
            &settings.bootstrap,
        );
        let geometry = geometry_name(settings.geometry);
        let mut own = Thresholds {
            classification: classification
                .classes
                .iter()
                .filter_map(|c| Some((c.class.clone(), c.youden_threshold?)))
                .collect(),
            rule: settings.bootstrap.rule,
            map: Some(settings.map_label.clone()),
            geometry: Some(geometry.clone()),
            ..Default::default()
        };
        let localization_section = self.ground_truth.as_ref().map(|_| {
            let maps: BTreeMap<String, Vec<(String, MapSummary)>> =
                self.summaries.iter().map(|(task, entries)| (task.to_string(), entries.clone())).collect();
            let applied: BTreeMap<IouSlice, BTreeMap<String, usize>> = settings
                .thresholds
                .iter()
                .flat_map(|t| &t.localization)
                .map(|(slice, tasks)| {
                    (*slice, tasks.iter().filter_map(|(task, &t)| Some((task.clone(), threshold_index(t)?))).collect())
                })
                .collect();
            let tasks = localization::evaluate_tasks(&maps, &applied);
            for result in &tasks {
                for slice in IouSlice::ALL {
                    if let Some(t) = result.tuned.get(slice.key()) {
                        own.localization.entry(slice).or_default().insert(result.task.clone(), t.threshold);
                    }
                }
            }
            LocalizationSection { map: settings.map_label.clone(), geometry: geometry.clone(), tasks }
        });
        if self.ground_truth.is_some() && settings.geometry == Geometry::Stretch {
            notes.push(
                "geometry stretch: each crop-space map is stretched over the whole image, as the reference \
                 implementation's published localisation did (it recorded the image size before its centre crop)"
                    .into(),
            );
        }
        self.notes.extend(notes);
        let cases_csv = cases_csv(&self.cases, classes, &evaluated);
        let localization_csv = self.ground_truth.as_ref().map(|_| localization_csv(&self.summaries));
        let sheets = self
            .sheets
            .into_iter()
            .filter_map(|((task, id), map)| {
                let summary = self.summaries.get(task)?.iter().find(|(i, _)| *i == id)?.1.clone();
                let rle_value = self.ground_truth.as_ref()?.masks.get(&id)?.get(task)?;
                let mask = rle::decode_json(rle_value).ok()?;
                let path = self.cases.iter().find(|c| c.id == id)?.record.path.clone();
                Some(Sheet { task: task.to_string(), id, path, map, mask, summary })
            })
            .collect();
        let report = Report {
            split: split.to_string(),
            model: model.to_string(),
            cases_listed: self.cases.len(),
            classification: Some(classification),
            localization: localization_section,
            skipped: self.skipped,
            notes: self.notes,
        };
        Finished { report, thresholds: own, cases_csv, localization_csv, sheets }
    }
}

/// The geometry's name in reports and thresholds files.
pub fn geometry_name(geometry: Geometry) -> String {
    format!("{geometry:?}").to_lowercase()
}

fn csv_text(rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.write_record(&row).expect("writing to memory");
    }
    String::from_utf8(writer.into_inner().expect("writing to memory")).expect("the fields are text")
}

fn cases_csv(cases: &[Case], classes: &[String], evaluated: &[(usize, usize)]) -> String {
    let header = ["id".to_string(), "path".to_string()]
        .into_iter()
        .chain(evaluated.iter().flat_map(|&(m, _)| [format!("score:{}", classes[m]), format!("label:{}", classes[m])]));
    let rows = cases.iter().filter_map(|case| {
        let scores = case.scores.as_ref()?;
        Some(
            [case.id.clone(), case.record.path.clone()]
                .into_iter()
                .chain(
                    evaluated
                        .iter()
                        .flat_map(|&(m, k)| [scores[m].to_string(), (case.record.labels[k] as u8).to_string()]),
                )
                .collect(),
        )
    });
    csv_text(std::iter::once(header.collect()).chain(rows))
}

fn localization_csv(summaries: &BTreeMap<&'static str, Vec<(String, MapSummary)>>) -> String {
    let header = ["task", "id", "hit", "argmax_x", "argmax_y", "gt_pixels"].map(String::from).to_vec();
    let rows = summaries.iter().flat_map(|(task, entries)| {
        entries.iter().map(move |(id, s)| {
            vec![
                task.to_string(),
                id.clone(),
                s.hit.map_or(String::new(), |h| (h as u8).to_string()),
                s.argmax.0.to_string(),
                s.argmax.1.to_string(),
                s.gt_pixels.to_string(),
            ]
        })
    });
    csv_text(std::iter::once(header).chain(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ThresholdRule;

    fn record(path: &str, positive: &[usize]) -> Record {
        let mut labels = [0f32; 14];
        for &k in positive {
            labels[k] = 1.0;
        }
        Record { path: path.to_string(), labels }
    }

    fn settings() -> Settings {
        Settings {
            bootstrap: BootstrapOptions { resamples: 0, seed: 0, rule: ThresholdRule::Ge },
            thresholds: None,
            map_label: "raw patch logits".into(),
            geometry: Geometry::Crop,
            sheets: 1,
        }
    }

    #[test]
    fn cases_are_scored_localized_and_reported_with_every_problem_named() {
        let classes: Vec<String> = CHEXPERT_CLASSES.iter().map(|c| c.to_string()).collect();
        let records =
            vec![record("p/patient1/study1/view1_frontal.jpg", &[2]), record("p/patient2/study1/view1.jpg", &[])];
        // 4×4 images; Cardiomegaly's mask is the top-left 2×2 of patient 1.
        let mut mask = rle::Mask::new(4, 4);
        for (x, y) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            mask.set(x, y, true);
        }
        let gt = GroundTruth {
            masks: BTreeMap::from([(
                "patient1_study1_view1_frontal".to_string(),
                serde_json::json!({ "Cardiomegaly": rle::encode_json(&mask) }),
            )]),
            source: "gt.json".into(),
        };
        let mut evaluation = Evaluation::new(records, Some(gt), settings());
        assert!(evaluation.localizes());
        evaluation.score(0, vec![0.9; 14]);
        evaluation.score(1, vec![0.1; 14]);
        let mut saved = Vec::new();
        evaluation.localize(
            0,
            &classes,
            Some((4, 4)),
            |task, _| {
                if task == "Cardiomegaly" {
                    // high in the top-left quarter of the model's 2×2 map
                    Ok((vec![1.0, 0.0, 0.0, 0.0], 2, 2))
                } else {
                    Err(format!("no map for {task}"))
                }
            },
            |task, values, w, h| {
                saved.push((task.to_string(), values.len(), w, h));
                Ok(())
            },
        );
        evaluation.localize(1, &classes, None, |_, _| unreachable!("no ground truth"), |_, _, _, _| Ok(()));
        assert_eq!(saved, [("Cardiomegaly".to_string(), 4, 2, 2)]);
        let finished = evaluation.finish("test.csv", "model", &classes);
        let report = &finished.report;
        assert_eq!(report.cases_listed, 2);
        // Patient 2 has no ground truth; patient 1 has no masks (and no maps) for the other tasks.
        assert!(report.skipped.iter().any(|s| s.case == "patient2_study1_view1" && s.reason.contains("gt.json")));
        assert!(
            report.skipped.iter().any(|s| s.stage == "localization: Edema" && s.reason.contains("no 'Edema' mask"))
        );
        let tasks = &report.localization.as_ref().unwrap().tasks;
        let cardiomegaly = tasks.iter().find(|t| t.task == "Cardiomegaly").unwrap();
        assert_eq!(cardiomegaly.hit_rate, Some(1.0));
        assert_eq!(finished.sheets.len(), 1);
        assert!(finished.cases_csv.starts_with("id,path,score:No Finding,label:No Finding,"));
        assert_eq!(finished.cases_csv.lines().count(), 3);
        assert!(finished.localization_csv.unwrap().contains("Cardiomegaly,patient1_study1_view1_frontal,1,0,0,4"));
        assert!(report.notes.iter().any(|n| n.contains("no --thresholds-from")));
    }

    #[test]
    fn a_mask_of_another_size_than_its_image_is_left_out_with_the_sizes() {
        let classes: Vec<String> = CHEXPERT_CLASSES.iter().map(|c| c.to_string()).collect();
        let gt = GroundTruth {
            masks: BTreeMap::from([(
                "a_b_c".to_string(),
                serde_json::json!({ "Edema": rle::encode_json(&rle::Mask::new(10, 10)) }),
            )]),
            source: "gt.json".into(),
        };
        let mut evaluation = Evaluation::new(vec![record("a/b/c.png", &[])], Some(gt), settings());
        evaluation.localize(0, &classes, Some((20, 10)), |_, _| Ok((vec![0.0; 4], 2, 2)), |_, _, _, _| Ok(()));
        let report = evaluation.finish("s", "m", &classes).report;
        assert!(
            report.skipped.iter().any(|s| s.reason == "the mask is 10×10 (w×h) but the image is 20×10"),
            "{:?}",
            report.skipped
        );
    }
}

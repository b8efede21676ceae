//! `medpatch evaluate`: the paper's evaluation of a model on one split (CheXpert-style CSV, and
//! CheXlocalize ground truth for the localisation tables), from the model itself or from
//! predictions `medpatch predict` already wrote. The metrics live in `medpatch-eval`; this file
//! gathers scores, labels and maps, and writes the reports.

use super::{EngineArgs, exit};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use medpatch_engine::decode::{self, GrayImage};
use medpatch_engine::{Engine, MapKind, explain, preprocess};
use medpatch_eval::bootstrap::BootstrapOptions;
use medpatch_eval::classification::{self, SplitData};
use medpatch_eval::geometry::{Geometry, Rect, resize_bilinear};
use medpatch_eval::labels::{self, LOCALIZATION_TASKS, Record, chexlocalize_id, task_class};
use medpatch_eval::localization::{self, IouSlice, MapSummary, SaliencyMap, threshold_index};
use medpatch_eval::metrics::ThresholdRule;
use medpatch_eval::report::{self, LocalizationSection, Report, Skipped, Thresholds};
use medpatch_eval::{npy, plot, rle};
use medpatch_models::write_atomically;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct EvaluateArgs {
    /// The split's CheXpert-style CSV (Path, Sex, Age, Frontal/Lateral, AP/PA, the 14 findings;
    /// the visualCheXbert layout is accepted). Labels: 1.0 → positive; 0.0, -1.0, blank → negative.
    #[arg(long, value_name = "FILE.csv", required_unless_present = "bench")]
    csv: Option<PathBuf>,
    /// Folder the CSV's paths are relative to (default: the CSV's folder).
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,
    /// Score predictions written by `medpatch predict` (JSON Lines) instead of running a model.
    /// With `predict --out`, the saved patch logits give full-precision scores and the maps.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "model")]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
    /// CheXlocalize ground truth (gt_segmentations_{val,test}.json): adds hit rate and mIoU.
    #[arg(long, value_name = "FILE.json")]
    gt: Option<PathBuf>,
    /// Saliency: the patch logits (raw) or scaled by the image probability.
    #[arg(long, value_enum, default_value = "raw")]
    map: MapChoice,
    /// Use the dense shift-averaged map with S×S shifts (costs S² forward passes per image).
    #[arg(long, value_name = "S")]
    shift_steps: Option<usize>,
    /// Score `.npy` maps made by any method instead: DIR/<image id>_<task>_map.npy, 2-D, in the
    /// model's input space (the centre crop) unless --geometry stretch.
    #[arg(long, value_name = "DIR")]
    maps_dir: Option<PathBuf>,
    /// crop: maps cover the model's centre crop of the image (default); stretch: maps cover the
    /// whole image (how the seed's published localisation figures were made, or maps computed on
    /// the uncropped image).
    #[arg(long, value_enum, default_value = "crop")]
    geometry: GeometryChoice,
    /// Thresholds chosen on the validation split (thresholds.json from an earlier run).
    #[arg(long, value_name = "FILE")]
    thresholds_from: Option<PathBuf>,
    /// Bootstrap resamples for the classification intervals (0: none).
    #[arg(long, default_value_t = 100_000)]
    bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// ge: positive when score ≥ threshold (scikit-learn's ROC convention); gt: score > threshold
    /// (the seed's torchmetrics calls).
    #[arg(long, value_enum, default_value = "ge")]
    threshold_rule: RuleChoice,
    /// Output folder: report.md, report.json, metrics.csv, cases.csv, thresholds.json, roc/, sheets/.
    #[arg(long, value_name = "DIR", default_value = "evaluation")]
    out: PathBuf,
    /// Also write the model-space maps that were scored, as DIR/<image id>_<task>_map.npy.
    #[arg(long, value_name = "DIR")]
    save_maps: Option<PathBuf>,
    /// Saliency sheets (X-ray, ground-truth outline, map) for the first N positive cases per task.
    #[arg(long, default_value_t = 3)]
    sheets: usize,
    /// Images per batch through the model.
    #[arg(long, default_value_t = 4)]
    images_per_batch: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Time the bootstrap alone on synthetic scores (--bench-cases × 14 classes × --bootstrap resamples).
    #[arg(long)]
    bench: bool,
    #[arg(long, default_value_t = 500)]
    bench_cases: usize,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum MapChoice {
    Raw,
    Scaled,
}

#[derive(Clone, Copy, ValueEnum)]
enum GeometryChoice {
    Crop,
    Stretch,
}

#[derive(Clone, Copy, ValueEnum)]
enum RuleChoice {
    Ge,
    Gt,
}

/// One CSV row on its way through the evaluation.
struct Case {
    record: Record,
    id: String,
    image_path: PathBuf,
    /// Scores per evaluated class (None: the case could not be scored).
    scores: Option<Vec<f32>>,
}

/// Where the maps of a case come from.
enum Maps {
    /// Model-space maps per class (`[classes][side][side]`, already in the seed's storage form).
    Model { values: Vec<f32>, side: usize },
    /// `.npy` files in a folder.
    Folder(PathBuf),
}

struct Localization {
    gt: BTreeMap<String, Value>,
    gt_path: PathBuf,
    geometry: Geometry,
    /// task → (image id, summary)
    summaries: BTreeMap<&'static str, Vec<(String, MapSummary)>>,
    /// Model-space maps kept for the saliency sheets, by (task, image id).
    sheet_maps: BTreeMap<(&'static str, String), SheetMap>,
}

/// A saliency map kept for a sheet: values (width × height, row-major), width, height, and the
/// rectangle of the original image it covers.
type SheetMap = (Vec<f32>, usize, usize, Rect);

pub fn run(args: EvaluateArgs) -> Result<ExitCode> {
    if args.bench {
        return bench(&args);
    }
    let csv = args.csv.clone().expect("clap requires --csv");
    let records = labels::read_csv(&csv)?;
    let data_root = args.data_root.clone().unwrap_or_else(|| csv.parent().unwrap_or(Path::new(".")).to_path_buf());
    let thresholds = match &args.thresholds_from {
        Some(path) => Some(Thresholds::read(path)?),
        None => None,
    };
    let rule = match args.threshold_rule {
        RuleChoice::Ge => ThresholdRule::Ge,
        RuleChoice::Gt => ThresholdRule::Gt,
    };
    let geometry = match args.geometry {
        GeometryChoice::Crop => Geometry::Crop,
        GeometryChoice::Stretch => Geometry::Stretch,
    };
    let map_label = match (&args.maps_dir, args.shift_steps, args.map) {
        (Some(dir), ..) => format!("npy maps from {}", dir.display()),
        (None, Some(s), MapChoice::Raw) => format!("dense raw (S = {s})"),
        (None, Some(s), MapChoice::Scaled) => format!("dense scaled (S = {s})"),
        (None, None, MapChoice::Raw) => "raw patch logits".to_string(),
        (None, None, MapChoice::Scaled) => "scaled patch logits".to_string(),
    };
    let mut notes = Vec::new();
    if let Some(t) = &thresholds {
        if t.rule != rule {
            notes.push(format!(
                "the thresholds file was made with --threshold-rule {:?}; this run uses {rule:?}",
                t.rule
            ));
        }
        if let (Some(m), Some(g)) = (&t.map, &t.geometry)
            && (*m != map_label || *g != format!("{geometry:?}").to_lowercase())
        {
            notes.push(format!(
                "segmentation thresholds were tuned on {m} maps with {g} geometry; this run scores {map_label} with {} geometry",
                format!("{geometry:?}").to_lowercase()
            ));
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    if let Some(dir) = &args.save_maps {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut localization = match &args.gt {
        Some(path) => Some(Localization {
            gt: read_ground_truth(path)?,
            gt_path: path.clone(),
            geometry,
            summaries: BTreeMap::new(),
            sheet_maps: BTreeMap::new(),
        }),
        None => None,
    };
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut cases: Vec<Case> = records
        .into_iter()
        .map(|record| Case {
            id: chexlocalize_id(&record.path),
            image_path: data_root.join(&record.path),
            record,
            scores: None,
        })
        .collect();

    let (model_name, classes) = if let Some(predictions) = &args.predictions {
        score_from_predictions(&args, predictions, &mut cases, localization.as_mut(), &mut skipped, &mut notes)?
    } else {
        let engine = args.engine.build()?;
        if let Some(s) = args.shift_steps
            && !explain::valid_shift_steps(s, engine.model().patch_size())
        {
            eprintln!(
                "medpatch: error: --shift-steps must be a power of two from 1 to the patch size {} (got {s})",
                engine.model().patch_size()
            );
            return Ok(exit::usage());
        }
        super::predict::report_engine(&engine);
        score_with_model(&args, &engine, &mut cases, localization.as_mut(), &mut skipped)?
    };

    // Classes: the model's, where the CSV has a column of that name.
    let mut evaluated: Vec<(usize, usize)> = Vec::new(); // (model index, CSV column)
    for (m, class) in classes.iter().enumerate() {
        match medpatch_models::CHEXPERT_CLASSES.iter().position(|c| c == class) {
            Some(k) => evaluated.push((m, k)),
            None => notes.push(format!("the model's class '{class}' has no CSV column: not evaluated")),
        }
    }
    for class in medpatch_models::CHEXPERT_CLASSES {
        if !classes.iter().any(|c| c == class) {
            notes.push(format!("the CSV's class '{class}' is absent from the model: not evaluated"));
        }
    }
    let class_names: Vec<String> = evaluated.iter().map(|&(m, _)| classes[m].clone()).collect();
    let scored: Vec<&Case> = cases.iter().filter(|c| c.scores.is_some()).collect();
    let scores: Vec<Vec<f32>> =
        scored.iter().map(|c| evaluated.iter().map(|&(m, _)| c.scores.as_ref().unwrap()[m]).collect()).collect();
    let labels: Vec<Vec<bool>> =
        scored.iter().map(|c| evaluated.iter().map(|&(_, k)| c.record.labels[k] > 0.5).collect()).collect();
    let class_thresholds: BTreeMap<String, f64> =
        thresholds.as_ref().map(|t| t.classification.clone()).unwrap_or_default();
    if thresholds.is_none() {
        notes.push(
            "no --thresholds-from: accuracy, sensitivity, specificity and mIoU need thresholds chosen on a validation split \
             (this run's own choices are in thresholds.json)"
                .into(),
        );
    } else {
        for name in &class_names {
            if !class_thresholds.contains_key(name) {
                notes.push(format!("the thresholds file has no threshold for '{name}'"));
            }
        }
    }
    let started = Instant::now();
    let classification = classification::evaluate(
        &SplitData { classes: &class_names, scores: &scores, labels: &labels },
        &class_thresholds,
        &BootstrapOptions { resamples: args.bootstrap, seed: args.seed, rule },
    );
    if !args.quiet {
        eprintln!(
            "medpatch: classification metrics and {} bootstrap resamples in {:.2} s",
            args.bootstrap,
            started.elapsed().as_secs_f64()
        );
    }

    // Localization tables.
    let mut own = Thresholds {
        classification: classification
            .classes
            .iter()
            .filter_map(|c| Some((c.class.clone(), c.youden_threshold?)))
            .collect(),
        rule,
        map: Some(map_label.clone()),
        geometry: Some(format!("{geometry:?}").to_lowercase()),
        ..Default::default()
    };
    let localization_section = localization.as_ref().map(|loc| {
        let maps: BTreeMap<String, Vec<(String, MapSummary)>> =
            loc.summaries.iter().map(|(task, entries)| (task.to_string(), entries.clone())).collect();
        let applied: BTreeMap<IouSlice, BTreeMap<String, usize>> = thresholds
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
        LocalizationSection { map: map_label.clone(), geometry: format!("{geometry:?}").to_lowercase(), tasks }
    });
    if localization.is_some() && geometry == Geometry::Stretch {
        notes.push(
            "geometry stretch: each crop-space map is stretched over the whole image, as the seed's published \
             localisation did (it recorded the image size before its centre crop)"
                .into(),
        );
    }

    let report = Report {
        split: csv.display().to_string(),
        model: model_name,
        cases_listed: cases.len(),
        classification: Some(classification),
        localization: localization_section,
        skipped,
        notes,
    };
    write_outputs(&args, &report, &cases, &class_names, &evaluated, &own, localization.as_ref())?;
    eprintln!("medpatch: report written to {}", args.out.join("report.md").display());
    if report.skipped.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "medpatch: {} case(s) were left out of a metric; see the Skipped section of the report",
            report.skipped.len()
        );
        Ok(exit::failure())
    }
}

fn read_ground_truth(path: &Path) -> Result<BTreeMap<String, Value>> {
    let text = medpatch_models::read_regular_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let Value::Object(map) = value else {
        bail!("{}: expected CheXlocalize's {{image id: {{task: RLE}}}} object", path.display())
    };
    Ok(map.into_iter().collect())
}

fn skip(skipped: &mut Vec<Skipped>, case: &str, stage: &str, reason: impl Into<String>) {
    skipped.push(Skipped { case: case.to_string(), stage: stage.to_string(), reason: reason.into() });
}

fn progress_bar(len: usize, quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || len < 2 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Run the model on every case (batched), and reduce each case's maps against its ground truth.
fn score_with_model(
    args: &EvaluateArgs,
    engine: &Engine,
    cases: &mut [Case],
    mut localization: Option<&mut Localization>,
    skipped: &mut Vec<Skipped>,
) -> Result<(String, Vec<String>)> {
    let model = engine.model();
    let classes = model.metadata.classes.clone();
    let (grid, patch, side) = (model.grid(), model.patch_size(), model.image_size());
    let kind = if args.map == MapChoice::Scaled { MapKind::Scaled } else { MapKind::Raw };
    let progress = progress_bar(cases.len(), args.quiet);
    let mut index = 0;
    for batch in cases.chunks_mut(args.images_per_batch.max(1)) {
        let mut decoded: Vec<(usize, GrayImage)> = Vec::new();
        for (k, case) in batch.iter().enumerate() {
            if !case.image_path.is_file() {
                skip(skipped, &case.record.path, "all", format!("image file not found: {}", case.image_path.display()));
                continue;
            }
            match decode::decode_path(&case.image_path) {
                Ok(image) => decoded.push((k, image)),
                Err(e) => skip(skipped, &case.record.path, "all", e.to_string()),
            }
        }
        let prepared: Vec<GrayImage> = decoded.iter().map(|(_, image)| engine.prepare(image)).collect();
        let predictions = engine.predict_prepared(&prepared)?;
        for ((k, original), prediction) in decoded.iter().zip(predictions) {
            let case = &mut batch[*k];
            let prediction = match prediction {
                Ok(p) => p,
                Err(e) => {
                    skip(skipped, &case.record.path, "all", e.to_string());
                    continue;
                }
            };
            case.scores = Some(prediction.probabilities.clone());
            if let Some(loc) = localization.as_deref_mut() {
                let maps = if let Some(dir) = &args.maps_dir {
                    Maps::Folder(dir.clone())
                } else {
                    let raw = match args.shift_steps {
                        Some(s) => {
                            let mut values = engine.dense_map(&prediction.image, s)?.values;
                            if kind == MapKind::Scaled {
                                for (plane, &z) in values.chunks_exact_mut(side * side).zip(&prediction.logits) {
                                    let g = explain::sigmoid(z);
                                    plane.iter_mut().for_each(|v| *v *= g);
                                }
                            }
                            values
                        }
                        None => explain::coarse_map(
                            &explain::patch_saliency(&prediction.patch_logits, &prediction.logits, kind),
                            grid,
                            patch,
                            classes.len(),
                        ),
                    };
                    Maps::Model { values: explain::normalise(&raw), side }
                };
                let size = (original.width as usize, original.height as usize);
                localize_case(args, loc, case, &classes, &maps, Some(size), skipped);
            }
        }
        index += batch.len();
        progress.set_position(index as u64);
    }
    progress.finish_and_clear();
    Ok((model.origin.to_string(), classes))
}

/// Reduce one case's maps (every CheXlocalize task the model has) against its ground truth.
fn localize_case(
    args: &EvaluateArgs,
    loc: &mut Localization,
    case: &Case,
    classes: &[String],
    maps: &Maps,
    image_size: Option<(usize, usize)>,
    skipped: &mut Vec<Skipped>,
) {
    let Some(entry) = loc.gt.get(&case.id) else {
        skip(
            skipped,
            &case.id,
            "localization",
            format!("no ground truth for this image id in {}", loc.gt_path.display()),
        );
        return;
    };
    for task in LOCALIZATION_TASKS {
        let stage = format!("localization: {task}");
        let Some(class) = classes.iter().position(|c| c == task_class(task)) else { continue };
        let Some(rle_value) = entry.get(task) else {
            skip(skipped, &case.id, &stage, format!("{} has no '{task}' mask for this image", loc.gt_path.display()));
            continue;
        };
        let mask = match rle::decode_json(rle_value) {
            Ok(m) => m,
            Err(e) => {
                skip(skipped, &case.id, &stage, format!("bad RLE in {}: {e}", loc.gt_path.display()));
                continue;
            }
        };
        if let Some((w, h)) = image_size
            && (w, h) != (mask.width, mask.height)
        {
            skip(
                skipped,
                &case.id,
                &stage,
                format!("the mask is {}×{} (w×h) but the image is {w}×{h}", mask.width, mask.height),
            );
            continue;
        }
        let (values, mw, mh) = match maps {
            Maps::Model { values, side } => {
                (values[class * side * side..(class + 1) * side * side].to_vec(), *side, *side)
            }
            Maps::Folder(dir) => {
                let path = dir.join(format!("{}_{task}_map.npy", case.id));
                match npy::read_map(&path) {
                    Ok(a) => (a.data, a.shape[1], a.shape[0]),
                    Err(e) => {
                        skip(skipped, &case.id, &stage, format!("{}: {e}", path.display()));
                        continue;
                    }
                }
            }
        };
        let (left, top, crop) = preprocess::center_crop_box(mask.width as u32, mask.height as u32);
        let crop = Rect { left: left as usize, top: top as usize, width: crop as usize, height: crop as usize };
        let target = loc.geometry.target(mask.width, mask.height, crop);
        let map = SaliencyMap { values: &values, width: mw, height: mh };
        match localization::summarize_map(&map, &mask, target) {
            Ok(summary) => {
                if let Some(dir) = &args.save_maps {
                    let path = dir.join(format!("{}_{task}_map.npy", case.id));
                    if let Err(e) = write_atomically(&path, &medpatch_engine::render::npy_f32(&[mh, mw], &values)) {
                        skip(skipped, &case.id, &stage, format!("cannot write {}: {e}", path.display()));
                    }
                }
                let positives = loc.sheet_maps.keys().filter(|(t, _)| *t == task).count();
                if summary.gt_pixels > 0 && positives < args.sheets {
                    loc.sheet_maps.insert((task, case.id.clone()), (values.clone(), mw, mh, target));
                }
                loc.summaries.entry(task).or_default().push((case.id.clone(), summary));
            }
            Err(e) => skip(skipped, &case.id, &stage, e),
        }
    }
}

/// Scores (and maps) from `medpatch predict` JSON Lines, matched to the CSV rows by path.
fn score_from_predictions(
    args: &EvaluateArgs,
    path: &Path,
    cases: &mut [Case],
    mut localization: Option<&mut Localization>,
    skipped: &mut Vec<Skipped>,
    notes: &mut Vec<String>,
) -> Result<(String, Vec<String>)> {
    let text = medpatch_models::read_regular_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records: Vec<Value> = Vec::new();
    for (line, row) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        records.push(
            serde_json::from_str(row)
                .with_context(|| format!("{} line {}: not a JSON object", path.display(), line + 1))?,
        );
    }
    let classes: Vec<String> = records
        .iter()
        .find_map(|r| r["probabilities"].as_object())
        .map(|p| p.keys().cloned().collect())
        .with_context(|| format!("{}: no record has probabilities", path.display()))?;
    let model = records.iter().find_map(|r| r["model"].as_str()).unwrap_or("unknown").to_string();
    // Index the predictions by path components, to match CSV paths relative to the data root.
    let components = |p: &str| -> Vec<String> {
        Path::new(p).components().filter_map(|c| c.as_os_str().to_str().map(str::to_string)).collect()
    };
    let inputs: Vec<Vec<String>> = records.iter().map(|r| components(r["input"].as_str().unwrap_or(""))).collect();
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, parts) in inputs.iter().enumerate() {
        if let Some(last) = parts.last() {
            by_name.entry(last.as_str()).or_default().push(i);
        }
    }
    let mut rounded = 0;
    let progress = progress_bar(cases.len(), args.quiet);
    for case in cases.iter_mut() {
        progress.inc(1);
        let wanted = components(&case.record.path);
        let candidates: Vec<usize> = by_name
            .get(wanted.last().map_or("", String::as_str))
            .map(|v| v.iter().copied().filter(|&i| inputs[i].ends_with(&wanted)).collect())
            .unwrap_or_default();
        let record = match candidates[..] {
            [i] => &records[i],
            [] => {
                skip(skipped, &case.record.path, "all", format!("no prediction for this path in {}", path.display()));
                continue;
            }
            _ => {
                skip(
                    skipped,
                    &case.record.path,
                    "all",
                    format!("{} predictions in {} match this path", candidates.len(), path.display()),
                );
                continue;
            }
        };
        if let Some(error) = record["error"].as_str() {
            skip(skipped, &case.record.path, "all", format!("predict failed on it: {error}"));
            continue;
        }
        // Full precision from the saved patch logits when predict wrote them.
        let patch_logits = match record["outputs"]["patch_logits"].as_str() {
            Some(p) => match npy::read(Path::new(p)) {
                Ok(a) if a.shape.len() == 3 && a.shape[2] == classes.len() && a.shape[0] == a.shape[1] => Some(a),
                Ok(a) => {
                    skip(
                        skipped,
                        &case.record.path,
                        "all",
                        format!("{p}: expected [grid, grid, {}] patch logits, found {:?}", classes.len(), a.shape),
                    );
                    continue;
                }
                Err(e) => {
                    skip(skipped, &case.record.path, "all", format!("{p}: {e}"));
                    continue;
                }
            },
            None => None,
        };
        let logits: Vec<f32> = match &patch_logits {
            Some(a) => explain::mean_logits(&a.data, classes.len()),
            None => classes.iter().map(|c| record["logits"][c].as_f64().unwrap_or(f64::NAN) as f32).collect(),
        };
        let scores: Vec<f32> = match &patch_logits {
            Some(_) => logits.iter().map(|&z| explain::sigmoid(z)).collect(),
            None => {
                rounded += 1;
                classes.iter().map(|c| record["probabilities"][c].as_f64().unwrap_or(f64::NAN) as f32).collect()
            }
        };
        if let Some(c) = scores.iter().position(|s| !s.is_finite()) {
            skip(skipped, &case.record.path, "all", format!("no probability for '{}'", classes[c]));
            continue;
        }
        if let Some(c) = scores.iter().position(|s| !(0.0..=1.0).contains(s)) {
            bail!(
                "{}: the prediction for {} gives '{}' the probability {}, outside [0, 1]: not medpatch predict's output",
                path.display(),
                case.record.path,
                classes[c],
                scores[c]
            );
        }
        case.scores = Some(scores);
        let Some(loc) = localization.as_deref_mut() else { continue };
        let maps = if let Some(dir) = &args.maps_dir {
            Maps::Folder(dir.clone())
        } else if let Some(s) = args.shift_steps {
            let Some(p) = record["outputs"]["dense_map"].as_str() else {
                skip(
                    skipped,
                    &case.id,
                    "localization",
                    format!("no dense map: run predict with --out and --shift-steps {s}"),
                );
                continue;
            };
            match npy::read(Path::new(p)) {
                Ok(a) if a.shape.len() == 3 && a.shape[0] == classes.len() && a.shape[1] == a.shape[2] => {
                    let side = a.shape[1];
                    let mut values = a.data;
                    if args.map == MapChoice::Scaled {
                        for (plane, &z) in values.chunks_exact_mut(side * side).zip(&logits) {
                            let g = explain::sigmoid(z);
                            plane.iter_mut().for_each(|v| *v *= g);
                        }
                    }
                    Maps::Model { values: explain::normalise(&values), side }
                }
                Ok(a) => {
                    skip(
                        skipped,
                        &case.id,
                        "localization",
                        format!("{p}: expected [classes, side, side], found {:?}", a.shape),
                    );
                    continue;
                }
                Err(e) => {
                    skip(skipped, &case.id, "localization", format!("{p}: {e}"));
                    continue;
                }
            }
        } else {
            let Some(a) = &patch_logits else {
                skip(skipped, &case.id, "localization", "no patch logits: run predict with --out");
                continue;
            };
            let grid = a.shape[0];
            let kind = if args.map == MapChoice::Scaled { MapKind::Scaled } else { MapKind::Raw };
            let patch = 512 / grid.max(1);
            let values =
                explain::coarse_map(&explain::patch_saliency(&a.data, &logits, kind), grid, patch, classes.len());
            Maps::Model { values: explain::normalise(&values), side: grid * patch }
        };
        // The image itself, when reachable, to check the masks' size.
        let size = decode::decode_path(&case.image_path).ok().map(|i| (i.width as usize, i.height as usize));
        localize_case(args, loc, case, &classes, &maps, size, skipped);
    }
    progress.finish_and_clear();
    if rounded > 0 {
        notes.push(format!(
            "{rounded} prediction(s) had no saved patch logits (predict without --out): their probabilities are the \
             JSON's, rounded to 6 decimals"
        ));
    }
    Ok((format!("{model} (predictions from {})", path.display()), classes))
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    args: &EvaluateArgs,
    report: &Report,
    cases: &[Case],
    classes: &[String],
    evaluated: &[(usize, usize)],
    own: &Thresholds,
    localization: Option<&Localization>,
) -> Result<()> {
    let out = &args.out;
    let put = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = out.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_atomically(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    let mut md = report::markdown(report);
    // ROC curves.
    if let Some(c) = &report.classification {
        let mut links = Vec::new();
        for r in &c.classes {
            let Some(curve) = &r.roc else { continue };
            let youden = r.youden_threshold.and_then(|t| curve.thresholds.iter().position(|&x| x == t));
            let name = format!("roc/{}.png", file_safe(&r.class));
            put(&name, &plot::roc_png(curve, youden, 400).map_err(anyhow::Error::msg)?)?;
            links.push(format!("[{}]({name}) (AUROC {:.3})", r.class, r.auroc.unwrap_or(f64::NAN)));
        }
        if !links.is_empty() {
            md.push_str(&format!(
                "\n## ROC curves\n\nFalse positive rate across, true positive rate up; grey: chance; red dot: this split's \
                 Youden point. {}\n",
                links.join(", ")
            ));
        }
    }
    // Saliency sheets.
    if let Some(loc) = localization
        && !loc.sheet_maps.is_empty()
    {
        md.push_str(
            "\n## Saliency sheets\n\nLeft: the X-ray with the ground truth outlined (yellow). Right: the map over the part \
             of the image it covers (red = high), the segmentation at the applied (else tuned) TP, FP, FN threshold \
             (cyan) and the map's first maximum (green cross).\n\n",
        );
        let tuned: BTreeMap<&str, f64> = report
            .localization
            .iter()
            .flat_map(|l| &l.tasks)
            .filter_map(|t| {
                let s = t.miou.get("tp_fp_fn").or(t.tuned.get("tp_fp_fn"))?;
                Some((t.task.as_str(), s.threshold))
            })
            .collect();
        for ((task, id), (map, mw, mh, target)) in &loc.sheet_maps {
            let Some(case) = cases.iter().find(|c| &c.id == id) else { continue };
            let Ok(image) = decode::decode_path(&case.image_path) else { continue };
            let Ok(mask) = rle::decode_json(&loc.gt[id][*task]) else { continue };
            let summary = loc.summaries[task].iter().find(|(i, _)| i == id).map(|(_, s)| s);
            let Some(summary) = summary else { continue };
            let resized = resize_bilinear(map, *mw, *mh, target.width, target.height);
            let (w, h, rgb) = plot::saliency_sheet(
                &image.pixels,
                image.width as usize,
                image.height as usize,
                &mask,
                &resized,
                *target,
                summary.argmax,
                tuned.get(task).copied(),
                384,
            );
            let name = format!("sheets/{}/{id}.png", file_safe(task));
            put(&name, &plot::png_rgb(w, h, &rgb).map_err(anyhow::Error::msg)?)?;
            md.push_str(&format!("- {task}, {id} (hit: {}): ![{id}]({name})\n", summary.hit.unwrap_or(false)));
        }
    }
    put("report.md", md.as_bytes())?;
    put("report.json", serde_json::to_string_pretty(report)?.as_bytes())?;
    put("metrics.csv", report::csv(report).as_bytes())?;
    put("thresholds.json", serde_json::to_string_pretty(&own.to_json(&report.split))?.as_bytes())?;
    // Per case: id, path, then per evaluated class its score and label.
    let mut text = String::from("id,path");
    for class in classes {
        text.push_str(&format!(",score:{class},label:{class}"));
    }
    text.push('\n');
    for case in cases {
        let Some(scores) = &case.scores else { continue };
        text.push_str(&format!("{},{}", case.id, case.record.path));
        for &(m, k) in evaluated {
            text.push_str(&format!(",{},{}", scores[m], case.record.labels[k] as u8));
        }
        text.push('\n');
    }
    put("cases.csv", text.as_bytes())?;
    if let Some(loc) = localization {
        let mut text = String::from("task,id,hit,argmax_x,argmax_y,gt_pixels\n");
        for (task, entries) in &loc.summaries {
            for (id, s) in entries {
                let hit = s.hit.map_or(String::new(), |h| (h as u8).to_string());
                text.push_str(&format!("{task},{id},{hit},{},{},{}\n", s.argmax.0, s.argmax.1, s.gt_pixels));
            }
        }
        put("localization_cases.csv", text.as_bytes())?;
    }
    Ok(())
}

fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// The speed target: 100,000 resamples × 14 classes × 500 cases, timed.
fn bench(args: &EvaluateArgs) -> Result<ExitCode> {
    use medpatch_eval::bootstrap;
    use medpatch_models::Rng;
    let (n, classes) = (args.bench_cases, 14);
    let mut rng = Rng::new(args.seed);
    let labels: Vec<Vec<bool>> = (0..classes).map(|_| (0..n).map(|_| rng.bool(0.2)).collect()).collect();
    let scores: Vec<Vec<f32>> =
        labels.iter().map(|l| l.iter().map(|&p| (rng.f64() + if p { 0.3 } else { 0.0 }) as f32).collect()).collect();
    let inputs: Vec<bootstrap::ClassInput> = scores
        .iter()
        .zip(&labels)
        .map(|(s, l)| bootstrap::ClassInput { scores: s, labels: l, threshold: Some(0.6) })
        .collect();
    let groups = [(0..10).collect::<Vec<usize>>(), (0..classes).collect()];
    let options = BootstrapOptions { resamples: args.bootstrap, seed: args.seed, rule: ThresholdRule::Ge };
    let threads = rayon::current_num_threads();
    let started = Instant::now();
    let distribution = bootstrap::bootstrap(&inputs, &groups, &options);
    let resampled = started.elapsed();
    let intervals = distribution.intervals();
    let total = started.elapsed();
    println!(
        "bootstrap: {} resamples × {classes} classes × {n} cases, 4 metrics + 2 class means, {threads} threads: \
         {:.2} s resampling + {:.2} s intervals = {:.2} s",
        args.bootstrap,
        resampled.as_secs_f64(),
        (total - resampled).as_secs_f64(),
        total.as_secs_f64()
    );
    if let Some(i) = intervals[0] {
        println!("class 0 AUROC interval [{:.4}, {:.4}] (sanity)", i.low, i.high);
    }
    Ok(ExitCode::SUCCESS)
}

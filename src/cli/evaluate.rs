//! `medpatch evaluate`: the paper's evaluation of a model on one split (CheXpert-style CSV, and
//! CheXlocalize ground truth for the localisation tables), from the model itself or from
//! predictions `medpatch predict` already wrote. The evaluation is `medpatch_eval::evaluation`;
//! this file reads the inputs, gets each case's scores and maps, and writes the reports.

use super::{EngineArgs, exit, progress_bar};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use medpatch_engine::decode::{self, GrayImage};
use medpatch_engine::{Engine, MapKind, explain, render};
use medpatch_eval::bootstrap::BootstrapOptions;
use medpatch_eval::evaluation::{Evaluation, Finished, GroundTruth, Settings};
use medpatch_eval::geometry::{Geometry, resize_bilinear};
use medpatch_eval::labels;
use medpatch_eval::metrics::ThresholdRule;
use medpatch_eval::report::{self, Thresholds};
use medpatch_eval::{npy, plot};
use medpatch_models::contract::{DEFAULT_IMAGE_SIZE, class_file_names};
use medpatch_models::write_atomically;
use serde_json::Value;
use std::collections::HashMap;
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

/// Where the maps of a case come from.
enum Maps {
    /// Model-space maps per class (`[classes][side][side]`, already in the stored form, [0, 1]).
    Model { values: Vec<f32>, side: usize },
    /// `.npy` files in a folder: `<image id>_<task>_map.npy`.
    Folder(PathBuf),
}

impl Maps {
    /// Task `task`'s map (class `class` of the model) for image `id`: values, width, height.
    fn get(&self, id: &str, task: &str, class: usize) -> Result<(Vec<f32>, usize, usize), String> {
        match self {
            Maps::Model { values, side } => {
                let plane = side * side;
                Ok((values[class * plane..(class + 1) * plane].to_vec(), *side, *side))
            }
            Maps::Folder(dir) => {
                let path = dir.join(format!("{id}_{task}_map.npy"));
                let a = npy::read_map(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok((a.data, a.shape[1], a.shape[0]))
            }
        }
    }
}

pub fn run(args: EvaluateArgs) -> Result<ExitCode> {
    if args.bench {
        return bench(&args);
    }
    let csv = args.csv.clone().expect("clap requires --csv");
    let records = labels::read_csv(&csv)?;
    let data_root = args.data_root.clone().unwrap_or_else(|| csv.parent().unwrap_or(Path::new(".")).to_path_buf());
    let rule = match args.threshold_rule {
        RuleChoice::Ge => ThresholdRule::Ge,
        RuleChoice::Gt => ThresholdRule::Gt,
    };
    let map_label = match (&args.maps_dir, args.shift_steps, args.map) {
        (Some(dir), ..) => format!("npy maps from {}", dir.display()),
        (None, Some(s), MapChoice::Raw) => format!("dense raw (S = {s})"),
        (None, Some(s), MapChoice::Scaled) => format!("dense scaled (S = {s})"),
        (None, None, MapChoice::Raw) => "raw patch logits".to_string(),
        (None, None, MapChoice::Scaled) => "scaled patch logits".to_string(),
    };
    let settings = Settings {
        bootstrap: BootstrapOptions { resamples: args.bootstrap, seed: args.seed, rule },
        thresholds: args.thresholds_from.as_deref().map(Thresholds::read).transpose()?,
        map_label,
        geometry: match args.geometry {
            GeometryChoice::Crop => Geometry::Crop,
            GeometryChoice::Stretch => Geometry::Stretch,
        },
        sheets: args.sheets,
    };
    let ground_truth = args.gt.as_deref().map(read_ground_truth).transpose()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    if let Some(dir) = &args.save_maps {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut evaluation = Evaluation::new(records, ground_truth, settings);
    let (model_name, classes) = if let Some(predictions) = &args.predictions {
        score_from_predictions(&args, predictions, &data_root, &mut evaluation)?
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
        score_with_model(&args, &engine, &data_root, &mut evaluation)?
    };
    let started = Instant::now();
    let finished = evaluation.finish(&csv.display().to_string(), &model_name, &classes);
    if !args.quiet {
        eprintln!(
            "medpatch: metrics and {} bootstrap resamples in {:.2} s",
            args.bootstrap,
            started.elapsed().as_secs_f64()
        );
    }
    write_outputs(&args, &data_root, &finished)?;
    eprintln!("medpatch: report written to {}", args.out.join("report.md").display());
    let skipped = finished.report.skipped.len();
    if skipped == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("medpatch: {skipped} case(s) were left out of a metric; see the Skipped section of the report");
        Ok(exit::failure())
    }
}

fn read_ground_truth(path: &Path) -> Result<GroundTruth> {
    let text = medpatch_models::read_regular_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let Value::Object(map) = value else {
        bail!("{}: expected CheXlocalize's {{image id: {{task: RLE}}}} object", path.display())
    };
    Ok(GroundTruth { masks: map.into_iter().collect(), source: path.display().to_string() })
}

/// Save each reduced map (`--save-maps`) as `<id>_<task>_map.npy`.
fn saver<'a>(dir: Option<&'a Path>, id: &'a str) -> impl FnMut(&str, &[f32], usize, usize) -> Result<(), String> + 'a {
    move |task, values, width, height| {
        let Some(dir) = dir else { return Ok(()) };
        let path = dir.join(format!("{id}_{task}_map.npy"));
        write_atomically(&path, &render::npy_f32(&[height, width], values))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Run the model on every case (batched); score it, and reduce its maps against its ground truth.
fn score_with_model(
    args: &EvaluateArgs,
    engine: &Engine,
    data_root: &Path,
    evaluation: &mut Evaluation,
) -> Result<(String, Vec<String>)> {
    let model = engine.model();
    let classes = model.metadata.classes.clone();
    let kind = if args.map == MapChoice::Scaled { MapKind::Scaled } else { MapKind::Raw };
    let progress = progress_bar(evaluation.cases().len(), args.quiet);
    let indices: Vec<usize> = (0..evaluation.cases().len()).collect();
    for batch in indices.chunks(args.images_per_batch.max(1)) {
        let mut decoded: Vec<(usize, GrayImage)> = Vec::new();
        for &i in batch {
            let case = &evaluation.cases()[i];
            let (path, image_path) = (case.record.path.clone(), data_root.join(&case.record.path));
            if !image_path.is_file() {
                evaluation.skip(&path, "all", format!("image file not found: {}", image_path.display()));
                continue;
            }
            match decode::decode_path(&image_path) {
                Ok(image) => decoded.push((i, image)),
                Err(e) => evaluation.skip(&path, "all", e.to_string()),
            }
        }
        let prepared: Vec<GrayImage> = decoded.iter().map(|(_, image)| engine.prepare(image)).collect();
        for ((i, original), prediction) in decoded.iter().zip(engine.predict_prepared(&prepared)?) {
            let prediction = match prediction {
                Ok(p) => p,
                Err(e) => {
                    let path = evaluation.cases()[*i].record.path.clone();
                    evaluation.skip(&path, "all", e.to_string());
                    continue;
                }
            };
            evaluation.score(*i, prediction.probabilities.clone());
            if !evaluation.localizes() {
                continue;
            }
            let maps = match &args.maps_dir {
                Some(dir) => Maps::Folder(dir.clone()),
                None => {
                    let values = engine.map(&prediction, kind, args.shift_steps.unwrap_or(1))?;
                    Maps::Model { values: explain::normalise(&values), side: model.image_size() }
                }
            };
            let id = evaluation.cases()[*i].id.clone();
            let size = (original.width as usize, original.height as usize);
            evaluation.localize(
                *i,
                &classes,
                Some(size),
                |task, class| maps.get(&id, task, class),
                saver(args.save_maps.as_deref(), &id),
            );
        }
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();
    Ok((model.origin.to_string(), classes))
}

/// Scores (and maps) from `medpatch predict` JSON Lines, matched to the CSV rows by path.
fn score_from_predictions(
    args: &EvaluateArgs,
    path: &Path,
    data_root: &Path,
    evaluation: &mut Evaluation,
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
    let kind = if args.map == MapChoice::Scaled { MapKind::Scaled } else { MapKind::Raw };
    let mut rounded = 0;
    let progress = progress_bar(evaluation.cases().len(), args.quiet);
    for i in 0..evaluation.cases().len() {
        progress.inc(1);
        let (csv_path, id) = (evaluation.cases()[i].record.path.clone(), evaluation.cases()[i].id.clone());
        let wanted = components(&csv_path);
        let candidates: Vec<usize> = by_name
            .get(wanted.last().map_or("", String::as_str))
            .map(|v| v.iter().copied().filter(|&k| inputs[k].ends_with(&wanted)).collect())
            .unwrap_or_default();
        let record = match candidates[..] {
            [k] => &records[k],
            [] => {
                evaluation.skip(&csv_path, "all", format!("no prediction for this path in {}", path.display()));
                continue;
            }
            _ => {
                let reason = format!("{} predictions in {} match this path", candidates.len(), path.display());
                evaluation.skip(&csv_path, "all", reason);
                continue;
            }
        };
        if let Some(error) = record["error"].as_str() {
            evaluation.skip(&csv_path, "all", format!("predict failed on it: {error}"));
            continue;
        }
        // Full precision from the saved patch logits when predict wrote them.
        let patch_logits = match record["outputs"]["patch_logits"].as_str() {
            Some(p) => match npy::read(Path::new(p)) {
                Ok(a) if a.shape.len() == 3 && a.shape[2] == classes.len() && a.shape[0] == a.shape[1] => Some(a),
                Ok(a) => {
                    let reason =
                        format!("{p}: expected [grid, grid, {}] patch logits, found {:?}", classes.len(), a.shape);
                    evaluation.skip(&csv_path, "all", reason);
                    continue;
                }
                Err(e) => {
                    evaluation.skip(&csv_path, "all", format!("{p}: {e}"));
                    continue;
                }
            },
            None => None,
        };
        let json_values = |key: &str| -> Vec<f32> {
            classes.iter().map(|c| record[key][c].as_f64().unwrap_or(f64::NAN) as f32).collect()
        };
        let (logits, scores) = match &patch_logits {
            Some(a) => {
                let logits = explain::mean_logits(&a.data, classes.len());
                let scores = logits.iter().map(|&z| explain::sigmoid(z)).collect();
                (logits, scores)
            }
            None => {
                rounded += 1;
                (json_values("logits"), json_values("probabilities"))
            }
        };
        if let Some(c) = scores.iter().position(|s| !s.is_finite()) {
            evaluation.skip(&csv_path, "all", format!("no probability for '{}'", classes[c]));
            continue;
        }
        if let Some(c) = scores.iter().position(|s| !(0.0..=1.0).contains(s)) {
            bail!(
                "{}: the prediction for {csv_path} gives '{}' the probability {}, outside [0, 1]: not medpatch \
                 predict's output",
                path.display(),
                classes[c],
                scores[c]
            );
        }
        evaluation.score(i, scores);
        if !evaluation.localizes() {
            continue;
        }
        let maps = if let Some(dir) = &args.maps_dir {
            Maps::Folder(dir.clone())
        } else if let Some(s) = args.shift_steps {
            let Some(p) = record["outputs"]["dense_map"].as_str() else {
                evaluation.skip(
                    &id,
                    "localization",
                    format!("no dense map: run predict with --out and --shift-steps {s}"),
                );
                continue;
            };
            match npy::read(Path::new(p)) {
                Ok(a) if a.shape.len() == 3 && a.shape[0] == classes.len() && a.shape[1] == a.shape[2] => {
                    let mut values = a.data;
                    explain::apply_map_kind(&mut values, &logits, kind);
                    Maps::Model { values: explain::normalise(&values), side: a.shape[1] }
                }
                Ok(a) => {
                    evaluation.skip(
                        &id,
                        "localization",
                        format!("{p}: expected [classes, side, side], found {:?}", a.shape),
                    );
                    continue;
                }
                Err(e) => {
                    evaluation.skip(&id, "localization", format!("{p}: {e}"));
                    continue;
                }
            }
        } else {
            let Some(a) = &patch_logits else {
                evaluation.skip(&id, "localization", "no patch logits: run predict with --out");
                continue;
            };
            // The predictions do not record the model's image size: the paper's, as predict wrote it.
            let grid = a.shape[0];
            let patch = DEFAULT_IMAGE_SIZE as usize / grid.max(1);
            let values =
                explain::coarse_map(&explain::patch_saliency(&a.data, &logits, kind), grid, patch, classes.len());
            Maps::Model { values: explain::normalise(&values), side: grid * patch }
        };
        // The image itself, when reachable, to check the masks' size.
        let size = decode::decode_path(&data_root.join(&csv_path)).ok().map(|i| (i.width as usize, i.height as usize));
        evaluation.localize(
            i,
            &classes,
            size,
            |task, class| maps.get(&id, task, class),
            saver(args.save_maps.as_deref(), &id),
        );
    }
    progress.finish_and_clear();
    if rounded > 0 {
        evaluation.note(format!(
            "{rounded} prediction(s) had no saved patch logits (predict without --out): their probabilities are the \
             JSON's, rounded to 6 decimals"
        ));
    }
    Ok((format!("{model} (predictions from {})", path.display()), classes))
}

/// report.md (with ROC curves and saliency sheets), report.json, metrics.csv, thresholds.json,
/// cases.csv and localization_cases.csv in `--out`.
fn write_outputs(args: &EvaluateArgs, data_root: &Path, finished: &Finished) -> Result<()> {
    let out = &args.out;
    let put = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = out.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_atomically(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    let report = &finished.report;
    let mut md = report::markdown(report);
    if let Some(c) = &report.classification {
        let mut links = Vec::new();
        let files = class_file_names(&c.classes.iter().map(|r| r.class.as_str()).collect::<Vec<_>>());
        for (r, file) in c.classes.iter().zip(files) {
            let Some(curve) = &r.roc else { continue };
            let youden = r.youden_threshold.and_then(|t| curve.thresholds.iter().position(|&x| x == t));
            let name = format!("roc/{file}.png");
            put(&name, &plot::roc_png(curve, youden, 400).map_err(anyhow::Error::msg)?)?;
            links.push(format!("[{}]({name}) (AUROC {:.3})", r.class, r.auroc.unwrap_or(f64::NAN)));
        }
        md.push_str(&report::roc_section(&links));
    }
    if !finished.sheets.is_empty() {
        md.push_str(report::SHEETS_INTRODUCTION);
        let tuned = report::sheet_thresholds(report);
        for sheet in &finished.sheets {
            let Ok(image) = decode::decode_path(&data_root.join(&sheet.path)) else { continue };
            let map = &sheet.map;
            let resized = resize_bilinear(&map.values, map.width, map.height, map.target.width, map.target.height);
            let (w, h, rgb) = plot::saliency_sheet(
                &image.pixels,
                image.width as usize,
                image.height as usize,
                &sheet.mask,
                &resized,
                map.target,
                sheet.summary.argmax,
                tuned.get(sheet.task.as_str()).copied(),
                384,
            );
            let name = format!("sheets/{}/{}.png", class_file_names(&[&sheet.task])[0], sheet.id);
            put(&name, &plot::png_rgb(w, h, &rgb).map_err(anyhow::Error::msg)?)?;
            md.push_str(&format!(
                "- {}, {} (hit: {}): ![{}]({name})\n",
                sheet.task,
                sheet.id,
                sheet.summary.hit.unwrap_or(false),
                sheet.id
            ));
        }
    }
    put("report.md", md.as_bytes())?;
    put("report.json", serde_json::to_string_pretty(report)?.as_bytes())?;
    put("metrics.csv", report::csv(report).as_bytes())?;
    put("thresholds.json", serde_json::to_string_pretty(&finished.thresholds.to_json(&report.split))?.as_bytes())?;
    put("cases.csv", finished.cases_csv.as_bytes())?;
    if let Some(text) = &finished.localization_csv {
        put("localization_cases.csv", text.as_bytes())?;
    }
    Ok(())
}

/// The speed target: 100,000 resamples × 14 classes × 500 cases, timed.
fn bench(args: &EvaluateArgs) -> Result<ExitCode> {
    use medpatch_eval::bootstrap;
    use medpatch_models::Rng;
    let (n, classes) = (args.bench_cases, medpatch_models::CHEXPERT_CLASSES.len());
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

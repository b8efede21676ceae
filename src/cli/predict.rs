//! `medpatch predict`: X-rays in, probabilities and explanation maps out.

use super::{EngineArgs, exit, inputs};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use medpatch_engine::{Engine, Input, MapKind, ModelOrigin, Prediction, explain, render};
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON object per image (JSON Lines).
    Jsonl,
    /// One row per image: filename, then one probability column per class.
    Csv,
}

#[derive(Args)]
pub struct PredictArgs {
    /// X-ray files (PNG, JPEG, DICOM) and folders (searched recursively).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
    /// Write per image: the JSON result, the raw maps (.npy), and overlay PNGs.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Classes to draw overlays for: comma-separated names, or `all`. Default: those above 0.5.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Saliency: raw patch logits, or scaled by the image probability.
    #[arg(long, value_enum, default_value = "raw")]
    map: MapChoice,
    /// Also compute the paper's dense shift-averaged map with S×S shifts (1, 2, 4, …, 64);
    /// costs S² forward passes per image.
    #[arg(long, value_name = "S")]
    shift_steps: Option<usize>,
    /// Patch logit at which the overlays' colours saturate (default: the model's own range from its
    /// metadata, else the paper's 80).
    #[arg(long, value_name = "LOGIT", value_parser = overlay_range)]
    overlay_range: Option<f32>,
    /// Images per batch (their patches go through the backend together).
    #[arg(long, default_value_t = 4)]
    images_per_batch: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum MapChoice {
    Raw,
    Scaled,
}

pub fn run(args: PredictArgs) -> Result<ExitCode> {
    let (files, mut failures) = inputs::collect(&args.inputs);
    let total = files.len() + failures.len();
    for (path, problem) in &failures {
        eprintln!("medpatch: error: {}: {problem}", path.display());
    }
    let engine = args.engine.build()?;
    let model = engine.model();
    if let Some(s) = args.shift_steps
        && !explain::valid_shift_steps(s, model.patch_size())
    {
        eprintln!(
            "medpatch: error: --shift-steps must be a power of two from 1 to the patch size {} (got {s})",
            model.patch_size()
        );
        return Ok(exit::usage());
    }
    report_engine(&engine);
    let classes = &model.metadata.classes;
    let map_kind = match args.map {
        MapChoice::Raw => MapKind::Raw,
        MapChoice::Scaled => MapKind::Scaled,
    };
    let chosen_classes = match &args.classes {
        None => None,
        Some(list) if list.len() == 1 && list[0] == "all" => Some((0..classes.len()).collect::<Vec<_>>()),
        Some(list) => {
            let mut indices = Vec::new();
            for name in list {
                match classes.iter().position(|c| c.eq_ignore_ascii_case(name.trim())) {
                    Some(i) => indices.push(i),
                    None => {
                        eprintln!(
                            "medpatch: error: unknown class '{name}'; the model's classes are: {}",
                            classes.join(", ")
                        );
                        return Ok(exit::usage());
                    }
                }
            }
            Some(indices)
        }
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder {}", dir.display()))?;
    }
    let overlay_logit_range = args.overlay_range.unwrap_or_else(|| model.metadata.overlay_logit_range());

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Format::Csv = args.format {
        let header: Vec<String> =
            std::iter::once("filename".to_string()).chain(classes.iter().map(|c| csv_field(c))).collect();
        writeln!(out, "{}", header.join(","))?;
    }
    let progress = progress_bar(files.len(), args.quiet);
    let mut used_names = HashSet::new();
    let inputs: Vec<Input<'_>> = files.iter().map(|p| Input::Path(p)).collect();
    // The next batch is decoded while the backend runs this one; results come in input order.
    engine.predict_pipelined(&inputs, args.images_per_batch, |i, result| -> Result<()> {
        let path = &files[i];
        let outcome = result.map_err(|e| e.to_string()).and_then(|prediction| {
            let mut record = record(&engine, path, &prediction);
            if let Some(dir) = &args.out {
                let stem = unique_stem(path, &mut used_names);
                let written = write_outputs(
                    &engine,
                    dir,
                    &stem,
                    &record,
                    &prediction,
                    map_kind,
                    chosen_classes.as_deref(),
                    args.shift_steps,
                    overlay_logit_range,
                )
                .map_err(|e| format!("cannot write outputs: {e:#}"))?;
                record["outputs"] = written;
            }
            Ok(record)
        });
        match outcome {
            Ok(record) => match args.format {
                Format::Jsonl => writeln!(out, "{record}")?,
                Format::Csv => {
                    let probs = &record["probabilities"];
                    let row: Vec<String> = std::iter::once(csv_field(&path.display().to_string()))
                        .chain(classes.iter().map(|c| format!("{:.6}", probs[c].as_f64().unwrap_or(f64::NAN))))
                        .collect();
                    writeln!(out, "{}", row.join(","))?
                }
            },
            Err(problem) => {
                progress.suspend(|| eprintln!("medpatch: error: {problem}"));
                if let Format::Jsonl = args.format {
                    writeln!(out, "{}", json!({ "input": path.display().to_string(), "error": problem }))?;
                }
                failures.push((path.clone(), problem));
            }
        }
        progress.inc(1);
        Ok(())
    })?;
    out.flush()?;
    progress.finish_and_clear();
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("medpatch: {} of {total} inputs failed", failures.len());
        Ok(exit::failure())
    }
}

/// Tell the user what runs, and why not something faster: `auto` never falls back silently.
pub fn report_engine(engine: &Engine) {
    let model = engine.model();
    for (provider, reason) in engine.skipped_providers() {
        eprintln!("medpatch: provider {provider} skipped: {reason}");
    }
    eprintln!(
        "medpatch: provider: {}, {}, precision {}",
        engine.provider(),
        engine.provider().describe(),
        engine.precision()
    );
    if let Some(check) = engine.precision_check() {
        eprintln!("medpatch: {check}");
    }
    if model.origin == ModelOrigin::Embedded {
        // Say what the embedded model really is, from its own metadata.
        let what = if model.metadata.source.starts_with("random initialisation") {
            "an UNTRAINED placeholder with random weights: its outputs mean nothing"
        } else {
            "a small demo model trained on synthetic images"
        };
        eprintln!(
            "medpatch: model: the embedded default model ({}), {what}. It is NOT a diagnostic model: \
             do not use its outputs for clinical decisions. Pass --model for a real one.",
            model.metadata.architecture
        );
    } else {
        eprintln!("medpatch: model: {} ({})", model.origin, model.metadata.architecture);
    }
}

fn record(engine: &Engine, path: &Path, p: &Prediction) -> Value {
    let classes = &engine.model().metadata.classes;
    let per_class = |values: &[f32]| -> Value {
        Value::Object(classes.iter().zip(values).map(|(c, &v)| (c.clone(), json!(round6(v)))).collect::<Map<_, _>>())
    };
    json!({
        "input": path.display().to_string(),
        "model": engine.model().origin.to_string(),
        "provider": p.provider,
        "precision": engine.precision(),
        "probabilities": per_class(&p.probabilities),
        "logits": per_class(&p.logits),
        "timings_ms": p.timings,
    })
}

fn round6(v: f32) -> f64 {
    (v as f64 * 1e6).round() / 1e6
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

/// A file-name stem for an input's outputs, made unique when two inputs share one.
fn unique_stem(path: &Path, used: &mut HashSet<String>) -> String {
    let base = path.file_stem().map_or_else(|| "image".to_string(), |s| s.to_string_lossy().into_owned());
    let mut stem = base.clone();
    let mut n = 2;
    while !used.insert(stem.clone()) {
        stem = format!("{base}-{n}");
        n += 1;
    }
    stem
}

/// `--overlay-range`: a usable saturation logit.
pub(crate) fn overlay_range(text: &str) -> Result<f32, String> {
    text.parse::<f32>().map_err(|e| e.to_string()).and_then(medpatch_models::contract::check_overlay_logit_range)
}

fn file_safe(class: &str) -> String {
    class.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// Per image: `<stem>.json`, `<stem>.patch_logits.npy` ([grid, grid, classes], raw logits),
/// `<stem>.dense_S.npy` ([classes, side, side], with --shift-steps), `<stem>.input.png`, and for
/// each chosen class `<stem>.<class>.png` (overlay) and `<stem>.<class>.map.png` (16-bit,
/// normalised map). Every file is written whole or not at all.
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    engine: &Engine,
    dir: &Path,
    stem: &str,
    record: &Value,
    p: &Prediction,
    kind: MapKind,
    chosen: Option<&[usize]>,
    shift_steps: Option<usize>,
    overlay_logit_range: f32,
) -> Result<Value> {
    let model = engine.model();
    let classes = &model.metadata.classes;
    let (grid, side, c) = (model.grid(), model.image_size(), classes.len());
    let mut written = Map::new();
    let mut put = |key: &str, name: String, bytes: &[u8]| -> Result<()> {
        let path = dir.join(&name);
        medpatch_models::write_atomically(&path, bytes).with_context(|| format!("{}", path.display()))?;
        written.insert(key.to_string(), json!(path.display().to_string()));
        Ok(())
    };
    put("patch_logits", format!("{stem}.patch_logits.npy"), &render::npy_f32(&[grid, grid, c], &p.patch_logits))?;
    put("input", format!("{stem}.input.png"), &render::png_gray8(&p.image)?)?;
    let map = match shift_steps {
        Some(s) => {
            let dense = engine.dense_map(&p.image, s)?;
            put("dense_map", format!("{stem}.dense_{s}.npy"), &render::npy_f32(&[c, side, side], &dense.values))?;
            let mut values = dense.values;
            explain::apply_map_kind(&mut values, &p.logits, kind);
            values
        }
        None => engine.saliency(p, kind),
    };
    let chosen: Vec<usize> = match chosen {
        Some(list) => list.to_vec(),
        None => (0..c).filter(|&i| p.probabilities[i] > 0.5).collect(),
    };
    for i in chosen {
        let normalised = explain::normalise(&map[i * side * side..(i + 1) * side * side]);
        let name = file_safe(&classes[i]);
        let overlay = render::overlay_rgb(&p.image, &normalised, overlay_logit_range);
        put(
            &format!("overlay:{}", classes[i]),
            format!("{stem}.{name}.png"),
            &render::png_rgb8(side as u32, side as u32, &overlay)?,
        )?;
        put(
            &format!("map:{}", classes[i]),
            format!("{stem}.{name}.map.png"),
            &render::png_gray16(side as u32, side as u32, &normalised)?,
        )?;
    }
    let mut record = record.clone();
    record["map"] = json!({ "kind": kind, "shift_steps": shift_steps.unwrap_or(1), "normalisation": "(clip(logit, -200, 200) + 200) / 400" });
    put("json", format!("{stem}.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
    Ok(Value::Object(written))
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

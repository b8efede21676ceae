//! `medpatch predict`: X-rays in, probabilities and explanation maps out.

use super::{EngineArgs, exit, inputs, progress_bar};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use medpatch_engine::backend::{FrontEnd, in_terms_of};
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
    /// For DICOM inputs, write DICOM results here: a TID 1500 SR, a segmentation of the patch
    /// maps and overlay images, in the source's study (see docs/dicom.md).
    #[arg(long, value_name = "DIR")]
    dicom_out: Option<PathBuf>,
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
    if args.out.is_none() && stdout_is_discarded() {
        // A program started with standard output closed (`>&-`) gets /dev/null there from Rust's
        // runtime: every result would be lost while the exit code said success.
        eprintln!(
            "medpatch: error: standard output is closed or /dev/null and there is no --out DIR, so every \
             result would be lost; redirect it (> results.jsonl) or pass --out DIR"
        );
        return Ok(exit::usage());
    }
    let inputs::Collected { files, problems, notes } = inputs::collect(&args.inputs);
    for note in &notes {
        eprintln!("medpatch: warning: {note}");
    }
    let mut failures = problems;
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
    let chosen_classes = match super::chosen_classes(args.classes.as_deref(), classes) {
        Ok(chosen) => chosen,
        Err(problem) => {
            eprintln!("medpatch: error: {problem}");
            return Ok(exit::usage());
        }
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder {}", dir.display()))?;
    }
    let overlay_logit_range = args.overlay_range.unwrap_or_else(|| model.metadata.overlay_logit_range());

    let class_file_names = medpatch_models::contract::class_file_names(classes);

    let mut out = Sink::new(args.format, std::io::stdout().lock(), classes)?;
    for (path, problem) in &failures {
        out.error(path, problem)?;
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
                let outputs = Outputs {
                    dir,
                    stem: &stem,
                    kind: map_kind,
                    chosen: chosen_classes.as_deref(),
                    class_file_names: &class_file_names,
                    shift_steps: args.shift_steps,
                    overlay_logit_range,
                };
                let written = outputs
                    .write(&engine, &record, &prediction)
                    .map_err(|e| format!("{}: cannot write outputs: {e:#}", path.display()))?;
                record["outputs"] = written;
            }
            if let Some(dir) = &args.dicom_out {
                record["dicom_outputs"] = super::dicom_results::write(
                    &engine,
                    path,
                    &prediction,
                    dir,
                    chosen_classes.as_deref(),
                    overlay_logit_range,
                )?;
            }
            Ok(record)
        });
        match outcome {
            Ok(record) => out.result(path, &record)?,
            Err(problem) => {
                progress.suspend(|| eprintln!("medpatch: error: {problem}"));
                out.error(path, &problem)?;
                failures.push((path.clone(), problem));
            }
        }
        progress.inc(1);
        Ok(())
    })?;
    out.finish()?;
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
        eprintln!("medpatch: provider {provider} skipped: {}", in_terms_of(reason, FrontEnd::Cli));
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
    if let Some(note) = engine.layout_note() {
        eprintln!("medpatch: note: {note}");
    }
    if model.origin == ModelOrigin::Embedded {
        // Say what the embedded model really is, from its own metadata.
        let what = if model.metadata.source.starts_with("random initialisation") {
            "an UNTRAINED placeholder with random weights: its outputs mean nothing"
        } else {
            "a demo model trained on synthetic X-rays only: on real X-rays its outputs mean nothing"
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

/// Does standard output lead nowhere? Closed (`>&-`: Rust's runtime reopens descriptor 1 on
/// /dev/null before `main`, so the two cannot be told apart) or /dev/null.
fn stdout_is_discarded() -> bool {
    use std::os::unix::fs::MetadataExt;
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    match (std::fs::metadata("/proc/self/fd/1"), std::fs::metadata("/dev/null")) {
        (Ok(out), Ok(null)) => same(&out, &null),
        (Err(_), _) => true,
        _ => false,
    }
}

/// The input's name for JSON: the path as text, and where the path is not UTF-8 (which JSON
/// cannot carry exactly) its bytes in hex as well, so two such names never read the same.
fn input_fields(path: &Path) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("input".into(), json!(path.display().to_string()));
    if path.to_str().is_none() {
        use std::os::unix::ffi::OsStrExt;
        let hex: String = path.as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        fields.insert("input_hex".into(), json!(hex));
    }
    fields
}

/// Where results go on standard output: JSON Lines (a line per input, errors included) or CSV (a
/// row per predicted input, quoted by the `csv` crate; errors only on stderr).
enum Sink<'a, W: Write> {
    Jsonl(W),
    Csv { writer: Box<csv::Writer<W>>, classes: &'a [String] },
}

impl<'a, W: Write> Sink<'a, W> {
    fn new(format: Format, out: W, classes: &'a [String]) -> Result<Self> {
        Ok(match format {
            Format::Jsonl => Sink::Jsonl(out),
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer.write_record(std::iter::once("filename").chain(classes.iter().map(String::as_str)))?;
                Sink::Csv { writer: Box::new(writer), classes }
            }
        })
    }

    fn result(&mut self, path: &Path, record: &Value) -> Result<()> {
        match self {
            Sink::Jsonl(out) => writeln!(out, "{record}")?,
            Sink::Csv { writer, classes } => {
                let probabilities = &record["probabilities"];
                let row = std::iter::once(path.display().to_string())
                    .chain(classes.iter().map(|c| format!("{:.6}", probabilities[c].as_f64().unwrap_or(f64::NAN))));
                writer.write_record(row)?;
                // A row at a time, as JSON Lines are: a reader sees each result when it is ready.
                writer.flush()?;
            }
        }
        Ok(())
    }

    fn error(&mut self, path: &Path, problem: &str) -> Result<()> {
        if let Sink::Jsonl(out) = self {
            let mut fields = input_fields(path);
            fields.insert("error".into(), json!(problem));
            writeln!(out, "{}", Value::Object(fields))?;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Jsonl(mut out) => out.flush()?,
            Sink::Csv { mut writer, .. } => writer.flush()?,
        }
        Ok(())
    }
}

/// The input fields, then the engine's record of the prediction (shared with `medpatch serve`'s
/// `/v1/predict`, so that the two cannot drift apart).
fn record(engine: &Engine, path: &Path, p: &Prediction) -> Value {
    let mut record = input_fields(path);
    if let Ok(Value::Object(rest)) = serde_json::to_value(medpatch_engine::report::PredictionRecord::new(engine, p)) {
        record.extend(rest);
    }
    Value::Object(record)
}

/// Longest stem of an output file name, in bytes: file systems allow 255 per name, and the longest
/// suffix is a class's file name (at most 64 bytes, `class_file_names` may add `_127`) plus
/// `.map.png`.
const MAX_STEM_BYTES: usize = 160;

/// A file-name stem for an input's outputs: its file stem, shortened (with a digest of the whole
/// stem, so long names stay distinct) to [`MAX_STEM_BYTES`], and made unique when two inputs
/// share one (without regard to case: some file systems ignore it).
fn unique_stem(path: &Path, used: &mut HashSet<String>) -> String {
    let mut base = path.file_stem().map_or_else(|| "image".to_string(), |s| s.to_string_lossy().into_owned());
    if base.len() > MAX_STEM_BYTES {
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(base.as_bytes())[..4].iter().map(|b| format!("{b:02x}")).collect();
        let cut = (0..=MAX_STEM_BYTES - 9).rev().find(|&i| base.is_char_boundary(i)).unwrap_or(0);
        base = format!("{}-{digest}", &base[..cut]);
    }
    let mut stem = base.clone();
    let mut n = 2;
    while !used.insert(stem.to_lowercase()) {
        stem = format!("{base}-{n}");
        n += 1;
    }
    stem
}

/// `--overlay-range`: a usable saturation logit.
pub(crate) fn overlay_range(text: &str) -> Result<f32, String> {
    text.parse::<f32>().map_err(|e| e.to_string()).and_then(medpatch_models::contract::check_overlay_logit_range)
}

/// What `--out` writes for one image, and how.
struct Outputs<'a> {
    dir: &'a Path,
    stem: &'a str,
    kind: MapKind,
    /// Classes to draw (default: those above 0.5).
    chosen: Option<&'a [usize]>,
    class_file_names: &'a [String],
    shift_steps: Option<usize>,
    overlay_logit_range: f32,
}

impl Outputs<'_> {
    /// Per image: `<stem>.json`, `<stem>.patch_logits.npy` ([grid, grid, classes], raw logits),
    /// `<stem>.dense_S.npy` ([classes, side, side], with --shift-steps), `<stem>.input.png`, and for
    /// each chosen class `<stem>.<class>.png` (overlay) and `<stem>.<class>.map.png` (16-bit,
    /// normalised map). Every file is written whole or not at all, and the set too: when one file
    /// cannot be written (a full disk), those already written for this image are removed.
    fn write(&self, engine: &Engine, record: &Value, p: &Prediction) -> Result<Value> {
        let mut written = Vec::new();
        let result = self.write_all(engine, record, p, &mut written);
        if result.is_err() {
            for path in &written {
                let _ = std::fs::remove_file(path);
            }
        }
        result
    }

    fn write_all(&self, engine: &Engine, record: &Value, p: &Prediction, paths: &mut Vec<PathBuf>) -> Result<Value> {
        let model = engine.model();
        let classes = &model.metadata.classes;
        let (grid, side, c) = (model.grid(), model.image_size(), classes.len());
        let stem = self.stem;
        let mut written = Map::new();
        let mut put = |key: &str, name: String, bytes: &[u8]| -> Result<()> {
            let path = self.dir.join(&name);
            medpatch_models::write_atomically(&path, bytes).with_context(|| format!("{}", path.display()))?;
            written.insert(key.to_string(), json!(path.display().to_string()));
            paths.push(path);
            Ok(())
        };
        put("patch_logits", format!("{stem}.patch_logits.npy"), &render::npy_f32(&[grid, grid, c], &p.patch_logits))?;
        put("input", format!("{stem}.input.png"), &render::png_gray8(&p.image)?)?;
        let map = match self.shift_steps {
            Some(s) => {
                // The raw dense map is saved; the overlays show the kind asked for.
                let mut values = engine.map(p, MapKind::Raw, s)?;
                put("dense_map", format!("{stem}.dense_{s}.npy"), &render::npy_f32(&[c, side, side], &values))?;
                explain::apply_map_kind(&mut values, &p.logits, self.kind);
                values
            }
            None => engine.map(p, self.kind, 1)?,
        };
        let chosen: Vec<usize> = match self.chosen {
            Some(list) => list.to_vec(),
            None => (0..c).filter(|&i| p.probabilities[i] > 0.5).collect(),
        };
        for i in chosen {
            let normalised = explain::normalise(&map[i * side * side..(i + 1) * side * side]);
            let name = &self.class_file_names[i];
            let overlay = render::overlay_rgb(&p.image, &normalised, self.overlay_logit_range);
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
        let c = medpatch_models::contract::MAP_LOGIT_CLIP;
        let normalisation = format!("(clip(logit, -{c}, {c}) + {c}) / {}", 2.0 * c);
        let mut record = record.clone();
        record["map"] =
            json!({ "kind": self.kind, "shift_steps": self.shift_steps.unwrap_or(1), "normalisation": normalisation });
        put("json", format!("{stem}.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
        Ok(Value::Object(written))
    }
}

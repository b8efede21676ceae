//! CheXpert labels and CheXlocalize names, read exactly as the MedicalPatchNet seed reads them
//! (`ChexpertDataset.py`), shared by the trainer and `medpatch evaluate`:
//!
//! * **CSVs** ([`read_csv`]): `train_visualCheXbert.csv` has No Finding as its *last* column; it is
//!   moved to position 5 so that the 14 label columns follow CheXpert's order (the seed does the
//!   same column shift). Then columns 5..19 must be the 14 CheXpert classes, in order (checked by
//!   name — a CSV laid out otherwise is refused rather than misread). Labels: `1.0` → 1;
//!   `0.0`, `-1.0` (uncertain) and blank → 0. All views (frontal and lateral) are kept.
//! * **CheXlocalize** ([`LOCALIZATION_TASKS`], [`chexlocalize_id`], [`task_class`]): its ten tasks,
//!   its image ids (`patient64541_study1_view1_frontal`) and its name for Lung Opacity
//!   ("Airspace Opacity").

use anyhow::{Context, Result, bail};
use medpatch_models::CHEXPERT_CLASSES;
use std::path::Path;

/// One CSV row: image path (relative to the data root) and its 14 labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub path: String,
    pub labels: [f32; CHEXPERT_CLASSES.len()],
}

/// The seed's label mapping: only "1.0" (or "1") is positive.
pub fn parse_label(text: &str) -> Result<f32> {
    match text.trim() {
        "1.0" | "1" => Ok(1.0),
        "0.0" | "0" | "-1.0" | "-1" | "" => Ok(0.0),
        other => match other.parse::<f64>() {
            Ok(1.0) => Ok(1.0),
            Ok(v) if v == 0.0 || v == -1.0 => Ok(0.0),
            _ => bail!("invalid label '{other}' (expected 1.0, 0.0, -1.0 or blank)"),
        },
    }
}

/// Read a CheXpert-style CSV (train.csv, train_visualCheXbert.csv, valid.csv, CheXlocalize
/// test_labels.csv).
pub fn read_csv(path: &Path) -> Result<Vec<Record>> {
    let text = medpatch_models::read_regular_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_csv(&text).with_context(|| format!("{}", path.display()))
}

pub fn parse_csv(text: &str) -> Result<Vec<Record>> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
    let mut header: Vec<String> = reader.headers()?.iter().map(|h| h.trim().to_string()).collect();
    let shift = |row: &mut Vec<String>| {
        // visualCheXbert: No Finding last → position 5 (the seed's column shift).
        if let Some(last) = row.pop() {
            row.insert(5.min(row.len()), last);
        }
    };
    let visual = header.last().map(String::as_str) == Some("No Finding")
        && header.get(5).map(String::as_str) != Some("No Finding");
    if visual {
        shift(&mut header);
    }
    if header.len() < 19 || header[0] != "Path" {
        bail!(
            "expected a CheXpert CSV (Path, Sex, Age, Frontal/Lateral, AP/PA, then the 14 findings); found columns {header:?}"
        );
    }
    let labels = &header[5..19];
    if labels.iter().map(String::as_str).ne(CHEXPERT_CLASSES.iter().copied()) {
        bail!(
            "columns 5..19 (after the visualCheXbert shift) must be the CheXpert findings in order {CHEXPERT_CLASSES:?}; found {labels:?}"
        );
    }
    let mut records = Vec::new();
    for (line, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("row {}", line + 2))?;
        let mut fields: Vec<String> = row.iter().map(str::to_string).collect();
        if visual {
            shift(&mut fields);
        }
        let mut values = [0f32; CHEXPERT_CLASSES.len()];
        for (k, v) in values.iter_mut().enumerate() {
            *v = parse_label(&fields[5 + k])
                .with_context(|| format!("row {}, column '{}'", line + 2, CHEXPERT_CLASSES[k]))?;
        }
        records.push(Record { path: fields[0].clone(), labels: values });
    }
    if records.is_empty() {
        bail!("the CSV has a header but no rows: nothing to evaluate");
    }
    let mut rows: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, record) in records.iter().enumerate() {
        if let Some(first) = rows.insert(record.path.as_str(), i) {
            bail!("rows {} and {} are both for {}: each image must appear once", first + 2, i + 2, record.path);
        }
    }
    Ok(records)
}

/// CheXlocalize's ten localisation tasks, in its order ("Airspace Opacity" = CheXpert's Lung Opacity).
pub const LOCALIZATION_TASKS: [&str; 10] = [
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Airspace Opacity",
    "Edema",
    "Consolidation",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Support Devices",
];

/// The CheXpert class a CheXlocalize task scores ("Airspace Opacity" → "Lung Opacity").
pub fn task_class(task: &str) -> &str {
    if task == "Airspace Opacity" { "Lung Opacity" } else { task }
}

/// The CheXlocalize task of a CheXpert class, if it has one.
pub fn class_task(class: &str) -> Option<&'static str> {
    let task = if class == "Lung Opacity" { "Airspace Opacity" } else { class };
    LOCALIZATION_TASKS.iter().copied().find(|t| *t == task)
}

/// CheXlocalize's image id for a CSV path: the last three components joined by `_`, without the
/// extension (`…/patient64541/study1/view1_frontal.jpg` → `patient64541_study1_view1_frontal`).
pub fn chexlocalize_id(path: &str) -> String {
    let path = path.replace('\\', "/");
    let stem = match path.rfind('.') {
        Some(dot) if dot > path.rfind('/').map_or(0, |s| s + 1) => &path[..dot],
        _ => &path[..],
    };
    let parts: Vec<&str> = stem.split('/').collect();
    parts[parts.len().saturating_sub(3)..].join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_map_like_the_seed() {
        assert_eq!(parse_label("1.0").unwrap(), 1.0);
        for t in ["0.0", "-1.0", "", " "] {
            assert_eq!(parse_label(t).unwrap(), 0.0, "{t:?}");
        }
        assert!(parse_label("yes").is_err());
    }

    #[test]
    fn empty_and_repeated_rows_are_refused() {
        let header = format!("Path,Sex,Age,Frontal/Lateral,AP/PA,{}", CHEXPERT_CLASSES.join(","));
        let err = parse_csv(&format!("{header}\n")).unwrap_err().to_string();
        assert!(err.contains("no rows"), "{err}");
        let row = format!("a/b.jpg,F,50,Frontal,AP{}", ",0.0".repeat(14));
        assert_eq!(parse_csv(&format!("{header}\n{row}\n")).unwrap().len(), 1);
        let err = parse_csv(&format!("{header}\n{row}\n{row}\n")).unwrap_err().to_string();
        assert!(err.contains("rows 2 and 3 are both for a/b.jpg"), "{err}");
    }

    #[test]
    fn chexlocalize_names() {
        assert_eq!(chexlocalize_id("test/patient64741/study1/view1_frontal.jpg"), "patient64741_study1_view1_frontal");
        assert_eq!(
            chexlocalize_id("CheXpert-v1.0/valid/patient64541/study1/view2_lateral.png"),
            "patient64541_study1_view2_lateral"
        );
        assert_eq!(task_class("Airspace Opacity"), "Lung Opacity");
        assert_eq!(class_task("Lung Opacity"), Some("Airspace Opacity"));
        assert_eq!(class_task("Pneumonia"), None);
        for task in LOCALIZATION_TASKS {
            assert!(CHEXPERT_CLASSES.contains(&task_class(task)), "{task}");
        }
    }
}

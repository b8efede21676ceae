//! Turning command-line inputs (files and folders) into the list of images to process.

use std::path::{Path, PathBuf};

/// Extensions picked up when walking folders; files named explicitly are tried whatever their name.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "dcm", "dicom"];

/// Files to process, in a stable order, and the inputs that could not be read at all.
pub fn collect(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for input in inputs {
        match std::fs::metadata(input) {
            Ok(m) if m.is_dir() => {
                let before = files.len();
                walk(input, &mut files, &mut problems);
                if files.len() == before {
                    // Surely not what the user meant: say so rather than succeed on nothing.
                    problems.push((
                        input.clone(),
                        format!(
                            "no images in this folder (looked for .{} files, recursively)",
                            IMAGE_EXTENSIONS.join(", .")
                        ),
                    ));
                }
            }
            Ok(_) => files.push(input.clone()),
            Err(e) => problems.push((input.clone(), format!("cannot read: {e}"))),
        }
    }
    (files, problems)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, problems: &mut Vec<(PathBuf, String)>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return problems.push((dir.to_path_buf(), format!("cannot list folder: {e}"))),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, files, problems);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            files.push(path);
        }
    }
}

//! Turning command-line inputs (files and folders) into the list of images to process.
//!
//! Folders are walked recursively, following symbolic links (PACS exports and shared drives use
//! them) with loop detection: a link back to a folder above it is reported and not followed, and
//! a file reached twice (through links, or named twice) is processed once. Only regular files are
//! taken from folders: a FIFO would block the walk's reader forever, a device would never end.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Extensions picked up when walking folders; files named explicitly are tried whatever their name.
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "dcm", "dicom"];

/// What the inputs hold.
#[derive(Debug, Default)]
pub struct Collected {
    /// Files to process, in a stable order (each folder's entries sorted by name); a file found
    /// in folders comes once, however many paths lead to it.
    pub files: Vec<PathBuf>,
    /// Inputs or entries that could not be read: each is a failed input.
    pub problems: Vec<(PathBuf, String)>,
    /// Things skipped on purpose, worth saying (symbolic link loops).
    pub notes: Vec<String>,
}

pub fn collect(inputs: &[PathBuf]) -> Collected {
    let mut collected = Collected::default();
    let mut seen = HashSet::new();
    for input in inputs {
        match std::fs::metadata(input) {
            Ok(m) if m.is_dir() => {
                let before = collected.files.len();
                walk(input, &mut collected, &mut seen);
                if collected.files.len() == before {
                    // Surely not what the user meant: say so rather than succeed on nothing.
                    collected.problems.push((
                        input.clone(),
                        format!(
                            "no images in this folder (looked for .{} files, recursively)",
                            IMAGE_EXTENSIONS.join(", .")
                        ),
                    ));
                }
            }
            // Named explicitly: processed as often as named (the decoder refuses what is not a
            // regular file); a folder walk does not add it again.
            Ok(_) => {
                seen.insert(identity(input));
                collected.files.push(input.clone());
            }
            Err(e) => collected.problems.push((input.clone(), format!("cannot read: {e}"))),
        }
    }
    collected
}

/// The same file reached by two paths has one identity: its canonical path.
fn identity(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, collected: &mut Collected, seen: &mut HashSet<PathBuf>) {
    let walker = walkdir::WalkDir::new(dir).follow_links(true).sort_by_file_name();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().unwrap_or(dir).to_path_buf();
                if let Some(ancestor) = e.loop_ancestor() {
                    collected.notes.push(format!(
                        "{}: a symbolic link back to {} (a loop): not followed",
                        path.display(),
                        ancestor.display()
                    ));
                } else if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                    && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
                {
                    collected.problems.push((path, "a symbolic link to nothing (dangling)".into()));
                } else {
                    let why = e.io_error().map_or_else(|| e.to_string(), |io| io.to_string());
                    collected.problems.push((path, format!("cannot read: {why}")));
                }
                continue;
            }
        };
        let path = entry.path();
        if entry.file_type().is_dir() || !has_image_extension(path) {
            continue;
        }
        if let Err(e) = medpatch_models::check_regular_file(path) {
            collected.problems.push((path.to_path_buf(), e.to_string()));
            continue;
        }
        if seen.insert(identity(path)) {
            collected.files.push(path.to_path_buf());
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn loops_dangling_links_fifos_and_unreadable_folders_end_the_walk_with_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("studies");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/one.png"), b"x").unwrap();
        std::fs::write(root.join("a/b/two.dcm"), b"x").unwrap();
        std::fs::write(root.join("notes.txt"), b"x").unwrap();
        symlink(&root, root.join("a/b/loop")).unwrap(); // back to the top: a loop
        symlink(root.join("a"), root.join("alias")).unwrap(); // the same files by another path
        symlink(root.join("missing.png"), root.join("dangling.png")).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(root.join("pipe.png")).status().unwrap().success());
        let locked = root.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::write(locked.join("three.png"), b"x").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root reads every folder whatever its mode: the permission case only exists for others.
        let as_root = std::fs::read_dir(&locked).is_ok();

        let c = collect(&[root.join("a/one.png"), root.clone()]);
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();

        let names: Vec<String> = c.files.iter().map(|p| p.strip_prefix(&root).unwrap().display().to_string()).collect();
        let mut expected = vec!["a/one.png", "a/b/two.dcm"];
        if as_root {
            expected.push("locked/three.png");
        }
        assert_eq!(names, expected, "each file once: the walk skips the alias and the file already named");
        // The loop, reached directly and through the alias: each path to it is named.
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
        assert!(c.notes[0].contains("a/b/loop: a symbolic link back to") && c.notes[0].contains("(a loop)"));
        assert!(c.notes[1].contains("alias/b/loop: a symbolic link back to"), "{:?}", c.notes);
        let problem = |name: &str| c.problems.iter().find(|(p, _)| p.ends_with(name)).map(|(_, why)| why.as_str());
        assert_eq!(problem("dangling.png"), Some("a symbolic link to nothing (dangling)"));
        assert_eq!(problem("pipe.png"), Some("it is a FIFO (named pipe), not a regular file"));
        if !as_root {
            assert!(problem("locked").is_some_and(|why| why.contains("ermission denied")), "{:?}", c.problems);
        }
    }

    #[test]
    fn an_empty_folder_and_a_missing_input_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let c = collect(&[dir.path().to_path_buf(), dir.path().join("nope.png")]);
        assert!(c.files.is_empty());
        assert!(c.problems[0].1.starts_with("no images in this folder"));
        assert!(c.problems[1].1.starts_with("cannot read: "));
    }
}

//! The durable outbox between the SCP and the forwarder.
//!
//! ```text
//! <queue>/incoming/<id>/   being written (a crash here leaves no acknowledged image behind:
//!                          the sender got no success status and sends again; removed at start)
//! <queue>/outbox/<id>/     committed: every file written and synced, then the folder renamed
//!                          here in one step, before the C-STORE response goes out
//! <queue>/failed/<id>/     objects the destination refused for good, with the reason
//! ```
//!
//! `<id>` sorts in arrival order, so results leave in the order their images came. The
//! forwarder deletes a file once the destination has stored it and the folder once it is empty:
//! after a restart it finds exactly what is still owed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Outbox {
    incoming: PathBuf,
    outbox: PathBuf,
    failed: PathBuf,
    sequence: AtomicU64,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Outbox {
    /// Open (creating) the queue at `root`; half-written entries of an earlier run are removed.
    pub fn open(root: &Path) -> io::Result<Outbox> {
        let outbox = Outbox {
            incoming: root.join("incoming"),
            outbox: root.join("outbox"),
            failed: root.join("failed"),
            sequence: AtomicU64::new(0),
        };
        for dir in [&outbox.incoming, &outbox.outbox, &outbox.failed] {
            fs::create_dir_all(dir)?;
        }
        for entry in fs::read_dir(&outbox.incoming)? {
            let path = entry?.path();
            if path.is_dir() { fs::remove_dir_all(&path)? } else { fs::remove_file(&path)? }
        }
        Ok(outbox)
    }

    /// Write one image's result files and commit them atomically; returns the committed folder.
    pub fn commit(&self, label: &str, files: &[(String, Vec<u8>)]) -> io::Result<PathBuf> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let label: String =
            label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).take(64).collect();
        let id = format!("{nanos:020}-{seq:06}-{label}");
        let staging = self.incoming.join(&id);
        fs::create_dir(&staging)?;
        let written = (|| -> io::Result<()> {
            for (name, bytes) in files {
                let mut file = File::create(staging.join(name))?;
                file.write_all(bytes)?;
                file.sync_all()?;
            }
            sync_dir(&staging)?;
            let committed = self.outbox.join(&id);
            fs::rename(&staging, &committed)?;
            sync_dir(&self.outbox)
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        Ok(self.outbox.join(id))
    }

    /// Every file still owed to the destination, in arrival order.
    pub fn pending(&self) -> io::Result<Vec<PathBuf>> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&self.outbox)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        let mut files = Vec::new();
        for dir in dirs {
            let mut inside: Vec<PathBuf> = match fs::read_dir(&dir) {
                Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(_) => continue,
            };
            if inside.is_empty() {
                let _ = fs::remove_dir(&dir);
            }
            inside.sort();
            files.extend(inside);
        }
        Ok(files)
    }

    /// The destination stored `file`: forget it.
    pub fn delivered(&self, file: &Path) -> io::Result<()> {
        fs::remove_file(file)?;
        if let Some(dir) = file.parent()
            && fs::read_dir(dir)?.next().is_none()
        {
            fs::remove_dir(dir)?;
        }
        Ok(())
    }

    /// The destination refused `file` for good: keep it aside with the reason.
    pub fn quarantine(&self, file: &Path, reason: &str) -> io::Result<PathBuf> {
        let dir = file.parent().and_then(|d| d.file_name()).unwrap_or_default();
        let target_dir = self.failed.join(dir);
        fs::create_dir_all(&target_dir)?;
        let target = target_dir.join(file.file_name().unwrap_or_default());
        fs::rename(file, &target)?;
        let mut why = target.clone().into_os_string();
        why.push(".reason.txt");
        fs::write(why, format!("{reason}\n"))?;
        if let Some(parent) = file.parent()
            && fs::read_dir(parent)?.next().is_none()
        {
            fs::remove_dir(parent)?;
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_whole_entries_in_order_and_survives_reopening() {
        let root = tempfile::tempdir().unwrap();
        let queue = Outbox::open(root.path()).unwrap();
        let first = queue
            .commit("1.2.3", &[("a.sr.dcm".into(), b"sr".to_vec()), ("a.seg.dcm".into(), b"seg".to_vec())])
            .unwrap();
        let second = queue.commit("1.2/4", &[("b.sr.dcm".into(), b"sr2".to_vec())]).unwrap();
        assert!(first < second && second.file_name().unwrap().to_str().unwrap().ends_with("-1.2_4"));
        // A crash while writing leaves an incoming entry: reopening removes it, keeps the outbox.
        fs::create_dir_all(root.path().join("incoming/junk")).unwrap();
        fs::write(root.path().join("incoming/junk/x.dcm"), b"half").unwrap();
        let queue = Outbox::open(root.path()).unwrap();
        assert_eq!(fs::read_dir(root.path().join("incoming")).unwrap().count(), 0);
        let pending = queue.pending().unwrap();
        let names: Vec<&str> = pending.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["a.seg.dcm", "a.sr.dcm", "b.sr.dcm"]);
        queue.delivered(&pending[0]).unwrap();
        queue.delivered(&pending[1]).unwrap();
        assert!(!first.exists(), "an emptied entry is removed");
        let kept = queue.quarantine(&pending[2], "status C000").unwrap();
        assert_eq!(fs::read(&kept).unwrap(), b"sr2");
        assert!(fs::read_to_string(format!("{}.reason.txt", kept.display())).unwrap().contains("C000"));
        assert!(queue.pending().unwrap().is_empty() && !second.exists());
    }
}

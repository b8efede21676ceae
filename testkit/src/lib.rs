//! Shared helpers for the workspace's integration tests and benchmarks: where the workspace, the
//! real X-rays, the Python reference environment and ONNX Runtime are, reading the references'
//! `.npy` files, reference checkpoints made by PyTorch/torchvision, and the CPU a table was
//! measured on.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the checkout), whichever crate's test asks.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ is inside the workspace").to_path_buf()
}

/// Whether `../shared/data/cxr` is beside the checkout. Tests that need the real X-rays start
/// with `if skip_without_shared() { return; }`: without them they say so and pass, rather than
/// fail on a machine that lacks the data (CI always has it).
pub fn skip_without_shared() -> bool {
    let present = repo_root().join("../shared/data/cxr").is_dir();
    if !present {
        eprintln!("SKIPPED: ../shared/data/cxr (the real X-rays) is not beside the checkout");
    }
    !present
}

pub fn cxr_dir() -> PathBuf {
    let dir = repo_root().join("../shared/data/cxr");
    assert!(dir.is_dir(), "real X-rays not found at {}: the tests need ../shared beside the checkout", dir.display());
    dir
}

pub fn nih_images() -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(cxr_dir().join("nih/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    images.sort();
    images
}

/// The reference Python (torch, torchvision, onnx, onnxruntime), installed by scripts/setup.sh.
pub fn python() -> PathBuf {
    let path =
        std::env::var_os("MEDPATCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(path.exists(), "reference Python not found at {}: run scripts/setup.sh first", path.display());
    path
}

/// The ONNX Runtime library from the pinned onnxruntime wheel in the venv (or ORT_DYLIB_PATH).
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries.filter_map(|e| e.ok()).find_map(|e| {
            let capi = e.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi)
                .ok()?
                .filter_map(|f| f.ok().map(|f| f.path()))
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
        })
    });
    found.unwrap_or_else(|| panic!("libonnxruntime.so not found under {}: run scripts/setup.sh first", lib.display()))
}

/// Run a script from tests/python with the reference Python; panics with its output on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("cannot start the reference Python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

/// A `.npy` array (numpy.save's float32 or float64, any order), read by the evaluation's reader.
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let array = medpatch_eval::npy::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (array.shape, array.data)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A scratch directory under target/ that survives the test (for inspecting failures).
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo_root().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A torchvision MedicalPatchNet checkpoint (saved like the published one), its reference outputs
/// and (once exported) medpatch's ONNX of it, made by tests/python/make_export_reference.py.
///
/// Made once per test run and shared: nextest runs every test in its own process, so the
/// directory is named after the run (`NEXTEST_RUN_ID`; the process under plain `cargo test`) and
/// made under a file lock by whichever process comes first. The lock is held while `f` runs.
fn with_reference_checkpoint<T>(arch: &str, f: impl FnOnce(&Path) -> T) -> T {
    let run = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| std::process::id().to_string());
    let scratch = repo_root().join("target/test-scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let dir = scratch.join(format!("reference-{arch}-{run}"));
    let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    let done = dir.join("made");
    if !done.exists() {
        remove_earlier_runs_references(&scratch, arch);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let xray = nih_images()[0].clone();
        run_python(
            "make_export_reference.py",
            &["--arch", arch, "--xray", xray.to_str().unwrap(), "--out", dir.to_str().unwrap()],
        );
        std::fs::write(&done, b"").unwrap();
    }
    f(&dir)
}

/// Earlier runs' reference directories (~150 MB each) would pile up under target/test-scratch, one
/// per run: those last touched over an hour ago are removed (no run lasts that long, so a run going
/// on beside this one keeps its own).
fn remove_earlier_runs_references(scratch: &Path, arch: &str) {
    let prefix = format!("reference-{arch}-");
    let hour = std::time::Duration::from_secs(3600);
    for entry in std::fs::read_dir(scratch).into_iter().flatten().flatten() {
        let stale = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > hour));
        if stale && entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

/// Export a reference checkpoint with medpatch (patch size 64), once per test run, and load it.
pub fn exported_reference_model(arch: &str) -> (PathBuf, medpatch_engine::Model) {
    with_reference_checkpoint(arch, |dir| {
        let out = dir.join(format!("{arch}.onnx"));
        if !out.exists() {
            let mut options = medpatch_exporter::ExportOptions::new(
                medpatch_exporter::WeightsSource::File(dir.join("weights.pt")),
                out.clone(),
            );
            options.arch = medpatch_models::ArchConfig::builtin(arch).unwrap();
            medpatch_exporter::export(&options).unwrap();
        }
        (dir.to_path_buf(), medpatch_engine::Model::from_path(&out).unwrap())
    })
}

/// Every real X-ray beside the checkout: NIH PNGs, pediatric JPEGs, the DICOM.
pub fn all_real_xrays() -> Vec<PathBuf> {
    let mut all = nih_images();
    for sub in ["pediatric", "dicom"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(cxr_dir().join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        all.extend(files);
    }
    all
}

/// Does the CPU have bf16 arithmetic (AVX512-BF16 or AMX), by the kernel's CPU flags, whatever
/// OpenVINO says? Decides which behaviour the bf16 tests demand.
pub fn cpu_has_bf16() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("the bf16 tests read /proc/cpuinfo (Linux)");
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    flags.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16")
}

/// The CPU a benchmark ran on, for its table: model name, logical CPUs, and the SIMD flags that
/// decide which kernels the runtimes pick.
pub fn cpu_summary() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim().to_string()
    };
    let flags = field("flags");
    let simd: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"].contains(f))
        .collect();
    format!(
        "{}, {} logical CPUs, {}",
        field("model name"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        simd.join(" ")
    )
}

/// The median of a benchmark's measurements (the upper middle one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Running hostile inputs in a child process with bounded memory and time, as
/// engine/tests/decode_mutations.rs and exporter/tests/hostile_weights.rs do: an allocation past
/// the limit fails in the child (which aborts), and the parent names the input it was on.
pub mod bounded {
    use std::process::{Command, Output};

    /// A field of /proc/self/status in KiB (VmRSS, VmHWM); 0 where it cannot be read.
    pub fn status_kib(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Reset VmHWM to the current RSS (Linux ≥ 4.0: "5" in clear_refs), so that the next VmHWM is
    /// the peak of what follows. False where the kernel does not allow it.
    pub fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// Is this process the worker that [`rerun_under_address_limit`] started?
    pub fn is_worker(marker: &str) -> bool {
        std::env::var_os(marker).is_some()
    }

    /// Re-run this test binary's test `test_name` alone in a child under `ulimit -v limit_kib`
    /// (address space, not RSS: a huge zeroed buffer costs no RSS until touched), with the
    /// environment variable `marker` set so that the test knows it is the worker.
    pub fn rerun_under_address_limit(test_name: &str, marker: &str, limit_kib: u64) -> Output {
        let exe = std::env::current_exe().unwrap();
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {limit_kib} && exec \"$0\" --exact {test_name} --nocapture --test-threads 1"))
            .arg(&exe)
            .env(marker, "1")
            .output()
            .unwrap()
    }
}

/// `program` (a medpatch binary) run from the repository as on a fresh machine: neither ONNX
/// Runtime nor OpenVINO can be found (their variables and Python environments removed), so
/// `auto` runs tract unless the caller adds them back.
pub fn without_runtimes(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.current_dir(repo_root());
    for var in
        ["ORT_DYLIB_PATH", "OPENVINO_LIB_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "INTEL_OPENVINO_DIR", "LD_LIBRARY_PATH"]
    {
        command.env_remove(var);
    }
    command
}

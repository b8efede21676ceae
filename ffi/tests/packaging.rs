//! libmedpatch as a host gets it: the committed header equals cbindgen's output and declares
//! exactly the exported symbols; the staged prefix works with CMake `find_package(medpatch)` and
//! with `cc` + `pkg-config`; the C and C++ examples, built with -Wall -Wextra -Werror under
//! AddressSanitizer/UBSan, run on the bundled X-ray with tract and ONNX Runtime and print the
//! same numbers as `medpatch predict`.
//!
//! Needs what scripts/setup.sh installs: cbindgen (.cache/tools/bin), cmake (.venv/bin), and the
//! onnxruntime wheel's library (ORT_DYLIB_PATH, set by scripts/test.sh).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Where cargo put this profile's artefacts (target/debug), found from the test binary itself.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tool(name: &str, candidates: &[PathBuf]) -> PathBuf {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .or_else(|| {
            std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} not found: run scripts/setup.sh (it installs the pinned {name})"))
}

fn header() -> String {
    std::fs::read_to_string(repo().join("ffi/include/medpatch.h")).unwrap()
}

#[test]
fn header_is_cbindgens_output_and_matches_the_exported_symbols_and_version() {
    let cbindgen = tool("cbindgen", &[repo().join(".cache/tools/bin/cbindgen")]);
    let generated = run(Command::new(cbindgen).current_dir(repo()).args([
        "--config",
        "ffi/cbindgen.toml",
        "--crate",
        "medpatch-ffi",
        "ffi",
    ]))
    .stdout;
    assert!(
        String::from_utf8_lossy(&generated) == header(),
        "ffi/include/medpatch.h is stale: run scripts/build-ffi.sh --header and commit it"
    );

    // Every `medpatch_…(` outside comments is a declared function.
    let code: String = header().lines().filter(|l| !l.trim_start().starts_with('*') && !l.contains("/*")).collect();
    let declared: BTreeSet<String> = code
        .split('(')
        .filter_map(|before| before.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next())
        .filter(|name| name.starts_with("medpatch_"))
        .map(str::to_string)
        .collect();
    let library = profile_dir().join("libmedpatch.so");
    let nm = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&library)).stdout;
    let exported: BTreeSet<String> = String::from_utf8_lossy(&nm)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("medpatch_"))
        .map(str::to_string)
        .collect();
    assert_eq!(declared, exported, "header declarations vs symbols exported by {}", library.display());
    // Nothing else: the Rust runtime's and the bundled C libraries' symbols (OpenJPEG's opj_*) stay
    // inside, or a host linking its own OpenJPEG would get one implementation for both.
    let others: BTreeSet<String> = String::from_utf8_lossy(&nm)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| !s.starts_with("medpatch_"))
        .map(|s| if s.starts_with("opj_") { "opj_* (OpenJPEG)".to_string() } else { s.to_string() })
        .collect();
    assert!(others.is_empty(), "{} exports more than medpatch_*: {others:?}", library.display());
    assert!(declared.len() >= 35, "{declared:?}");

    let version: Vec<String> = ["MAJOR", "MINOR", "PATCH"]
        .iter()
        .map(|part| {
            let key = format!("#define MEDPATCH_VERSION_{part} ");
            header().lines().find_map(|l| l.strip_prefix(&key)).unwrap_or_else(|| panic!("{key} missing")).trim().into()
        })
        .collect();
    assert_eq!(version.join("."), env!("CARGO_PKG_VERSION"), "header version macros vs crate version");
    let soname = run(Command::new("readelf").arg("-d").arg(&library)).stdout;
    assert!(String::from_utf8_lossy(&soname).contains("[libmedpatch.so.0]"), "the library carries its soname");
}

/// `medpatch predict` on the bundled X-ray: probabilities and logits in model order.
fn cli_numbers(provider: &str, ort: Option<&Path>) -> (Vec<f64>, Vec<f64>) {
    let exe = profile_dir().join("medpatch");
    assert!(
        exe.is_file(),
        "{} is missing: run the workspace's tests (cargo test --workspace) or cargo build",
        exe.display()
    );
    let mut cli = Command::new(exe);
    cli.current_dir(repo()).args(["predict", "--quiet", "--provider", provider, "assets/00001369_000.png"]);
    if let Some(ort) = ort {
        cli.arg("--ort-lib").arg(ort);
    }
    let out = run(&mut cli);
    let record: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let values = |key: &str| record[key].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
    (values("probabilities"), values("logits"))
}

/// An example's JSON line: probabilities (object in class order) and logits (array).
fn example_numbers(stdout: &[u8]) -> (Vec<f64>, Vec<f64>) {
    let text = String::from_utf8_lossy(stdout);
    let record: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let probabilities = record["probabilities"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
    let logits = record["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    (probabilities, logits)
}

#[track_caller]
fn assert_close(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    // The CLI rounds to 6 decimals: half a unit of the last one, plus float noise.
    assert!(worst <= 1e-6, "{what}: worst |Δ| {worst:e}\n{a:?}\n{b:?}");
}

#[test]
fn examples_build_through_find_package_and_pkg_config_and_agree_with_the_cli() {
    let root = repo();
    let scratch = profile_dir().join("ffi-examples");
    let _ = std::fs::remove_dir_all(&scratch);
    let prefix = scratch.join("prefix");
    // Stage what `cargo test` just built for this profile (the test depends on it, so it is fresh).
    run(Command::new(root.join("scripts/build-ffi.sh"))
        .env("CARGO_TARGET_DIR", profile_dir().parent().unwrap())
        .args(["--debug", "--no-build", "--prefix"])
        .arg(&prefix));
    let ort = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);

    // CMake, find_package(medpatch), -Wall -Wextra -Werror, ASan + UBSan.
    let cmake = tool("cmake", &[root.join(".venv/bin/cmake")]);
    let build = scratch.join("cmake-build");
    run(Command::new(&cmake)
        .arg("-S")
        .arg(root.join("ffi/examples"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .arg("-DMEDPATCH_SANITIZE=ON")
        .arg("-DCMAKE_BUILD_TYPE=Debug"));
    run(Command::new(&cmake).arg("--build").arg(&build).arg("-j2"));

    // Plain cc + pkg-config, as a Makefile would.
    let pc_path = prefix.join("lib/pkgconfig");
    let pkg = |what: &str| -> Vec<String> {
        let out = run(Command::new("pkg-config").env("PKG_CONFIG_PATH", &pc_path).args([what, "medpatch"]));
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
    };
    let libdir = String::from_utf8_lossy(
        &run(Command::new("pkg-config").env("PKG_CONFIG_PATH", &pc_path).args(["--variable=libdir", "medpatch"]))
            .stdout,
    )
    .trim()
    .to_string();
    let plain = scratch.join("predict-pkgconfig");
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
        .arg(root.join("ffi/examples/predict.c"))
        .args(pkg("--cflags"))
        .args(pkg("--libs"))
        .arg(format!("-Wl,-rpath,{libdir}"))
        .arg("-o")
        .arg(&plain));

    let xray = root.join("assets/00001369_000.png");
    let sanitized = |program: &Path| {
        let mut command = Command::new(program);
        // Leaks are checked by the Rust cycle test (RSS); LeakSanitizer would also flag the
        // allocations ONNX Runtime and the Rust runtime keep for the life of the process.
        command.env("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1").env("UBSAN_OPTIONS", "halt_on_error=1");
        command
    };
    let mut providers = vec![("tract", None)];
    if let Some(ort) = &ort {
        providers.push(("cpu", Some(ort.as_path())));
    } else {
        eprintln!("ORT_DYLIB_PATH is not set: the examples run with tract only");
    }
    for (provider, ort) in providers {
        let (cli_probabilities, cli_logits) = cli_numbers(provider, ort);
        let mut args = vec!["--provider".to_string(), provider.to_string()];
        if let Some(ort) = ort {
            args.extend(["--ort-lib".to_string(), ort.display().to_string()]);
        }
        for program in [build.join("predict"), build.join("predict_cpp"), plain.clone()] {
            let out = run(sanitized(&program).args(&args).arg(&xray));
            let (probabilities, logits) = example_numbers(&out.stdout);
            let what = format!("{} ({provider})", program.display());
            assert_close(&format!("{what} probabilities"), &probabilities, &cli_probabilities);
            assert_close(&format!("{what} logits"), &logits, &cli_logits);
        }
        let out = run(sanitized(&build.join("threads")).args(&args).arg(&xray));
        let report: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
        assert_eq!((report["mismatches"].as_i64(), report["wrong_errors"].as_i64()), (Some(0), Some(0)), "{report}");
        assert_eq!(report["provider"], provider);
    }
    let out = run(sanitized(&build.join("misuse")).current_dir(&scratch).arg(&xray));
    let report: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(report["failures"], 0, "{report}");
    assert!(report["checks"].as_i64().unwrap() >= 45, "{report}");
}

/// A host that links the system's OpenJPEG beside libmedpatch (ffi/tests/c/openjpeg_beside.c)
/// decodes a JPEG 2000 DICOM through medpatch to the same logits as `medpatch predict`.
#[test]
fn a_host_with_its_own_openjpeg_decodes_jpeg_2000_through_medpatch() {
    let root = repo();
    let cxr = root.join("../shared/data/cxr");
    if !cxr.is_dir() {
        eprintln!("skipped: {} is absent (the JPEG 2000 DICOM is made from its X-rays)", cxr.display());
        return;
    }
    let scratch = profile_dir().join("ffi-openjpeg");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let python = std::env::var_os("MEDPATCH_PYTHON").map_or_else(|| root.join(".venv/bin/python"), PathBuf::from);
    run(Command::new(&python)
        .arg(root.join("tests/python/make_dicom_variants.py"))
        .arg("--cxr")
        .arg(&cxr)
        .arg("--out")
        .arg(&scratch)
        .args(["--side", "96"]));
    let dicom = scratch.join("j2k_lossless_u16.dcm");
    let openjpeg = |what: &str| -> Vec<String> {
        let out = run(Command::new("pkg-config").args([what, "libopenjp2"]));
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
    };
    // The library under its soname, as an installed prefix has it (cargo writes only libmedpatch.so).
    let libdir = scratch.join("lib");
    std::fs::create_dir_all(&libdir).unwrap();
    for name in ["libmedpatch.so", "libmedpatch.so.0"] {
        std::os::unix::fs::symlink(profile_dir().join("libmedpatch.so"), libdir.join(name)).unwrap();
    }
    let program = scratch.join("openjpeg_beside");
    // The system OpenJPEG first on the command line: were libmedpatch to export opj_*, the host's
    // library would come first in symbol lookup and serve medpatch's calls too.
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg(root.join("ffi/tests/c/openjpeg_beside.c"))
        .arg(format!("-I{}", root.join("ffi/include").display()))
        .args(openjpeg("--cflags"))
        .args(["-Wl,--no-as-needed"])
        .args(openjpeg("--libs"))
        .arg(format!("-L{}", libdir.display()))
        .arg("-lmedpatch")
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-o")
        .arg(&program));
    let ldd = String::from_utf8_lossy(&run(Command::new("ldd").arg(&program)).stdout).into_owned();
    assert!(ldd.contains("libopenjp2.so") && ldd.contains("libmedpatch.so"), "both libraries are loaded:\n{ldd}");
    let out = run(Command::new(&program).arg(&dicom));
    let record: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let logits: Vec<f64> = record["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let exe = profile_dir().join("medpatch");
    let cli = run(Command::new(exe).args(["predict", "--quiet", "--provider", "tract"]).arg(&dicom));
    let cli: serde_json::Value = serde_json::from_slice(cli.stdout.trim_ascii()).unwrap();
    let cli_logits: Vec<f64> = cli["logits"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
    eprintln!("system OpenJPEG {} beside libmedpatch", record["system_openjpeg"]);
    assert_close("JPEG 2000 DICOM through libmedpatch beside the system OpenJPEG", &logits, &cli_logits);
}

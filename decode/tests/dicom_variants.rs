//! DICOM variants against pydicom: every transfer syntax, sample width, byte order and colour model
//! the engine may meet, built from real X-rays by `tests/python/make_dicom_variants.py`, which also
//! writes pydicom's own decoding of each file (see its docstring for the exact reference).
//!
//! Each variant has ONE expected outcome, written in [`EXPECTED`]:
//! * `Same(max, mean)`: the engine decodes it and matches pydicom's reference pixel for pixel
//!   within `max` (largest |Δ|) and `mean` (mean |Δ|). Lossless data: 1e-4 (float rounding only).
//! * `Refused(words)`: `decode_path` fails, and its message names the file and contains `words`.
//!
//! Needs `../shared/data/cxr` (skipped with a message when absent) and the Python reference
//! environment (`<workspace>/.venv/bin/python` or `$MEDPATCH_PYTHON`; the test fails without it:
//! run `scripts/setup.sh`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use medpatch_decode::decode_path;
use medpatch_testkit::{cxr_dir, python, read_npy, repo_root, skip_without_shared};

#[derive(Debug, Clone, Copy)]
enum Expect {
    Same { max: f32, mean: f32 },
    Refused(&'static [&'static str]),
}
use Expect::*;

const LOSSLESS: Expect = Same { max: 1e-4, mean: 1e-5 };
/// YBR_FULL → RGB is computed in float32 as pydicom does, but the order of the sums differs, so a
/// channel exactly at .5 may round the other way: at most one level of an 8-bit channel.
const YBR: Expect = Same { max: 1.0 / 255.0 + 1e-4, mean: 1e-3 };
/// The same JPEG stream through two DCT decoders (jpeg-decoder / zune-jpeg here, libjpeg in
/// pydicom): their IDCT rounding differs by a few grey levels at most, rarely; the min-max
/// normalisation of the result spreads that a little.
const JPEG_LOSSY: Expect = Same { max: 4.0 / 255.0, mean: 0.5 / 255.0 };

const EXPECTED: &[(&str, Expect)] = &[
    ("cr_explicit_le_u16", LOSSLESS),
    ("cr_implicit_le_u16", LOSSLESS),
    ("cr_deflated_le_u16", LOSSLESS),
    ("explicit_le_u8", LOSSLESS),
    ("explicit_le_u16", LOSSLESS),
    ("explicit_le_s16", LOSSLESS),
    ("explicit_le_u32", LOSSLESS),
    ("explicit_le_s32", LOSSLESS),
    ("explicit_be_u8", LOSSLESS),
    ("explicit_be_u16", LOSSLESS),
    ("explicit_be_s16", LOSSLESS),
    ("explicit_be_u32", LOSSLESS),
    ("explicit_be_s32", LOSSLESS),
    ("explicit_be_u8_ow", LOSSLESS),
    ("bare_implicit_u16", LOSSLESS),
    ("rle_u8", LOSSLESS),
    ("rle_u16", LOSSLESS),
    ("j2k_lossless_u16", LOSSLESS),
    ("j2k_lossless_u8", LOSSLESS),
    // lossy JPEG 2000: openjp2 (a Rust port of OpenJPEG) here, OpenJPEG in pydicom: same algorithm
    ("j2k_lossy_u16", Same { max: 1e-4, mean: 1e-5 }),
    ("jpeg_baseline_u8", JPEG_LOSSY),
    ("jpeg_lossless_p14_u16", LOSSLESS),
    ("jpeg_lossless_sv1_u16", LOSSLESS),
    ("jpeg_lossless_sv1_u8", LOSSLESS),
    // no pure-Rust 12-bit DCT decoder; jpeg-decoder refuses the frame header
    ("jpeg_extended_12bit_header", Refused(&["JPEG Extended (Process 2 & 4)", "1.2.840.10008.1.2.4.51"])),
    // JPEG-LS needs CharLS (a C++ library built with cmake): not in the default build
    ("jpegls_lossless_u16", Refused(&["JPEG-LS Lossless", "1.2.840.10008.1.2.4.80"])),
    ("rgb_u8", LOSSLESS),
    ("rgb_planar_u8", LOSSLESS),
    ("rgb_u16", LOSSLESS),
    ("ybr_full_u8", YBR),
    ("ybr_full_422_u8", YBR),
    ("jpeg_baseline_ybr_422", JPEG_LOSSY),
    ("palette_u8", LOSSLESS),
    ("multiframe_u16", Refused(&["multi-frame", "3 frames"])),
    ("sr_report", Refused(&["no image"])),
    ("image_without_pixel_data", Refused(&["no image"])),
];

/// A 2-D float32 `.npy`: (rows, cols, values).
fn read_npy_2d(path: &Path) -> (usize, usize, Vec<f32>) {
    let (shape, values) = read_npy(path);
    assert_eq!(shape.len(), 2, "{}: shape {shape:?}", path.display());
    (shape[0], shape[1], values)
}

#[test]
fn dicom_variants_match_pydicom_or_are_refused_by_name() {
    if skip_without_shared() {
        return;
    }
    let cxr = cxr_dir();
    let py = python();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(&py)
        .arg(repo_root().join("tests/python/make_dicom_variants.py"))
        .arg("--cxr")
        .arg(&cxr)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "generator failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let manifest = std::fs::read_to_string(out.path().join("manifest.tsv")).unwrap();
    let made: BTreeMap<&str, &str> = manifest
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    let expected: BTreeMap<&str, Expect> = EXPECTED.iter().copied().collect();
    // every file has an expectation and every expectation a file: nothing passes by omission
    assert_eq!(made.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "variants vs expectations");

    let mut failures = Vec::new();
    for (name, expect) in EXPECTED {
        let path = out.path().join(format!("{name}.dcm"));
        let result = decode_path(&path);
        let line = match (expect, result) {
            (Same { max, mean }, Ok(im)) => {
                let npy = out.path().join(format!("{name}.npy"));
                if !npy.exists() {
                    failures.push(format!("{name}: pydicom wrote no reference (see manifest)"));
                    continue;
                }
                let (rows, cols, want) = read_npy_2d(&npy);
                if (im.height as usize, im.width as usize) != (rows, cols) {
                    failures.push(format!("{name}: {}×{} decoded, reference {cols}×{rows}", im.width, im.height));
                    continue;
                }
                let diffs: Vec<f32> = im.pixels.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
                let worst = diffs.iter().copied().fold(0.0f32, f32::max);
                let avg = diffs.iter().sum::<f32>() / diffs.len() as f32;
                if worst > *max || avg > *mean {
                    failures.push(format!(
                        "{name}: max |Δ| {worst:.2e} (bound {max:.1e}), mean {avg:.2e} (bound {mean:.1e})"
                    ));
                }
                format!(
                    "{name:28} {:24} decoded {}×{}, max |Δ| {worst:.1e}, mean |Δ| {avg:.1e}",
                    made[name], im.width, im.height
                )
            }
            (Same { .. }, Err(e)) => {
                failures.push(format!("{name}: expected pixels, got an error: {e}"));
                continue;
            }
            (Refused(words), Err(e)) => {
                let msg = e.to_string();
                if !msg.starts_with(&path.display().to_string()) {
                    failures.push(format!("{name}: the message does not name the file: {msg}"));
                }
                for w in *words {
                    if !msg.contains(w) {
                        failures.push(format!("{name}: the message lacks {w:?}: {msg}"));
                    }
                }
                format!("{name:28} {:24} refused: {}", made[name], e.problem())
            }
            (Refused(_), Ok(im)) => {
                failures.push(format!("{name}: expected a refusal, got a {}×{} image", im.width, im.height));
                continue;
            }
        };
        println!("{line}");
    }
    assert!(failures.is_empty(), "{} variant(s) failed:\n{}", failures.len(), failures.join("\n"));
}

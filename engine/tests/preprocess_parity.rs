//! Parity of decode + preprocess with the seed's Python pipeline (PIL / pydicom + torchvision).
//!
//! Runs `tests/python/preprocess_reference.py` (the independent reference) on every real X-ray in
//! `<workspace>/../shared/data/cxr` and on a few synthetic images of awkward sizes, then compares
//! with `medpatch_engine::decode` + `medpatch_engine::preprocess`:
//!
//! * real images: max |Δ| ≤ 2/255 and mean |Δ| ≤ 0.5/255 per image (JPEG decoders may differ by a
//!   grey level);
//! * synthetic 8-bit PNGs (decoding is exact, so this isolates crop + resize): max |Δ| ≤ 1e-5.
//!
//! The Python is `<workspace>/.venv/bin/python` or `$MEDPATCH_PYTHON`. Without it the test fails:
//! run `scripts/setup.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use medpatch_engine::decode::{GrayImage, decode_path};
use medpatch_engine::preprocess::preprocess;
use medpatch_testkit::{cxr_dir, python, read_npy, repo_root, skip_without_shared};

const SIZE: u32 = 512;

/// Run the Python reference on `images`; returns the output directory.
fn run_reference(images: &[PathBuf], decoded: bool) -> tempfile::TempDir {
    let py = python();
    assert!(
        py.exists(),
        "the Python reference environment is missing ({} not found): run scripts/setup.sh, or \
         point MEDPATCH_PYTHON at a Python with torch, torchvision, pillow, pydicom and numpy",
        py.display()
    );
    let script = repo_root().join("tests/python/preprocess_reference.py");
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(&py);
    cmd.arg(&script).arg("--out").arg(out.path()).arg("--size").arg(SIZE.to_string());
    if decoded {
        cmd.arg("--decoded");
    }
    cmd.args(images);
    let result = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        result.status.success(),
        "{} {} failed ({}); if modules are missing run scripts/setup.sh\n--- stderr\n{}",
        py.display(),
        script.display(),
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

struct Diff {
    max: f32,
    mean: f64,
}

fn diff(a: &[f32], b: &[f32]) -> Diff {
    assert_eq!(a.len(), b.len());
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += d as f64;
    }
    Diff { max, mean: sum / a.len() as f64 }
}

fn format_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => "PNG",
        Some("jpg" | "jpeg") => "JPEG",
        Some("dcm") => "DICOM",
        _ => "other",
    }
}

fn real_images() -> Vec<PathBuf> {
    let root = cxr_dir();
    let mut images = Vec::new();
    for sub in ["nih/images", "pediatric", "dicom"] {
        let dir = root.join(sub);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (the shared X-ray set is expected there)", dir.display()));
        let mut found: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| format_of(p) != "other").collect();
        found.sort();
        images.extend(found);
    }
    images
}

#[test]
fn real_xrays_match_the_python_reference() {
    if skip_without_shared() {
        return;
    }
    let images = real_images();
    assert_eq!(images.iter().filter(|p| format_of(p) == "PNG").count(), 32, "expected the 32 NIH PNGs");
    assert_eq!(images.iter().filter(|p| format_of(p) == "JPEG").count(), 8);
    assert_eq!(images.iter().filter(|p| format_of(p) == "DICOM").count(), 1);

    let out = run_reference(&images, true);
    let mut failures = Vec::new();
    // per format: (worst max, worst mean, sum of means, count, worst decode max)
    let mut per_format: std::collections::BTreeMap<&str, (f32, f64, f64, usize, f32)> = Default::default();
    println!(
        "{:<34} {:>10} {:>8} {:>9} | decoded: {:>7} {:>8}",
        "image (preprocessed, ×255)", "size", "max", "mean", "max", "mean"
    );
    for (i, path) in images.iter().enumerate() {
        let img: GrayImage = decode_path(path).unwrap_or_else(|e| panic!("{e}"));
        let (dshape, dref) = read_npy(&out.path().join(format!("{i}.decoded.npy")));
        assert_eq!(dshape, vec![img.height as usize, img.width as usize], "{}: decoded size", path.display());
        let dec = diff(&img.pixels, &dref);

        let t0 = std::time::Instant::now();
        let ours = preprocess(&img, SIZE);
        let elapsed = t0.elapsed();
        let (shape, reference) = read_npy(&out.path().join(format!("{i}.npy")));
        assert_eq!(shape, vec![SIZE as usize, SIZE as usize]);
        let d = diff(&ours.pixels, &reference);
        let name = path.file_name().unwrap().to_string_lossy();
        println!(
            "{name:<34} {:>10} {:>8.4} {:>9.5} | {:>16.4} {:>8.5}   (preprocess {elapsed:.1?})",
            format!("{}x{}", img.width, img.height),
            d.max * 255.0,
            d.mean * 255.0,
            dec.max * 255.0,
            dec.mean * 255.0
        );
        let entry = per_format.entry(format_of(path)).or_insert((0.0, 0.0, 0.0, 0, 0.0));
        entry.0 = entry.0.max(d.max);
        entry.1 = entry.1.max(d.mean);
        entry.2 += d.mean;
        entry.3 += 1;
        entry.4 = entry.4.max(dec.max);
        if d.max > 2.0 / 255.0 || d.mean > 0.5 / 255.0 {
            failures.push(format!(
                "{}: max |Δ| {:.3}/255, mean |Δ| {:.4}/255",
                path.display(),
                d.max * 255.0,
                d.mean * 255.0
            ));
        }
    }
    println!("\nper format (in 1/255 units): worst max, worst mean, average mean, decode worst max");
    for (fmt, (max, worst_mean, sum, n, dmax)) in &per_format {
        println!(
            "{fmt:<6} n={n:<3} max {:.4}  worst mean {:.5}  avg mean {:.5}  decode max {:.4}",
            max * 255.0,
            worst_mean * 255.0,
            sum / *n as f64 * 255.0,
            dmax * 255.0
        );
    }
    assert!(failures.is_empty(), "over tolerance:\n{}", failures.join("\n"));
}

/// Exact 8-bit PNG decoding isolates crop + resize: these must agree to float rounding.
#[test]
fn synthetic_sizes_match_the_python_reference_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // (width, height): downscale, upscale, odd and even crop differences, mixed up/down.
    let sizes = [(1024, 1024), (1841, 1955), (300, 300), (301, 517), (777, 600), (513, 2000), (64, 90)];
    let mut paths = Vec::new();
    for (k, &(w, h)) in sizes.iter().enumerate() {
        let mut state = 0x9E37_79B9u32.wrapping_mul(k as u32 + 1);
        let data: Vec<u8> = (0..w * h)
            .map(|i| {
                // smooth gradient plus noise, so both low and high frequencies are exercised
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let (x, y) = (i % w, i / w);
                let base = (x * 255 / w + y * 255 / h) / 2;
                (base + (state % 64)).min(255) as u8
            })
            .collect();
        let img = image::GrayImage::from_raw(w, h, data).unwrap();
        let p = dir.path().join(format!("synthetic_{w}x{h}.png"));
        img.save(&p).unwrap();
        paths.push(p);
    }
    let out = run_reference(&paths, false);
    let mut failures = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let img = decode_path(path).unwrap();
        let ours = preprocess(&img, SIZE);
        let (_, reference) = read_npy(&out.path().join(format!("{i}.npy")));
        let d = diff(&ours.pixels, &reference);
        println!("{:<28} max |Δ| {:.3e}  mean |Δ| {:.3e}", path.file_name().unwrap().to_string_lossy(), d.max, d.mean);
        if d.max > 1e-5 {
            failures.push(format!("{}: max |Δ| {:.3e}", path.display(), d.max));
        }
    }
    assert!(failures.is_empty(), "resize differs from torchvision:\n{}", failures.join("\n"));
}

/// A real radiograph cut short must fail cleanly, whatever the format.
#[test]
fn truncated_real_files_are_errors() {
    if skip_without_shared() {
        return;
    }
    let root = cxr_dir();
    let samples = [
        root.join("nih/images").join(first_file(&root.join("nih/images"))),
        root.join("pediatric").join(first_file(&root.join("pediatric"))),
        root.join("dicom/RG1_UNCR.dcm"),
    ];
    for path in samples {
        let bytes = std::fs::read(&path).unwrap();
        for frac in [0.1, 0.5, 0.9] {
            let cut = (bytes.len() as f64 * frac) as usize;
            let r = medpatch_engine::decode::decode_bytes(&bytes[..cut], "truncated");
            assert!(r.is_err(), "{} cut to {cut} bytes decoded", path.display());
            println!("{} @ {cut}: {}", path.display(), r.unwrap_err());
        }
    }
}

fn first_file(dir: &Path) -> String {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names.into_iter().next().unwrap()
}

/// Colour JPEGs go through each side's YCbCr decoder and the luminance formula: within the
/// real-image tolerance. (The shared X-rays are all grayscale JPEGs.)
#[test]
fn synthetic_colour_jpegs_match_the_python_reference() {
    use image::ImageEncoder;
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (700u32, 530u32);
    let mut paths = Vec::new();
    for (k, tint) in [(0u32, [0i32, 0, 0]), (1, [30, -10, -40])] {
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                // an X-ray-like smooth field with some edges, gray or tinted
                let v = ((x as f32 / 40.0).sin() * 60.0 + (y as f32 / 25.0).cos() * 50.0 + 128.0) as i32
                    + if (x / 50 + y / 50) % 2 == 0 { 20 } else { -20 };
                for t in tint {
                    rgb.push((v + t).clamp(0, 255) as u8);
                }
            }
        }
        let p = dir.path().join(format!("colour_{k}.jpg"));
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        std::fs::write(&p, bytes).unwrap();
        paths.push(p);
    }
    let out = run_reference(&paths, true);
    let mut failures = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let img = decode_path(path).unwrap();
        let (_, dref) = read_npy(&out.path().join(format!("{i}.decoded.npy")));
        let dec = diff(&img.pixels, &dref);
        let ours = preprocess(&img, SIZE);
        let (_, reference) = read_npy(&out.path().join(format!("{i}.npy")));
        let d = diff(&ours.pixels, &reference);
        println!(
            "{:<14} preprocessed max {:.4}/255 mean {:.5}/255 | decoded max {:.4}/255 mean {:.5}/255",
            path.file_name().unwrap().to_string_lossy(),
            d.max * 255.0,
            d.mean * 255.0,
            dec.max * 255.0,
            dec.mean * 255.0
        );
        if d.max > 2.0 / 255.0 || d.mean > 0.5 / 255.0 {
            failures.push(format!("{}: max {:.3}/255 mean {:.4}/255", path.display(), d.max * 255.0, d.mean * 255.0));
        }
    }
    assert!(failures.is_empty(), "over tolerance:\n{}", failures.join("\n"));
}

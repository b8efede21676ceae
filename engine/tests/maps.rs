//! Saliency maps: the fast dense map against a direct, slow transcription of the seed's formula;
//! completeness; thread safety.

use medpatch_engine::decode::GrayImage;
use medpatch_engine::{Engine, Provider, ProviderChoice, explain};
use medpatch_exporter::{ExportOptions, WeightsSource, export};
use medpatch_models::ArchConfig;
use medpatch_testkit::*;
use std::sync::Arc;

fn tiny_engine(name: &str) -> Engine {
    let path = scratch(name).join("tiny.onnx");
    let mut options = ExportOptions::new(WeightsSource::Random { seed: 11, num_classes: 14 }, path.clone());
    options.arch = ArchConfig::builtin("efficientnet_v2_tiny").unwrap();
    export(&options).unwrap();
    Engine::builder().model_path(path).provider(ProviderChoice::Only(Provider::Tract)).threads(1).build().unwrap()
}

fn real_prepared(engine: &Engine, index: usize) -> GrayImage {
    let image = medpatch_engine::decode::decode_path(&nih_images()[index]).unwrap();
    engine.prepare(&image)
}

/// The seed's formula, literally: for each shift (dr, dc), zero-pad the image by 32, take the
/// 512 window at (32+dr, 32+dc), get its 8×8 patch logits, upsample nearest to 512, shift the
/// upsampled map back by (−dr, −dc) with zero fill, sum; divide by S².
fn slow_dense_map(engine: &Engine, image: &GrayImage, steps: usize) -> Vec<f64> {
    const SIDE: usize = 512;
    const PAD: usize = 32;
    let classes = engine.model().num_classes();
    let padded_side = SIDE + 2 * PAD;
    let mut padded = vec![0f32; padded_side * padded_side];
    for y in 0..SIDE {
        for x in 0..SIDE {
            padded[(y + PAD) * padded_side + x + PAD] = image.pixels[y * SIDE + x];
        }
    }
    let mut total = vec![0f64; classes * SIDE * SIDE];
    let half = steps as isize / 2;
    let stride = 64 / steps as isize;
    for i in 0..steps as isize {
        for j in 0..steps as isize {
            let (dr, dc) = ((i - half) * stride, (j - half) * stride);
            let mut window = vec![0f32; SIDE * SIDE];
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let (py, px) = ((PAD as isize + dr) as usize + y, (PAD as isize + dc) as usize + x);
                    window[y * SIDE + x] = padded[py * padded_side + px];
                }
            }
            // One patch at a time through the backbone, no batching.
            let mut logits = Vec::new();
            for r in 0..8 {
                for c in 0..8 {
                    let mut patch = Vec::with_capacity(64 * 64);
                    for y in 0..64 {
                        patch.extend_from_slice(&window[(r * 64 + y) * SIDE + c * 64..][..64]);
                    }
                    logits.extend(engine.run_patches(&patch, 1).unwrap());
                }
            }
            for k in 0..classes {
                let upsampled: Vec<f32> =
                    (0..SIDE * SIDE).map(|p| logits[((p / SIDE) / 64 * 8 + (p % SIDE) / 64) * classes + k]).collect();
                for y in 0..SIDE as isize {
                    for x in 0..SIDE as isize {
                        let (sy, sx) = (y - dr, x - dc);
                        if (0..SIDE as isize).contains(&sy) && (0..SIDE as isize).contains(&sx) {
                            total[k * SIDE * SIDE + (y * SIDE as isize + x) as usize] +=
                                upsampled[(sy * SIDE as isize + sx) as usize] as f64;
                        }
                    }
                }
            }
        }
    }
    total.iter().map(|v| v / (steps * steps) as f64).collect()
}

#[test]
fn dense_map_equals_the_slow_transcription() {
    if skip_without_shared() {
        return;
    }
    let engine = tiny_engine("maps-dense");
    let image = real_prepared(&engine, 3);
    for steps in [2, 4] {
        let fast = engine.dense_map(&image, steps).unwrap();
        let slow = slow_dense_map(&engine, &image, steps);
        let worst = fast.values.iter().zip(&slow).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        let spread = slow.iter().fold(0f64, |m, v| m.max(v.abs()));
        eprintln!("S={steps}: max |fast − slow| {worst:.2e} (map values up to {spread:.3}) in {:.2?}", fast.elapsed);
        assert!(worst <= 1e-5, "S={steps}: dense map differs from the formula by {worst}");
        assert!(spread > 1e-3, "the test model must give non-trivial maps");
    }
}

#[test]
fn dense_map_at_one_step_is_the_coarse_map_and_completeness_holds() {
    if skip_without_shared() {
        return;
    }
    let engine = tiny_engine("maps-coarse");
    let image = real_prepared(&engine, 5);
    let p = engine.predict_prepared(std::slice::from_ref(&image)).unwrap().remove(0).unwrap();
    let classes = engine.model().num_classes();
    // Completeness: the image logit is the mean of the patch logits.
    for c in 0..classes {
        let mean = (0..64).map(|i| p.patch_logits[i * classes + c] as f64).sum::<f64>() / 64.0;
        assert!((mean - p.logits[c] as f64).abs() < 1e-6);
    }
    let coarse = explain::coarse_map(&p.patch_logits, 8, 64, classes);
    let dense = engine.dense_map(&image, 1).unwrap();
    assert!(max_abs_diff(&coarse, &dense.values) < 1e-6);
    // The coarse map's mean over the image is the logit too.
    for c in 0..classes {
        let plane = &coarse[c * 512 * 512..(c + 1) * 512 * 512];
        let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / plane.len() as f64;
        assert!((mean - p.logits[c] as f64).abs() < 1e-5);
    }
    assert!(engine.dense_map(&image, 3).is_err());
}

#[test]
fn one_engine_shared_by_many_threads_gives_the_same_answers() {
    if skip_without_shared() {
        return;
    }
    let engine = Arc::new(tiny_engine("maps-threads"));
    let images: Vec<GrayImage> = (0..4).map(|i| real_prepared(&engine, i)).collect();
    let expected: Vec<Vec<f32>> =
        engine.predict_prepared(&images).unwrap().into_iter().map(|p| p.unwrap().logits).collect();
    // Batched together or one at a time, the answers are the same.
    for (image, logits) in images.iter().zip(&expected) {
        let alone = engine.predict_prepared(std::slice::from_ref(image)).unwrap().remove(0).unwrap();
        assert!(max_abs_diff(&alone.logits, logits) < 1e-6);
    }
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (engine, images, expected) = (engine.clone(), images.clone(), expected.clone());
            std::thread::spawn(move || {
                for round in 0..3 {
                    let i = (t + round) % images.len();
                    let p = engine.predict_prepared(std::slice::from_ref(&images[i])).unwrap().remove(0).unwrap();
                    assert!(max_abs_diff(&p.logits, &expected[i]) < 1e-6);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

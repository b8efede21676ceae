//! Criterion benchmarks of the pipeline stages on a real X-ray, and of the backends on one image
//! (64 patches) of a model: the tiny test model by default, or the ONNX file in MEDPATCH_BENCH_MODEL
//! (e.g. the full EfficientNetV2-S). ONNX Runtime is included when ORT_DYLIB_PATH is set.
//!
//!     cargo bench --bench pipeline
//!     MEDPATCH_BENCH_MODEL=s.onnx ORT_DYLIB_PATH=... cargo bench --bench pipeline -- backend

use criterion::{Criterion, criterion_group, criterion_main};
use medpatch_engine::{Engine, ModelSource, Provider, ProviderChoice, decode, explain, preprocess, tile};
use std::hint::black_box;
use std::path::PathBuf;

fn xray() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/00001369_000.png")
}

fn stages(c: &mut Criterion) {
    let bytes = std::fs::read(xray()).unwrap();
    let image = decode::decode_bytes(&bytes, "bench.png").unwrap();
    let prepared = preprocess::preprocess(&image, 512);
    let mut group = c.benchmark_group("stages");
    group.bench_function("decode png 1024", |b| {
        b.iter(|| decode::decode_bytes(black_box(&bytes), "bench.png").unwrap())
    });
    group.bench_function("preprocess 1024->512", |b| b.iter(|| preprocess::preprocess(black_box(&image), 512)));
    group.bench_function("tile 8x8", |b| b.iter(|| tile::tile(black_box(&prepared.pixels), 512, 64)));
    let logits: Vec<f32> = (0..64 * 14).map(|i| (i as f32).sin()).collect();
    group.bench_function("aggregate + coarse maps", |b| {
        b.iter(|| {
            let mean = explain::mean_logits(black_box(&logits), 14);
            explain::coarse_map(&explain::patch_saliency(&logits, &mean, explain::MapKind::Scaled), 8, 64, 14)
        })
    });
    group.bench_function("dense accumulate one shift", |b| {
        let mut acc = explain::DenseAccumulator::new(8, 64, 14);
        b.iter(|| acc.add(black_box(&logits), -8, 8))
    });
    group.finish();
}

fn backends(c: &mut Criterion) {
    let model = match std::env::var_os("MEDPATCH_BENCH_MODEL") {
        Some(path) => ModelSource::Path(path.into()),
        None => ModelSource::Default,
    };
    let mut providers = vec![Provider::Tract];
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        providers.insert(0, Provider::Cpu);
    }
    let image = preprocess::preprocess(&decode::decode_path(&xray()).unwrap(), 512);
    let mut group = c.benchmark_group("backend one image");
    group.sample_size(10);
    for provider in providers {
        let engine = Engine::builder().model(model.clone()).provider(ProviderChoice::Only(provider)).build().unwrap();
        let name = format!("{} {}", engine.model().metadata.architecture, provider);
        group.bench_function(name, |b| b.iter(|| engine.predict_prepared(std::slice::from_ref(&image)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, stages, backends);
criterion_main!(benches);

//! Data and training pipeline on small fixtures made here: CheXpert CSV parsing (visualCheXbert
//! column shift, label mapping), offline preprocessing, loading and augmentation, worker-thread
//! batching, the synthetic benchmark's files, a short training run with checkpoints, resume, and
//! the checkpoint's export.

use medpatch_models::CHEXPERT_CLASSES;
use medpatch_models::Rng;
use medpatch_train::data::{self, Dataset, Loader, LoaderOptions};
use medpatch_train::synth::{self, SynthConfig};
use medpatch_train::trainer::{self, CheckpointMeta, TrainOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const HEADER: &str = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices";

#[test]
fn csv_column_shift_and_labels() {
    // CheXpert train.csv style: blanks, uncertain (-1.0), lateral views.
    let plain = format!(
        "{HEADER}\n\
         CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,,,,,1.0\n\
         CheXpert-v1.0/train/patient00002/study2/view2_lateral.jpg,Male,87,Lateral,,,-1.0,1.0,0.0,,-1.0,,,1.0,0.0,1.0,,,\n"
    );
    let records = data::parse_csv(&plain).unwrap();
    assert_eq!(records.len(), 2, "all views are kept");
    let mut first = [0f32; 14];
    first[0] = 1.0;
    first[13] = 1.0;
    assert_eq!(records[0].labels, first);
    let second: Vec<f32> = records[1].labels.to_vec();
    assert_eq!(second, vec![0., 0., 1., 0., 0., 0., 0., 0., 1., 0., 1., 0., 0., 0.]);
    assert!(records[1].path.ends_with("view2_lateral.jpg"));

    // train_visualCheXbert.csv: No Finding is the LAST column; the loader moves it to position 5.
    let mut cols: Vec<&str> = HEADER.split(',').collect();
    let nf = cols.remove(5);
    cols.push(nf);
    let visual = format!(
        "{}\nCheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,1.0\n",
        cols.join(",")
    );
    let records = data::parse_csv(&visual).unwrap();
    assert_eq!(records[0].labels, first, "No Finding (last column) must land on output 0");

    // Anything else is refused, not misread.
    let swapped = plain.replacen("Edema,Consolidation", "Consolidation,Edema", 1);
    let err = data::parse_csv(&swapped).unwrap_err().to_string();
    assert!(err.contains("CheXpert findings in order"), "{err}");
    let bad = format!("{HEADER}\nx.jpg,F,1,Frontal,AP,maybe,,,,,,,,,,,,,\n");
    assert!(format!("{:#}", data::parse_csv(&bad).unwrap_err()).contains("invalid label"));
}

fn write_gray_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).unwrap();
}

#[test]
fn offline_preprocessing_crops_resizes_and_writes_grayscale_q100() {
    let dir = scratch("train-preprocess");
    // 300×200 RGB-looking gray image: 50-pixel bands left and right (cropped away) and a centre.
    let src = dir.join("src/CheXpert-v1.0/valid/patient1/study1/view1_frontal.png");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(300, 200, |x, _| {
        if !(50..250).contains(&x) { image::Rgb([255, 0, 0]) } else { image::Rgb([90, 90, 90]) }
    })
    .save(&src)
    .unwrap();
    let csv = dir.join("src/valid.csv");
    std::fs::write(
        &csv,
        format!("{HEADER}\nCheXpert-v1.0/valid/patient1/study1/view1_frontal.png,F,1,Frontal,AP,1.0,,,,,,,,,,,,,\n"),
    )
    .unwrap();
    let n = data::preprocess_dataset(&[csv], &dir.join("src"), &dir.join("dst"), 128, 2, false, &|_, _| {}).unwrap();
    assert_eq!(n, 1);
    assert!(dir.join("dst/valid.csv").exists(), "the CSV is copied beside the images");
    let out = dir.join("dst/CheXpert-v1.0/valid/patient1/study1/view1_frontal.png");
    // Same relative path; the bytes are a JPEG whatever the extension says.
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.starts_with(&[0xff, 0xd8]), "JPEG output");
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!(img.color(), image::ColorType::L8, "one grayscale component (no chroma, so no chroma subsampling)");
    assert_eq!((img.width(), img.height()), (128, 128));
    // The red bands were cropped: every pixel is the centre's luminance (PIL L of (90,90,90) = 90).
    let l = img.to_luma8();
    let (lo, hi) = l.pixels().fold((255u8, 0u8), |(a, b), p| (a.min(p[0]), b.max(p[0])));
    assert!(lo >= 88 && hi <= 92, "range {lo}..{hi}");
}

#[test]
fn loader_batches_in_order_with_deterministic_augmentation() {
    let dir = scratch("train-loader");
    let mut csv = format!("{HEADER}\n");
    for i in 0..7u32 {
        let rel = format!("imgs/p{i}.png");
        // Non-square: exercises the centre crop.
        write_gray_png(&dir.join(&rel), 80 + i, 72, |x, y| ((x * 3 + y * 5 + i * 17) % 256) as u8);
        let mut labels = vec![""; 14];
        labels[(i % 14) as usize] = "1.0";
        csv += &format!("{rel},F,40,Frontal,PA,{}\n", labels.join(","));
    }
    std::fs::write(dir.join("fixture.csv"), &csv).unwrap();
    let dataset = Arc::new(Dataset::from_csv(&dir.join("fixture.csv"), &dir).unwrap());
    let options = |workers, augment| LoaderOptions {
        batch_size: 3,
        image_size: 64,
        augment,
        workers,
        prefetch: 2,
        seed: 5,
        epoch: 1,
    };
    let order = vec![6, 0, 3, 1, 5, 2, 4];
    let collect = |workers, augment| -> Vec<data::Batch> {
        Loader::new(dataset.clone(), order.clone(), options(workers, augment)).map(|b| b.unwrap()).collect()
    };
    let one = collect(1, true);
    let three = collect(3, true);
    assert_eq!(one.iter().map(|b| b.indices.clone()).collect::<Vec<_>>(), vec![vec![6, 0, 3], vec![1, 5, 2], vec![4]]);
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a.indices, b.indices);
        assert_eq!(a.images, b.images, "augmentation must not depend on the worker count");
        assert_eq!(a.targets, b.targets);
    }
    assert_eq!(one[0].targets[CHEXPERT_CLASSES.len()], 1.0); // 2nd sample = record 0 → class 0
    assert_eq!(one[0].images.len(), 3 * 64 * 64);

    // Evaluation loading = the engine's decode + centre crop + antialiased resize.
    let eval = collect(2, false);
    let img = medpatch_engine::decode::decode_path(&dir.join("imgs/p6.png")).unwrap();
    let want = medpatch_engine::preprocess::preprocess(&img, 64).pixels;
    assert_eq!(&eval[0].images[..64 * 64], &want[..]);

    // Augmentation: values stay in [0, 1], a different epoch gives a different crop.
    assert!(one.iter().flat_map(|b| &b.images).all(|v| (0.0..=1.0).contains(v)));
    let mut r1 = Rng::derive(5, &[1, 6]);
    let mut r2 = Rng::derive(5, &[2, 6]);
    let sq = medpatch_engine::preprocess::center_crop_square(&img);
    assert_ne!(data::augment(&sq, 64, &mut r1), data::augment(&sq, 64, &mut r2));
}

#[test]
fn synthetic_benchmark_files_train_resume_and_export() {
    let dir = scratch("train-synth-run");
    let config = SynthConfig { train: 16, valid: 8, test: 6, width: 160, prevalence: 0.4, ..Default::default() };
    let layout = synth::write_benchmark(&config, &dir.join("data"), 2, &|_, _| {}).unwrap();
    // Both train CSVs describe the same labels (one with the visualCheXbert layout).
    let a = data::read_csv(&layout.train_csv).unwrap();
    let b = data::read_csv(&layout.train_visualchexbert_csv).unwrap();
    assert_eq!(a, b);
    assert_eq!(data::read_csv(&layout.test_csv).unwrap().len(), 6);
    // CheXlocalize ground truth: every image, every task, RLE of the image's size.
    let gt: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&layout.gt_val).unwrap()).unwrap();
    let valid = data::read_csv(&layout.valid_csv).unwrap();
    assert_eq!(gt.as_object().unwrap().len(), valid.len());
    for r in &valid {
        let entry = &gt[synth::chexlocalize_id(&r.path)];
        let img = image::open(layout.root.join(&r.path)).unwrap();
        for task in synth::LOCALIZATION_TASKS {
            let mask = medpatch_train::rle::decode_json(&entry[task]).unwrap();
            assert_eq!((mask.width, mask.height), (img.width() as usize, img.height() as usize));
            let column = if task == "Airspace Opacity" { "Lung Opacity" } else { task };
            let k = CHEXPERT_CLASSES.iter().position(|c| *c == column).unwrap();
            if r.labels[k] == 1.0 {
                assert!(!mask.is_empty(), "{} {task}: positive label, empty mask", r.path);
            }
        }
    }

    let opts = |out: &str, epochs: u64, resume: Option<PathBuf>| TrainOptions {
        arch: "efficientnet_v2_tiny".into(),
        patch_size: 64,
        image_size: 128,
        train_csv: layout.train_visualchexbert_csv.clone(),
        train_root: layout.root.clone(),
        valid_csv: Some(layout.valid_csv.clone()),
        valid_root: layout.root.clone(),
        out: dir.join(out),
        epochs,
        batch_size: 5,
        lr: 1e-3,
        weight_decay: 0.01,
        pct_start: 0.05,
        seed: 9,
        workers: 2,
        threads: 1,
        device: tch::Device::Cpu,
        amp: false,
        init: None,
        resume,
        limit_train: None,
        stop_after_epoch: None,
        dropout: None,
        stochastic_depth: None,
        progress: false,
    };
    // Straight: 2 epochs.
    let last = trainer::train(&opts("straight", 2, None), &mut |l| eprintln!("{l}")).unwrap();
    let meta: CheckpointMeta = serde_json::from_str(&std::fs::read_to_string(&last).unwrap()).unwrap();
    assert_eq!((meta.epoch, meta.history.len(), meta.patch_size), (2, 2, 64));
    assert_eq!(meta.scheduler.step, 8);
    let v = meta.history[1].validation.as_ref().unwrap();
    assert_eq!(v.auroc.len(), 14);
    assert_eq!(v.samples, 8);
    assert!(meta.optimizer.state_file.is_some());
    let first: CheckpointMeta =
        serde_json::from_str(&std::fs::read_to_string(dir.join("straight/epoch-001.json")).unwrap()).unwrap();
    assert!(first.optimizer.state_file.is_none(), "only the latest epoch keeps optimizer state");

    // Interrupted after epoch 1, then resumed: the same weights as the straight run, bit for bit.
    let mut interrupted = opts("interrupted", 2, None);
    interrupted.stop_after_epoch = Some(1);
    let cut = trainer::train(&interrupted, &mut |_| {}).unwrap();
    assert!(cut.ends_with("epoch-001.json"));
    trainer::train(&opts("interrupted", 2, Some(dir.join("interrupted/last.json"))), &mut |l| eprintln!("{l}"))
        .unwrap();
    let read = |p: PathBuf| -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<(String, Vec<f32>)> = tch::Tensor::read_safetensors(&p)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap()))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let (a, b) =
        (read(dir.join("straight/epoch-002.safetensors")), read(dir.join("interrupted/epoch-002.safetensors")));
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "{ka} differs between the straight and the resumed run");
    }

    // Export the trained checkpoint as the user would (`medpatch export --weights … --arch …`).
    let mut export = medpatch_exporter::ExportOptions::new(
        medpatch_exporter::WeightsSource::File(last.with_extension("safetensors")),
        dir.join("model.onnx"),
    );
    export.arch = medpatch_models::ArchConfig::builtin("efficientnet_v2_tiny").unwrap();
    medpatch_exporter::export(&export).unwrap();
    assert!(medpatch_engine::Model::from_path(&dir.join("model.onnx")).is_ok());
}

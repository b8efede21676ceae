//! Bad exporter input: a clear error naming the file and the problem, and no output left behind.

use medpatch_exporter::efficientnet::random_weights;
use medpatch_exporter::{ExportError, ExportOptions, WeightsSource, export};
use medpatch_models::ArchConfig;
use medpatch_testkit::*;
use safetensors::Dtype;
use safetensors::tensor::{TensorView, serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn tiny() -> ArchConfig {
    ArchConfig::builtin("efficientnet_v2_tiny").unwrap()
}

/// Write torchvision-named tiny weights as safetensors, after `edit` has had its way with them.
fn write_weights(path: &Path, edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<u8>)>)) {
    let weights = random_weights(&tiny(), 14, 1);
    let mut raw: BTreeMap<String, (Vec<usize>, Vec<u8>)> = weights
        .tensors
        .into_iter()
        .map(|(k, t)| (k, (t.shape, t.data.iter().flat_map(|v| v.to_le_bytes()).collect())))
        .collect();
    edit(&mut raw);
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(k, (shape, bytes))| (k.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap()))
        .collect();
    std::fs::write(path, serialize(views, None).unwrap()).unwrap();
}

fn try_export(weights: &Path, out: &Path) -> Result<(), ExportError> {
    let mut options = ExportOptions::new(WeightsSource::File(weights.to_path_buf()), out.to_path_buf());
    options.arch = tiny();
    export(&options).map(|_| ())
}

fn assert_fails_cleanly(weights: &Path, expect: &[&str]) -> String {
    let out = weights.with_extension("onnx");
    let err = try_export(weights, &out).unwrap_err().to_string();
    for e in expect {
        assert!(err.contains(e), "error should mention '{e}':\n{err}");
    }
    assert!(err.contains(&weights.display().to_string()), "error should name the file:\n{err}");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(weights.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx" || e == "part"))
        .collect();
    assert!(leftovers.is_empty(), "failed export left files behind: {leftovers:?}");
    err
}

#[test]
fn missing_unexpected_and_misshapen_keys_are_all_listed() {
    let dir = scratch("exporter-errors-keys");
    let path = dir.join("edited.safetensors");
    write_weights(&path, |w| {
        w.remove("features.2.1.block.0.1.running_var");
        w.remove("classifier.1.bias");
        w.insert("extra.head.weight".into(), (vec![1], vec![0; 4]));
        let (shape, bytes) = w.get_mut("features.0.0.weight").unwrap();
        *shape = vec![16, 3, 3, 3]; // an RGB stem: the seed's model has one channel
        bytes.resize(16 * 27 * 4, 0);
    });
    let err = assert_fails_cleanly(
        &path,
        &[
            "2 missing keys",
            "features.2.1.block.0.1.running_var",
            "classifier.1.bias",
            "1 unexpected keys: extra.head.weight",
            "wrong shape for features.0.0.weight: expected [16, 1, 3, 3], found [16, 3, 3, 3]",
        ],
    );
    eprintln!("{err}");
}

#[test]
fn wrong_architecture_is_a_mismatch_not_a_crash() {
    let dir = scratch("exporter-errors-arch");
    let path = dir.join("tiny.safetensors");
    write_weights(&path, |_| {});
    let mut options = ExportOptions::new(WeightsSource::File(path.clone()), dir.join("s.onnx"));
    options.arch = ArchConfig::builtin("efficientnet_v2_s").unwrap();
    let err = export(&options).unwrap_err().to_string();
    assert!(err.contains("missing keys") && err.contains("wrong shape"), "{err}");
    assert!(!dir.join("s.onnx").exists());
}

#[test]
fn garbage_truncated_and_non_weight_files_are_refused() {
    let dir = scratch("exporter-errors-files");
    let garbage = dir.join("garbage.pt");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    assert_fails_cleanly(&garbage, &["not a PyTorch checkpoint"]);

    let good = dir.join("good.safetensors");
    write_weights(&good, |_| {});
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_cleanly(&truncated, &[]);
    std::fs::remove_file(&good).unwrap();

    let zip = dir.join("truncated.pt");
    std::fs::write(&zip, b"PK\x03\x04\x14\x00\x00\x00\x00\x00").unwrap();
    assert_fails_cleanly(&zip, &["truncated or corrupt"]);

    let missing = dir.join("does-not-exist.pt");
    let err = try_export(&missing, &dir.join("x.onnx")).unwrap_err().to_string();
    assert!(err.contains("does-not-exist.pt"), "{err}");
}

#[test]
fn truncated_torch_checkpoint_is_refused() {
    if skip_without_shared() {
        return;
    }
    // A real torch.save file, cut short: the zip directory is gone.
    let dir = scratch("exporter-errors-torch");
    let xray = nih_images()[2].clone();
    run_python(
        "make_export_reference.py",
        &["--arch", "efficientnet_v2_tiny", "--xray", xray.to_str().unwrap(), "--out", dir.to_str().unwrap()],
    );
    let bytes = std::fs::read(dir.join("weights.pt")).unwrap();
    let cut = dir.join("cut").join("weights.pt");
    std::fs::create_dir_all(cut.parent().unwrap()).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    assert_fails_cleanly(&cut, &["truncated or corrupt"]);
}

//! The tch model against PyTorch/torchvision (tests/python/train_parity.py writes the references):
//! same weights → same eval logits (≤ 1e-4); one training step from the same state and batch
//! (dropout and stochastic depth off) → same loss (≤ 1e-4) and same updated parameters and
//! running statistics; our OneCycle schedule = PyTorch's. And: what we save, `medpatch export`
//! reads (the ONNX export of a saved checkpoint gives the tch eval logits).

use medpatch_models::ArchConfig;
use medpatch_train::model::{Backbone, MedicalPatchNet, load_weights};
use medpatch_train::optim::AdamW;
use medpatch_train::schedule::OneCycle;
use medpatch_train::trainer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn python() -> PathBuf {
    let path =
        std::env::var_os("MEDPATCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(path.exists(), "reference Python not found at {}: run scripts/setup.sh first", path.display());
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = repo_root().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn reference(arch: &str, size: u32, batch: u32) -> PathBuf {
    let dir = scratch(&format!("train-parity-{arch}"));
    let out = Command::new(python())
        .arg(repo_root().join("tests/python/train_parity.py"))
        .args([
            "--arch",
            arch,
            "--out",
            dir.to_str().unwrap(),
            "--size",
            &size.to_string(),
            "--batch",
            &batch.to_string(),
        ])
        .output()
        .expect("cannot start the reference Python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "train_parity.py failed:\n{text}");
    eprint!("{text}");
    dir
}

fn read(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

struct Loaded {
    vs: nn::VarStore,
    net: MedicalPatchNet,
}

fn load(arch: &str, dir: &Path, patch: i64) -> Loaded {
    let arch = ArchConfig::builtin(arch).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = MedicalPatchNet { backbone: Backbone::new(&vs.root(), &arch, 14), patch_size: patch };
    let weights = medpatch_weights::load(&dir.join("init.safetensors")).unwrap();
    let report = load_weights(&vs, &weights);
    assert!(report.problems.is_empty(), "{report:?}");
    Loaded { vs, net }
}

fn parity(arch: &str, size: u32, batch: u32) {
    tch::set_num_threads(1);
    let dir = reference(arch, size, batch);
    let inputs = read(&dir.join("inputs.safetensors"));
    let eval = read(&dir.join("eval.safetensors"));
    let (images, targets) = (&inputs["images"], &inputs["targets"]);

    // Eval-mode logits: MedicalPatchNet (patch 64), its patch logits, the whole-image baseline.
    let Loaded { vs, mut net } = load(arch, &dir, 64);
    let image_logits = tch::no_grad(|| net.forward_t(images, false));
    let patch_logits = tch::no_grad(|| net.patch_logits(images, false));
    net.patch_size = size as i64;
    let baseline = tch::no_grad(|| net.forward_t(images, false));
    net.patch_size = 64;
    let d_image = max_abs(&image_logits, &eval["image_logits"]);
    let d_patch = max_abs(&patch_logits, &eval["patch_logits"]);
    let d_base = max_abs(&baseline, &eval["baseline_logits"]);
    eprintln!("{arch} eval: max |Δ logit| image {d_image:.2e}, patches {d_patch:.2e}, baseline-{size} {d_base:.2e}");
    assert!(d_image <= TOLERANCE && d_patch <= TOLERANCE && d_base <= TOLERANCE);

    // One training step (dropout and stochastic depth off), AdamW lr 1e-4 wd 0.01, twice: with
    // our own gradients (the whole pipeline), then with PyTorch's gradients (the optimizer alone).
    drop((vs, net));
    let step = read(&dir.join("step.safetensors"));
    for use_reference_grads in [false, true] {
        let Loaded { vs, mut net } = load(arch, &dir, 64);
        net.backbone.dropout = 0.0;
        net.backbone.stochastic_depth = false;
        let before: BTreeMap<String, Tensor> =
            vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
        let mut opt = AdamW::new(&vs, 1e-4, 0.01);
        let loss = net.forward_t(images, true).binary_cross_entropy_with_logits::<Tensor>(
            targets,
            None,
            None,
            tch::Reduction::Mean,
        );
        let own = opt.gradients(&loss);
        let vars = vs.variables();
        let grad = if use_reference_grads {
            let named: BTreeMap<String, Tensor> = vars
                .keys()
                .filter_map(|name| step.get(&format!("grad.{name}")).map(|g| (name.clone(), g.shallow_clone())))
                .collect();
            opt.flat_from_named(&named)
        } else {
            let d_loss = (loss.double_value(&[]) - step["loss"].double_value(&[])).abs();
            let (mut d_grad, mut g_max) = (0f64, 0f64);
            for (name, var) in &vars {
                if var.requires_grad() {
                    let reference = &step[&format!("grad.{name}")];
                    d_grad = d_grad.max(max_abs(&opt.slice_of(&own, name).unwrap(), reference));
                    g_max = g_max.max(reference.abs().max().double_value(&[]));
                }
            }
            eprintln!(
                "{arch} train step: loss {:.6}, |Δ loss| {d_loss:.2e}; gradients max |Δ| {d_grad:.2e} (largest gradient {g_max:.2e})",
                loss.double_value(&[])
            );
            assert!(d_loss <= TOLERANCE, "loss differs by {d_loss}");
            assert!(d_grad <= 1e-4 * g_max, "gradients differ by {d_grad} (largest {g_max})");
            own
        };
        opt.step(&grad);
        // Parameters: compare the updates. Where a gradient is within ~100·eps of zero, Adam's
        // first step (lr·g/(|g| + eps)) turns float32 noise in g into visible update noise, so
        // the pipeline check counts those elements separately; the optimizer-alone check covers all.
        let (mut d_update, mut d_update_small_g, mut d_stats, mut max_update, mut small) =
            (0f64, 0f64, 0f64, 0f64, 0i64);
        for (name, var) in &vars {
            let reference = &step[name];
            if name.contains("running_") {
                d_stats = d_stats.max(max_abs(var, reference));
                continue;
            }
            let ours = var - &before[name];
            let theirs = reference - &before[name];
            max_update = max_update.max(ours.abs().max().double_value(&[]));
            let diff = (ours - theirs).abs().to_kind(Kind::Double);
            let g = step[&format!("grad.{name}")].abs();
            let small_g = g.lt(1e-6);
            small += small_g.sum(Kind::Int64).int64_value(&[]);
            d_update =
                d_update.max(diff.where_self(&small_g.logical_not(), &diff.zeros_like()).max().double_value(&[]));
            d_update_small_g =
                d_update_small_g.max(diff.where_self(&small_g, &diff.zeros_like()).max().double_value(&[]));
        }
        if use_reference_grads {
            let all = d_update.max(d_update_small_g);
            eprintln!(
                "{arch} AdamW alone (PyTorch's gradients): updates max |Δ| {all:.2e} over all parameters (lr 1e-4, largest update {max_update:.2e})"
            );
            // float32 rounding of the parameters themselves: ≤ 2 ulp of values below 1.
            assert!(all <= 1.2e-7, "AdamW updates differ by {all}");
        } else {
            eprintln!(
                "{arch} whole step (own gradients): updates max |Δ| {d_update:.2e} where |g| ≥ 1e-6; {d_update_small_g:.2e} over the {small} elements with |g| < 1e-6; \
                 running stats max |Δ| {d_stats:.2e}; largest update {max_update:.2e}"
            );
            assert!(d_update <= 1e-6, "parameter updates differ by {d_update}");
            assert!(d_stats <= TOLERANCE, "running statistics differ by {d_stats}");
            assert!(max_update > 5e-5, "the step did not move the parameters");
        }
    }

    // OneCycle: our schedule against PyTorch's.
    let schedules: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("onecycle.json")).unwrap()).unwrap();
    for (total, s) in schedules.as_object().unwrap() {
        let ours = OneCycle::new(1e-4, total.parse().unwrap(), 0.05);
        for (i, (lr, beta)) in s["lr"].as_array().unwrap().iter().zip(s["beta1"].as_array().unwrap()).enumerate() {
            let (l, b) = ours.at(i as u64);
            assert!(
                (l - lr.as_f64().unwrap()).abs() <= 1e-12 * lr.as_f64().unwrap().max(1e-12) + 1e-18,
                "total {total} step {i}: lr {l} vs {lr}"
            );
            assert!((b - beta.as_f64().unwrap()).abs() <= 1e-12, "total {total} step {i}: beta1 {b} vs {beta}");
        }
    }
}

#[test]
fn tiny_matches_torchvision() {
    parity("efficientnet_v2_tiny", 128, 3);
}

#[test]
fn efficientnet_v2_s_matches_torchvision() {
    parity("efficientnet_v2_s", 128, 2);
}

/// What `save_weights` writes, the exporter reads; the exported ONNX (run in tract) gives the
/// tch eval patch logits; `load_exact` reads it back bit for bit.
#[test]
fn checkpoint_exports_and_reloads() {
    tch::set_num_threads(1);
    let dir = scratch("train-checkpoint-export");
    let arch = ArchConfig::builtin("efficientnet_v2_tiny").unwrap();
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = trainer::build_model(&vs, &arch, 64);
    // Non-trivial BN statistics: a few training-mode forwards.
    let x = Tensor::rand([2, 1, 128, 128], (Kind::Float, Device::Cpu));
    for _ in 0..3 {
        let _ = tch::no_grad(|| net.forward_t(&x, true));
    }
    let path = dir.join("ckpt.safetensors");
    trainer::save_weights(&vs, &path, 3).unwrap();
    let names: Vec<String> = Tensor::read_safetensors(&path).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(
        names.contains(&"features.0.0.weight".to_string())
            && names.contains(&"features.0.1.num_batches_tracked".to_string())
    );

    let vs2 = nn::VarStore::new(Device::Cpu);
    let net2 = trainer::build_model(&vs2, &arch, 64);
    trainer::load_exact(&vs2, &path).unwrap();
    let (a, b) = tch::no_grad(|| (net.patch_logits(&x, false), net2.patch_logits(&x, false)));
    assert_eq!(max_abs(&a, &b), 0.0);

    // torchvision reads it with load_state_dict(strict=True) and computes the same logits.
    let patches = MedicalPatchNet::tile(&x, 64);
    Tensor::write_safetensors(&[("patches", &patches)], dir.join("patches.safetensors")).unwrap();
    let out = Command::new(python())
        .arg(repo_root().join("tests/python/train_load_checkpoint.py"))
        .args(["--arch", "efficientnet_v2_tiny", "--weights", path.to_str().unwrap()])
        .args([
            "--inputs",
            dir.join("patches.safetensors").to_str().unwrap(),
            "--out",
            dir.join("torch_logits.safetensors").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "train_load_checkpoint.py failed:\n{text}");
    let torch_logits = &read(&dir.join("torch_logits.safetensors"))["logits"];
    let d_torch = max_abs(torch_logits, &a.reshape([-1, 14]));
    eprint!("{text}");
    eprintln!("checkpoint in torchvision (strict load) vs tch: patch logits max |Δ| {d_torch:.2e}");
    assert!(d_torch <= TOLERANCE);

    let mut options = medpatch_exporter::ExportOptions::new(
        medpatch_exporter::WeightsSource::File(path.clone()),
        dir.join("model.onnx"),
    );
    options.arch = arch.clone();
    let report = medpatch_exporter::export(&options).unwrap();
    assert_eq!(report.metadata.patch_size, 64);
    let model = medpatch_engine::Model::from_path(&dir.join("model.onnx")).unwrap();
    let backend = medpatch_engine::backend::select(
        &model,
        medpatch_engine::ProviderChoice::Only(medpatch_engine::Provider::Tract),
        &medpatch_engine::BackendOptions::default(),
    )
    .unwrap()
    .backend;
    let flat: Vec<f32> = Vec::try_from(patches.flatten(0, -1)).unwrap();
    let onnx = backend.run(&flat, 8).unwrap();
    let tch_logits: Vec<f32> = Vec::try_from(a.flatten(0, -1)).unwrap();
    let d = onnx.iter().zip(&tch_logits).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    eprintln!("exported checkpoint: tract vs tch patch logits max |Δ| {d:.2e}");
    assert!(d <= 1e-4, "{d}");
}

/// `--init` with a torchvision ImageNet-style state dict (.pth, 3-channel stem, 1000 classes):
/// everything loads except the stem conv and `classifier.1`, which keep their fresh
/// initialisation, as the seed replaces exactly those two modules.
#[test]
fn imagenet_init_replaces_stem_and_head() {
    let dir = scratch("train-imagenet-init");
    let pth = dir.join("imagenet_like.pth");
    let out = Command::new(python())
        .arg(repo_root().join("tests/python/train_imagenet_like.py"))
        .args(["--arch", "efficientnet_v2_tiny", "--out", pth.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let arch = ArchConfig::builtin("efficientnet_v2_tiny").unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = trainer::build_model(&vs, &arch, 64);
    let stem_before = vs.variables()["features.0.0.weight"].copy();
    let message = trainer::load_imagenet(&vs, &pth).unwrap();
    eprintln!("{message}");
    assert!(message.contains("features.0.0.weight") && message.contains("classifier.1.weight"), "{message}");
    let vars = vs.variables();
    assert_eq!(vars["features.0.0.weight"].size(), vec![16, 1, 3, 3]);
    assert_eq!(max_abs(&vars["features.0.0.weight"], &stem_before), 0.0, "the stem keeps its fresh init");
    assert_eq!(vars["classifier.1.weight"].size(), vec![14, 256]);
    let file = medpatch_weights::load(&pth).unwrap();
    let t = &file.tensors["features.4.0.block.2.fc1.weight"];
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    assert_eq!(max_abs(&vars["features.4.0.block.2.fc1.weight"], &Tensor::from_slice(&t.data).reshape(&shape)), 0.0);
    // A file of another architecture is refused.
    let vs_s = nn::VarStore::new(Device::Cpu);
    let _ = trainer::build_model(&vs_s, &ArchConfig::builtin("efficientnet_v2_s").unwrap(), 64);
    assert!(trainer::load_imagenet(&vs_s, &pth).is_err());
}

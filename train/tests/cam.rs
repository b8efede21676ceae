//! Grad-CAM, Grad-CAM++ and Eigen-CAM (`medpatch_train::cam`) against pytorch-grad-cam itself
//! (the pinned `grad-cam` package; tests/python/cam_reference.py) on the same weights and
//! images: every class's map, after each method's own normalisation, within 1e-4.

use medpatch_models::ArchConfig;
use medpatch_testkit::{run_python, scratch};
use medpatch_train::cam::{CamMethod, class_activation_maps};
use medpatch_train::model::{Backbone, MedicalPatchNet, load_weights};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor, nn};

const TOLERANCE: f64 = 1e-4;
const SIZE: i64 = 256;

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn read(path: &std::path::Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

fn tiny(patch_size: i64, vs: &nn::VarStore) -> MedicalPatchNet {
    let arch = ArchConfig::builtin("efficientnet_v2_tiny").unwrap();
    MedicalPatchNet { backbone: Backbone::new(&vs.root(), &arch, 14), patch_size }
}

#[test]
fn grad_cam_family_matches_pytorch_grad_cam() {
    tch::set_num_threads(1);
    let dir = scratch("cam-parity");
    let text = run_python("cam_reference.py", &["--out", dir.to_str().unwrap(), "--size", &SIZE.to_string()]);
    eprint!("{text}");
    let images = read(&dir.join("inputs.safetensors")).remove("images").unwrap();
    let reference = read(&dir.join("maps.safetensors"));

    let vs = nn::VarStore::new(Device::Cpu);
    let net = tiny(SIZE, &vs);
    let report = load_weights(&vs, &medpatch_weights::load(&dir.join("init.safetensors")).unwrap());
    assert!(report.problems.is_empty(), "{report:?}");
    let classes: Vec<i64> = (0..14).collect();
    for method in CamMethod::ALL {
        let ours = class_activation_maps(&net, &images, method, &classes).unwrap();
        let theirs = &reference[method.slug()];
        let d = max_abs(&ours, theirs);
        let spread = theirs.std(false).double_value(&[]);
        eprintln!("{}: max |Δ| {d:.2e} over {:?} (reference map std {spread:.3})", method.title(), ours.size());
        assert!(spread > 0.05, "{}: the reference maps are nearly constant: a weak test", method.title());
        if method == CamMethod::EigenCam && d > TOLERANCE {
            let flipped = max_abs(&ours, &reference["eigencam_flipped"]);
            panic!(
                "Eigen-CAM differs by {d:.2e}; against the opposite SVD sign by {flipped:.2e}: \
                 libtorch's and numpy's LAPACK chose different signs on this machine"
            );
        }
        assert!(d <= TOLERANCE, "{}: max |Δ| {d:.2e} > {TOLERANCE:e}", method.title());
    }
}

#[test]
fn patch_models_are_refused_with_the_reason() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = tiny(64, &vs);
    let images = Tensor::zeros([1, 1, 128, 128], (Kind::Float, Device::Cpu));
    let err = class_activation_maps(&net, &images, CamMethod::GradCam, &[0]).unwrap_err().to_string();
    assert!(err.contains("whole-image model") && err.contains("64-pixel patches"), "{err}");
}

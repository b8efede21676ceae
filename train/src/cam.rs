//! Grad-CAM, Grad-CAM++ and Eigen-CAM: the paper's post-hoc saliency baselines, for the
//! whole-image EfficientNetV2 (trained with `--patch-size` = image size), computed the way
//! pytorch-grad-cam 1.5.7 computes them (the seed's evaluation uses that package), so that
//! `medpatch evaluate --maps-dir` scores them exactly like MedicalPatchNet's own maps.
//!
//! Per image and class `c` (pytorch-grad-cam's `ClassifierOutputTarget(c)`), with `A` the
//! activations of `features[-1]` (`[C, h, w]`, the seed's target layer) and `G = ∂logit_c / ∂A`:
//! * **Grad-CAM**: channel weights `w_k = mean_ij G_kij`; map `Σ_k w_k A_k`.
//! * **Grad-CAM++**: `α = G² / (2G² + (Σ_ij A_k)·G³ + 1e-6)`, 0 where `G = 0`;
//!   `w_k = Σ_ij relu(G_kij)·α_kij`; map `Σ_k w_k A_k`.
//! * **Eigen-CAM** (ignores the class): the `(h·w) × C` activations with their column means
//!   removed, projected on their first right singular vector.
//!
//! Then, as pytorch-grad-cam's `BaseCAM`: ReLU; per-image min-max `(m − min) / (1e-7 + max)`;
//! bilinear resize to the input (half-pixel centres, OpenCV's `INTER_LINEAR`); ReLU and min-max
//! once more (its aggregation over target layers, here one).
//!
//! Eigen-CAM's sign is the SVD's, which is arbitrary: pytorch-grad-cam keeps whatever LAPACK
//! returns (so its maps can come out inverted). Here the sign is fixed the same way LAPACK's
//! `gesdd` fixes it in libtorch; `tests/cam.rs` checks that this matches the package on its
//! machine and says which sign it found.

use crate::model::MedicalPatchNet;
use anyhow::{Result, ensure};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CamMethod {
    #[value(name = "gradcam")]
    GradCam,
    #[value(name = "gradcam++")]
    GradCamPlusPlus,
    #[value(name = "eigencam")]
    EigenCam,
}

impl CamMethod {
    pub const ALL: [CamMethod; 3] = [CamMethod::GradCam, CamMethod::GradCamPlusPlus, CamMethod::EigenCam];

    /// A file-system friendly name (`gradcam`, `gradcampp`, `eigencam`).
    pub fn slug(self) -> &'static str {
        match self {
            CamMethod::GradCam => "gradcam",
            CamMethod::GradCamPlusPlus => "gradcampp",
            CamMethod::EigenCam => "eigencam",
        }
    }

    /// The name papers use.
    pub fn title(self) -> &'static str {
        match self {
            CamMethod::GradCam => "Grad-CAM",
            CamMethod::GradCamPlusPlus => "Grad-CAM++",
            CamMethod::EigenCam => "Eigen-CAM",
        }
    }
}

/// Saliency maps `[B, classes.len(), H, W]` in `[0, 1]` for `images` `[B, 1, H, W]` (eval mode),
/// one per requested class index.
pub fn class_activation_maps(
    net: &MedicalPatchNet,
    images: &Tensor,
    method: CamMethod,
    classes: &[i64],
) -> Result<Tensor> {
    let (_, _, h, w) = images.size4()?;
    ensure!(
        net.patch_size == h && net.patch_size == w,
        "Grad-CAM, Grad-CAM++ and Eigen-CAM need the whole-image model (trained with --patch-size {h}); \
         this checkpoint scores {}-pixel patches, whose saliency is its patch logits",
        net.patch_size
    );
    let activations = tch::no_grad(|| net.backbone.features_t(images, false));
    let raw: Vec<Tensor> = match method {
        CamMethod::EigenCam => {
            let projection = eigen_projection(&activations);
            classes.iter().map(|_| projection.shallow_clone()).collect()
        }
        CamMethod::GradCam | CamMethod::GradCamPlusPlus => {
            let input = activations.detach().set_requires_grad(true);
            let logits = net.backbone.classify_t(&input, false);
            classes
                .iter()
                .map(|&c| {
                    // The images' targets are independent, so one backward of their sum gives
                    // each image its own gradient (as pytorch-grad-cam's summed loss does).
                    let target = logits.select(1, c).sum(Kind::Float);
                    let grads = Tensor::run_backward(&[target], &[&input], true, false).remove(0);
                    let weights = if method == CamMethod::GradCam {
                        grads.mean_dim(&[2i64, 3][..], false, Kind::Float)
                    } else {
                        plusplus_weights(&activations, &grads)
                    };
                    (weights.unsqueeze(-1).unsqueeze(-1) * &activations).sum_dim_intlist(
                        &[1i64][..],
                        false,
                        Kind::Float,
                    )
                })
                .collect()
        }
    };
    let maps: Vec<Tensor> = raw
        .iter()
        .map(|cam| {
            let scaled =
                min_max(&cam.relu()).unsqueeze(1).upsample_bilinear2d([h, w], false, None, None).squeeze_dim(1);
            min_max(&scaled.relu())
        })
        .collect();
    Ok(Tensor::stack(&maps, 1))
}

/// Grad-CAM++ channel weights `[B, C]` (Chattopadhay et al., eq. 19, with the ReLU of eq. 7).
fn plusplus_weights(activations: &Tensor, grads: &Tensor) -> Tensor {
    let g2 = grads * grads;
    let g3 = &g2 * grads;
    let sum_activations = activations.sum_dim_intlist(&[2i64, 3][..], true, Kind::Float);
    let alpha = &g2 / (&g2 * 2.0 + sum_activations * &g3 + 1e-6);
    let alpha = alpha.where_self(&grads.ne(0.0), &alpha.zeros_like());
    (grads.relu() * alpha).sum_dim_intlist(&[2i64, 3][..], false, Kind::Float)
}

/// Eigen-CAM's projection `[B, h, w]`: per image, the centred `(h·w) × C` activations times their
/// first right singular vector.
fn eigen_projection(activations: &Tensor) -> Tensor {
    let (b, c, h, w) = activations.size4().expect("activations are [B, C, h, w]");
    let projections: Vec<Tensor> = (0..b)
        .map(|i| {
            let a = activations.get(i).nan_to_num(0.0, None, None).reshape([c, h * w]).transpose(0, 1);
            let centred = &a - a.mean_dim(&[0i64][..], true, Kind::Float);
            // torch.svd = linalg.svd(full_matrices=False) with V instead of Vᴴ: its first column is
            // numpy's `VT[0, :]`.
            let (_, _, v) = centred.svd(true, true);
            centred.matmul(&v.select(1, 0)).reshape([h, w])
        })
        .collect();
    Tensor::stack(&projections, 0)
}

/// pytorch-grad-cam's `scale_cam_image` normalisation, per image of `[B, h, w]`.
fn min_max(maps: &Tensor) -> Tensor {
    let shifted = maps - maps.amin([1, 2], true);
    &shifted / (shifted.amax([1, 2], true) + 1e-7)
}

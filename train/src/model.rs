//! MedicalPatchNet in libtorch (tch): torchvision's EfficientNetV2 with the seed's 1-channel stem
//! and N-class head, built from the architecture's layer list ([`ArchConfig::stem`],
//! [`medpatch_models::BlockSpec::layers`], [`ArchConfig::head`]) — the same list the ONNX exporter
//! builds from — and with torchvision's module names, so that
//!
//! * a torchvision `efficientnet_v2_s` state dict (or the published MedicalPatchNet checkpoint,
//!   prefixes stripped) loads one to one ([`load_weights`]), and
//! * what we save (`features.0.0.weight`, `features.4.0.block.2.fc1.weight`, `classifier.1.bias`,
//!   …) is read by `medpatch export` unchanged.
//!
//! Residual blocks add their input back after stochastic depth (torchvision's "row" mode: one
//! Bernoulli(1 − p) draw per sample, scaled by 1/(1 − p), training only). Batch norm: eps from the
//! config (1e-3), momentum 0.1 in torch's convention (running = 0.9·running + 0.1·batch).

use medpatch_models::{ArchConfig, LayerSpec, WeightProblems};
use medpatch_weights::Weights;
use std::collections::{BTreeMap, BTreeSet};
use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

/// torchvision `Conv2dNormActivation`: conv (no bias) at `{module}.0`, batch norm at `{module}.1`,
/// SiLU unless it is a projection.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    silu: bool,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        module: nn::Path,
        cin: i64,
        cout: i64,
        kernel: i64,
        stride: i64,
        groups: i64,
        silu: bool,
        arch: &ArchConfig,
    ) -> Self {
        let conv = nn::conv2d(
            &module / "0",
            cin,
            cout,
            kernel,
            nn::ConvConfig {
                stride,
                padding: (kernel - 1) / 2,
                groups,
                bias: false,
                ws_init: KAIMING_FAN_OUT,
                ..Default::default()
            },
        );
        let bn = nn::batch_norm2d(
            &module / "1",
            cout,
            nn::BatchNormConfig {
                eps: arch.bn_eps as f64,
                momentum: arch.bn_momentum as f64,
                ws_init: Init::Const(1.0),
                bs_init: Init::Const(0.0),
                ..Default::default()
            },
        );
        Self { conv, bn, silu }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.apply(&self.conv).apply_t(&self.bn, train);
        if self.silu { y.silu() } else { y }
    }
}

/// torchvision `SqueezeExcitation`: x · σ(fc2(SiLU(fc1(avgpool(x))))), fc1/fc2 1×1 convs with bias.
#[derive(Debug)]
struct SqueezeExcitation {
    fc1: nn::Conv2D,
    fc2: nn::Conv2D,
}

impl SqueezeExcitation {
    fn new(module: nn::Path, channels: i64, squeeze: i64) -> Self {
        let config = nn::ConvConfig { ws_init: KAIMING_FAN_OUT, bs_init: Init::Const(0.0), ..Default::default() };
        Self {
            fc1: nn::conv2d(&module / "fc1", channels, squeeze, 1, config),
            fc2: nn::conv2d(&module / "fc2", squeeze, channels, 1, config),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let scale = x.adaptive_avg_pool2d([1, 1]).apply(&self.fc1).silu().apply(&self.fc2).sigmoid();
        x * scale
    }
}

#[derive(Debug)]
enum Layer {
    ConvBn(ConvBn),
    Se(SqueezeExcitation),
}

impl Layer {
    /// The tch module for one entry of the architecture's layer list, under its torchvision name
    /// (`features.4.0.block.1` → `vs / "features" / "4" / "0" / "block" / "1"`).
    fn new(vs: &nn::Path, spec: &LayerSpec, arch: &ArchConfig) -> Self {
        let module = spec.module().split('.').fold(vs.clone(), |path, part| path / part);
        match *spec {
            LayerSpec::ConvBn { in_channels, out_channels, kernel, stride, groups, silu, .. } => {
                let [i, o, k, s, g] = [in_channels, out_channels, kernel, stride, groups].map(i64::from);
                Layer::ConvBn(ConvBn::new(module, i, o, k, s, g, silu, arch))
            }
            LayerSpec::SqueezeExcitation { channels, squeeze, .. } => {
                Layer::Se(SqueezeExcitation::new(module, channels as i64, squeeze as i64))
            }
        }
    }
}

impl ConvBn {
    /// The stem or head conv of the layer list.
    fn from_spec(vs: &nn::Path, spec: &LayerSpec, arch: &ArchConfig) -> Self {
        match Layer::new(vs, spec, arch) {
            Layer::ConvBn(conv) => conv,
            Layer::Se(_) => unreachable!("the stem and the head are convolutions"),
        }
    }
}

/// One `features.{stage}.{index}` block (FusedMBConv or MBConv): its `block.*` layers in order.
#[derive(Debug)]
struct Block {
    layers: Vec<Layer>,
    residual: bool,
    stochastic_depth: f64,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool, stochastic_depth: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for layer in &self.layers {
            y = match layer {
                Layer::ConvBn(c) => c.forward_t(&y, train),
                Layer::Se(se) => se.forward(&y),
            };
        }
        if !self.residual {
            return y;
        }
        let p = self.stochastic_depth;
        if train && stochastic_depth && p > 0.0 {
            // torchvision.ops.stochastic_depth(mode="row"): keep each sample with probability 1 − p.
            let survival = 1.0 - p;
            let size = y.size();
            let mut shape = vec![size[0]];
            shape.extend(std::iter::repeat_n(1, size.len() - 1));
            let noise = Tensor::empty(&shape, (y.kind(), y.device())).bernoulli_float_(survival);
            y *= noise / survival;
        }
        y + x
    }
}

/// torchvision `kaiming_normal_(mode="fan_out")` (ReLU gain) for convolutions.
const KAIMING_FAN_OUT: Init = Init::Kaiming {
    dist: nn::init::NormalOrUniform::Normal,
    fan: nn::init::FanInOut::FanOut,
    non_linearity: nn::init::NonLinearity::ReLU,
};

/// The patch backbone: torchvision `EfficientNet` with the seed's stem and head.
#[derive(Debug)]
pub struct Backbone {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: ConvBn,
    classifier: nn::Linear,
    pub num_classes: i64,
    /// `classifier.0` dropout probability during training (torchvision: the config's 0.2).
    pub dropout: f64,
    /// Whether stochastic depth is applied during training (its per-block rates come from the config).
    pub stochastic_depth: bool,
}

impl Backbone {
    /// Variables are created under `vs` with torchvision's names. Initialisation is the seed's
    /// from-scratch one: torchvision's (conv Kaiming-normal fan-out, BN 1/0, linear uniform
    /// ±1/√out) except the two modules the seed replaces after building torchvision's model — the
    /// stem conv and `classifier.1` — which keep PyTorch's default `Conv2d`/`Linear` init
    /// (uniform ±1/√fan_in, bias too for the linear).
    pub fn new(vs: &nn::Path, arch: &ArchConfig, num_classes: i64) -> Self {
        let cin = arch.in_channels as i64;
        let mut stem = ConvBn::from_spec(vs, &arch.stem(), arch);
        // The seed's `nn.Conv2d(1, 24, 3, 2, 1, bias=False)`: kaiming_uniform(a=√5) = U(±1/√fan_in).
        tch::no_grad(|| {
            let bound = 1.0 / ((cin * 9) as f64).sqrt();
            let _ = stem.conv.ws.uniform_(-bound, bound);
        });

        let mut blocks = Vec::new();
        for spec in arch.blocks() {
            let layers = spec.layers().iter().map(|layer| Layer::new(vs, layer, arch)).collect();
            blocks.push(Block { layers, residual: spec.residual, stochastic_depth: spec.stochastic_depth as f64 });
        }
        let head_ch = arch.head_channels as i64;
        let head = ConvBn::from_spec(vs, &arch.head(), arch);
        // The seed's `nn.Linear(1280, 14)`: weight and bias U(±1/√in).
        let bound = 1.0 / (head_ch as f64).sqrt();
        let classifier = nn::linear(
            vs / "classifier" / "1",
            head_ch,
            num_classes,
            nn::LinearConfig {
                ws_init: Init::Uniform { lo: -bound, up: bound },
                bs_init: Some(Init::Uniform { lo: -bound, up: bound }),
                bias: true,
            },
        );
        Self { stem, blocks, head, classifier, num_classes, dropout: arch.dropout as f64, stochastic_depth: true }
    }

    /// Turn dropout and stochastic depth off (for exact comparisons of training steps).
    pub fn without_regularization(mut self) -> Self {
        self.dropout = 0.0;
        self.stochastic_depth = false;
        self
    }
}

impl Backbone {
    /// torchvision's `features` (stem, blocks, head conv): `[N, in, P, P]` → `[N, head, P/32, P/32]`,
    /// the activations of `features[-1]`, the layer the seed's Grad-CAM baselines look at.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.stem.forward_t(x, train);
        for block in &self.blocks {
            y = block.forward_t(&y, train, self.stochastic_depth);
        }
        self.head.forward_t(&y, train)
    }

    /// torchvision's `avgpool` and `classifier` on the features: `[N, head, h, w]` → `[N, classes]`.
    pub fn classify_t(&self, features: &Tensor, train: bool) -> Tensor {
        let y = features.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        y.dropout(self.dropout, train).apply(&self.classifier)
    }
}

impl ModuleT for Backbone {
    /// `[N, in, P, P]` patches → `[N, classes]` logits.
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.classify_t(&self.features_t(x, train), train)
    }
}

/// MedicalPatchNet: tile the image into non-overlapping `patch_size` patches (row-major, exactly
/// as `unfold(2, p, p).unfold(3, p, p)`), run the backbone on all patches of the batch in one
/// call, average the patch logits. `patch_size` = image size gives the EfficientNetV2-S baseline.
#[derive(Debug)]
pub struct MedicalPatchNet {
    pub backbone: Backbone,
    pub patch_size: i64,
}

impl MedicalPatchNet {
    /// `[B, C, H, W]` → `[B·rows·cols, C, p, p]`, patch index = row·cols + col.
    pub fn tile(x: &Tensor, p: i64) -> Tensor {
        let (b, c, h, w) = x.size4().expect("images must be [B, C, H, W]");
        assert!(h % p == 0 && w % p == 0, "image {h}×{w} is not a multiple of the patch size {p}");
        let (rows, cols) = (h / p, w / p);
        x.reshape([b, c, rows, p, cols, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b * rows * cols, c, p, p])
    }

    /// `[B, C, H, W]` → `[B, patches, classes]` per-patch logits (the raw saliency).
    pub fn patch_logits(&self, x: &Tensor, train: bool) -> Tensor {
        let b = x.size()[0];
        let patches = Self::tile(x, self.patch_size);
        self.backbone.forward_t(&patches, train).reshape([b, -1, self.backbone.num_classes])
    }
}

impl ModuleT for MedicalPatchNet {
    /// `[B, C, H, W]` → `[B, classes]`: the mean of the patch logits (sigmoid only outside).
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.patch_logits(x, train).mean_dim(1, false, Kind::Float)
    }
}

/// What [`load_weights`] did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// Model variables the file lacks (they keep their initialisation), tensors the model has no
    /// place for (num_batches_tracked is never listed), and wrong shapes (kept at their
    /// initialisation).
    pub problems: WeightProblems,
}

/// Copy named tensors (torchvision names, prefixes already stripped by the reader) into the
/// variable store. Nothing is loaded into a variable whose shape differs; the caller decides
/// whether a [`LoadReport`] is acceptable (exact for checkpoints; for an ImageNet init the stem
/// and classifier are expected to differ and are replaced, as the seed replaces them).
pub fn load_weights(vs: &nn::VarStore, weights: &Weights) -> LoadReport {
    let mut report = LoadReport::default();
    let vars = vs.variables();
    let mut seen = BTreeSet::new();
    tch::no_grad(|| {
        for (name, tensor) in &weights.tensors {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let Some(var) = vars.get(name) else {
                report.problems.unexpected.push(name.clone());
                continue;
            };
            seen.insert(name.clone());
            let shape: Vec<i64> = tensor.shape.iter().map(|&d| d as i64).collect();
            if var.size() != shape {
                let as_usize = |dims: &[i64]| dims.iter().map(|&d| d as usize).collect();
                report.problems.wrong_shape.push((name.clone(), as_usize(&var.size()), as_usize(&shape)));
                continue;
            }
            let src = Tensor::from_slice(&tensor.data).reshape(&shape).to_device(var.device()).to_kind(var.kind());
            let mut var = var.shallow_clone();
            var.copy_(&src);
            report.loaded += 1;
        }
    });
    let all: BTreeMap<_, _> = vars.into_iter().collect();
    report.problems.missing = all.keys().filter(|k| !seen.contains(*k)).cloned().collect();
    report
}

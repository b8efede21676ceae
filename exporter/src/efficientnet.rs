//! torchvision EfficientNetV2 (any [`ArchConfig`]) → ONNX, inference form: batch norm folded into
//! the preceding convolution, dropout and stochastic depth (identities at inference) removed.
//!
//! Weights are looked up by torchvision's module names. Every problem is collected first (missing
//! keys, wrong shapes, left-over keys) and reported together, so one run tells the user everything.

use crate::onnx::{Attr, GraphBuilder};
pub use medpatch_models::WeightProblems;
use medpatch_models::{ArchConfig, LayerSpec, Rng};
use medpatch_weights::{Tensor, Weights};
use std::collections::BTreeSet;

/// Hands out tensors by name, recording what was asked for and what did not fit.
struct WeightReader<'a> {
    weights: &'a Weights,
    used: BTreeSet<String>,
    problems: WeightProblems,
}

impl<'a> WeightReader<'a> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Tensor {
        self.used.insert(name.to_string());
        match self.weights.tensors.get(name) {
            Some(t) if t.shape == shape => return t.clone(),
            Some(t) => self.problems.wrong_shape.push((name.into(), shape.to_vec(), t.shape.clone())),
            None => self.problems.missing.push(name.into()),
        }
        // Keep building so that every problem is found in one pass; the result is discarded.
        Tensor::new(shape.to_vec(), vec![0.0; shape.iter().product()])
    }

    fn finish(mut self) -> WeightProblems {
        self.problems.unexpected = self
            .weights
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .cloned()
            .collect();
        self.problems
    }
}

struct Builder<'a> {
    graph: GraphBuilder,
    reader: WeightReader<'a>,
    bn_eps: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Activation {
    None,
    Silu,
}

impl Builder<'_> {
    /// torchvision `Conv2dNormActivation` at `module` (`{module}.0` conv without bias, `{module}.1`
    /// batch norm), folded: W' = W·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε), computed in f64.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        module: &str,
        x: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        act: Activation,
    ) -> String {
        let w = self.reader.take(&format!("{module}.0.weight"), &[cout, cin / groups, kernel, kernel]);
        let gamma = self.reader.take(&format!("{module}.1.weight"), &[cout]);
        let beta = self.reader.take(&format!("{module}.1.bias"), &[cout]);
        let mean = self.reader.take(&format!("{module}.1.running_mean"), &[cout]);
        let var = self.reader.take(&format!("{module}.1.running_var"), &[cout]);
        let per_out = w.data.len() / cout;
        let mut weight = Vec::with_capacity(w.data.len());
        let mut bias = Vec::with_capacity(cout);
        for o in 0..cout {
            let scale = gamma.data[o] as f64 / (var.data[o] as f64 + self.bn_eps).sqrt();
            weight.extend(w.data[o * per_out..(o + 1) * per_out].iter().map(|&v| (v as f64 * scale) as f32));
            bias.push((beta.data[o] as f64 - mean.data[o] as f64 * scale) as f32);
        }
        let y = self.conv(module, x, weight, bias, [cout, cin / groups, kernel, kernel], stride, groups);
        match act {
            Activation::Silu => self.silu(module, &y),
            Activation::None => y,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        module: &str,
        x: &str,
        weight: Vec<f32>,
        bias: Vec<f32>,
        dims: [usize; 4],
        stride: usize,
        groups: usize,
    ) -> String {
        let w = self.graph.initializer(&format!("{module}.weight"), &dims, weight);
        let b = self.graph.initializer(&format!("{module}.bias"), &[dims[0]], bias);
        let pad = (dims[2] as i64 - 1) / 2;
        self.graph.node(
            "Conv",
            &format!("{module}.conv"),
            &[x, &w, &b],
            vec![
                ("kernel_shape", Attr::Ints(vec![dims[2] as i64, dims[3] as i64])),
                ("strides", Attr::Ints(vec![stride as i64; 2])),
                ("pads", Attr::Ints(vec![pad; 4])),
                ("group", Attr::Int(groups as i64)),
            ],
        )
    }

    /// SiLU(x) = x·σ(x) (opset 17 has no SiLU op).
    fn silu(&mut self, module: &str, x: &str) -> String {
        let s = self.graph.node("Sigmoid", &format!("{module}.silu.sigmoid"), &[x], vec![]);
        self.graph.node("Mul", &format!("{module}.silu"), &[x, &s], vec![])
    }

    /// torchvision `SqueezeExcitation`: avgpool → fc1 (1×1 conv) → SiLU → fc2 → sigmoid → scale.
    fn squeeze_excitation(&mut self, module: &str, x: &str, channels: usize, squeeze: usize) -> String {
        let pooled = self.graph.node("GlobalAveragePool", &format!("{module}.avgpool"), &[x], vec![]);
        let fc1_w = self.reader.take(&format!("{module}.fc1.weight"), &[squeeze, channels, 1, 1]);
        let fc1_b = self.reader.take(&format!("{module}.fc1.bias"), &[squeeze]);
        let h = self.conv(&format!("{module}.fc1"), &pooled, fc1_w.data, fc1_b.data, [squeeze, channels, 1, 1], 1, 1);
        let h = self.silu(&format!("{module}.fc1"), &h);
        let fc2_w = self.reader.take(&format!("{module}.fc2.weight"), &[channels, squeeze, 1, 1]);
        let fc2_b = self.reader.take(&format!("{module}.fc2.bias"), &[channels]);
        let h = self.conv(&format!("{module}.fc2"), &h, fc2_w.data, fc2_b.data, [channels, squeeze, 1, 1], 1, 1);
        let gate = self.graph.node("Sigmoid", &format!("{module}.scale_activation"), &[&h], vec![]);
        self.graph.node("Mul", &format!("{module}.scale"), &[x, &gate], vec![])
    }
}

/// The graph of the backbone, and how many parameters (after folding) it holds.
pub struct BackboneGraph {
    pub graph: GraphBuilder,
    pub num_classes: usize,
}

impl Builder<'_> {
    /// One layer of the architecture's layer list as ONNX nodes.
    fn layer(&mut self, layer: &LayerSpec, x: &str) -> String {
        match *layer {
            LayerSpec::ConvBn { ref module, in_channels, out_channels, kernel, stride, groups, silu } => {
                let act = if silu { Activation::Silu } else { Activation::None };
                let dims = [in_channels, out_channels, kernel, stride, groups].map(|v| v as usize);
                self.conv_bn(module, x, dims[0], dims[1], dims[2], dims[3], dims[4], act)
            }
            LayerSpec::SqueezeExcitation { ref module, channels, squeeze } => {
                self.squeeze_excitation(module, x, channels as usize, squeeze as usize)
            }
        }
    }
}

/// Build the inference graph `patches [N, in, P, P] → logits [N, C]` from torchvision-named weights.
pub fn build(arch: &ArchConfig, weights: &Weights, input: &str, output: &str) -> Result<BackboneGraph, WeightProblems> {
    let head = arch.head_channels as usize;
    let num_classes = match weights.tensors.get("classifier.1.weight") {
        Some(t) if t.shape.len() == 2 && t.shape[0] > 0 => t.shape[0],
        _ => medpatch_models::CHEXPERT_CLASSES.len(), // reported as missing / wrong shape below
    };
    let mut b = Builder {
        graph: GraphBuilder::default(),
        reader: WeightReader { weights, used: BTreeSet::new(), problems: WeightProblems::default() },
        bn_eps: arch.bn_eps as f64,
    };
    let mut x = b.layer(&arch.stem(), input);
    for block in arch.blocks() {
        let block_input = x.clone();
        for layer in block.layers() {
            x = b.layer(&layer, &x);
        }
        if block.residual {
            // Stochastic depth is the identity at inference.
            x = b.graph.node("Add", &format!("{}.residual", block.prefix), &[&x, &block_input], vec![]);
        }
    }
    x = b.layer(&arch.head(), &x);
    let pooled = b.graph.node("GlobalAveragePool", "avgpool", &[&x], vec![]);
    let flat = b.graph.node("Flatten", "flatten", &[&pooled], vec![("axis", Attr::Int(1))]);
    let fc_w = b.reader.take("classifier.1.weight", &[num_classes, head]);
    let fc_b = b.reader.take("classifier.1.bias", &[num_classes]);
    let w = b.graph.initializer("classifier.1.weight", &[num_classes, head], fc_w.data);
    let bias = b.graph.initializer("classifier.1.bias", &[num_classes], fc_b.data);
    // Dropout (classifier.0) is the identity at inference.
    b.graph.node_to("Gemm", "classifier.1", &[&flat, &w, &bias], output, vec![("transB", Attr::Int(1))]);
    let problems = b.reader.finish();
    if problems.is_empty() { Ok(BackboneGraph { graph: b.graph, num_classes }) } else { Err(problems) }
}

/// Reproducible random weights with torchvision's initialisation (conv: Kaiming normal, fan-out;
/// linear: uniform ±1/√out), except that batch-norm parameters and running statistics are drawn at
/// random too, so that a test model's outputs really depend on its input and folding is exercised.
pub fn random_weights(arch: &ArchConfig, num_classes: usize, seed: u64) -> Weights {
    let mut rng = Rng::new(seed);
    let mut tensors = std::collections::BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        tensors.insert(name, Tensor::new(shape, data));
    };
    let kaiming = |rng: &mut Rng, cout: usize, cin: usize, k: usize| -> Vec<f32> {
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        (0..cout * cin * k * k).map(|_| (rng.normal() * std) as f32).collect()
    };
    let layers = std::iter::once(arch.stem())
        .chain(arch.blocks().into_iter().flat_map(|b| b.layers()))
        .chain(std::iter::once(arch.head()));
    for layer in layers {
        match layer {
            LayerSpec::ConvBn { module, in_channels, out_channels, kernel, groups, .. } => {
                let (cout, cin, k) = (out_channels as usize, (in_channels / groups) as usize, kernel as usize);
                put(format!("{module}.0.weight"), vec![cout, cin, k, k], kaiming(&mut rng, cout, cin, k));
                let mut vector =
                    |f: &dyn Fn(&mut Rng) -> f64| (0..cout).map(|_| f(&mut rng) as f32).collect::<Vec<_>>();
                let (gamma, beta) = (vector(&|r| 0.5 + r.f64()), vector(&|r| 0.1 * r.normal()));
                let (mean, var) = (vector(&|r| 0.1 * r.normal()), vector(&|r| 0.5 + r.f64()));
                put(format!("{module}.1.weight"), vec![cout], gamma);
                put(format!("{module}.1.bias"), vec![cout], beta);
                put(format!("{module}.1.running_mean"), vec![cout], mean);
                put(format!("{module}.1.running_var"), vec![cout], var);
            }
            LayerSpec::SqueezeExcitation { module, channels, squeeze } => {
                let (c, s) = (channels as usize, squeeze as usize);
                put(format!("{module}.fc1.weight"), vec![s, c, 1, 1], kaiming(&mut rng, s, c, 1));
                put(format!("{module}.fc1.bias"), vec![s], vec![0.0; s]);
                put(format!("{module}.fc2.weight"), vec![c, s, 1, 1], kaiming(&mut rng, c, s, 1));
                put(format!("{module}.fc2.bias"), vec![c], vec![0.0; c]);
            }
        }
    }
    let head = arch.head_channels as usize;
    let range = 1.0 / (num_classes as f64).sqrt();
    let fc = (0..num_classes * head).map(|_| ((rng.f64() * 2.0 - 1.0) * range) as f32).collect();
    put("classifier.1.weight".into(), vec![num_classes, head], fc);
    put("classifier.1.bias".into(), vec![num_classes], vec![0.0; num_classes]);
    Weights { tensors, source_sha256: String::new(), found_under: None }
}

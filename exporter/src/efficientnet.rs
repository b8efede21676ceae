//! torchvision EfficientNetV2 (any [`ArchConfig`]) → ONNX, inference form: batch norm folded into
//! the preceding convolution, dropout and stochastic depth (identities at inference) removed.
//!
//! Weights are looked up by torchvision's module names. Every problem is collected first (missing
//! keys, wrong shapes, left-over keys) and reported together, so one run tells the user everything.

use crate::onnx::{Attr, GraphBuilder};
use crate::weights::{Tensor, Weights};
use medpatch_models::{ArchConfig, BlockKind};
use std::collections::BTreeSet;

/// Problems found while matching weights to the architecture.
#[derive(Debug, Default, PartialEq)]
pub struct WeightProblems {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (tensor, expected shape, found shape)
    pub wrong_shape: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl WeightProblems {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty()
    }
}

impl std::fmt::Display for WeightProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |f: &mut std::fmt::Formatter<'_>, what: &str, names: &[String]| {
            if names.is_empty() {
                return Ok(());
            }
            const SHOWN: usize = 12;
            write!(
                f,
                "\n  {} {what}: {}",
                names.len(),
                names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ")
            )?;
            if names.len() > SHOWN { write!(f, ", …") } else { Ok(()) }
        };
        write!(f, "the weights do not fit the architecture")?;
        list(f, "missing keys", &self.missing)?;
        list(f, "unexpected keys", &self.unexpected)?;
        for (name, expected, found) in &self.wrong_shape {
            write!(f, "\n  wrong shape for {name}: expected {expected:?}, found {found:?}")?;
        }
        Ok(())
    }
}

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

/// Build the inference graph `patches [N, in, P, P] → logits [N, C]` from torchvision-named weights.
pub fn build(arch: &ArchConfig, weights: &Weights, input: &str, output: &str) -> Result<BackboneGraph, WeightProblems> {
    let head = arch.head_channels as usize;
    let num_classes = match weights.tensors.get("classifier.1.weight") {
        Some(t) if t.shape.len() == 2 && t.shape[0] > 0 => t.shape[0],
        _ => 14, // reported as missing / wrong shape below
    };
    let mut b = Builder {
        graph: GraphBuilder::default(),
        reader: WeightReader { weights, used: BTreeSet::new(), problems: WeightProblems::default() },
        bn_eps: arch.bn_eps as f64,
    };
    let (cin, stem) = (arch.in_channels as usize, arch.stem_channels as usize);
    let mut x = b.conv_bn("features.0", input, cin, stem, 3, 2, 1, Activation::Silu);
    for block in arch.blocks() {
        let (i, e, o, k, s) = (
            block.in_channels as usize,
            block.expanded_channels as usize,
            block.out_channels as usize,
            block.kernel as usize,
            block.stride as usize,
        );
        let mut part = 0;
        let next = |p: &mut usize| {
            let name = format!("{}.block.{}", block.prefix, *p);
            *p += 1;
            name
        };
        let block_input = x.clone();
        match block.kind {
            BlockKind::FusedMbconv if block.expands() => {
                x = b.conv_bn(&next(&mut part), &x, i, e, k, s, 1, Activation::Silu);
                x = b.conv_bn(&next(&mut part), &x, e, o, 1, 1, 1, Activation::None);
            }
            BlockKind::FusedMbconv => {
                x = b.conv_bn(&next(&mut part), &x, i, o, k, s, 1, Activation::Silu);
            }
            BlockKind::Mbconv => {
                if block.expands() {
                    x = b.conv_bn(&next(&mut part), &x, i, e, 1, 1, 1, Activation::Silu);
                }
                x = b.conv_bn(&next(&mut part), &x, e, e, k, s, e, Activation::Silu);
                x = b.squeeze_excitation(&next(&mut part), &x, e, block.se_channels as usize);
                x = b.conv_bn(&next(&mut part), &x, e, o, 1, 1, 1, Activation::None);
            }
        }
        if block.residual {
            // Stochastic depth is the identity at inference.
            x = b.graph.node("Add", &format!("{}.residual", block.prefix), &[&x, &block_input], vec![]);
        }
    }
    let head_module = format!("features.{}", arch.head_feature_index());
    x = b.conv_bn(&head_module, &x, arch.last_stage_channels() as usize, head, 1, 1, 1, Activation::Silu);
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
    let mut rng = SplitMix64(seed);
    let mut tensors = std::collections::BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        tensors.insert(name, Tensor::new(shape, data));
    };
    // (module, out channels, in channels per group, kernel) of every Conv2dNormActivation.
    let mut conv_bns: Vec<(String, usize, usize, usize)> = Vec::new();
    let mut squeeze_excitations: Vec<(String, usize, usize)> = Vec::new();
    conv_bns.push(("features.0".into(), arch.stem_channels as usize, arch.in_channels as usize, 3));
    for block in arch.blocks() {
        let (i, e, o, k) = (
            block.in_channels as usize,
            block.expanded_channels as usize,
            block.out_channels as usize,
            block.kernel as usize,
        );
        let m = |p: usize| format!("{}.block.{p}", block.prefix);
        match block.kind {
            BlockKind::FusedMbconv if block.expands() => {
                conv_bns.push((m(0), e, i, k));
                conv_bns.push((m(1), o, e, 1));
            }
            BlockKind::FusedMbconv => conv_bns.push((m(0), o, i, k)),
            BlockKind::Mbconv => {
                let first = usize::from(block.expands());
                if block.expands() {
                    conv_bns.push((m(0), e, i, 1));
                }
                conv_bns.push((m(first), e, 1, k));
                squeeze_excitations.push((m(first + 1), e, block.se_channels as usize));
                conv_bns.push((m(first + 2), o, e, 1));
            }
        }
    }
    let head = arch.head_channels as usize;
    conv_bns.push((format!("features.{}", arch.head_feature_index()), head, arch.last_stage_channels() as usize, 1));

    let kaiming = |rng: &mut SplitMix64, cout: usize, cin: usize, k: usize| -> Vec<f32> {
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        (0..cout * cin * k * k).map(|_| (rng.normal() * std) as f32).collect()
    };
    for (module, cout, cin, k) in conv_bns {
        put(format!("{module}.0.weight"), vec![cout, cin, k, k], kaiming(&mut rng, cout, cin, k));
        let mut vector = |f: &dyn Fn(&mut SplitMix64) -> f64| (0..cout).map(|_| f(&mut rng) as f32).collect::<Vec<_>>();
        let (gamma, beta) = (vector(&|r| 0.5 + r.uniform()), vector(&|r| 0.1 * r.normal()));
        let (mean, var) = (vector(&|r| 0.1 * r.normal()), vector(&|r| 0.5 + r.uniform()));
        put(format!("{module}.1.weight"), vec![cout], gamma);
        put(format!("{module}.1.bias"), vec![cout], beta);
        put(format!("{module}.1.running_mean"), vec![cout], mean);
        put(format!("{module}.1.running_var"), vec![cout], var);
    }
    for (module, channels, squeeze) in squeeze_excitations {
        put(format!("{module}.fc1.weight"), vec![squeeze, channels, 1, 1], kaiming(&mut rng, squeeze, channels, 1));
        put(format!("{module}.fc1.bias"), vec![squeeze], vec![0.0; squeeze]);
        put(format!("{module}.fc2.weight"), vec![channels, squeeze, 1, 1], kaiming(&mut rng, channels, squeeze, 1));
        put(format!("{module}.fc2.bias"), vec![channels], vec![0.0; channels]);
    }
    let range = 1.0 / (num_classes as f64).sqrt();
    let fc = (0..num_classes * head).map(|_| ((rng.uniform() * 2.0 - 1.0) * range) as f32).collect();
    put("classifier.1.weight".into(), vec![num_classes, head], fc);
    put("classifier.1.bias".into(), vec![num_classes], vec![0.0; num_classes]);
    Weights { tensors, source_sha256: String::new() }
}

/// SplitMix64: tiny, fast and reproducible across platforms; plenty for test weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

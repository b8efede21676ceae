//! torchvision `efficientnet_v2_s` and its smaller variants, described by a JSON config.
//!
//! The config lists the stages exactly as torchvision's `_efficientnet_conf("efficientnet_v2_s")`
//! does; [`ArchConfig::blocks`] expands it into the per-block specs (module names, channel counts,
//! squeeze-excitation sizes, stochastic-depth rates) that the exporter and the trainer both build
//! from, so the two can never disagree about the network.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("unknown architecture '{0}': known are {known}", known = ArchConfig::builtin_names().join(", "))]
    Unknown(String),
    #[error("cannot read architecture config {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid architecture config {origin}: {problem}")]
    Invalid { origin: String, problem: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// torchvision `FusedMBConv`: a full k×k conv (expanding when expand_ratio > 1), then a 1×1 projection.
    FusedMbconv,
    /// torchvision `MBConv`: 1×1 expansion, depthwise k×k, squeeze-excitation, 1×1 projection.
    Mbconv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub block: BlockKind,
    pub expand_ratio: u32,
    pub kernel: u32,
    pub stride: u32,
    pub in_channels: u32,
    pub out_channels: u32,
    pub layers: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub in_channels: u32,
    pub stem_channels: u32,
    pub stages: Vec<StageConfig>,
    pub head_channels: u32,
    pub dropout: f32,
    pub stochastic_depth: f32,
    pub bn_eps: f32,
    pub bn_momentum: f32,
}

/// One block of `features.{stage}.{index}`, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    pub kind: BlockKind,
    /// torchvision module prefix, e.g. `features.4.3`.
    pub prefix: String,
    pub in_channels: u32,
    pub expanded_channels: u32,
    pub out_channels: u32,
    /// Squeeze-excitation bottleneck width (MBConv only): `max(1, in_channels / 4)`.
    pub se_channels: u32,
    pub kernel: u32,
    pub stride: u32,
    /// torchvision adds the input back (through stochastic depth) when shape is preserved.
    pub residual: bool,
    /// Stochastic-depth drop probability of this block during training.
    pub stochastic_depth: f32,
}

const BUILTIN: &[(&str, &str)] = &[
    ("efficientnet_v2_s", include_str!("../arch/efficientnet_v2_s.json")),
    ("efficientnet_v2_tiny", include_str!("../arch/efficientnet_v2_tiny.json")),
];

/// torchvision's `_make_divisible(v, 8)`: round to the nearest multiple of 8, never below 90 %.
fn make_divisible(value: f64, divisor: u32) -> u32 {
    let d = divisor as f64;
    let mut rounded = (((value + d / 2.0) / d).floor() * d).max(d);
    if rounded < 0.9 * value {
        rounded += d;
    }
    rounded as u32
}

impl ArchConfig {
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(name, _)| *name).collect()
    }

    /// A config shipped with medpatch, by name (`efficientnet_v2_s`, `efficientnet_v2_tiny`).
    pub fn builtin(name: &str) -> Result<Self, ArchError> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| ArchError::Unknown(name.to_string()))?;
        Self::from_json(text, name)
    }

    /// A built-in name, or a path to a JSON config file.
    pub fn resolve(name_or_path: &str) -> Result<Self, ArchError> {
        if BUILTIN.iter().any(|(n, _)| *n == name_or_path) {
            return Self::builtin(name_or_path);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "json") || path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ArchError::Io { path: name_or_path.to_string(), source })?;
            return Self::from_json(&text, name_or_path);
        }
        Err(ArchError::Unknown(name_or_path.to_string()))
    }

    pub fn from_json(text: &str, origin: &str) -> Result<Self, ArchError> {
        let config: ArchConfig = serde_json::from_str(text)
            .map_err(|e| ArchError::Invalid { origin: origin.to_string(), problem: e.to_string() })?;
        config.validate().map_err(|problem| ArchError::Invalid { origin: origin.to_string(), problem })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.stages.is_empty() {
            return Err("no stages".into());
        }
        if self.in_channels == 0 || self.stem_channels == 0 || self.head_channels == 0 {
            return Err("channel counts must be positive".into());
        }
        let mut channels = self.stem_channels;
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.in_channels != channels {
                return Err(format!(
                    "stage {i} takes {} channels but the previous stage gives {channels}",
                    stage.in_channels
                ));
            }
            if stage.layers == 0 || stage.expand_ratio == 0 || stage.out_channels == 0 {
                return Err(format!("stage {i}: layers, expand_ratio and out_channels must be positive"));
            }
            if stage.kernel % 2 == 0 || !(1..=2).contains(&stage.stride) {
                return Err(format!("stage {i}: kernel must be odd and stride 1 or 2"));
            }
            channels = stage.out_channels;
        }
        if !(0.0..1.0).contains(&self.dropout) || !(0.0..1.0).contains(&self.stochastic_depth) {
            return Err("dropout and stochastic_depth must be in [0, 1)".into());
        }
        if self.bn_eps.is_nan() || self.bn_eps <= 0.0 {
            return Err("bn_eps must be positive".into());
        }
        Ok(())
    }

    /// Output channels of the last stage (input of the 1×1 head conv `features.{n+1}`).
    pub fn last_stage_channels(&self) -> u32 {
        self.stages.last().map_or(self.stem_channels, |s| s.out_channels)
    }

    /// Index of the head conv in `features` (7 for efficientnet_v2_s).
    pub fn head_feature_index(&self) -> usize {
        self.stages.len() + 1
    }

    /// The stem, `features.0`: 3×3 conv, stride 2, input channels → stem channels, SiLU.
    pub fn stem(&self) -> LayerSpec {
        LayerSpec::ConvBn {
            module: "features.0".into(),
            in_channels: self.in_channels,
            out_channels: self.stem_channels,
            kernel: 3,
            stride: 2,
            groups: 1,
            silu: true,
        }
    }

    /// The head conv, `features.{stages + 1}`: 1×1, last stage channels → head channels, SiLU.
    /// (Then global average pooling, dropout and `classifier.1`, Linear(head → classes).)
    pub fn head(&self) -> LayerSpec {
        LayerSpec::ConvBn {
            module: format!("features.{}", self.head_feature_index()),
            in_channels: self.last_stage_channels(),
            out_channels: self.head_channels,
            kernel: 1,
            stride: 1,
            groups: 1,
            silu: true,
        }
    }

    /// Every block, in order, as torchvision's `EfficientNet.__init__` builds them.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let total: u32 = self.stages.iter().map(|s| s.layers).sum();
        let mut blocks = Vec::with_capacity(total as usize);
        let mut block_id = 0u32;
        for (stage_index, stage) in self.stages.iter().enumerate() {
            for layer in 0..stage.layers {
                let in_channels = if layer == 0 { stage.in_channels } else { stage.out_channels };
                let stride = if layer == 0 { stage.stride } else { 1 };
                blocks.push(BlockSpec {
                    kind: stage.block,
                    prefix: format!("features.{}.{}", stage_index + 1, layer),
                    in_channels,
                    expanded_channels: make_divisible(in_channels as f64 * stage.expand_ratio as f64, 8),
                    out_channels: stage.out_channels,
                    se_channels: (in_channels / 4).max(1),
                    kernel: stage.kernel,
                    stride,
                    residual: stride == 1 && in_channels == stage.out_channels,
                    stochastic_depth: self.stochastic_depth * block_id as f32 / total as f32,
                });
                block_id += 1;
            }
        }
        blocks
    }
}

/// One layer of the network with its torchvision module name: what the exporter turns into ONNX
/// nodes, the trainer into tch modules, and the random initialiser into tensors. The layer list
/// below is the ONLY place the EfficientNetV2 block layout is written down.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    /// torchvision `Conv2dNormActivation` at `module`: conv without bias (`{module}.0`, weight
    /// `[out, in / groups, k, k]`, padding `(k − 1) / 2`), batch norm (`{module}.1`), SiLU if `silu`.
    ConvBn { module: String, in_channels: u32, out_channels: u32, kernel: u32, stride: u32, groups: u32, silu: bool },
    /// torchvision `SqueezeExcitation` at `module`: global average pool, `fc1` (1×1 conv with bias,
    /// channels → squeeze), SiLU, `fc2` (squeeze → channels), sigmoid, scale the input.
    SqueezeExcitation { module: String, channels: u32, squeeze: u32 },
}

impl BlockSpec {
    /// Whether the block has its own expansion conv (torchvision skips it at expand_ratio 1).
    pub fn expands(&self) -> bool {
        self.expanded_channels != self.in_channels
    }

    /// The block's layers in order, named `{prefix}.block.{i}` as in torchvision:
    /// FusedMBConv: k×k conv (+ SiLU), then a 1×1 projection if it expands;
    /// MBConv: 1×1 expansion (if any), depthwise k×k, squeeze-excitation, 1×1 projection.
    /// The residual connection (when [`BlockSpec::residual`]) wraps them all.
    pub fn layers(&self) -> Vec<LayerSpec> {
        let (i, e, o, k, s) = (self.in_channels, self.expanded_channels, self.out_channels, self.kernel, self.stride);
        let conv = |in_channels, out_channels, kernel, stride, groups, silu| LayerSpec::ConvBn {
            module: String::new(),
            in_channels,
            out_channels,
            kernel,
            stride,
            groups,
            silu,
        };
        let mut layers = match self.kind {
            BlockKind::FusedMbconv if self.expands() => vec![conv(i, e, k, s, 1, true), conv(e, o, 1, 1, 1, false)],
            BlockKind::FusedMbconv => vec![conv(i, o, k, s, 1, true)],
            BlockKind::Mbconv => {
                let mut layers = Vec::with_capacity(4);
                if self.expands() {
                    layers.push(conv(i, e, 1, 1, 1, true));
                }
                layers.push(conv(e, e, k, s, e, true));
                layers.push(LayerSpec::SqueezeExcitation {
                    module: String::new(),
                    channels: e,
                    squeeze: self.se_channels,
                });
                layers.push(conv(e, o, 1, 1, 1, false));
                layers
            }
        };
        for (n, layer) in layers.iter_mut().enumerate() {
            let (LayerSpec::ConvBn { module, .. } | LayerSpec::SqueezeExcitation { module, .. }) = layer;
            *module = format!("{}.block.{n}", self.prefix);
        }
        layers
    }
}

impl LayerSpec {
    /// The torchvision module name, e.g. `features.4.0.block.2`.
    pub fn module(&self) -> &str {
        match self {
            LayerSpec::ConvBn { module, .. } | LayerSpec::SqueezeExcitation { module, .. } => module,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_s_matches_torchvision_block_list() {
        let s = ArchConfig::builtin("efficientnet_v2_s").unwrap();
        let blocks = s.blocks();
        assert_eq!(blocks.len(), 40);
        assert_eq!(s.head_feature_index(), 7);
        // features.1.0: FusedMBConv with expand_ratio 1, residual.
        assert_eq!(blocks[0].prefix, "features.1.0");
        assert!(!blocks[0].expands() && blocks[0].residual);
        // features.4.0: first MBConv, 64 -> 256 expanded, SE 16, stride 2, no residual.
        let b = blocks.iter().find(|b| b.prefix == "features.4.0").unwrap();
        assert_eq!((b.expanded_channels, b.se_channels, b.stride, b.residual), (256, 16, 2, false));
        assert_eq!(
            b.layers()
                .iter()
                .map(|l| match l {
                    LayerSpec::ConvBn { module, groups, .. } => format!("{module}/g{groups}"),
                    LayerSpec::SqueezeExcitation { module, squeeze, .. } => format!("{module}/se{squeeze}"),
                })
                .collect::<Vec<_>>(),
            [
                "features.4.0.block.0/g1",
                "features.4.0.block.1/g256",
                "features.4.0.block.2/se16",
                "features.4.0.block.3/g1"
            ]
        );
        assert_eq!(blocks[0].layers().len(), 1, "FusedMBConv without expansion: one conv");
        assert_eq!(blocks[1].layers().len(), 1);
        let fused = blocks.iter().find(|b| b.prefix == "features.2.0").unwrap();
        assert!(matches!(
            &fused.layers()[..],
            [LayerSpec::ConvBn { stride: 2, silu: true, .. }, LayerSpec::ConvBn { kernel: 1, silu: false, .. }]
        ));
        assert_eq!(
            s.head(),
            LayerSpec::ConvBn {
                module: "features.7".into(),
                in_channels: 256,
                out_channels: 1280,
                kernel: 1,
                stride: 1,
                groups: 1,
                silu: true
            }
        );
        let b = blocks.iter().find(|b| b.prefix == "features.6.14").unwrap();
        assert_eq!((b.in_channels, b.expanded_channels, b.se_channels), (256, 1536, 64));
        assert!((b.stochastic_depth - 0.2 * 39.0 / 40.0).abs() < 1e-7);
    }

    #[test]
    fn make_divisible_matches_torchvision() {
        assert_eq!(make_divisible(24.0 * 4.0, 8), 96);
        assert_eq!(make_divisible(10.0, 8), 16); // 8 would be < 90 % of 10
        assert_eq!(make_divisible(3.0, 8), 8);
        assert_eq!(make_divisible(60.0, 8), 64);
    }

    #[test]
    fn rejects_inconsistent_stages() {
        let mut s = ArchConfig::builtin("efficientnet_v2_tiny").unwrap();
        s.stages[2].in_channels += 1;
        let text = serde_json::to_string(&s).unwrap();
        let err = ArchConfig::from_json(&text, "x.json").unwrap_err().to_string();
        assert!(err.contains("stage 2 takes"), "{err}");
        assert!(ArchConfig::resolve("resnet50").unwrap_err().to_string().contains("efficientnet_v2_s"));
    }
}

//! The model's layers by name, and which of them stay in f32 at a reduced precision: int8
//! (`medpatch quantize --keep`) and bf16 (`--keep-f32`).
//!
//! Layers are named as the exporter names its nodes (torchvision's module names, from the one
//! layer list `medpatch_models::arch`): `features.0` (the stem), `features.4.0.block.2` (a
//! squeeze-excitation), `features.4.0.residual`, `features.7` (the head convolution), `avgpool`,
//! `flatten`, `classifier.1`. A node belongs to a layer when its name is the layer's or starts
//! with it and a dot, so naming a block (`features.4.0`) keeps all of it.

use medpatch_models::{ArchConfig, LayerSpec};
use tract_onnx::pb::GraphProto;

/// Names that stand for groups of layers.
pub const PRESETS: [(&str, &str); 5] = [
    ("stem", "the first convolution, which sees the image itself"),
    ("head", "the last 1×1 convolution before pooling"),
    ("classifier", "global average pooling, flatten and the final linear layer"),
    ("se", "every squeeze-excitation module"),
    ("none", "nothing: every supported layer is quantized"),
];

/// The layers kept in f32 when none are named, for int8 and bf16: the stem and the classifier
/// (measured on the demo model: docs/precision.md).
pub const DEFAULT_KEEP: [&str; 2] = ["stem", "classifier"];

/// Is `node` part of layer `layer`?
pub fn belongs(node: &str, layer: &str) -> bool {
    node == layer || node.strip_prefix(layer).is_some_and(|rest| rest.starts_with('.'))
}

/// The layers of a model of `architecture` (a built-in config), in graph order; `None` for an
/// architecture this medpatch does not know (a JSON config exported elsewhere).
pub fn arch_layers(architecture: &str) -> Option<Vec<String>> {
    let arch = ArchConfig::builtin(architecture).ok()?;
    let mut layers = vec![arch.stem().module().to_string()];
    for block in arch.blocks() {
        layers.extend(block.layers().iter().map(|l| l.module().to_string()));
        if block.residual {
            layers.push(format!("{}.residual", block.prefix));
        }
    }
    layers.push(arch.head().module().to_string());
    layers.extend(["avgpool", "flatten", "classifier.1"].map(String::from));
    Some(layers)
}

/// The layers of `graph` when the architecture is unknown: each node's name without its last
/// dotted part (`features.0.conv` → `features.0`), in graph order.
pub fn graph_layers(graph: &GraphProto) -> Vec<String> {
    let mut layers: Vec<String> = Vec::new();
    for n in &graph.node {
        let layer = n.name.rsplit_once('.').map_or(n.name.as_str(), |(head, _)| head).to_string();
        if !layers.contains(&layer) {
            layers.push(layer);
        }
    }
    layers
}

/// Expand `keep` (layer names and presets) into layer names, checking each names at least one
/// node of `graph`.
pub fn expand(keep: &[String], architecture: &str, graph: &GraphProto) -> Result<Vec<String>, String> {
    let arch = ArchConfig::builtin(architecture).ok();
    let mut kept: Vec<String> = Vec::new();
    let mut push = |name: String| {
        if !kept.contains(&name) {
            kept.push(name);
        }
    };
    for name in keep.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        let needs_arch = || {
            arch.as_ref().ok_or_else(|| {
                format!(
                    "'{name}' stands for layers of a built-in architecture, and this model's is '{architecture}': \
                     name its layers instead"
                )
            })
        };
        match name {
            "none" => {}
            "stem" => push(needs_arch()?.stem().module().to_string()),
            "head" => push(needs_arch()?.head().module().to_string()),
            "classifier" => ["avgpool", "flatten", "classifier.1"].into_iter().for_each(|l| push(l.to_string())),
            "se" => {
                for block in needs_arch()?.blocks() {
                    for layer in block.layers() {
                        if matches!(layer, LayerSpec::SqueezeExcitation { .. }) {
                            push(layer.module().to_string());
                        }
                    }
                }
            }
            layer => {
                if !graph.node.iter().any(|n| belongs(&n.name, layer)) {
                    let known = arch_layers(architecture).unwrap_or_else(|| graph_layers(graph));
                    let presets: Vec<&str> = PRESETS.iter().map(|(p, _)| *p).collect();
                    return Err(format!(
                        "no layer named '{layer}' in this model: name one of {}, or a preset ({})",
                        shorten_list(&known),
                        presets.join(", ")
                    ));
                }
                push(layer.to_string());
            }
        }
    }
    Ok(kept)
}

/// A list for a message: whole if short, else its start, its end and how many.
fn shorten_list(items: &[String]) -> String {
    if items.len() <= 12 {
        return items.join(", ");
    }
    format!("{}, … ({} layers) …, {}", items[..6].join(", "), items.len(), items[items.len() - 3..].join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_is_by_whole_dotted_names() {
        assert!(belongs("features.0.conv", "features.0"));
        assert!(belongs("features.0", "features.0"));
        assert!(!belongs("features.01.conv", "features.0"));
        assert!(belongs("features.4.0.block.2.fc1.conv", "features.4.0"));
        assert!(!belongs("avgpool2", "avgpool"));
    }

    #[test]
    fn presets_expand_from_the_architecture() {
        let graph = GraphProto::default();
        let keep = |names: &[&str]| {
            expand(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "efficientnet_v2_tiny", &graph)
        };
        assert_eq!(keep(&["stem", "classifier"]).unwrap(), ["features.0", "avgpool", "flatten", "classifier.1"]);
        let se = keep(&["se"]).unwrap();
        assert!(!se.is_empty() && se.iter().all(|l| l.ends_with(".block.2")), "{se:?}");
        assert_eq!(keep(&["none"]).unwrap(), Vec::<String>::new());
        let err = keep(&["features.99"]).unwrap_err();
        assert!(err.contains("no layer named 'features.99'") && err.contains("features.0"), "{err}");
        let err = expand(&["se".into()], "my_own_net", &graph).unwrap_err();
        assert!(err.contains("built-in architecture"), "{err}");
        let layers = arch_layers("efficientnet_v2_tiny").unwrap();
        assert_eq!(layers.first().map(String::as_str), Some("features.0"));
        assert_eq!(layers.last().map(String::as_str), Some("classifier.1"));
    }
}

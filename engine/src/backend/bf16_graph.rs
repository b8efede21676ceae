//! bf16 with layers kept in f32, written into the graph: the nodes that run in bf16 get bfloat16
//! weights, and a Cast sits wherever a tensor crosses between a bf16 node and an f32 one.
//!
//! OpenVINO's bf16 precision hint converts every node, and its C API cannot mark single nodes to
//! stay f32. Compiled at the f32 hint, a graph with bfloat16 nodes runs those in the CPU plugin's
//! bf16 kernels and the rest in f32 (measured with `scripts/bf16_layers.py`: a graph with every
//! node in bfloat16 ran as fast as the bf16 hint). Which layers to keep follows
//! [`crate::layers`], as for int8.

use prost::Message;
use std::collections::{HashMap, HashSet};
use tract_onnx::pb::{self, NodeProto, TensorProto, tensor_proto::DataType};

/// Operators written in bf16. Anything else (a Constant, a shape computation, an operator
/// OpenVINO might not run in bf16) stays f32, with Casts around it.
const BF16_OPERATORS: [&str; 14] = [
    "Conv",
    "Gemm",
    "MatMul",
    "Sigmoid",
    "Mul",
    "Add",
    "Relu",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "GlobalAveragePool",
    "AveragePool",
    "MaxPool",
    "Flatten",
];

/// `model` in bf16 but for the nodes `is_kept` names, as ONNX bytes, and how many nodes run in
/// bf16. The graph's input and output stay f32.
pub fn bf16_graph(mut model: pb::ModelProto, is_kept: &dyn Fn(&str) -> bool) -> Result<(Vec<u8>, usize), String> {
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let in_bf16: Vec<bool> =
        graph.node.iter().map(|n| BF16_OPERATORS.contains(&n.op_type.as_str()) && !is_kept(&n.name)).collect();

    // A graph output computed in bf16 is renamed, and a Cast at the end gives it its name back.
    let mut output_casts = Vec::new();
    for output in graph.output.iter().map(|o| o.name.clone()) {
        let Some(k) = graph.node.iter().position(|n| n.output.contains(&output)) else { continue };
        if in_bf16[k] {
            let renamed = format!("{output}/bf16");
            for name in graph.node.iter_mut().flat_map(|n| n.input.iter_mut().chain(n.output.iter_mut())) {
                if *name == output {
                    name.clone_from(&renamed);
                }
            }
            output_casts.push(cast(&renamed, &output, DataType::Float));
        }
    }

    let float_constants: HashMap<String, TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::Float as i32)
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let computed_in_bf16: HashMap<String, bool> =
        graph.node.iter().zip(&in_bf16).flat_map(|(n, &b)| n.output.iter().map(move |o| (o.clone(), b))).collect();
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    let mut made = HashSet::new();
    let mut bf16_constants = Vec::new();
    for (mut node, bf16) in std::mem::take(&mut graph.node).into_iter().zip(in_bf16.iter().copied()) {
        for input in node.input.iter_mut().filter(|i| !i.is_empty()) {
            if let Some(constant) = float_constants.get(input.as_str()) {
                if bf16 {
                    let name = format!("{input}/bf16");
                    if made.insert(name.clone()) {
                        bf16_constants.push(to_bf16(constant, &name)?);
                    }
                    *input = name;
                }
                continue;
            }
            if graph.initializer.iter().any(|t| t.name == *input) {
                continue; // an integer constant (a shape): the same in both precisions
            }
            // The graph's inputs are f32.
            let source_bf16 = computed_in_bf16.get(input.as_str()).copied().unwrap_or(false);
            if source_bf16 != bf16 {
                let (suffix, to) = if bf16 { ("bf16", DataType::Bfloat16) } else { ("f32", DataType::Float) };
                let name = format!("{input}/{suffix}");
                if made.insert(name.clone()) {
                    nodes.push(cast(input, &name, to));
                }
                *input = name;
            }
        }
        nodes.push(node);
    }
    nodes.extend(output_casts);
    let used: HashSet<&str> = nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let mut initializers: Vec<TensorProto> =
        std::mem::take(&mut graph.initializer).into_iter().filter(|t| used.contains(t.name.as_str())).collect();
    initializers.extend(bf16_constants);
    graph.initializer = initializers;
    graph.node = nodes;
    // Intermediate types recorded by the exporter are f32; the runtime infers them again.
    graph.value_info.clear();
    Ok((model.encode_to_vec(), in_bf16.iter().filter(|&&b| b).count()))
}

fn cast(from: &str, to_name: &str, to: DataType) -> NodeProto {
    NodeProto {
        name: format!("cast:{to_name}"),
        op_type: "Cast".into(),
        input: vec![from.into()],
        output: vec![to_name.into()],
        attribute: vec![pb::AttributeProto {
            name: "to".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: to as i64,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An f32 constant as bfloat16 (round to nearest even), named `name`.
fn to_bf16(t: &TensorProto, name: &str) -> Result<TensorProto, String> {
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        if !t.raw_data.len().is_multiple_of(4) {
            return Err(format!("constant {}: {} bytes of f32", t.name, t.raw_data.len()));
        }
        t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    Ok(TensorProto {
        name: name.into(),
        dims: t.dims.clone(),
        data_type: DataType::Bfloat16 as i32,
        raw_data: values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers;

    fn demo() -> pb::ModelProto {
        pb::ModelProto::decode(crate::DEFAULT_MODEL_BYTES).unwrap()
    }

    fn rewritten(keep: &[&str]) -> (pb::GraphProto, usize) {
        let model = demo();
        let keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        let kept = layers::expand(&keep, "efficientnet_v2_tiny", model.graph.as_ref().unwrap()).unwrap();
        let is_kept = |node: &str| kept.iter().any(|l| layers::belongs(node, l));
        let (bytes, n) = bf16_graph(model.clone(), &is_kept).unwrap();
        (pb::ModelProto::decode(&*bytes).unwrap().graph.unwrap(), n)
    }

    /// The element type of every tensor, propagated through the graph: each node's float inputs
    /// must share one type (a Cast changes it), and the output must be f32.
    fn types(graph: &pb::GraphProto) -> HashMap<String, i32> {
        let mut types: HashMap<String, i32> = graph.initializer.iter().map(|t| (t.name.clone(), t.data_type)).collect();
        types.insert(graph.input[0].name.clone(), DataType::Float as i32);
        let float = [DataType::Float as i32, DataType::Bfloat16 as i32];
        for n in &graph.node {
            let inputs: HashSet<i32> = n
                .input
                .iter()
                .filter(|i| !i.is_empty())
                .map(|i| *types.get(i).unwrap_or_else(|| panic!("{}: input {i} is not computed before", n.name)))
                .filter(|t| float.contains(t))
                .collect();
            assert_eq!(inputs.len(), 1, "{} ({}) mixes element types {inputs:?}", n.name, n.op_type);
            let out = if n.op_type == "Cast" { n.attribute[0].i as i32 } else { *inputs.iter().next().unwrap() };
            for o in &n.output {
                types.insert(o.clone(), out);
            }
        }
        types
    }

    #[test]
    fn kept_layers_stay_f32_and_casts_sit_only_at_the_borders() {
        let original = demo().graph.unwrap();
        let (graph, in_bf16) = rewritten(&layers::DEFAULT_KEEP);
        let types = types(&graph);
        assert_eq!(types["logits"], DataType::Float as i32);
        let of = |name: &str| graph.node.iter().find(|n| n.name == name).unwrap();
        let bf16 = DataType::Bfloat16 as i32;
        // The stem and the classifier read f32; everything between reads bf16.
        for (node, precision) in [
            ("features.0.conv", DataType::Float as i32),
            ("features.1.0.block.0.conv", bf16),
            ("features.7.silu", bf16),
            ("avgpool", DataType::Float as i32),
            ("classifier.1", DataType::Float as i32),
        ] {
            assert_eq!(types[&of(node).input[0]], precision, "{node}");
        }
        // Exactly two Casts: into bf16 after the stem, back to f32 before the pooling.
        let casts: Vec<&str> = graph.node.iter().filter(|n| n.op_type == "Cast").map(|n| n.input[0].as_str()).collect();
        assert_eq!(casts, ["features.0.silu:out", "features.7.silu:out"]);
        assert_eq!(in_bf16, original.node.len() - 3 /* stem: conv, sigmoid, mul */ - 3 /* classifier */);
        // Weights of bf16 nodes are bfloat16, rounded to nearest (8 significant bits).
        let weights = |g: &pb::GraphProto, name: &str| g.initializer.iter().find(|t| t.name == name).cloned().unwrap();
        let w32 = weights(&original, &of("classifier.1").input[1]);
        assert_eq!(w32.data_type, DataType::Float as i32);
        let name = of("features.1.0.block.0.conv").input[1].clone();
        let w16 = weights(&graph, &name);
        let w32 = weights(&original, name.strip_suffix("/bf16").unwrap());
        assert_eq!((w16.data_type, &w16.dims), (bf16, &w32.dims));
        for (b, f) in w16.raw_data.chunks_exact(2).zip(w32.raw_data.chunks_exact(4)) {
            let (b, f) = (half::bf16::from_le_bytes([b[0], b[1]]).to_f32(), f32::from_le_bytes(f.try_into().unwrap()));
            assert!((b - f).abs() <= f.abs() / 256.0, "{f} became {b}");
        }
        // The f32 copies of converted weights are gone.
        assert!(graph.initializer.iter().all(|t| t.data_type == bf16 || !t.name.starts_with("features.1.")));
    }

    #[test]
    fn with_nothing_kept_the_input_and_the_output_are_cast() {
        let (graph, in_bf16) = rewritten(&["none"]);
        types(&graph);
        assert_eq!(in_bf16, demo().graph.unwrap().node.len());
        let casts: Vec<(&str, &str)> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Cast")
            .map(|n| (n.input[0].as_str(), n.output[0].as_str()))
            .collect();
        assert_eq!(casts, [("patches", "patches/bf16"), ("logits/bf16", "logits")]);
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        let t = TensorProto {
            name: "w".into(),
            dims: vec![4],
            data_type: DataType::Float as i32,
            float_data: vec![1.0, 1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -0.0],
            ..Default::default()
        };
        let b = to_bf16(&t, "w/bf16").unwrap();
        let values: Vec<u16> = b.raw_data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even one, 1; 1 + 3·2^-8 halfway between
        // 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
        assert_eq!(values, [0x3F80, 0x3F80, 0x3F82, 0x8000]);
    }
}

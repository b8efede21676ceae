//! The QDQ rewrite of an f32 graph: QuantizeLinear → DequantizeLinear pairs on the activations
//! of every quantized node, int8 weights and int32 biases behind DequantizeLinear. A runtime that
//! runs QDQ graphs (ONNX Runtime, OpenVINO, TensorRT) fuses each `DQ → op → Q` into its integer
//! kernel; one that does not computes the same numbers in float (the graph's meaning is defined by
//! the ONNX operators, see [`crate::formulas`]).
//!
//! Where the pairs go depends on the runtime that will fuse them ([`Target`]). For ONNX Runtime,
//! every node of a type listed in [`QUANTIZABLE`] is quantized, inputs and outputs, unless it is
//! kept in f32 (the quantizer's choice of sensitive layers) or has a constant input the scheme
//! does not cover: ONNX Runtime needs the whole chain quantized to stay in integers (with QDQ on
//! convolutions alone, every SiLU, residual sum and squeeze-excitation runs in float between a
//! dequantize and a quantize, each a round trip through memory in f32). OpenVINO's CPU plugin
//! instead fuses an activation (the SiLU) into the convolution before it as a float
//! post-operation and requantizes once, at the next quantized input: there pairs go only on the
//! inputs of convolutions, matrix products, sums and the squeeze-excitation's pooling and scaling.

use crate::formulas::{ActivationParams, quantize_bias, quantize_weights};
use std::collections::{HashMap, HashSet};
use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, TensorProto, attribute_proto::AttributeType};

/// The operators quantized: what `medpatch export` writes (the EfficientNetV2 patch backbone).
pub const QUANTIZABLE: [&str; 7] = ["Conv", "Gemm", "Add", "Mul", "Sigmoid", "GlobalAveragePool", "Flatten"];

const FLOAT: i32 = tract_onnx::pb::tensor_proto::DataType::Float as i32;
const UINT8: i32 = tract_onnx::pb::tensor_proto::DataType::Uint8 as i32;
const INT8: i32 = tract_onnx::pb::tensor_proto::DataType::Int8 as i32;
const INT32: i32 = tract_onnx::pb::tensor_proto::DataType::Int32 as i32;

/// The runtime a quantized model is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// ONNX Runtime (and TensorRT): every quantizable node in integers, inputs and outputs.
    #[default]
    OnnxRuntime,
    /// OpenVINO: quantizers on the inputs of convolutions, matrix products, sums and the
    /// squeeze-excitation's pooling and scaling; SiLUs, and the squeeze-excitation's small
    /// convolutions on the pooled 1×1 tensor, stay float.
    OpenVino,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::OnnxRuntime, Target::OpenVino];

    pub fn name(self) -> &'static str {
        match self {
            Target::OnnxRuntime => "onnxruntime",
            Target::OpenVino => "openvino",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown target '{s}': use onnxruntime (also for TensorRT) or openvino"))
    }
}

/// Which nodes are quantized and which activations (tensor names, in graph order) need a range.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub quantized: Vec<bool>,
    pub activations: Vec<String>,
}

impl Plan {
    pub fn quantized_nodes(&self) -> usize {
        self.quantized.iter().filter(|&&q| q).count()
    }
}

fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn attr_float(node: &NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

/// Can `node` be quantized by this scheme? Its constant inputs must be a convolution's or a
/// matrix product's weight and bias (per-channel int8, int32), nothing else.
fn supported(node: &NodeProto, initializers: &HashMap<&str, &TensorProto>) -> bool {
    if !QUANTIZABLE.contains(&node.op_type.as_str()) {
        return false;
    }
    let constant = |i: usize| node.input.get(i).is_some_and(|name| initializers.contains_key(name.as_str()));
    let float_constant = |i: usize| {
        node.input.get(i).and_then(|name| initializers.get(name.as_str())).is_some_and(|t| t.data_type == FLOAT)
    };
    match node.op_type.as_str() {
        "Conv" => !constant(0) && float_constant(1) && (node.input.len() < 3 || float_constant(2)),
        // y = x · Wᵀ + b only (what the classifier is): per-channel weights along W's rows.
        "Gemm" => {
            !constant(0)
                && float_constant(1)
                && (node.input.len() < 3 || float_constant(2))
                && attr_int(node, "transA").unwrap_or(0) == 0
                && attr_int(node, "transB").unwrap_or(0) == 1
                && attr_float(node, "alpha").unwrap_or(1.0) == 1.0
                && attr_float(node, "beta").unwrap_or(1.0) == 1.0
        }
        _ => (0..node.input.len()).all(|i| !constant(i)),
    }
}

/// Decide what to quantize for `target`: supported nodes whose names are not kept.
pub fn plan(graph: &GraphProto, kept: &dyn Fn(&str) -> bool, target: Target) -> Plan {
    let initializers: HashMap<&str, &TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let pooled = pooled_tensors(graph);
    let silu = |n: &NodeProto| {
        // y · sigmoid(y)
        n.op_type == "Mul"
            && n.input.len() == 2
            && graph.node.iter().any(|s| {
                s.op_type == "Sigmoid"
                    && s.output.iter().any(|o| n.input.contains(o))
                    && s.input.first().is_some_and(|y| n.input.contains(y))
            })
    };
    let fused_by_openvino = |n: &NodeProto| match n.op_type.as_str() {
        "Sigmoid" | "Flatten" => true,
        "Mul" => silu(n),
        "Conv" => n.input.first().is_some_and(|x| pooled.contains(x.as_str())),
        _ => false,
    };
    let quantized: Vec<bool> = graph
        .node
        .iter()
        .map(|n| {
            supported(n, &initializers) && !kept(&n.name) && (target == Target::OnnxRuntime || !fused_by_openvino(n))
        })
        .collect();
    let mut activations = Vec::new();
    let mut seen = HashSet::new();
    let mut note = |name: &str| {
        if !name.is_empty() && !initializers.contains_key(name) && seen.insert(name.to_string()) {
            activations.push(name.to_string());
        }
    };
    for (node, &q) in graph.node.iter().zip(&quantized) {
        if q {
            // A node's data inputs; the weight and bias of Conv/Gemm are constants, skipped by `note`.
            node.input.iter().for_each(|i| note(i));
            if target == Target::OnnxRuntime {
                node.output.iter().for_each(|o| note(o));
            }
        }
    }
    Plan { quantized, activations }
}

/// Tensors computed from a global pooling's 1×1 output alone (the squeeze-excitation's squeeze
/// and its small convolutions, the classifier's input).
fn pooled_tensors(graph: &GraphProto) -> HashSet<&str> {
    let constants: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut pooled: HashSet<&str> = HashSet::new();
    for n in &graph.node {
        let from_pooled = n.op_type != "GlobalAveragePool"
            && n.input.iter().any(|i| pooled.contains(i.as_str()))
            && n.input.iter().all(|i| i.is_empty() || pooled.contains(i.as_str()) || constants.contains(i.as_str()));
        if n.op_type == "GlobalAveragePool" || from_pooled {
            pooled.extend(n.output.iter().map(String::as_str));
        }
    }
    pooled
}

fn float_values(t: &TensorProto) -> Result<Vec<f32>, String> {
    if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(4) {
            return Err(format!("initializer {} has {} bytes, not whole floats", t.name, t.raw_data.len()));
        }
        Ok(t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    } else {
        Ok(t.float_data.clone())
    }
}

fn node(op: &str, name: String, inputs: Vec<String>, output: String, axis: Option<i64>) -> NodeProto {
    let attribute = axis
        .map(|i| {
            vec![AttributeProto { name: "axis".into(), r#type: AttributeType::Int as i32, i, ..Default::default() }]
        })
        .unwrap_or_default();
    NodeProto { op_type: op.into(), name, input: inputs, output: vec![output], attribute, ..Default::default() }
}

/// What the rewrite did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewritten {
    pub quantized_nodes: usize,
    pub quantized_weights: usize,
    pub activation_pairs: usize,
}

/// The new constants, and the Q → DQ pairs written so far.
struct Additions<'a> {
    params: &'a HashMap<String, ActivationParams>,
    initializers: Vec<TensorProto>,
    pairs: usize,
    weights: usize,
}

impl Additions<'_> {
    fn param(&self, name: &str) -> Result<ActivationParams, String> {
        self.params.get(name).copied().ok_or_else(|| format!("no calibration range for {name}"))
    }

    /// A QuantizeLinear → DequantizeLinear pair on activation `tensor`, reading `from` and writing
    /// `to`, appended to `nodes`.
    fn pair(&mut self, tensor: &str, from: String, to: String, nodes: &mut Vec<NodeProto>) -> Result<(), String> {
        let p = self.param(tensor)?;
        let (scale, zero) = (format!("{tensor}/scale"), format!("{tensor}/zero_point"));
        self.initializers.push(tensor_of(scale.clone(), FLOAT, vec![], p.scale.to_le_bytes().to_vec()));
        self.initializers.push(tensor_of(zero.clone(), UINT8, vec![], vec![p.zero_point]));
        let q = format!("{tensor}/quantized");
        let inputs = vec![from, scale.clone(), zero.clone()];
        nodes.push(node("QuantizeLinear", format!("{tensor}/QuantizeLinear"), inputs, q.clone(), None));
        nodes.push(node("DequantizeLinear", format!("{tensor}/DequantizeLinear"), vec![q, scale, zero], to, None));
        self.pairs += 1;
        Ok(())
    }

    /// Replace a constant of `values` by `stored` (int8 or int32 `data_type`) behind a
    /// DequantizeLinear along axis 0 with per-channel `scales`; returns the dequantized name.
    fn dequantized_constant(
        &mut self,
        name: &str,
        (suffix, data_type, dims, stored): (&str, i32, Vec<i64>, Vec<u8>),
        scales: &[f32],
        nodes: &mut Vec<NodeProto>,
    ) -> String {
        let channels = scales.len() as i64;
        let width = if data_type == INT32 { 4 } else { 1 };
        let (q, s, z, d) = (
            format!("{name}/{suffix}"),
            format!("{name}/scale"),
            format!("{name}/zero_point"),
            format!("{name}/dequantized"),
        );
        self.initializers.push(tensor_of(q.clone(), data_type, dims, stored));
        self.initializers.push(tensor_of(
            s.clone(),
            FLOAT,
            vec![channels],
            scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        self.initializers.push(tensor_of(z.clone(), data_type, vec![channels], vec![0; width * scales.len()]));
        nodes.push(node("DequantizeLinear", format!("{name}/DequantizeLinear"), vec![q, s, z], d.clone(), Some(0)));
        d
    }
}

fn tensor_of(name: String, data_type: i32, dims: Vec<i64>, raw: Vec<u8>) -> TensorProto {
    TensorProto { name, data_type, dims, raw_data: raw, ..Default::default() }
}

/// Rewrite `graph` to QDQ following `plan`, with `params` for each planned activation.
pub fn rewrite(
    graph: &mut GraphProto,
    plan: &Plan,
    params: &HashMap<String, ActivationParams>,
) -> Result<Rewritten, String> {
    let quantized_tensors: HashSet<&str> = plan.activations.iter().map(String::as_str).collect();
    let produced_by_quantized: HashSet<String> = graph
        .node
        .iter()
        .zip(&plan.quantized)
        .filter(|(_, q)| **q)
        .flat_map(|(n, _)| n.output.iter().cloned())
        .collect();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    let original_initializers = std::mem::take(&mut graph.initializer);
    let mut constants: HashMap<String, TensorProto> =
        original_initializers.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let mut take = |name: &str| -> Result<TensorProto, String> {
        if uses.get(name).copied().unwrap_or(0) != 1 {
            return Err(format!("constant {name} is used by several nodes; the quantizer expects one use"));
        }
        constants.remove(name).ok_or_else(|| format!("no initializer {name}"))
    };
    let mut add = Additions { params, initializers: Vec::new(), pairs: 0, weights: 0 };
    let mut weight_nodes: Vec<NodeProto> = Vec::new();
    let mut nodes: Vec<NodeProto> = Vec::new();
    let dequantized = |t: &str| format!("{t}/dequantized");

    // A tensor written by a quantized node is only ever read dequantized: the node writes its float
    // result under another name and the pair after it restores the original name. A tensor from a
    // kept node or a graph input keeps its name for kept readers; quantized readers read its
    // dequantized copy.
    for input in &graph.input {
        if quantized_tensors.contains(input.name.as_str()) {
            add.pair(&input.name, input.name.clone(), dequantized(&input.name), &mut nodes)?;
        }
    }
    for (mut n, &q) in std::mem::take(&mut graph.node).into_iter().zip(&plan.quantized) {
        if !q {
            let read_dequantized: Vec<String> =
                n.output.iter().filter(|o| quantized_tensors.contains(o.as_str())).cloned().collect();
            nodes.push(n);
            for o in read_dequantized {
                add.pair(&o, o.clone(), dequantized(&o), &mut nodes)?;
            }
            continue;
        }
        let data_input = n.input.first().cloned().unwrap_or_default();
        for input in n.input.iter_mut() {
            if quantized_tensors.contains(input.as_str()) && !produced_by_quantized.contains(input.as_str()) {
                *input = dequantized(input);
            }
        }
        if n.op_type == "Conv" || n.op_type == "Gemm" {
            let input_scale = add.param(&data_input)?.scale;
            let w = take(&n.input[1])?;
            let dims: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
            let qw = quantize_weights(&float_values(&w)?, &dims, 0);
            let stored = ("int8", INT8, w.dims.clone(), qw.values.iter().map(|&v| v as u8).collect());
            n.input[1] = add.dequantized_constant(&w.name, stored, &qw.scales, &mut weight_nodes);
            add.weights += 1;
            if let Some(b_name) = n.input.get(2).filter(|b| !b.is_empty()).cloned() {
                let b = take(&b_name)?;
                let qb = quantize_bias(&float_values(&b)?, input_scale, &qw.scales);
                let stored = ("int32", INT32, b.dims.clone(), qb.values.iter().flat_map(|v| v.to_le_bytes()).collect());
                n.input[2] = add.dequantized_constant(&b.name, stored, &qb.scales, &mut weight_nodes);
            }
        }
        let mut after = Vec::new();
        for output in n.output.iter_mut() {
            if quantized_tensors.contains(output.as_str()) {
                let original = output.clone();
                *output = format!("{original}/float");
                after.push((original, output.clone()));
            }
        }
        nodes.push(n);
        for (original, float) in after {
            add.pair(&original, float, original.clone(), &mut nodes)?;
        }
    }
    weight_nodes.extend(nodes);
    graph.node = weight_nodes;
    let mut initializers: Vec<TensorProto> =
        original_initializers.into_iter().filter(|t| constants.contains_key(&t.name)).collect();
    initializers.extend(add.initializers);
    graph.initializer = initializers;
    Ok(Rewritten {
        quantized_nodes: plan.quantized_nodes(),
        quantized_weights: add.weights,
        activation_pairs: add.pairs,
    })
}

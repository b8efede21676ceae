//! A minimal ONNX graph writer over the protobuf types tract-onnx already generates.

use tract_onnx::pb::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension, type_proto,
};

/// ONNX opset the exported graphs target (every op used is unchanged since well before it).
pub const OPSET: i64 = 17;
/// IR version 8 is the one that goes with opset 17.
const IR_VERSION: i64 = 8;

#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    parameters: usize,
}

pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
}

/// A dimension of a graph input/output: fixed, or symbolic (named).
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

impl GraphBuilder {
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }

    pub fn initializer(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        self.parameters += data.len();
        self.initializers.push(TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.to_string()
    }

    pub fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let output = format!("{name}:out");
        self.node_to(op, name, inputs, &output, attrs);
        output
    }

    pub fn node_to(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>) {
        let attribute = attrs
            .into_iter()
            .map(|(n, a)| match a {
                Attr::Int(i) => {
                    AttributeProto { name: n.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
                }
                Attr::Ints(ints) => {
                    AttributeProto { name: n.into(), r#type: AttributeType::Ints as i32, ints, ..Default::default() }
                }
            })
            .collect();
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute,
            ..Default::default()
        });
    }

    pub fn finish(
        self,
        graph_name: &str,
        input: (&str, &[Dim]),
        output: (&str, &[Dim]),
        metadata: Vec<(String, String)>,
        doc: &str,
    ) -> ModelProto {
        let graph = GraphProto {
            name: graph_name.into(),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(input.0, input.1)],
            output: vec![value_info(output.0, output.1)],
            ..Default::default()
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "medpatch".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(graph),
            metadata_props: metadata.into_iter().map(|(key, value)| StringStringEntryProto { key, value }).collect(),
            ..Default::default()
        }
    }
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Named(n) => dimension::Value::DimParam(n.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

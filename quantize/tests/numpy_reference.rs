//! The quantizer against an independent transcription of its formulas in numpy
//! (tests/python/qdq_reference.py): scales, zero points, rounding, per-channel axes, int32 biases,
//! and the quantized demo model's every constant; and tract's evaluation of the QDQ graph (what
//! the quantizer measures and stores) against ONNX Runtime running the same graph operator by
//! operator, as ONNX defines QuantizeLinear and DequantizeLinear.

use medpatch_engine::backend::precision::check_patches;
use medpatch_engine::{DEFAULT_MODEL_BYTES, Model, ModelOrigin};
use medpatch_models::Rng;
use medpatch_quantize::calibrate::Runner;
use medpatch_quantize::formulas::{activation_params, dequantize_u8, quantize_bias, quantize_u8, quantize_weights};
use medpatch_quantize::{Calibration, QuantizeOptions, quantize};
use medpatch_testkit::*;
use serde_json::{Value, json};

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn formulas_equal_the_numpy_transcription() {
    let mut rng = Rng::new(23);
    let mut normal = |n: usize, scale: f64| -> Vec<f32> { (0..n).map(|_| (rng.normal() * scale) as f32).collect() };
    // Ranges of every kind: SiLU-like, all positive (an image), all negative, one value, huge, tiny;
    // values beyond the range (saturation) and on half steps (ties).
    let ranges: [(f32, f32); 7] =
        [(-0.278, 6.0), (0.0, 1.0), (-3.0, -1.0), (0.0, 0.0), (-1e4, 3e4), (-1e-6, 2e-6), (-1.0, 1.0)];
    let mut activations = Vec::new();
    for (k, &(min, max)) in ranges.iter().enumerate() {
        let mut values = normal(64, (max - min).abs().max(1e-6) as f64);
        let p = activation_params(min, max);
        values.extend((-3..4).map(|i| (i as f32 + 0.5) * p.scale)); // ties
        values.extend([max * 2.0 + 1.0, min * 2.0 - 1.0]); // saturation
        activations.push((k, min, max, values));
    }
    // Conv weights [out, in, k, k] (axis 0), a Gemm's [out, in] (axis 0), the same along axis 1,
    // with one all-zero channel.
    let mut conv = normal(8 * 3 * 3 * 3, 0.2);
    conv[27..54].iter_mut().for_each(|w| *w = 0.0);
    let weights = [
        (conv, vec![8usize, 3, 3, 3], 0usize),
        (normal(14 * 20, 0.05), vec![14, 20], 0),
        (normal(6 * 5, 1.0), vec![6, 5], 1),
    ];
    let biases = [(normal(8, 0.5), 0.013f32), (normal(14, 2.0), 1e-4)];

    let dir = scratch("quantize-numpy-formulas");
    let spec = json!({
        "activations": activations.iter().map(|(_, min, max, v)| json!({"min": min, "max": max, "values": v})).collect::<Vec<_>>(),
        "weights": weights.iter().map(|(w, dims, axis)| json!({"values": w, "dims": dims, "axis": axis})).collect::<Vec<_>>(),
        "biases": biases.iter().enumerate().map(|(i, (b, s))| {
            let ws = quantize_weights(&weights[i].0, &weights[i].1, 0).scales;
            json!({"values": b, "input_scale": s, "weight_scales": ws})
        }).collect::<Vec<_>>(),
    });
    let (input, output) = (dir.join("in.json"), dir.join("out.json"));
    std::fs::write(&input, spec.to_string()).unwrap();
    run_python("qdq_reference.py", &["formulas", input.to_str().unwrap(), output.to_str().unwrap()]);
    let numpy: Value = serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();

    for ((k, min, max, values), reference) in activations.iter().zip(numpy["activations"].as_array().unwrap()) {
        let p = activation_params(*min, *max);
        assert_eq!(p.scale.to_bits() as u64, reference["scale"].as_u64().unwrap(), "range {k}: scale {}", p.scale);
        assert_eq!(p.zero_point as i64, reference["zero_point"].as_i64().unwrap(), "range {k}: zero point");
        let q: Vec<i64> = values.iter().map(|&x| quantize_u8(x, p) as i64).collect();
        assert_eq!(q, i64s(&reference["quantized"]), "range {k}: quantized values");
        let d: Vec<f32> = values.iter().map(|&x| dequantize_u8(quantize_u8(x, p), p)).collect();
        assert_eq!(bits(&d), u32s(&reference["dequantized"]), "range {k}: dequantized values");
    }
    for ((w, dims, axis), reference) in weights.iter().zip(numpy["weights"].as_array().unwrap()) {
        let q = quantize_weights(w, dims, *axis);
        assert_eq!(bits(&q.scales), u32s(&reference["scales"]), "{dims:?} axis {axis}: scales");
        assert_eq!(q.values.iter().map(|&v| v as i64).collect::<Vec<_>>(), i64s(&reference["values"]));
    }
    for (i, reference) in numpy["biases"].as_array().unwrap().iter().enumerate() {
        let ws = quantize_weights(&weights[i].0, &weights[i].1, 0).scales;
        let q = quantize_bias(&biases[i].0, biases[i].1, &ws);
        assert_eq!(bits(&q.scales), u32s(&reference["scales"]), "bias {i}: scales");
        assert_eq!(q.values.iter().map(|&v| v as i64).collect::<Vec<_>>(), i64s(&reference["values"]));
    }
}

/// The embedded demo model, and its calibration on the bundled X-ray (one image, 64 patches).
fn demo_model_calibrated_on_the_bundled_xray() -> (Model, Calibration) {
    let model =
        Model::from_bytes(DEFAULT_MODEL_BYTES.into(), ModelOrigin::Memory("medpatch-default.onnx".into())).unwrap();
    let xray = repo_root().join("assets/00001369_000.png");
    let calibration = Calibration::from_files(&model, &[xray], 1).unwrap();
    (model, calibration)
}

/// What tests/python/qdq_reference.py (numpy and ONNX Runtime) says of the demo model quantized to
/// `int8`, on the self-check patches: its JSON verdict, and the script's whole output.
fn onnx_reference(model: &Model, int8: &[u8], scratch_name: &str) -> (Value, String) {
    let dir = scratch(scratch_name);
    let (f32_path, int8_path, check_path) = (dir.join("f32.onnx"), dir.join("int8.onnx"), dir.join("check.npy"));
    std::fs::write(&f32_path, DEFAULT_MODEL_BYTES).unwrap();
    std::fs::write(&int8_path, int8).unwrap();
    let (check, n) = check_patches(model);
    std::fs::write(&check_path, medpatch_engine::render::npy_f32(&[n, 1, 64, 64], &check)).unwrap();
    let out = run_python(
        "qdq_reference.py",
        &["model", f32_path.to_str().unwrap(), int8_path.to_str().unwrap(), check_path.to_str().unwrap()],
    );
    (serde_json::from_str(out.lines().last().unwrap()).unwrap(), out)
}

/// The demo model quantized on the bundled X-ray: every constant as numpy computes it, and the
/// stored measurement (tract's evaluation of the QDQ graph) as ONNX Runtime evaluates the graph.
#[test]
fn the_quantized_demo_model_is_what_numpy_and_onnx_say() {
    let (model, calibration) = demo_model_calibrated_on_the_bundled_xray();
    assert_eq!((calibration.images, calibration.count), (1, 64));
    let quantized = quantize(&model, &calibration, &QuantizeOptions { threads: 2, ..Default::default() }).unwrap();
    let (onnx, out) = onnx_reference(&model, &quantized.bytes, "quantize-numpy-model");
    let r = &quantized.rewritten;
    assert_eq!(onnx["weights"].as_u64().unwrap() as usize, r.quantized_weights, "{out}");
    assert_eq!(onnx["biases"].as_u64().unwrap() as usize, r.quantized_weights, "every quantized layer has a bias");
    assert_eq!(onnx["activation_pairs"].as_u64().unwrap() as usize, r.activation_pairs);
    // The kept layers stay f32: the stem (1 channel in), the classifier.
    assert_eq!(quantized.record.kept_f32, ["features.0", "avgpool", "flatten", "classifier.1"]);

    // tract's QDQ logits (what the quantizer measured) against ONNX Runtime's, operator by operator.
    // Both compute each float operation in f32 but sum in different orders, so a value that falls
    // within float rounding of a half step quantizes to the neighbouring step in one of them, and
    // such a step moves this sensitive model's logits by up to a few units; on the mean over all
    // logits they must agree far inside the quantization's own deviation.
    let (check, n) = check_patches(&model);
    let tract = Runner::new(&quantized.bytes, &["logits".into()], [1, 64, 64], 2).unwrap().logits(&check, n).unwrap();
    let ort: Vec<f32> = onnx["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let mean_diff = tract.iter().zip(&ort).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / ort.len() as f64;
    let stored = quantized.record.self_check.deviation;
    eprintln!(
        "QDQ logits, tract vs ONNX Runtime (no fusion): mean |Δ| {mean_diff:.2e}, max {:.2e}; quantization's own \
         deviation from f32: tract max {:.3} mean {:.4}, ONNX Runtime max {:.3} mean {:.4}",
        max_abs_diff(&tract, &ort),
        stored.max_abs,
        stored.mean_abs,
        onnx["max_abs"],
        onnx["mean_abs"]
    );
    assert!(mean_diff <= 0.05 * stored.mean_abs as f64, "tract and ONNX Runtime evaluate the QDQ graph differently");
    let ort_mean = onnx["mean_abs"].as_f64().unwrap();
    assert!((ort_mean - stored.mean_abs as f64).abs() <= 0.05 * ort_mean, "{ort_mean} vs {}", stored.mean_abs);
}

/// Nothing kept in f32: the stem is quantized too, so the graph's input gets its own range from
/// calibration, and ONNX Runtime runs the whole graph in integers within the same agreement.
#[test]
fn with_nothing_kept_the_input_is_calibrated_and_quantized() {
    let (model, calibration) = demo_model_calibrated_on_the_bundled_xray();
    let options = QuantizeOptions { keep: vec!["none".into()], threads: 2, ..Default::default() };
    let quantized = quantize(&model, &calibration, &options).unwrap();
    assert!(quantized.record.kept_f32.is_empty(), "{:?}", quantized.record.kept_f32);
    let kept_default = quantize(&model, &calibration, &QuantizeOptions { threads: 2, ..Default::default() }).unwrap();
    // Quantized now: the stem's convolution and its SiLU (Sigmoid, Mul), the pooling, flatten and
    // the linear layer.
    assert_eq!(quantized.rewritten.quantized_nodes, kept_default.rewritten.quantized_nodes + 6);
    let deviation = quantized.record.self_check.deviation;
    assert!(deviation.max_abs.is_finite() && deviation.mean_abs > 0.0, "{deviation:?}");
    // A model the engine loads as any other.
    let dir = scratch("quantize-keep-none");
    let int8_path = dir.join("int8.onnx");
    std::fs::write(&int8_path, &quantized.bytes).unwrap();
    let reloaded = Model::from_path(&int8_path).unwrap();
    assert!(reloaded.metadata.quantization.is_some());
}

/// Laid out for OpenVINO (NNCF's layout): quantizers only on the inputs of convolutions, sums and
/// the squeeze-excitation's pooling and scaling; the SiLUs and the squeeze-excitation's small
/// convolutions on the pooled tensor stay float. ONNX Runtime evaluates that graph as tract does.
#[test]
fn laid_out_for_openvino_only_the_inputs_of_fusable_layers_are_quantized() {
    use prost::Message;
    use std::collections::{HashMap, HashSet};
    let (model, calibration) = demo_model_calibrated_on_the_bundled_xray();
    let target = medpatch_quantize::qdq::Target::OpenVino;
    let quantized =
        quantize(&model, &calibration, &QuantizeOptions { threads: 2, target, ..Default::default() }).unwrap();
    assert_eq!(quantized.record.target.as_deref(), Some("openvino"));
    let graph = tract_onnx::pb::ModelProto::decode(&*quantized.bytes).unwrap().graph.unwrap();
    let producer: HashMap<&str, &str> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n.op_type.as_str()))).collect();
    let constants: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    // A node reads a quantized activation when its input comes from a DequantizeLinear of a
    // QuantizeLinear (weights are DequantizeLinear of a constant).
    let dq_of_activation: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear" && !constants.contains(n.input[0].as_str()))
        .map(|n| n.output[0].as_str())
        .collect();
    let reads_quantized =
        |n: &&tract_onnx::pb::NodeProto| n.input.iter().any(|i| dq_of_activation.contains(i.as_str()));
    let readers: Vec<&tract_onnx::pb::NodeProto> = graph.node.iter().filter(reads_quantized).collect();
    let named = |op: &str| readers.iter().filter(|n| n.op_type == op).map(|n| n.name.as_str()).collect::<Vec<_>>();
    assert!(named("Sigmoid").is_empty(), "{:?}", named("Sigmoid"));
    assert!(named("Mul").iter().all(|n| n.ends_with(".scale")) && !named("Mul").is_empty(), "{:?}", named("Mul"));
    let convs = named("Conv");
    assert!(!convs.is_empty() && convs.iter().all(|n| !n.contains(".fc")), "{convs:?}");
    assert_eq!(named("Add").len(), graph.node.iter().filter(|n| n.op_type == "Add").count());
    assert!(named("GlobalAveragePool").iter().all(|n| n.ends_with(".avgpool")), "squeeze-excitations only");
    // No quantizer right after a convolution that a SiLU follows: OpenVINO fuses the SiLU instead.
    for q in graph.node.iter().filter(|n| n.op_type == "QuantizeLinear" && !constants.contains(n.input[0].as_str())) {
        if producer.get(q.input[0].as_str()) == Some(&"Conv") {
            let name = q.input[0].trim_end_matches("/float");
            let silu_follows = graph.node.iter().any(|n| n.op_type == "Sigmoid" && n.input[0] == name);
            assert!(!silu_follows, "{name} is quantized before its SiLU");
        }
    }
    let onnx_runtime_layout =
        quantize(&model, &calibration, &QuantizeOptions { threads: 2, ..Default::default() }).unwrap();
    assert!(quantized.rewritten.activation_pairs < onnx_runtime_layout.rewritten.activation_pairs);

    // The same agreement between tract and ONNX Runtime as for the default layout.
    let (onnx, out) = onnx_reference(&model, &quantized.bytes, "quantize-openvino-layout");
    assert_eq!(onnx["activation_pairs"].as_u64().unwrap() as usize, quantized.rewritten.activation_pairs, "{out}");
    let ort_mean = onnx["mean_abs"].as_f64().unwrap();
    let stored = quantized.record.self_check.deviation;
    eprintln!(
        "OpenVINO layout: {} pairs (ONNX Runtime layout {}); deviation from f32 on the check patches: tract max {:.3} \
         mean {:.4}, ONNX Runtime mean {ort_mean:.4}",
        quantized.rewritten.activation_pairs,
        onnx_runtime_layout.rewritten.activation_pairs,
        stored.max_abs,
        stored.mean_abs
    );
    assert!((ort_mean - stored.mean_abs as f64).abs() <= 0.05 * ort_mean, "{ort_mean} vs {}", stored.mean_abs);
}

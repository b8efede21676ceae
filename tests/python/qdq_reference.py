"""numpy transcription of the QDQ formulas of `medpatch quantize` (quantize/src/formulas.rs), for
quantize/tests/numpy_reference.rs.

  qdq_reference.py formulas IN.json OUT.json
      IN holds activation ranges and values, weight tensors with their axes, biases; OUT gets what
      numpy computes for each: scales, zero points, quantized values.
  qdq_reference.py model F32.onnx INT8.onnx CHECK.npy
      Checks every weight and bias behind a DequantizeLinear of INT8.onnx against numpy applied to
      F32.onnx's tensors (per-channel scales along the output axis, int8 values, int32 biases at
      input scale × weight scale), every activation Q/DQ pair's parameters, and runs INT8.onnx in
      ONNX Runtime with every graph optimisation off (so QuantizeLinear and DequantizeLinear run
      as the ONNX operators define them, not fused into integer kernels) on CHECK.npy's patches;
      prints their logits' deviation from F32.onnx as JSON, for the caller to compare with what
      the quantizer measured with tract.

ONNX's QuantizeLinear: y = saturate(round_half_to_even(x / scale) + zero_point); DequantizeLinear:
x = (y - zero_point) * scale. numpy's rint rounds half to even.
"""
import json
import sys

import numpy as np

F32 = np.float32


def activation_params(low, high):
    low, high = min(F32(low), F32(0)), max(F32(high), F32(0))
    width = F32(high - low)
    if not np.isfinite(width) or width <= 0:
        return F32(1.0), 0
    scale = F32(width / F32(255))
    zero = int(np.clip(np.rint(F32(-low) / scale), 0, 255))
    return scale, zero


def quantize_u8(x, scale, zero):
    return np.clip(np.rint(np.asarray(x, F32) / F32(scale)) + F32(zero), 0, 255).astype(np.uint8)


def dequantize_u8(q, scale, zero):
    return ((np.asarray(q, np.int32) - zero).astype(F32) * F32(scale)).astype(F32)


def quantize_weights(w, axis):
    w = np.asarray(w, F32)
    others = tuple(i for i in range(w.ndim) if i != axis)
    max_abs = np.max(np.abs(w), axis=others)
    scales = np.where(max_abs > 0, (max_abs / F32(127)).astype(F32), F32(1)).astype(F32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scales.reshape(shape)), -127, 127).astype(np.int8)
    return scales, q


def quantize_bias(b, input_scale, weight_scales):
    scales = (F32(input_scale) * np.asarray(weight_scales, F32)).astype(F32)
    q = np.rint(np.asarray(b, F32).astype(np.float64) / scales.astype(np.float64))
    return scales, np.clip(q, np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max).astype(np.int32)


def bits(a):
    """float32 values as their bit patterns, for exact comparison in JSON."""
    return np.asarray(a, F32).view(np.uint32).tolist()


def formulas(path_in, path_out):
    spec = json.load(open(path_in))
    out = {"activations": [], "weights": [], "biases": []}
    for a in spec["activations"]:
        scale, zero = activation_params(a["min"], a["max"])
        q = quantize_u8(a["values"], scale, zero)
        out["activations"].append(
            {"scale": bits([scale])[0], "zero_point": zero, "quantized": q.tolist(),
             "dequantized": bits(dequantize_u8(q, scale, zero))}
        )
    for w in spec["weights"]:
        scales, q = quantize_weights(np.asarray(w["values"], F32).reshape(w["dims"]), w["axis"])
        out["weights"].append({"scales": bits(scales), "values": q.ravel().tolist()})
    for b in spec["biases"]:
        scales, q = quantize_bias(b["values"], b["input_scale"], b["weight_scales"])
        out["biases"].append({"scales": bits(scales), "values": q.tolist()})
    json.dump(out, open(path_out, "w"))


def model(f32_path, int8_path, check_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    f32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(f32_path).graph.initializer}
    q = onnx.load(int8_path)
    consts = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    consumers = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    checked = {"weights": 0, "biases": 0, "activation_pairs": 0}
    for n in q.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in consts:
            continue
        name = n.input[0].rsplit("/", 1)[0]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        stored, scales, zero = (consts[i] for i in n.input)
        assert axis == 0, f"{n.name}: per-channel axis {axis}, expected the output axis 0"
        assert scales.shape == (stored.shape[0],), f"{n.name}: {scales.shape} scales for {stored.shape}"
        assert not zero.any(), f"{n.name}: zero points must be 0 (symmetric)"
        if stored.dtype == np.int8:
            want_scales, want = quantize_weights(f32[name], 0)
            assert np.array_equal(scales.view(np.uint32), want_scales.view(np.uint32)), f"{name}: weight scales"
            assert np.array_equal(stored, want), f"{name}: int8 weights differ from numpy's"
            checked["weights"] += 1
        else:
            assert stored.dtype == np.int32, f"{name}: {stored.dtype}"
            # The bias's layer: its input's scale times the layer's weight scales.
            layer = consumers[n.output[0]][0]
            x_dq = next(m for m in q.graph.node if layer.input[0] in m.output)
            input_scale = consts[x_dq.input[1]]
            weight_scales = consts[next(m for m in q.graph.node if layer.input[1] in m.output).input[1]]
            want_scales, want = quantize_bias(f32[name], input_scale, weight_scales)
            assert np.array_equal(scales.view(np.uint32), want_scales.view(np.uint32)), f"{name}: bias scales"
            assert np.array_equal(stored, want), f"{name}: int32 bias differs from numpy's"
            checked["biases"] += 1
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            scale, zero = consts[n.input[1]], consts[n.input[2]]
            assert scale.shape == () and zero.dtype == np.uint8, f"{n.name}: per-tensor uint8 expected"
            assert scale > 0 and np.isfinite(scale), f"{n.name}: scale {scale}"
            # 0 is exact: the zero point dequantizes to 0.
            assert dequantize_u8(zero, scale, int(zero)) == 0
            checked["activation_pairs"] += 1
    x = np.load(check_path).astype(F32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(int8_path, options, providers=["CPUExecutionProvider"]).run(None, {"patches": x})[0]
    reference = ort.InferenceSession(f32_path, providers=["CPUExecutionProvider"]).run(None, {"patches": x})[0]
    d = np.abs(exact.astype(np.float64) - reference)
    checked.update({"max_abs": float(d.max()), "mean_abs": float(d.mean()), "logits": exact.ravel().tolist()})
    print(json.dumps(checked))


if __name__ == "__main__":
    if sys.argv[1] == "formulas":
        formulas(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "model":
        model(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)

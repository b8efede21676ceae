"""Which layers carry bf16's error, and which to keep in f32? Each layer of a medpatch model alone in bf16 (the rest
f32), on OpenVINO's CPU plugin with native bf16 kernels, against f32 on the engine's self-check patches, measured
against both halves of the bf16 self-check's bound (engine/src/backend/precision.rs): every patch logit within
0.05 + 0.05·|z_f32|, or max and mean |Δ| within twice what rounding the check image to 8 bits does to the f32
logits. Then whole-model mixes (layers kept in f32, as `--keep-f32` keeps them) with their speed, and the largest
set of bf16 layers that passes the per-logit bound alone. The measurement behind docs/precision.md ("bf16").

    .venv/bin/python scripts/bf16_layers.py [--model models/default/medpatch-default.onnx] [--threads 2]
    .venv/bin/python scripts/bf16_layers.py --model S.onnx --speed-only [--rounds 15]

`--speed-only`: f32, OpenVINO's bf16 hint and the bf16 graph with nothing and with the stem and classifier kept in
f32, compiled side by side in this process and timed interleaved (for a large model, where the per-layer table
would take long).

Needs a CPU whose OpenVINO reports BF16 (AVX512-BF16 or AMX).

A layer runs in bf16 in a mixed-precision graph, as the engine writes it (engine/src/backend/bf16_graph.rs): its
weights stored as bfloat16, a Cast to bfloat16 where its input comes from an f32 layer and a Cast back where an f32
layer reads it; compiled at OpenVINO's f32 hint, OpenVINO runs the bfloat16 nodes in its bf16 kernels and the
others in f32. Layers follow the exporter's names: a convolution with its SiLU, a squeeze-excitation module, a
residual sum, the pooling, the classifier.
"""
import argparse
import re
import time

import numpy as np
import onnx
import openvino as ov
from onnx import TensorProto, helper, numpy_helper


def synthetic_xray(side=512):
    """engine/src/backend/precision.rs `synthetic_xray`, transcribed (f32 arithmetic, the same noise)."""
    f = np.float32
    noise = np.empty(side * side, f)
    state = 0x9E3779B9
    for i in range(side * side):
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        noise[i] = f(state) / f(4294967295.0) - f(0.5)
    y, x = np.mgrid[0:side, 0:side].astype(f)
    u, v = x / f(side), y / f(side)
    p = f(0.55) + f(0.15) * v - f(0.1) * ((u - f(0.5)) * f(2)) ** 2
    for cx in (f(0.3), f(0.7)):
        d = ((u - cx) / f(0.17)) ** 2 + ((v - f(0.48)) / f(0.3)) ** 2
        p = np.where(d < 1, p - f(0.35) * np.sqrt(np.maximum(f(1) - d, f(0))), p)
    p = p + f(0.3) * np.exp(-(((u - f(0.5)) / f(0.06)) ** 2))
    rib = np.sin(v * f(40) + f(6) * (u - f(0.5)) ** 2 * f(10))
    p = np.where((rib > 0.85) & (u >= 0.12) & (u < 0.88), p + f(0.08), p)
    p = p + f(0.03) * noise.reshape(side, side)
    return np.clip(p, 0, 1).astype(f)


def check_patches():
    a = synthetic_xray()
    return np.ascontiguousarray(a.reshape(8, 64, 8, 64).transpose(0, 2, 1, 3).reshape(64, 1, 64, 64))


def layers_of(graph):
    """Layer names in graph order: convolutions (without `.conv`), squeeze-excitations, residual sums, pooling."""
    names = []
    for n in graph.node:
        if n.op_type in ("Conv", "Gemm"):
            name = re.sub(r"\.fc[12]$", "", n.name[:-5] if n.name.endswith(".conv") else n.name)
        elif n.name.endswith(".residual") or n.name in ("avgpool", "flatten"):
            name = n.name
        else:
            continue
        if name not in names:
            names.append(name)
    return names


def layer_of(node, layers):
    best = None
    for layer in layers:
        if node == layer or node.startswith(layer + "."):
            best = layer if best is None or len(layer) > len(best) else best
    return best


def bf16_bits(a):
    u = np.asarray(a, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def mixed(model_path, bf16_layers):
    """The model with `bf16_layers` in bfloat16 (see the module's docstring), as bytes."""
    m = onnx.load(model_path)
    g = m.graph
    layers = layers_of(g)
    precision = {n.name: "bf16" if layer_of(n.name, layers) in bf16_layers else "f32" for n in g.node}
    producer = {o: n for n in g.node for o in n.output}
    constants = {t.name: t for t in g.initializer}
    nodes, made, new_constants = [], set(), []
    for n in g.node:
        p = precision[n.name]
        for i, x in enumerate(n.input):
            if x in constants:
                if p == "bf16":
                    name = x + "/bf16"
                    if name not in made:
                        t = constants[x]
                        b = onnx.TensorProto(name=name, dims=t.dims, data_type=TensorProto.BFLOAT16)
                        b.raw_data = bf16_bits(numpy_helper.to_array(t)).tobytes()
                        new_constants.append(b)
                        made.add(name)
                    n.input[i] = name
                continue
            source = precision[producer[x].name] if x in producer else "f32"
            if source != p:
                name = f"{x}/{p}"
                if name not in made:
                    to = TensorProto.BFLOAT16 if p == "bf16" else TensorProto.FLOAT
                    nodes.append(helper.make_node("Cast", [x], [name], to=to, name=f"cast:{name}"))
                    made.add(name)
                n.input[i] = name
        nodes.append(n)
    output = g.output[0].name
    if precision[producer[output].name] == "bf16":
        producer[output].output[0] = output + "/bf16"
        nodes.append(helper.make_node("Cast", [output + "/bf16"], [output], to=TensorProto.FLOAT, name="cast:out"))
    used = {x for n in nodes for x in n.input}
    del g.node[:]
    g.node.extend(nodes)
    kept = [t for t in g.initializer if t.name in used] + new_constants
    del g.initializer[:]
    g.initializer.extend(kept)
    return m.SerializeToString()


def macs(model_path):
    """Multiply-accumulates per patch of each layer (convolutions and the classifier)."""
    import onnx.shape_inference

    m = onnx.shape_inference.infer_shapes(onnx.load(model_path))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(m.graph.value_info) + list(m.graph.output)}
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    layers = layers_of(m.graph)
    count = {layer: 0 for layer in layers}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            out = shapes.get(n.output[0], [1, 1, 1, 1])
            spatial = out[2] * out[3] if n.op_type == "Conv" else 1
            count[layer_of(n.name, layers)] += int(np.prod(dims[n.input[1]])) * spatial
    return count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/default/medpatch-default.onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise SystemExit("this CPU has no BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES")
    x = check_patches()
    settings = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}

    def compiled(model, hint="f32"):
        m = core.read_model(model, b"") if isinstance(model, bytes) else core.read_model(model)
        return core.compile_model(m, "CPU", {**settings, "INFERENCE_PRECISION_HINT": hint})

    if args.speed_only:
        layers = layers_of(onnx.load(args.model).graph)
        kept = {layers[0], "avgpool", "flatten", "classifier.1"}
        runs = {"OpenVINO f32": compiled(args.model), "OpenVINO bf16 hint (whole model)": compiled(args.model, "bf16"),
                "bf16 graph, nothing kept": compiled(mixed(args.model, set(layers))),
                "bf16 graph, stem and classifier in f32": compiled(mixed(args.model, set(layers) - kept))}
        requests = {name: c.create_infer_request() for name, c in runs.items()}
        times = {name: [] for name in runs}
        for r in requests.values():
            r.infer([x])
        for _ in range(args.rounds):
            for name, r in requests.items():
                t = time.perf_counter()
                r.infer([x])
                times[name].append(1000 * (time.perf_counter() - t))
        f32_ms = np.median(times["OpenVINO f32"])
        print(f"| {args.model}, 64 patches, {args.threads} threads | median ms | min ms | f32 / this |\n|---|---|---|---|")
        for name, v in times.items():
            print(f"| {name} | {np.median(v):.1f} | {np.min(v):.1f} | {f32_ms / np.median(v):.2f}× |")
        return
    reference = compiled(args.model)(x)[0]
    rounded = np.ascontiguousarray(np.round(x * 255) / 255, dtype=np.float32)
    rounding = np.abs(compiled(args.model)(rounded)[0] - reference)
    r_max, r_mean = float(rounding.max()), float(rounding.mean())

    def error(z):
        """max |Δ|, mean |Δ|, × the per-logit bound, × the rounding bound (2× what 8-bit rounding does)."""
        d = np.abs(z - reference)
        per_logit = float(np.max(d / (0.05 + 0.05 * np.abs(reference))))
        return float(d.max()), float(d.mean()), per_logit, max(d.max() / (2 * r_max), d.mean() / (2 * r_mean))

    def speed(c, repeats=15):
        r = c.create_infer_request()
        r.infer([x])
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            r.infer([x])
            times.append(time.perf_counter() - t)
        return 1000 * float(np.median(times))

    layers = layers_of(onnx.load(args.model).graph)
    mac = macs(args.model)
    total = sum(mac.values())
    whole = compiled(args.model, "bf16")
    m, mean, f, g = error(whole(x)[0])
    print(f"f32 patch logits up to ±{np.abs(reference).max():.1f} (mean |z| {np.abs(reference).mean():.2f}); the check "
          f"image rounded to 8 bits moves them by max {r_max:.3f}, mean {r_mean:.4f} in f32. The whole model at "
          f"OpenVINO's bf16 hint: max |Δ| {m:.3f}, mean {mean:.4f}: {f:.1f}× the per-logit bound, {g:.2f}× the rounding "
          f"bound\n")
    print("| layer | share of MACs | alone in bf16: max \\|Δ patch logit\\| | mean | × per-logit bound | × rounding bound |")
    print("|---|---|---|---|---|---|")
    alone = {}
    for layer in layers:
        m, mean, f, g = error(compiled(mixed(args.model, {layer}))(x)[0])
        alone[layer] = f
        print(f"| {layer} | {100 * mac[layer] / total:.1f}% | {m:.3f} | {mean:.4f} | {f:.2f} | {g:.2f} |", flush=True)

    f32_ms = speed(compiled(args.model))
    print(f"\nWhole-model mixes, {args.threads} threads, 64 patches; f32 {f32_ms:.1f} ms, the bf16 hint "
          f"{speed(whole):.1f} ms:\n")
    print("| kept in f32 | MACs in bf16 | max \\|Δ\\| | mean \\|Δ\\| | × per-logit bound | × rounding bound | ms | f32 / this |")
    print("|---|---|---|---|---|---|---|---|")
    groups = {"stem": {layers[0]}, "head": {layers[-4]}, "classifier": {"avgpool", "flatten", "classifier.1"}}
    for keep in (["none"], ["stem"], ["classifier"], ["stem", "classifier"], ["stem", "head", "classifier"]):
        kept = set().union(*(groups.get(k, set()) for k in keep))
        c = compiled(mixed(args.model, set(layers) - kept))
        m, mean, f, g = error(c(x)[0])
        share = 100 * sum(mac[l] for l in layers if l not in kept) / total
        ms = speed(c)
        print(f"| {','.join(keep)} | {share:.1f}% | {m:.3f} | {mean:.4f} | {f:.2f} | {g:.2f} | {ms:.1f} | {f32_ms / ms:.2f}× |",
              flush=True)

    # Greedy, against the per-logit bound alone: the layers with the least error per MAC first, each kept in bf16
    # only if the model still passes.
    chosen = set()
    for layer in sorted(layers, key=lambda l: alone[l] / (mac[l] + 1)):
        if alone[layer] > 1:
            continue
        if error(compiled(mixed(args.model, chosen | {layer}))(x)[0])[2] <= 1:
            chosen.add(layer)
    share = sum(mac[l] for l in chosen) / total
    print(f"\nLayers alone within the per-logit bound: {sum(f <= 1 for f in alone.values())} of {len(layers)}. The "
          f"largest set passing it found (greedy): {sorted(chosen)}, {100 * share:.1f}% of the MACs in bf16, "
          f"{speed(compiled(mixed(args.model, chosen))):.1f} ms against f32 {f32_ms:.1f} ms.")


if __name__ == "__main__":
    main()

"""Python runtimes timed for `medpatch bench`, each in its own process (so that its peak RSS is its
own): onnxruntime or OpenVINO on the same ONNX file, same threads, same preprocessed 512×512 image
(64 patches), tiled and averaged in numpy exactly as medpatch does. Each runtime runs at its
documented best settings for latency, printed in its row's name. int8 means the model is a QDQ
graph (from `medpatch quantize`): both runtimes run its integer kernels by themselves.

Usage: bench_runtimes.py --runtime onnxruntime|openvino [--precision f32|bf16|int8] --model M.onnx
                         --threads N --repeats R IMAGE.npy
Prints one JSON line: {"name", "median_ms", "min_ms", "peak_rss_mb", "logits"}, or exits
with status 3 and a message when the runtime is not installed or cannot run the precision.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np


def patches(image: np.ndarray, patch: int) -> np.ndarray:
    """[H, W] → [grid², 1, patch, patch], row-major over the grid (medpatch's tile order)."""
    grid = image.shape[0] // patch
    tiles = image.reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(tiles.reshape(grid * grid, 1, patch, patch), dtype=np.float32)


def onnxruntime_runner(model: str, threads: int, precision: str):
    if precision not in ("f32", "int8"):
        raise SystemExit(f"onnxruntime (CPU) runs f32 or a QDQ (int8) model only, not {precision}")
    import onnxruntime as ort

    # Its documented latency settings: every graph optimisation, sequential execution, the
    # intra-op pool at the thread count (spinning on, its default).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    settings = f"ORT_ENABLE_ALL, sequential, intra_op_num_threads={threads}"
    return f"onnxruntime-python {ort.__version__} CPU, {precision} ({settings})", lambda x: session.run(None, {name: x})[0]


def openvino_runner(model: str, threads: int, precision: str):
    import openvino as ov

    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise SystemExit("OpenVINO: this CPU has no BF16")
    # Its documented latency settings: the LATENCY hint, the thread count, the precision hint
    # (f32 for a QDQ model: its quantized parts run in integers, the rest stays f32).
    hint = "f32" if precision == "int8" else precision
    settings = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    core.set_property("CPU", settings)
    compiled = core.compile_model(model, "CPU")
    request = compiled.create_infer_request()
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    return f"openvino-python {ov.__version__} CPU, {precision} ({shown})", lambda x: request.infer([x])[0]


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries the parent's
    peak into a forked child, so under `medpatch bench` it would report medpatch's."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", required=True, choices=["onnxruntime", "openvino"])
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16", "int8"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("image")
    args = ap.parse_args()
    try:
        make = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}[args.runtime]
        name, run = make(args.model, args.threads, args.precision)
    except ImportError as e:
        print(f"{args.runtime} is not installed in {sys.executable}: {e}", file=sys.stderr)
        sys.exit(3)
    except SystemExit as e:
        print(e, file=sys.stderr)
        sys.exit(3)
    image = np.load(args.image)

    def forward() -> np.ndarray:
        return np.asarray(run(patches(image, args.patch))).mean(axis=0)

    logits = forward()  # warm-up
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        forward()
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({
        "name": name,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "peak_rss_mb": peak_rss_mb(),
        "logits": [float(v) for v in logits],
    }))


if __name__ == "__main__":
    main()

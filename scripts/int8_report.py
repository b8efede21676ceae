"""What int8 costs the demo model's classification and explanation, and what it buys in speed, with
ONNX Runtime's `quantize_static` and OpenVINO NNCF as anchors on the same model and calibration images:
the measurement behind docs/precision.md. A documented command, not a test (about half an hour on 2 cores).

    .venv/bin/python scripts/int8_report.py [--out runs/int8] [--calibration 32] [--bootstrap 1000]

Needs `target/debug/medpatch` and `target/debug/examples/synth` (`cargo build --workspace --examples`), the venv of
scripts/setup.sh (onnxruntime, openvino, nncf, torch, scikit-learn, scipy), and `../shared` for the NIH rows.

1. The synthetic benchmark (seed 0; the demo model's validation and test splits: 200 + 300 images).
2. Calibration set: the first --calibration validation images, in CSV order, linked into OUT/calibration.
3. medpatch quantize (minmax, percentile:99.999; minmax laid out for OpenVINO, run there); quantize_static (uint8 activations, per-channel int8 weights,
   the same layers kept in f32; and its defaults); NNCF (the same layers ignored; and its defaults). The anchors
   read the calibration images through the seed's preprocessing (PIL, torchvision's centre crop and antialiased
   bilinear resize), medpatch through its own (matched to it, docs/speed.md).
4. The 300 test images: `medpatch evaluate` for f32 and medpatch's int8 (AUROC per class, hit rate of the 8×8 and
   the dense maps), `medpatch evaluate --predictions` for the anchors (their patch logits from onnxruntime-python);
   agreement with f32 per image: max and mean |Δ patch logit|, Spearman rank correlation of each class's 8×8 map,
   how often the top patch is the same.
5. The NIH X-rays: medpatch f32 against int8, agreement only (no labels).
6. Speed, full S with random weights (`medpatch export --random-init`): `medpatch bench` f32 against int8 (ONNX
   Runtime, OpenVINO; bf16 for reference), 2 threads, one run; onnxruntime-python and openvino-python on each int8
   model (medpatch's for each target, quantize_static's, NNCF's), interleaved in one process.
"""
import argparse
import csv
import datetime
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEEP_NODES = ("features.0.", "avgpool", "flatten", "classifier.1")


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def run(cmd, env=None, capture=False):
    log("$", " ".join(str(c) for c in cmd))
    out = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}): {' '.join(map(str, cmd))}\n{out.stderr[-4000:]}")
    return out.stdout if capture else out.stderr


def medpatch_env():
    env = dict(os.environ)
    site = next((ROOT / ".venv/lib").glob("python3*/site-packages"))
    env.setdefault("ORT_DYLIB_PATH", str(next((site / "onnxruntime/capi").glob("libonnxruntime.so.*"))))
    env.setdefault("OPENVINO_LIB_PATH", str(site / "openvino/libs"))
    return env


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def seed_preprocess(path):
    """The seed's preprocessing: PIL grayscale, to_tensor, CenterCrop(shorter side), Resize(512, antialias)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    a = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255)
    h, w = a.shape
    side = min(h, w)
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    a = a[top:top + side, left:left + side][None, None]
    a = F.interpolate(a, size=(512, 512), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    return np.ascontiguousarray(a.reshape(8, 64, 8, 64).transpose(0, 2, 1, 3).reshape(64, 1, 64, 64))


def rank_rows(a):
    """Ranks along axis 1 (ties averaged), as scipy.stats.rankdata."""
    from scipy.stats import rankdata

    return rankdata(a, axis=1)


def agreement(reference, other):
    """reference, other: [images, 64, classes] patch logits."""
    d = np.abs(other.astype(np.float64) - reference)
    ra, rb = rank_rows(reference), rank_rows(other)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return {
        "max_abs": float(d.max()),
        "mean_abs": float(d.mean()),
        "spearman_mean": float(np.nanmean(rho)),
        "spearman_p5": float(np.nanpercentile(rho, 5)),
        "spearman_min": float(np.nanmin(rho)),
        "top_patch_same": float((reference.argmax(1) == other.argmax(1)).mean()),
    }


def auroc(scores, labels):
    """AUROC of each column (Mann–Whitney, ties averaged); NaN where a column has one label value."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    pos = labels.sum(0)
    neg = len(labels) - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * labels).sum(0) - pos * (pos + 1) / 2) / (pos * neg)


def paired_bootstrap(logits_a, logits_b, labels, draws=1000):
    """Mean AUROC of a minus b (image logits = mean patch logit), and its 95% interval over the same resamples of
    the images for both."""
    a, b = logits_a.mean(1), logits_b.mean(1)
    delta = lambda idx: np.nanmean(auroc(a[idx], labels[idx]) - auroc(b[idx], labels[idx]))
    rng = np.random.default_rng(0)
    draws = [delta(rng.integers(0, len(labels), len(labels))) for _ in range(draws)]
    return float(delta(np.arange(len(labels)))), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def read_patch_logits(records, images):
    """Each image's patch logits, from the `outputs.patch_logits` of its record in a JSON Lines file (file stems
    repeat in the synthetic split: view1_frontal.jpg in every study, so the records say which file is whose)."""
    saved = {}
    for line in open(records):
        r = json.loads(line)
        saved[r["input"]] = r["outputs"]["patch_logits"]
    return np.stack([np.load(saved[str(p)]).reshape(64, -1) for p in images])


def medpatch_predictions(medpatch, model, precision, threads, folder, images, env, provider="cpu"):
    """`medpatch predict --out folder` on the images, its records kept beside the outputs; their JSON Lines path."""
    records = folder / "predictions.jsonl"
    if not records.exists():
        text = run([medpatch, "predict", "--model", model, "--precision", precision, "--provider", provider, "--threads",
                    threads, "--out", folder, *images], env=env, capture=True)
        records.write_text(text)
    return records


def evaluation(report):
    r = json.load(open(report))
    classes = {c["class"]: c["auroc"] for c in r["classification"]["classes"]}
    hits = {}
    for t in (r.get("localization") or {}).get("tasks", []):
        hits[t.get("task")] = t.get("hit_rate")
    return {"auroc": classes, "mean_auroc": float(np.mean([v for v in classes.values() if v is not None])), "hit_rate": hits}


def ort_session(path, threads=2, optimize=True):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    if not optimize:
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def anchors(model, out, calib, tag):
    """quantize_static and NNCF on `model` with calibration patches `calib` [n, 1, 64, 64]."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(model).graph
    keep = [n.name for n in graph.node if n.name.startswith(KEEP_NODES[0]) or n.name in KEEP_NODES[1:]]
    batches = [calib[i:i + 64] for i in range(0, len(calib), 64)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"patches": b}

    made = {}
    configs = {
        "quantize_static u8/s8 per-channel, minmax, stem+classifier f32": dict(
            activation_type=QuantType.QUInt8, per_channel=True, nodes_to_exclude=keep),
        "quantize_static u8/s8 per-channel, percentile, stem+classifier f32": dict(
            activation_type=QuantType.QUInt8, per_channel=True, nodes_to_exclude=keep,
            calibrate_method=CalibrationMethod.Percentile),
        "quantize_static defaults (s8/s8 per-tensor, minmax)": dict(),
    }
    for i, (name, kw) in enumerate(configs.items()):
        path = out / f"{tag}.quantize_static.{i}.onnx"
        if not path.exists():
            t = time.time()
            quantize_static(model, path, Reader(), quant_format=QuantFormat.QDQ, **kw)
            log(f"{name}: {time.time() - t:.1f} s")
        made[name] = path
    try:
        import nncf
    except ImportError as e:
        log(f"NNCF not installed ({e}): its rows are left out")
        return made
    for i, (name, ignored) in enumerate((("NNCF, stem+classifier ignored", keep), ("NNCF defaults", []))):
        path = out / f"{tag}.nncf.{i}.onnx"
        if not path.exists():
            t = time.time()
            scope = nncf.IgnoredScope(names=ignored) if ignored else None
            q = nncf.quantize(onnx.load(model), nncf.Dataset(batches, lambda b: {"patches": b}),
                              subset_size=len(calib), ignored_scope=scope)
            onnx.save(q, path)
            log(f"{name}: {time.time() - t:.1f} s")
        made[name] = path
    return made


def write_predictions(folder, model_name, images, logits, classes):
    """Patch logits as `medpatch predict --out` writes them, and a JSON Lines file for `medpatch evaluate`."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions.jsonl", "w") as f:
        for i, (path, z) in enumerate(zip(images, logits)):
            # Numbered: the split's file stems repeat (view1_frontal in every study).
            npy = folder / f"{i:04d}-{Path(path).stem}.patch_logits.npy"
            np.save(npy, z.reshape(8, 8, -1).astype(np.float32))
            image = z.mean(0)
            record = {"input": str(path), "model": model_name,
                      "probabilities": {c: float(1 / (1 + np.exp(-v))) for c, v in zip(classes, image)},
                      "logits": {c: float(v) for c, v in zip(classes, image)}, "outputs": {"patch_logits": str(npy)}}
            f.write(json.dumps(record) + "\n")


def timed(runs, repeats=7):
    """Interleaved medians (ms) of each name's callable."""
    times = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - t))
    return {name: float(np.median(v)) for name, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/int8")
    ap.add_argument("--medpatch", default="target/debug/medpatch")
    ap.add_argument("--synth", default="target/debug/examples/synth")
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--speed-calibration", type=int, default=4, help="calibration images for the full S model")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--shift-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    os.chdir(ROOT)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = medpatch_env()
    medpatch = str(Path(args.medpatch).resolve())
    threads = str(args.threads)
    demo = ROOT / "models/default/medpatch-default.onnx"
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(), "threads": args.threads,
              "calibration_images": args.calibration}

    data = out / "synth"
    if not (data / "test_labels.csv").exists():
        run([args.synth, data, 0, 0, 200, 300, args.threads])
    rows = lambda name: list(csv.DictReader(open(data / name)))
    valid, test = rows("valid.csv"), rows("test_labels.csv")
    classes = list(test[0].keys())[5:]
    calib_dir = out / "calibration"
    calib_dir.mkdir(exist_ok=True)
    calib_files = [data / r["Path"] for r in valid[:args.calibration]]
    for i, f in enumerate(calib_files):
        link = calib_dir / f"{i:04d}.jpg"
        if not link.exists():
            link.symlink_to(f)
    test_images = [data / r["Path"] for r in test]

    # 3. Quantize: medpatch, then the anchors.
    ours = {"medpatch quantize, minmax": out / "demo.int8.onnx",
            "medpatch quantize, percentile:99.999": out / "demo.int8.p99999.onnx",
            "medpatch quantize --target openvino, minmax": out / "demo.int8.openvino.onnx"}
    for (name, path), (method, target) in zip(ours.items(), (("minmax", "onnxruntime"), ("percentile:99.999", "onnxruntime"),
                                                             ("minmax", "openvino"))):
        t = time.time()
        text = run([medpatch, "quantize", "--model", demo, "--calibrate", calib_dir, "--method", method,
                    "--target", target, "--threads", threads, "-o", path], env=env)
        report.setdefault("quantize", {})[name] = {"seconds": round(time.time() - t, 1), "log": text.strip()}
    calib = np.concatenate([seed_preprocess(f) for f in calib_files])
    theirs = anchors(str(demo), out, calib, "demo")

    # 4. The test split.
    evals = {}

    def evaluate(name, extra):
        folder = out / "eval" / re.sub(r"[^a-z0-9]+", "-", name.lower())
        if not (folder / "report.json").exists():
            run([medpatch, "evaluate", *extra, "--csv", data / "test_labels.csv", "--gt",
                 data / "gt_segmentations_test.json", "--bootstrap", args.bootstrap, "--quiet", "--out", folder], env=env)
        return evaluation(folder / "report.json")

    for name, model, precision in [("f32", demo, "f32")] + [(n, p, "int8") for n, p in ours.items()]:
        provider = "openvino" if "--target openvino" in name else "cpu"  # each layout on its runtime
        engine = ["--model", model, "--precision", precision, "--provider", provider, "--threads", threads]
        evals[name] = evaluate(name, engine)
        if name in ("f32", "medpatch quantize, minmax"):
            dense = evaluate(f"{name} dense", engine + ["--shift-steps", args.shift_steps])
            evals[name]["dense_hit_rate"] = dense["hit_rate"]
        pred = out / "pred" / re.sub(r"[^a-z0-9]+", "-", name.lower())
        records = medpatch_predictions(medpatch, model, precision, threads, pred, test_images, env, provider)
        evals[name]["patch_logits"] = read_patch_logits(records, test_images)
    # The anchors (and f32, for like-for-like agreement) through onnxruntime-python on the seed's preprocessing.
    test_patches = np.stack([seed_preprocess(p) for p in test_images])
    python_logits = {}
    for name, model in [("f32 (onnxruntime-python)", demo)] + list(theirs.items()):
        session = ort_session(model, args.threads)
        python_logits[name] = np.stack([session.run(None, {"patches": x})[0] for x in test_patches])
        if name.startswith("f32"):
            continue
        folder = out / "pred" / re.sub(r"[^a-z0-9]+", "-", name.lower())
        write_predictions(folder, name, test_images, python_logits[name], classes)
        evals[name] = evaluate(name, ["--predictions", folder / "predictions.jsonl"])
    table = []
    f32 = evals["f32"]
    for name, e in evals.items():
        reference = python_logits["f32 (onnxruntime-python)"] if name in theirs else f32["patch_logits"]
        z = python_logits[name] if name in theirs else e["patch_logits"]
        row = {"model": name, "mean_auroc": e["mean_auroc"], "delta_mean_auroc": e["mean_auroc"] - f32["mean_auroc"],
               "worst_class_delta": min(e["auroc"][c] - f32["auroc"][c] for c in e["auroc"] if e["auroc"][c] is not None),
               "auroc": e["auroc"], "hit_rate": e["hit_rate"], "dense_hit_rate": e.get("dense_hit_rate")}
        row.update(agreement(reference, z))
        table.append(row)
    report["test_split"] = table
    # Like for like: medpatch's model against the anchor with the same settings, on the same images.
    labels = np.array([[float(r[c]) for c in classes] for r in test])
    logits = {**python_logits, **{n: e["patch_logits"] for n, e in evals.items() if n not in theirs}}
    report["paired"] = []
    for ours_name, theirs_name in (("medpatch quantize, minmax", "quantize_static u8/s8 per-channel, minmax, stem+classifier f32"),
                                   ("medpatch quantize, percentile:99.999",
                                    "quantize_static u8/s8 per-channel, percentile, stem+classifier f32"),
                                   ("medpatch quantize --target openvino, minmax", "NNCF, stem+classifier ignored")):
        if ours_name in logits and theirs_name in logits:
            d, low, high = paired_bootstrap(logits[ours_name], logits[theirs_name], labels)
            report["paired"].append({"ours": ours_name, "theirs": theirs_name, "delta_mean_auroc": d,
                                     "ci95": [low, high]})

    # 5. NIH X-rays: agreement only.
    nih = sorted((ROOT.parent / "shared/data/cxr/nih/images").glob("*.png"))
    if nih:
        nih_logits = {}
        for name, model, precision in (("f32", demo, "f32"), ("int8", ours["medpatch quantize, minmax"], "int8")):
            records = medpatch_predictions(medpatch, model, precision, threads, out / "nih" / name, nih, env)
            nih_logits[name] = read_patch_logits(records, nih)
        report["nih"] = {"images": len(nih), **agreement(nih_logits["f32"], nih_logits["int8"])}

    # 6. Speed, full S.
    if not args.skip_speed:
        s = out / "s.onnx"
        if not s.exists():
            run([medpatch, "export", "--random-init", "-o", s], env=env)
        s8 = out / "s.int8.onnx"
        if not s8.exists():
            t = time.time()
            text = run([medpatch, "quantize", "--model", s, "--calibrate", *calib_files[:args.speed_calibration],
                        "--threads", threads, "-o", s8], env=env)
            report["quantize_s"] = {"seconds": round(time.time() - t, 1), "log": text.strip()}
        s8_openvino = out / "s.int8.openvino.onnx"
        if not s8_openvino.exists():
            run([medpatch, "quantize", "--model", s, "--calibrate", *calib_files[:args.speed_calibration],
                 "--target", "openvino", "--threads", threads, "-o", s8_openvino], env=env)
        s_theirs = anchors(str(s), out, calib[:64 * args.speed_calibration], "s")
        bench = run([medpatch, "bench", "--model", s, "--int8-model", s8, "--threads", threads, "--repeats", 7,
                     "--providers", "cpu,cpu:int8,openvino,openvino:int8,openvino:bf16",
                     "--python-runtimes", "onnxruntime,onnxruntime:int8,openvino,openvino:int8", "--shift-steps", 0,
                     "--json"], env=env, capture=True)
        report["bench"] = json.loads(bench)
        import openvino as ov

        x = np.random.default_rng(0).random((64, 1, 64, 64), dtype=np.float32)
        models = {"f32": s, "medpatch quantize": s8, "medpatch quantize --target openvino": s8_openvino, **s_theirs}
        ort_runs = {n: (lambda sess: (lambda: sess.run(None, {"patches": x})))(ort_session(m, args.threads))
                    for n, m in models.items()}
        report["python_speed_ms"] = {"onnxruntime": timed(ort_runs)}
        # ONNX Runtime's sessions go before OpenVINO is timed: alive, their thread pools slowed OpenVINO's
        # runs by up to 1.8× on 2 cores (measured: the same models 177 ms beside them, 103 ms alone).
        del ort_runs
        gc.collect()
        core = ov.Core()
        settings = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
        ov_runs = {}
        for n, m in models.items():
            request = core.compile_model(str(m), "CPU", settings).create_infer_request()
            ov_runs[n] = (lambda r: (lambda: r.infer([x])))(request)
        report["python_speed_ms"]["openvino"] = timed(ov_runs)

    for row in report["test_split"]:
        row.pop("patch_logits", None)
    for e in evals.values():
        e.pop("patch_logits", None)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(markdown(report, classes))


def markdown(r, classes):
    lines = [f"{r['date']}, {r['cpu']}, {r['threads']} threads; calibration: the first {r['calibration_images']} "
             "validation images; test: the 300 synthetic test images.", ""]
    lines += ["| model | mean AUROC (Δ vs f32) | worst class Δ | max \\|Δ patch logit\\| | mean \\|Δ\\| | "
              "Spearman of 8×8 maps, mean (5th pct.) | same top patch |", "|---|---|---|---|---|---|---|"]
    for row in r["test_split"]:
        lines.append(f"| {row['model']} | {row['mean_auroc']:.4f} ({row['delta_mean_auroc']:+.4f}) | "
                     f"{row['worst_class_delta']:+.4f} | {row['max_abs']:.2f} | {row['mean_abs']:.3f} | "
                     f"{row['spearman_mean']:.4f} ({row['spearman_p5']:.3f}) | {row['top_patch_same']:.3f} |")
    lines += ["", "| class | " + " | ".join(row["model"] for row in r["test_split"][:3]) + " |",
              "|---|" + "---|" * 3]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(f"{row['auroc'][c]:.3f}" for row in r["test_split"][:3]) + " |")
    if r.get("paired"):
        lines += ["", "| mean AUROC, medpatch minus the anchor (paired bootstrap, 1000 resamples of the 300 images) | Δ | "
                      "95% interval |", "|---|---|---|"]
        for p in r["paired"]:
            lines.append(f"| {p['ours']} − {p['theirs']} | {p['delta_mean_auroc']:+.4f} | "
                         f"{p['ci95'][0]:+.4f} … {p['ci95'][1]:+.4f} |")
    tasks = sorted({t for row in r["test_split"] for t in (row["hit_rate"] or {})})
    if tasks:
        shown = [row for row in r["test_split"][:2]]
        lines += ["", "| hit rate | " + " | ".join(f"{row['model']} grid | dense" for row in shown) + " |",
                  "|---|" + "---|---|" * len(shown)]
        for t in tasks:
            cells = []
            for row in shown:
                cells.append(f"{(row['hit_rate'] or {}).get(t, float('nan')):.3f}")
                cells.append(f"{(row['dense_hit_rate'] or {}).get(t, float('nan')):.3f}")
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if "nih" in r:
        n = r["nih"]
        lines += ["", f"NIH X-rays ({n['images']}), int8 vs f32: max |Δ patch logit| {n['max_abs']:.2f}, mean "
                      f"{n['mean_abs']:.3f}, Spearman mean {n['spearman_mean']:.4f} (min {n['spearman_min']:.3f}), same top "
                      f"patch {n['top_patch_same']:.3f}"]
    if "bench" in r:
        lines += ["", "| full S, 64 patches | latency ms (median) | min ms |", "|---|---|---|"]
        for row in r["bench"]["rows"]:
            lines.append(f"| {row['name']} | {row['latency_median_ms']:.1f} | {row['latency_min_ms']:.1f} |")
        lines += ["", "| full S, in one Python process | " + " | ".join(r["python_speed_ms"]["onnxruntime"]) + " |",
                  "|---|" + "---|" * len(r["python_speed_ms"]["onnxruntime"])]
        for runtime, times in r["python_speed_ms"].items():
            lines.append(f"| {runtime} ms | " + " | ".join(f"{v:.1f}" for v in times.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

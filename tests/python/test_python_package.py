"""`import medpatch`, as installed by `pip install ./python` (scripts/setup.sh does exactly that
into .venv): inputs of every kind, agreement with the `medpatch` CLI, errors, threads, memory.

The CLI binary comes from MEDPATCH_BIN (scripts/test.sh points it at target/debug/medpatch).
"""
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medpatch

REPO = Path(__file__).resolve().parents[2]
CXR = REPO.parent / "shared" / "data" / "cxr"
BUNDLED = REPO / "assets" / "00001369_000.png"
CLI = Path(os.environ.get("MEDPATCH_BIN", REPO / "target" / "debug" / "medpatch"))

needs_cxr = pytest.mark.skipif(not CXR.is_dir(), reason="../shared/data/cxr (real X-rays) is not beside the checkout")


def real_xrays():
    if not CXR.is_dir():
        return []
    nih = sorted((CXR / "nih" / "images").glob("*.png"))[:3]
    return nih + sorted((CXR / "pediatric").glob("*.jpeg"))[:2] + sorted((CXR / "dicom").glob("*.dcm"))


@pytest.fixture(scope="module")
def engine():
    return medpatch.Engine(provider="tract", threads=1)


def test_the_three_line_example_in_a_clean_process(tmp_path):
    # Run from an empty folder so that the installed package, not the source tree, is imported.
    code = (
        "import medpatch\n"
        "eng = medpatch.Engine()\n"
        f"r = eng.predict({str(BUNDLED)!r})\n"
        "print(medpatch.__file__, eng.provider, r.as_dict()['Cardiomegaly'])\n"
    )
    # Without ORT_DYLIB_PATH: the package must find the onnxruntime wheel of its environment itself.
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    location, provider, probability = out.stdout.split()
    assert "site-packages" in location, location
    # The venv has the onnxruntime wheel: auto finds its library without being told.
    assert provider == "cpu", out.stderr
    assert 0.0 < float(probability) < 1.0


def test_shapes_dtypes_and_read_only_arrays(engine):
    r = engine.predict(BUNDLED)
    assert r.probabilities.shape == (14,) and r.probabilities.dtype == np.float32
    assert r.logits.shape == (14,) and r.patch_logits.shape == (8, 8, 14) and r.image.shape == (512, 512)
    assert r.image.dtype == np.float32 and 0.0 <= r.image.min() and r.image.max() <= 1.0
    np.testing.assert_allclose(r.probabilities, 1 / (1 + np.exp(-r.logits)), rtol=0, atol=1e-6)
    # Completeness: the image logits are the mean of the patch logits.
    # (The engine sums in float64; so does the reference, or float32 rounding at logits of ~30 exceeds 1e-5.)
    np.testing.assert_allclose(r.patch_logits.reshape(64, 14).astype(np.float64).mean(0), r.logits, rtol=1e-6, atol=1e-6)
    assert r.patch_logits is r.patch_logits, "the same array each time: built once, not copied per access"
    with pytest.raises(ValueError):
        r.logits[0] = 1.0
    assert list(r.as_dict()) == engine.classes and engine.classes[2] == "Cardiomegaly"
    assert (engine.image_size, engine.patch_size, engine.grid) == (512, 64, 8)
    assert engine.is_default_model and engine.provider == "tract" and engine.skipped == []
    assert set(r.timings) == {"decode", "preprocess", "tile", "backend", "aggregate"}
    assert "Cardiomegaly" in repr(r) or "<medpatch.Result" in repr(r)
    sal = engine.saliency(r)
    assert sal.shape == (14, 512, 512) and sal.dtype == np.float32
    np.testing.assert_array_equal(sal[:, ::64, ::64], r.patch_logits.transpose(2, 0, 1))
    scaled = engine.saliency(r, kind="scaled")
    np.testing.assert_allclose(scaled, sal * r.probabilities[:, None, None], rtol=1e-6, atol=1e-7)
    layer = engine.overlay(r, "Cardiomegaly")
    assert layer.shape == (512, 512, 4) and layer.dtype == np.uint8 and (layer[..., 3] == 128).all()
    np.testing.assert_array_equal(layer, engine.overlay(r, 2))
    # The colours saturate at the model's own range (its metadata), overridable per call.
    limit = engine.overlay_logit_range
    assert 0 < limit <= 200
    t = np.clip(np.clip(sal[2], -200, 200) / limit, -1, 1)
    expected = np.stack([np.where(t >= 0, 1, 1 + t), 1 - np.abs(t), np.where(t >= 0, 1 - t, 1)], axis=-1)
    assert np.abs(layer[..., :3].astype(int) - np.round(255 * expected)).max() <= 1
    wide = engine.overlay(r, 2, logit_range=200.0)
    assert np.abs(wide[..., :3].astype(int) - np.round(255 * expected)).max() > 1 or limit == 200
    with pytest.raises(ValueError, match="logit_range"):
        engine.overlay(r, 2, logit_range=0.0)


def test_path_bytes_and_arrays_give_identical_results(engine):
    by_path = engine.predict(str(BUNDLED))
    by_pathlike = engine.predict(BUNDLED)
    by_bytes = engine.predict(BUNDLED.read_bytes())
    gray = np.asarray(Image.open(BUNDLED).convert("L"))
    by_uint8 = engine.predict(gray)
    by_float = engine.predict(gray.astype(np.float32) / 255.0)
    by_float64 = engine.predict(gray.astype(np.float64) / 255.0)
    by_uint16 = engine.predict(gray.astype(np.uint16) * 257)
    # A non-contiguous view (every column reversed twice = same image, negative strides).
    by_view = engine.predict(np.ascontiguousarray(gray[:, ::-1])[:, ::-1])
    for other in [by_pathlike, by_bytes, by_uint8, by_float, by_float64, by_uint16, by_view]:
        np.testing.assert_array_equal(other.patch_logits, by_path.patch_logits)
        np.testing.assert_array_equal(other.image, by_path.image)


@needs_cxr
@pytest.mark.parametrize("provider", ["tract", "cpu", "openvino"])
def test_equal_to_the_cli_json_and_npy(tmp_path, provider):
    images = real_xrays()
    assert CLI.is_file(), f"{CLI} missing: build the CLI (cargo build) or set MEDPATCH_BIN"
    out_dir = tmp_path / "out"
    cmd = [str(CLI), "predict", "--quiet", "--provider", provider, "--out", str(out_dir), "--classes", "Cardiomegaly"]
    cli = subprocess.run(cmd + [str(p) for p in images], capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in cli.stdout.splitlines()]
    eng = medpatch.Engine(provider=provider)
    assert eng.provider == provider and eng.precision == "f32"
    results = eng.predict_many(images)
    assert len(results) == len(records) == len(images)
    for path, record, result in zip(images, records, results):
        assert isinstance(result, medpatch.Result), result
        assert record["input"] == str(path) and record["provider"] == provider
        np.testing.assert_allclose(result.probabilities, list(record["probabilities"].values()), rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.logits, list(record["logits"].values()), rtol=0, atol=1e-6)
        saved = np.load(record["outputs"]["patch_logits"])
        np.testing.assert_allclose(result.patch_logits, saved, rtol=0, atol=1e-6)
        # One at a time equals batched.
        # OpenVINO picks kernels by batch size: equal to rounding, not bit for bit.
        batch_tolerance = 1e-4 if provider == "openvino" else 1e-6
        np.testing.assert_allclose(eng.predict(path).patch_logits, result.patch_logits, rtol=0, atol=batch_tolerance)


def test_dense_map_matches_the_cli(tmp_path, engine):
    out_dir = tmp_path / "out"
    subprocess.run(
        [str(CLI), "predict", "--quiet", "--provider", "tract", "--threads", "1", "--shift-steps", "2", "--out", str(out_dir), str(BUNDLED)],
        capture_output=True,
        check=True,
    )
    dense = engine.dense_map(engine.predict(BUNDLED), shift_steps=2)
    np.testing.assert_allclose(dense, np.load(out_dir / "00001369_000.dense_2.npy"), rtol=0, atol=1e-6)
    assert dense.shape == (14, 512, 512)


def test_errors_are_python_exceptions(tmp_path, engine):
    with pytest.raises(FileNotFoundError) as missing:
        engine.predict(tmp_path / "missing.png")
    assert missing.value.filename.endswith("missing.png")
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(medpatch.DecodeError, match="notes.png: unrecognised file format"):
        engine.predict(notes)
    with pytest.raises(medpatch.DecodeError, match="truncated"):
        engine.predict(BUNDLED.read_bytes()[:5000])
    with pytest.raises(ValueError, match="2-D grayscale"):
        engine.predict(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="int32 is not supported"):
        engine.predict(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        engine.predict(np.full((4, 4), 3.0, np.float32))
    with pytest.raises(TypeError, match="cannot predict a int"):
        engine.predict(42)
    with pytest.raises(ValueError, match="unknown provider"):
        medpatch.Engine(provider="gpu")
    with pytest.raises(medpatch.ProviderUnavailableError, match="cuda"):
        medpatch.Engine(provider="cuda")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        medpatch.Engine(precision="int4")
    # int8 runs a quantized model only; the message is in Python's spelling.
    with pytest.raises(medpatch.ModelError, match=r'the model is not quantized: precision="int8" runs a model made by'):
        medpatch.Engine(precision="int8")
    with pytest.raises(medpatch.ProviderUnavailableError, match="tract .* runs f32 or fp16 only, not bf16"):
        medpatch.Engine(provider="tract", precision="bf16")
    with pytest.raises(ValueError, match="layers kept in f32 are for precision bf16, not f32"):
        medpatch.Engine(provider="tract", keep_f32=["stem"])
    if platform.machine() == "x86_64":  # tract's fp16 needs an ARM CPU with FP16
        with pytest.raises(medpatch.ProviderUnavailableError, match="tract runs fp16 only on ARM CPUs"):
            medpatch.Engine(provider="tract", precision="fp16")
    with pytest.raises(FileNotFoundError):
        medpatch.Engine(tmp_path / "missing.onnx")
    with pytest.raises(medpatch.ModelError, match="not an ONNX model|no medpatch metadata"):
        medpatch.Engine(b"\x08\x01 not a model")
    bad_model = tmp_path / "notes.onnx"
    bad_model.write_text("nope")
    with pytest.raises(medpatch.ModelError, match="notes.onnx"):
        medpatch.Engine(bad_model, provider="tract")
    r = engine.predict(BUNDLED)
    with pytest.raises(ValueError, match="kind must be"):
        engine.saliency(r, kind="smooth")
    with pytest.raises(ValueError, match="unknown class"):
        engine.overlay(r, "Fractures")
    with pytest.raises(ValueError, match="power of two"):
        engine.dense_map(r, shift_steps=3)
    assert issubclass(medpatch.DecodeError, medpatch.Error) and issubclass(medpatch.BackendError, medpatch.Error)


def test_predict_many_keeps_order_and_returns_errors_in_place(tmp_path, engine):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    items = [BUNDLED, notes, tmp_path / "missing.png", np.zeros((3, 3, 3)), BUNDLED.read_bytes()]
    out = engine.predict_many(items, images_per_batch=2)
    assert [type(o).__name__ for o in out] == ["Result", "DecodeError", "FileNotFoundError", "ValueError", "Result"]
    np.testing.assert_array_equal(out[0].patch_logits, out[4].patch_logits)
    assert engine.predict_many([]) == []
    assert all(isinstance(o, medpatch.DecodeError) for o in engine.predict_many([notes, notes]))


def test_the_gil_is_released_and_threads_share_one_engine(engine):
    expected = engine.predict(BUNDLED).patch_logits.copy()
    ticks = 0
    stop = threading.Event()

    def spin():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.05)
    before = ticks
    dense_started = time.perf_counter()
    engine.dense_map(engine.predict(BUNDLED), shift_steps=4)  # 16 forward passes in Rust
    elapsed = time.perf_counter() - dense_started
    during = ticks - before
    stop.set()
    spinner.join()
    # With the GIL held the spinner could not run at all during the call.
    assert during > 1000, f"the other thread advanced only {during} times in {elapsed:.2f} s"

    results = [None] * 4
    def work(i):
        results[i] = [engine.predict(BUNDLED).patch_logits for _ in range(3)]

    pool = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for per_thread in results:
        for patch_logits in per_thread:
            np.testing.assert_array_equal(patch_logits, expected)


def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_thousand_predictions_keep_memory_flat():
    eng = medpatch.Engine(provider="cpu", threads=2)
    image = np.asarray(Image.open(BUNDLED).convert("L").resize((256, 256)))
    for _ in range(20):
        eng.predict(image)
    gc.collect()
    before = rss_kib()
    for _ in range(1000):
        r = eng.predict(image)
        _ = r.patch_logits, r.image, r.as_dict()
    gc.collect()
    growth = rss_kib() - before
    print(f"1000 predictions: RSS {before} KiB -> {rss_kib()} KiB ({growth:+d} KiB)")
    # A leaked result is > 1 MiB (the 512x512 float image): 1000 of them would be ~1 GB.
    assert growth < 32 * 1024, f"RSS grew by {growth} KiB"


def test_export_equals_the_cli_byte_for_byte(tmp_path):
    import torch

    sys.path.insert(0, str(REPO / "tests" / "python"))
    from medpatch_reference import build_backbone, load_arch

    torch.manual_seed(3)
    weights = tmp_path / "tiny.pt"
    torch.save(build_backbone(load_arch("efficientnet_v2_tiny")).state_dict(), weights)
    from_python = tmp_path / "python.onnx"
    report = medpatch.export(weights, from_python, arch="efficientnet_v2_tiny")
    assert report["architecture"] == "efficientnet_v2_tiny" and report["file_bytes"] == from_python.stat().st_size
    from_cli = tmp_path / "cli.onnx"
    subprocess.run([str(CLI), "export", "--weights", str(weights), "--arch", "efficientnet_v2_tiny", "-o", str(from_cli)], check=True, capture_output=True)
    assert from_python.read_bytes() == from_cli.read_bytes()
    # And the exported model runs in the package.
    eng = medpatch.Engine(from_python, provider="tract")
    assert not eng.is_default_model and eng.predict(BUNDLED).probabilities.shape == (14,)
    with pytest.raises(FileNotFoundError):
        medpatch.export(tmp_path / "none.pt", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="unknown architecture"):
        medpatch.export(weights, tmp_path / "x.onnx", arch="resnet50")


def test_the_type_stubs_match_the_built_module():
    """mypy's stubtest compares python/medpatch/_medpatch.pyi with the installed extension: every
    class, method, parameter and default the stub declares must exist at run time, and the other
    way round, so the stubs cannot drift from the Rust code."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "medpatch._medpatch", "--concise"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

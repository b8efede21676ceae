"""`medpatch serve` checked with NVIDIA's official Triton clients (tritonclient[http,grpc] from PyPI):
the Open Inference Protocol on both transports, binary and JSON tensors, encoded files and pixels,
answers equal to `medpatch predict` on the same files (<= 1e-6), overlays equal to the CLI's files,
errors as the clients' exceptions, and concurrent clients. Loopback only; every server started here
is stopped at the end of the module.

The binary comes from MEDPATCH_BIN (scripts/test.sh points it at target/debug/medpatch).
"""
import base64
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

REPO = Path(__file__).resolve().parents[2]
CXR = REPO.parent / "shared" / "data" / "cxr"
BUNDLED = REPO / "assets" / "00001369_000.png"
CLI = Path(os.environ.get("MEDPATCH_BIN", REPO / "target" / "debug" / "medpatch"))
# ONNX Runtime when its library is there (scripts/test.sh sets ORT_DYLIB_PATH), else tract: the CLI
# and the server run the same provider, one thread.
PROVIDER = "cpu" if os.environ.get("ORT_DYLIB_PATH") else "tract"
MODEL = "medpatch"


def xrays():
    files = [BUNDLED]
    if CXR.is_dir():
        files += sorted((CXR / "nih" / "images").glob("*.png"))[:3] + sorted((CXR / "pediatric").glob("*.jpeg"))[:1]
    return files


class Server:
    def __init__(self, *extra):
        assert CLI.is_file(), f"{CLI} missing: build the CLI (cargo build) or set MEDPATCH_BIN"
        cmd = [str(CLI), "serve", "--http-port", "0", "--grpc-port", "0", "--provider", PROVIDER, "--threads", "1",
               "--no-access-log", *extra]
        self.process = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
        self.lines = []
        found = {}
        ready = threading.Event()

        def read():
            for line in self.process.stderr:
                self.lines.append(line)
                m = re.match(r"medpatch: (http|grpc) listening on (\S+)", line)
                if m:
                    found[m.group(1)] = m.group(2)
                    if len(found) == 2:
                        ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            self.process.kill()
            raise AssertionError("the server did not start:\n" + "".join(self.lines))
        self.http, self.grpc = found["http"], found["grpc"]

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    assert s.stop() == 0, "".join(s.lines)


@pytest.fixture(scope="module")
def cli_records(tmp_path_factory):
    """`medpatch predict` on the same files: input path -> record, plus the overlay files."""
    out = tmp_path_factory.mktemp("cli")
    run = subprocess.run(
        [str(CLI), "predict", "--quiet", "--provider", PROVIDER, "--threads", "1", "--out", str(out),
         "--classes", "Cardiomegaly,Pneumothorax", *map(str, xrays())],
        capture_output=True, text=True, check=True,
    )
    return {r["input"]: r for r in map(json.loads, run.stdout.splitlines())}


def pixels(path):
    # The seed's grayscale (PIL's convert("L")), as the engine decodes PNG files. (Not JPEG: PIL's
    # libjpeg and the engine's decoder round the IDCT differently, by a grey level here and there.)
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint8)


def assert_equal_to_cli(result, record):
    for name in ("probabilities", "logits"):
        served = result.as_numpy(name)
        assert served.shape == (1, 14) and served.dtype == np.float32
        np.testing.assert_allclose(served[0], list(record[name].values()), rtol=0, atol=1e-6)
    patch = result.as_numpy("patch_logits")
    assert patch.shape == (1, 8, 8, 14)
    np.testing.assert_allclose(patch[0].reshape(64, 14).astype(np.float64).mean(0), list(record["logits"].values()), rtol=0, atol=1e-5)


def test_health_and_metadata_on_both_transports(server):
    h = httpclient.InferenceServerClient(server.http)
    g = grpcclient.InferenceServerClient(server.grpc)
    for client in (h, g):
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert h.get_server_metadata()["name"] == "medpatch"
    assert g.get_server_metadata().name == "medpatch"
    meta = h.get_model_metadata(MODEL)
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "logits", "patch_logits", "overlays"]
    grpc_meta = g.get_model_metadata(MODEL, as_json=True)
    assert grpc_meta["inputs"][0]["name"] == "image" and grpc_meta["outputs"][2]["shape"] == ["-1", "8", "8", "14"]
    with pytest.raises(InferenceServerException):
        g.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_infer_equals_the_cli(server, cli_records, binary):
    client = httpclient.InferenceServerClient(server.http)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "logits", "patch_logits")]
    for path in xrays():
        record = cli_records[str(path)]
        # Encoded files are BYTES: binary tensors only (PNG files are not UTF-8 text).
        if binary:
            encoded = httpclient.InferInput("image", [1], "BYTES")
            encoded.set_data_from_numpy(np.array([path.read_bytes()], dtype=np.object_), binary_data=True)
            assert_equal_to_cli(client.infer(MODEL, [encoded], outputs=outputs, request_id="x"), record)
        if path.suffix != ".png":
            continue
        # Pixels, as JSON numbers or binary.
        p = pixels(path)[None]
        image = httpclient.InferInput("image", list(p.shape), "UINT8")
        image.set_data_from_numpy(p, binary_data=binary)
        assert_equal_to_cli(client.infer(MODEL, [image], outputs=outputs), record)


def test_grpc_infer_equals_the_cli(server, cli_records):
    client = grpcclient.InferenceServerClient(server.grpc)
    for path in xrays():
        record = cli_records[str(path)]
        encoded = grpcclient.InferInput("image", [1], "BYTES")
        encoded.set_data_from_numpy(np.array([path.read_bytes()], dtype=np.object_))
        result = client.infer(MODEL, [encoded], request_id="g")
        assert result.get_response().id == "g"
        assert_equal_to_cli(result, record)
        if path.suffix != ".png":
            continue
        p = pixels(path)[None]
        image = grpcclient.InferInput("image", list(p.shape), "UINT8")
        image.set_data_from_numpy(p)
        assert_equal_to_cli(client.infer(MODEL, [image]), record)


def test_overlays_are_the_cli_overlay_files(server, cli_records):
    record = cli_records[str(BUNDLED)]
    expected = [Path(record["outputs"][f"overlay:{c}"]).read_bytes() for c in ("Cardiomegaly", "Pneumothorax")]
    encoded = httpclient.InferInput("image", [1], "BYTES")
    encoded.set_data_from_numpy(np.array([BUNDLED.read_bytes()], dtype=np.object_))
    result = httpclient.InferenceServerClient(server.http).infer(
        MODEL, [encoded], outputs=[httpclient.InferRequestedOutput("overlays")],
        parameters={"overlay_classes": "Cardiomegaly,Pneumothorax"},
    )
    overlays = result.as_numpy("overlays")
    assert overlays.shape == (1, 2)
    assert [bytes(o) for o in overlays[0]] == expected
    encoded = grpcclient.InferInput("image", [1], "BYTES")
    encoded.set_data_from_numpy(np.array([BUNDLED.read_bytes()], dtype=np.object_))
    result = grpcclient.InferenceServerClient(server.grpc).infer(
        MODEL, [encoded], outputs=[grpcclient.InferRequestedOutput("overlays")],
        parameters={"overlay_classes": "Pneumothorax"},
    )
    assert bytes(result.as_numpy("overlays")[0, 0]) == expected[1]


def test_errors_are_the_clients_exceptions_with_the_reason(server):
    h = httpclient.InferenceServerClient(server.http)
    g = grpcclient.InferenceServerClient(server.grpc)
    junk = np.array([b"not an image"], dtype=np.object_)
    for client, module in ((h, httpclient), (g, grpcclient)):
        image = module.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(junk)
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("chexnet", [image])
        assert "unknown model 'chexnet'" in unknown.value.message()
        with pytest.raises(InferenceServerException) as corrupt:
            client.infer(MODEL, [image])
        assert "image[0]" in corrupt.value.message() and "unrecognised file format" in corrupt.value.message()
        wrong = module.InferInput("image", [1, 2, 2], "INT32")
        wrong.set_data_from_numpy(np.zeros((1, 2, 2), dtype=np.int32))
        with pytest.raises(InferenceServerException) as dtype:
            client.infer(MODEL, [wrong])
        assert "cannot be INT32" in dtype.value.message()
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert corrupt.value.status() == "StatusCode.INVALID_ARGUMENT"
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(junk)
    with pytest.raises(InferenceServerException) as http_status:
        h.infer("chexnet", [image])
    assert http_status.value.status() == "404"
    assert h.is_server_ready(), "the server keeps serving"


def test_v1_predict_gives_the_cli_record(server, cli_records):
    record = cli_records[str(BUNDLED)]
    request = urllib.request.Request(f"http://{server.http}/v1/predict?name=x.png", data=BUNDLED.read_bytes(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        served = json.load(answer)
    assert served["input"] == "x.png"
    for key in ("model", "provider", "precision", "probabilities", "logits"):
        assert served[key] == record[key], key
    bad = urllib.request.Request(f"http://{server.http}/v1/predict", data=b"text", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(bad, timeout=60)
    assert error.value.code == 422 and "unrecognised file format" in json.load(error.value)["error"]


def test_sixteen_concurrent_clients_on_both_transports(server, cli_records):
    files = xrays()

    def work(k):
        path = files[k % len(files)]
        if k % 2:
            client, module = grpcclient.InferenceServerClient(server.grpc), grpcclient
        else:
            client, module = httpclient.InferenceServerClient(server.http), httpclient
        image = module.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([path.read_bytes()], dtype=np.object_))
        started = time.perf_counter()
        result = client.infer(MODEL, [image])
        assert_equal_to_cli(result, cli_records[str(path)])
        return time.perf_counter() - started

    with ThreadPoolExecutor(16) as pool:
        latencies = sorted(pool.map(work, range(48)))
    print(f"48 requests from 16 clients: p50 {1e3 * latencies[24]:.0f} ms, p99 {1e3 * latencies[-1]:.0f} ms")


def test_binary_and_json_answers_carry_the_same_numbers(server):
    # The raw protocol, without a client library: JSON numbers are the f32 values exactly.
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(BUNDLED.read_bytes()).decode()]}],
            "outputs": [{"name": "logits"}]}
    request = urllib.request.Request(f"http://{server.http}/v2/models/{MODEL}/infer", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        as_json = np.array(json.load(answer)["outputs"][0]["data"], dtype=np.float32)
    encoded = httpclient.InferInput("image", [1], "BYTES")
    encoded.set_data_from_numpy(np.array([BUNDLED.read_bytes()], dtype=np.object_))
    result = httpclient.InferenceServerClient(server.http).infer(MODEL, [encoded], outputs=[httpclient.InferRequestedOutput("logits")])
    np.testing.assert_array_equal(result.as_numpy("logits")[0], as_json)

"""DICOM results against independent readers and a real PACS.

* `medpatch predict --dicom-out`: highdicom reads the SR (findings, probabilities = the JSON
  result, the source referenced, same study), the FRACTIONAL segmentation (each pixel = sigmoid
  of the patch logit under it, with the patch found by this file's own inverse of the centre
  crop) and the overlays (the PNG overlays' colours); dicom3tools' dciodvfy finds no errors.
* `medpatch dicom-node` between dcmtk's storescu and an Orthanc started here (own config,
  free loopback ports, storage in a temporary folder): results arrive in the source's study
  (found through Orthanc's REST API) with the probabilities of `medpatch predict`; C-ECHO both
  ways; a corrupt file is refused and the node stays up; two senders at once; Orthanc stopped
  while results are pending and the node restarted: they arrive once Orthanc is back.

Needs MEDPATCH_BIN (scripts/test.sh: target/debug/medpatch), the Debian packages orthanc, dcmtk
and dicom3tools and the PyPI package highdicom (scripts/setup.sh installs them all).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import dicom_test_images  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CXR = REPO.parent / "shared" / "data" / "cxr"
CLI = Path(os.environ.get("MEDPATCH_BIN", REPO / "target" / "debug" / "medpatch"))
ENGINE = ["--provider", "tract", "--threads", "2"]
TOOLS = ["Orthanc", "storescu", "echoscu", "dciodvfy"]

pytestmark = [
    pytest.mark.skipif(not CXR.is_dir(), reason="../shared/data/cxr (real X-rays) is not beside the checkout"),
]

hd = pytest.importorskip("highdicom", reason="highdicom is installed by scripts/setup.sh")


@pytest.fixture(scope="module", autouse=True)
def tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"{missing} not found: scripts/setup.sh installs orthanc, dcmtk and dicom3tools"
    assert CLI.exists(), f"{CLI} not built (cargo build --workspace)"


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def patch_index_map(rows, cols, grid=8):
    """Patch (row, col) under every source pixel, -1 outside the crop: torchvision's CenterCrop
    offsets (int(round(d / 2)), Python's rounding) and the patch under each pixel's centre."""
    side = min(rows, cols)
    top, left = int(round((rows - side) / 2.0)), int(round((cols - side) / 2.0))

    def axis(n, offset):
        idx = np.full(n, -1)
        inside = np.arange(side)
        idx[offset:offset + side] = ((2 * inside + 1) * grid) // (2 * side)
        return idx

    return axis(rows, top), axis(cols, left)


def dciodvfy_errors(path):
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith(("Error", "Abort"))]


def run_predict(files, out_dir, extra=()):
    cmd = [str(CLI), "predict", *ENGINE, "--out", str(out_dir), *extra, *map(str, files)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()], out.stderr


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The real CR X-ray and four NIH PNGs made DICOM (with their 8-bit pixels)."""
    made = tmp_path_factory.mktemp("dicom-inputs")
    nih = sorted((CXR / "nih" / "images").glob("*.png"))[:4]
    converted = [dicom_test_images.png_to_dicom(p, made) for p in nih]
    return {"rg1": CXR / "dicom" / "RG1_UNCR.dcm", "nih": [p for p, _ in converted], "gray": [g for _, g in converted]}


def test_predict_dicom_out_reads_back_with_highdicom(tmp_path, inputs):
    files = [inputs["rg1"], inputs["nih"][0], REPO / "assets" / "00001369_000.png"]
    classes_arg = ["--classes", "Cardiomegaly,Pleural Effusion"]
    records, stderr = run_predict(files, tmp_path / "out", ["--dicom-out", str(tmp_path / "dicom"), *classes_arg])
    assert "is a PNG image: DICOM results need a DICOM input" in stderr
    assert "skipped" in records[2]["dicom_outputs"]
    classes = list(records[0]["probabilities"])
    mapped = [classes.index("Cardiomegaly"), classes.index("Pleural Effusion")]
    for record, path in zip(records[:2], files[:2]):
        source = pydicom.dcmread(path)
        written = [Path(p) for p in record["dicom_outputs"]]
        assert [p.name.split(".")[-2] for p in written][:2] == ["sr", "seg"] and len(written) == 4
        for p in written:
            assert dciodvfy_errors(p) == [], p
        # The SR: TID 1500, one group per class, the JSON's probabilities, the source referenced.
        sr = hd.sr.srread(written[0])
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID
        groups = sr.content.get_image_measurement_groups()
        assert len(groups) == len(classes)
        for group, name in zip(groups, classes):
            assert group.tracking_identifier == f"medpatch {name}"
            assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
            (measurement,) = group.get_measurements()
            assert measurement.name.meaning == "Probability" and measurement.unit.value == "1"
            assert abs(measurement.value - record["probabilities"][name]) <= 5e-7, name
            assert group.get_qualitative_evaluations() == [], "the demo model has no thresholds"
        # The segmentation: sigmoid(patch logit) under every pixel, 0 where the crop cut.
        seg = hd.seg.segread(written[1])
        assert seg.segmentation_type.value == "FRACTIONAL"
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Cardiomegaly", "Pleural Effusion"]
        maps = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)[0]
        stem = path.stem
        patch_logits = np.load(tmp_path / "out" / f"{stem}.patch_logits.npy")  # [8, 8, classes]
        rows_idx, cols_idx = patch_index_map(source.Rows, source.Columns)
        inside = (rows_idx[:, None] >= 0) & (cols_idx[None, :] >= 0)
        for k, c in enumerate(mapped):
            expected = sigmoid(patch_logits[rows_idx.clip(0)[:, None], cols_idx.clip(0)[None, :], c])
            expected = np.where(inside, expected, 0.0)
            # 8-bit fractions: within half a step of 1/255 (plus float32 sigmoid rounding).
            assert np.abs(maps[..., k] - expected).max() <= 0.5 / 255 + 1e-5
        # Each overlay: the source pixels under it, in the right size and study.
        for p in written[2:]:
            sc = pydicom.dcmread(p)
            assert sc.pixel_array.shape == (source.Rows, source.Columns, 3)
            assert sc.StudyInstanceUID == source.StudyInstanceUID


def test_overlays_have_the_png_overlays_colours(tmp_path, inputs):
    """On a square NIH image (no crop; stored value v decodes to v / 255), the overlay's colour
    layer 2·SC − gray equals the PNG overlay's 2·PNG − input at every patch centre."""
    path, gray = inputs["nih"][1], inputs["gray"][1].astype(np.float64) / 255
    records, _ = run_predict([path], tmp_path / "out", ["--classes", "Cardiomegaly", "--dicom-out", str(tmp_path / "d")])
    sc = pydicom.dcmread([p for p in records[0]["dicom_outputs"] if ".overlay." in Path(p).name][0]).pixel_array / 255.0
    png = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}.cardiomegaly.png"), dtype=np.float64) / 255
    png_gray = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}.input.png"), dtype=np.float64) / 255
    side = gray.shape[0]
    for r in range(8):
        for c in range(8):
            y, x = (2 * r + 1) * side // 16, (2 * c + 1) * side // 16
            colour_sc = 2 * sc[y, x] - gray[y, x]
            colour_png = 2 * png[(2 * r + 1) * 32, (2 * c + 1) * 32] - png_gray[(2 * r + 1) * 32, (2 * c + 1) * 32]
            assert np.abs(colour_sc - colour_png).max() <= 3 / 255, (r, c, colour_sc, colour_png)


# ---- the node and a real Orthanc ----------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Orthanc:
    """An Orthanc of our own: loopback HTTP (RemoteAccessAllowed false) and DICOM that accepts
    only the node's AE title from 127.0.0.1; Orthanc 1.10 has no bind-address option."""

    def __init__(self, root, node_port):
        self.root, self.http, self.dicom = Path(root), free_port(), free_port()
        config = {
            "Name": "medpatch-test", "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"), "HttpPort": self.http, "DicomPort": self.dicom,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomCheckModalityHost": True,
            "DicomModalities": {"medpatch": ["MEDPATCH", "127.0.0.1", node_port]},
            "SaveJobs": False, "HttpThreadsCount": 4, "DicomThreadsCount": 2, "ConcurrentJobs": 1,
        }
        self.config = self.root / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.process = None

    def start(self):
        log = open(self.root / "orthanc.log", "ab")
        self.process = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=log, cwd=self.root)
        wait_for(lambda: self.get("/system", quiet=True), 30, "Orthanc to start")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, route, quiet=False, raw=False):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{route}", timeout=10) as r:
                body = r.read()
        except OSError:
            if quiet:
                return None
            raise
        return body if raw else json.loads(body)

    def post(self, route, body):
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{route}", data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def study_series(self, study_uid):
        """{modality: [instance id, ...]} of the study, via the REST API."""
        found = self.post("/tools/lookup", study_uid)
        studies = [f["ID"] for f in found if f["Type"] == "Study"]
        if not studies:
            return {}
        series = {}
        for s in self.get(f"/studies/{studies[0]}/series"):
            series.setdefault(s["MainDicomTags"]["Modality"], []).extend(s["Instances"])
        return series


class Node:
    def __init__(self, root, port, orthanc):
        self.root, self.port, self.orthanc, self.process = Path(root), port, orthanc, None
        self.log = self.root / "node.log"

    def start(self):
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        cmd = [
            str(CLI), "dicom-node", *ENGINE, "--port", str(self.port), "--queue", str(self.root / "queue"),
            "--destination", f"ORTHANC@127.0.0.1:{self.orthanc.dicom}", "--classes", "Cardiomegaly",
            "--retry-max", "1",
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        wait_for(lambda: "listening as MEDPATCH@127.0.0.1" in self.text(), 60, "the node to listen")

    def text(self):
        return self.log.read_bytes()[self.offset:].decode(errors="replace") if self.log.exists() else ""

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def owed(self):
        return sorted(p for p in (self.root / "queue" / "outbox").rglob("*") if p.is_file())


def store(node, *files):
    return subprocess.run(
        ["storescu", "-aet", "TESTSCU", "-aec", "MEDPATCH", "127.0.0.1", str(node.port), *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def pacs(tmp_path):
    node_port = free_port()
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", node_port)
    node = Node(tmp_path, node_port, orthanc)
    orthanc.start()
    node.start()
    yield orthanc, node
    node.stop()
    orthanc.stop()


def results_arrived(orthanc, source):
    series = orthanc.study_series(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    return series if all(series.get(m) for m in ("SR", "SEG")) and len(series.get("OT", [])) >= 1 else None


def test_node_stores_results_in_the_source_study(pacs, inputs, tmp_path):
    orthanc, node = pacs
    assert "C-ECHO to ORTHANC" in node.text() and ": success" in node.text(), node.text()
    echo = subprocess.run(["echoscu", "-aec", "MEDPATCH", "127.0.0.1", str(node.port)], capture_output=True, text=True)
    assert echo.returncode == 0, echo.stderr
    wrong = subprocess.run(["echoscu", "-aec", "SOMEONE", "127.0.0.1", str(node.port)], capture_output=True, text=True)
    assert wrong.returncode != 0, "associations must call the node's AE title"
    echo_out = subprocess.run([str(CLI), "dicom-node", "--echo", "--destination", f"ORTHANC@127.0.0.1:{orthanc.dicom}"],
                              capture_output=True, text=True, timeout=60)
    assert echo_out.returncode == 0 and "success" in echo_out.stdout, echo_out.stderr

    sources = [inputs["rg1"], inputs["nih"][0]]
    sent = store(node, *sources)
    assert sent.returncode == 0, sent.stderr + node.text()
    records, _ = run_predict(sources, tmp_path / "predict")
    for source, record in zip(sources, records):
        series = wait_for(lambda: results_arrived(orthanc, source), 60, f"results of {source.name} in Orthanc")
        original = pydicom.dcmread(source, stop_before_pixels=True)
        sr_bytes = orthanc.get(f"/instances/{series['SR'][0]}/file", raw=True)
        sr_path = tmp_path / f"{source.stem}.sr.dcm"
        sr_path.write_bytes(sr_bytes)
        sr = hd.sr.srread(sr_path)
        assert sr.StudyInstanceUID == original.StudyInstanceUID and sr.PatientID == original.PatientID
        for group in sr.content.get_image_measurement_groups():
            name = group.tracking_identifier.removeprefix("medpatch ")
            assert abs(group.get_measurements()[0].value - record["probabilities"][name]) <= 5e-7, name
        seg_path = tmp_path / f"{source.stem}.seg.dcm"
        seg_path.write_bytes(orthanc.get(f"/instances/{series['SEG'][0]}/file", raw=True))
        assert [s.SegmentLabel for s in hd.seg.segread(seg_path).SegmentSequence] == ["Cardiomegaly"]
    wait_for(lambda: not node.owed(), 30, "the queue to empty")


def test_node_survives_bad_input_concurrent_senders_and_pacs_outages(pacs, inputs, tmp_path):
    orthanc, node = pacs
    # A corrupt file: a failure status, a log line naming it, the node still up.
    corrupt = dicom_test_images.corrupt_dicom(tmp_path / "corrupt.dcm")
    refused = store(node, corrupt)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "refused" in node.text() and "pixel data holds 100 bytes" in node.text() and "C000H" in node.text()
    assert node.process.poll() is None

    # Two senders at once.
    a, b = inputs["nih"][1], inputs["nih"][2]
    senders = [subprocess.Popen(["storescu", "-aec", "MEDPATCH", "127.0.0.1", str(node.port), str(f)]) for f in (a, b)]
    assert [s.wait(timeout=300) for s in senders] == [0, 0]
    for f in (a, b):
        wait_for(lambda: results_arrived(orthanc, f), 60, f"results of {f.name}")

    # Orthanc down: the image is still acknowledged (its results are on disk) and waits.
    orthanc.stop()
    late = inputs["nih"][3]
    sent = store(node, late)
    assert sent.returncode == 0, sent.stderr
    assert len(node.owed()) == 3, "SR, segmentation and one overlay wait in the queue"
    wait_for(lambda: "retrying in" in node.text(), 20, "a failed attempt to be logged")
    # The node restarts while they wait: it resumes from the queue.
    node.stop()
    node.start()
    assert "(3 result file(s) owed)" in node.text(), node.text()
    orthanc.start()
    wait_for(lambda: results_arrived(orthanc, late), 60, "the pending results after Orthanc restarted")
    wait_for(lambda: not node.owed(), 30, "the queue to empty")
    assert node.process.poll() is None


def test_the_python_package_writes_the_same_objects_as_the_cli(tmp_path, inputs):
    """Engine.write_dicom (the package's door to the same crate) gives the CLI's objects, byte for
    byte but for the creation date and time, and refuses a source that is not DICOM."""
    import medpatch

    source = inputs["rg1"]
    records, _ = run_predict([source], tmp_path / "out", ["--dicom-out", str(tmp_path / "cli"), "--classes", "Cardiomegaly"])
    engine = medpatch.Engine(provider="tract", threads=2)
    result = engine.predict(str(source))
    written = [Path(p) for p in engine.write_dicom(result, source, tmp_path / "python", classes=["Cardiomegaly"])]
    cli = [Path(p) for p in records[0]["dicom_outputs"]]
    assert [p.name for p in written] == [p.name for p in cli]
    for ours, theirs in zip(written, cli):
        a, b = pydicom.dcmread(ours), pydicom.dcmread(theirs)
        for ds in (a, b):
            for keyword in ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime"):
                if keyword in ds:
                    delattr(ds, keyword)
        assert a.SOPInstanceUID == b.SOPInstanceUID, "the UIDs are derived, so the same inputs give the same UIDs"
        if "PixelData" in a:
            assert a.PixelData == b.PixelData, ours.name
    with pytest.raises(ValueError, match="DICOM results need a DICOM input"):
        engine.write_dicom(result, REPO / "assets" / "00001369_000.png", tmp_path / "never")
    assert not (tmp_path / "never").exists()

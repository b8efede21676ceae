"""medpatch on Ray Data and Spark (python/medpatch/ray.py, spark.py): a local two-CPU Ray cluster on
127.0.0.1 scores a synthetic archive (tests/python/synthetic_xrays.py: a few hundred small X-ray-like
images and corrupt files) into Parquet, and every row must equal `medpatch predict` on the same file:
probabilities and logits against its JSON (printed to 6 decimals, and the same ONNX Runtime CPU
arithmetic on both sides: 1e-6), patch logits against its .npy (1e-6), errors with the same message,
in the CLI's order. An actor killed mid-job is restarted by Ray and every row still comes once.
Spark's predict_batch_udf runs where pyspark and Java are installed (scripts/setup.sh installs both).
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Ray's processes listen on the loopback address only (its default is every interface); read when ray
# is imported, and inherited by its workers.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="ray is not installed: pip install './python[ray]' (scripts/setup.sh does)")
import ray.data  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import medpatch  # noqa: E402
import medpatch.ray  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_xrays import write_archive  # noqa: E402

# Ray Data warns about its own deprecated settings when it reads its context: not this test's business.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

REPO = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MEDPATCH_BIN", REPO / "target" / "debug" / "medpatch"))
IMAGES = 240
# Both sides run ONNX Runtime's CPU provider with one thread (its results do not depend on batching).
PROVIDER = "cpu"
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    write_archive(root, IMAGES, seed=25)
    return root


@pytest.fixture(scope="module")
def cli_process(archive, tmp_path_factory):
    """`medpatch predict` on the archive, started at once: it runs (one thread) while Ray starts."""
    assert CLI.is_file(), f"{CLI} missing: build the CLI (cargo build) or set MEDPATCH_BIN"
    out = tmp_path_factory.mktemp("cli")
    process = subprocess.Popen(
        [str(CLI), "predict", "--quiet", "--provider", PROVIDER, "--threads", "1", "--out", str(out),
         "--classes", "Cardiomegaly", str(archive)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def cli(cli_process):
    """The CLI's JSON records: {path: record}, in its order."""
    stdout, stderr = cli_process.communicate(timeout=600)
    assert cli_process.returncode == 1 and "5 of 245 inputs failed" in stderr, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == IMAGES + 5
    return {r["input"]: r for r in records}


@pytest.fixture(scope="module")
def cluster(cli_process):
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    # The test's own Predictor subclass travels to the workers by value (they cannot import this file).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()


def assert_row_equals_cli(row, record):
    assert row["path"] == record["input"]
    if "error" in record:
        assert row["error"] == record["error"]
        assert row["probabilities"] is None and row["logits"] is None and row["patch_logits"] is None
        return
    assert row["error"] is None, row["error"]
    np.testing.assert_allclose(row["probabilities"], list(record["probabilities"].values()), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(row["logits"], list(record["logits"].values()), rtol=0, atol=TOLERANCE)
    saved = np.load(record["outputs"]["patch_logits"])  # (8, 8, 14)
    np.testing.assert_allclose(np.reshape(row["patch_logits"], saved.shape), saved, rtol=0, atol=TOLERANCE)


def test_a_folder_to_parquet_equals_the_cli_with_bad_files_as_error_rows(cluster, archive, request, tmp_path):
    output = tmp_path / "scores"
    summary = medpatch.ray.predict_folder(archive, str(output), provider=PROVIDER, actors=2, batch_size=16)
    cli = request.getfixturevalue("cli")  # after Ray's run: the CLI runs beside it
    assert summary["images"] == IMAGES + 5 and summary["errors"] == 5
    table = pq.read_table(output)
    assert table.column_names == ["path", "probabilities", "logits", "patch_logits", "error"]
    assert table.schema.field("patch_logits").type == pa.list_(pa.float32(), 8 * 8 * 14)
    rows = table.to_pylist()
    # The CLI's files in the CLI's order (README.txt skipped by both), each once.
    assert [r["path"] for r in rows] == list(cli)
    for row in rows:
        assert_row_equals_cli(row, cli[row["path"]])
    assert {Path(r["path"]).name.split("_", 2)[-1] for r in rows if r["error"]} == {
        "notes.png", "truncated.png", "empty.jpg", "noise.dcm", "garbled.jpeg"
    }
    # A second run never mixes its rows with the first's.
    with pytest.raises(ValueError, match="already exists"):
        medpatch.ray.predict_folder(archive, str(output), provider=PROVIDER, actors=2)


class KilledOnce(medpatch.ray.Predictor):
    """A Predictor whose process is killed (SIGKILL, as the kernel's OOM killer would) at its third batch,
    once in the whole job; every start is counted in a file."""

    def __init__(self, marker_dir, **settings):
        super().__init__(**settings)
        self.marker_dir = Path(marker_dir)
        self.calls = 0
        with open(self.marker_dir / "starts", "a") as starts:
            starts.write(f"{os.getpid()}\n")

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 3:
            try:
                os.close(os.open(self.marker_dir / "killed", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_ids_and_order_are_kept_and_an_actor_killed_mid_job_loses_no_row(cluster, archive, cli, tmp_path):
    # Every image once, in an order that is not the folder's, under ids, plus a file that is missing.
    paths = list(cli)[::-1][:95] + [str(archive / "missing.png")]
    items = [{"id": 1000 + k, "path": p} for k, p in enumerate(paths)]
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    try:
        dataset = ray.data.from_items(items, override_num_blocks=len(items) // 8).map_batches(
            KilledOnce,
            fn_constructor_kwargs={"marker_dir": str(tmp_path), "provider": PROVIDER, "threads": 1, "column": "path"},
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=1,
            batch_size=8,
            batch_format="pyarrow",
        )
        rows = dataset.take_all()
    finally:
        context.execution_options.preserve_order = False
    assert (tmp_path / "killed").exists(), "no actor was killed: the test tested nothing"
    starts = (tmp_path / "starts").read_text().split()
    assert len(starts) >= 3, f"the killed actor was not restarted: starts {starts}"
    assert [r["id"] for r in rows] == [item["id"] for item in items], "each row once, in order"
    for row in rows[:-1]:
        assert_row_equals_cli(row, cli[row["path"]])
    missing = rows[-1]
    assert missing["path"].endswith("missing.png") and missing["probabilities"] is None
    assert missing["error"].startswith(f"{archive / 'missing.png'}: cannot read the file: No such file")


def test_pixel_arrays_from_a_dataset_equal_predicting_them_directly(cluster):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (96 + 8 * k, 120), dtype=np.uint8) for k in range(6)]
    dataset = ray.data.from_items([{"id": k, "image": image} for k, image in enumerate(images)])
    rows = dataset.map_batches(
        medpatch.ray.Predictor,
        fn_constructor_kwargs={"provider": PROVIDER},
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_size=4,
    ).take_all()
    engine = medpatch.Engine(provider=PROVIDER, threads=1)
    assert sorted(r["id"] for r in rows) == list(range(6))
    for row in rows:
        assert "image" not in row and row["error"] is None
        expected = engine.predict(images[row["id"]])
        np.testing.assert_allclose(row["patch_logits"], expected.patch_logits.reshape(-1), rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(row["probabilities"], expected.probabilities, rtol=0, atol=TOLERANCE)


def test_the_predictor_reads_numpy_pandas_and_arrow_batches_without_ray(archive, cli):
    import pandas as pd

    paths = list(cli)[:6]
    predictor = medpatch.ray.Predictor(provider=PROVIDER, images_per_batch=2)
    contents = [Path(p).read_bytes() for p in paths]
    batches = {
        "numpy paths": {"path": np.array(paths, dtype=object), "id": np.arange(6)},
        "numpy bytes": {"bytes": np.array(contents, dtype=object), "path": np.array(paths, dtype=object)},
        "pandas bytes": pd.DataFrame({"bytes": contents, "path": paths}),
        "arrow bytes": pa.table({"path": paths, "bytes": pa.array(contents, pa.binary())}),
    }
    for kind, batch in batches.items():
        table = predictor(batch)
        assert "bytes" not in table.column_names, kind
        for row in table.to_pylist():
            assert_row_equals_cli(row, cli[row["path"]])
    # Bytes without their path are named "<bytes>" in messages; a batch without images is the caller's bug.
    (unnamed,) = predictor({"bytes": np.array([b"junk"], dtype=object)}).column("error").to_pylist()
    assert unnamed.startswith("<bytes>: unrecognised file format")
    # Engine.predict_many's names (what medpatch.ray gives it: the path column) name bytes in messages.
    engine = medpatch.Engine(provider=PROVIDER, threads=1)
    named = engine.predict_many([b"junk", contents[0], b"junk"], names=["a.png", "b.png", "c.png"])
    assert str(named[0]).startswith("a.png: unrecognised") and str(named[2]).startswith("c.png: unrecognised")
    assert isinstance(named[1], medpatch.Result)
    with pytest.raises(ValueError, match="names has 1 entries for 2 images"):
        engine.predict_many([b"junk", b"junk"], names=["a.png"])
    with pytest.raises(KeyError, match="no column one of bytes, path, image, data"):
        predictor({"id": np.arange(2)})
    assert medpatch.ray.list_images(archive) == [Path(p) for p in cli]


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed (Debian: openjdk-17-jre-headless)")
def test_spark_predict_batch_udf_equals_the_cli(archive, cli):
    pytest.importorskip("pyspark", reason="pyspark is not installed (scripts/requirements-test.txt has it)")
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession

    import medpatch.spark

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    try:
        # One study folder: its images and two of the corrupt files.
        files = spark.read.format("binaryFile").load(str(archive / "study_1"))
        predict = predict_batch_udf(
            medpatch.spark.make_predict_fn(provider=PROVIDER, with_names=True),
            return_type=medpatch.spark.return_type(),
            batch_size=16,
        )
        scored = files.select("path", predict("content", "path").alias("m")).select("path", "m.*").collect()
    finally:
        spark.stop()
    assert len(scored) == sum(1 for p in cli if "/study_1/" in p) == 82
    errors = 0
    for result in scored:
        row = result.asDict()
        assert row["path"].startswith("file:/")
        record = cli[row["path"].removeprefix("file:")]
        if "error" in record:
            errors += 1
            # Spark names the file by its URI.
            assert row["error"] == "file:" + record["error"]
            assert np.isnan(row["probabilities"]).all()
            continue
        row["path"] = record["input"]
        assert_row_equals_cli(row, record)
    assert errors == 2

"""medpatch on Ray Data: score an archive of X-rays on a Ray cluster, one engine per actor.

``Predictor`` is a callable class for ``ray.data.Dataset.map_batches`` run on an actor pool: each actor
builds one ``medpatch.Engine`` (model, provider, threads) when it starts and predicts every batch it is
given. A batch's images come from one column, holding per row any of

* a path (str), read by the actor: the files must be reachable from every node;
* a file's bytes, as ``ray.data.read_binary_files`` gives them (column ``bytes``);
* a 2-D pixel array (float in [0, 1], uint8 or uint16), e.g. ``ray.data.read_images(mode="L")``.

Each row gets ``probabilities`` and ``logits`` (one float32 per class, model order: ``Engine.classes``),
``patch_logits`` (grid × grid × classes float32, flattened row-major: ``reshape(8, 8, 14)``) and
``error``: null for a prediction, else the message, with the three arrays null. A corrupt or missing
file is a row with an error, never a failed job. The other columns pass through (ids, paths); the
bytes or pixels that were predicted do not, unless ``keep_input=True``::

    import ray, medpatch.ray
    # Reads and writes reserve no CPU: actors that take every core would leave them none.
    ds = ray.data.read_binary_files("s3://bucket/cxr/", include_paths=True, num_cpus=0, concurrency=4)
    ds = ds.map_batches(medpatch.ray.Predictor, fn_constructor_kwargs={"provider": "cpu", "threads": 1},
                        compute=ray.data.ActorPoolStrategy(size=8), num_cpus=1, batch_size=16,
                        batch_format="pyarrow")
    ds.write_parquet("s3://bucket/scores/", ray_remote_args={"num_cpus": 0}, concurrency=4)

``predict_folder`` does folder → Parquet in one call, with the CLI's choice and order of files
(``python -m medpatch.ray FOLDER OUT`` from a shell). Ray is an optional dependency
(``pip install "medpatch[ray]"``) imported only when a function here needs it; ``Predictor`` and
``predict_columns`` need numpy and pyarrow only. docs/ray.md has the numbers for sizing a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ._medpatch import Engine, Result

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = ["Predictor", "predict_columns", "BatchPredictions", "list_images", "predict_folder", "IMAGE_EXTENSIONS"]

#: Extensions taken from folders, as ``medpatch predict`` takes them (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
#: Where a batch's images are looked for, in this order, when no column is named: read_binary_files'
#: bytes, a path column, read_images' pixels, from_numpy's pixels.
INPUT_COLUMNS = ("bytes", "path", "image", "data")
#: What error messages call bytes without a name.
UNNAMED = "<bytes>"


@dataclass
class BatchPredictions:
    """The predictions of one batch, row for row. Rows that failed have NaN in the arrays, ``ok`` False
    and their message in ``errors``."""

    probabilities: np.ndarray  # (rows, classes) float32
    logits: np.ndarray  # (rows, classes) float32
    patch_logits: np.ndarray  # (rows, grid * grid * classes) float32, each row (grid, grid, classes) flattened
    errors: list[str | None]
    ok: np.ndarray  # (rows,) bool


def error_message(error: BaseException) -> str:
    """The engine's message for a failed input: what ``medpatch predict`` prints for the same file."""
    # An OSError's str() adds "[Errno n]" and the file name to the message, which already names it.
    if isinstance(error, OSError) and error.strerror:
        return str(error.strerror)
    return str(error)


def predict_columns(
    engine: Engine,
    images: Sequence[Any],
    names: Sequence[str] | None = None,
    images_per_batch: int | None = None,
) -> BatchPredictions:
    """Predict ``images`` (paths, bytes or 2-D arrays) with ``Engine.predict_many`` into column arrays.
    ``names``: what error messages call bytes inputs (e.g. their paths)."""
    results = engine.predict_many(images, images_per_batch=images_per_batch, names=names)
    rows, classes, cells = len(results), len(engine.classes), engine.grid * engine.grid
    probabilities = np.full((rows, classes), np.nan, np.float32)
    logits = np.full((rows, classes), np.nan, np.float32)
    patch_logits = np.full((rows, cells * classes), np.nan, np.float32)
    errors: list[str | None] = [None] * rows
    ok = np.zeros(rows, bool)
    for row, result in enumerate(results):
        if isinstance(result, Result):
            probabilities[row] = result.probabilities
            logits[row] = result.logits
            patch_logits[row] = result.patch_logits.reshape(-1)
            ok[row] = True
        else:
            errors[row] = error_message(result)
    return BatchPredictions(probabilities, logits, patch_logits, errors, ok)


class Predictor:
    """A callable class for ``Dataset.map_batches`` (run it on an actor pool: the engine is built once per
    actor). Takes a batch as numpy columns (Ray's default), a pyarrow Table or a pandas DataFrame;
    returns a pyarrow Table: the batch's other columns, then ``probabilities``, ``logits``,
    ``patch_logits`` (fixed-size lists of float32, null where the row failed) and ``error`` (string, null
    where it did not).

    model, provider, precision, threads, batch_size, ort_library, openvino_library: as ``medpatch.Engine``;
    threads defaults to 1 (one actor per core measured fastest: docs/ray.md). column: where the images
    are (default: the first of bytes, path, image, data present). name_column: the column that names a
    row in error messages (default "path", when present). keep_input: also pass the predicted bytes or
    pixels through (a path column always passes). images_per_batch: images per engine call.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes | None = None,
        *,
        provider: str = "auto",
        precision: str = "f32",
        threads: int = 1,
        batch_size: int | None = None,
        ort_library: str | os.PathLike[str] | None = None,
        openvino_library: str | os.PathLike[str] | None = None,
        column: str | None = None,
        name_column: str | None = "path",
        keep_input: bool = False,
        images_per_batch: int | None = None,
    ) -> None:
        self.engine = Engine(
            model,
            provider=provider,  # type: ignore[arg-type]
            precision=precision,  # type: ignore[arg-type]
            threads=threads,
            batch_size=batch_size,
            ort_library=ort_library,
            openvino_library=openvino_library,
        )
        self.column = column
        self.name_column = name_column
        self.keep_input = keep_input
        self.images_per_batch = images_per_batch

    def __call__(self, batch: dict[str, np.ndarray] | pyarrow.Table | pandas.DataFrame) -> pyarrow.Table:
        import pyarrow as pa

        columns = _Columns(batch)
        column = self.column or next((c for c in INPUT_COLUMNS if c in columns.names), None)
        if column is None or column not in columns.names:
            wanted = repr(self.column) if self.column else "one of " + ", ".join(INPUT_COLUMNS)
            raise KeyError(f"medpatch.ray.Predictor: the batch has no column {wanted} (it has {columns.names})")
        images = columns.values(column)
        names = None
        if self.name_column and self.name_column in columns.names:
            names = [n if isinstance(n, str) else UNNAMED for n in columns.values(self.name_column)]
        predictions = predict_columns(self.engine, images, names, self.images_per_batch)

        failed = pa.array(~predictions.ok)
        outputs = {
            name: pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1], mask=failed)
            for name, values in [
                ("probabilities", predictions.probabilities),
                ("logits", predictions.logits),
                ("patch_logits", predictions.patch_logits),
            ]
        }
        outputs["error"] = pa.array(predictions.errors, pa.string())
        passed = [c for c in columns.names if c != column or self.keep_input or columns.holds_paths(column)]
        if not passed:
            return pa.table(outputs)
        table = columns.arrow(passed)
        for name, array in outputs.items():
            index = table.schema.get_field_index(name)
            table = table.set_column(index, name, array) if index >= 0 else table.append_column(name, array)
        return table


class _Columns:
    """One batch in any of map_batches' formats (numpy columns, pyarrow, pandas), read column by column."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.is_arrow = hasattr(batch, "column_names")
        if isinstance(batch, dict):
            self.names = list(batch)
        elif self.is_arrow:
            self.names = list(batch.column_names)
        else:
            self.names = [str(c) for c in batch.columns]

    def values(self, name: str) -> list[Any]:
        """The column's rows as Python objects: str, bytes, or 2-D numpy arrays."""
        if self.is_arrow:
            import pyarrow as pa

            column = self.batch.column(name)
            if isinstance(column.type, pa.ExtensionType):  # Ray's tensor columns
                return [row for chunk in column.chunks for row in chunk.to_numpy(zero_copy_only=False)]
            return list(column.to_pylist())
        return list(self.batch[name])

    def holds_paths(self, name: str) -> bool:
        if self.is_arrow:
            import pyarrow as pa

            kind = self.batch.column(name).type
            return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))
        return isinstance(next(iter(self.batch[name]), None), str)

    def arrow(self, names: list[str]) -> pyarrow.Table:
        import pyarrow as pa

        if self.is_arrow:
            return self.batch.select(names)
        if isinstance(self.batch, dict):
            return pa.table({name: _arrow_column(self.batch[name]) for name in names})
        return pa.Table.from_pandas(self.batch[names], preserve_index=False)


def _arrow_column(values: np.ndarray) -> pyarrow.Array:
    import pyarrow as pa

    if values.ndim == 1 and not (values.dtype == object and len(values) and isinstance(values[0], np.ndarray)):
        return pa.array(values)
    # Arrays per row (pixels, embeddings): Ray's tensor extension, as Ray itself would store them.
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(values)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The images ``medpatch predict FOLDER`` takes, in its order: files with an image extension, found
    recursively (symbolic links followed, each file once, no link loops), each folder's entries
    sorted by name."""
    found: list[Path] = []
    seen: set[str] = set()

    def walk(directory: Path, ancestors: frozenset[str]) -> None:
        with os.scandir(directory) as entries:
            ordered = sorted(entries, key=lambda e: os.fsencode(e.name))
        for entry in ordered:
            path = directory / entry.name
            if entry.is_dir(follow_symlinks=True):
                real = os.path.realpath(path)
                if real not in ancestors:
                    walk(path, ancestors | {real})
            elif entry.is_file(follow_symlinks=True) and path.suffix.lower() in IMAGE_EXTENSIONS:
                real = os.path.realpath(path)
                if real not in seen:
                    seen.add(real)
                    found.append(path)

    root = Path(folder)
    walk(root, frozenset({os.path.realpath(root)}))
    return found


def predict_folder(
    folder: str | os.PathLike[str],
    output: str,
    *,
    model: str | os.PathLike[str] | bytes | None = None,
    provider: str = "auto",
    precision: str = "f32",
    actors: int | None = None,
    threads_per_actor: int = 1,
    batch_size: int = 16,
    read: Literal["bytes", "path"] = "bytes",
    rows_per_file: int = 10_000,
) -> dict[str, Any]:
    """Every image under ``folder`` (``list_images``) → Parquet files in ``output`` (a folder or a
    ``s3://``-style URI Ray can write), one row per image in the folder's order: ``path``, then the
    ``Predictor`` columns. read="bytes": the driver's tasks read the files and Ray ships their bytes to
    the actors (any node can score); read="path": each actor reads its files itself (they must be
    reachable from every node; less data moved). actors: default the cluster's CPUs / threads_per_actor.
    ``output`` must not exist yet. Starts a local Ray if none is running. Returns {"images", "errors",
    "seconds"}."""
    import ray
    import ray.data

    files = [str(p) for p in list_images(folder)]
    if not files:
        raise ValueError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)} files, recursively)")
    if not ray.is_initialized():
        ray.init()
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // threads_per_actor))
    # Blocks of one actor call each: every actor gets work, and rows stream to the writer.
    blocks = max(1, -(-len(files) // batch_size))
    # Reading a block's files or writing rows takes milliseconds against an actor's ~1 s per block, and each
    # task running at once is one more Python worker process: a few are enough (measured: unbounded was
    # 1.4x slower on 2 cores, docs/ray.md).
    io_tasks = max(1, actors // 4)
    context = ray.data.DataContext.get_current()
    preserved = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # rows in the folder's order
    started = time.perf_counter()
    try:
        if read == "bytes":
            # Reading and writing are I/O: they reserve no CPU, or actors that fill every core would
            # leave them none and the job would wait forever.
            dataset = ray.data.read_binary_files(
                files, include_paths=True, num_cpus=0, concurrency=io_tasks, override_num_blocks=blocks
            )
            column = "bytes"
        elif read == "path":
            dataset = ray.data.from_items([{"path": f} for f in files], override_num_blocks=blocks)
            column = "path"
        else:
            raise ValueError(f"read must be 'bytes' or 'path', not {read!r}")
        dataset = dataset.map_batches(
            Predictor,
            fn_constructor_kwargs={
                "model": model,
                "provider": provider,
                "precision": precision,
                "threads": threads_per_actor,
                "column": column,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads_per_actor,
            batch_size=batch_size,
            batch_format="pyarrow",
        )
        dataset.write_parquet(
            output,
            min_rows_per_file=rows_per_file,
            concurrency=io_tasks,
            ray_remote_args={"num_cpus": 0},
            mode=ray.data.SaveMode.ERROR,  # never mixed with an earlier run's files
        )
    finally:
        context.execution_options.preserve_order = preserved
    seconds = time.perf_counter() - started
    errors = _count_errors(output)
    return {"images": len(files), "errors": errors, "seconds": seconds}


def _count_errors(output: str) -> int:
    import pyarrow.dataset

    table = pyarrow.dataset.dataset(output, format="parquet").to_table(columns=["error"])
    return int(table.num_rows - table.column("error").null_count)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medpatch.ray", description="Score every X-ray under FOLDER on Ray, into Parquet files in OUT."
    )
    parser.add_argument("folder")
    parser.add_argument("output")
    parser.add_argument("--model", help="an ONNX model from `medpatch export` (default: the embedded demo model)")
    parser.add_argument("--provider", default="auto")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--actors", type=int, help="default: the cluster's CPUs / --threads-per-actor")
    parser.add_argument("--threads-per-actor", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per actor call")
    parser.add_argument("--read", choices=["bytes", "path"], default="bytes")
    parser.add_argument("--address", help="a running Ray cluster (default: RAY_ADDRESS, else a local one)")
    args = parser.parse_args(argv)
    import ray

    ray.init(address=args.address)
    summary = predict_folder(
        args.folder,
        args.output,
        model=args.model,
        provider=args.provider,
        precision=args.precision,
        actors=args.actors,
        threads_per_actor=args.threads_per_actor,
        batch_size=args.batch_size,
        read=args.read,
    )
    print(json.dumps(summary))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

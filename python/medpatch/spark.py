"""medpatch on Spark: a ``make_predict_fn`` for ``pyspark.ml.functions.predict_batch_udf``.

Each Python worker builds one ``medpatch.Engine`` (the first time a task of the UDF runs there; Spark
caches it) and predicts the column's images batch by batch: file bytes (``spark.read.format
("binaryFile")``'s ``content``), paths every executor can read, or flattened pixel arrays with
``input_tensor_shapes=[[height, width]]``::

    from pyspark.ml.functions import predict_batch_udf
    import medpatch.spark

    images = spark.read.format("binaryFile").load("/archive/cxr/*.png")
    predict = predict_batch_udf(medpatch.spark.make_predict_fn(provider="cpu", with_names=True),
                                return_type=medpatch.spark.return_type(), batch_size=16)
    scores = images.select("path", predict("content", "path").alias("medpatch")).select("path", "medpatch.*")

The result is a struct of ``probabilities``, ``logits`` (array<float>, model class order),
``patch_logits`` (array<float>: grid × grid × classes flattened row-major) and ``error`` (null, or the
message for an image that failed: its arrays are then NaN, as ``predict_batch_udf`` has no null
arrays). A corrupt file is a row with an error, never a failed task. pyspark (≥ 3.4, with pandas and
pyarrow) and Java are the user's; this module imports pyspark only in ``return_type``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ._medpatch import Engine
from .ray import UNNAMED, predict_columns

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

__all__ = ["make_predict_fn", "return_type"]


def return_type() -> StructType:
    """The Spark type of a prediction, for ``predict_batch_udf(return_type=...)``."""
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    return StructType(
        [
            StructField("probabilities", ArrayType(FloatType())),
            StructField("logits", ArrayType(FloatType())),
            StructField("patch_logits", ArrayType(FloatType())),
            StructField("error", StringType()),
        ]
    )


def make_predict_fn(
    model: str | os.PathLike[str] | bytes | None = None,
    *,
    provider: str = "auto",
    precision: str = "f32",
    threads: int = 1,
    batch_size: int | None = None,
    images_per_batch: int | None = None,
    with_names: bool = False,
) -> Callable[[], Callable[..., dict[str, np.ndarray]]]:
    """A ``make_predict_fn`` for ``predict_batch_udf``: it builds the engine (arguments as
    ``medpatch.Engine``; threads per Python worker, default 1: run one worker per core) and returns
    ``predict(images)``, or with ``with_names=True`` ``predict(images, names)`` (call the UDF on two
    columns, e.g. ``("content", "path")``, so that error messages name the file)."""
    settings: dict[str, Any] = {
        "provider": provider,
        "precision": precision,
        "threads": threads,
        "batch_size": batch_size,
    }

    def make() -> Callable[..., dict[str, np.ndarray]]:
        engine = Engine(model, **settings)

        def outputs(images: np.ndarray, names: np.ndarray | None) -> dict[str, np.ndarray]:
            named = None if names is None else [n if isinstance(n, str) else UNNAMED for n in names]
            predictions = predict_columns(engine, list(images), named, images_per_batch)
            return {
                "probabilities": predictions.probabilities,
                "logits": predictions.logits,
                "patch_logits": predictions.patch_logits,
                "error": np.array(predictions.errors, dtype=object),
            }

        # predict_batch_udf counts the function's parameters to decide how many columns it takes.
        if with_names:

            def predict_named(images: np.ndarray, names: np.ndarray) -> dict[str, np.ndarray]:
                return outputs(images, names)

            return predict_named

        def predict(images: np.ndarray) -> dict[str, np.ndarray]:
            return outputs(images, None)

        return predict

    return make

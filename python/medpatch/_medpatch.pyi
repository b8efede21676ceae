"""Type stubs for medpatch._medpatch, the Rust extension (re-exported by medpatch/__init__.py); checked
against the built module by mypy.stubtest (tests/python/test_python_package.py)."""

import os
from typing import Iterable, Literal, Sequence, final

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = [
    "Engine",
    "Result",
    "export",
    "Error",
    "DecodeError",
    "ModelError",
    "ProviderUnavailableError",
    "BackendError",
    "__version__",
]

_ImageInput = str | os.PathLike[str] | bytes | bytearray | npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.uint8] | npt.NDArray[np.uint16]
_MapKind = Literal["raw", "scaled"]

class Error(Exception):
    """Base class of medpatch's own errors."""

class DecodeError(Error):
    """An image could not be decoded (corrupt, truncated, unsupported format or variant)."""

class ModelError(Error):
    """The model could not be read or breaks the medpatch contract."""

class ProviderUnavailableError(Error):
    """The requested execution provider cannot run here (library missing, no GPU, ...)."""

class BackendError(Error):
    """The backend failed while running the model (or produced non-finite outputs)."""

@final
class Result:
    """One image's prediction. Its arrays are read-only and owned by the result."""

    @property
    def probabilities(self) -> npt.NDArray[np.float32]:
        """sigmoid(logits), shape (classes,), model class order."""
    @property
    def logits(self) -> npt.NDArray[np.float32]:
        """Image logits (the mean of the patch logits), shape (classes,)."""
    @property
    def patch_logits(self) -> npt.NDArray[np.float32]:
        """The explanation: patch logits, shape (grid, grid, classes), patch rows then columns."""
    @property
    def image(self) -> npt.NDArray[np.float32]:
        """What the model saw: the preprocessed image, shape (size, size), values in [0, 1]."""
    @property
    def classes(self) -> list[str]: ...
    @property
    def provider(self) -> str: ...
    @property
    def timings(self) -> dict[str, float]:
        """Milliseconds per stage: decode, preprocess, tile, backend, aggregate."""
    def as_dict(self) -> dict[str, float]:
        """{class name: probability}."""

@final
class Engine:
    """A MedicalPatchNet model on an execution provider. Thread-safe: share one between threads."""

    def __new__(
        cls,
        model: str | os.PathLike[str] | bytes | None = None,
        *,
        provider: Literal["auto", "tensorrt", "cuda", "cpu", "openvino", "tract"] = "auto",
        precision: Literal["f32", "bf16", "fp16"] = "f32",
        threads: int = 0,
        batch_size: int | None = None,
        ort_library: str | os.PathLike[str] | None = None,
        openvino_library: str | os.PathLike[str] | None = None,
        keep_f32: Sequence[str] | None = None,
    ) -> Engine:
        """model: None (embedded demo model, NOT diagnostic), an ONNX file from `medpatch export`,
        or its bytes. provider "auto" tries TensorRT, CUDA, ONNX Runtime CPU, OpenVINO, then tract.
        precision: "bf16" (OpenVINO, CPUs with BF16) or "fp16" (TensorRT) are checked against f32.
        threads: intra-op threads (0 = all cores). batch_size: patches per backend call.
        ort_library / openvino_library: the runtime's library (default: ORT_DYLIB_PATH /
        OPENVINO_LIB_PATH, then this environment's onnxruntime / openvino wheel). keep_f32: at
        bf16, the layers left in f32 (presets "stem", "head", "classifier", "se", "none" or layer
        names; default ["stem", "classifier"])."""
    def predict(self, image: _ImageInput) -> Result:
        """Predict one X-ray. Raises FileNotFoundError, DecodeError, ValueError, TypeError, ..."""
    def predict_many(
        self,
        images: Iterable[_ImageInput],
        *,
        images_per_batch: int | None = None,
        names: Sequence[str] | None = None,
    ) -> list[Result | BaseException]:
        """Predict in batches; one Result or exception object (not raised) per input, in order.
        names: one per image, what error messages call a bytes input (default "<bytes>")."""
    def saliency(self, result: Result, kind: _MapKind = "raw") -> npt.NDArray[np.float32]:
        """(classes, size, size) map: each patch's raw or scaled logit over its square."""
    def dense_map(self, result: Result, shift_steps: int = 8, kind: _MapKind = "raw") -> npt.NDArray[np.float32]:
        """The paper's dense shift-averaged map, (classes, size, size), shift_steps² forward passes."""
    def overlay(
        self,
        result: Result,
        cls: str | int,
        kind: _MapKind = "raw",
        shift_steps: int | None = None,
        logit_range: float | None = None,
    ) -> npt.NDArray[np.uint8]:
        """(size, size, 4) RGBA colour layer (alpha 128) in the paper's colours, saturating at a patch
        logit of ±logit_range (default: overlay_logit_range); draw over result.image."""
    def write_dicom(
        self,
        result: Result,
        source: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        classes: Sequence[str | int] | None = None,
    ) -> list[str]:
        """DICOM results for the DICOM file `source` the result was predicted from, into `out_dir`: a TID 1500
        SR, a FRACTIONAL segmentation of the patch maps, an overlay per mapped class, in the source's study.
        classes: names or indices to map (default: those called present, else the most probable). Returns
        the paths written; a source that is not DICOM raises ValueError."""
    @property
    def overlay_logit_range(self) -> float:
        """The patch logit at which this model's overlays saturate (its calibrated range, else the paper's 80)."""
    @property
    def classes(self) -> list[str]: ...
    @property
    def provider(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def skipped(self) -> list[tuple[str, str]]: ...
    @property
    def image_size(self) -> int: ...
    @property
    def patch_size(self) -> int: ...
    @property
    def grid(self) -> int: ...
    @property
    def is_default_model(self) -> bool: ...
    @property
    def model(self) -> str: ...

def export(
    weights: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    arch: str = "efficientnet_v2_s",
    patch_size: int = 64,
    image_size: int = 512,
    classes: Sequence[str] | None = None,
) -> dict[str, object]:
    """Write trained weights to a self-describing ONNX file, exactly as `medpatch export` does."""

"""MedicalPatchNet chest X-ray classification with built-in explanation maps, on medpatch's Rust engine.

A 512×512 X-ray is cut into 8×8 patches of 64×64; one network scores every patch for the 14
CheXpert findings; the image's logits are the mean of the patch logits, so the patch logits *are*
the explanation::

    import medpatch
    eng = medpatch.Engine()                    # embedded demo model: NOT a diagnostic model
    r = eng.predict("cxr.png")                 # path, bytes, or a 2-D numpy array
    r.as_dict()                                # {class: probability}
    eng.saliency(r)                            # (14, 512, 512) float32 maps

The GIL is released while images are decoded and the model runs: one Engine can serve a thread
pool. ONNX Runtime is used when the ``onnxruntime`` wheel is installed (``provider="auto"``);
otherwise tract, a pure-Rust runtime, runs and ``Engine.skipped`` says why.
"""

from ._medpatch import (
    BackendError,
    DecodeError,
    Engine,
    Error,
    ModelError,
    ProviderUnavailableError,
    Result,
    __version__,
    export,
)

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

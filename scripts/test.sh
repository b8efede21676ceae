#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), then runs every Rust and
# Python test. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)
export ORT_DYLIB_PATH
export MEDPATCH_PYTHON="$PWD/.venv/bin/python"

echo "== Rust tests (workspace)"
# medpatch-train links libtorch: it is built and tested in its own block below.
cargo test --workspace --exclude medpatch-train --locked --no-fail-fast

echo "== Python tests"
.venv/bin/python -m pytest -q tests/python

# ---- medpatch-train (libtorch through tch) ---------------------------------------------------
# Links the libtorch of the venv's torch wheel (LIBTORCH_USE_PYTORCH=1, venv active); its build.rs
# keeps libtorch/libtorch_cuda linked (--no-as-needed) and sets an rpath, so the binaries run
# without LD_LIBRARY_PATH. Tests: parity with torchvision (eval logits, one training step,
# OneCycle), checkpoint export, CheXpert CSV/preprocessing/loader fixtures, synthetic benchmark,
# a short training run with resume. Tiny configs; about 2 minutes on 2 cores after the build.
echo "== medpatch-train (libtorch)"
(
    # shellcheck disable=SC1091
    source .venv/bin/activate
    export LIBTORCH_USE_PYTORCH=1
    cargo test -p medpatch-train --locked
)
# ---- end medpatch-train -----------------------------------------------------------------------

#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), then checks formatting and
# lints and runs every Rust, C/C++ and Python test. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)
export ORT_DYLIB_PATH
OPENVINO_LIB_PATH=$(ls -d "$PWD"/.venv/lib/python3*/site-packages/openvino/libs | head -n1)
export OPENVINO_LIB_PATH
export MEDPATCH_PYTHON="$PWD/.venv/bin/python"
export MEDPATCH_BIN="$PWD/target/debug/medpatch"

# medpatch-train links the libtorch of the venv's torch wheel (LIBTORCH_USE_PYTORCH=1, venv
# active); its build.rs keeps libtorch/libtorch_cuda linked (--no-as-needed) and sets an rpath,
# so its binaries run without LD_LIBRARY_PATH. It is tested in the same cargo invocation as the
# rest of the workspace: one feature resolution, so the dependencies are compiled once.
# shellcheck disable=SC1091
source .venv/bin/activate
export LIBTORCH_USE_PYTORCH=1
# pyo3 (the Python package's crate) finds its interpreter here when clippy checks it.
export PYO3_PYTHON="$MEDPATCH_PYTHON"

echo "== Formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== The edge build (tract only, aarch64; tests/edge_build.rs runs it under qemu)"
# -D warnings: compiler warnings in the tract-only configuration fail the suite as clippy's do above.
MEDPATCH_EDGE_BIN=$(RUSTFLAGS="-D warnings" scripts/edge-build.sh --profile quick)
export MEDPATCH_EDGE_BIN

echo "== Rust tests (workspace, train included; the C API's examples are built and run by ffi/tests/packaging.rs)"
# medpatch-python is a Python extension module: scripts/setup.sh builds and installs it with
# `pip install ./python`, and pytest tests that install below.
cargo test --workspace --exclude medpatch-python --locked --no-fail-fast

echo "== Python tests (references, and the installed medpatch package)"
python -m pytest -q tests/python

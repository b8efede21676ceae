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
cargo test --workspace --locked

echo "== Python tests"
.venv/bin/python -m pytest -q tests/python

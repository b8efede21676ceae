#!/usr/bin/env bash
# Installs everything the full test suite needs, from the package registries only, pinned:
# the Python reference environment in .venv (torch/torchvision, onnx, onnxruntime, PIL, pydicom,
# pytest). Re-running it is fast: nothing is reinstalled while scripts/requirements-test.txt is
# unchanged, and pip's cache is reused otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
REQUIREMENTS=scripts/requirements-test.txt
STAMP=$VENV/.medpatch-requirements.sha256

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi

want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
    echo "setup: $VENV is up to date"
else
    echo "setup: installing the Python reference environment into $VENV (first time: a few minutes, ~5 GB)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS"
    echo "$want" > "$STAMP"
fi

# ONNX Runtime for the Rust side comes from the same pinned wheel (no other download exists).
ORT_LIB=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)
if [ -z "$ORT_LIB" ]; then
    echo "setup: onnxruntime's libonnxruntime.so is missing from $VENV" >&2
    exit 1
fi
echo "setup: ONNX Runtime library: $ORT_LIB"

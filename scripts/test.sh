#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup.sh), then checks formatting and
# lints and runs every Rust, C/C++ and Python test. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Formatting"
cargo fmt --all -- --check

# Lints: clippy (-D warnings) checks every workspace crate while it is compiled for the tests, the
# edge build and the Python package, with clippy-driver as cargo's workspace wrapper (how `cargo
# clippy` itself works), instead of a separate `cargo clippy` pass that would compile every
# dependency once more (~10 minutes on 2 cores). Dependencies are compiled by plain rustc.
RUSTC_WORKSPACE_WRAPPER=$(rustup which clippy-driver)
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

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
export PYO3_PYTHON="$MEDPATCH_PYTHON"

echo "== The edge build (tract only, aarch64; tests/edge_build.rs runs it under qemu; linted too)"
# For an FP16 CPU (--fp16-cpu): qemu's has FP16 but shows the host's /proc/cpuinfo, so tract's fp16
# kernels run only in a build that assumes it. In sequence, not in the background beside the x86
# builds: tried in a cold run (2026-11-28), pip install + edge build together took 33 min against
# 30.3 in sequence (each build alone already keeps the 2 cores busy).
MEDPATCH_EDGE_BIN=$(scripts/edge-build.sh --profile quick --fp16-cpu)
export MEDPATCH_EDGE_BIN

echo "== Rust tests (workspace, train included; the C API's examples are built and run by ffi/tests/packaging.rs)"
# Every cargo command below selects the whole workspace, so cargo resolves the dependencies' features
# once and compiles each dependency once: scripts/setup.sh's `pip install ./python` (dev profile)
# already compiled those the Python package uses, with the same features (tests/python_build.rs).
# The libraries and binaries themselves first: a test build does not put them in target/debug, and
# ffi/tests/packaging.rs stages target/debug/libmedpatch.so. Then the benches, compiled (and so
# linted) but not run: they are measurements, not tests. medpatch-python has no Rust tests (an
# extension module cannot link a test harness): pytest tests its installed package below.
cargo build --workspace --locked
cargo test --workspace --locked --benches --no-run
# cargo-nextest (scripts/setup.sh) runs the tests, binaries side by side; it does not run doctests,
# so `cargo test --doc` does.
PATH="$PWD/.cache/tools/bin:$PATH" cargo nextest run --workspace --locked --no-fail-fast
cargo test --workspace --locked --doc

echo "== The web page (WebAssembly, tract only) in headless Chromium: web/tests/browser.rs, web/page-test"
# A third compilation of tract and the decoders (for wasm32) at the quick profile, where compile
# time counts more than speed (docs/web.md has both measured). The browser tests compare against
# the native CLI built above (MEDPATCH_BIN).
scripts/web-build.sh --profile quick --test >/dev/null
(cd web/page-test && MEDPATCH_WEB_TEST_OUT="$PWD/../../target/web-test" node --test page.test.mjs)

echo "== Python tests (references, and the installed medpatch package)"
python -m pytest -q tests/python

echo "== The paper's reproduction pipeline, smoke-sized (scripts/reproduce_paper.sh, a few images, one epoch)"
rm -rf target/test-scratch/reproduction-smoke && mkdir -p target/test-scratch
SMOKE=1 OUT=target/test-scratch/reproduction MEDPATCH_BIN="$PWD/target/debug/medpatch" \
    MEDPATCH_TRAIN_BIN="$PWD/target/debug/medpatch-train" scripts/reproduce_paper.sh 2> target/test-scratch/reproduction.log ||
    { tail -n 40 target/test-scratch/reproduction.log; exit 1; }
report=target/test-scratch/reproduction-smoke/reproduction.md
for section in "Table 1: classification" "Table 2: hit rate" "Table 3: mIoU" "roc.png" "saliency.png"; do
    grep -q "$section" "$report" || { echo "reproduction smoke: '$section' missing from $report"; exit 1; }
done
echo "reproduction smoke: $report written"

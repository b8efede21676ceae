#!/usr/bin/env bash
# Installs everything the full test suite needs, from the package registries only, pinned:
# the Python reference environment in .venv (torch/torchvision, onnx, onnxruntime, PIL, pydicom,
# pytest, cmake, maturin), cbindgen and (where missing) cargo-nextest (.cache/tools), the aarch64
# cross toolchain and qemu-user (apt, rustup), the web page's toolchain and browser (the wasm32
# target, wasm-bindgen-cli in .cache/tools, Debian's chromium and chromium-driver, playwright-core
# from npm), and the `medpatch` Python package itself (`pip install ./python`). Re-running it is fast: nothing is reinstalled while
# scripts/requirements-test.txt is unchanged, and pip's cache is reused otherwise.
# `scripts/setup.sh --venv-only` stops after the Python environment.
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
# `--venv-only`: the Python environment alone (what scripts/reproduce_paper.sh needs: libtorch,
# ONNX Runtime, the report's plotting), without the test suite's cross toolchain and packages.
[ "${1:-}" = --venv-only ] && exit 0

# The edge build's cross toolchain (scripts/edge-build.sh): Debian's aarch64 linker and C compiler
# (a few C dependencies, e.g. OpenJPEG), qemu-user to run the result, and Rust's aarch64 target.
missing=()
# libopenjp2-7-dev: ffi/tests/packaging.rs links the system OpenJPEG beside libmedpatch.
# orthanc, dcmtk, dicom3tools: the DICOM results' tests (tests/python/test_dicom_out.py,
# dicom_out/tests/objects.rs) run a real Orthanc PACS, dcmtk's storescu/echoscu and dicom3tools'
# dciodvfy validator (~12 s of apt on a warm mirror, measured 2026-12-03).
# chromium, chromium-driver: the web page's browser tests (scripts/web-build.sh --test,
# web/page-test), headless (~25 s of apt with its update, measured 2026-12-03; docs/web.md).
# openjdk-17-jre-headless: the JVM under Spark for medpatch.spark's test (tests/python/test_ray.py; 44 MB).
for pkg in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user libopenjp2-7-dev pkg-config orthanc dcmtk dicom3tools \
    chromium chromium-driver openjdk-17-jre-headless; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]} (edge build: aarch64 cross compiler and qemu; DICOM test tools)"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for target in aarch64-unknown-linux-gnu wasm32-unknown-unknown; do
    if ! rustup target list --installed | grep -qx "$target"; then
        echo "setup: rustup target add $target"
        rustup target add "$target"
    fi
done

# cbindgen regenerates ffi/include/medpatch.h; a test checks the committed header against it.
CBINDGEN_VERSION=0.29.4
if [ "$(.cache/tools/bin/cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
    echo "setup: installing cbindgen $CBINDGEN_VERSION into .cache/tools (about a minute)"
    # Not linted: scripts/test.sh's clippy wrapper is for this workspace's crates only.
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
        cargo install --quiet --locked --root .cache/tools cbindgen --version "$CBINDGEN_VERSION"
fi

# cargo-nextest runs the Rust tests (scripts/test.sh, .config/nextest.toml). Machines of this
# project's kind have it; elsewhere it is built once into .cache/tools (a few minutes).
NEXTEST_VERSION=0.9.143
if ! cargo nextest --version >/dev/null 2>&1 && ! [ -x .cache/tools/bin/cargo-nextest ]; then
    echo "setup: installing cargo-nextest $NEXTEST_VERSION into .cache/tools (a few minutes)"
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
        cargo install --quiet --locked --root .cache/tools cargo-nextest --version "$NEXTEST_VERSION"
fi

# The web page (scripts/web-build.sh): wasm-bindgen-cli, of exactly the wasm-bindgen version in
# Cargo.lock (the two must match), with its test runner. Not --locked: the lock file published with
# 0.2.130 names webpki-roots 1.0.11, which crates.io no longer offers, so it cannot be resolved. Its page test drives Debian's chromium
# with playwright-core from npm (pinned by web/page-test/package-lock.json; no browser download),
# on this machine's Node.js.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ "$(.cache/tools/bin/wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    echo "setup: installing wasm-bindgen-cli $WASM_BINDGEN_VERSION into .cache/tools (a few minutes)"
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
        cargo install --quiet --root .cache/tools wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
    echo "setup: Node.js 20 or newer is needed for the web page's test (web/page-test)" >&2
    exit 1
fi
PAGE_TEST=web/page-test
want=$(sha256sum "$PAGE_TEST/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$PAGE_TEST/node_modules/.medpatch-lock.sha256" 2>/dev/null)" != "$want" ]; then
    echo "setup: npm ci in $PAGE_TEST (playwright-core)"
    (cd "$PAGE_TEST" && npm ci --no-audit --no-fund --silent)
    echo "$want" > "$PAGE_TEST/node_modules/.medpatch-lock.sha256"
fi

# The Python package, exactly as a user installs it (pip install ./python), into .venv, built with
# the workspace's dev profile (maturin's default is release): python/Cargo.toml gives its
# dependencies the workspace's features, so what this compiles is what scripts/test.sh's `cargo
# build --workspace` needs anyway, and whichever of the two runs second reuses it.
# --no-build-isolation uses the pinned maturin above instead of fetching one.
echo "setup: pip install ./python (medpatch Python package)"
PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" -m pip install --quiet --no-build-isolation --no-deps \
    --config-settings=build-args="--profile dev" ./python

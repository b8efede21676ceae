#!/usr/bin/env bash
# The web page: the explainer (web/, the engine with tract only) compiled to WebAssembly with
# SIMD128, and its JavaScript glue, into web/www/pkg. Prints the page's folder on stdout; serve that
# folder with any static server (it works offline), e.g.
#   python3 -m http.server -d web/www 8000   # then open http://127.0.0.1:8000
#
#   scripts/web-build.sh [--release | --profile NAME] [--test]
#
# Default profile release (the page to publish); the test suite uses `--profile quick` (compiles
# fastest; docs/web.md has what each costs). `--test` then runs the browser tests
# (web/tests/browser.rs) in headless Chromium through chromedriver, against the native CLI's
# numbers (MEDPATCH_BIN, default target/debug/medpatch, must exist). Needs Rust's
# wasm32-unknown-unknown target and wasm-bindgen-cli of exactly the version in Cargo.lock, both
# installed here when missing, and for `--test` Debian's chromium and chromium-driver (all four
# are installed by scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
run_tests=
while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=release; shift ;;
        --profile) profile=$2; shift 2 ;;
        --test) run_tests=1; shift ;;
        *) echo "usage: scripts/web-build.sh [--release | --profile NAME] [--test]" >&2; exit 2 ;;
    esac
done

target=wasm32-unknown-unknown
if ! rustup target list --installed | grep -qx "$target"; then
    echo "web-build: rustup target add $target" >&2
    rustup target add "$target" >&2
fi

# wasm-bindgen-cli must be the version of the wasm-bindgen crate the page is built with.
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
tools=$PWD/.cache/tools
if [ "$("$tools/bin/wasm-bindgen" --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
    echo "web-build: installing wasm-bindgen-cli $version into .cache/tools (a few minutes, once)" >&2
    # Not linted: the clippy wrapper of scripts/test.sh is for this workspace's crates only. Not
    # --locked: see scripts/setup.sh.
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
        cargo install --quiet --root "$tools" wasm-bindgen-cli --version "$version" >&2
fi

# SIMD128 (every current browser has it): tract's wasm kernels use it. Only the target's code:
# build scripts and proc macros (host) are unaffected. The tests below are built with the same
# flags, so they reuse every dependency compiled here.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128"
cargo build --locked -p medpatch-web --lib --target "$target" --profile "$profile" >&2
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
rm -rf web/www/pkg
# The page to publish goes without the function-name section (2.3 MB of the 23.6 MB module; panic
# messages keep their text, stack traces lose their names); test builds keep it.
strip=()
[ "$profile" = release ] && strip=(--remove-name-section --remove-producers-section)
"$tools/bin/wasm-bindgen" --target web --no-typescript "${strip[@]}" --out-dir web/www/pkg \
    "target/$target/$dir/medpatch_web.wasm" >&2

if [ -n "$run_tests" ]; then
    medpatch=${MEDPATCH_BIN:-$PWD/target/debug/medpatch}
    # The reference: the native tract build's records for the bundled X-rays, compiled into the
    # test (web/tests/browser.rs).
    MEDPATCH_WEB_NATIVE_PREDICTIONS=$("$medpatch" predict --provider tract \
        assets/00001369_000.png assets/synthetic-pneumothorax.jpg 2>/dev/null)
    export MEDPATCH_WEB_NATIVE_PREDICTIONS
    # Debian's chromedriver and chromium (web/webdriver.json: the flags for a closed network);
    # chromedriver starts each session with a fresh profile. 20 s per test file is the runner's
    # default, too short for a model on a cold start at the quick profile.
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$tools/bin/wasm-bindgen-test-runner" \
        CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver} \
        WASM_BINDGEN_TEST_WEBDRIVER_JSON="$PWD/web/webdriver.json" \
        WASM_BINDGEN_TEST_TIMEOUT=600 \
        cargo test --locked -p medpatch-web --test browser --target "$target" --profile "$profile" -- --nocapture >&2
fi
echo "$PWD/web/www"

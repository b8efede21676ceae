#!/usr/bin/env bash
# The edge build: `medpatch` with tract only (pure Rust: no ONNX Runtime or OpenVINO code),
# cross-compiled for 64-bit ARM Linux. Prints the binary's path on stdout.
#
#   scripts/edge-build.sh [--target TRIPLE] [--release | --profile NAME]
#
# Default target aarch64-unknown-linux-gnu (linker and qemu runner: .cargo/config.toml; toolchain
# installed by scripts/setup.sh). Default profile release (the binary to ship); the test suite
# uses `--profile quick` (compiles fastest). Run the result on x86 with
#   qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/release/medpatch predict X.png
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target=$2; shift 2 ;;
        --release) profile=release; shift ;;
        --profile) profile=$2; shift 2 ;;
        *) echo "usage: scripts/edge-build.sh [--target TRIPLE] [--release | --profile NAME]" >&2; exit 2 ;;
    esac
done

# cc-based C dependencies find the cross compiler by the target's name.
export CC_aarch64_unknown_linux_gnu=${CC_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-gcc}
export AR_aarch64_unknown_linux_gnu=${AR_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-ar}
cargo build --locked -p medpatch --bin medpatch --no-default-features --target "$target" --profile "$profile" >&2
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
echo "$PWD/target/$target/$dir/medpatch"

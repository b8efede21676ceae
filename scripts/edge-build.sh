#!/usr/bin/env bash
# The edge build: `medpatch` with tract only (pure Rust: no ONNX Runtime or OpenVINO code),
# cross-compiled for 64-bit ARM Linux. Prints the binary's path on stdout.
#
#   scripts/edge-build.sh [--target TRIPLE] [--release]
#
# Default target aarch64-unknown-linux-gnu (linker and qemu runner: .cargo/config.toml; toolchain
# installed by scripts/setup.sh). Default profile dev (the workspace's: dependencies optimised);
# --release for a size-optimised binary to ship. Run the result on x86 with
#   qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/debug/medpatch predict X.png
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
profile=dev
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target=$2; shift 2 ;;
        --release) profile=release; shift ;;
        *) echo "usage: scripts/edge-build.sh [--target TRIPLE] [--release]" >&2; exit 2 ;;
    esac
done

# cc-based C dependencies find the cross compiler by the target's name.
export CC_aarch64_unknown_linux_gnu=${CC_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-gcc}
export AR_aarch64_unknown_linux_gnu=${AR_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-ar}
cargo build --locked -p medpatch --bin medpatch --no-default-features --target "$target" --profile "$profile" >&2
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
echo "$PWD/target/$target/$dir/medpatch"

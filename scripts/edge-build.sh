#!/usr/bin/env bash
# The edge build: `medpatch` with tract only (pure Rust: no ONNX Runtime or OpenVINO code),
# cross-compiled for 64-bit ARM Linux. Prints the binary's path on stdout.
#
#   scripts/edge-build.sh [--target TRIPLE] [--release | --profile NAME] [--fp16-cpu]
#
# Default target aarch64-unknown-linux-gnu (linker and qemu runner: .cargo/config.toml; toolchain
# installed by scripts/setup.sh). Default profile release (the binary to ship); the test suite
# uses `--profile quick` (compiles fastest). Run the result on x86 with
#   qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/release/medpatch predict X.png
#
# `--precision fp16` runs tract's native fp16 kernels where tract finds FEAT_FP16 at run time (on
# Linux: "asimdhp" among /proc/cpuinfo's Features). `--fp16-cpu` builds for CPUs known to have it
# instead (tract's `feature_cpu="fp16"`): the binary then assumes FP16 without looking, and dies on
# an ARM CPU without it (illegal instruction). The test suite's build uses it because qemu-user
# shows the x86 host's /proc/cpuinfo, while the CPU it emulates (`max`) has FP16.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
profile=release
fp16_cpu=
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target=$2; shift 2 ;;
        --release) profile=release; shift ;;
        --profile) profile=$2; shift 2 ;;
        --fp16-cpu) fp16_cpu=1; shift ;;
        *) echo "usage: scripts/edge-build.sh [--target TRIPLE] [--release | --profile NAME] [--fp16-cpu]" >&2; exit 2 ;;
    esac
done

# cc-based C dependencies find the cross compiler by the target's name.
export CC_aarch64_unknown_linux_gnu=${CC_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-gcc}
export AR_aarch64_unknown_linux_gnu=${AR_aarch64_unknown_linux_gnu:-aarch64-linux-gnu-ar}
if [ -n "$fp16_cpu" ]; then
    # Only the target's code: build scripts and proc macros (host) are unaffected.
    triple_var=$(echo "$target" | tr 'a-z-' 'A-Z_')
    export "CARGO_TARGET_${triple_var}_RUSTFLAGS=--cfg feature_cpu=\"fp16\""
fi
cargo build --locked -p medpatch --bin medpatch --no-default-features --target "$target" --profile "$profile" >&2
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
echo "$PWD/target/$target/$dir/medpatch"

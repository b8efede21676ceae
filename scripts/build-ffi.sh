#!/usr/bin/env bash
# Build libmedpatch and stage it as an installable prefix:
#   lib/libmedpatch.so.X.Y.Z (+ .so.X, .so symlinks; soname libmedpatch.so.X), lib/libmedpatch.a (--static),
#   include/medpatch.h, include/medpatch.hpp, lib/cmake/medpatch/medpatchConfig{,Version}.cmake,
#   lib/pkgconfig/medpatch.pc
#
#   scripts/build-ffi.sh --prefix DIR [--debug] [--static]   build (release by default) and stage
#   scripts/build-ffi.sh --header                            regenerate ffi/include/medpatch.h (cbindgen)
#
# --debug uses the dev profile, which this workspace optimises (deps at opt-level 3): the test suite
# stages with it to reuse its build. Users want the default (release).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="" profile=release static=0 header=0 build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --debug) profile=dev; shift ;;
        --static) static=1; shift ;;
        --header) header=1; shift ;;
        --no-build) build=0; shift ;;  # stage what cargo already built (the FFI tests do this)
        *) echo "build-ffi: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ "$header" = 1 ]; then
    cbindgen=$(command -v cbindgen || echo .cache/tools/bin/cbindgen)
    [ -x "$cbindgen" ] || { echo "build-ffi: cbindgen not found: run scripts/setup.sh" >&2; exit 1; }
    "$cbindgen" --config ffi/cbindgen.toml --crate medpatch-ffi --output ffi/include/medpatch.h.part ffi
    mv ffi/include/medpatch.h.part ffi/include/medpatch.h
    echo "build-ffi: wrote ffi/include/medpatch.h"
    [ -n "$prefix" ] || exit 0
fi
[ -n "$prefix" ] || { echo "usage: scripts/build-ffi.sh --prefix DIR [--debug] [--static] | --header" >&2; exit 2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
major=${version%%.*} rest=${version#*.} minor=${rest%%.*}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
out_dir=$target_dir/$([ "$profile" = dev ] && echo debug || echo release)

[ "$build" = 1 ] && cargo build --locked -p medpatch-ffi --profile "$profile"
if [ "$static" = 1 ] && [ "$build" = 1 ]; then
    cargo rustc --locked -p medpatch-ffi --lib --profile "$profile" --crate-type staticlib
fi

mkdir -p "$prefix/lib/cmake/medpatch" "$prefix/lib/pkgconfig" "$prefix/include"
install -m 755 "$out_dir/libmedpatch.so" "$prefix/lib/libmedpatch.so.$version"
ln -sf "libmedpatch.so.$version" "$prefix/lib/libmedpatch.so.$major"
ln -sf "libmedpatch.so.$major" "$prefix/lib/libmedpatch.so"
[ "$static" = 1 ] && install -m 644 "$out_dir/libmedpatch.a" "$prefix/lib/libmedpatch.a"
install -m 644 ffi/include/medpatch.h ffi/include/medpatch.hpp "$prefix/include/"
fill() { sed -e "s/@VERSION@/$version/g" -e "s/@MAJOR@/$major/g" -e "s/@MINOR@/$minor/g" "$1" > "$2"; }
fill ffi/cmake/medpatchConfig.cmake.in "$prefix/lib/cmake/medpatch/medpatchConfig.cmake"
fill ffi/cmake/medpatchConfigVersion.cmake.in "$prefix/lib/cmake/medpatch/medpatchConfigVersion.cmake"
fill ffi/cmake/medpatch.pc.in "$prefix/lib/pkgconfig/medpatch.pc"
echo "build-ffi: staged libmedpatch $version ($profile) in $prefix"

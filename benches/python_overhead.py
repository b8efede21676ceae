"""What `import medpatch` costs over the Rust engine for one image: the same file predicted by the
Python package and by libmedpatch's C API (a thin layer measured at < 1% over the Rust API by
`cargo bench -p medpatch-ffi --bench overhead`) loaded with ctypes into the same process,
interleaved rounds, medians.

    .venv/bin/python benches/python_overhead.py [--lib target/debug/libmedpatch.so] [--rounds 30]
"""
import argparse
import ctypes
import os
import statistics
import time
from pathlib import Path

import medpatch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", type=Path, default=REPO / "target" / "debug" / "libmedpatch.so")
    ap.add_argument("--image", type=Path, default=REPO / "assets" / "00001369_000.png")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    provider = "cpu" if os.environ.get("ORT_DYLIB_PATH") else "tract"

    lib = ctypes.CDLL(str(args.lib))
    ptr = ctypes.c_void_p
    options, engine = ptr(), ptr()
    assert lib.medpatch_options_new(ctypes.byref(options)) == 0
    assert lib.medpatch_options_set_provider(options, provider.encode()) == 0
    assert lib.medpatch_options_set_threads(options, ctypes.c_size_t(1)) == 0
    assert lib.medpatch_engine_new(options, ctypes.byref(engine)) == 0, lib.medpatch_last_error
    lib.medpatch_options_free(ctypes.byref(options))
    path = str(args.image).encode()

    def c_api():
        result = ptr()
        t = time.perf_counter()
        assert lib.medpatch_predict_file(engine, path, ctypes.byref(result)) == 0
        lib.medpatch_result_free(ctypes.byref(result))
        return time.perf_counter() - t

    eng = medpatch.Engine(provider=provider, threads=1)

    def python():
        t = time.perf_counter()
        eng.predict(args.image).probabilities
        return time.perf_counter() - t

    for _ in range(3):
        c_api(), python()
    c_times, py_times = [], []
    for i in range(args.rounds):
        pair = (c_api, python) if i % 2 == 0 else (python, c_api)
        for f in pair:
            (c_times if f is c_api else py_times).append(f())
    c, p = statistics.median(c_times), statistics.median(py_times)
    print(
        f"predict one file ({provider}, 1 thread, median of {args.rounds}): C API {c * 1e3:.2f} ms, "
        f"Python {p * 1e3:.2f} ms, overhead {100 * (p / c - 1):+.2f}%"
    )
    lib.medpatch_engine_free(ctypes.byref(engine))


if __name__ == "__main__":
    main()

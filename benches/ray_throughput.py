"""Throughput of medpatch on Ray Data (medpatch.ray.predict_folder, folder → Parquet) against
`medpatch predict` on the same folder, and the memory of one Ray actor. The numbers in docs/ray.md.

    python benches/ray_throughput.py [--images 600] [--provider cpu] [--model M.onnx] [--folder DIR]

Without --folder, it writes --images synthetic X-rays (tests/python/synthetic_xrays.py, 160-288 px
PNG/JPEG) into a temporary folder. Times `medpatch predict` with all cores and with one thread (stdout
only, no --out), and on a local Ray cluster over every core (started once, its start timed apart)
1 actor × 1 thread, 2 actors × 1 thread and 1 actor × 2 threads writing Parquet (read="bytes"), in
--rounds interleaved rounds; prints medians. Ray's times include starting the actors (an engine each), as
a user's job would. Needs MEDPATCH_BIN (or target/debug/medpatch) and ray (pip install './python[ray]').
"""
import argparse
import datetime
import functools
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


class ActorMemory:
    """Peak resident memory of Ray's map actors (processes titled ray::MapWorker...), polled from /proc."""

    def __init__(self) -> None:
        self.peak_kib: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        while not self.stop.is_set():
            for pid_dir in Path("/proc").iterdir():
                if not pid_dir.name.isdigit():
                    continue
                try:
                    if not (pid_dir / "cmdline").read_bytes().startswith(b"ray::MapWorker"):
                        continue
                    status = (pid_dir / "status").read_text()
                except OSError:
                    continue
                rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
                self.peak_kib[int(pid_dir.name)] = max(rss, self.peak_kib.get(int(pid_dir.name), 0))
            time.sleep(0.2)

    def __enter__(self) -> "ActorMemory":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join()


def run_cli(cli: Path, folder: Path, provider: str, threads: int, model: Path | None) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(cli), "predict", "--quiet", "--provider", provider, "--threads", str(threads), str(folder)]
        + (["--model", str(model)] if model else []),
        # Into a pipe: medpatch predict refuses to print its results to /dev/null.
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--model", type=Path, help="an ONNX model (default: the embedded demo model)")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    cli = Path(os.environ.get("MEDPATCH_BIN", REPO / "target" / "debug" / "medpatch"))
    scratch = Path(tempfile.mkdtemp(prefix="medpatch-ray-bench-"))
    try:
        folder = args.folder
        if folder is None:
            from synthetic_xrays import write_archive

            folder = scratch / "archive"
            write_archive(folder, args.images, seed=1, corrupt=False)
        import medpatch.ray

        images = len(medpatch.ray.list_images(folder))
        cores = os.cpu_count() or 1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        ray_start = time.perf_counter() - started

        def ray_run(actors: int, threads: int, memory_kib: list[int]) -> float:
            output = scratch / f"parquet-{actors}x{threads}"
            with ActorMemory() as memory:
                summary = medpatch.ray.predict_folder(
                    folder, str(output), model=args.model, provider=args.provider, actors=actors,
                    threads_per_actor=threads, batch_size=args.batch_size,
                )
            assert summary["images"] == images and summary["errors"] == 0, summary
            memory_kib += memory.peak_kib.values()
            shutil.rmtree(output)
            return float(summary["seconds"])

        actor_peaks: list[int] = []
        runs: dict[str, Callable[[], float]] = {
            "medpatch predict --threads 0 (all cores)": lambda: run_cli(cli, folder, args.provider, 0, args.model),
            "medpatch predict --threads 1": lambda: run_cli(cli, folder, args.provider, 1, args.model),
        }
        for actors, threads in ((1, 1), (2, 1), (1, 2)):
            if actors * threads <= cores:
                runs[f"Ray: {actors} actor(s) x {threads} thread(s)"] = functools.partial(
                    ray_run, actors, threads, actor_peaks
                )
        # Interleaved rounds, medians: a shared machine's load drifts, and then it drifts for every run alike.
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, run in runs.items():
                times[label].append(run())
        cli_peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ray.shutdown()

        median = {label: statistics.median(values) for label, values in times.items()}
        cli_all_cores = median["medpatch predict --threads 0 (all cores)"]
        model = args.model.name if args.model else "the embedded demo model"
        print(f"{images} images in {folder}, {model}, provider {args.provider}, {cpu_model()}, {cores} cores, "
              f"{datetime.date.today().isoformat()}, median of {args.rounds} interleaved rounds; "
              f"load average before: {load_before}")
        print(f"Ray local cluster start: {ray_start:.1f} s (not in the times below)\n")
        print("| run | seconds (median) | images/s | vs medpatch predict (all cores) | every round, s |")
        print("|---|---|---|---|---|")
        for label, seconds in median.items():
            each = ", ".join(f"{t:.1f}" for t in times[label])
            print(f"| {label} | {seconds:.1f} | {images / seconds:.1f} | {cli_all_cores / seconds:.2f}x | {each} |")
        print(f"\nPeak RSS: medpatch predict {cli_peak_mib:.0f} MiB; a Ray actor "
              f"{min(actor_peaks) / 1024:.0f}-{max(actor_peaks) / 1024:.0f} MiB ({len(actor_peaks)} actor processes)")
        per_core = images / median["medpatch predict --threads 1"]
        print(f"Per core (medpatch predict --threads 1): {per_core:.2f} images/s; 10^6 images = "
              f"{1e6 / per_core / 3600:.0f} core-hours")
        print(json.dumps({"images": images, "times": times, "ray_start_s": ray_start}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

"""PyTorch eager CPU reference timing for `medpatch bench`: the seed's MedicalPatchNet forward on
one preprocessed 512×512 image (64 patches), same weights and threads as the Rust side.

Usage: bench_torch.py --weights weights.pt --arch NAME --threads N --repeats R IMAGE.npy
Prints one JSON line: {"median_ms", "min_ms", "images_per_s", "peak_rss_mb", "torch"}.
"""
import argparse
import json
import statistics
import time

import numpy as np
import torch

from bench_runtimes import peak_rss_mb
from medpatch_reference import MedicalPatchNet, build_backbone, load_arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("image")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    state = torch.load(args.weights, map_location="cpu")
    state = {k.removeprefix("_orig_mod.").removeprefix("baseBackbone."): v for k, v in state.items()}
    backbone = build_backbone(load_arch(args.arch))
    backbone.load_state_dict(state)
    model = MedicalPatchNet(backbone, patch_size=64).eval()
    image = torch.from_numpy(np.load(args.image)).reshape(1, 1, 512, 512)
    times = []
    with torch.inference_mode():
        model(image)  # warm-up
        for _ in range(args.repeats):
            t = time.perf_counter()
            model(image)
            times.append((time.perf_counter() - t) * 1e3)
    median = statistics.median(times)
    print(json.dumps({
        "median_ms": median, "min_ms": min(times), "images_per_s": 1e3 / median,
        "peak_rss_mb": peak_rss_mb(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()

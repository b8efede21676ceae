"""PyTorch side of the training-throughput benchmark (scripts/bench_train.sh): the same step as
`medpatch-train bench` — MedicalPatchNet forward on random images, BCEWithLogits on the mean
logits, backward, AdamW(lr 1e-4, weight_decay 0.01) step — on torchvision's EfficientNetV2 built
from the same architecture config. Prints one JSON line like the Rust side.

Usage: train_bench.py [--arch efficientnet_v2_tiny] [--patch-size 64] [--image-size 512]
                      [--batch 2] [--warmup 3] [--steps 10] [--threads 1] [--device cpu] [--amp]
"""
import argparse
import json
import resource
import time

import torch
import torch.nn as nn

from medpatch_reference import MedicalPatchNet, build_backbone, load_arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="efficientnet_v2_tiny")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = MedicalPatchNet(build_backbone(load_arch(args.arch), 14), patch_size=args.patch_size).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    loss_fn = nn.BCEWithLogitsLoss()
    x = torch.rand(args.batch, 1, args.image_size, args.image_size, device=device)
    y = (torch.rand(args.batch, 14, device=device) > 0.7).float()
    patches = args.batch * (args.image_size // args.patch_size) ** 2
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []  # (whole step, forward + loss, backward, optimizer)
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast(device.type, enabled=args.amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        if i >= args.warmup:
            times.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2))

    def med(k: int) -> float:
        return sorted(t[k] for t in times)[len(times) // 2]

    median = med(0)
    print(json.dumps({
        "impl": "pytorch",
        "arch": args.arch,
        "patch_size": args.patch_size,
        "batch_images": args.batch,
        "patches_per_step": patches,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "amp": args.amp,
        "median_step_s": median,
        "patches_per_s": patches / median,
        "forward_s": med(1),
        "backward_s": med(2),
        "optimizer_s": med(3),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }))


if __name__ == "__main__":
    main()

"""PyTorch/torchvision references for medpatch-train's parity tests (train/tests/parity.rs).

Usage: train_parity.py --arch efficientnet_v2_tiny --out DIR [--seed N] [--size 128] [--batch 3]

DIR receives (all safetensors, torchvision names, float32 unless noted):
  init.safetensors     the backbone's state dict before the step (num_batches_tracked as int64)
  inputs.safetensors   images [B,1,S,S] in [0,1] and BCE targets [B,14] in {0,1}
  eval.safetensors     eval-mode outputs: image_logits [B,14] (patch 64, mean of patches),
                       patch_logits [B,(S/64)^2,14] (row-major), baseline_logits [B,14] (patch = S)
  step.safetensors     one training step from init on inputs, as the seed trains but with dropout and
                       stochastic depth off: loss [] (BCEWithLogits on the mean logits), the gradients
                       (`grad.{name}`) and the whole state dict after AdamW(lr 1e-4, weight_decay
                       0.01).step() (running stats too)
  onecycle.json        OneCycleLR(max_lr=1e-4, total_steps=T, pct_start=0.05) learning rates and Adam
                       beta1 for each of T optimizer steps, for a few T
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models import efficientnet as tv_efficientnet

from medpatch_reference import MedicalPatchNet, build_backbone, load_arch, randomise_batch_norm


def smooth_images(gen: torch.Generator, batch: int, size: int) -> torch.Tensor:
    """X-ray-ish inputs: low-frequency blobs plus a little pixel noise, in [0, 1]."""
    coarse = torch.rand(batch, 1, size // 16, size // 16, generator=gen)
    x = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(batch, 1, size, size, generator=gen)
    return x.clamp(0, 1)


def state(module: nn.Module) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="efficientnet_v2_tiny")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=3)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    arch = load_arch(args.arch)
    backbone = build_backbone(arch, 14)
    model = MedicalPatchNet(backbone, patch_size=64)
    images = smooth_images(gen, args.batch, args.size)
    targets = (torch.rand(args.batch, 14, generator=gen) < 0.4).float()
    patches = images.unfold(2, 64, 64).unfold(3, 64, 64).permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, 64, 64)
    # A well-conditioned random network (see randomise_batch_norm), as in the exporter's references.
    randomise_batch_norm(backbone, args.seed + 1, torch.cat([patches, patches.flip(-1) * 0.8 + 0.1]))
    init = state(backbone)
    save_file(init, str(args.out / "init.safetensors"))
    save_file({"images": images, "targets": targets}, str(args.out / "inputs.safetensors"))

    model.eval()
    with torch.no_grad():
        eval_out = {
            "image_logits": model(images),
            "patch_logits": model.patch_logits(images),
            "baseline_logits": MedicalPatchNet(backbone, patch_size=args.size)(images),
        }
    save_file({k: v.contiguous() for k, v in eval_out.items()}, str(args.out / "eval.safetensors"))

    # One training step, dropout and stochastic depth off (the only randomness of the forward).
    backbone.classifier[0].p = 0.0
    for m in backbone.modules():
        if isinstance(m, tv_efficientnet.StochasticDepth):
            m.p = 0.0
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1  # randomise_batch_norm left None (cumulative) for its calibration
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    loss = nn.BCEWithLogitsLoss()(model(images), targets)
    optimizer.zero_grad()
    loss.backward()
    grads = {f"grad.{k}": p.grad.detach().clone().contiguous() for k, p in backbone.named_parameters()}
    optimizer.step()
    after = state(backbone)
    after["loss"] = loss.detach().reshape(())
    after.update(grads)
    save_file(after, str(args.out / "step.safetensors"))

    schedules = {}
    # (PyTorch itself divides by zero when pct_start · total_steps == 1, e.g. 20 steps: skipped.)
    for total in (1, 7, 37, 100, 333):
        p = nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=total, pct_start=0.05)
        lrs, betas = [], []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            betas.append(opt.param_groups[0]["betas"][0])
            opt.step()
            sched.step()
        schedules[str(total)] = {"lr": lrs, "beta1": betas}
    (args.out / "onecycle.json").write_text(json.dumps(schedules))
    print(f"{args.arch}: loss {loss.item():.6f}, wrote {args.out}")


if __name__ == "__main__":
    main()

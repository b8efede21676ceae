"""Writes a torchvision MedicalPatchNet checkpoint and its reference logits for the exporter tests.

Usage: make_export_reference.py --arch efficientnet_v2_s --xray IMAGE.png --out DIR [--seed N]

DIR receives:
  weights.pt            torch.save(state_dict) of a torch.compile'd MedicalPatchNet, as the published
                        checkpoint is saved (keys `_orig_mod.baseBackbone.…`)
  weights.safetensors   the backbone's state dict with plain torchvision names (what `train` writes)
  patches.npy           fixed [N,1,64,64] inputs: real X-ray patches and uniform noise
  patch_logits.npy      backbone logits for patches.npy
  image.npy             the preprocessed [1,1,512,512] X-ray
  image_logits.npy      MedicalPatchNet forward on image.npy: unfold, backbone, mean over 64 patches
  image_patch_logits.npy  the 64 per-patch logits of that forward, row-major
  baseline_logits.npy   the same weights as the patch-512 baseline on image.npy
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from medpatch_reference import MedicalPatchNet, build_backbone, load_arch, load_xray_512, randomise_batch_norm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="efficientnet_v2_s")
    ap.add_argument("--xray", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--classes", type=int, default=14)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    arch = load_arch(args.arch)
    backbone = build_backbone(arch, args.classes)
    model = MedicalPatchNet(backbone, patch_size=64)

    image = load_xray_512(args.xray).unsqueeze(0)  # 1,1,512,512
    unfolded = image.unfold(2, 64, 64).unfold(3, 64, 64).permute(0, 2, 3, 1, 4, 5).reshape(64, 1, 64, 64)
    gen = torch.Generator().manual_seed(args.seed + 1)
    # Calibrate on X-ray-like data: the real patches, flipped and re-exposed variants of them.
    calibration = torch.cat([unfolded, unfolded.flip(-1) * 0.8 + 0.1, (unfolded.flip(-2) ** 1.5)])
    randomise_batch_norm(backbone, args.seed + 2, calibration)

    noisy = (unfolded[[20, 45, 50]] + 0.03 * torch.randn(3, 1, 64, 64, generator=gen)).clamp(0, 1)
    patches = torch.cat([unfolded[[0, 19, 27, 36, 44]], noisy])
    with torch.no_grad():
        patch_logits = backbone(patches)
        image_patch_logits = model.patch_logits(image)[0]
        image_logits = model(image)
        baseline_logits = backbone(image)

    compiled = torch.compile(model)  # lazy: only renames the keys, as in the published checkpoint
    torch.save(compiled.state_dict(), args.out / "weights.pt")
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(args.out / "weights.safetensors"))
    for name, value in [
        ("patches", patches), ("patch_logits", patch_logits), ("image", image), ("image_logits", image_logits),
        ("image_patch_logits", image_patch_logits), ("baseline_logits", baseline_logits),
    ]:
        np.save(args.out / f"{name}.npy", value.numpy().astype(np.float32))
    print(f"wrote {args.out}: image logits {image_logits.numpy().round(3).tolist()}")


if __name__ == "__main__":
    main()

"""End-to-end reference: the seed's preprocessing (PIL/torchvision) and forward (torch), same weights.

Usage: predict_reference.py --weights weights.pt --arch NAME --out DIR IMAGE...
Writes DIR/<i>.logits.npy ([14]), DIR/<i>.patch_logits.npy ([64, 14]) and DIR/<i>.image.npy
([512, 512], the preprocessed input) for the i-th image.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from medpatch_reference import MedicalPatchNet, build_backbone, load_arch, load_xray_512


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--arch", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("images", nargs="+", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    state = torch.load(args.weights, map_location="cpu")
    prefix = "_orig_mod.baseBackbone."
    backbone = build_backbone(load_arch(args.arch))
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items()})
    model = MedicalPatchNet(backbone.eval(), patch_size=64).eval()
    with torch.no_grad():
        for i, path in enumerate(args.images):
            image = load_xray_512(path).unsqueeze(0)
            patch_logits = model.patch_logits(image)[0]
            np.save(args.out / f"{i}.image.npy", image[0, 0].numpy().astype(np.float32))
            np.save(args.out / f"{i}.patch_logits.npy", patch_logits.numpy().astype(np.float32))
            np.save(args.out / f"{i}.logits.npy", model(image)[0].numpy().astype(np.float32))
    print(f"reference logits for {len(args.images)} images in {args.out}")


if __name__ == "__main__":
    main()

"""Loads a medpatch-train checkpoint (safetensors) into torchvision's EfficientNetV2 with
`load_state_dict(strict=True)` and writes its eval-mode patch logits, so the Rust test can check
that torchvision reads what medpatch-train writes, name for name and value for value.

Usage: train_load_checkpoint.py --arch efficientnet_v2_tiny --weights CKPT.safetensors
                                --inputs X.safetensors (tensor "patches") --out LOGITS.safetensors
"""
import argparse

import torch
from safetensors.torch import load_file, save_file

from medpatch_reference import build_backbone, load_arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    backbone = build_backbone(load_arch(args.arch), 14)
    state = load_file(args.weights)
    backbone.load_state_dict(state, strict=True)
    backbone.eval()
    with torch.no_grad():
        logits = backbone(load_file(args.inputs)["patches"])
    save_file({"logits": logits.contiguous()}, args.out)
    tracked = {int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    print(f"torchvision loaded {len(state)} tensors strictly; num_batches_tracked {sorted(tracked)}")


if __name__ == "__main__":
    main()

"""Writes what a user would pass to `medpatch-train train --init`: a torchvision EfficientNetV2
state dict as ImageNet training leaves it — 3-channel stem, 1000-class head — saved with
torch.save (a .pth zip), for one of medpatch's architecture configs, with random weights.

Usage: train_imagenet_like.py --arch efficientnet_v2_tiny --out FILE.pth
"""
import argparse

import torch
import torch.nn as nn

from medpatch_reference import build_backbone, load_arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    arch = load_arch(args.arch)
    net = build_backbone(arch, 1000)
    # Undo the seed's replacement: torchvision's own 3-channel stem.
    net.features[0][0] = nn.Conv2d(3, arch["stem_channels"], kernel_size=3, stride=2, padding=1, bias=False)
    torch.save(net.state_dict(), args.out)
    print(f"wrote {args.out}: {len(net.state_dict())} tensors")


if __name__ == "__main__":
    main()

"""Independent PyTorch/torchvision reference for MedicalPatchNet (the seed's model, not ours).

Builds torchvision's EfficientNetV2 from one of medpatch's architecture configs (models/arch/*.json)
with the seed's 1-channel stem and N-class head, exactly as the seed's NetworkModel.py does, so the
Rust exporter and engine can be compared with code nobody here wrote.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.models import efficientnet as tv_efficientnet
from torchvision.transforms import InterpolationMode

REPO = Path(__file__).resolve().parents[2]
ARCH_DIR = REPO / "models" / "arch"


def load_arch(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.exists():
        path = ARCH_DIR / f"{name_or_path}.json"
    return json.loads(path.read_text())


def build_backbone(arch: dict, num_classes: int = 14) -> nn.Module:
    """torchvision EfficientNet + the seed's stem/head replacement."""
    if arch["name"] == "efficientnet_v2_s":
        net = tv_efficientnet.efficientnet_v2_s(weights=None)
    else:
        setting = []
        for s in arch["stages"]:
            cls = tv_efficientnet.FusedMBConvConfig if s["block"] == "fused_mbconv" else tv_efficientnet.MBConvConfig
            setting.append(cls(s["expand_ratio"], s["kernel"], s["stride"], s["in_channels"], s["out_channels"], s["layers"]))
        net = tv_efficientnet.EfficientNet(
            setting,
            dropout=arch["dropout"],
            stochastic_depth_prob=arch["stochastic_depth"],
            norm_layer=partial(nn.BatchNorm2d, eps=arch["bn_eps"]),
            last_channel=arch["head_channels"],
        )
    # The seed's changes: one input channel, N findings.
    net.features[0][0] = nn.Conv2d(arch["in_channels"], arch["stem_channels"], kernel_size=3, stride=2, padding=1, bias=False)
    net.classifier[1] = nn.Linear(net.classifier[1].in_features, num_classes)
    return net


class MedicalPatchNet(nn.Module):
    """The seed's forward: unfold into non-overlapping patches (row-major), one backbone call, mean."""

    def __init__(self, backbone: nn.Module, patch_size: int = 64):
        super().__init__()
        self.baseBackbone = backbone
        self.patch_size = patch_size

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        p = self.patch_size
        patches = x.unfold(2, p, p).unfold(3, p, p)  # B, C, rows, cols, p, p
        rows, cols = patches.shape[2], patches.shape[3]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b * rows * cols, c, p, p)
        return self.baseBackbone(patches).reshape(b, rows * cols, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_logits(x).mean(dim=1)


def randomise_batch_norm(net: nn.Module, seed: int, calibration: torch.Tensor) -> None:
    """Non-trivial BN parameters and statistics, so that folding is really tested, with the network
    as well conditioned as a trained one.

    A randomly initialised EfficientNetV2-S is chaotic: its float32 and float64 logits differ by
    more than 1 (measured), so no runtime could be compared with it at 1e-4. Trained residual
    networks end each residual branch with a small batch-norm scale; doing the same here (γ × 0.15),
    and a head of 0.2 × torchvision's init, gives logits of a few units whose float32 rounding
    error is ~1e-5 on patches of every NIH X-ray here. Running statistics are calibrated on data, then perturbed by a few percent.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
            if isinstance(m, tv_efficientnet.StochasticDepth):
                m.p = 0.0
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.2)
                m.bias.mul_(0.2)
        for m in net.modules():  # after the loop above, which visits blocks before their BNs
            if isinstance(m, (tv_efficientnet.MBConv, tv_efficientnet.FusedMBConv)) and m.use_res_connect:
                last_bn = [b for b in m.block.modules() if isinstance(b, nn.BatchNorm2d)][-1]
                last_bn.weight.mul_(0.15)
    net.train()
    with torch.no_grad():
        for chunk in calibration.split(16):
            net(chunk)
    net.eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.add_(0.05 * m.running_var.sqrt() * torch.randn(n, generator=gen))
                m.running_var.mul_(0.9 + 0.2 * torch.rand(n, generator=gen))


def load_xray_512(path: Path, size: int = 512) -> torch.Tensor:
    """The seed's evaluation preprocessing: PIL L, to_tensor, centre crop square, antialiased resize."""
    img = TF.to_tensor(Image.open(path).convert("L"))
    side = min(img.shape[-2:])
    img = TF.center_crop(img, [side, side])
    return TF.resize(img, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)

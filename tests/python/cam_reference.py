"""pytorch-grad-cam references for medpatch-train's Grad-CAM family (train/tests/cam.rs).

Usage: cam_reference.py --out DIR [--arch efficientnet_v2_tiny] [--size 256] [--batch 2] [--seed 5]

DIR receives (safetensors, float32):
  init.safetensors    the backbone's state dict (torchvision names)
  inputs.safetensors  images [B,1,S,S] in [0,1]
  maps.safetensors    gradcam, gradcampp, eigencam: [B,14,S,S], pytorch_grad_cam's GradCAM,
                      GradCAMPlusPlus and EigenCAM on the whole-image model (patch size = S), target
                      layer features[-1] (the seed's), ClassifierOutputTarget(c) for every class c;
                      eigencam_flipped: EigenCAM with the opposite SVD sign (the sign is LAPACK's
                      choice, so the test can say which one it met)
"""
import argparse
from importlib.metadata import version
from pathlib import Path

import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from safetensors.torch import save_file

from medpatch_reference import MedicalPatchNet, build_backbone, load_arch, randomise_batch_norm
from train_parity import smooth_images, state


class FlippedEigenCAM(EigenCAM):
    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return -get_2d_projection(activations)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="efficientnet_v2_tiny")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    backbone = build_backbone(load_arch(args.arch), 14)
    images = smooth_images(gen, args.batch, args.size)
    randomise_batch_norm(backbone, args.seed + 1, torch.cat([images, images.flip(-1) * 0.8 + 0.1]))
    save_file(state(backbone), str(args.out / "init.safetensors"))
    save_file({"images": images}, str(args.out / "inputs.safetensors"))

    model = MedicalPatchNet(backbone, patch_size=args.size).eval()
    target_layers = [backbone.features[-1]]
    maps = {}
    for name, method in [("gradcam", GradCAM), ("gradcampp", GradCAMPlusPlus), ("eigencam", EigenCAM),
                         ("eigencam_flipped", FlippedEigenCAM)]:
        with method(model=model, target_layers=target_layers) as cam:
            per_class = [torch.from_numpy(cam(input_tensor=images, targets=[ClassifierOutputTarget(c)] * args.batch))
                         for c in range(14)]
        maps[name] = torch.stack(per_class, dim=1).float().contiguous()
    save_file(maps, str(args.out / "maps.safetensors"))
    print(f"grad-cam {version('grad-cam')}, torch {torch.__version__}: {args.arch} at {args.size}², "
          f"features[-1] {tuple(backbone.features(images).shape)}")


if __name__ == "__main__":
    main()

"""MedicalPatchNet (or the whole-image baseline) trained with the seed's recipe in PyTorch on a GPU.

medpatch-train (tch) is the project's trainer; this script exists for the lent GPU machine, which has
PyTorch but not the libtorch version medpatch-train links. It trains the same model
(tests/python/medpatch_reference.py builds torchvision's EfficientNetV2 from models/arch/*.json with
the seed's 1-channel stem and 14-class head), with the same recipe as medpatch-train's defaults:
AdamW (weight decay 0.01), OneCycleLR (pct_start 0.05), BCEWithLogits on the mean of the patch
logits, the seed's augmentations (RandomResizedCrop(512, scale 0.5-1, ratio 3/4-4/3, antialiased),
RandomRotation(5) nearest with zero fill, brightness x U(0.7, 1.3) clamped), bf16 autocast. Images
are decoded once, preprocessed as medpatch does (centre crop, antialiased resize to 512) and kept on the
GPU; the augmentation crops from those.

The number of epochs is chosen to fit --budget-s after timing a few steps (at most --epochs), so
that one device call always ends in time; the choice is printed and recorded.

Writes OUT/NAME.safetensors (torchvision state-dict names: `medpatch export` reads it) and
OUT/NAME.json (recipe, chosen epochs, validation AUROC per epoch, test AUROC per class).
"""
import argparse
import csv
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "python"))
from medpatch_reference import MedicalPatchNet, build_backbone, load_arch  # noqa: E402

CLASSES = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
           "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
           "Fracture", "Support Devices"]


def decode(path: str, size: int = 512) -> np.ndarray:
    """medpatch's preprocessing (the seed's): centre square crop, antialiased bilinear resize."""
    image = Image.open(path).convert("L")
    w, h = image.size
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return np.asarray(image.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR))


def load_split(root: Path, csv_name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    with open(root / csv_name, newline="") as f:
        rows = list(csv.DictReader(f))
    with Pool(16) as pool:
        images = pool.map(decode, [str(root / r["Path"]) for r in rows], chunksize=16)
    x = torch.from_numpy(np.stack(images)).to(device)  # [N, 512, 512] uint8, preprocessed
    y = torch.tensor([[1.0 if r[c] == "1.0" else 0.0 for c in CLASSES] for r in rows], device=device)
    return x, y


def eval_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """medpatch's preprocessing: [0, 1], antialiased bilinear resize of the centre crop."""
    x = x.unsqueeze(1).float() / 255.0
    return TF.resize(x, [size, size], antialias=True) if x.shape[-1] != size else x


def augment_batch(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    out = []
    side = x.shape[-1]
    for img in x:
        img = img.unsqueeze(0).float() / 255.0
        area = side * side
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(0.5, 1.0, generator=gen))
            ratio = float(torch.exp(torch.empty(1).uniform_(np.log(3 / 4), np.log(4 / 3), generator=gen)))
            w, h = int(round((target * ratio) ** 0.5)), int(round((target / ratio) ** 0.5))
            if 0 < w <= side and 0 < h <= side:
                top = int(torch.randint(0, side - h + 1, (1,), generator=gen))
                left = int(torch.randint(0, side - w + 1, (1,), generator=gen))
                break
        else:
            top, left, h, w = 0, 0, side, side
        img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        angle = float(torch.empty(1).uniform_(-5.0, 5.0, generator=gen))
        img = TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST, fill=0.0)
        img = (img * float(torch.empty(1).uniform_(0.7, 1.3, generator=gen))).clamp(0, 1)
        out.append(img)
    return torch.stack(out)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, size: int, batch: int) -> np.ndarray:
    model.eval()
    scores = []
    for i in range(0, len(x), batch):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            logits = model(eval_batch(x[i:i + batch], size).contiguous(memory_format=torch.channels_last))
        scores.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(scores).numpy()


def aurocs(scores: np.ndarray, y: torch.Tensor) -> dict:
    labels = y.cpu().numpy()
    out = {}
    for k, c in enumerate(CLASSES):
        out[c] = float(roc_auc_score(labels[:, k], scores[:, k])) if 0 < labels[:, k].sum() < len(labels) else None
    return out


def mean(values) -> float:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path, help="a `synth` output folder")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--arch", default="efficientnet_v2_tiny")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=30, help="at most this many (fewer if --budget-s says so)")
    ap.add_argument("--budget-s", type=float, default=120.0, help="training time to fit the epochs into")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--pct-start", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda (what it is for) or cpu (to check the script)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.time()
    data = {s: load_split(args.data, f, device) for s, f in
            [("train", "train.csv"), ("valid", "valid.csv"), ("test", "test_labels.csv")]}
    print(f"[{args.name}] data on the GPU in {time.time() - started:.1f} s: "
          + ", ".join(f"{s} {len(v[0])}" for s, v in data.items()), flush=True)

    arch = load_arch(args.arch)
    model = MedicalPatchNet(build_backbone(arch, len(CLASSES)), patch_size=args.patch_size).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    x_train, y_train = data["train"]
    steps_per_epoch = len(x_train) // args.batch_size

    def step(indices: torch.Tensor, scheduler=None) -> float:
        model.train()
        x = augment_batch(x_train[indices], args.image_size, gen).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(model(x).float(), y_train[indices])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        return float(loss.detach())

    # Time a few steps (then start from the same initial weights) to choose how many epochs fit.
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    for g in opt.param_groups:
        g["lr"] = 0.0
    step(torch.arange(args.batch_size, device=device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.time()
    probe = 5
    for i in range(probe):
        step(torch.arange(args.batch_size, device=device))
    sync()
    seconds_per_step = (time.time() - t0) / probe
    epochs = max(1, min(args.epochs, int(args.budget_s / (seconds_per_step * steps_per_epoch * 1.1))))
    model.load_state_dict(initial)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=epochs * steps_per_epoch,
                                                    pct_start=args.pct_start)
    print(f"[{args.name}] {seconds_per_step * 1000:.0f} ms/step × {steps_per_epoch} steps/epoch: "
          f"{epochs} epochs fit {args.budget_s:.0f} s", flush=True)

    history = []
    for epoch in range(1, epochs + 1):
        t = time.time()
        order = torch.randperm(len(x_train), generator=gen)[: steps_per_epoch * args.batch_size].to(device)
        losses = [step(batch, scheduler) for batch in order.view(steps_per_epoch, args.batch_size)]
        valid = aurocs(predict(model, data["valid"][0], args.image_size, 64), data["valid"][1])
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "seconds": time.time() - t,
                        "valid_mean_auroc": mean(valid.values())})
        print(f"[{args.name}] epoch {epoch}: loss {history[-1]['train_loss']:.4f}, "
              f"valid mean AUROC {history[-1]['valid_mean_auroc']:.3f} ({history[-1]['seconds']:.1f} s)", flush=True)

    test = aurocs(predict(model, data["test"][0], args.image_size, 64), data["test"][1])
    state = {k: v.detach().float().contiguous().cpu() if v.is_floating_point() else v.cpu()
             for k, v in model.baseBackbone.state_dict().items()}
    save_file(state, str(args.out / f"{args.name}.safetensors"))
    record = {
        "trainer": "scripts/gpu/train_torch.py (PyTorch, the seed's recipe, bf16 autocast)",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "architecture": args.arch,
        "patch_size": args.patch_size,
        "image_size": args.image_size,
        "classes": CLASSES,
        "weights_file": f"{args.name}.safetensors",
        "train_images": len(x_train),
        "epochs": epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "pct_start": args.pct_start,
        "seed": args.seed,
        "history": history,
        "test_auroc": test,
        "test_mean_auroc": mean(test.values()),
        "seconds": time.time() - started,
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    print(f"[{args.name}] test mean AUROC {record['test_mean_auroc']:.3f} (PyTorch, bf16); "
          f"{record['seconds']:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, from real files: fuzz/corpus/<target>/.

* png, jpeg: real X-rays from <cxr> (NIH PNGs, pediatric JPEGs) downscaled to 32-96 px, in the
  modes users send (L, RGB, RGBA, LA, 16-bit gray; baseline and progressive JPEG);
* dicom, decode_bytes: every variant of tests/python/make_dicom_variants.py at 64 px (and, for
  decode_bytes, the PNG/JPEG seeds too);
* torch_weights, pickle: a tiny torch.save checkpoint (zip), its data.pkl, a safetensors file;
* model: the ONNX files given with --onnx (e.g. `medpatch export --random-init ...`).

Usage: make_seeds.py --cxr DIR [--onnx FILE...]   (run with the project's .venv Python)
"""

import argparse
import glob
import io
import os
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cxr", required=True)
    ap.add_argument("--onnx", nargs="*", default=[])
    args = ap.parse_args()

    pngs = sorted(glob.glob(os.path.join(args.cxr, "nih", "images", "*.png")))[:4]
    for i, p in enumerate(pngs):
        with Image.open(p) as im:
            small = im.resize((32 + 16 * i, 32 + 16 * i))
            for mode in ["L", "RGB", "RGBA", "LA"] if i == 0 else [small.mode]:
                b = io.BytesIO()
                small.convert(mode).save(b, format="PNG")
                put("png", f"{i}_{mode}.png", b.getvalue())
            b = io.BytesIO()
            arr16 = np.asarray(small.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(arr16).save(b, format="PNG")
            put("png", f"{i}_I16.png", b.getvalue())
    jpgs = sorted(glob.glob(os.path.join(args.cxr, "pediatric", "*.jpeg")))[:4]
    for i, p in enumerate(jpgs):
        with Image.open(p) as im:
            small = im.convert("L").resize((40 + 8 * i, 32 + 8 * i))
            for kind, kw in [("base", {}), ("prog", {"progressive": True}), ("rgb", {})]:
                b = io.BytesIO()
                (small.convert("RGB") if kind == "rgb" else small).save(b, format="JPEG", quality=80, **kw)
                put("jpeg", f"{i}_{kind}.jpg", b.getvalue())

    out = os.path.join(HERE, "corpus", "_variants")
    subprocess.run(
        [sys.executable, os.path.join(HERE, "..", "tests", "python", "make_dicom_variants.py"),
         "--cxr", args.cxr, "--out", out, "--side", "64"],
        check=True, stdout=subprocess.DEVNULL,
    )
    for p in sorted(glob.glob(os.path.join(out, "*.dcm"))):
        data = open(p, "rb").read()
        put("dicom", os.path.basename(p), data)
        put("decode_bytes", os.path.basename(p), data)
    for t in ["png", "jpeg"]:
        for p in glob.glob(os.path.join(HERE, "corpus", t, "*")):
            put("decode_bytes", os.path.basename(p), open(p, "rb").read())
    subprocess.run(["rm", "-rf", out], check=True)

    import torch
    from safetensors.torch import save as st_save

    g = torch.Generator().manual_seed(0)
    state = {
        "features.0.0.weight": torch.randn(4, 1, 3, 3, generator=g),
        "features.0.1.running_mean": torch.zeros(4),
        "features.0.1.num_batches_tracked": torch.tensor(3),
        "classifier.1.bias": torch.randn(2, generator=g).half(),
    }
    b = io.BytesIO()
    torch.save({"model": state, "epoch": 1}, b)
    put("torch_weights", "tiny.pt", b.getvalue())
    with zipfile.ZipFile(io.BytesIO(b.getvalue())) as z:
        for name in z.namelist():
            if name.endswith("data.pkl"):
                put("pickle", "tiny.pkl", z.read(name))
    put("torch_weights", "tiny.safetensors", st_save({k: v.float().contiguous() for k, v in state.items()}))
    for i, p in enumerate(args.onnx):
        put("model", f"{i}.onnx", open(p, "rb").read())


if __name__ == "__main__":
    main()

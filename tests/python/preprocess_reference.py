#!/usr/bin/env python3
"""Reference preprocessing for the parity test of the Rust engine (engine/tests/preprocess_parity.rs).

Does what the MedicalPatchNet seed does to an image, with the seed's own libraries:

    img = PIL.Image.open(path).convert("L")
    t = torchvision.transforms.functional.to_tensor(img)            # [1, H, W], float32 in [0, 1]
    t = torchvision.transforms.CenterCrop(min(H, W))(t)
    t = torchvision.transforms.Resize((size, size), antialias=True)(t)  # bilinear

DICOM files (the seed has none) are read with pydicom instead of PIL: Modality LUT
(`apply_modality_lut`), then VOI (`apply_voi_lut`, pydicom's default: a VOI LUT Sequence if present,
else the first window), scaled from pydicom's VOI output range to [0, 1]; without any VOI, a min-max
normalisation of the modality values. MONOCHROME1 is inverted (1 - v) so bright = dense. Then the
same crop and resize.

Usage: preprocess_reference.py --out DIR [--size 512] [--decoded] IMAGE...
Writes DIR/<i>.npy (float32, little endian, shape [size, size]) for the i-th IMAGE (0-based) and,
with --decoded, DIR/<i>.decoded.npy (the full-size [0, 1] image before crop and resize).
"""

import argparse
import os
import sys

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF


def is_dicom(path):
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM" or head[:4] == b"DICM"


def voi_output_range(ds):
    """The range pydicom's apply_voi_lut maps into, mirroring pydicom 3.0's own choices."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            bits = int(item.LUTDescriptor[2])
            return 0.0, float(2**bits - 1)
    # apply_windowing: the stored-value range, through the rescale when there is one
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif ds.PixelRepresentation == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min = y_min * float(slope) + float(intercept)
        y_max = y_max * float(slope) + float(intercept)
    return y_min, y_max


def dicom_gray(ds):
    """A monochrome data set's pixels in [0, 1]: modality LUT, then the VOI LUT or window (mapped
    over its output range) or else min-max, MONOCHROME1 inverted. make_dicom_variants.py uses it too."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut or has_window:
        out = apply_voi_lut(values, ds).astype(np.float64)
        y_min, y_max = voi_output_range(ds)
        out = (out - y_min) / (y_max - y_min)
    else:
        lo, hi = values.min(), values.max()
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    out = np.clip(out, 0.0, 1.0)
    if str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        out = 1.0 - out
    return out


def load_dicom(path):
    import pydicom

    out = dicom_gray(pydicom.dcmread(path))
    return torch.from_numpy(out.astype(np.float32))[None]  # [1, H, W]


def load_raster(path):
    from PIL import Image

    with Image.open(path) as img:
        return TF.to_tensor(img.convert("L"))  # [1, H, W]


def preprocess(t, size):
    _, h, w = t.shape
    t = T.CenterCrop(min(h, w))(t)
    return T.Resize((size, size), antialias=True)(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--decoded", action="store_true")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    for i, path in enumerate(args.images):
        t = load_dicom(path) if is_dicom(path) else load_raster(path)
        if args.decoded:
            np.save(os.path.join(args.out, f"{i}.decoded.npy"), t[0].numpy().astype("<f4"))
        r = preprocess(t, args.size)
        np.save(os.path.join(args.out, f"{i}.npy"), r[0].numpy().astype("<f4"))
        print(f"{i}\t{tuple(t.shape[1:])}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

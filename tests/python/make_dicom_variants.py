#!/usr/bin/env python3
"""DICOM variants of real chest X-rays, each with pydicom's own decoding as the reference.

Used by engine/tests/dicom_variants.rs. From a real radiograph in <cxr>/ (an 8-bit NIH PNG and the
16-bit CR DICOM, both downscaled to keep the files small) it writes, for every variant NAME:

* NAME.dcm: the file (transfer syntax, sample width, signedness, colour model... as named);
* NAME.npy: pydicom's decoding of that file, float32 [rows, cols] in [0, 1], when pydicom decodes it
  to a single grayscale-able image. Grayscale: `ds.pixel_array` → `apply_modality_lut` →
  `apply_voi_lut` (scaled from pydicom's VOI output range to [0, 1]) or, without VOI, a min-max of
  the modality values; MONOCHROME1 inverted. Colour: pydicom's RGB (`pixel_array` converts YBR to
  RGB, `apply_color_lut` maps PALETTE COLOR) → ITU-R 601 luma with PIL's weights (integer form for
  8-bit samples, as PIL's convert("L"); float form otherwise) / (2**bits - 1).

Files are written with pydicom (native encoders: RLE), Pillow (JPEG baseline streams), pylibjpeg-openjpeg
(JPEG 2000), pyjpegls (JPEG-LS) and python-gdcm (JPEG lossless).
A manifest.tsv lists NAME, transfer syntax UID and whether a reference was written.

Usage: make_dicom_variants.py --cxr DIR --out DIR
"""

import argparse
import io
import os
import sys

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from preprocess_reference import dicom_gray

SIDE = 256


def load_sources(cxr):
    """(8-bit gray [SIDE, SIDE] uint8, 15-bit CR [about SIDE, SIDE] uint16) from the real images."""
    png = os.path.join(cxr, "nih", "images", "00000075_000.png")
    with Image.open(png) as im:
        gray8 = np.asarray(im.convert("L").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.uint8)
    cr = pydicom.dcmread(os.path.join(cxr, "dicom", "RG1_UNCR.dcm")).pixel_array.astype(np.float64)
    # block mean (7x7 at SIDE 256: 1955x1841 -> 279x263): keeps the 15-bit values real
    f = max(1, round(cr.shape[1] / SIDE))
    h, w = (cr.shape[0] // f) * f, (cr.shape[1] // f) * f
    cr = cr[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return gray8, np.round(cr).astype(np.uint16)


def base_dataset(arr, photometric="MONOCHROME2", bits_stored=None, signed=False, samples=1):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "VARIANT^TEST"
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    return ds


def file_meta(ds, ts):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = "2.25.7357"
    ds.file_meta = meta
    return ds


def native(ds, arr, ts, vr=None):
    """Uncompressed pixel data in `ts`: samples in the transfer syntax's byte order."""
    big = ts == ExplicitVRBigEndian
    order = ">" if big else "<"
    data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder(order)).tobytes()
    ds.PixelData = data
    ds["PixelData"].VR = vr or ("OB" if arr.dtype.itemsize == 1 else "OW")
    return file_meta(ds, ts)


def save(ds, path, implicit=None, little=None):
    if hasattr(ds, "file_meta"):
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=implicit, little_endian=little, enforce_file_format=False)


def gdcm_transcode(src, dst, ts_name):
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(src)
    if not reader.Read():
        raise RuntimeError(f"gdcm cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, ts_name)))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm cannot transcode to {ts_name}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(dst)
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm cannot write {dst}")


def pil_luma(rgb, bits):
    """ITU-R 601 luma with PIL's weights, scaled to [0, 1]."""
    rgb = rgb.astype(np.int64 if bits == 8 else np.float64)
    if bits == 8:
        l = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        return l.astype(np.float64) / 255.0
    l = (rgb[..., 0] * 19595.0 + rgb[..., 1] * 38470.0 + rgb[..., 2] * 7471.0) / 65536.0
    return l / float(2**bits - 1)


def reference(path):
    """pydicom's decoding of `path` in [0, 1], as documented above."""
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare data set: as pydicom found it encoded
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit and little else ExplicitVRLittleEndian
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("multi-frame: the engine refuses it, so no single-image reference")
    arr = ds.pixel_array
    pi = str(ds.PhotometricInterpretation).strip().upper()
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return pil_luma(rgb, int(ds.RedPaletteColorLookupTableDescriptor[2]))
    if int(ds.SamplesPerPixel) == 3:
        return pil_luma(arr, int(ds.BitsStored))
    return dicom_gray(ds)


def rgb_from_gray(gray8):
    """A colour picture from the X-ray: tinted so that R, G and B differ everywhere."""
    g = gray8.astype(np.float64)
    r = np.clip(g * 0.9 + 20, 0, 255)
    b = np.clip(255 - g * 0.8, 0, 255)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def rgb_to_ybr_full(rgb):
    """PS3.3 C.7.6.3.1.2 YBR_FULL from 8-bit RGB (how a writer makes such a file)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.stack([y, cb, cr], axis=-1).round(), 0, 255).astype(np.uint8)


def make(cxr, out):
    gray8, cr16 = load_sources(cxr)
    made = []  # (name, ts, path)

    def add(name, ds, ts, **kw):
        path = os.path.join(out, name + ".dcm")
        save(ds, path, **kw)
        made.append((name, ts, path))

    # --- uncompressed, 16-bit CR (MONOCHROME1, 15 bits stored), three encodings
    for name, ts in [
        ("cr_explicit_le_u16", ExplicitVRLittleEndian),
        ("cr_implicit_le_u16", ImplicitVRLittleEndian),
        ("cr_deflated_le_u16", DeflatedExplicitVRLittleEndian),
    ]:
        ds = base_dataset(cr16, "MONOCHROME1", bits_stored=15)
        add(name, native(ds, cr16, ts), ts)

    # --- sample widths x signedness x byte order; a rescale and a window on some
    s16 = (cr16.astype(np.int32) - 16384).astype(np.int16)
    # both 16-bit halves carry an image (the low half a flipped copy), so that a sample read with its
    # words or bytes in the wrong order gives a different picture, not just an offset
    u32 = cr16.astype(np.uint32) * 65536 + cr16[::-1, ::-1].astype(np.uint32) * 2
    s32 = (u32.astype(np.int64) - (1 << 31)).astype(np.int32)
    for tag, ts in [("le", ExplicitVRLittleEndian), ("be", ExplicitVRBigEndian)]:
        for kind, arr, stored, signed, extra in [
            ("u8", gray8, 8, False, {}),
            ("u16", cr16, 15, False, {"WindowCenter": 12000, "WindowWidth": 16000}),
            ("s16", s16, 16, True, {"RescaleIntercept": 100, "RescaleSlope": 2}),
            ("u32", u32, 32, False, {}),
            ("s32", s32, 32, True, {"RescaleIntercept": -5, "RescaleSlope": 0.5}),
        ]:
            ds = base_dataset(arr, "MONOCHROME2", bits_stored=stored, signed=signed)
            for k, v in extra.items():
                setattr(ds, k, v)
            add(f"explicit_{tag}_{kind}", native(ds, arr, ts), ts)
    # 8-bit samples in an OW element, big endian: bytes swapped within each 16-bit word
    ds = base_dataset(gray8)
    add("explicit_be_u8_ow", native(ds, gray8, ExplicitVRBigEndian, vr="OW"), ExplicitVRBigEndian)

    # --- no file meta information (a bare data set, implicit VR little endian)
    ds = base_dataset(cr16, "MONOCHROME1", bits_stored=15)
    ds.PixelData = cr16.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    add("bare_implicit_u16", ds, ImplicitVRLittleEndian, implicit=True, little=True)

    # --- compressed: RLE (pydicom's own encoder), JPEG 2000 (openjpeg), JPEG-LS (CharLS)
    for name, arr, stored, ts, kw in [
        ("rle_u8", gray8, 8, RLELossless, {"encoding_plugin": "pydicom"}),
        ("rle_u16", cr16, 15, RLELossless, {"encoding_plugin": "pydicom"}),
        ("j2k_lossless_u16", cr16, 15, JPEG2000Lossless, {}),
        ("j2k_lossy_u16", cr16, 15, JPEG2000, {"j2k_cr": [20]}),
        ("j2k_lossless_u8", gray8, 8, JPEG2000Lossless, {}),
        ("jpegls_lossless_u16", cr16, 15, JPEGLSLossless, {}),
    ]:
        ds = base_dataset(arr, "MONOCHROME1" if arr is cr16 else "MONOCHROME2", bits_stored=stored)
        ds = native(ds, arr, ExplicitVRLittleEndian)
        ds.compress(ts, arr, **kw)
        add(name, ds, ts)

    # --- JPEG baseline 8-bit: a Pillow stream, encapsulated
    buf = io.BytesIO()
    Image.fromarray(gray8, "L").save(buf, format="JPEG", quality=90)
    ds = file_meta(base_dataset(gray8), JPEGBaseline8Bit)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    add("jpeg_baseline_u8", ds, JPEGBaseline8Bit)

    # --- JPEG extended 12-bit. No encoder here writes a valid one: GDCM 3.2.6 writes a lossy stream of
    # precision 16 (invalid; libjpeg and pydicom refuse it) and Pillow writes 8-bit only. The decoders
    # read the frame header (SOF) before any scan data, so the baseline stream relabelled as SOF1 with
    # precision 12 is what a 12-bit file looks like to them up to the point of refusal.
    stream = bytearray(buf.getvalue())
    sof = stream.index(b"\xff\xc0")
    stream[sof + 1] = 0xC1
    stream[sof + 4] = 12
    ds = file_meta(base_dataset(gray8.astype(np.uint16), bits_stored=12), JPEGExtended12Bit)
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    add("jpeg_extended_12bit_header", ds, JPEGExtended12Bit)

    # --- JPEG lossless (process 14, and SV1) through GDCM
    for name, arr, stored, gdcm_ts, ts in [
        ("jpeg_lossless_p14_u16", cr16, 15, "JPEGLosslessProcess14", JPEGLossless),
        ("jpeg_lossless_sv1_u16", cr16, 15, "JPEGLosslessProcess14_1", JPEGLosslessSV1),
        ("jpeg_lossless_sv1_u8", gray8, 8, "JPEGLosslessProcess14_1", JPEGLosslessSV1),
    ]:
        raw = os.path.join(out, name + ".raw.dcm")
        ds = base_dataset(arr, "MONOCHROME2", bits_stored=stored)
        save(native(ds, arr, ExplicitVRLittleEndian), raw)
        path = os.path.join(out, name + ".dcm")
        gdcm_transcode(raw, path, gdcm_ts)
        os.remove(raw)
        got = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        assert got == ts, f"{name}: GDCM wrote {got}, not {ts}"
        made.append((name, ts, path))

    # --- colour
    rgb = rgb_from_gray(gray8)
    ds = base_dataset(rgb[..., 0], "RGB", samples=3)
    add("rgb_u8", native(ds, rgb, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    ds = base_dataset(rgb[..., 0], "RGB", samples=3)
    ds.PlanarConfiguration = 1
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    add("rgb_planar_u8", native(ds, planes, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    rgb16 = (rgb.astype(np.uint16) * 257)
    ds = base_dataset(rgb16[..., 0], "RGB", samples=3)
    add("rgb_u16", native(ds, rgb16, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    ybr = rgb_to_ybr_full(rgb)
    ds = base_dataset(ybr[..., 0], "YBR_FULL", samples=3)
    add("ybr_full_u8", native(ds, ybr, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    # YBR_FULL_422 uncompressed: Y1 Y2 Cb Cr for each horizontal pair (chroma of the pair averaged)
    y = ybr[..., 0]
    cb = ybr[..., 1].astype(np.float64).reshape(SIDE, SIDE // 2, 2).mean(axis=2).round().astype(np.uint8)
    crr = ybr[..., 2].astype(np.float64).reshape(SIDE, SIDE // 2, 2).mean(axis=2).round().astype(np.uint8)
    packed = np.stack([y[:, 0::2], y[:, 1::2], cb, crr], axis=-1).reshape(SIDE, SIDE * 2)
    ds = base_dataset(ybr[..., 0], "YBR_FULL_422", samples=3)
    ds.PixelData = packed.tobytes()
    ds["PixelData"].VR = "OB"
    add("ybr_full_422_u8", file_meta(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    # colour JPEG baseline, as lossy colour DICOM is normally stored: YBR_FULL_422 in the stream
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=90, subsampling=1)
    ds = file_meta(base_dataset(ybr[..., 0], "YBR_FULL_422", samples=3), JPEGBaseline8Bit)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    add("jpeg_baseline_ybr_422", ds, JPEGBaseline8Bit)
    # PALETTE COLOR: 8-bit indices, 256-entry 16-bit LUTs (a tinted ramp)
    ds = base_dataset(gray8, "PALETTE COLOR")
    ramp = np.arange(256, dtype=np.float64) / 255.0
    for colour, curve in [("Red", ramp**0.5), ("Green", ramp), ("Blue", ramp**2)]:
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (curve * 65535).round().astype("<u2").tobytes())
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
    add("palette_u8", native(ds, gray8, ExplicitVRLittleEndian), ExplicitVRLittleEndian)

    # --- multi-frame (3 frames)
    frames = np.stack([cr16, cr16[::-1], cr16[:, ::-1]])
    ds = base_dataset(cr16, "MONOCHROME1", bits_stored=15)
    ds.NumberOfFrames = 3
    ds = native(ds, frames, ExplicitVRLittleEndian)
    add("multiframe_u16", ds, ExplicitVRLittleEndian)

    # --- non-image objects: a Basic Text SR, and an image header without pixel data
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.SOPInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.ValueType = "CONTAINER"
    sr.ContinuityOfContent = "SEPARATE"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.TextValue = "No acute cardiopulmonary process."
    sr.ContentSequence = [item]
    add("sr_report", file_meta(sr, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    ds = base_dataset(cr16, "MONOCHROME1", bits_stored=15)
    add("image_without_pixel_data", file_meta(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    return made


def main():
    global SIDE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cxr", required=True, help="the shared cxr folder (nih/, dicom/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--side", type=int, default=SIDE, help="side of the downscaled images (even)")
    args = ap.parse_args()
    SIDE = args.side
    os.makedirs(args.out, exist_ok=True)
    made = make(args.cxr, args.out)
    with open(os.path.join(args.out, "manifest.tsv"), "w") as manifest:
        for name, ts, path in made:
            try:
                ref = reference(path).astype("<f4")
                np.save(os.path.join(args.out, name + ".npy"), ref)
                status = f"reference {ref.shape[1]}x{ref.shape[0]}"
            except Exception as e:  # pydicom refuses it too (no pixels, multi-frame...): say why
                status = f"no reference: {type(e).__name__}: {e}".replace("\t", " ").replace("\n", " ")
            manifest.write(f"{name}\t{ts}\t{status}\n")
            print(f"{name}\t{ts}\t{status}")


if __name__ == "__main__":
    sys.exit(main())

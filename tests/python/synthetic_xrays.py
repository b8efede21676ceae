"""Small chest-X-ray-like images made with numpy in milliseconds, and corrupt files beside them: the
archive that tests/python/test_ray.py and benches/ray_throughput.py score. Seeded: the same
arguments make the same files.

Each image is a frontal chest drawing (torso, two lungs with ribs, heart, spine, a few opacities,
noise) at a random size and aspect ratio (the engine centre-crops and resizes), saved as an 8-bit PNG,
a 16-bit PNG or a JPEG.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# name → contents: every way a file can fail to be an X-ray that the engine must report, not crash on.
def corrupt_files(valid_png: bytes, valid_jpeg: bytes) -> dict[str, bytes]:
    return {
        "notes.png": b"not an image, just notes\n",
        "truncated.png": valid_png[: len(valid_png) * 2 // 5],
        "empty.jpg": b"",
        "noise.dcm": np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "garbled.jpeg": valid_jpeg[:400] + bytes(2000),
    }


def chest(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One drawing as float32 in [0, 1] (bright = dense, as on a film)."""
    y, x = np.mgrid[-1.0 : 1.0 : height * 1j, -1.0 : 1.0 : width * 1j].astype(np.float32)
    torso = np.exp(-(((x / 0.85) ** 2 + (y / 1.05) ** 2) ** 4))
    image = 0.15 + 0.55 * torso
    for side in (-1, 1):
        cx, cy = side * rng.uniform(0.3, 0.4), rng.uniform(-0.15, 0.0)
        lung = ((x - cx) / rng.uniform(0.22, 0.3)) ** 2 + ((y - cy) / rng.uniform(0.45, 0.6)) ** 2 < 1
        ribs = 0.06 * np.sin((y + 0.4 * (x - cx) ** 2) * rng.uniform(25, 32))
        image = np.where(lung, image - 0.35 + ribs, image)
    heart = ((x - 0.1) / rng.uniform(0.18, 0.34)) ** 2 + ((y - 0.25) / 0.25) ** 2 < 1
    image = np.where(heart, image + 0.25, image)
    image += 0.25 * np.exp(-((x / 0.06) ** 2))  # spine
    for _ in range(rng.integers(0, 4)):  # opacities, nodules
        bx, by, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.5), rng.uniform(0.03, 0.15)
        image += 0.3 * np.exp(-(((x - bx) ** 2 + (y - by) ** 2) / r**2))
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def encode(pixels: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "png16":
        Image.fromarray(np.round(pixels * 65535).astype(np.uint16)).save(buffer, format="PNG")
    elif kind == "jpeg":
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    else:
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_archive(root: Path, images: int, *, seed: int = 0, folders: int = 3, corrupt: bool = True) -> None:
    """`images` drawings under root/study_k/ (k < folders), mixed formats, plus (corrupt=True) the
    corrupt files spread among them and a text file that is not an image."""
    rng = np.random.default_rng(seed)
    kinds = ["png", "png16", "jpeg"]
    suffix = {"png": ".png", "png16": ".png", "jpeg": ".jpg"}
    for i in range(images):
        kind = kinds[i % 3]
        height, width = int(rng.integers(160, 288)), int(rng.integers(160, 288))
        folder = root / f"study_{i % folders}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"cxr_{i:05d}{suffix[kind]}").write_bytes(encode(chest(rng, height, width), kind))
    if corrupt:
        sample = chest(rng, 200, 200)
        bad = corrupt_files(encode(sample, "png"), encode(sample, "jpeg"))
        for k, (name, contents) in enumerate(bad.items()):
            # cxr_00000_… sorts among the images, not at the end.
            (root / f"study_{k % folders}" / f"cxr_{(k * 37) % max(images, 1):05d}_{name}").write_bytes(contents)
        (root / "README.txt").write_text("not an X-ray: medpatch predict and list_images skip it\n")

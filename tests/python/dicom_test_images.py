"""Test DICOM X-rays for the DICOM results' tests, made from the NIH PNGs with pydicom.

Each PNG becomes a Secondary Capture image (8-bit MONOCHROME2, its own patient and study) whose
window (centre 128, width 256: PS3.3 LINEAR) maps stored value v to exactly v / 255, so a test
knows the gray level medpatch's decoder sees under every pixel. `corrupt_dicom` writes one whose
header promises more pixels than it holds.

    python tests/python/dicom_test_images.py OUT_DIR PNG...   (writes OUT_DIR/<stem>.dcm)
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

def _uid(*parts):
    """A 2.25 UID derived from the parts: the same test image gets the same UIDs every run."""
    return generate_uid(prefix=None, entropy_srcs=["medpatch-test", *parts])


def _dataset(stem, rows, cols, pixels, study=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(stem, "instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or _uid(stem, "study")
    ds.SeriesInstanceUID = _uid(stem, "series")
    ds.PatientName = f"Test^{stem}"
    ds.PatientID = f"NIH-{stem}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = stem[:16]
    ds.ReferringPhysicianName = ""
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.PixelData = pixels
    return ds


def png_to_dicom(png, out_dir):
    """`out_dir/<stem>.dcm` from an NIH PNG; returns (path, 8-bit pixels as a numpy array)."""
    png = Path(png)
    gray = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
    ds = _dataset(png.stem, gray.shape[0], gray.shape[1], gray.tobytes())
    path = Path(out_dir) / f"{png.stem}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, gray


def corrupt_dicom(path):
    """A DICOM file claiming 512×512 pixels but holding 100 bytes of them."""
    ds = _dataset("corrupt", 512, 512, bytes(100))
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for png in sys.argv[2:]:
        print(png_to_dicom(png, out)[0])

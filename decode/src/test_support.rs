//! Builders of small test inputs, written by hand (DICOM, explicit VR little endian) or with
//! `image`'s encoders (PNG, JPEG), so that the tests do not depend on the decoders under test.

use image::ImageEncoder;

pub(crate) fn png_bytes(w: u32, h: u32, color: image::ExtendedColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out).write_image(data, w, h, color).unwrap();
    out
}

pub(crate) fn jpeg_bytes(w: u32, h: u32, color: image::ExtendedColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95).write_image(data, w, h, color).unwrap();
    out
}

pub(crate) fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A well-formed PNG (valid CRCs) claiming the given size, with a token IDAT chunk: what a
/// decompression bomb looks like up to its image data.
pub(crate) fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit gray
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9C, 0x63, 0x00, 0x00]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

pub(crate) fn crc32(data: &[u8]) -> u32 {
    // PNG's chunk CRC is zlib's CRC-32, which flate2 (already the engine's) computes.
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

pub(crate) fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if matches!(vr, b"UI" | b"OB") { 0 } else { b' ' });
    }
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&v);
}

pub(crate) fn us(v: u16) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// The data set after the file meta group.
pub(crate) fn dicom_dataset(
    rows: u16,
    cols: u16,
    photometric: &str,
    samples: u16,
    bits: u16,
    extra: &[(u16, u16, [u8; 2], Vec<u8>)],
    pixels: &[u8],
) -> Vec<u8> {
    let mut ds = Vec::new();
    element(&mut ds, 0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1");
    element(&mut ds, 0x0008, 0x0018, b"UI", b"2.25.1234");
    element(&mut ds, 0x0028, 0x0002, b"US", &us(samples));
    element(&mut ds, 0x0028, 0x0004, b"CS", photometric.as_bytes());
    element(&mut ds, 0x0028, 0x0010, b"US", &us(rows));
    element(&mut ds, 0x0028, 0x0011, b"US", &us(cols));
    element(&mut ds, 0x0028, 0x0100, b"US", &us(bits));
    element(&mut ds, 0x0028, 0x0101, b"US", &us(bits));
    element(&mut ds, 0x0028, 0x0102, b"US", &us(bits - 1));
    element(&mut ds, 0x0028, 0x0103, b"US", &us(0));
    for (g, e, vr, v) in extra {
        element(&mut ds, *g, *e, vr, v);
    }
    element(&mut ds, 0x7FE0, 0x0010, if bits == 8 { b"OB" } else { b"OW" }, pixels);
    ds
}

pub(crate) fn dicom_with_meta(dataset: &[u8]) -> Vec<u8> {
    dicom_with_meta_ts(dataset, "1.2.840.10008.1.2.1")
}

pub(crate) fn dicom_with_meta_ts(dataset: &[u8], ts: &str) -> Vec<u8> {
    let mut meta = Vec::new();
    element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
    element(&mut meta, 0x0002, 0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.1");
    element(&mut meta, 0x0002, 0x0003, b"UI", b"2.25.1234");
    element(&mut meta, 0x0002, 0x0010, b"UI", ts.as_bytes());
    element(&mut meta, 0x0002, 0x0012, b"UI", b"2.25.99");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    element(&mut out, 0x0002, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(dataset);
    out
}

pub(crate) fn dicom_file(rows: u16, cols: u16, photometric: &str, samples: u16, bits: u16, px: &[u8]) -> Vec<u8> {
    dicom_with_meta(&dicom_dataset(rows, cols, photometric, samples, bits, &[], px))
}

pub(crate) fn words(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A single-frame 8-bit MONOCHROME2 file whose pixel data is encapsulated in `ts`.
pub(crate) fn dicom_encapsulated(ts: &str, rows: u16, cols: u16, fragment: &[u8]) -> Vec<u8> {
    let mut ds = dicom_dataset(rows, cols, "MONOCHROME2", 1, 8, &[], &[]);
    // drop the empty native Pixel Data element written by dicom_dataset (12 bytes)
    ds.truncate(ds.len() - 12);
    ds.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    let item = |out: &mut Vec<u8>, data: &[u8]| {
        let mut d = data.to_vec();
        if d.len() % 2 == 1 {
            d.push(0);
        }
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        out.extend_from_slice(&(d.len() as u32).to_le_bytes());
        out.extend_from_slice(&d);
    };
    item(&mut ds, &[]); // empty basic offset table
    item(&mut ds, fragment);
    ds.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    dicom_with_meta_ts(&ds, ts)
}

pub(crate) fn min_max(v: &[f32]) -> Vec<f32> {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().map(|x| (x - lo) / (hi - lo)).collect()
}

//! PNG and JPEG, through the `image` crate (png, zune-jpeg), reduced to luminance as PIL's
//! `convert("L")` does.

use std::io::Cursor;

use super::limits::{MAX_PIXELS, MAX_SIDE, check_dimensions, guarded};
use super::{DecodeError, GrayImage};

/// PIL's `convert("L")` for 8-bit RGB: ITU-R 601-2 luma in 16-bit fixed point, rounded.
#[inline]
pub fn pil_luminance(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// The same weights for 16-bit samples, in floating point, scaled to `[0, 1]`.
#[inline]
fn luminance16(r: u16, g: u16, b: u16) -> f32 {
    let l = (r as f64 * 19595.0 + g as f64 * 38470.0 + b as f64 * 7471.0) / 65536.0;
    (l / 65535.0) as f32
}

fn image_error(format: &'static str, e: image::ImageError) -> DecodeError {
    use image::ImageError as E;
    match e {
        E::Limits(l) => DecodeError::Unsupported { format, detail: format!("over the decoder's limits ({l})") },
        E::Unsupported(u) => DecodeError::Unsupported { format, detail: u.to_string() },
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Corrupt { format, detail: "the file ends early (truncated)".to_string() }
        }
        other => DecodeError::Corrupt { format, detail: other.to_string() },
    }
}

/// Walk the JPEG marker structure and report whether an end-of-image marker (EOI) is reached:
/// the cheapest reliable test for a truncated file, as entropy-coded data cannot contain a marker.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let len = bytes.len();
    if len < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    loop {
        // find the next marker (tolerating stray bytes and 0xFF fill, as libjpeg does)
        while i < len && bytes[i] != 0xFF {
            i += 1;
        }
        while i < len && bytes[i] == 0xFF {
            i += 1;
        }
        if i >= len {
            return false;
        }
        let marker = bytes[i];
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue, // standalone markers
            _ => {
                if i + 2 > len {
                    return false;
                }
                let seg = u16::from_be_bytes([bytes[i], bytes[i + 1]]) as usize;
                if seg < 2 {
                    return false;
                }
                i += seg;
                if marker == 0xDA {
                    // entropy-coded data: runs until a marker other than stuffing or a restart
                    loop {
                        if i + 1 >= len {
                            return false;
                        }
                        if bytes[i] == 0xFF && !matches!(bytes[i + 1], 0x00 | 0xD0..=0xD7) {
                            break;
                        }
                        i += if bytes[i] == 0xFF { 2 } else { 1 };
                    }
                }
            }
        }
    }
}

pub(super) fn decode_raster(
    bytes: &[u8],
    format: image::ImageFormat,
    name: &'static str,
) -> Result<GrayImage, DecodeError> {
    use image::{DynamicImage as D, ImageReader};

    // Header only: no pixel buffer yet.
    let (width, height) = guarded(name, || {
        ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(|e| image_error(name, e))
    })?;
    check_dimensions(width as u64, height as u64)?;

    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg fills in missing scan data silently; PIL refuses such files ("image file is
        // truncated"), and so do we.
        return Err(DecodeError::Corrupt {
            format: name,
            detail: "the file ends before the JPEG end-of-image marker (truncated)".to_string(),
        });
    }

    let decoded = guarded(name, || {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        // the largest decoded buffer we accept: MAX_PIXELS of RGBA16
        limits.max_alloc = Some(MAX_PIXELS * 8);
        reader.limits(limits);
        reader.decode().map_err(|e| match e {
            image::ImageError::Limits(l) => DecodeError::TooLarge {
                width: width as u64,
                height: height as u64,
                limit: format!("the decoder's memory limit ({l})"),
            },
            e => image_error(name, e),
        })
    })?;
    if (decoded.width(), decoded.height()) != (width, height) {
        return Err(DecodeError::Corrupt {
            format: name,
            detail: format!("header says {width}×{height} but {}×{} were decoded", decoded.width(), decoded.height()),
        });
    }

    let pixels: Vec<f32> = match &decoded {
        D::ImageLuma8(im) => im.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
        D::ImageLumaA8(im) => im.as_raw().chunks_exact(2).map(|p| p[0] as f32 / 255.0).collect(),
        D::ImageRgb8(im) => {
            im.as_raw().chunks_exact(3).map(|p| pil_luminance(p[0], p[1], p[2]) as f32 / 255.0).collect()
        }
        D::ImageRgba8(im) => {
            im.as_raw().chunks_exact(4).map(|p| pil_luminance(p[0], p[1], p[2]) as f32 / 255.0).collect()
        }
        D::ImageLuma16(im) => im.as_raw().iter().map(|&v| v as f32 / 65535.0).collect(),
        D::ImageLumaA16(im) => im.as_raw().chunks_exact(2).map(|p| p[0] as f32 / 65535.0).collect(),
        D::ImageRgb16(im) => im.as_raw().chunks_exact(3).map(|p| luminance16(p[0], p[1], p[2])).collect(),
        D::ImageRgba16(im) => im.as_raw().chunks_exact(4).map(|p| luminance16(p[0], p[1], p[2])).collect(),
        other => {
            // Float images (not produced by the PNG or JPEG decoders today).
            let rgb = other.to_rgb32f();
            rgb.as_raw()
                .chunks_exact(3)
                .map(|p| {
                    let l = (p[0] as f64 * 19595.0 + p[1] as f64 * 38470.0 + p[2] as f64 * 7471.0) / 65536.0;
                    l.clamp(0.0, 1.0) as f32
                })
                .collect()
        }
    };
    debug_assert_eq!(pixels.len(), width as usize * height as usize);
    Ok(GrayImage { width, height, pixels })
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_bytes;
    use crate::test_support::*;

    #[test]
    fn luminance_matches_pil_integer_formula() {
        // Values checked against PIL: Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0))
        let cases = [
            ((0, 0, 0), 0),
            ((255, 255, 255), 255),
            ((255, 0, 0), 76),
            ((0, 255, 0), 150),
            ((0, 0, 255), 29),
            ((128, 128, 128), 128),
            ((10, 200, 30), 124),
            ((123, 45, 67), 71),
            ((1, 1, 0), 1),
        ];
        for ((r, g, b), want) in cases {
            assert_eq!(pil_luminance(r, g, b), want, "rgb ({r}, {g}, {b})");
        }
    }

    #[test]
    fn png_gray_rgb_rgba_la_8_bit() {
        use image::ExtendedColorType as C;
        let gray = png_bytes(2, 1, C::L8, &[0, 255]);
        let im = decode_bytes(&gray, "g").unwrap();
        assert_eq!((im.width, im.height), (2, 1));
        assert_eq!(im.pixels, vec![0.0, 1.0]);

        let rgb = png_bytes(2, 1, C::Rgb8, &[255, 0, 0, 123, 45, 67]);
        assert_eq!(decode_bytes(&rgb, "c").unwrap().pixels, vec![76.0 / 255.0, 71.0 / 255.0]);

        // alpha is ignored, as by PIL's convert("L")
        let rgba = png_bytes(2, 1, C::Rgba8, &[255, 0, 0, 0, 123, 45, 67, 7]);
        assert_eq!(decode_bytes(&rgba, "c").unwrap().pixels, vec![76.0 / 255.0, 71.0 / 255.0]);

        let la = png_bytes(1, 2, C::La8, &[51, 0, 204, 255]);
        let im = decode_bytes(&la, "la").unwrap();
        assert_eq!((im.width, im.height), (1, 2));
        assert_eq!(im.pixels, vec![0.2, 0.8]);
    }

    #[test]
    fn png_16_bit_uses_the_full_range() {
        use image::ExtendedColorType as C;
        let words: [u16; 3] = [0, 32768, 65535];
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let im = decode_bytes(&png_bytes(3, 1, C::L16, &data), "g16").unwrap();
        assert_eq!(im.pixels, vec![0.0, 32768.0 / 65535.0, 1.0]);

        let words: [u16; 3] = [65535, 0, 0];
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let im = decode_bytes(&png_bytes(1, 1, C::Rgb16, &data), "rgb16").unwrap();
        assert!((im.pixels[0] - 19595.0 / 65536.0).abs() < 1e-6);
    }

    #[test]
    fn jpeg_gray_and_colour() {
        use image::ExtendedColorType as C;
        let gray: Vec<u8> = vec![100; 16 * 16];
        let im = decode_bytes(&jpeg_bytes(16, 16, C::L8, &gray), "g").unwrap();
        assert_eq!((im.width, im.height), (16, 16));
        assert!(im.pixels.iter().all(|&v| (v - 100.0 / 255.0).abs() <= 2.0 / 255.0));

        let rgb: Vec<u8> = [200u8, 30, 60].repeat(16 * 16);
        let im = decode_bytes(&jpeg_bytes(16, 16, C::Rgb8, &rgb), "c").unwrap();
        let want = pil_luminance(200, 30, 60) as f32 / 255.0;
        assert!(im.pixels.iter().all(|&v| (v - want).abs() <= 3.0 / 255.0), "{:?}", &im.pixels[..4]);
    }

    #[test]
    fn png_bomb_is_refused_from_the_header() {
        let bomb = png_claiming(100_000, 100_000);
        match decode_bytes(&bomb, "bomb") {
            Err(DecodeError::TooLarge { width, height, .. }) => {
                assert_eq!((width, height), (100_000, 100_000))
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // under the side limit but over the pixel limit
        let bomb = png_claiming(16384, 16385);
        assert!(matches!(decode_bytes(&bomb, "b"), Err(DecodeError::TooLarge { .. })));
        // a sane header with no image data is corrupt, not a panic
        let hollow = png_claiming(64, 64);
        assert!(matches!(decode_bytes(&hollow, "h"), Err(DecodeError::Corrupt { .. })));
    }

    #[test]
    fn jpeg_bomb_is_refused_from_the_header() {
        use image::ExtendedColorType as C;
        // 0xFFFF x 0xFFFF in the SOF0 segment: the largest a JPEG can claim
        let mut j = jpeg_bytes(8, 8, C::L8, &[0; 64]);
        let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        j[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(matches!(decode_bytes(&j, "bomb"), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn truncated_png_and_jpeg_are_errors() {
        use image::ExtendedColorType as C;
        let data: Vec<u8> = (0..64 * 64).map(|i| (i * 7 % 251) as u8).collect();
        let png = png_bytes(64, 64, C::L8, &data);
        let jpg = jpeg_bytes(64, 64, C::L8, &data);
        // (a PNG missing only its IEND chunk still holds the whole image, and is accepted)
        for cut in [9, 20, 33, png.len() / 2, png.len() - 13] {
            let r = decode_bytes(&png[..cut], "t");
            assert!(r.is_err(), "PNG cut at {cut} decoded");
        }
        for cut in [3, 10, 100, jpg.len() / 2, jpg.len() - 10, jpg.len() - 2, jpg.len() - 1] {
            let r = decode_bytes(&jpg[..cut], "t");
            assert!(r.is_err(), "JPEG cut at {cut} decoded");
        }
        // an APP1 segment holding an EOI marker (like an EXIF thumbnail) does not fool the check
        let mut with_app1 = jpg[..2].to_vec();
        with_app1.extend_from_slice(&[0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD8, 0xFF, 0xD9]);
        with_app1.extend_from_slice(&jpg[2..]);
        assert!(decode_bytes(&with_app1, "app1").is_ok());
        assert!(decode_bytes(&with_app1[..with_app1.len() / 2], "app1").is_err());
        // bytes flipped in the middle: error or an image, never a panic
        let mut bad = jpg.clone();
        for i in (200..bad.len() - 2).step_by(17) {
            bad[i] ^= 0x5A;
        }
        let _ = decode_bytes(&bad, "flipped");
        let mut bad = png.clone();
        for i in (40..bad.len() - 2).step_by(13) {
            bad[i] ^= 0x5A;
        }
        assert!(decode_bytes(&bad, "flipped").is_err());
    }
}

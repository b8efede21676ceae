//! Turning maps into files people and programs can open: overlay PNGs as in the paper's figures,
//! lossless 16-bit PNG maps, and `.npy` arrays.

use crate::decode::GrayImage;
use medpatch_models::contract::MAP_LOGIT_CLIP;

/// The paper's colour scale: `(map − 0.5)` on red-white-blue saturating at a patch logit of
/// ±`logit_range` (the model's, [`medpatch_models::ModelMetadata::overlay_logit_range`]; the
/// paper's is 80, i.e. ±0.2 in the normalised units), red = evidence for, blue = against, white =
/// neutral. RGB in [0, 1].
fn diverging_colour(normalised: f32, logit_range: f32) -> [f32; 3] {
    // Normalised units are logits / 400 (see `explain::normalise`).
    let t = ((normalised - 0.5) * 2.0 * MAP_LOGIT_CLIP / logit_range).clamp(-1.0, 1.0);
    if t >= 0.0 { [1.0, 1.0 - t, 1.0 - t] } else { [1.0 + t, 1.0 + t, 1.0] }
}

/// The paper's figure: the colour scale blended with alpha 0.5 over the grayscale image.
/// `normalised` is one class's map in [0, 1] (0.5 = logit 0). Returns RGB8, row-major.
pub fn overlay_rgb(image: &GrayImage, normalised: &[f32], logit_range: f32) -> Vec<u8> {
    debug_assert_eq!(image.pixels.len(), normalised.len());
    let mut rgb = Vec::with_capacity(normalised.len() * 3);
    for (&gray, &v) in image.pixels.iter().zip(normalised) {
        for c in diverging_colour(v, logit_range) {
            rgb.push((255.0 * (0.5 * gray + 0.5 * c)).round().clamp(0.0, 255.0) as u8);
        }
    }
    rgb
}

/// The colour layer alone, RGBA8 with alpha 0.5 (128): drawn over the grayscale image (e.g.
/// matplotlib `imshow(image, cmap="gray")` then `imshow(layer)`) it gives [`overlay_rgb`].
pub fn overlay_layer_rgba(normalised: &[f32], logit_range: f32) -> Vec<u8> {
    let mut rgba = Vec::with_capacity(normalised.len() * 4);
    for &v in normalised {
        for c in diverging_colour(v, logit_range) {
            rgba.push((255.0 * c).round() as u8);
        }
        rgba.push(128);
    }
    rgba
}

/// Why a file could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("PNG encoding failed: {0}")]
    Png(#[from] image::ImageError),
}

fn encode_png(width: u32, height: u32, data: &[u8], colour: image::ExtendedColorType) -> Result<Vec<u8>, RenderError> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out).write_image(data, width, height, colour)?;
    Ok(out)
}

pub fn png_rgb8(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, RenderError> {
    encode_png(width, height, rgb, image::ExtendedColorType::Rgb8)
}

/// A [0, 1] map as a 16-bit grayscale PNG (`round(v · 65535)`, big-endian samples).
pub fn png_gray16(width: u32, height: u32, values: &[f32]) -> Result<Vec<u8>, RenderError> {
    let bytes: Vec<u8> =
        values.iter().flat_map(|&v| ((v.clamp(0.0, 1.0) * 65535.0).round() as u16).to_be_bytes()).collect();
    encode_png(width, height, &bytes, image::ExtendedColorType::L16)
}

pub fn png_gray8(image: &GrayImage) -> Result<Vec<u8>, RenderError> {
    let bytes: Vec<u8> = image.pixels.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    encode_png(image.width, image.height, &bytes, image::ExtendedColorType::L8)
}

/// A float32 little-endian C-order `.npy` (format 1.0), readable by `numpy.load`.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "shape does not match data");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary; the header ends with a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_colours_follow_the_sign() {
        let image = GrayImage { width: 3, height: 1, pixels: vec![0.0, 0.0, 1.0] };
        // 0.7 / 0.3 are logits ±80, the paper's saturation.
        let rgb = overlay_rgb(&image, &[0.7, 0.3, 0.5], 80.0);
        assert_eq!(&rgb[0..3], &[128, 0, 0]); // full red evidence for, over black
        assert_eq!(&rgb[3..6], &[0, 0, 128]); // full blue evidence against
        assert_eq!(&rgb[6..9], &[255, 255, 255]); // neutral white over white
        let layer = overlay_layer_rgba(&[0.7, 0.3, 0.5], 80.0);
        assert_eq!(layer, vec![255, 0, 0, 128, 0, 0, 255, 128, 255, 255, 255, 128]);
        // A model with small logits: +2 is half-way to red at a range of 4, invisible at the paper's 80.
        let plus_two = 0.5 + 2.0 / 400.0;
        assert_eq!(&overlay_rgb(&image, &[plus_two; 3], 4.0)[0..3], &[128, 64, 64]);
        assert_eq!(&overlay_rgb(&image, &[plus_two; 3], 80.0)[0..3], &[128, 124, 124]);
    }

    #[test]
    fn npy_header_is_aligned() {
        let bytes = npy_f32(&[2, 3], &[0.0; 6]);
        assert_eq!((bytes.len() - 24) % 64, 0);
        assert!(std::str::from_utf8(&bytes[10..bytes.len() - 24]).unwrap().contains("'shape': (2, 3)"));
        let decoded = image::load_from_memory(&png_gray16(2, 1, &[0.0, 1.0]).unwrap()).unwrap().into_luma16();
        assert_eq!(decoded.as_raw(), &vec![0, 65535]);
    }
}

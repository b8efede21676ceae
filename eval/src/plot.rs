//! Pictures: ROC curves (plotters) and per-case saliency sheets, as RGB buffers encoded to PNG.
//! No text is drawn (no font is bundled): the class, AUROC and case ids go in file names and in
//! the markdown report that links the pictures.

use crate::geometry::Rect;
use crate::metrics::RocCurve;
use crate::rle::Mask;
use plotters::prelude::*;

/// A `size × size` ROC plot: grid every 0.1, the chance diagonal (grey), the curve (blue) and the
/// Youden operating point (red).
pub fn roc_png(curve: &RocCurve, youden_index: Option<usize>, size: u32) -> Result<Vec<u8>, String> {
    let mut rgb = vec![255u8; (size * size * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (size, size)).into_drawing_area();
        let area = root.margin(12, 12, 12, 12);
        let mut chart =
            ChartBuilder::on(&area).build_cartesian_2d(0f64..1f64, 0f64..1f64).map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(11)
            .y_labels(11)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&|_| String::new())
            .disable_x_axis()
            .disable_y_axis()
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], RGBColor(160, 160, 160)))
            .map_err(|e| e.to_string())?;
        let points: Vec<(f64, f64)> = curve.fpr.iter().copied().zip(curve.tpr.iter().copied()).collect();
        chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|e| e.to_string())?;
        if let Some(k) = youden_index {
            let p = (curve.fpr[k], curve.tpr[k]);
            chart.draw_series([Circle::new(p, 5, RED.filled())]).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    png_rgb(size, size, &rgb)
}

pub fn png_rgb(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// One case: left the X-ray with the ground truth outlined (yellow), right the X-ray under the
/// min–max normalised map (transparent → red) over the box the map covers, the segmentation at
/// `threshold` outlined (cyan) and the map's first maximum marked (green cross). Downscaled
/// (nearest) so that the longer side is at most `max_side`.
#[allow(clippy::too_many_arguments)]
pub fn saliency_sheet(
    image: &[f32],
    width: usize,
    height: usize,
    gt: &Mask,
    map: &[f32],
    target: Rect,
    argmax: (usize, usize),
    threshold: Option<f64>,
    max_side: usize,
) -> (u32, u32, Vec<u8>) {
    let scale = (width.max(height) as f64 / max_side as f64).max(1.0);
    let (w, h) = (((width as f64 / scale) as usize).max(1), ((height as f64 / scale) as usize).max(1));
    let (min, max) = map.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let range = max - min;
    let src = |x: usize, y: usize| {
        (((x as f64 + 0.5) * scale) as usize).min(width - 1)
            + width * (((y as f64 + 0.5) * scale) as usize).min(height - 1)
    };
    let normalised = |i: usize| -> Option<f32> {
        let (x, y) = (i % width, i / width);
        let inside =
            x >= target.left && x < target.left + target.width && y >= target.top && y < target.top + target.height;
        (inside && range > 0.0).then(|| (map[(y - target.top) * target.width + (x - target.left)] - min) / range)
    };
    let segmented = |i: usize| normalised(i).is_some_and(|v| threshold.is_some_and(|t| v as f64 > t));
    let edge = |f: &dyn Fn(usize) -> bool, x: usize, y: usize| {
        let here = f(src(x, y));
        here && [(x.wrapping_sub(1), y), (x + 1, y), (x, y.wrapping_sub(1)), (x, y + 1)]
            .iter()
            .any(|&(a, b)| a >= w || b >= h || !f(src(a, b)))
    };
    let gt_at = |i: usize| gt.data[i];
    let gap = 4;
    let total_w = 2 * w + gap;
    let mut rgb = vec![255u8; total_w * h * 3];
    let (ax, ay) = ((argmax.0 as f64 / scale) as usize, (argmax.1 as f64 / scale) as usize);
    for y in 0..h {
        for x in 0..w {
            let i = src(x, y);
            let g = (image[i].clamp(0.0, 1.0) * 255.0) as u8;
            let left = if edge(&gt_at, x, y) { [255, 220, 0] } else { [g, g, g] };
            let mut right = match normalised(i) {
                Some(v) => {
                    let a = 0.6 * v;
                    let mix = |c: f32, base: u8| (base as f32 * (1.0 - a) + c * a) as u8;
                    [mix(255.0, g), mix(0.0, g), mix(0.0, g)]
                }
                None => [g / 2, g / 2, g / 2],
            };
            if edge(&segmented, x, y) {
                right = [0, 220, 255];
            }
            if (x.abs_diff(ax) <= 4 && y == ay) || (y.abs_diff(ay) <= 4 && x == ax) {
                right = [0, 255, 0];
            }
            let l = (y * total_w + x) * 3;
            rgb[l..l + 3].copy_from_slice(&left);
            let r = (y * total_w + w + gap + x) * 3;
            rgb[r..r + 3].copy_from_slice(&right);
        }
    }
    (total_w as u32, h as u32, rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_png_is_a_png() {
        let curve =
            RocCurve { fpr: vec![0.0, 0.0, 1.0], tpr: vec![0.0, 1.0, 1.0], thresholds: vec![f64::INFINITY, 0.5, 0.1] };
        let png = roc_png(&curve, Some(1), 200).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
    }

    #[test]
    fn sheet_marks_the_maximum() {
        let image = vec![0.5f32; 16];
        let mut gt = Mask::new(4, 4);
        gt.set(1, 1, true);
        let map: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let (w, h, rgb) = saliency_sheet(
            &image,
            4,
            4,
            &gt,
            &map,
            Rect { left: 0, top: 0, width: 4, height: 4 },
            (3, 3),
            Some(0.5),
            64,
        );
        assert_eq!((w, h, rgb.len()), (12, 4, 12 * 4 * 3));
        let px = |x: usize, y: usize| &rgb[(y * 12 + x) * 3..(y * 12 + x) * 3 + 3];
        assert_eq!(px(1, 1), &[255, 220, 0], "ground truth outline");
        assert_eq!(px(8 + 3, 3), &[0, 255, 0], "maximum marked");
    }
}

//! The arithmetic of the QDQ graph medpatch writes, in one place: how a range becomes a scale and
//! a zero point, and what ONNX's QuantizeLinear and DequantizeLinear compute (round half to even,
//! saturate). `tests/python/qdq_reference.py` transcribes the same formulas in numpy, and
//! `quantize/tests/formulas.rs` holds the two to each other.
//!
//! - Activations: uint8, asymmetric, one scale and zero point per tensor. The range always
//!   contains 0 (so that 0 is exact: padding, and SiLU's floor near 0), and
//!   `scale = (max − min) / 255`, `zero_point = round(−min / scale)`.
//! - Weights: int8, symmetric (zero point 0), one scale per output channel:
//!   `scale_c = max|w_c| / 127`, values in [−127, 127] (−128 unused: the range is symmetric).
//! - Biases: int32, zero point 0, `scale_c = scale_input · scale_weight_c`, the scale an int8
//!   convolution's int32 accumulator has, so the runtime adds the bias to it directly.

/// The largest uint8 activation value.
pub const ACTIVATION_LEVELS: f32 = 255.0;
/// The largest int8 weight magnitude.
pub const WEIGHT_LEVELS: f32 = 127.0;

/// A uint8 tensor's quantization: `x ≈ (q − zero_point) · scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationParams {
    pub scale: f32,
    pub zero_point: u8,
}

/// The uint8 parameters for values in `[min, max]` (widened to contain 0). A range of one value
/// (a tensor that is 0 everywhere) gets scale 1: every scale represents it exactly.
pub fn activation_params(min: f32, max: f32) -> ActivationParams {
    let (low, high) = (min.min(0.0), max.max(0.0));
    let width = high - low;
    if width.is_nan() || width <= 0.0 || width.is_infinite() {
        return ActivationParams { scale: 1.0, zero_point: 0 };
    }
    let scale = width / ACTIVATION_LEVELS;
    let zero_point = (-low / scale).round_ties_even().clamp(0.0, ACTIVATION_LEVELS) as u8;
    ActivationParams { scale, zero_point }
}

/// ONNX QuantizeLinear to uint8: `saturate(round_half_even(x / scale) + zero_point)`.
pub fn quantize_u8(x: f32, p: ActivationParams) -> u8 {
    ((x / p.scale).round_ties_even() + p.zero_point as f32).clamp(0.0, ACTIVATION_LEVELS) as u8
}

/// ONNX DequantizeLinear from uint8: `(q − zero_point) · scale`.
pub fn dequantize_u8(q: u8, p: ActivationParams) -> f32 {
    (q as i32 - p.zero_point as i32) as f32 * p.scale
}

/// A weight tensor quantized per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// One per channel along `axis`.
    pub scales: Vec<f32>,
    /// The int8 values, in the weight tensor's own layout.
    pub values: Vec<i8>,
    pub axis: usize,
}

/// The int8 weight scale of one channel whose largest magnitude is `max_abs` (a channel of zeros
/// gets scale 1: it is exact with any).
pub fn weight_scale(max_abs: f32) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() { max_abs / WEIGHT_LEVELS } else { 1.0 }
}

/// Quantize `weights` (shape `dims`, row-major) per channel along `axis`, symmetric int8.
pub fn quantize_weights(weights: &[f32], dims: &[usize], axis: usize) -> QuantizedWeights {
    assert!(axis < dims.len(), "axis {axis} of a rank-{} tensor", dims.len());
    assert_eq!(weights.len(), dims.iter().product::<usize>(), "weights do not fill {dims:?}");
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel_of = |i: usize| (i / inner) % channels;
    let mut max_abs = vec![0f32; channels];
    for (i, w) in weights.iter().enumerate() {
        let c = channel_of(i);
        max_abs[c] = max_abs[c].max(w.abs());
    }
    let scales: Vec<f32> = max_abs.into_iter().map(weight_scale).collect();
    let values = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| (w / scales[channel_of(i)]).round_ties_even().clamp(-WEIGHT_LEVELS, WEIGHT_LEVELS) as i8)
        .collect();
    QuantizedWeights { scales, values, axis }
}

/// A bias quantized to int32 at the scales of an int8 product's accumulator.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedBias {
    pub scales: Vec<f32>,
    pub values: Vec<i32>,
}

/// `bias[c]` as int32 at scale `input_scale · weight_scales[c]` (the product in f32, as the
/// runtime computes it); the division in f64, so that large quotients round correctly.
pub fn quantize_bias(bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> QuantizedBias {
    assert_eq!(bias.len(), weight_scales.len(), "one bias per output channel");
    let scales: Vec<f32> = weight_scales.iter().map(|&w| input_scale * w).collect();
    let values = bias
        .iter()
        .zip(&scales)
        .map(|(&b, &s)| (b as f64 / s as f64).round_ties_even().clamp(i32::MIN as f64 + 1.0, i32::MAX as f64) as i32)
        .collect();
    QuantizedBias { scales, values }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_ranges_contain_zero_and_zero_is_exact() {
        let p = activation_params(-0.278, 6.0);
        assert!((p.scale - 6.278 / 255.0).abs() < 1e-7);
        assert_eq!(p.zero_point, 11); // 0.278 / 0.02462 = 11.29
        assert_eq!(dequantize_u8(quantize_u8(0.0, p), p), 0.0);
        // A range above 0 is widened down to 0; one below 0 up to 0.
        assert_eq!(activation_params(0.5, 1.0).zero_point, 0);
        assert!((activation_params(0.5, 1.0).scale - 1.0 / 255.0).abs() < 1e-9);
        assert_eq!(activation_params(-2.0, -1.0).zero_point, 255);
        assert_eq!(activation_params(0.0, 0.0), ActivationParams { scale: 1.0, zero_point: 0 });
        assert_eq!(activation_params(f32::NAN, 1.0).zero_point, 0);
    }

    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        let p = ActivationParams { scale: 1.0, zero_point: 10 };
        assert_eq!([0.5, 1.5, 2.5, -0.5].map(|x| quantize_u8(x, p)), [10, 12, 12, 10]);
        assert_eq!(quantize_u8(1e9, p), 255);
        assert_eq!(quantize_u8(-1e9, p), 0);
        assert_eq!(dequantize_u8(255, p), 245.0);
    }

    #[test]
    fn weights_are_symmetric_per_channel_along_the_axis() {
        // Channel 0's largest magnitude is 127: scale 1, so halves are ties (rounded to even).
        // Channel 1's is 0.5: scale 0.5/127.
        let w = [0.5, -127.0, 2.5, 1.5, 0.25, -0.5, 0.0, 0.125];
        let q = quantize_weights(&w, &[2, 1, 2, 2], 0);
        assert_eq!(q.scales, vec![1.0, 0.5 / 127.0]);
        assert_eq!(q.values, vec![0, -127, 2, 2, 64, -127, 0, 32]); // 63.5 → 64, 31.75 → 32
        // The same values as a [4, 2] matrix, channels along axis 1.
        let q = quantize_weights(&w, &[4, 2], 1);
        assert_eq!(q.scales, vec![2.5 / 127.0, 127.0 / 127.0]);
        assert_eq!(q.values[..4], [25, -127, 127, 2]); // 0.5/2.5·127 = 25.4; 2.5 → 127; 1.5 → 2 (tie)
        let zeros = quantize_weights(&[0.0, 0.0], &[2, 1], 0);
        assert_eq!((zeros.scales, zeros.values), (vec![1.0, 1.0], vec![0, 0]));
    }

    #[test]
    fn bias_scale_is_the_accumulators() {
        // Binary fractions, so that every product and quotient is exact.
        let b = quantize_bias(&[0.3125, -1e6, 0.1875], 0.5, &[0.125, 0.25, 0.125]);
        assert_eq!(b.scales, vec![0.0625, 0.125, 0.0625]);
        assert_eq!(b.values, vec![5, -8_000_000, 3]); // 0.1875 / 0.0625 = 3; 0.3125 / 0.0625 = 5
        let huge = quantize_bias(&[1e30], 1.0, &[1e-10]);
        assert_eq!(huge.values, vec![i32::MAX]);
    }
}

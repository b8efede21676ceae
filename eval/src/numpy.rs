//! numpy's float64 arithmetic where the metrics must match it to the last bit: the pairwise
//! summation behind `np.sum` and `np.nanmean` (shared by the localisation metrics and
//! CheXlocalize's bootstrap summary).

/// numpy's `np.sum` of a contiguous float64 array: pairwise summation in blocks of 128 with eight
/// accumulators (numpy's `pairwise_sum`).
pub fn numpy_sum(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 8 {
        let mut s = 0.0;
        for &v in values {
            s += v;
        }
        s
    } else if n <= 128 {
        let mut r = [0f64; 8];
        r.copy_from_slice(&values[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for k in 0..8 {
                r[k] += values[i + k];
            }
            i += 8;
        }
        let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            s += values[i];
            i += 1;
        }
        s
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_sum(&values[..half]) + numpy_sum(&values[half..])
    }
}

/// numpy's `np.nanmean`: NaN replaced by 0, summed, divided by the number of non-NaN values;
/// NaN when there are none.
pub fn nanmean(values: &[f64]) -> f64 {
    let count = values.iter().filter(|v| !v.is_nan()).count();
    if count == 0 {
        return f64::NAN;
    }
    let zeroed: Vec<f64> = values.iter().map(|&v| if v.is_nan() { 0.0 } else { v }).collect();
    numpy_sum(&zeroed) / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_numpy_structure() {
        let v: Vec<f64> = (0..1000).map(|i| 1.0 / (i as f64 + 1.0)).collect();
        let naive: f64 = v.iter().sum();
        assert!((numpy_sum(&v) - naive).abs() < 1e-12);
        assert_eq!(numpy_sum(&[1.0, 2.0]), 3.0);
        assert!(nanmean(&[f64::NAN]).is_nan());
        assert_eq!(nanmean(&[1.0, f64::NAN, 3.0]), 2.0);
    }
}

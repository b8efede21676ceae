//! COCO run-length encoding of binary masks, as CheXlocalize stores its ground truth
//! (`gt_segmentations_{val,test}.json`: `{"size": [h, w], "counts": "…"}`) and as pycocotools'
//! `mask.encode` / `mask.decode` read and write it:
//!
//! * pixels in **column-major (Fortran) order**: down the first column, then the second, …;
//! * runs alternate 0, 1, 0, 1, … starting with a run of **zeros** (possibly of length 0);
//! * the string form (pycocotools `rleToString`): each count, from the third on, is replaced by
//!   its difference to the count two before; every value is written as little-endian groups of
//!   5 bits, each group as the character `48 + group` with bit `0x20` set while more groups follow;
//!   the sign is carried by bit `0x10` of the last group (two's complement, arithmetic shift).

/// A binary mask, row-major `h × w` (`true` = inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub height: usize,
    pub width: usize,
    pub data: Vec<bool>,
}

impl Mask {
    pub fn new(height: usize, width: usize) -> Self {
        Self { height, width, data: vec![false; height * width] }
    }

    pub fn get(&self, x: usize, y: usize) -> bool {
        self.data[y * self.width + x]
    }

    pub fn set(&mut self, x: usize, y: usize, v: bool) {
        self.data[y * self.width + x] = v;
    }

    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&v| v).count()
    }

    pub fn is_empty(&self) -> bool {
        !self.data.iter().any(|&v| v)
    }

    /// In-place union.
    pub fn or(&mut self, other: &Mask) {
        assert_eq!((self.height, self.width), (other.height, other.width));
        for (a, &b) in self.data.iter_mut().zip(&other.data) {
            *a |= b;
        }
    }
}

/// Run lengths in Fortran order, starting with zeros.
pub fn counts(mask: &Mask) -> Vec<u64> {
    let mut out = Vec::new();
    let mut current = false;
    let mut run = 0u64;
    for x in 0..mask.width {
        for y in 0..mask.height {
            let v = mask.get(x, y);
            if v != current {
                out.push(run);
                run = 0;
                current = v;
            }
            run += 1;
        }
    }
    out.push(run);
    out
}

/// Largest mask accepted, in pixels: the decoders' image limit (2^28; CheXpert images are about
/// 2^22). A mask's size comes from its JSON, checked before anything is allocated.
pub const MAX_MASK_PIXELS: u64 = 1 << 28;

/// The mask back from run lengths.
pub fn from_counts(height: usize, width: usize, counts: &[u64]) -> Result<Mask, String> {
    let pixels = (height as u64)
        .checked_mul(width as u64)
        .filter(|&n| n <= MAX_MASK_PIXELS)
        .ok_or_else(|| format!("a {height}×{width} mask is over the limit of {MAX_MASK_PIXELS} pixels"))?;
    let total = counts.iter().try_fold(0u64, |sum, &c| sum.checked_add(c));
    if total != Some(pixels) {
        let covered = total.map_or_else(|| "more than 2^64".to_string(), |t| t.to_string());
        return Err(format!("the runs cover {covered} pixels, the mask has {pixels}"));
    }
    let mut mask = Mask::new(height, width);
    let mut i = 0usize;
    for (k, &run) in counts.iter().enumerate() {
        let value = k % 2 == 1;
        for _ in 0..run {
            if value {
                let (x, y) = (i / height, i % height);
                mask.set(x, y, true);
            }
            i += 1;
        }
    }
    Ok(mask)
}

/// pycocotools `rleToString`.
pub fn counts_to_string(counts: &[u64]) -> String {
    let mut out = String::new();
    for (i, &c) in counts.iter().enumerate() {
        let mut x = c as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            out.push((c + 48) as char);
            if !more {
                break;
            }
        }
    }
    out
}

/// pycocotools `rleFrString`.
pub fn counts_from_string(s: &str) -> Result<Vec<u64>, String> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u64> = Vec::new();
    let mut p = 0usize;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0;
        loop {
            let Some(&b) = bytes.get(p) else { return Err("truncated RLE string".into()) };
            if k == 13 {
                // 13 groups of 5 bits hold every i64; more is not a count pycocotools writes.
                return Err("a run length in the RLE string is longer than 64 bits".into());
            }
            if !(48..48 + 64).contains(&b) {
                return Err(format!("invalid RLE character {:?}", b as char));
            }
            let c = (b - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            let more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x = x.checked_add(counts[m - 2] as i64).ok_or("a run length in the RLE string overflows")?;
        }
        if x < 0 {
            return Err("negative run length in RLE string".into());
        }
        counts.push(x as u64);
    }
    Ok(counts)
}

/// CheXlocalize's `{"size": [h, w], "counts": "…"}`.
pub fn encode_json(mask: &Mask) -> serde_json::Value {
    serde_json::json!({ "size": [mask.height, mask.width], "counts": counts_to_string(&counts(mask)) })
}

/// Reads `{"size": [h, w], "counts": str | [int]}` (compressed or uncompressed COCO RLE).
pub fn decode_json(value: &serde_json::Value) -> Result<Mask, String> {
    let size = value.get("size").and_then(|s| s.as_array()).ok_or("RLE without 'size'")?;
    let dims: Vec<usize> = size.iter().filter_map(|v| v.as_u64().map(|v| v as usize)).collect();
    let [h, w] = dims[..] else { return Err("RLE 'size' must be [h, w]".into()) };
    let counts = match value.get("counts") {
        Some(serde_json::Value::String(s)) => counts_from_string(s)?,
        Some(serde_json::Value::Array(a)) => {
            a.iter().map(|v| v.as_u64().ok_or("non-integer count")).collect::<Result<_, _>>()?
        }
        _ => return Err("RLE without 'counts'".into()),
    };
    from_counts(h, w, &counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked by hand from pycocotools' rleToString:
    /// counts [2, 3, 4, 1, 100, 0]:
    ///   2 → '2' (50); 3 → '3'; 4 → '4' (no difference for the first three);
    ///   1 − 3 = −2: low 5 bits 0b11110 = 30, x >> 5 = −1, sign bit set and x == −1 → stop: 48+30 = 'N';
    ///   100 − 4 = 96: 96 & 31 = 0, x = 3, no sign bit, x ≠ 0 → 0|0x20 = 32 → 'P'; then 3 → '3';
    ///   0 − 1 = −1: −1 & 31 = 31 ('O' = 48+31), x = −1, sign bit → stop.
    #[test]
    fn string_form_hand_worked() {
        let counts = [2u64, 3, 4, 1, 100, 0];
        assert_eq!(counts_to_string(&counts), "234NP3O");
        assert_eq!(counts_from_string("234NP3O").unwrap(), counts);
        // A single large count: 1000 = 0b11111_01000 → 8|0x20 = 40 → 'X', 31 → 0b11111 has the
        // sign bit set but x = 0 ≠ −1, so it continues: 31|0x20 = 63 → 'o', then 0 → '0'.
        assert_eq!(counts_to_string(&[1000]), "Xo0");
        assert_eq!(counts_from_string("Xo0").unwrap(), vec![1000]);
    }

    #[test]
    fn fortran_order_and_round_trip() {
        // 3 rows × 2 columns:
        //   0 1
        //   1 1
        //   0 0
        let mut m = Mask::new(3, 2);
        m.set(1, 0, true);
        m.set(0, 1, true);
        m.set(1, 1, true);
        // Column-major: column 0 = [0,1,0], column 1 = [1,1,0] → 0 1 0 1 1 0 → runs 1,1,1,2,1.
        assert_eq!(counts(&m), vec![1, 1, 1, 2, 1]);
        let json = encode_json(&m);
        assert_eq!(json["size"], serde_json::json!([3, 2]));
        assert_eq!(decode_json(&json).unwrap(), m);
        // A mask that starts with ones begins with an empty run of zeros.
        let mut full = Mask::new(2, 2);
        full.data.fill(true);
        assert_eq!(counts(&full), vec![0, 4]);
        assert_eq!(decode_json(&serde_json::json!({"size": [2, 2], "counts": [0, 4]})).unwrap(), full);
    }

    #[test]
    fn absurd_sizes_and_overflowing_counts_are_errors_not_allocations() {
        let huge = serde_json::json!({"size": [1_000_000, 1_000_000], "counts": [0, 1]});
        assert!(decode_json(&huge).unwrap_err().contains("over the limit of 268435456 pixels"));
        let overflow = serde_json::json!({"size": [2, 2], "counts": [u64::MAX, u64::MAX, 4]});
        assert!(decode_json(&overflow).unwrap_err().contains("cover more than 2^64 pixels"));
        assert!(counts_from_string(&"o".repeat(40)).unwrap_err().contains("longer than 64 bits"));
        // The fourth value is a difference to the second: i64::MAX + i64::MAX overflows.
        let raw: String = [0, i64::MAX as u64, 0, i64::MAX as u64].iter().map(|&v| counts_to_string(&[v])).collect();
        assert_eq!(counts_from_string(&raw).unwrap_err(), "a run length in the RLE string overflows");
    }

    #[test]
    fn random_masks_round_trip() {
        let mut state = 12345u64;
        for _ in 0..50 {
            let (h, w) = (1 + (state % 37) as usize, 1 + (state % 23) as usize);
            let mut m = Mask::new(h, w);
            for v in m.data.iter_mut() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *v = (state >> 60) < 5;
            }
            let s = counts_to_string(&counts(&m));
            assert_eq!(from_counts(h, w, &counts_from_string(&s).unwrap()).unwrap(), m);
        }
    }
}

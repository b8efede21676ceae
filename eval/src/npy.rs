//! Reading `.npy` saliency maps written by any tool (numpy `save`), so that maps from other
//! methods (Grad-CAM and friends) are scored the same way as medpatch's own.

/// A float array read from a `.npy` file, converted to f32, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Parse a `.npy` file: versions 1–3, little- or big-endian float32/float64, C or Fortran order.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    if !bytes.starts_with(b"\x93NUMPY") || bytes.len() < 10 {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-UTF-8 .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))?;
        Some(header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr =
        field("descr").and_then(|d| d.strip_prefix('\'')).and_then(|d| d.split('\'').next()).ok_or("no 'descr'")?;
    let fortran = field("fortran_order").ok_or("no 'fortran_order'")?.starts_with("True");
    let shape_text =
        field("shape").and_then(|s| s.strip_prefix('(')).and_then(|s| s.split(')').next()).ok_or("no 'shape'")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape entry '{s}'")))
        .collect::<Result<_, _>>()?;
    // In checked arithmetic: the shape comes from the file, and the data must hold it.
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("the shape's size overflows")?;
    let body = &bytes[start + header_len..];
    let width = if descr.ends_with('8') { 8 } else { 4 };
    if count.checked_mul(width).is_none_or(|needed| needed > body.len()) {
        return Err(format!("the data ({} bytes) is shorter than the shape {shape:?} says", body.len()));
    }
    let values: Vec<f32> = match descr {
        "<f4" | ">f4" | "=f4" => {
            let raw = body.get(..count * 4).ok_or("the data is shorter than the shape says")?;
            raw.chunks_exact(4)
                .map(|c| {
                    let b: [u8; 4] = c.try_into().unwrap();
                    if descr.starts_with('>') { f32::from_be_bytes(b) } else { f32::from_le_bytes(b) }
                })
                .collect()
        }
        "<f8" | ">f8" | "=f8" => {
            let raw = body.get(..count * 8).ok_or("the data is shorter than the shape says")?;
            raw.chunks_exact(8)
                .map(|c| {
                    let b: [u8; 8] = c.try_into().unwrap();
                    (if descr.starts_with('>') { f64::from_be_bytes(b) } else { f64::from_le_bytes(b) }) as f32
                })
                .collect()
        }
        other => return Err(format!("unsupported dtype '{other}' (float32 or float64 expected)")),
    };
    let data = if fortran && shape.len() > 1 { fortran_to_c(&values, &shape) } else { values };
    Ok(NpyArray { shape, data })
}

fn fortran_to_c(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = values.len();
    let mut out = vec![0f32; n];
    let mut index = vec![0usize; shape.len()];
    for v in out.iter_mut() {
        // Fortran offset of the current C-order index.
        let (mut offset, mut stride) = (0, 1);
        for (k, &i) in index.iter().enumerate() {
            offset += i * stride;
            stride *= shape[k];
        }
        *v = values[offset];
        for k in (0..shape.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

/// Read an array of any shape.
pub fn read(path: &std::path::Path) -> Result<NpyArray, String> {
    parse(&medpatch_models::read_regular_file(path, medpatch_models::MAX_DATA_FILE_BYTES).map_err(|e| e.to_string())?)
}

/// Read a 2-D map (leading axes of size 1 are dropped: `[1, 1, H, W]` as torch saves a map is fine).
pub fn read_map(path: &std::path::Path) -> Result<NpyArray, String> {
    let mut array = read(path)?;
    while array.shape.len() > 2 && array.shape[0] == 1 {
        array.shape.remove(0);
    }
    if array.shape.len() != 2 || array.shape.contains(&0) {
        return Err(format!("expected a 2-D map, found shape {:?}", array.shape));
    }
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, body: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn float32_float64_fortran() {
        let body: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse(&npy("<f4", false, "(2, 3)", &body)).unwrap();
        assert_eq!((a.shape.clone(), a.data.clone()), (vec![2, 3], vec![1., 2., 3., 4., 5., 6.]));
        // The same bytes in Fortran order are columns: [[1, 3, 5], [2, 4, 6]].
        let f = parse(&npy("<f4", true, "(2, 3)", &body)).unwrap();
        assert_eq!(f.data, vec![1., 3., 5., 2., 4., 6.]);
        let body: Vec<u8> = [0.5f64, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(parse(&npy("<f8", false, "(1, 1, 1, 2)", &body)).unwrap().data, vec![0.5, -1.0]);
        assert!(parse(&npy("<i4", false, "(1,)", &[0; 4])).unwrap_err().contains("unsupported dtype"));
        assert!(parse(&npy("<f4", false, "(4,)", &[0; 8])).unwrap_err().contains("shorter"));
        assert!(parse(b"hello").is_err());
    }
}

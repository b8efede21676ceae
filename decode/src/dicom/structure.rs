//! A walk over the element structure of a DICOM file, before dicom-rs parses it.
//!
//! dicom-rs trusts the lengths and value representations it reads: on a damaged file it reads
//! garbage as elements, and fuzzing and the mutation test showed what follows — element values
//! allocated (and zeroed) at lengths taken from pixel bytes, over 1 GiB resident for a 7 MiB
//! file, and seconds of work. This walk refuses, without allocating, what would send it there:
//!
//! * an element whose value representation is not one of PS3.5's (explicit VR);
//! * a defined length larger than what is left of its container (file, sequence, item);
//! * an undefined length on anything but a sequence, an `UN` value or encapsulated Pixel Data,
//!   or an undefined-length sequence, item or pixel data without its delimiter;
//! * sequences nested deeper than [`MAX_DEPTH`] (dicom-rs parses them recursively);
//! * a deflated data set that inflates past what its image needs: Pixel Data within the first
//!   [`MAX_INFLATED_HEADER`] bytes, and no more than its Rows × Columns × Samples × Bits Allocated
//!   (× frames) plus [`INFLATED_MARGIN`] (a deflate stream can expand a thousandfold).
//!
//! It does not interpret values: dicom-rs still does all the parsing.

use std::io::Read;

/// Deepest nesting of sequences accepted; real images use a handful of levels.
const MAX_DEPTH: u32 = 32;
/// How far a deflated data set may inflate before its Pixel Data element must have begun.
const MAX_INFLATED_HEADER: usize = 64 << 20;
/// What may follow the pixel data once inflated (trailing padding, overlays, signatures).
const INFLATED_MARGIN: usize = 1 << 20;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

/// How the data set after the file meta group is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    ImplicitLittle,
    ExplicitLittle,
    ExplicitBig,
    /// Deflated explicit VR little endian.
    Deflated,
}

impl Encoding {
    pub(super) fn of_transfer_syntax(uid: &str) -> Encoding {
        match uid.trim_end_matches(['\0', ' ']) {
            "1.2.840.10008.1.2" => Encoding::ImplicitLittle,
            "1.2.840.10008.1.2.2" => Encoding::ExplicitBig,
            "1.2.840.10008.1.2.1.99" => Encoding::Deflated,
            // every other syntax, compressed ones included, is explicit VR little endian
            _ => Encoding::ExplicitLittle,
        }
    }
}

/// Check a whole file: `meta_at` is where the file meta group starts (132 with a preamble, 4
/// without), or `None` for a bare data set in `bare` encoding.
pub(super) fn check_file(bytes: &[u8], meta_at: Option<usize>, bare: Encoding) -> Result<(), String> {
    let (dataset_at, encoding) = match meta_at {
        Some(at) => {
            let walker = Walker { data: bytes, explicit: true, big_endian: false };
            let (end, ts) = walker.meta_group(at)?;
            (end, ts.map(|t| Encoding::of_transfer_syntax(&t)).unwrap_or(Encoding::ExplicitLittle))
        }
        None => (0, bare),
    };
    match encoding {
        Encoding::Deflated => {
            let inflated = inflate_bounded(&bytes[dataset_at..])?;
            Walker { data: &inflated, explicit: true, big_endian: false }.dataset(0)
        }
        e => Walker { data: bytes, explicit: e != Encoding::ImplicitLittle, big_endian: e == Encoding::ExplicitBig }
            .dataset(dataset_at),
    }
}

/// Inflate a deflated data set (explicit VR little endian) no further than its image needs:
/// while inflating, the top-level elements are followed as they arrive, the image's geometry is
/// read from them, and once Pixel Data begins the limit becomes its end plus [`INFLATED_MARGIN`].
fn inflate_bounded(deflated: &[u8]) -> Result<Vec<u8>, String> {
    const CHUNK: u64 = 256 << 10;
    let mut decoder = flate2::read::DeflateDecoder::new(deflated);
    let mut inflated = Vec::new();
    let mut limit = MAX_INFLATED_HEADER;
    let mut scan = TopLevelScan::default();
    loop {
        let read = (&mut decoder)
            .take(CHUNK)
            .read_to_end(&mut inflated)
            .map_err(|e| format!("the deflated data set cannot be inflated: {e}"))?;
        if read == 0 {
            return Ok(inflated);
        }
        if let Some(end) = scan.advance(&inflated)? {
            limit = end.saturating_add(INFLATED_MARGIN);
        }
        if inflated.len() > limit {
            return Err(match scan.pixel_data_end {
                Some(_) => format!(
                    "the deflated data set inflates to more than its image needs ({} bytes of it so far, the \
                     limit {limit}): a decompression bomb or a damaged file",
                    inflated.len()
                ),
                None => format!("no Pixel Data in the first {MAX_INFLATED_HEADER} bytes of the inflated data set"),
            });
        }
    }
}

/// Following the top-level elements of a data set while it is still being inflated.
#[derive(Default)]
struct TopLevelScan {
    /// Where the next top-level element starts.
    pos: usize,
    rows: Option<u64>,
    columns: Option<u64>,
    samples: Option<u64>,
    bits_allocated: Option<u64>,
    frames: Option<u64>,
    /// Where the pixel data ends, once its element has been seen.
    pixel_data_end: Option<usize>,
}

impl TopLevelScan {
    /// Follow the elements `data` now holds; once Pixel Data has begun, where it ends (checked
    /// against the geometry read before it).
    fn advance(&mut self, data: &[u8]) -> Result<Option<usize>, String> {
        if let Some(end) = self.pixel_data_end {
            return Ok(Some(end));
        }
        let walker = Walker { data, explicit: true, big_endian: false };
        // Fewer than 12 bytes: the header may not be complete yet.
        while data.len().saturating_sub(self.pos) >= 12 {
            let Ok(h) = walker.header(self.pos, data.len(), true, false) else {
                return Ok(None); // damaged: the walk over the whole data set will say how
            };
            if h.tag == PIXEL_DATA {
                return self.pixel_data(&h).map(Some);
            }
            if h.len == UNDEFINED {
                // A sequence: walked once all of it has arrived.
                match walker.items(h.value_at, data.len(), 1, true) {
                    Ok(end) => self.pos = end,
                    Err(_) => return Ok(None),
                }
                continue;
            }
            let end = h.value_at + h.len as usize;
            if h.tag.0 == 0x0028 {
                let Some(value) = data.get(h.value_at..end) else { return Ok(None) };
                let us = || (value.len() >= 2).then(|| u16::from_le_bytes([value[0], value[1]]) as u64);
                match h.tag.1 {
                    0x0002 => self.samples = us(),
                    0x0008 => self.frames = std::str::from_utf8(value).ok().and_then(|t| t.trim().parse().ok()),
                    0x0010 => self.rows = us(),
                    0x0011 => self.columns = us(),
                    0x0100 => self.bits_allocated = us(),
                    _ => {}
                }
            }
            self.pos = end;
        }
        Ok(None)
    }

    fn pixel_data(&mut self, h: &Header) -> Result<usize, String> {
        let (Some(rows), Some(columns), Some(bits)) = (self.rows, self.columns, self.bits_allocated) else {
            return Err("the deflated data set has no Rows, Columns and Bits Allocated before its Pixel Data".into());
        };
        if h.len == UNDEFINED {
            return Err("encapsulated Pixel Data in a deflated data set (only native pixel data is allowed)".into());
        }
        let needed = rows
            .saturating_mul(columns)
            .saturating_mul(self.samples.unwrap_or(1).max(1))
            .saturating_mul(self.frames.unwrap_or(1).max(1))
            .saturating_mul(bits.div_ceil(8).max(1));
        // Values have even lengths: one byte of padding.
        if h.len as u64 > needed + 1 {
            return Err(format!(
                "the deflated data set's Pixel Data declares {} bytes where its {rows}×{columns} image needs {needed}",
                h.len
            ));
        }
        let end = h.value_at + h.len as usize;
        self.pixel_data_end = Some(end);
        Ok(end)
    }
}

struct Walker<'a> {
    data: &'a [u8],
    explicit: bool,
    big_endian: bool,
}

/// Value representations whose explicit-VR header has a 4-byte length (PS3.5 7.1.2).
fn long_form(vr: &[u8]) -> bool {
    matches!(vr, b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV")
}

fn valid_vr(vr: &[u8]) -> bool {
    long_form(vr)
        || matches!(
            vr,
            b"AE"
                | b"AS"
                | b"AT"
                | b"CS"
                | b"DA"
                | b"DS"
                | b"DT"
                | b"FL"
                | b"FD"
                | b"IS"
                | b"LO"
                | b"LT"
                | b"PN"
                | b"SH"
                | b"SL"
                | b"SS"
                | b"ST"
                | b"TM"
                | b"UI"
                | b"UL"
                | b"US"
        )
}

/// One element header.
struct Header {
    tag: (u16, u16),
    vr: Option<[u8; 2]>,
    len: u32,
    /// Where the value starts.
    value_at: usize,
}

impl Walker<'_> {
    fn u16_at(&self, at: usize, big_endian: bool) -> u16 {
        let b = [self.data[at], self.data[at + 1]];
        if big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) }
    }

    fn u32_at(&self, at: usize, big_endian: bool) -> u32 {
        let b = [self.data[at], self.data[at + 1], self.data[at + 2], self.data[at + 3]];
        if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
    }

    fn tag_at(&self, at: usize, big_endian: bool) -> (u16, u16) {
        (self.u16_at(at, big_endian), self.u16_at(at + 2, big_endian))
    }

    /// The header at `at`, which must leave room for it before `end`. Item and delimiter tags
    /// (group FFFE) have no VR in any encoding.
    fn header(&self, at: usize, end: usize, explicit: bool, big_endian: bool) -> Result<Header, String> {
        let short = || format!("truncated element header at byte {at}");
        if end.saturating_sub(at) < 8 {
            return Err(short());
        }
        let tag = self.tag_at(at, big_endian);
        if tag.0 == 0xFFFE || !explicit {
            return Ok(Header { tag, vr: None, len: self.u32_at(at + 4, big_endian), value_at: at + 8 });
        }
        let vr = [self.data[at + 4], self.data[at + 5]];
        if !valid_vr(&vr) {
            return Err(format!(
                "element ({:04X},{:04X}) at byte {at} has no valid value representation ({:02X} {:02X}): the \
                 file is damaged",
                tag.0, tag.1, vr[0], vr[1]
            ));
        }
        if long_form(&vr) {
            if end - at < 12 {
                return Err(short());
            }
            Ok(Header { tag, vr: Some(vr), len: self.u32_at(at + 8, big_endian), value_at: at + 12 })
        } else {
            Ok(Header { tag, vr: Some(vr), len: self.u16_at(at + 6, big_endian) as u32, value_at: at + 8 })
        }
    }

    /// The file meta group (always explicit VR little endian) from `at`: where the data set
    /// starts, and the Transfer Syntax UID.
    fn meta_group(&self, at: usize) -> Result<(usize, Option<String>), String> {
        let mut pos = at;
        let mut ts = None;
        while self.data.len().saturating_sub(pos) >= 8 && self.u16_at(pos, false) == 0x0002 {
            let h = self.header(pos, self.data.len(), true, false)?;
            let len = self.defined_len(&h, self.data.len())?;
            if h.tag == (0x0002, 0x0010) {
                ts = Some(String::from_utf8_lossy(&self.data[h.value_at..h.value_at + len]).to_string());
            }
            pos = h.value_at + len;
        }
        Ok((pos, ts))
    }

    fn defined_len(&self, h: &Header, end: usize) -> Result<usize, String> {
        if h.len == UNDEFINED {
            return Err(format!(
                "element ({:04X},{:04X}) at byte {} has an undefined length, not allowed for it",
                h.tag.0,
                h.tag.1,
                h.value_at.saturating_sub(8)
            ));
        }
        let left = end.saturating_sub(h.value_at);
        if h.len as usize > left {
            return Err(format!(
                "element ({:04X},{:04X}) claims {} bytes but only {left} remain (truncated or damaged)",
                h.tag.0, h.tag.1, h.len
            ));
        }
        Ok(h.len as usize)
    }

    /// The top-level data set from `at` to the end of the data.
    fn dataset(&self, at: usize) -> Result<(), String> {
        let end = self.data.len();
        let pos = self.elements(at, end, 0, false)?;
        debug_assert!(pos <= end);
        Ok(())
    }

    /// Elements from `pos` until `end`, or (`until_item_end`) until an item delimiter; returns
    /// the position after the last one. Fewer than 8 trailing bytes (padding) are left alone.
    fn elements(&self, mut pos: usize, end: usize, depth: u32, until_item_end: bool) -> Result<usize, String> {
        while end - pos >= 8 {
            let h = self.header(pos, end, self.explicit, self.big_endian)?;
            if h.tag.0 == 0xFFFE {
                if h.tag == ITEM_END && until_item_end {
                    return Ok(h.value_at);
                }
                return Err(format!("unexpected item or delimiter tag at byte {pos}"));
            }
            pos = if h.len == UNDEFINED {
                let vr = h.vr.as_ref().map(|v| &v[..]);
                if h.tag == PIXEL_DATA && depth == 0 && vr != Some(b"SQ") {
                    self.fragments(h.value_at, end)?
                } else if matches!(vr, None | Some(b"SQ") | Some(b"UN")) {
                    self.items(h.value_at, end, depth + 1, true)?
                } else {
                    return Err(format!(
                        "element ({:04X},{:04X}) at byte {pos} has an undefined length, not allowed for it",
                        h.tag.0, h.tag.1
                    ));
                }
            } else {
                let len = self.defined_len(&h, end)?;
                // Implicit VR does not say which values are sequences (dicom-rs asks its
                // dictionary): a value that starts with an item tag is walked as one.
                let starts_with_item = len >= 8 && self.tag_at(h.value_at, self.big_endian) == ITEM;
                if h.vr == Some(*b"SQ") || (h.vr.is_none() && starts_with_item) {
                    self.items(h.value_at, h.value_at + len, depth + 1, false)?;
                }
                h.value_at + len
            };
        }
        if until_item_end {
            return Err("an item of undefined length ends without its delimiter (truncated)".to_string());
        }
        Ok(pos)
    }

    /// The items of a sequence: until the sequence delimiter (`undefined`), or filling `end`.
    fn items(&self, mut pos: usize, end: usize, depth: u32, undefined: bool) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested more than {MAX_DEPTH} deep"));
        }
        loop {
            if !undefined && pos >= end {
                return Ok(pos);
            }
            // Items and delimiters are little/big endian like the rest, never with a VR.
            let h = self.header(pos, end, false, self.big_endian)?;
            if h.tag == SEQUENCE_END && undefined {
                return Ok(h.value_at);
            }
            if h.tag != ITEM {
                return Err(format!("expected a sequence item at byte {pos}, found ({:04X},{:04X})", h.tag.0, h.tag.1));
            }
            pos = if h.len == UNDEFINED {
                self.elements(h.value_at, end, depth, true)?
            } else {
                let len = self.defined_len(&h, end)?;
                self.elements(h.value_at, h.value_at + len, depth, false)?;
                h.value_at + len
            };
        }
    }

    /// Encapsulated pixel data: items of defined length (offset table, fragments) until the
    /// sequence delimiter.
    fn fragments(&self, mut pos: usize, end: usize) -> Result<usize, String> {
        loop {
            let h = self.header(pos, end, false, self.big_endian)?;
            if h.tag == SEQUENCE_END {
                return Ok(h.value_at);
            }
            if h.tag != ITEM {
                return Err(format!(
                    "expected a pixel data fragment at byte {pos}, found ({:04X},{:04X})",
                    h.tag.0, h.tag.1
                ));
            }
            pos = h.value_at + self.defined_len(&h, end)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        if long_form(vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    fn check(data: &[u8]) -> Result<(), String> {
        Walker { data, explicit: true, big_endian: false }.dataset(0)
    }

    #[test]
    fn sane_data_sets_pass() {
        let mut ds = explicit((0x0008, 0x0060), b"CS", b"CR");
        ds.extend(explicit((0x0028, 0x0010), b"US", &[2, 0]));
        ds.extend(explicit((0x7FE0, 0x0010), b"OW", &[0; 8]));
        assert_eq!(check(&ds), Ok(()));
        // a sequence of undefined length with one item of undefined length, then trailing padding
        let mut sq = explicit((0x0008, 0x1140), b"SQ", &[]);
        sq.truncate(sq.len() - 4);
        sq.extend_from_slice(&UNDEFINED.to_le_bytes());
        sq.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        sq.extend(explicit((0x0008, 0x1150), b"UI", b"1.2"));
        sq.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        sq.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        sq.extend_from_slice(&[0, 0]);
        assert_eq!(check(&sq), Ok(()));
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn image_header(rows: u16, columns: u16) -> Vec<u8> {
        let mut ds = explicit((0x0008, 0x0060), b"CS", b"CR");
        // an undefined-length sequence before the geometry, as real files have
        let mut sq = explicit((0x0008, 0x1140), b"SQ", &[]);
        sq.truncate(sq.len() - 4);
        sq.extend_from_slice(&UNDEFINED.to_le_bytes());
        sq.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        sq.extend(explicit((0x0008, 0x1150), b"UI", b"1.2"));
        sq.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        ds.extend(sq);
        ds.extend(explicit((0x0028, 0x0002), b"US", &1u16.to_le_bytes()));
        ds.extend(explicit((0x0028, 0x0010), b"US", &rows.to_le_bytes()));
        ds.extend(explicit((0x0028, 0x0011), b"US", &columns.to_le_bytes()));
        ds.extend(explicit((0x0028, 0x0100), b"US", &16u16.to_le_bytes()));
        ds
    }

    #[test]
    fn deflated_data_sets_inflate_no_further_than_their_image_needs() {
        // A genuine 600×500 16-bit image, larger than one inflation chunk: inflates whole.
        let mut ds = image_header(600, 500);
        let pixels: Vec<u8> = (0..600 * 500 * 2).map(|i| (i * 7 % 251) as u8).collect();
        ds.extend(explicit((0x7FE0, 0x0010), b"OW", &pixels));
        assert_eq!(inflate_bounded(&deflate(&ds)).unwrap(), ds);
        // The same header with 16 MiB of zeros after the pixel data: stopped at the image's
        // 600 KB plus the margin, long before the zeros end.
        let mut bomb = ds.clone();
        bomb.resize(ds.len() + (16 << 20), 0);
        let err = inflate_bounded(&deflate(&bomb)).unwrap_err();
        assert!(err.contains("inflates to more than its image needs"), "{err}");
        // Pixel Data declaring more than Rows × Columns × 2 bytes.
        let mut lying = image_header(4, 4);
        lying.extend(explicit((0x7FE0, 0x0010), b"OW", &[0; 64]));
        let err = inflate_bounded(&deflate(&lying)).unwrap_err();
        assert!(err.contains("declares 64 bytes where its 4×4 image needs 32"), "{err}");
        // No geometry before the pixel data.
        let mut bare = explicit((0x0008, 0x0060), b"CS", b"CR");
        bare.extend(explicit((0x7FE0, 0x0010), b"OW", &[0; 8]));
        assert!(inflate_bounded(&deflate(&bare)).unwrap_err().contains("no Rows, Columns and Bits Allocated"));
        // Zeros and no Pixel Data at all: stopped at the header limit, not at gigabytes.
        let zeros = deflate(&vec![0u8; MAX_INFLATED_HEADER + (4 << 20)]);
        assert!(inflate_bounded(&zeros).unwrap_err().contains("no Pixel Data in the first"));
    }

    #[test]
    fn damage_is_found_without_allocating() {
        let mut ds = explicit((0x0008, 0x0060), b"CS", b"CR");
        ds.extend(explicit((0x7FE0, 0x0010), b"OW", &[0; 8]));
        // a length past the end
        let mut long = ds.clone();
        let at = long.len() - 20; // the OW header: 12 bytes, then 8 of value
        long[at + 8..at + 12].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        assert!(check(&long).unwrap_err().contains("claims 2147483632 bytes"));
        // a bad VR
        let mut bad = ds.clone();
        bad[4] = b'?';
        assert!(check(&bad).unwrap_err().contains("valid value representation"));
        // an undefined-length sequence never closed
        let mut open = explicit((0x0008, 0x1140), b"SQ", &[]);
        open.truncate(open.len() - 4);
        open.extend_from_slice(&UNDEFINED.to_le_bytes());
        assert!(check(&open).is_err());
        // nesting beyond the limit
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH + 1 {
            deep.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
            deep.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        assert!(check(&deep).unwrap_err().contains("nested"));
    }
}

//! DICOM through dicom-rs: file layouts, transfer syntaxes, stored values → modality LUT → VOI.

use super::limits::{check_dimensions, guarded};
use super::{DecodeError, GrayImage};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, OpenFileOptions, Tag, file::ReadPreamble};
use dicom_pixeldata::{PixelDecoder, VoiLutFunction};

mod structure;

/// How the DICOM bytes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// 128-byte preamble, then `DICM` and the file meta group (the standard file format).
    Preamble,
    /// `DICM` and the file meta group, no preamble.
    NoPreamble,
    /// No file meta group at all: a bare data set starting at group 0008 (old ACR-NEMA
    /// style exports), in implicit VR little endian.
    BareImplicit,
    /// A bare data set in explicit VR little endian.
    BareExplicit,
}

const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A bare data set: the first element is in group 0008 (little endian), with a small element
/// number, and either a plausible explicit VR or a plausible implicit length.
pub(super) fn sniff_bare_dataset(bytes: &[u8]) -> Option<Layout> {
    if bytes.len() < 8 || bytes[0..2] != [0x08, 0x00] || bytes[3] != 0x00 {
        return None;
    }
    let vr = &bytes[4..6];
    if vr.iter().all(|b| b.is_ascii_uppercase()) {
        return Some(Layout::BareExplicit);
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    (len as usize <= bytes.len() - 8 || len == u32::MAX).then_some(Layout::BareImplicit)
}

pub(super) fn transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.98" => "Encapsulated Uncompressed Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless (Process 14)",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless SV1",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Lossless Only",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.4.92" => "JPEG 2000 Multi-component Lossless Only",
        "1.2.840.10008.1.2.4.93" => "JPEG 2000 Multi-component",
        "1.2.840.10008.1.2.4.94" | "1.2.840.10008.1.2.4.95" => "JPIP referenced",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" => "MPEG-2 video",
        "1.2.840.10008.1.2.4.102"
        | "1.2.840.10008.1.2.4.103"
        | "1.2.840.10008.1.2.4.104"
        | "1.2.840.10008.1.2.4.105"
        | "1.2.840.10008.1.2.4.106" => "MPEG-4 AVC/H.264 video",
        "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "HEVC/H.265 video",
        "1.2.840.10008.1.2.4.110" => "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111" => "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112" => "JPEG XL",
        "1.2.840.10008.1.2.4.201" => "High-Throughput JPEG 2000 Lossless Only",
        "1.2.840.10008.1.2.4.202" => "High-Throughput JPEG 2000 with RPCL Lossless Only",
        "1.2.840.10008.1.2.4.203" => "High-Throughput JPEG 2000",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => "unknown transfer syntax",
    }
}

fn open(bytes: &[u8], layout: Layout) -> Result<DefaultDicomObject, DecodeError> {
    // dicom-rs believes lengths and VRs: check the structure first (see `structure`).
    let (meta_at, bare) = match layout {
        Layout::Preamble => (Some(132), structure::Encoding::ExplicitLittle),
        Layout::NoPreamble => (Some(4), structure::Encoding::ExplicitLittle),
        Layout::BareImplicit => (None, structure::Encoding::ImplicitLittle),
        Layout::BareExplicit => (None, structure::Encoding::ExplicitLittle),
    };
    structure::check_file(bytes, meta_at, bare)
        .map_err(|e| DecodeError::Dicom(format!("the file is damaged or not DICOM: {e}")))?;
    let parse = |src: &[u8], preamble: ReadPreamble| {
        guarded("DICOM", || {
            OpenFileOptions::new().read_preamble(preamble).from_reader(src).map_err(|e| {
                DecodeError::Dicom(format!(
                    "cannot parse the file (truncated, damaged or not DICOM): {}",
                    error_chain(&e)
                ))
            })
        })
    };
    match layout {
        Layout::Preamble => parse(bytes, ReadPreamble::Always),
        Layout::NoPreamble => parse(bytes, ReadPreamble::Never),
        Layout::BareImplicit | Layout::BareExplicit => {
            // Give the data set the file meta group it lacks, then read it the normal way.
            let ts = if layout == Layout::BareImplicit { IMPLICIT_VR_LE } else { EXPLICIT_VR_LE };
            let meta = FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                .media_storage_sop_instance_uid("2.25.0")
                .implementation_class_uid("2.25.1")
                .build()
                .map_err(|e| DecodeError::Dicom(format!("internal error: {e}")))?;
            let mut buf = b"DICM".to_vec();
            meta.write(&mut buf).map_err(|e| DecodeError::Dicom(format!("internal error: {e}")))?;
            buf.extend_from_slice(bytes);
            parse(&buf, ReadPreamble::Never).map_err(|e| match e {
                DecodeError::Dicom(m) => DecodeError::Dicom(format!(
                    "no DICOM header (preamble/DICM) and not readable as a bare data set: {m}"
                )),
                other => other,
            })
        }
    }
}

/// An error and its sources, `a: b: c` (dicom-rs keeps the useful detail in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

fn int_attr(obj: &DefaultDicomObject, tag: Tag) -> Result<Option<i64>, DecodeError> {
    match obj.element_opt(tag) {
        Ok(Some(e)) => e
            .to_int::<i64>()
            .map(Some)
            .map_err(|err| DecodeError::Dicom(format!("attribute {tag} has an unreadable value: {err}"))),
        Ok(None) => Ok(None),
        Err(err) => Err(DecodeError::Dicom(format!("cannot read attribute {tag}: {err}"))),
    }
}

fn str_attr(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?;
    Some(s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_uppercase())
}

/// What the samples of a pixel mean (from Photometric Interpretation and Samples per Pixel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColourModel {
    Monochrome1,
    Monochrome2,
    /// One index per pixel into the Red/Green/Blue Palette Color LUTs.
    Palette,
    Rgb,
    /// Y, Cb, Cr per pixel (PS3.3 C.7.6.3.1.2).
    YbrFull,
    /// YBR_FULL with the two pixels of a horizontal pair sharing Cb and Cr; uncompressed, each
    /// pair is stored `Y1 Y2 Cb Cr`.
    YbrFull422,
}

impl ColourModel {
    fn from_header(photometric: &str, samples: i64) -> Result<ColourModel, DecodeError> {
        let model = match (photometric, samples) {
            ("MONOCHROME1", 1) => ColourModel::Monochrome1,
            ("MONOCHROME2", 1) => ColourModel::Monochrome2,
            ("PALETTE COLOR", 1) => ColourModel::Palette,
            // RCT/ICT only occur in JPEG 2000, whose decoder returns RGB
            ("RGB" | "YBR_RCT" | "YBR_ICT", 3) => ColourModel::Rgb,
            ("YBR_FULL", 3) => ColourModel::YbrFull,
            ("YBR_FULL_422", 3) => ColourModel::YbrFull422,
            _ => {
                return Err(DecodeError::Dicom(format!(
                    "photometric interpretation {photometric} with {samples} samples per pixel is not \
                     supported (MONOCHROME1, MONOCHROME2, PALETTE COLOR, RGB, YBR_FULL, YBR_FULL_422, \
                     YBR_RCT and YBR_ICT are)"
                )));
            }
        };
        Ok(model)
    }

    fn samples(self) -> usize {
        match self {
            ColourModel::Monochrome1 | ColourModel::Monochrome2 | ColourModel::Palette => 1,
            _ => 3,
        }
    }
}

/// Transfer syntaxes whose decoder (jpeg-decoder) turns YCbCr into RGB itself.
fn decoder_outputs_rgb(ts_uid: &str) -> bool {
    matches!(
        ts_uid,
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" | "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70"
    )
}

const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// The RLE header of the (single) frame, checked before dicom-rs reads it: it allocates a table
/// of as many offsets as the header's first 32-bit word says (found by fuzzing: up to 2^32 × 4
/// bytes) and trusts the offsets. PS3.5 G.3: one segment per byte of each sample, at most 15,
/// offsets increasing from 64 and inside the fragment. And each segment may decode to no more
/// than the image's `pixels` (plus one run): dicom-rs expands a whole segment before it takes
/// what the image needs, and PackBits expands 2 bytes into 128.
fn check_rle_header(fragments: Option<&[Vec<u8>]>, segments_expected: usize, pixels: usize) -> Result<(), DecodeError> {
    let bad = |detail: String| DecodeError::Corrupt { format: "DICOM RLE", detail };
    let fragment = fragments.and_then(|f| f.first()).ok_or_else(|| bad("no pixel data fragment".into()))?;
    if fragment.len() < 64 {
        return Err(bad(format!("the fragment is {} bytes, shorter than the 64-byte RLE header", fragment.len())));
    }
    let word =
        |i: usize| u32::from_le_bytes([fragment[4 * i], fragment[4 * i + 1], fragment[4 * i + 2], fragment[4 * i + 3]]);
    let segments = word(0) as usize;
    if segments != segments_expected || segments > 15 {
        return Err(bad(format!(
            "the RLE header declares {segments} segments; this image needs {segments_expected} (at most 15)"
        )));
    }
    let mut previous = 0u32;
    for i in 1..=segments {
        let offset = word(i);
        if (i == 1 && offset != 64) || offset < previous || offset as usize >= fragment.len() {
            return Err(bad(format!("RLE segment {i} starts at byte {offset}, outside the fragment or out of order")));
        }
        previous = offset;
    }
    for i in 1..=segments {
        let end = if i == segments { fragment.len() } else { word(i + 1) as usize };
        let decoded = packbits_decoded_len(&fragment[word(i) as usize..end]);
        if decoded > pixels + 128 {
            return Err(bad(format!("RLE segment {i} decodes to {decoded} bytes where the image has {pixels} pixels")));
        }
    }
    Ok(())
}

/// How many bytes a PackBits segment decodes to (PS3.5 G.3.1), counted without decoding.
fn packbits_decoded_len(segment: &[u8]) -> usize {
    let (mut at, mut out) = (0usize, 0usize);
    while at < segment.len() {
        let header = segment[at] as i8;
        at += 1;
        match header {
            0..=127 => {
                let n = header as usize + 1;
                out += n;
                at += n;
            }
            -127..=-1 => {
                out += (1 - header as isize) as usize;
                at += 1;
            }
            -128 => {}
        }
    }
    out
}

/// The samples of uncompressed pixel data as little-endian bytes, `bytes_per` bytes each,
/// whatever the transfer syntax's byte order and however dicom-rs holds the value.
///
/// dicom-rs parses an OW element into native 16-bit words (swapping each word when the file is
/// big endian), an OB element into the bytes as stored and an OL element into native 32-bit
/// words. The sample width is Bits Allocated, not the VR's word size, so:
/// * 8-bit samples in OW: the first sample is the low byte of each word (PS3.5 8.1.1), i.e. the
///   little-endian bytes of the words;
/// * 32-bit samples in big-endian OW: each sample is stored as a big-endian 32-bit integer (as
///   pydicom reads it), so its high word comes first;
/// * samples wider than a byte in big-endian OB: stored big endian, swapped here.
fn native_samples_le(
    value: &dicom_core::PrimitiveValue,
    bytes_per: usize,
    big_endian: bool,
) -> Result<Vec<u8>, DecodeError> {
    use dicom_core::PrimitiveValue as P;
    use dicom_core::value::DicomValueType as _;
    let mut out: Vec<u8> = match value {
        P::U8(bytes) => {
            let mut v = bytes.to_vec();
            if big_endian && bytes_per > 1 {
                for sample in v.chunks_exact_mut(bytes_per) {
                    sample.reverse();
                }
            }
            return Ok(v);
        }
        P::U16(words) => words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        P::I16(words) => words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        P::U32(words) => words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        P::I32(words) => words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        other => {
            return Err(DecodeError::Dicom(format!(
                "the Pixel Data element holds {:?} values, not integer samples",
                other.value_type()
            )));
        }
    };
    if big_endian && bytes_per == 4 && matches!(value, P::U16(_) | P::I16(_)) {
        // words are (high, low) per sample: make them (low, high)
        for sample in out.chunks_exact_mut(4) {
            sample.rotate_left(2);
        }
    }
    Ok(out)
}

/// The Red, Green and Blue Palette Color LUTs, checked before any pixel is decoded.
struct Palette {
    /// First stored value mapped (values below map to entry 0).
    first_mapped: i64,
    /// Entry bit depth from the descriptor (8 or 16): the scale of the entries.
    bits: u32,
    tables: [Vec<u16>; 3],
}

fn read_palette(obj: &DefaultDicomObject) -> Result<Palette, DecodeError> {
    use dicom_core::PrimitiveValue as P;
    let descriptor_tags = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
    ];
    let data_tags = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let missing = || {
        let segmented = obj.element_opt(tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA).ok().flatten().is_some();
        DecodeError::Dicom(if segmented {
            "PALETTE COLOR with segmented lookup tables is not supported".to_string()
        } else {
            "PALETTE COLOR without its Red/Green/Blue Palette Color Lookup Table Descriptor and Data".to_string()
        })
    };
    let mut tables: [Vec<u16>; 3] = Default::default();
    let mut layout = None;
    for (i, (dt, lt)) in descriptor_tags.iter().zip(&data_tags).enumerate() {
        let desc = obj.element_opt(*dt).ok().flatten().ok_or_else(missing)?;
        let desc: Vec<i64> = desc
            .to_multi_int::<i64>()
            .map_err(|e| DecodeError::Dicom(format!("unreadable palette descriptor: {e}")))?;
        let [entries, first, bits] = desc[..] else {
            return Err(DecodeError::Dicom(format!("palette descriptor has {} values, not 3", desc.len())));
        };
        // 0 entries means 65536 (PS3.3 C.7.6.3.1.5); the first value is US or SS
        let entries = if entries == 0 { 65536 } else { entries & 0xFFFF };
        if !matches!(bits, 8 | 16) {
            return Err(DecodeError::Dicom(format!("palette entries of {bits} bits (8 or 16 are valid)")));
        }
        if *layout.get_or_insert((entries, first, bits)) != (entries, first, bits) {
            return Err(DecodeError::Dicom("the three palette descriptors differ".into()));
        }
        let data = obj.element_opt(*lt).ok().flatten().ok_or_else(missing)?;
        let table: Vec<u16> = match data.value().primitive() {
            // 8-bit entries packed two to a word arrive as bytes or as words; one byte per entry
            // when the data is exactly `entries` bytes long (as pydicom decides)
            Some(P::U8(b)) if b.len() as i64 == entries => b.iter().map(|&v| v as u16).collect(),
            Some(P::U8(b)) => b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect(),
            Some(P::U16(w)) if (w.len() as i64) * 2 == entries => {
                w.iter().flat_map(|v| v.to_le_bytes()).map(|v| v as u16).collect()
            }
            Some(P::U16(w)) => w.to_vec(),
            Some(P::I16(w)) => w.iter().map(|&v| v as u16).collect(),
            _ => return Err(DecodeError::Dicom("palette LUT data is not 8- or 16-bit words".into())),
        };
        if table.len() as i64 != entries {
            return Err(DecodeError::Dicom(format!(
                "palette LUT has {} entries, its descriptor says {entries}",
                table.len()
            )));
        }
        tables[i] = table;
    }
    let (_, first_mapped, bits) = layout.ok_or_else(missing)?;
    Ok(Palette { first_mapped, bits: bits as u32, tables })
}

/// YBR_FULL → RGB as pydicom does it (float32, PS3.3 C.7.6.3.1.2, rounded and clipped), 8-bit.
fn ybr_full_to_rgb(y: f32, cb: f32, cr: f32) -> [u8; 3] {
    let (cb, cr) = (cb - 128.0, cr - 128.0);
    let r = y + 1.402 * cr;
    let g = y + (-0.114f32 * 1.772 / 0.587) * cb + (-0.299f32 * 1.402 / 0.587) * cr;
    let b = y + 1.772 * cb;
    [r, g, b].map(|v| (v + 0.5).floor().clamp(0.0, 255.0) as u8)
}

pub(super) fn decode(bytes: &[u8], layout: Layout) -> Result<GrayImage, DecodeError> {
    let obj = open(bytes, layout)?;
    let ts_uid = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
    let ts_desc = format!("{} ({ts_uid})", transfer_syntax_name(&ts_uid));

    // Everything we can refuse, refuse before touching the pixel data.
    let Some(pixel_element) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() else {
        let what = if obj.element_opt(tags::FLOAT_PIXEL_DATA).ok().flatten().is_some()
            || obj.element_opt(tags::DOUBLE_FLOAT_PIXEL_DATA).ok().flatten().is_some()
        {
            "it holds floating-point pixel data, which is not supported"
        } else {
            "it holds no image (no Pixel Data element); is it a report, DICOMDIR or \
             presentation state rather than a radiograph?"
        };
        return Err(DecodeError::Dicom(what.to_string()));
    };
    let samples = int_attr(&obj, tags::SAMPLES_PER_PIXEL)?.unwrap_or(1);
    let photometric = str_attr(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".to_string());
    let stored_model = ColourModel::from_header(&photometric, samples)?;
    let frames = int_attr(&obj, tags::NUMBER_OF_FRAMES)?.unwrap_or(1);
    if frames > 1 {
        return Err(DecodeError::Dicom(format!(
            "multi-frame images are not supported ({frames} frames); export the frame to \
             analyse as a single-frame file"
        )));
    }
    let rows = int_attr(&obj, tags::ROWS)?.ok_or_else(|| DecodeError::Dicom("the Rows attribute is missing".into()))?;
    let cols =
        int_attr(&obj, tags::COLUMNS)?.ok_or_else(|| DecodeError::Dicom("the Columns attribute is missing".into()))?;
    if rows < 0 || cols < 0 {
        return Err(DecodeError::Dicom(format!("invalid size {cols}×{rows}")));
    }
    check_dimensions(cols as u64, rows as u64)?;
    let bits_allocated = int_attr(&obj, tags::BITS_ALLOCATED)?.unwrap_or(0);
    if !matches!(bits_allocated, 8 | 16 | 32) {
        return Err(DecodeError::Dicom(format!("Bits Allocated {bits_allocated} is not supported (8, 16 or 32 are)")));
    }
    // Bits Stored says which bits of each sample hold the value: none, or more than a sample has,
    // describes no image (and would make the masks below meaningless).
    if let Some(stored) = int_attr(&obj, tags::BITS_STORED)?
        && !(1..=bits_allocated).contains(&stored)
    {
        return Err(DecodeError::Dicom(format!(
            "Bits Stored {stored} is not between 1 and Bits Allocated {bits_allocated}: the header is damaged"
        )));
    }
    let monochrome = matches!(stored_model, ColourModel::Monochrome1 | ColourModel::Monochrome2);
    if monochrome && obj.element_opt(tags::MODALITY_LUT_SEQUENCE).ok().flatten().is_some() {
        return Err(DecodeError::Dicom("a Modality LUT Sequence (non-linear modality LUT) is not supported".into()));
    }
    if matches!(stored_model, ColourModel::YbrFull | ColourModel::YbrFull422) && bits_allocated != 8 {
        return Err(DecodeError::Dicom(format!(
            "{photometric} with {bits_allocated} bits allocated is not supported (8 bits are)"
        )));
    }
    if !monochrome && bits_allocated == 32 {
        return Err(DecodeError::Dicom(format!("{photometric} with 32 bits allocated is not supported")));
    }
    let palette = if stored_model == ColourModel::Palette { Some(read_palette(&obj)?) } else { None };
    let native = pixel_element.value().primitive();
    if native.is_some() && stored_model == ColourModel::YbrFull422 && cols % 2 == 1 {
        return Err(DecodeError::Dicom("YBR_FULL_422 with an odd number of columns".into()));
    }

    if ts_uid == RLE_LOSSLESS {
        check_rle_header(
            pixel_element.value().fragments(),
            stored_model.samples() * bits_allocated as usize / 8,
            rows as usize * cols as usize,
        )?;
    }

    let px = guarded("DICOM", || {
        obj.decode_pixel_data().map_err(|e| {
            DecodeError::Dicom(format!(
                "cannot decode the pixel data, transfer syntax {ts_desc}: {}; if the \
                 syntax is unsupported, convert the file to an uncompressed one (e.g. \
                 `gdcmconv --raw in.dcm out.dcm` or `dcmconv +te in.dcm out.dcm`)",
                error_chain(&e)
            ))
        })
    })?;

    let (width, height) = (cols as u32, rows as u32);
    if px.rows() != height || px.columns() != width || px.samples_per_pixel() as usize != stored_model.samples() {
        return Err(DecodeError::Dicom(format!(
            "decoded pixel data is {}×{}×{} but the header says {width}×{height}×{}",
            px.columns(),
            px.rows(),
            px.samples_per_pixel(),
            stored_model.samples()
        )));
    }
    let n = width as usize * height as usize;
    let bytes_per = bits_allocated as usize / 8;
    // Uncompressed samples are read from the element itself (the decoder's copy is in the file's
    // byte order, which is wrong for big-endian files); decoders' output is little endian.
    let converted;
    let data: &[u8] = match native {
        Some(value) => {
            converted = native_samples_le(value, bytes_per, ts_uid == EXPLICIT_VR_BE)?;
            &converted
        }
        None => px.data(),
    };
    // What the samples now hold: decoders of the JPEG family return RGB for any colour input.
    let model = match stored_model {
        ColourModel::YbrFull | ColourModel::YbrFull422 if native.is_none() && decoder_outputs_rgb(&ts_uid) => {
            ColourModel::Rgb
        }
        ColourModel::YbrFull422 if native.is_none() => ColourModel::YbrFull,
        m => m,
    };
    let needed = match model {
        ColourModel::YbrFull422 => n * 2,
        m => n * m.samples() * bytes_per,
    };
    if data.len() < needed {
        return Err(DecodeError::Corrupt {
            format: "DICOM",
            detail: format!(
                "pixel data holds {} bytes, {needed} are needed for {width}×{height} pixels of {} \
                 sample(s) of {} bits",
                data.len(),
                model.samples(),
                bytes_per * 8
            ),
        });
    }

    // Stored values: keep Bits Stored bits, sign-extend if signed.
    let bits_stored = (px.bits_stored() as u32).clamp(1, bytes_per as u32 * 8);
    let signed = px.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let shift = 64 - bits_stored;
    let stored =
        |raw: u64| -> i64 { if signed { ((raw << shift) as i64) >> shift } else { ((raw << shift) >> shift) as i64 } };
    let sample = |i: usize| -> u64 {
        let c = &data[i * bytes_per..(i + 1) * bytes_per];
        match bytes_per {
            1 => c[0] as u64,
            2 => u16::from_le_bytes([c[0], c[1]]) as u64,
            _ => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64,
        }
    };

    if !monochrome {
        // Planar Configuration 1 (RRR…GGG…BBB) only describes uncompressed data: decoders interleave.
        let planar = native.is_some() && int_attr(&obj, tags::PLANAR_CONFIGURATION)?.unwrap_or(0) == 1;
        let pixels =
            colour_to_luminance(model, data, n, width as usize, bits_stored, bytes_per, palette, planar, &|i| {
                stored(sample(i))
            })?;
        return Ok(GrayImage { width, height, pixels });
    }

    let rescale = px
        .rescale()
        .ok()
        .and_then(|r| r.first().copied())
        .unwrap_or(dicom_pixeldata::Rescale { slope: 1.0, intercept: 0.0 });
    let values: Vec<f64> = (0..n).map(|i| stored(sample(i)) as f64 * rescale.slope + rescale.intercept).collect();

    // VOI: table first, then window, else min-max.
    let lut = px.voi_lut_sequence().ok().flatten().and_then(|l| l.first().cloned());
    let window = px
        .window()
        .ok()
        .flatten()
        .and_then(|w| w.first().copied())
        .filter(|w| w.center.is_finite() && w.width.is_finite());
    let function =
        px.voi_lut_function().ok().flatten().and_then(|f| f.first().copied()).unwrap_or(VoiLutFunction::Linear);
    let window = window.filter(|w| match function {
        VoiLutFunction::Linear => w.width >= 1.0,
        _ => w.width > 0.0,
    });

    let mut out: Vec<f32> = if let Some(lut) = lut.filter(|l| !l.data.is_empty()) {
        let top = ((1u64 << lut.bits_stored.clamp(1, 16)) - 1) as f64;
        let last = lut.data.len() as i64 - 1;
        values
            .iter()
            .map(|&v| {
                let idx = (v.floor() as i64 - lut.min_pixel_value as i64).clamp(0, last);
                (lut.data[idx as usize] as f64 / top).clamp(0.0, 1.0) as f32
            })
            .collect()
    } else if let Some(w) = window {
        let (c, width) = match function {
            VoiLutFunction::Linear => (w.center - 0.5, w.width - 1.0),
            _ => (w.center, w.width),
        };
        values
            .iter()
            .map(|&x| {
                let y = match function {
                    VoiLutFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - w.center) / w.width).exp()),
                    _ => {
                        if x <= c - width / 2.0 {
                            0.0
                        } else if x > c + width / 2.0 {
                            1.0
                        } else {
                            (x - c) / width + 0.5
                        }
                    }
                };
                y.clamp(0.0, 1.0) as f32
            })
            .collect()
    } else {
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let range = hi - lo;
        values.iter().map(|&v| if range > 0.0 { ((v - lo) / range) as f32 } else { 0.0 }).collect()
    };
    if photometric == "MONOCHROME1" {
        for v in &mut out {
            *v = 1.0 - *v;
        }
    }
    Ok(GrayImage { width, height, pixels: out })
}

/// Colour pixels → luminance in `[0, 1]`, with the ITU-R 601 weights of [`super::pil_luminance`]:
/// the integer form for 8-bit RGB (exactly what PIL's `convert("L")` gives a colour PNG), the float
/// form `(0.299 R + 0.587 G + 0.114 B) / (2^bits − 1)` for wider samples. Modality and VOI LUTs
/// do not apply to colour images (PS3.3 C.11).
#[allow(clippy::too_many_arguments)]
fn colour_to_luminance(
    model: ColourModel,
    data: &[u8],
    n: usize,
    width: usize,
    bits_stored: u32,
    bytes_per: usize,
    palette: Option<Palette>,
    planar: bool,
    stored: &dyn Fn(usize) -> i64,
) -> Result<Vec<f32>, DecodeError> {
    let luma = |rgb: [u32; 3], bits: u32| -> f32 {
        if bits == 8 {
            super::pil_luminance(rgb[0] as u8, rgb[1] as u8, rgb[2] as u8) as f32 / 255.0
        } else {
            let l = (rgb[0] as f64 * 19595.0 + rgb[1] as f64 * 38470.0 + rgb[2] as f64 * 7471.0) / 65536.0;
            (l / ((1u64 << bits) - 1) as f64) as f32
        }
    };
    let pixels = match model {
        ColourModel::Palette => {
            let p = palette.ok_or_else(|| DecodeError::Dicom("PALETTE COLOR without lookup tables".into()))?;
            let last = p.tables[0].len() as i64 - 1;
            let mask = if p.bits == 8 { 0xFF } else { 0xFFFF };
            (0..n)
                .map(|i| {
                    let idx = (stored(i) - p.first_mapped).clamp(0, last) as usize;
                    luma(p.tables.each_ref().map(|t| (t[idx] & mask) as u32), p.bits)
                })
                .collect()
        }
        ColourModel::Rgb | ColourModel::YbrFull => {
            let at = |i: usize, c: usize| if planar { stored(c * n + i) } else { stored(i * 3 + c) } as u32;
            (0..n)
                .map(|i| {
                    let s = [at(i, 0), at(i, 1), at(i, 2)];
                    if model == ColourModel::YbrFull {
                        let rgb = ybr_full_to_rgb(s[0] as f32, s[1] as f32, s[2] as f32);
                        luma(rgb.map(u32::from), 8)
                    } else {
                        let bits = if bytes_per == 1 { 8 } else { bits_stored };
                        luma(s, bits)
                    }
                })
                .collect()
        }
        ColourModel::YbrFull422 => (0..n)
            .map(|i| {
                let (row, col) = (i / width, i % width);
                let pair = &data[(row * width + (col & !1)) * 2..][..4];
                let y = pair[col & 1] as f32;
                luma(ybr_full_to_rgb(y, pair[2] as f32, pair[3] as f32).map(u32::from), 8)
            })
            .collect(),
        ColourModel::Monochrome1 | ColourModel::Monochrome2 => {
            return Err(DecodeError::Dicom("internal error: grayscale sent to the colour path".into()));
        }
    };
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_bytes;
    use crate::test_support::*;

    #[test]
    fn dicom_min_max_and_monochrome1() {
        let px = words(&[100, 200, 300, 500]);
        let im = decode_bytes(&dicom_file(2, 2, "MONOCHROME2", 1, 16, &px), "d").unwrap();
        assert_eq!((im.width, im.height), (2, 2));
        assert_eq!(im.pixels, vec![0.0, 0.25, 0.5, 1.0]);
        let im = decode_bytes(&dicom_file(2, 2, "MONOCHROME1", 1, 16, &px), "d").unwrap();
        assert_eq!(im.pixels, vec![1.0, 0.75, 0.5, 0.0]);
        // without the preamble
        let full = dicom_file(2, 2, "MONOCHROME2", 1, 16, &px);
        let im = decode_bytes(&full[128..], "d").unwrap();
        assert_eq!(im.pixels, vec![0.0, 0.25, 0.5, 1.0]);
        // a bare data set (explicit VR, no meta group)
        let bare = dicom_dataset(2, 2, "MONOCHROME2", 1, 16, &[], &px);
        let im = decode_bytes(&bare, "d").unwrap();
        assert_eq!(im.pixels, vec![0.0, 0.25, 0.5, 1.0]);
        // a bare data set in implicit VR little endian
        let mut implicit = Vec::new();
        for (g, e, v) in [
            (0x0008u16, 0x0060u16, b"CR".to_vec()),
            (0x0028, 0x0002, us(1)),
            (0x0028, 0x0004, b"MONOCHROME2 ".to_vec()),
            (0x0028, 0x0010, us(2)),
            (0x0028, 0x0011, us(2)),
            (0x0028, 0x0100, us(16)),
            (0x0028, 0x0101, us(16)),
            (0x0028, 0x0102, us(15)),
            (0x0028, 0x0103, us(0)),
            (0x7FE0, 0x0010, px.clone()),
        ] {
            implicit.extend_from_slice(&g.to_le_bytes());
            implicit.extend_from_slice(&e.to_le_bytes());
            implicit.extend_from_slice(&(v.len() as u32).to_le_bytes());
            implicit.extend_from_slice(&v);
        }
        let im = decode_bytes(&implicit, "d").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(im.pixels, vec![0.0, 0.25, 0.5, 1.0]);
        // something that merely starts like a bare data set
        let fake = [0x08, 0x00, 0x05, 0x00, 0x04, 0, 0, 0, 1, 2, 3, 4];
        let e = decode_bytes(&fake, "notes.txt").unwrap_err();
        assert!(matches!(e, DecodeError::UnsupportedFormat { .. }), "{e}");
        let e = decode_bytes(&fake, "scan.DCM").unwrap_err();
        assert!(matches!(e, DecodeError::Dicom(_)), "{e}");
        // 8-bit
        let im = decode_bytes(&dicom_file(1, 2, "MONOCHROME2", 1, 8, &[10, 20]), "d").unwrap();
        assert_eq!(im.pixels, vec![0.0, 1.0]);
    }

    #[test]
    fn dicom_rescale_then_window() {
        // values 0, 1000, 2000, 3000 -> rescale *2 - 1000 -> -1000, 1000, 3000, 5000
        // window centre 1000.5, width 2001 (LINEAR: c - 0.5 = 1000, w - 1 = 2000):
        // y = (x - 1000) / 2000 + 0.5, clipped: 0, 0.5, 1, 1
        let extra = vec![
            (0x0028, 0x1050, *b"DS", b"1000.5\\40".to_vec()),
            (0x0028, 0x1051, *b"DS", b"2001\\80".to_vec()),
            (0x0028, 0x1052, *b"DS", b"-1000".to_vec()),
            (0x0028, 0x1053, *b"DS", b"2".to_vec()),
        ];
        let px = words(&[0, 1000, 2000, 3000]);
        let ds = dicom_dataset(1, 4, "MONOCHROME2", 1, 16, &extra, &px);
        let im = decode_bytes(&dicom_with_meta(&ds), "d").unwrap();
        assert_eq!(im.pixels, vec![0.0, 0.5, 1.0, 1.0]);
        let ds = dicom_dataset(1, 4, "MONOCHROME1", 1, 16, &extra, &px);
        let im = decode_bytes(&dicom_with_meta(&ds), "d").unwrap();
        assert_eq!(im.pixels, vec![1.0, 0.5, 0.0, 0.0]);
    }

    #[test]
    fn dicom_unused_high_bits_are_masked() {
        // Bits Stored 12 in 16 allocated: bit 15 set (e.g. an old overlay bit) must be ignored.
        let mut ds = Vec::new();
        let px = words(&[0x8000, 0x8FFF, 0x0800]);
        for (g, e, vr, v) in [
            (0x0028u16, 0x0002u16, *b"US", us(1)),
            (0x0028, 0x0004, *b"CS", b"MONOCHROME2".to_vec()),
            (0x0028, 0x0010, *b"US", us(1)),
            (0x0028, 0x0011, *b"US", us(3)),
            (0x0028, 0x0100, *b"US", us(16)),
            (0x0028, 0x0101, *b"US", us(12)),
            (0x0028, 0x0102, *b"US", us(11)),
            (0x0028, 0x0103, *b"US", us(0)),
            (0x7FE0, 0x0010, *b"OW", px),
        ] {
            element(&mut ds, g, e, &vr, &v);
        }
        let im = decode_bytes(&dicom_with_meta(&ds), "d").unwrap();
        assert_eq!(im.pixels, vec![0.0, 1.0, 2048.0 / 4095.0]);
    }

    #[test]
    fn dicom_colour_is_reduced_to_luminance_like_png() {
        use crate::pil_luminance;
        // RGB, interleaved and planar: PIL's integer luma / 255, as for a colour PNG
        let rgb = dicom_file(1, 2, "RGB", 3, 8, &[255, 0, 0, 123, 45, 67]);
        let want = vec![pil_luminance(255, 0, 0) as f32 / 255.0, pil_luminance(123, 45, 67) as f32 / 255.0];
        assert_eq!(decode_bytes(&rgb, "rgb").unwrap().pixels, want);
        let extra = vec![(0x0028, 0x0006, *b"US", us(1))];
        let planar = dicom_with_meta(&dicom_dataset(1, 2, "RGB", 3, 8, &extra, &[255, 123, 0, 45, 0, 67]));
        assert_eq!(decode_bytes(&planar, "planar").unwrap().pixels, want);
        // YBR_FULL (Y, Cb, Cr) = (76, 85, 255): red, R 254, G 0, B 0 after pydicom's rounding
        let ybr = dicom_file(1, 1, "YBR_FULL", 3, 8, &[76, 85, 255, 0]);
        let l = decode_bytes(&ybr, "ybr").unwrap().pixels[0];
        assert_eq!(l, pil_luminance(254, 0, 0) as f32 / 255.0);
        // YBR_FULL with 16-bit samples: refused by name
        let e = decode_bytes(&dicom_file(1, 1, "YBR_FULL", 3, 16, &[0; 6]), "ybr16").unwrap_err();
        assert!(e.to_string().contains("YBR_FULL with 16 bits"), "{e}");
    }

    #[test]
    fn dicom_refusals_are_clear() {
        let cmyk = dicom_file(1, 1, "CMYK", 4, 8, &[1, 2, 3, 4]);
        let e = decode_bytes(&cmyk, "c").unwrap_err();
        assert!(matches!(e, DecodeError::Dicom(ref m) if m.contains("CMYK") && m.contains("not supported")), "{e}");

        let extra = vec![(0x0028, 0x0008, *b"IS", b"3".to_vec())];
        let ds = dicom_dataset(1, 1, "MONOCHROME2", 1, 8, &extra, &[1, 2, 3, 0]);
        let e = decode_bytes(&dicom_with_meta(&ds), "m").unwrap_err();
        assert!(e.to_string().contains("multi-frame"), "{e}");

        // header claims 16384 x 16384 x 16 bits (512 MiB) with 8 bytes of pixel data: refused
        // without allocating the buffer
        let ds = dicom_file(16384, 16384, "MONOCHROME2", 1, 16, &[0; 8]);
        let e = decode_bytes(&ds, "short").unwrap_err();
        assert!(matches!(e, DecodeError::Corrupt { .. } | DecodeError::Dicom(_)), "{e}");

        // 65535 x 65535: over the limit, refused before decoding
        let ds = dicom_file(65535, 65535, "MONOCHROME2", 1, 16, &[0; 8]);
        assert!(matches!(decode_bytes(&ds, "bomb"), Err(DecodeError::TooLarge { .. })));

        // no pixel data
        let mut ds = Vec::new();
        element(&mut ds, 0x0008, 0x0060, b"CS", b"SR");
        let e = decode_bytes(&dicom_with_meta(&ds), "sr").unwrap_err();
        assert!(e.to_string().contains("no image"), "{e}");
    }

    #[test]
    fn truncated_dicom_is_an_error() {
        let px = words(&(0..64 * 64).map(|v| v as u16).collect::<Vec<_>>());
        let full = dicom_file(64, 64, "MONOCHROME2", 1, 16, &px);
        assert!(decode_bytes(&full, "ok").is_ok());
        for cut in [132, 140, 200, 300, full.len() / 2, full.len() - 1] {
            let r = decode_bytes(&full[..cut], "t");
            assert!(r.is_err(), "DICOM cut at {cut} decoded");
        }
        // garbage after a valid preamble
        let mut junk = vec![0u8; 128];
        junk.extend_from_slice(b"DICM");
        junk.extend((0..500).map(|i| (i * 31 % 256) as u8));
        assert!(decode_bytes(&junk, "junk").is_err());
    }

    #[test]
    fn dicom_jpeg_baseline_and_rle_are_decoded() {
        use image::ExtendedColorType as C;
        let (w, h) = (24u16, 16u16);
        let gray: Vec<u8> = (0..w as u32 * h as u32).map(|i| (i * 5 % 200 + 20) as u8).collect();

        // JPEG baseline: the same stream as a plain .jpg and inside a DICOM file
        let jpg = jpeg_bytes(w as u32, h as u32, C::L8, &gray);
        let plain = decode_bytes(&jpg, "jpg").unwrap();
        let dcm = dicom_encapsulated("1.2.840.10008.1.2.4.50", h, w, &jpg);
        let im = decode_bytes(&dcm, "dcm").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((im.width, im.height), (w as u32, h as u32));
        let want = min_max(&plain.pixels);
        for (a, b) in im.pixels.iter().zip(&want) {
            assert!((a - b).abs() < 1.5 / 255.0, "{a} vs {b}");
        }

        // RLE Lossless, one segment of literal runs (PackBits), 64-byte header
        let mut rle = Vec::new();
        rle.extend_from_slice(&1u32.to_le_bytes());
        rle.extend_from_slice(&64u32.to_le_bytes());
        rle.resize(64, 0);
        for run in gray.chunks(100) {
            rle.push((run.len() - 1) as u8);
            rle.extend_from_slice(run);
        }
        let dcm = dicom_encapsulated("1.2.840.10008.1.2.5", h, w, &rle);
        let im = decode_bytes(&dcm, "rle").unwrap_or_else(|e| panic!("{e}"));
        let exact: Vec<f32> = gray.iter().map(|&v| v as f32).collect();
        assert_eq!(im.pixels, min_max(&exact));
    }

    #[test]
    fn dicom_rle_header_is_checked_before_decoding() {
        // 2^32 - 1 segments: dicom-rs would allocate 16 GiB for the offset table
        let mut rle = vec![0u8; 64];
        rle[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        rle.extend_from_slice(&[3, 1, 2, 3, 4]);
        let e = decode_bytes(&dicom_encapsulated("1.2.840.10008.1.2.5", 1, 4, &rle), "rle").unwrap_err();
        assert!(e.to_string().contains("declares 4294967295 segments"), "{e}");
        // the right count, an offset past the fragment
        rle[..4].copy_from_slice(&1u32.to_le_bytes());
        rle[4..8].copy_from_slice(&5000u32.to_le_bytes());
        let e = decode_bytes(&dicom_encapsulated("1.2.840.10008.1.2.5", 1, 4, &rle), "rle").unwrap_err();
        assert!(e.to_string().contains("segment 1 starts at byte 5000"), "{e}");
        // a segment of replicate runs decoding to 64× its size, far past a 2×2 image's 4 bytes
        let mut bomb = vec![0u8; 64];
        bomb[..4].copy_from_slice(&1u32.to_le_bytes());
        bomb[4..8].copy_from_slice(&64u32.to_le_bytes());
        bomb.extend(std::iter::repeat_n([0x81u8, 7], 1000).flatten());
        let e = decode_bytes(&dicom_encapsulated("1.2.840.10008.1.2.5", 2, 2, &bomb), "rle").unwrap_err();
        assert!(e.to_string().contains("RLE segment 1 decodes to 128000 bytes where the image has 4 pixels"), "{e}");
    }

    #[test]
    fn bits_stored_outside_bits_allocated_is_refused() {
        for stored in [0u16, 17] {
            let mut dcm = dicom_file(1, 2, "MONOCHROME2", 1, 16, &words(&[1, 2]));
            let tag = [0x28, 0x00, 0x01, 0x01, b'U', b'S', 2, 0];
            let at = dcm.windows(8).position(|w| w == tag).unwrap() + 8;
            dcm[at..at + 2].copy_from_slice(&stored.to_le_bytes());
            let e = decode_bytes(&dcm, "bits.dcm").unwrap_err().to_string();
            assert!(e.contains(&format!("Bits Stored {stored} is not between 1 and Bits Allocated 16")), "{e}");
        }
    }

    #[test]
    fn dicom_unsupported_transfer_syntax_is_named() {
        let dcm = dicom_encapsulated("1.2.840.10008.1.2.4.80", 4, 4, &[0xFF, 0xD8, 0xFF, 0xF7, 0, 0]);
        let e = decode_bytes(&dcm, "jls").unwrap_err();
        let msg = e.to_string();
        println!("{msg}");
        assert!(msg.contains("JPEG-LS Lossless") && msg.contains("1.2.840.10008.1.2.4.80"), "{msg}");
    }

    #[test]
    fn transfer_syntax_names() {
        assert_eq!(transfer_syntax_name("1.2.840.10008.1.2.4.80"), "JPEG-LS Lossless");
        assert_eq!(transfer_syntax_name("9.9"), "unknown transfer syntax");
    }
}

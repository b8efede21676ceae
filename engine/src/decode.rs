//! Image decoding: PNG, JPEG and DICOM into one grayscale `f32` image in `[0, 1]`.
//!
//! The target is what the MedicalPatchNet seed feeds its network:
//! `to_tensor(PIL.Image.open(path).convert("L"))`, i.e. 8-bit luminance divided by 255.
//!
//! * **PNG / JPEG** (8-bit): gray is taken as is; colour is reduced to luminance with PIL's integer
//!   ITU-R 601-2 formula `L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16`; alpha is ignored (as
//!   `convert("L")` ignores it). Then `L / 255`.
//! * **16-bit PNG**: gray is scaled as `v / 65535`; colour uses the same weights in floating point,
//!   divided by 65535. *Deliberate divergence*: PIL opens 16-bit gray as mode `I;16` and
//!   `convert("L")` clips it to 0..255 (almost always a white image), and it reads 16-bit colour
//!   through its 8-bit high bytes. Using the full range is what a user of a 16-bit radiograph
//!   wants.
//! * **DICOM** (single-frame grayscale, `MONOCHROME1`/`MONOCHROME2`): stored values (bits outside
//!   Bits Stored masked off, sign-extended when signed) go through the Modality LUT (Rescale
//!   Slope/Intercept), then the first VOI transform present — a VOI LUT Sequence table if any
//!   (pydicom's default preference), else the first Window Center/Width with its VOI LUT
//!   Function (LINEAR as in PS3.3 C.11.2.1.2.1, LINEAR_EXACT, SIGMOID) — mapped straight to
//!   `[0, 1]`; without either, a min-max normalisation of the modality values. `MONOCHROME1` is
//!   inverted so that the output is always bright = dense, like a `MONOCHROME2` image.
//!
//! Every decoder sees the dimensions first: images over [`MAX_SIDE`] pixels on a side or
//! [`MAX_PIXELS`] pixels in all are refused before any pixel buffer is allocated. Decoder panics
//! (hostile input) are caught and reported as corrupt data.

use std::fmt;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Largest accepted width or height, in pixels.
pub const MAX_SIDE: u32 = 16384;
/// Largest accepted pixel count (width × height).
pub const MAX_PIXELS: u64 = 1 << 28;
/// Largest accepted input file, in bytes.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// A single-channel image, row-major, values in `[0, 1]`, bright = dense (as on a film).
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    /// `width * height` samples, row after row.
    pub pixels: Vec<f32>,
}

impl GrayImage {
    /// The sample at column `x`, row `y`.
    ///
    /// # Panics
    /// If `(x, y)` is outside the image.
    pub fn get(&self, x: u32, y: u32) -> f32 {
        assert!(x < self.width && y < self.height, "pixel ({x}, {y}) outside the image");
        self.pixels[y as usize * self.width as usize + x as usize]
    }
}

/// Why an image could not be decoded. `Display` gives a sentence a user can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input has no bytes at all.
    #[error("the file is empty (0 bytes)")]
    Empty,
    /// The magic bytes match none of the supported formats.
    #[error(
        "unrecognised file format (it starts with {magic}); supported formats are PNG, JPEG and \
         DICOM: convert the image to PNG"
    )]
    UnsupportedFormat {
        /// The first bytes, in hex and as text.
        magic: String,
    },
    /// A recognised format whose data is truncated or damaged.
    #[error("corrupt or truncated {format} data: {detail}")]
    Corrupt { format: &'static str, detail: String },
    /// A recognised format using a feature this decoder does not handle.
    #[error("unsupported {format} variant: {detail}")]
    Unsupported { format: &'static str, detail: String },
    /// Width or height is zero.
    #[error("the image has no pixels ({width}×{height})")]
    ZeroSize { width: u64, height: u64 },
    /// The header claims more pixels than we are willing to allocate.
    #[error(
        "the image claims to be {width}×{height} pixels, over the limit of {limit}; refusing to \
         decode it (downscale it first if it is genuine)"
    )]
    TooLarge { width: u64, height: u64, limit: String },
    /// The file itself is larger than [`MAX_FILE_BYTES`].
    #[error("the file is {bytes} bytes, over the limit of {limit} bytes")]
    FileTooLarge { bytes: u64, limit: u64 },
    /// A DICOM file that could not be parsed or holds something other than a single grayscale
    /// image.
    #[error("DICOM: {0}")]
    Dicom(String),
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// Any of the above, for a named file (what [`decode_path`] returns).
    #[error("{}: {problem}", path.display())]
    InFile { path: PathBuf, problem: Box<DecodeError> },
}

impl DecodeError {
    /// The problem itself, without the file name of [`DecodeError::InFile`].
    pub fn problem(&self) -> &DecodeError {
        match self {
            DecodeError::InFile { problem, .. } => problem.problem(),
            other => other,
        }
    }

    fn in_file(self, path: &Path) -> DecodeError {
        match self {
            e @ DecodeError::InFile { .. } => e,
            e => DecodeError::InFile { path: path.to_path_buf(), problem: Box::new(e) },
        }
    }
}

/// Read and decode the image at `path`. Errors name the file (`"{path}: {problem}"`).
pub fn decode_path(path: &Path) -> Result<GrayImage, DecodeError> {
    let read = || -> Result<Vec<u8>, DecodeError> {
        let len = std::fs::metadata(path)?.len();
        if len > MAX_FILE_BYTES {
            return Err(DecodeError::FileTooLarge { bytes: len, limit: MAX_FILE_BYTES });
        }
        Ok(std::fs::read(path)?)
    };
    let bytes = read().map_err(|e| e.in_file(path))?;
    decode_bytes(&bytes, &path.display().to_string()).map_err(|e| e.in_file(path))
}

/// Decode an in-memory PNG, JPEG or DICOM file; the format is sniffed from the magic bytes.
///
/// `name_for_errors` (a file name or any label) only steers the format guess: a file that
/// starts like a bare DICOM data set (no preamble, no `DICM`) but cannot be read as one is
/// reported as a DICOM problem when the name ends in `.dcm`, and as an unrecognised format
/// otherwise. The caller attaches the name to the returned error, as [`decode_path`] does.
pub fn decode_bytes(bytes: &[u8], name_for_errors: &str) -> Result<GrayImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    match sniff(bytes) {
        Format::Png => decode_raster(bytes, image::ImageFormat::Png, "PNG"),
        Format::Jpeg => decode_raster(bytes, image::ImageFormat::Jpeg, "JPEG"),
        Format::Dicom(layout @ (dicom::Layout::BareExplicit | dicom::Layout::BareImplicit)) => {
            dicom::decode(bytes, layout).map_err(|e| {
                let named_dcm = name_for_errors.to_ascii_lowercase().ends_with(".dcm");
                match e {
                    DecodeError::Dicom(_) if !named_dcm => {
                        DecodeError::UnsupportedFormat { magic: describe_magic(bytes) }
                    }
                    e => e,
                }
            })
        }
        Format::Dicom(layout) => dicom::decode(bytes, layout),
        Format::Unknown => Err(DecodeError::UnsupportedFormat { magic: describe_magic(bytes) }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Png,
    Jpeg,
    Dicom(dicom::Layout),
    Unknown,
}

fn sniff(bytes: &[u8]) -> Format {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) {
        Format::Png
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Format::Jpeg
    } else if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Format::Dicom(dicom::Layout::Preamble)
    } else if bytes.starts_with(b"DICM") {
        Format::Dicom(dicom::Layout::NoPreamble)
    } else if let Some(layout) = dicom::sniff_bare_dataset(bytes) {
        Format::Dicom(layout)
    } else {
        Format::Unknown
    }
}

fn describe_magic(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02X}")).collect();
    let text: String = head.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
    format!("bytes {} \"{text}\"", hex.join(" "))
}

/// Refuse zero or absurd dimensions (called before any pixel buffer exists).
fn check_dimensions(width: u64, height: u64) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::ZeroSize { width, height });
    }
    if width > MAX_SIDE as u64 || height > MAX_SIDE as u64 {
        return Err(DecodeError::TooLarge { width, height, limit: format!("{MAX_SIDE} pixels per side") });
    }
    if width * height > MAX_PIXELS {
        return Err(DecodeError::TooLarge { width, height, limit: format!("{MAX_PIXELS} pixels") });
    }
    Ok(())
}

/// Run a decoder, turning a panic into [`DecodeError::Corrupt`].
fn guarded<T>(format: &'static str, f: impl FnOnce() -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(DecodeError::Corrupt { format, detail: format!("the decoder failed on this input ({msg})") })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PNG and JPEG

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

fn decode_raster(bytes: &[u8], format: image::ImageFormat, name: &'static str) -> Result<GrayImage, DecodeError> {
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

// ---------------------------------------------------------------------------------------------
// DICOM

mod dicom {
    use super::{DecodeError, GrayImage, check_dimensions, guarded};
    use dicom_dictionary_std::tags;
    use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, OpenFileOptions, Tag, file::ReadPreamble};
    use dicom_pixeldata::{PixelDecoder, VoiLutFunction};

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

    pub(super) fn decode(bytes: &[u8], layout: Layout) -> Result<GrayImage, DecodeError> {
        let obj = open(bytes, layout)?;
        let ts_uid = obj.meta().transfer_syntax().to_string();
        let ts_desc = format!("{} ({ts_uid})", transfer_syntax_name(&ts_uid));

        // Everything we can refuse, refuse before touching the pixel data.
        if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
            let what = if obj.element_opt(tags::FLOAT_PIXEL_DATA).ok().flatten().is_some()
                || obj.element_opt(tags::DOUBLE_FLOAT_PIXEL_DATA).ok().flatten().is_some()
            {
                "it holds floating-point pixel data, which is not supported"
            } else {
                "it holds no image (no Pixel Data element); is it a report, DICOMDIR or \
                 presentation state rather than a radiograph?"
            };
            return Err(DecodeError::Dicom(what.to_string()));
        }
        let samples = int_attr(&obj, tags::SAMPLES_PER_PIXEL)?.unwrap_or(1);
        let photometric = str_attr(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "MONOCHROME2".to_string());
        if samples != 1 || !(photometric == "MONOCHROME1" || photometric == "MONOCHROME2") {
            return Err(DecodeError::Dicom(format!(
                "only grayscale images are supported, this one is {photometric} with \
                 {samples} samples per pixel"
            )));
        }
        let frames = int_attr(&obj, tags::NUMBER_OF_FRAMES)?.unwrap_or(1);
        if frames > 1 {
            return Err(DecodeError::Dicom(format!(
                "multi-frame images are not supported ({frames} frames); export the frame to \
                 analyse as a single-frame file"
            )));
        }
        let rows =
            int_attr(&obj, tags::ROWS)?.ok_or_else(|| DecodeError::Dicom("the Rows attribute is missing".into()))?;
        let cols = int_attr(&obj, tags::COLUMNS)?
            .ok_or_else(|| DecodeError::Dicom("the Columns attribute is missing".into()))?;
        if rows < 0 || cols < 0 {
            return Err(DecodeError::Dicom(format!("invalid size {cols}×{rows}")));
        }
        check_dimensions(cols as u64, rows as u64)?;
        let bits_allocated = int_attr(&obj, tags::BITS_ALLOCATED)?.unwrap_or(0);
        if !matches!(bits_allocated, 8 | 16 | 32) {
            return Err(DecodeError::Dicom(format!(
                "Bits Allocated {bits_allocated} is not supported (8, 16 or 32 are)"
            )));
        }
        if obj.element_opt(tags::MODALITY_LUT_SEQUENCE).ok().flatten().is_some() {
            return Err(DecodeError::Dicom(
                "a Modality LUT Sequence (non-linear modality LUT) is not supported".into(),
            ));
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
        if px.rows() != height || px.columns() != width || px.samples_per_pixel() != 1 {
            return Err(DecodeError::Dicom(format!(
                "decoded pixel data is {}×{}×{} but the header says {width}×{height}×1",
                px.columns(),
                px.rows(),
                px.samples_per_pixel()
            )));
        }
        let n = width as usize * height as usize;
        let bytes_per = px.bits_allocated() as usize / 8;
        if !matches!(bytes_per, 1 | 2 | 4) {
            return Err(DecodeError::Dicom(format!("decoded pixel data has {} bits allocated", px.bits_allocated())));
        }
        let data = px.data();
        if data.len() < n * bytes_per {
            return Err(DecodeError::Corrupt {
                format: "DICOM",
                detail: format!(
                    "pixel data holds {} bytes, {} are needed for {width}×{height} samples of \
                     {} bits",
                    data.len(),
                    n * bytes_per,
                    bytes_per * 8
                ),
            });
        }

        // Stored values: keep Bits Stored bits, sign-extend if signed.
        let bits_stored = (px.bits_stored() as u32).clamp(1, bytes_per as u32 * 8);
        let signed = px.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
        let shift = 64 - bits_stored;
        let stored = |raw: u64| -> f64 {
            if signed { (((raw << shift) as i64) >> shift) as f64 } else { ((raw << shift) >> shift) as f64 }
        };
        let rescale = px
            .rescale()
            .ok()
            .and_then(|r| r.first().copied())
            .unwrap_or(dicom_pixeldata::Rescale { slope: 1.0, intercept: 0.0 });
        let mut values: Vec<f64> = Vec::with_capacity(n);
        let samples_iter = data[..n * bytes_per].chunks_exact(bytes_per).map(|c| match c.len() {
            1 => c[0] as u64,
            2 => u16::from_ne_bytes([c[0], c[1]]) as u64,
            _ => u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) as u64,
        });
        values.extend(samples_iter.map(|raw| stored(raw) * rescale.slope + rescale.intercept));

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
            let (lo, hi) =
                values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
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
}

impl fmt::Display for GrayImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{} grayscale image", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn png_bytes(w: u32, h: u32, color: image::ExtendedColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out).write_image(data, w, h, color).unwrap();
        out
    }

    fn jpeg_bytes(w: u32, h: u32, color: image::ExtendedColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95).write_image(data, w, h, color).unwrap();
        out
    }

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

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }

    /// A well-formed PNG (valid CRCs) claiming the given size, with a token IDAT chunk: what a
    /// decompression bomb looks like up to its image data.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
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

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
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

    #[test]
    fn zero_size_empty_and_unknown_inputs_are_errors() {
        assert!(matches!(decode_bytes(&[], "e"), Err(DecodeError::Empty)));
        let zero = png_claiming(0, 10);
        let r = decode_bytes(&zero, "z");
        assert!(matches!(r, Err(DecodeError::ZeroSize { .. }) | Err(DecodeError::Corrupt { .. })), "{r:?}");
        let dcm = dicom_file(0, 4, "MONOCHROME2", 1, 16, &[]);
        assert!(matches!(decode_bytes(&dcm, "z"), Err(DecodeError::ZeroSize { .. })));
        match decode_bytes(b"GIF89a\x01\x00\x01\x00", "gif") {
            Err(e @ DecodeError::UnsupportedFormat { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("47 49 46 38") && msg.contains("GIF89a"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decode_path_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("scan.png");
        std::fs::write(&p, b"not an image at all").unwrap();
        let e = decode_path(&p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&p.display().to_string()), "{msg}");
        assert!(matches!(e.problem(), DecodeError::UnsupportedFormat { .. }));
        let missing = decode_path(&dir.path().join("nope.png")).unwrap_err();
        assert!(matches!(missing.problem(), DecodeError::Io(_)), "{missing}");
        assert!(missing.to_string().contains("nope.png"));
    }

    // --- DICOM, written by hand (explicit VR little endian) so the tests do not depend on the
    // --- writer of the library under test.

    fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
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

    fn us(v: u16) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// The data set after the file meta group.
    fn dicom_dataset(
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

    fn dicom_with_meta(dataset: &[u8]) -> Vec<u8> {
        dicom_with_meta_ts(dataset, "1.2.840.10008.1.2.1")
    }

    fn dicom_with_meta_ts(dataset: &[u8], ts: &str) -> Vec<u8> {
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

    fn dicom_file(rows: u16, cols: u16, photometric: &str, samples: u16, bits: u16, px: &[u8]) -> Vec<u8> {
        dicom_with_meta(&dicom_dataset(rows, cols, photometric, samples, bits, &[], px))
    }

    fn words(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

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
    fn dicom_refusals_are_clear() {
        let rgb = dicom_file(1, 1, "RGB", 3, 8, &[1, 2, 3]);
        let e = decode_bytes(&rgb, "c").unwrap_err();
        assert!(matches!(e, DecodeError::Dicom(ref m) if m.contains("grayscale")), "{e}");

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

    /// A single-frame 8-bit MONOCHROME2 file whose pixel data is encapsulated in `ts`.
    fn dicom_encapsulated(ts: &str, rows: u16, cols: u16, fragment: &[u8]) -> Vec<u8> {
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

    fn min_max(v: &[f32]) -> Vec<f32> {
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        v.iter().map(|x| (x - lo) / (hi - lo)).collect()
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
    fn dicom_unsupported_transfer_syntax_is_named() {
        let dcm = dicom_encapsulated("1.2.840.10008.1.2.4.80", 4, 4, &[0xFF, 0xD8, 0xFF, 0xF7, 0, 0]);
        let e = decode_bytes(&dcm, "jls").unwrap_err();
        let msg = e.to_string();
        println!("{msg}");
        assert!(msg.contains("JPEG-LS Lossless") && msg.contains("1.2.840.10008.1.2.4.80"), "{msg}");
    }

    #[test]
    fn transfer_syntax_names() {
        assert_eq!(dicom::transfer_syntax_name("1.2.840.10008.1.2.4.80"), "JPEG-LS Lossless");
        assert_eq!(dicom::transfer_syntax_name("9.9"), "unknown transfer syntax");
    }
}

//! Image decoding: PNG, JPEG and DICOM into one grayscale `f32` image in `[0, 1]`.
//!
//! The pipeline: [`decode_path`] reads the file (size-checked, `limits`) → [`decode_bytes`]
//! sniffs the format from the magic bytes → `raster` (PNG, JPEG) or `dicom` → [`GrayImage`].
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
//!   Samples of 8, 16 and 32 bits, signed or not, in either byte order (Explicit VR Big Endian
//!   included).
//! * **Colour DICOM** (`RGB`, `YBR_FULL`, `YBR_FULL_422`, `PALETTE COLOR`; `YBR_RCT`/`YBR_ICT`
//!   from JPEG 2000): converted to RGB first (YBR as pydicom does it, PS3.3 C.7.6.3.1.2, in
//!   float32, rounded and clipped to 8 bits; palettes through their Red/Green/Blue LUTs), then
//!   reduced to luminance like a colour PNG: PIL's integer formula / 255 for 8-bit samples, the
//!   same weights in floating point / (2^bits − 1) for wider ones (Bits Stored for RGB, the LUT
//!   entry depth for palettes). Modality and VOI LUTs do not apply to colour images.
//! * Refused with a message naming the reason: multi-frame images, floating-point pixel data,
//!   non-image objects (no Pixel Data), Modality LUT Sequences, YBR with more than 8 bits,
//!   segmented palettes, and transfer syntaxes without a decoder here (JPEG Extended 12-bit,
//!   JPEG-LS, JPEG XL, HTJ2K, video: see `dicom::transfer_syntax_name`).
//!
//! Every decoder sees the dimensions first: images over [`MAX_SIDE`] pixels on a side or
//! [`MAX_PIXELS`] pixels in all are refused before any pixel buffer is allocated. Decoder panics
//! (hostile input) are caught and reported as corrupt data.

use std::fmt;
use std::path::{Path, PathBuf};

mod dicom;
mod limits;
mod raster;
#[cfg(test)]
mod test_support;

pub use limits::{MAX_FILE_BYTES, MAX_PIXELS, MAX_SIDE};
pub use raster::pil_luminance;

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
    #[error("the file is over the limit of {limit} bytes")]
    FileTooLarge { limit: u64 },
    /// A FIFO, device, socket or folder given where an image file was expected.
    #[error("it is {kind}, not a regular file")]
    NotAFile { kind: &'static str },
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
    use medpatch_models::ReadError;
    let bytes = medpatch_models::read_regular_file(path, MAX_FILE_BYTES)
        .map_err(|e| match e {
            ReadError::Io(e) => DecodeError::Io(e),
            ReadError::NotRegular { kind } => DecodeError::NotAFile { kind },
            ReadError::TooLarge { limit } => DecodeError::FileTooLarge { limit },
        })
        .map_err(|e| e.in_file(path))?;
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
        Format::Png => raster::decode_raster(bytes, image::ImageFormat::Png, "PNG"),
        Format::Jpeg => raster::decode_raster(bytes, image::ImageFormat::Jpeg, "JPEG"),
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

impl fmt::Display for GrayImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{} grayscale image", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::*;

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
}

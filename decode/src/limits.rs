//! Resource limits, checked before any decoder allocates, and the panic guard around decoders.

use super::DecodeError;

/// Largest accepted width or height, in pixels.
pub const MAX_SIDE: u32 = 16384;
/// Largest accepted pixel count (width × height).
pub const MAX_PIXELS: u64 = 1 << 28;
/// Largest accepted input file, in bytes.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// Refuse zero or absurd dimensions (called before any pixel buffer exists).
pub(super) fn check_dimensions(width: u64, height: u64) -> Result<(), DecodeError> {
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

/// Run a decoder, turning a panic into [`DecodeError::Corrupt`] (not printed: it is the error).
pub(super) fn guarded<T>(format: &'static str, f: impl FnOnce() -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    medpatch_models::panics::catch_quietly(f).unwrap_or_else(|message| {
        Err(DecodeError::Corrupt { format, detail: format!("the decoder failed on this input ({message})") })
    })
}

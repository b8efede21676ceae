//! Status codes, the calling thread's last error, and the guard every exported function runs
//! its body in (pointer checks, panic catching, error recording).

use ::medpatch_engine::EngineError;
use ::medpatch_engine::decode::DecodeError;
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a call did. The values never change meaning; new ones may be added at the end.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum medpatch_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument has an invalid value (unknown provider, index out of range, bad pixel values…).
    InvalidArgument = 2,
    /// A caller buffer has the wrong size; the message says the size needed.
    BufferSize = 3,
    /// A file could not be read (missing, unreadable).
    Io = 4,
    /// An image could not be decoded (corrupt, truncated, unsupported format or variant).
    Decode = 5,
    /// The model could not be read or does not satisfy the medpatch contract.
    Model = 6,
    /// The requested execution provider cannot run here (library missing, no GPU…).
    ProviderUnavailable = 7,
    /// The backend failed while running the model (or produced non-finite outputs).
    Backend = 8,
    /// medpatch panicked (a bug); the message has the panic's text. The engine stays usable.
    Panic = 9,
    /// An internal invariant broke (a bug).
    Internal = 10,
}

/// The status's name, e.g. `"MEDPATCH_STATUS_DECODE"`: a static string, never freed. Unknown
/// values give `"MEDPATCH_STATUS_UNKNOWN"`.
#[unsafe(no_mangle)]
pub extern "C" fn medpatch_status_name(status: i32) -> *const c_char {
    ALL_STATUSES
        .iter()
        .find(|s| **s as i32 == status)
        .map_or(c"MEDPATCH_STATUS_UNKNOWN", |s| crate::engine::static_c_name(s.c_name()))
        .as_ptr()
}

/// Every status, in value order (private: cbindgen would export an associated constant).
const ALL_STATUSES: [medpatch_status; 11] = [
    medpatch_status::Ok,
    medpatch_status::NullArgument,
    medpatch_status::InvalidArgument,
    medpatch_status::BufferSize,
    medpatch_status::Io,
    medpatch_status::Decode,
    medpatch_status::Model,
    medpatch_status::ProviderUnavailable,
    medpatch_status::Backend,
    medpatch_status::Panic,
    medpatch_status::Internal,
];

impl medpatch_status {
    /// Its name in the C header, `MEDPATCH_STATUS_` and the variant in upper snake case (what
    /// cbindgen writes from the same variant name): derived, not written twice.
    fn c_name(self) -> &'static str {
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let names = NAMES.get_or_init(|| {
            ALL_STATUSES
                .iter()
                .map(|s| {
                    let mut name = String::from("MEDPATCH_STATUS");
                    for c in format!("{s:?}").chars() {
                        if c.is_ascii_uppercase() {
                            name.push('_');
                        }
                        name.push(c.to_ascii_uppercase());
                    }
                    name
                })
                .collect()
        });
        &names[self as usize]
    }
}

/// A failed call: its status and the message for [`medpatch_last_error`].
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: medpatch_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: medpatch_status, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(medpatch_status::InvalidArgument, message)
    }
}

impl From<EngineError> for Failure {
    fn from(error: EngineError) -> Self {
        Self::new(status_of(&error), error.to_string())
    }
}

/// The status an engine error maps to.
pub(crate) fn status_of(error: &EngineError) -> medpatch_status {
    match error {
        EngineError::Model { .. } => medpatch_status::Model,
        EngineError::ProviderUnavailable { .. } => medpatch_status::ProviderUnavailable,
        EngineError::Backend { .. } => medpatch_status::Backend,
        EngineError::Decode(e) => match e.problem() {
            DecodeError::Io(_) => medpatch_status::Io,
            _ => medpatch_status::Decode,
        },
        EngineError::Input(_) => medpatch_status::InvalidArgument,
        EngineError::Internal(_) => medpatch_status::Internal,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    // Options are named as C callers set them; interior NULs would cut the C string short.
    let message = medpatch_engine::backend::in_terms_of(message, medpatch_engine::backend::FrontEnd::C);
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// The message of the calling thread's last failed call (`""` if none has failed). Valid until
/// the next failing call on the same thread; copy it to keep it. Successful calls leave it as is,
/// so read it only right after a call returned a status other than `MEDPATCH_STATUS_OK`.
#[unsafe(no_mangle)]
pub extern "C" fn medpatch_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Copy the calling thread's last error message, NUL-terminated, into `buffer` of `capacity`
/// bytes. `needed` (may be NULL) receives the size it takes, NUL included. Returns
/// `MEDPATCH_STATUS_BUFFER_SIZE` (writing nothing into `buffer`) when `buffer` is NULL or too
/// small. This function never changes the last error itself.
///
/// # Safety
/// `buffer` must be NULL or point to `capacity` writable bytes; `needed` NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_last_error_copy(
    buffer: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> medpatch_status {
    catch_unwind(|| {
        LAST_ERROR.with(|e| {
            let message = e.borrow();
            let bytes = message.as_bytes_with_nul();
            if !needed.is_null() {
                // SAFETY: the caller passes NULL or a valid pointer.
                unsafe { *needed = bytes.len() };
            }
            if buffer.is_null() || capacity < bytes.len() {
                return medpatch_status::BufferSize;
            }
            // SAFETY: `buffer` holds `capacity` ≥ `bytes.len()` writable bytes.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().cast(), buffer, bytes.len()) };
            medpatch_status::Ok
        })
    })
    .unwrap_or(medpatch_status::Panic)
}

/// Run an exported function's body: catch panics, record the message of a failure.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> medpatch_status {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let text = medpatch_models::panics::message(&*panic);
        Err(Failure::new(medpatch_status::Panic, format!("medpatch panicked (a bug, please report it): {text}")))
    });
    match outcome {
        Ok(()) => medpatch_status::Ok,
        Err(failure) => {
            set_last_error(&failure.message);
            failure.status
        }
    }
}

/// A required pointer argument, as a reference.
pub(crate) fn arg<'a, T>(pointer: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: non-NULL pointers handed to medpatch point to live values of the documented type.
    unsafe { pointer.as_ref() }.ok_or_else(|| Failure::new(medpatch_status::NullArgument, format!("{name} is NULL")))
}

/// A required output pointer: checked before any work, written only on success.
pub(crate) fn out_arg<'a, T>(pointer: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: as for `arg`; the caller owns the pointee for the duration of the call.
    unsafe { pointer.as_mut() }.ok_or_else(|| Failure::new(medpatch_status::NullArgument, format!("{name} is NULL")))
}

/// A required C string argument, as bytes (not necessarily UTF-8).
pub(crate) fn c_str_arg<'a>(pointer: *const c_char, name: &str) -> Result<&'a [u8], Failure> {
    if pointer.is_null() {
        return Err(Failure::new(medpatch_status::NullArgument, format!("{name} is NULL")));
    }
    // SAFETY: non-NULL strings handed to medpatch are NUL-terminated.
    Ok(unsafe { CStr::from_ptr(pointer) }.to_bytes())
}

/// A required UTF-8 C string argument.
pub(crate) fn utf8_arg<'a>(pointer: *const c_char, name: &str) -> Result<&'a str, Failure> {
    std::str::from_utf8(c_str_arg(pointer, name)?).map_err(|_| Failure::invalid(format!("{name} is not valid UTF-8")))
}

/// A required path argument: any bytes on Unix (paths need not be UTF-8 there), UTF-8 elsewhere.
pub(crate) fn path_arg(pointer: *const c_char, name: &str) -> Result<std::path::PathBuf, Failure> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::ffi::OsStr::from_bytes(c_str_arg(pointer, name)?).into())
    }
    #[cfg(not(unix))]
    {
        Ok(utf8_arg(pointer, name)?.into())
    }
}

/// A required `(pointer, length)` slice argument; an empty slice may have a NULL pointer.
pub(crate) fn slice_arg<'a, T>(pointer: *const T, len: usize, name: &str) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if pointer.is_null() {
        return Err(Failure::new(medpatch_status::NullArgument, format!("{name} is NULL")));
    }
    // SAFETY: the caller passes `len` readable elements at `pointer`.
    Ok(unsafe { std::slice::from_raw_parts(pointer, len) })
}

/// Take back a boxed object through the caller's pointer and reset that pointer to NULL.
pub(crate) fn free_boxed<T>(slot: *mut *mut T) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `slot` is NULL or the address of a pointer that is NULL or came from Box::into_raw.
        if let Some(slot) = unsafe { slot.as_mut() } {
            let pointer = std::mem::replace(slot, std::ptr::null_mut());
            if !pointer.is_null() {
                // SAFETY: see above; the slot no longer refers to it.
                drop(unsafe { Box::from_raw(pointer) });
            }
        }
    }));
}

/// Only for testing a host's error handling: panics inside medpatch and returns
/// `MEDPATCH_STATUS_PANIC` with the panic's message as the last error. Nothing else happens.
#[unsafe(no_mangle)]
pub extern "C" fn medpatch_test_panic() -> medpatch_status {
    guard(|| panic!("medpatch_test_panic was called"))
}

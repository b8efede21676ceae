//! libmedpatch: the C ABI over `medpatch-engine`. A thin layer with no logic of its own: every
//! function checks its pointers, calls the engine, and turns the outcome into a status code.
//!
//! Rules a host can rely on (the header repeats them):
//! * Every fallible function returns a [`medpatch_status`]; `MEDPATCH_STATUS_OK` is 0. On failure
//!   [`medpatch_last_error`] gives the calling thread's message, and no output is written.
//! * No panic crosses the boundary: each exported function catches it and returns
//!   `MEDPATCH_STATUS_PANIC`; the engine stays usable.
//! * A NULL pointer argument is `MEDPATCH_STATUS_NULL_ARGUMENT`, never a crash. The `_free`
//!   functions take the address of the caller's pointer, accept NULL, and reset it to NULL, so a
//!   second free through the same variable does nothing.
//! * An engine is `Send + Sync`: any number of threads may predict with one engine at once.
//!   Options are not synchronised: one thread at a time. Results are immutable and may be read
//!   from any thread.
#![allow(non_camel_case_types)]

mod engine;
mod options;
mod result;
mod status;

pub use engine::*;
pub use options::*;
pub use result::*;
pub use status::*;

/// Major version of libmedpatch (equal to the crate's; a test checks).
pub const MEDPATCH_VERSION_MAJOR: u32 = 0;
/// Minor version of libmedpatch.
pub const MEDPATCH_VERSION_MINOR: u32 = 1;
/// Patch version of libmedpatch.
pub const MEDPATCH_VERSION_PATCH: u32 = 0;

/// The library's version, `"MAJOR.MINOR.PATCH"`: a static string, never freed. Compare it with
/// the `MEDPATCH_VERSION_*` macros of the header the host was compiled against.
#[unsafe(no_mangle)]
pub extern "C" fn medpatch_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

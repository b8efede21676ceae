//! Give libmedpatch.so a soname (`libmedpatch.so.<major>`), so hosts link against the ABI
//! version rather than the file name (scripts/build-ffi.sh stages the matching symlinks), and
//! export nothing but the API.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmedpatch.so.{major}");
        // Symbols of the static libraries linked in (OpenJPEG's opj_*, compiled by openjpeg-sys)
        // stay local: a host that links its own OpenJPEG keeps its own. Only medpatch_* is the API.
        println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
    }
}

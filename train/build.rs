//! Link fix for libtorch (see ../shared/notes/toolchain.md, "libtorch through tch"):
//!
//! 1. rustc links with `--as-needed`, which drops `libtorch.so` / `libtorch_cuda.so` because no
//!    symbol of theirs is referenced directly; CUDA then silently reports unavailable (tch-rs issue
//!    980). `--no-as-needed` before `-ltorch` keeps them.
//! 2. An rpath to the libtorch directory, so the binaries run without LD_LIBRARY_PATH.
//!
//! `DEP_TCH_LIBTORCH_LIB` is exported by torch-sys (`links = "tch"`); it is visible here because
//! torch-sys is a direct dependency of this crate.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            println!("cargo:rustc-link-search=native={lib}");
        }
        Err(_) => println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: the binaries will need LD_LIBRARY_PATH"),
    }
}

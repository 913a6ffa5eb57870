//! Two link-time jobs that `tch` leaves to the final binary, and a rebuild when the shipped
//! experiments change.
//!
//! 1. `libtorch_cuda` exposes no symbol that our code references directly, so a linker that
//!    uses `--as-needed` (Debian's default) drops it and CUDA is then silently unavailable.
//!    Linking it with `--no-as-needed` keeps it.
//! 2. An rpath to torch's `lib` folder lets the binary (and the test binaries) run without
//!    LD_LIBRARY_PATH.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // The binary ships experiments/ (src/shipped.rs); include_dir cannot tell cargo that on
    // stable Rust, so a change there reruns this script, and that rebuilds the crate.
    println!("cargo:rerun-if-changed=experiments");
    // Set by torch-sys (links = "tch") for crates that depend on it directly.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; no rpath to libtorch");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

//! Two link-time jobs that `tch` leaves to the final binary, the C++ shim of the libtorch
//! operators `tch` does not expose (csrc/aten.cpp, src/aten.rs), and a rebuild when the shipped
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
    println!("cargo:rerun-if-changed=csrc/aten.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // Set by torch-sys (links = "tch") for crates that depend on it directly.
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect(
        "torch-sys sets DEP_TCH_LIBTORCH_LIB (the libtorch to build csrc/aten.cpp against)",
    );
    shim(Path::new(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Compiles csrc/aten.cpp against the headers beside `lib` (`…/torch/lib` → `…/torch/include`),
/// with the C++ ABI torch-sys uses (`LIBTORCH_CXX11_ABI`, default 1: every torch wheel since 2.7).
fn shim(lib: &Path) {
    let include = lib
        .parent()
        .expect("libtorch's lib folder has a parent")
        .join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/aten.cpp")
        .compile("linattn_aten");
    // After the shim on the link line, so that --as-needed keeps them for its symbols.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

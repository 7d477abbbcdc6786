// Shared by the build scripts of trainer-core and agent (`include!`d):
// link libtorch so that CUDA works at run time.
//
// With the linker's default `--as-needed`, libtorch_cuda is dropped because
// no symbol is referenced directly, and CUDA silently reads as unavailable
// (tch-rs #980). We link it with `--no-as-needed` when it exists, and add an
// rpath to the libtorch directory so the binary runs without LD_LIBRARY_PATH.
// torch-sys tells direct dependents where libtorch is: DEP_TCH_LIBTORCH_LIB.

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report the libtorch directory; set LD_LIBRARY_PATH at run time");
        return;
    };
    let dir = std::path::PathBuf::from(lib);
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", dir.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
}

//! Compiles `proto/*.proto` with a vendored `protoc`, so a fresh machine needs no install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // The build script is single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/failoverd.proto"], &["proto"])?;
    Ok(())
}

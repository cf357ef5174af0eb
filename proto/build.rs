//! Generates the gRPC code. protoc comes from `protoc-bin-vendored` and is set
//! only for this build script, never globally (raft-proto wants its own).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = ["proto/fenced/v1/fenced.proto", "proto/fenced/v1/peer.proto"];
    tonic_prost_build::configure()
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("fenced_descriptor.bin"),
        )
        .compile_protos(&files, &["proto"])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}

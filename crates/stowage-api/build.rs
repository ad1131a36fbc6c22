//! Generates the CSI types and services from `proto/csi.proto` with
//! `protoc` (Debian's `protobuf-compiler`, installed by the README's
//! commands).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    tonic_prost_build::configure()
        // The daemon serves; the client half is for the tests and benches.
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/csi.proto"], &["proto"])?;
    Ok(())
}

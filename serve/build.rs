//! Generates the Open Inference Protocol's gRPC messages and service from `proto/` with protox (a
//! protobuf compiler in Rust), so that building medpatch never needs `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/open_inference_grpc.proto");
    let descriptors = protox::compile(["open_inference_grpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .build_transport(false)
        // Tensor contents as `bytes::Bytes`: slices of the received message, not copies.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}

//! Generates the Loki push types from the vendored `proto/push.proto` with `protox`
//! (pure Rust, no `protoc`) and `prost-build`. `google.protobuf.Timestamp` maps to
//! `prost_types::Timestamp` (prost-build's default for well-known types).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/push.proto");
    let fds = protox::compile(["push.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}

//! Generates the gRPC code of the schemas under `proto/` (needs `protoc`, which
//! `scripts/setup.sh` installs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .compile_protos(&["proto/nimbus/control/v1/control.proto"], &["proto"])?;
    Ok(())
}

//! Compiles `proto/` with protox, a pure-Rust protobuf compiler, so building fleet
//! never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let fds = protox::compile(
        [
            root.join("fleet/agent/v1/agent.proto"),
            root.join("fleet/controller/v1/controller.proto"),
        ],
        [&root],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // prost's codec with small first buffers (`codec.rs`: memory per agent session).
        .codec_path("crate::codec::FleetCodec")
        // Written by hand (`status.rs`): a controller sends hosts it encoded once.
        .extern_path(
            ".fleet.controller.v1.StatusResponse",
            "crate::status::StatusResponse",
        )
        // A peer's hosts pass through as the bytes it sent (`bytes::Bytes`, no copy).
        .bytes(".fleet.controller.v1.PeerStatusReply.hosts")
        .compile_fds(fds)?;
    // compile_fds does not know the source files; tell cargo when to rerun.
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}

//! Compiles rbe's internal .proto files with protox, so no system `protoc`
//! is needed. Output is deterministic and needs neither network nor `.git`.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: `env!` would bake in the directory the build
    // script was compiled in, and a build script reused from another
    // checkout's target dir would then compile that checkout's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("rbe/casd/v1/casd.proto"),
        root.join("rbe/worker/v1/worker.proto"),
        root.join("rbe/cluster/v1/cluster.proto"),
        root.join("google/rpc/error_details.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

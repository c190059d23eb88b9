//! Generates the protobuf types from the project's proto/snapbus.proto into
//! OUT_DIR (never committed). SBRS_PROTO overrides the file's path.
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let proto = match std::env::var_os("SBRS_PROTO") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/snapbus.proto"),
    };
    let dir = proto.parent().map(PathBuf::from).unwrap_or_default();
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=SBRS_PROTO");
    prost_build::Config::new().compile_protos(&[&proto], &[&dir])
}

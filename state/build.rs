//! Generates the persisted record and command types from `proto/protos/kiln/state/v1/state.proto`.

fn main() -> std::io::Result<()> {
    let root = "../proto/protos";
    let file = format!("{root}/kiln/state/v1/state.proto");
    println!("cargo:rerun-if-changed={file}");
    prost_build::Config::new().compile_protos(&[file], &[root.to_string()])
}

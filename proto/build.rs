//! Generates the tonic client and server code for `protos/kiln/v1/api.proto`.
//! Messages of `kiln.state.v1` are not generated again: they are `kiln_state::pb`.

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=protos");
    tonic_prost_build::configure()
        .extern_path(".kiln.state.v1", "::kiln_state::pb")
        .compile_protos(&["protos/kiln/v1/api.proto"], &["protos"])
}

//! The coordinator's gRPC API, generated from `protos/kiln/v1/api.proto`.
//!
//! This crate holds generated code only; the replicated records it carries (`Run`, `RunRequest`,
//! …) are the state machine's own types from `kiln_state::pb`.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("kiln.v1");
}

pub use kiln_state::pb;

//! The coordinator's replicated state machine: pure and deterministic.
//!
//! Every replica applies the same committed [`pb::Command`]s in the same order and so reaches the
//! same [`State`]. Nothing in this crate does I/O, reads the clock or draws random numbers: time
//! arrives inside each command, stamped by the proposer. `apply` is total: a command with bad
//! content is rejected with a recorded error and leaves the state unchanged; it never panics.

pub mod machine;
pub mod platform;
pub mod scheduler;

pub mod pb {
    //! Records and commands generated from `proto/protos/kiln/state/v1/state.proto`.
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/kiln.state.v1.rs"));
}

pub use machine::{run_id_for_seq, seq_from_run_id, ApplyOutcome, State};
pub use platform::PlatformSpec;

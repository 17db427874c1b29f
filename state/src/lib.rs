//! The coordinator's replicated state machine.

pub mod pb {
    //! Records and commands generated from `state.proto`.
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/kiln.state.v1.rs"));
}

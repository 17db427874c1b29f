//! The coordinator's gRPC API, generated from `protos/kiln/v1/api.proto`, and the one client
//! of a coordinator cluster every binary shares.
//!
//! * [`v1`]: generated code only; the replicated records it carries (`Run`, `RunRequest`, …) are
//!   the state machine's own types from `kiln_state::pb`.
//! * [`endpoints`]: talking to a farm of several coordinators: the endpoint list, following
//!   the leader, retries, the cluster id sent on every request.

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("kiln.v1");
}

pub mod endpoints;

pub use endpoints::Endpoints;

pub use kiln_state::pb;

/// The agent protocol this build speaks (sent in `Hello` and `Welcome`).
///
/// 1: the first protocol (no leases). 2: leases (epochs) on every report, acknowledged
/// assignments and reports, heartbeats both ways, stored log segments, drain.
/// A coordinator serves agents of protocol 2 and newer; an agent refuses a coordinator whose
/// `Welcome` is older than 2.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest agent protocol a coordinator of this build accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

//! One module per `kiln` subcommand; `submit` holds what `build` and `run` share.

pub mod agents;
pub mod build;
pub mod cluster;
pub mod logs;
pub mod run;
pub mod runs;
pub mod submit;

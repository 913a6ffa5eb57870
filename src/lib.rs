//! linattn: a replication of Ahn et al., "Linear attention is (maybe) all you need (to
//! understand Transformer optimization)", ICLR 2024, on libtorch through `tch`.
//!
//! One module per concept of the paper; see `../shared/SPEC.md` and `docs/conventions.md`.
pub mod artifacts;
pub mod bench;
pub mod compare;
pub mod config;
pub mod data;
pub mod device;
pub mod ensemble;
pub mod figures;
pub mod landscape;
pub mod model;
pub mod noise;
pub mod numpy_rng;
pub mod optim;
pub mod plots;
pub mod progress;
pub mod reference;
pub mod reproduce;
pub mod train;

/// Input that the user must fix: reported as one line, with exit code 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Exit codes of the command-line contract.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const DIVERGED: i32 = 3;
    /// Ctrl-C or SIGTERM: a checkpoint was written; `train --resume` continues.
    pub const INTERRUPTED: i32 = 130;
}

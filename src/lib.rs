//! linattn: a replication of Ahn et al., "Linear attention is (maybe) all you need (to
//! understand Transformer optimization)", ICLR 2024, on libtorch through `tch`.
//!
//! One module per concept of the paper (docs/spec.md, docs/design.md). Modules are layered:
//! each imports only modules listed before it here (tests/layering.rs checks it).
pub mod aten;
pub mod config;
pub mod rng;
pub mod stats;
pub mod mlp;
pub mod data;
pub mod model;
pub mod optim;
pub mod progress;
pub mod plots;
pub mod run;
pub mod shipped;
pub mod train;
pub mod measure;
pub mod tools;
pub mod figures;

/// Input that the user must fix: reported as one line, with exit code 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// A [`BadInput`] error: one line for the user, exit code 2.
pub fn bad_input(msg: String) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg))
}

/// The message of a panic (from tch's unwrapping wrappers, say) as one line.
pub fn panic_line(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("unknown panic")
        .trim()
        .to_string()
}

/// Exit codes of the command-line contract.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const BAD_INPUT: i32 = 2;
    pub const DIVERGED: i32 = 3;
    /// `reproduce --draw-only`: units are missing (named on stderr); nothing was drawn.
    pub const INCOMPLETE: i32 = 4;
    /// Ctrl-C or SIGTERM: a checkpoint was written; `train --resume` continues.
    pub const INTERRUPTED: i32 = 130;
}

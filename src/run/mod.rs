//! A run on disk and the start of a run in memory: the folder and its lifecycle
//! ([`folder`]), how its files are written and read ([`io`]), and the reference protocol's
//! first steps ([`protocol`]).
pub mod folder;
pub mod io;
pub mod protocol;

pub use folder::{FolderBusy, FolderLock, RunFolder, RunRecord, State};
pub use io::{MetricsRow, Status, Summary, Trajectory};

//! A run on disk and the start of a run in memory: the folder and its lifecycle
//! ([`folder`]), its checkpoint ([`checkpoint`]), a noise measurement's folder ([`noise`]), folder names ([`naming`]), how
//! files are written and read ([`io`]), and the reference protocol's first steps
//! ([`protocol`]).
pub mod checkpoint;
pub mod folder;
pub mod io;
pub mod naming;
pub mod noise;
pub mod protocol;

pub use checkpoint::{Checkpoint, Composition};
pub use folder::{FolderBusy, FolderLock, RunFolder, RunRecord, State};
pub use io::{MetricsRow, Status, Summary, Trajectory};
pub use noise::NoiseFolder;

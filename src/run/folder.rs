//! The run folder: every file name in it and its lifecycle, owned here and nowhere else.
//!
//! ```text
//! config.yaml              the resolved config, written first (a folder that cannot be written
//!                          is reported before any work)
//! checkpoint.safetensors   while training: everything needed to continue, the config it started
//!                          from, and a SHA-256 of it all (rewritten atomically)
//! trajectory.partial/      while training: the snapshots so far, a checked file per checkpoint
//! metrics.csv              rewritten at every checkpoint while training, final at the end
//! trajectory.safetensors   at the end: per parameter [saved steps, *shape], int64 `step`
//! final.safetensors        at the end: the final parameters under PyTorch names
//! summary.json             status (running, interrupted, completed, diverged), wall time, device
//! measurements.csv         what `analyze` and `reproduce` measured on the trajectory
//! .linattn.lock            an flock held by the process that writes the folder
//! ```
//!
//! A folder is [`State::Done`] once its summary says completed or diverged and its trajectory
//! is there; [`State::Resumable`] while a checkpoint is there; otherwise [`State::Broken`] (to
//! be trained again) or [`State::Missing`].
use super::checkpoint::{self, Checkpoint, Composition};
use super::io::{self, MetricsRow, Status, Summary, Trajectory};
use crate::config::Config;
use crate::model::Layout;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

const CONFIG: &str = "config.yaml";
const CHECKPOINT: &str = "checkpoint.safetensors";
/// An ensemble's next checkpoint, written for every member before any is renamed onto its
/// checkpoint, so that a kill never leaves members checkpointed at different iterations.
const CHECKPOINT_NEXT: &str = "checkpoint.next.safetensors";
const METRICS: &str = "metrics.csv";
const TRAJECTORY: &str = "trajectory.safetensors";
const FINAL: &str = "final.safetensors";
const SUMMARY: &str = "summary.json";
pub const MEASUREMENTS: &str = "measurements.csv";
pub const SPECTRUM: &str = "spectrum.csv";
const LOCK: &str = ".linattn.lock";
/// While training: the trajectory so far, appended to at each checkpoint as one checked
/// safetensors file of the new snapshots, `<first>-<end>.safetensors` (snapshot indices,
/// end excluded; tensors `step` [n] and `flat` [n, P]), so that no checkpoint rewrites what
/// an earlier one wrote. Removed with the checkpoint once the run's results are written.
const TRAJECTORY_PARTIAL: &str = "trajectory.partial";

/// What a run writes, and what is measured on its trajectory: clearing a folder removes them
/// all, since measurements of an old trajectory must never be reused for a new one.
const RUN_FILES: &[&str] = &[
    CONFIG,
    CHECKPOINT,
    CHECKPOINT_NEXT,
    METRICS,
    TRAJECTORY,
    FINAL,
    SUMMARY,
    MEASUREMENTS,
    SPECTRUM,
];

/// Where a run folder stands.
#[derive(Debug)]
pub enum State {
    /// Completed or diverged: a result.
    Done(Summary),
    /// A checkpoint is there to continue from.
    Resumable,
    /// Something is there, but nothing to continue from.
    Broken,
    Missing,
}

/// An exclusive lock on a run folder, released when dropped or when the process dies (so a
/// dead worker's folder is free again).
pub struct FolderLock(#[allow(dead_code)] std::fs::File);

/// What a finished run leaves in its folder besides `config.yaml`.
pub struct RunRecord {
    /// Parameter names in `state_dict` order.
    pub names: Vec<String>,
    pub metrics: Vec<MetricsRow>,
    /// The saved steps; `trajectory[i]` is `[steps.len(), *shape]` for parameter `names[i]`.
    pub steps: Vec<i64>,
    pub trajectory: Vec<Tensor>,
    pub final_params: Vec<Tensor>,
    pub status: Status,
    pub diverged_at: Option<i64>,
    pub wall_time_s: f64,
    pub device: tch::Device,
}

/// Another live process holds the folder's lock (reported as bad input; `reproduce` skips such a
/// unit as another worker's).
#[derive(Debug)]
pub struct FolderBusy(pub PathBuf);

impl std::fmt::Display for FolderBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "output folder {}: another linattn process is writing into it",
            self.0.display()
        )
    }
}

impl std::error::Error for FolderBusy {}

use crate::bad_input as bad;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    pub fn new(dir: impl Into<PathBuf>) -> RunFolder {
        RunFolder { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn measurements_path(&self) -> PathBuf {
        self.dir.join(MEASUREMENTS)
    }

    /// The Hessian's block spectra (`analyze --spectrum`).
    pub fn spectrum_path(&self) -> PathBuf {
        self.dir.join(SPECTRUM)
    }

    pub fn has_config(&self) -> bool {
        self.dir.join(CONFIG).exists()
    }

    pub fn has_checkpoint(&self) -> bool {
        self.dir.join(CHECKPOINT).exists()
    }

    /// Whether the folder holds anything a run produced: a checkpoint, metrics, a trajectory,
    /// final parameters or measurements. A start that failed before its first checkpoint
    /// leaves only `config.yaml` and `summary.json`, which a retry may replace.
    pub fn holds_results(&self) -> bool {
        RUN_FILES
            .iter()
            .filter(|f| !matches!(**f, CONFIG | SUMMARY))
            .any(|f| self.dir.join(f).exists())
    }

    /// The resolved `config.yaml`; bad input when the folder is not a run folder.
    pub fn config(&self) -> Result<Config> {
        let path = self.dir.join(CONFIG);
        if !self.dir.is_dir() {
            let why = if self.dir.exists() {
                "not a folder"
            } else {
                "no such folder"
            };
            return Err(bad(format!(
                "{}: not a linattn run folder ({why})",
                self.dir.display()
            )));
        }
        if !path.exists() {
            return Err(bad(format!(
                "{}: not a linattn run folder (no config.yaml)",
                self.dir.display()
            )));
        }
        Config::load(&path, &[]).with_context(|| format!("reading {}", path.display()))
    }

    /// `summary.json`, as it stands: a summary that says `running` while no process holds the
    /// folder's lock belongs to a process that was killed without a word (SIGKILL, the
    /// out-of-memory killer), and reads as `interrupted`, which `train --resume` continues.
    pub fn summary(&self) -> Result<Summary> {
        let mut s = Summary::read(&self.dir.join(SUMMARY))?;
        if s.status == Status::Running && !self.held() {
            s.status = Status::Interrupted;
        }
        Ok(s)
    }

    /// Whether a live process holds the folder's lock (looked at without creating anything).
    fn held(&self) -> bool {
        use fs2::FileExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join(LOCK))
        {
            Ok(file) => file.try_lock_exclusive().is_err(),
            Err(_) => false,
        }
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        summary.write(&self.dir.join(SUMMARY))
    }

    /// `metrics.csv`; bad input naming it when it does not match the SHA-256 its summary
    /// records.
    pub fn metrics(&self) -> Result<Vec<MetricsRow>> {
        self.verify(METRICS)?;
        io::read_metrics(&self.dir.join(METRICS))
    }

    /// `trajectory.safetensors`, checked as [`RunFolder::metrics`] is.
    pub fn trajectory(&self, names: &[String]) -> Result<Trajectory> {
        self.verify(TRAJECTORY)?;
        Trajectory::read(&self.dir.join(TRAJECTORY), names)
    }

    /// `final.safetensors`, checked as [`RunFolder::metrics`] is.
    pub fn final_params(&self) -> Result<Vec<(String, Tensor)>> {
        self.verify(FINAL)?;
        io::read_safetensors(&self.dir.join(FINAL))
    }

    /// Whether the folder's file `name` (written by the run or by a measurement) matches the
    /// SHA-256 that `summary.json` records for it; true when it records none.
    pub fn intact(&self, name: &str) -> Result<bool> {
        let Ok(summary) = Summary::read(&self.dir.join(SUMMARY)) else {
            return Ok(true);
        };
        match summary.sha256.get(name) {
            None => Ok(true),
            Some(want) => Ok(io::file_sha256(&self.dir.join(name))? == *want),
        }
    }

    /// Bad input naming the file when it is not [`RunFolder::intact`].
    fn verify(&self, name: &str) -> Result<()> {
        if self.intact(name)? {
            return Ok(());
        }
        Err(bad(format!(
            "{}: damaged: its contents do not match the SHA-256 that summary.json records; train the run again (train --force, or remove the folder and reproduce)",
            self.dir.join(name).display()
        )))
    }

    /// Records in `summary.json` the SHA-256 of the folder's files `names`, as they are now
    /// (a measurement calls it after each write of its file).
    /// A folder without a summary (not a run's) has nothing to record them in.
    pub fn record_sha256(&self, names: &[&str]) -> Result<()> {
        let path = self.dir.join(SUMMARY);
        if !path.exists() {
            return Ok(());
        }
        let mut s = Summary::read(&path)?;
        for &name in names {
            s.sha256
                .insert(name.to_string(), io::file_sha256(&self.dir.join(name))?);
        }
        self.write_summary(&s)
    }

    pub fn state(&self) -> State {
        if !self.has_config() {
            // A folder that holds nothing but its lock file was never started: another worker
            // only took its lock (or looked whether it could) and let go.
            let started = std::fs::read_dir(&self.dir)
                .map(|entries| entries.flatten().any(|e| e.file_name() != LOCK))
                .unwrap_or(false);
            return if started {
                State::Broken
            } else {
                State::Missing
            };
        }
        match self.summary() {
            Ok(s)
                if matches!(s.status, Status::Completed | Status::Diverged)
                    && self.dir.join(TRAJECTORY).exists() =>
            {
                State::Done(s)
            }
            _ if self.has_checkpoint() => State::Resumable,
            _ => State::Broken,
        }
    }

    /// Takes the folder's lock; `None` when another live process holds it.
    pub fn try_lock(&self) -> Result<Option<FolderLock>> {
        use fs2::FileExt;
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            bad(format!(
                "output folder {}: cannot create it ({e})",
                self.dir.display()
            ))
        })?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK))
            .map_err(|e| {
                bad(format!(
                    "output folder {}: cannot write to it ({e})",
                    self.dir.display()
                ))
            })?;
        Ok(file.try_lock_exclusive().ok().map(|_| FolderLock(file)))
    }

    /// Takes the folder's lock; [`FolderBusy`] when another process holds it.
    pub fn lock(&self) -> Result<FolderLock> {
        self.try_lock()?
            .ok_or_else(|| anyhow::Error::new(FolderBusy(self.dir.clone())))
    }

    /// Creates the folder and writes the resolved `config.yaml` into it.
    pub fn create(&self, cfg: &Config) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            bad(format!(
                "output folder {}: cannot create it ({e})",
                self.dir.display()
            ))
        })?;
        io::write_atomic(&self.dir.join(CONFIG), cfg.to_yaml().as_bytes()).map_err(|e| {
            bad(format!(
                "output folder {}: cannot write to it ({e:#})",
                self.dir.display()
            ))
        })
    }

    /// Removes what a run wrote and what was measured on it, so that training it again cannot
    /// leave stale files.
    pub fn clear(&self) {
        for f in RUN_FILES {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        let _ = std::fs::remove_dir_all(self.dir.join(TRAJECTORY_PARTIAL));
    }

    /// First phase of a checkpoint: the snapshots no chunk holds yet appended as a chunk, then
    /// the new state beside the current checkpoint.
    pub fn write_checkpoint_next(&self, ckpt: &Checkpoint, layout: &Layout) -> Result<()> {
        self.append_trajectory(&ckpt.saved_steps, &ckpt.snapshots)?;
        io::write_checked_safetensors(&self.dir.join(CHECKPOINT_NEXT), &ckpt.to_tensors(layout))
    }

    /// The trajectory chunks, `(first, end, path)` in order.
    fn chunks(&self) -> Result<Vec<(i64, i64, PathBuf)>> {
        let dir = self.dir.join(TRAJECTORY_PARTIAL);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut out = vec![];
        for e in entries {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            // Anything else (a temporary file of a write that was cut short) is not a chunk.
            let range = name
                .strip_suffix(".safetensors")
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)));
            if let Some((first, end)) = range {
                out.push((first, end, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes the snapshots `[written, S)` that no chunk holds yet as one chunk.
    fn append_trajectory(&self, steps: &[i64], snapshots: &Tensor) -> Result<()> {
        let written = self.chunks()?.last().map_or(0, |c| c.1);
        let total = steps.len() as i64;
        if total <= written {
            return Ok(());
        }
        let dir = self.dir.join(TRAJECTORY_PARTIAL);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let chunk = vec![
            (
                "step".to_string(),
                Tensor::from_slice(&steps[written as usize..]),
            ),
            (
                "flat".to_string(),
                snapshots.narrow(0, written, total - written),
            ),
        ];
        io::write_checked_safetensors(
            &dir.join(format!("{written:09}-{total:09}.safetensors")),
            &chunk,
        )
    }

    /// The first `count` snapshots, `[count, p]`, from the chunks, each checked. Chunks past
    /// `count` were written by a process killed before its checkpoint was promoted; they are
    /// removed (the resumed run writes them again).
    fn read_trajectory(&self, count: i64, p: i64) -> Result<(Vec<i64>, Tensor)> {
        let (mut steps, mut parts) = (vec![], vec![]);
        let damaged = |why: String| {
            bad(format!(
                "{}: the trajectory so far is damaged: {why}; train the run again (train --force, or remove the folder and reproduce)",
                self.dir.join(TRAJECTORY_PARTIAL).display()
            ))
        };
        for (first, end, path) in self.chunks()? {
            if first >= count {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                continue;
            }
            if first != steps.len() as i64 || end > count {
                return Err(damaged(format!(
                    "snapshots {first}-{end} do not follow the {} before them",
                    steps.len()
                )));
            }
            let named = io::read_checked_safetensors(&path)?;
            let get = |n: &str| {
                named
                    .iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, t)| t.shallow_clone())
                    .ok_or_else(|| damaged(format!("{} has no tensor {n:?}", path.display())))
            };
            let (s, flat) = (Vec::<i64>::try_from(&get("step")?)?, get("flat")?);
            if s.len() as i64 != end - first || flat.size() != [end - first, p] {
                return Err(damaged(format!(
                    "{} holds {:?} for snapshots {first}-{end}",
                    path.display(),
                    flat.size()
                )));
            }
            steps.extend(s);
            parts.push(flat);
        }
        if steps.len() as i64 != count {
            return Err(damaged(format!(
                "{} snapshots where the checkpoint holds {count}",
                steps.len()
            )));
        }
        Ok((steps, Tensor::cat(&parts, 0)))
    }

    pub fn has_checkpoint_next(&self) -> bool {
        self.dir.join(CHECKPOINT_NEXT).exists()
    }

    /// The iteration and ensemble of the file `name` in the folder, if it is there; bad input
    /// naming the file when it is damaged (as [`Self::read_checkpoint`] does).
    fn stamp_of(&self, name: &str) -> Result<Option<(i64, Composition)>> {
        let path = self.dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let saved = io::read_checked_safetensors(&path)?;
        checkpoint::stamp(&saved)
            .map(Some)
            .map_err(|e| bad(format!("{}: {e:#}", path.display())))
    }

    /// The iteration and ensemble of the next checkpoint (see [`Self::write_checkpoint_next`]).
    pub fn checkpoint_next_stamp(&self) -> Result<Option<(i64, Composition)>> {
        self.stamp_of(CHECKPOINT_NEXT)
    }

    /// The iteration and ensemble of the checkpoint.
    pub fn checkpoint_stamp(&self) -> Result<Option<(i64, Composition)>> {
        self.stamp_of(CHECKPOINT)
    }

    /// Second phase: the next checkpoint becomes the checkpoint (an atomic rename).
    pub fn promote_checkpoint_next(&self) -> Result<()> {
        let (next, cur) = (self.dir.join(CHECKPOINT_NEXT), self.dir.join(CHECKPOINT));
        std::fs::rename(&next, &cur)
            .with_context(|| format!("renaming {} onto {}", next.display(), cur.display()))
    }

    pub fn discard_checkpoint_next(&self) {
        let _ = std::fs::remove_file(self.dir.join(CHECKPOINT_NEXT));
    }

    /// The checkpoint, checked against its checksum and against `layout` (the shapes of the
    /// folder's config); bad input naming the file when either fails.
    pub fn read_checkpoint(&self, layout: &Layout) -> Result<Checkpoint> {
        let path = self.dir.join(CHECKPOINT);
        let saved = io::read_checked_safetensors(&path)?;
        let mut ckpt = Checkpoint::from_tensors(&saved, layout)
            .map_err(|e| bad(format!("{}: {e:#}", path.display())))?;
        if (ckpt.saved_steps.len() as i64) < ckpt.saved {
            let (steps, snapshots) = self.read_trajectory(ckpt.saved, layout.total)?;
            (ckpt.saved_steps, ckpt.snapshots) = (steps, snapshots.to_kind(ckpt.flat.kind()));
        }
        Ok(ckpt)
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT)
    }

    pub fn remove_checkpoint(&self) {
        let _ = std::fs::remove_file(self.dir.join(CHECKPOINT));
        let _ = std::fs::remove_file(self.dir.join(CHECKPOINT_NEXT));
        let _ = std::fs::remove_dir_all(self.dir.join(TRAJECTORY_PARTIAL));
    }

    /// The metrics so far, while the run trains (readable at every checkpoint).
    pub fn write_metrics(&self, rows: &[MetricsRow]) -> Result<()> {
        io::write_atomic(&self.dir.join(METRICS), io::metrics_csv(rows).as_bytes())
    }

    /// Writes `metrics.csv`, `trajectory.safetensors`, `final.safetensors` and, last,
    /// `summary.json`, which makes the folder [`State::Done`].
    pub fn finish(&self, record: RunRecord) -> Result<Summary> {
        self.write_metrics(&record.metrics)?;
        io::write_trajectory_stacked(
            &self.dir.join(TRAJECTORY),
            &record.names,
            &record.steps,
            &record.trajectory,
        )?;
        let final_params: Vec<(String, Tensor)> = record
            .names
            .iter()
            .cloned()
            .zip(record.final_params)
            .collect();
        io::write_safetensors(&self.dir.join(FINAL), &final_params)?;
        let mut summary = Summary::of_rust(
            record.status,
            record.diverged_at,
            record.metrics.len() as i64,
            record.wall_time_s,
            record.device,
        );
        for name in [METRICS, TRAJECTORY, FINAL] {
            summary
                .sha256
                .insert(name.into(), io::file_sha256(&self.dir.join(name))?);
        }
        self.write_summary(&summary)
            .context("writing summary.json")?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_folder_that_only_another_worker_locked_is_missing_and_one_with_files_is_broken() {
        // A worker that looks whether a unit is free takes its folders' locks for a moment, and
        // creates them; a worker that then trains it must count it as trained, not restarted.
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::new(dir.path().join("run"));
        assert!(matches!(f.state(), State::Missing));
        drop(f.lock().unwrap());
        assert!(f.dir().join(LOCK).exists());
        assert!(matches!(f.state(), State::Missing));
        f.write_metrics(&[]).unwrap();
        assert!(matches!(f.state(), State::Broken));
    }

    #[test]
    fn checkpoints_append_only_new_snapshots_and_a_resume_drops_those_written_past_its_checkpoint()
    {
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::new(dir.path());
        let snaps = Tensor::arange(15, (Kind::Float, Device::Cpu)).reshape([5, 3]);
        let steps = [0i64, 10, 20, 30, 40];
        f.append_trajectory(&steps[..2], &snaps.narrow(0, 0, 2))
            .unwrap();
        f.append_trajectory(&steps[..2], &snaps.narrow(0, 0, 2))
            .unwrap();
        f.append_trajectory(&steps, &snaps).unwrap();
        let ranges: Vec<(i64, i64)> = f.chunks().unwrap().iter().map(|c| (c.0, c.1)).collect();
        assert_eq!(ranges, [(0, 2), (2, 5)], "each snapshot written once");

        let (s, t) = f.read_trajectory(5, 3).unwrap();
        assert_eq!(s, steps);
        assert!(t.equal(&snaps));
        // The checkpoint holds 2: the chunk written after it (by a process killed before it
        // promoted its next checkpoint) is dropped, and written again by the resumed run.
        let (s, t) = f.read_trajectory(2, 3).unwrap();
        assert_eq!(s, [0, 10]);
        assert!(t.equal(&snaps.narrow(0, 0, 2)));
        assert_eq!(f.chunks().unwrap().len(), 1);
        // A count inside a chunk, or past the chunks, is damage.
        assert!(format!("{:#}", f.read_trajectory(1, 3).unwrap_err()).contains("damaged"));
        assert!(format!("{:#}", f.read_trajectory(3, 3).unwrap_err()).contains("damaged"));
    }
}

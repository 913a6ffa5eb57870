//! Training: one driver ([`driver`]) for every mode, driving one of two steppers:
//! [`faithful::FaithfulStepper`] (one run in the authors' op order, bit-identical to PyTorch on
//! CPU) or [`batched::EnsembleStepper`] (K runs as one computation: fast mode and ensembles).
//!
//! Every mode checkpoints every `checkpoint_every` iterations and on Ctrl-C/SIGTERM, and
//! [`resume`] continues from the checkpoint; on CPU a resumed run's files are byte-identical to
//! an uninterrupted run's. An ensemble's members checkpoint together and resume together.
pub mod ensemble;
pub mod driver;
pub mod faithful;

pub use driver::{drive, is_saved_step, step, Stepper};
pub use ensemble::{EnsembleStepper, Member};
pub use faithful::FaithfulStepper;

use crate::config::{Config, Mode};
use crate::model::{Arch, Layout};
use crate::run::{Checkpoint, FolderBusy, FolderLock, MetricsRow, RunFolder, State, Summary};
use crate::BadInput;
use anyhow::{anyhow, Result};
use driver::Restored;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tch::{Device, Tensor};

/// How training reports its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// An indicatif bar with iterations per second and ETA (a terminal).
    Bar,
    /// One line per checkpoint on stderr (logs, batch jobs).
    Lines,
    Quiet,
}

/// How training treats its output folders and the process around it.
#[derive(Clone)]
pub struct Options {
    pub progress: Progress,
    /// What a new run may replace in its folder.
    pub replace: Replace,
    /// Write a checkpoint every this many iterations (0: only when interrupted).
    pub checkpoint_every: i64,
    /// Set by a signal handler: stop after the current iteration, checkpoint, and return.
    pub stop: Arc<AtomicBool>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            progress: Progress::Quiet,
            replace: Replace::Nothing,
            checkpoint_every: 250,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub summary: Summary,
    pub metrics: Vec<MetricsRow>,
}

/// What a new run may replace in its folder (anything but `Nothing` clears it once locked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Only a start that failed before its first checkpoint: a config and a `failed` or
    /// `running` summary, nothing else (the default; a retry takes it).
    Nothing,
    /// Anything but a finished run: what `reproduce` and `train --resume` leave behind
    /// (damaged, or without a checkpoint to continue from).
    Leftovers,
    /// Everything, a finished run included (`--force`).
    Anything,
}

impl Replace {
    /// The rule of a command's `--force` flag.
    pub fn forced(force: bool) -> Replace {
        if force {
            Replace::Anything
        } else {
            Replace::Nothing
        }
    }
}

/// Locks folders for new runs, then clears them, unless one holds something `replace` keeps:
/// then nothing is cleared. A finished run kept from a leftovers' replacement is reported as
/// [`FolderBusy`]: it is looked at under the lock, and a finished one there means another
/// worker ended it between the caller's look and this lock, so the caller comes back and
/// finds it done.
fn claim(folders: &[RunFolder], replace: Replace) -> Result<Vec<FolderLock>> {
    let mut locks = Vec::with_capacity(folders.len());
    for folder in folders {
        locks.push(folder.lock()?);
        if !folder.has_config() {
            continue;
        }
        match replace {
            Replace::Nothing if folder.holds_results() => {
                return Err(anyhow!(BadInput(format!(
                    "output folder {} already holds a run; pass --force to replace it or --resume to continue it",
                    folder.dir().display()
                ))));
            }
            Replace::Leftovers if matches!(folder.state(), State::Done(_)) => {
                return Err(anyhow::Error::new(FolderBusy(folder.dir().to_path_buf())));
            }
            _ => {}
        }
    }
    for folder in folders.iter().filter(|f| f.has_config()) {
        folder.clear();
    }
    Ok(locks)
}

/// The bytes a run of `members` members of `cfg` holds at the least: parameters, gradients
/// and optimizer state, the trajectory kept until the end, and one step's activations as the
/// libtorch forward keeps them for its backward (tokens and attention scores per layer and
/// head). The native kernel holds less; this is a floor for the question "can it fit at all".
pub fn memory_floor(cfg: &Config, members: usize) -> f64 {
    let (m, d, t) = (&cfg.model, &cfg.data, &cfg.train);
    let params = Layout::new(&Arch::from_config(cfg)).total as f64;
    let saved = (t.iters / t.save_every) as f64 + 2.0;
    let tokens = (d.context as f64 + 1.0) * (m.dim as f64 + d.context as f64 + 2.0);
    let activations = m.layers as f64 * m.heads as f64 * d.batch as f64 * tokens;
    let elt = t.dtype.kind().elt_size_in_bytes() as f64;
    members as f64 * elt * (5.0 * params + saved * params + activations)
}

/// The bytes of one fixed training set (`data.train_prompts`), which the members of one seed
/// share: each prompt `[n+2, d]` in the run's dtype; 0 for fresh prompts every step.
fn training_set_bytes(cfg: &Config) -> f64 {
    let d = &cfg.data;
    let elt = cfg.train.dtype.kind().elt_size_in_bytes() as f64;
    d.train_prompts as f64 * (d.context as f64 + 2.0) * cfg.model.dim as f64 * elt
}

/// The memory this process may still take: the kernel's MemAvailable, lowered to what a
/// cgroup (a Slurm job, a container) leaves; `None` where neither can be read.
fn memory_available() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024.0)
    });
    let read = |p: &str| -> Option<f64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(current)) => Some((max - current).max(0.0)),
        _ => None, // "max" (no limit) does not parse
    };
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// Refuses, before any folder is touched, a CPU run that cannot fit in the memory left: such a
/// run would otherwise thrash the machine for minutes and then die without a word.
fn check_memory(cfg: &Config, members: usize, seeds: usize, device: Device) -> Result<()> {
    if device != Device::Cpu {
        return Ok(());
    }
    let set = seeds as f64 * training_set_bytes(cfg);
    let (need, Some(have)) = (memory_floor(cfg, members) + set, memory_available()) else {
        return Ok(());
    };
    if need > have {
        if set > need / 2.0 {
            return Err(anyhow!(BadInput(format!(
                "config key data.train_prompts: {seeds} training set(s) of {} prompts take {:.1} GB, and the run needs at least {:.1} GB, more than the {:.1} GB of memory available",
                cfg.data.train_prompts,
                set / 1e9,
                need / 1e9,
                have / 1e9
            ))));
        }
        return Err(anyhow!(BadInput(format!(
            "config key model.layers: {} layer(s) of dim {} with batch {} × context {}{} need at least {:.1} GB, more than the {:.1} GB of memory available",
            cfg.model.layers,
            cfg.model.dim,
            cfg.data.batch,
            cfg.data.context,
            if members > 1 {
                format!(" for {members} members")
            } else {
                String::new()
            },
            need / 1e9,
            have / 1e9
        ))));
    }
    Ok(())
}

/// Runs the loop of `folders`, and marks their summaries `failed` when it stops on an error or
/// a panic (libtorch's failures reach Rust as panics), so that no folder says `running` after
/// its process has given up on it.
fn guarded(
    folders: &[RunFolder],
    run: impl FnOnce() -> Result<Vec<Outcome>>,
) -> Result<Vec<Outcome>> {
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|payload| {
            Err(anyhow!(
                "internal error: {}",
                crate::panic_line(payload.as_ref())
            ))
        });
    if result.is_err() {
        for f in folders {
            if let Ok(mut s) = f.summary() {
                s.status = crate::run::Status::Failed;
                let _ = f.write_summary(&s);
            }
        }
    }
    result
}

/// `linattn train`: trains the run of `cfg` (either mode) into `out`.
pub fn train(cfg: &Config, out: &Path, opts: &Options) -> Result<Outcome> {
    if cfg.train.mode == Mode::Fast {
        let mut outcomes =
            train_ensemble(cfg, &[Member::from_config(cfg)], &[out.to_path_buf()], opts)?;
        return Ok(outcomes.remove(0));
    }
    let device = cfg.device()?;
    check_memory(cfg, 1, 1, device)?;
    let folder = RunFolder::new(out);
    let _lock = claim(std::slice::from_ref(&folder), opts.replace)?;
    folder.create(cfg)?;
    let folders = [folder];
    Ok(guarded(&folders, || {
        let mut stepper = FaithfulStepper::start(cfg, device)?;
        drive(
            &mut stepper,
            std::slice::from_ref(cfg),
            &folders,
            None,
            opts,
        )
    })?
    .remove(0))
}

/// Trains the members of one setting together (fast mode) and writes each member's run folder
/// exactly as `linattn train` does, `config.yaml` with the member's seed, optimizer and learning
/// rate. The wall time in each summary is the ensemble's.
pub fn train_ensemble(
    cfg: &Config,
    members: &[Member],
    outs: &[PathBuf],
    opts: &Options,
) -> Result<Vec<Outcome>> {
    if members.len() != outs.len() {
        return Err(anyhow!(BadInput(format!(
            "an ensemble of {} members needs as many output folders, got {}",
            members.len(),
            outs.len()
        ))));
    }
    let folders: Vec<RunFolder> = outs.iter().map(RunFolder::new).collect();
    for (i, f) in folders.iter().enumerate() {
        if folders[..i].contains(f) {
            return Err(anyhow!(BadInput(format!(
                "output folder {} is given twice",
                f.dir().display()
            ))));
        }
    }
    let device = cfg.device()?;
    // One training set per seed (members of one seed share theirs).
    let mut seeds: Vec<u32> = members.iter().map(|m| m.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    check_memory(cfg, members.len(), seeds.len(), device)?;
    let _locks = claim(&folders, opts.replace)?;
    let configs: Vec<Config> = members.iter().map(|m| m.config(cfg)).collect();
    for (f, c) in folders.iter().zip(&configs) {
        f.create(c)?;
    }
    guarded(&folders, || {
        let mut stepper = EnsembleStepper::start(cfg, members, device)?;
        drive(&mut stepper, &configs, &folders, None, opts)
    })
}

/// Finishes or undoes a checkpoint that a kill cut short (see the driver's `checkpoint`): if
/// every member of `dir`'s ensemble holds the new iteration (as its next checkpoint, or already
/// renamed), the next checkpoints are renamed in place; otherwise they are dropped, and every
/// member stays at the checkpoint before.
pub fn settle_checkpoints(dir: &Path) -> Result<()> {
    let folder = RunFolder::new(dir);
    let Some((_, composition)) = folder
        .checkpoint_next_stamp()?
        .or(folder.checkpoint_stamp()?)
    else {
        return Ok(());
    };
    let folders: Vec<RunFolder> = composition
        .members
        .iter()
        .map(|rel| RunFolder::new(normalize(&dir.join(rel))))
        .collect();
    if !folders.iter().any(RunFolder::has_checkpoint_next) {
        return Ok(());
    }
    let _locks: Vec<FolderLock> = folders.iter().map(RunFolder::lock).collect::<Result<_>>()?;
    let nexts: Vec<Option<i64>> = folders
        .iter()
        .map(|f| Ok(f.checkpoint_next_stamp()?.map(|n| n.0)))
        .collect::<Result<_>>()?;
    let Some(new_iter) = nexts.iter().flatten().copied().max() else {
        return Ok(());
    };
    let mut complete = true;
    for (f, n) in folders.iter().zip(&nexts) {
        let at = match n {
            Some(i) => Some(*i),
            None => f.checkpoint_stamp()?.map(|c| c.0),
        };
        complete &= at == Some(new_iter);
    }
    for (f, n) in folders.iter().zip(&nexts) {
        match (n, complete) {
            (None, _) => {}
            (Some(_), true) => f.promote_checkpoint_next()?,
            (Some(_), false) => f.discard_checkpoint_next(),
        }
    }
    Ok(())
}

/// The run folders of the ensemble that `dir`'s checkpoint belongs to, in order (one folder
/// for a run trained alone). Bad input when `dir` has no checkpoint, or a member's checkpoint is
/// missing or at another iteration.
pub fn checkpointed_group(dir: &Path) -> Result<Vec<RunFolder>> {
    settle_checkpoints(dir)?;
    let folder = RunFolder::new(dir);
    let cfg = folder.config()?;
    let layout = Layout::new(&Arch::from_config(&cfg));
    let own = folder.read_checkpoint(&layout)?;
    let folders: Vec<RunFolder> = own
        .composition
        .members
        .iter()
        .map(|rel| RunFolder::new(normalize(&dir.join(rel))))
        .collect();
    for f in &folders {
        if !f.has_checkpoint() {
            return Err(anyhow!(BadInput(format!(
                "{}: ensemble member {} has no checkpoint; train the ensemble again",
                dir.display(),
                f.dir().display()
            ))));
        }
    }
    Ok(folders)
}

/// `a/b/../c` → `a/c`, without touching the filesystem (folders named in a checkpoint).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The checkpoints of an ensemble's members: each one undamaged, of the config its folder
/// holds (refused when config.yaml was edited since), and all at one iteration.
fn read_checkpoints(folders: &[RunFolder], configs: &[Config]) -> Result<Vec<Checkpoint>> {
    let layout = Layout::new(&Arch::from_config(&configs[0]));
    let checkpoints: Vec<Checkpoint> = folders
        .iter()
        .map(|f| f.read_checkpoint(&layout))
        .collect::<Result<_>>()?;
    for ((f, c), now) in folders.iter().zip(&checkpoints).zip(configs) {
        if let Some(then) = &c.config {
            let changed = crate::config::changed_keys(then, now);
            if !changed.is_empty() {
                return Err(anyhow!(BadInput(format!(
                    "{}: config.yaml was edited after the run started ({}); a resumed run continues the config it started with: put it back, or train the new config into another folder",
                    f.dir().display(),
                    changed.join(", ")
                ))));
            }
        }
    }
    let iter = checkpoints[0].iter;
    if let Some((f, c)) = folders
        .iter()
        .zip(&checkpoints)
        .find(|(_, c)| c.iter != iter)
    {
        return Err(anyhow!(BadInput(format!(
            "{}: checkpointed at iteration {}, but its ensemble at {iter}; train the ensemble again",
            f.dir().display(),
            c.iter
        ))));
    }
    Ok(checkpoints)
}

/// `linattn train --resume DIR`: continues the run in `dir` (and, for a member of an ensemble,
/// the whole ensemble) from its last checkpoint. Returns the outcomes in the ensemble's order.
/// A run interrupted before its first checkpoint is trained again from the start.
pub fn resume(dir: &Path, opts: &Options) -> Result<Vec<Outcome>> {
    let folder = RunFolder::new(dir);
    let cfg = folder.config()?;
    if let State::Done(s) = folder.state() {
        return Err(anyhow!(BadInput(format!(
            "{}: the run already ended ({:?}); nothing to resume",
            dir.display(),
            s.status
        ))));
    }
    settle_checkpoints(dir)?;
    if !folder.has_checkpoint() {
        return Ok(vec![train(
            &cfg,
            dir,
            &Options {
                replace: Replace::Leftovers,
                ..opts.clone()
            },
        )?]);
    }
    let folders = checkpointed_group(dir)?;
    let _locks: Vec<FolderLock> = folders.iter().map(RunFolder::lock).collect::<Result<_>>()?;
    let configs: Vec<Config> = folders
        .iter()
        .map(RunFolder::config)
        .collect::<Result<_>>()?;
    let checkpoints = read_checkpoints(&folders, &configs)?;
    let iter = checkpoints[0].iter;
    let device = configs[0].device()?;
    let mut stepper: Box<dyn Stepper> = match (configs[0].train.mode, configs.len()) {
        (Mode::Faithful, 1) => Box::new(FaithfulStepper::start(&configs[0], device)?),
        _ => {
            // Not the first member's config: its weight decay is 0 when its optimizer has none.
            let base = ensemble::ensemble_config(&configs)?;
            let members: Vec<Member> = configs.iter().map(Member::from_config).collect();
            Box::new(EnsembleStepper::start(&base, &members, device)?)
        }
    };
    for (i, (f, c)) in folders.iter().zip(&checkpoints).enumerate() {
        stepper.load_member(i, &c.flat, &c.optim).map_err(|e| {
            anyhow!(BadInput(format!(
                "{}: {e:#}",
                f.checkpoint_path().display()
            )))
        })?;
    }
    let restored = Restored {
        iter,
        rows: checkpoints.iter().map(|c| c.rows.clone()).collect(),
        saved_steps: checkpoints[0].saved_steps.clone(),
        snapshots: Tensor::stack(
            &checkpoints
                .iter()
                .map(|c| c.snapshots.shallow_clone())
                .collect::<Vec<_>>(),
            1,
        ),
        in_a_row: checkpoints.iter().map(|c| c.in_a_row).collect(),
        active: checkpoints.iter().map(|c| c.active).collect(),
    };
    guarded(&folders, || {
        drive(stepper.as_mut(), &configs, &folders, Some(restored), opts)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Status;

    #[test]
    fn a_run_stopped_by_an_error_or_a_panic_is_marked_failed_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::new(dir.path().join("run"));
        std::fs::create_dir_all(f.dir()).unwrap();
        let running = Summary::of_rust(Status::Running, None, 3, 0.0, Device::Cpu);
        f.write_summary(&running).unwrap();
        let e = guarded(std::slice::from_ref(&f), || {
            Err(anyhow!("no space left on device"))
        });
        assert!(format!("{:#}", e.unwrap_err()).contains("no space"));
        assert_eq!(f.summary().unwrap().status, Status::Failed);

        f.write_summary(&running).unwrap();
        let e = guarded(std::slice::from_ref(&f), || {
            panic!("DefaultCPUAllocator: can't allocate memory")
        });
        assert!(format!("{:#}", e.unwrap_err()).contains("can't allocate memory"));
        assert_eq!(f.summary().unwrap().status, Status::Failed);
    }

    #[test]
    fn a_folder_left_by_a_failed_start_is_taken_by_a_retry_but_one_with_results_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::new(dir.path().join("run"));
        f.create(&Config::default()).unwrap();
        let failed = Summary::of_rust(Status::Failed, None, 0, 0.0, Device::Cpu);
        f.write_summary(&failed).unwrap();
        drop(
            claim(std::slice::from_ref(&f), Replace::Nothing)
                .expect("nothing to keep: a retry takes the folder"),
        );
        assert!(!f.has_config(), "the failed start's files are cleared");

        f.create(&Config::default()).unwrap();
        f.write_metrics(&[]).unwrap();
        let e = claim(std::slice::from_ref(&f), Replace::Nothing)
            .err()
            .expect("metrics are a result");
        assert!(format!("{e:#}").contains("--force"), "{e:#}");
        drop(
            claim(std::slice::from_ref(&f), Replace::Leftovers)
                .expect("an unfinished run's metrics are leftovers"),
        );
        assert!(!f.has_config(), "the leftovers are cleared");
    }

    #[test]
    fn a_worker_that_finds_a_run_finished_under_the_lock_keeps_it_and_says_busy() {
        // The race of two reproduce workers: one saw the run unfinished, the other finished it
        // and let go, then the first took the lock. Replacing leftovers must not clear it.
        let dir = tempfile::tempdir().unwrap();
        let f = RunFolder::new(dir.path().join("run"));
        f.create(&Config::default()).unwrap();
        f.write_metrics(&[]).unwrap();
        std::fs::write(f.dir().join("trajectory.safetensors"), b"").unwrap();
        let done = Summary::of_rust(Status::Completed, None, 3, 0.0, Device::Cpu);
        f.write_summary(&done).unwrap();
        assert!(matches!(f.state(), State::Done(_)));

        let e = claim(std::slice::from_ref(&f), Replace::Leftovers)
            .err()
            .expect("a finished run is kept");
        assert!(e.downcast_ref::<FolderBusy>().is_some(), "{e:#}");
        assert!(matches!(f.state(), State::Done(_)), "nothing was cleared");
        // An ensemble's folders: a leftover before the finished one is not cleared either.
        let leftover = RunFolder::new(dir.path().join("leftover"));
        leftover.create(&Config::default()).unwrap();
        leftover.write_metrics(&[]).unwrap();
        let both = [leftover, f];
        assert!(claim(&both, Replace::Leftovers).is_err());
        assert!(
            both[0].has_config(),
            "nothing is cleared unless everything may be"
        );
        let f = &both[1];
        drop(
            claim(std::slice::from_ref(f), Replace::Anything)
                .expect("--force replaces even a finished run"),
        );
        assert!(!f.has_config());
    }

    #[test]
    fn the_memory_floor_refuses_a_million_layers_and_admits_every_model_of_the_paper() {
        let mut huge = Config::default();
        huge.model.layers = 1_000_000;
        assert!(memory_floor(&huge, 1) > 1e12, "{}", memory_floor(&huge, 1));
        // Fig. 5's model, an ensemble of 24 members (reproduce's largest), saved every 50 steps.
        let mut fig5 = Config::default();
        (fig5.model.layers, fig5.model.dim, fig5.data.context) = (8, 20, 60);
        fig5.train.save_every = 50;
        assert!(memory_floor(&fig5, 24) < 5e9, "{}", memory_floor(&fig5, 24));
        // App. B's MLP variant, every step saved, 12 members.
        let mut app_b = Config::default();
        (app_b.model.mlp_hidden, app_b.data.batch) = (30, 2000);
        app_b.model.parametrization = crate::config::Parametrization::Full;
        assert!(
            memory_floor(&app_b, 12) < 2e9,
            "{}",
            memory_floor(&app_b, 12)
        );
    }
}

//! The training loop (SPEC protocol steps 1–5) and the run folder it writes.
//!
//! A run folder is never left half-written: while training, everything needed to continue
//! (parameters, optimizer state, metrics and trajectory so far) lives in one checkpoint file
//! that is replaced atomically; the final files appear only when the run ends. `--resume`
//! continues from the checkpoint by replaying the data draws, so that a resumed faithful run
//! is bit-identical to an uninterrupted one.
use crate::artifacts::{self, MetricsRow, Status, Summary};
use crate::config::{Config, Mode, Setting};
use crate::data::{self, Batch, DataStream};
use crate::model::{self, Arch, Model};
use crate::optim::{self, Optimizer};
use crate::BadInput;
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub const CHECKPOINT: &str = "checkpoint.safetensors";
const LOCK: &str = ".linattn.lock";

/// What a finished `train` reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub summary: Summary,
    pub metrics: Vec<MetricsRow>,
}

/// How `train` treats the output folder and the process around it.
#[derive(Clone)]
pub struct Options {
    pub progress: bool,
    /// Replace a run that is already in the folder.
    pub force: bool,
    /// Write a checkpoint every this many iterations (0: only when interrupted).
    pub checkpoint_every: i64,
    /// Set by a signal handler: stop after the current iteration, checkpoint, and return.
    pub stop: Arc<AtomicBool>,
}

impl Default for Options {
    fn default() -> Self {
        Options { progress: false, force: false, checkpoint_every: 250, stop: Arc::new(AtomicBool::new(false)) }
    }
}

/// A run in memory: the model, its optimizer and its data stream, positioned at `iter`.
pub struct Run {
    pub cfg: Config,
    pub model: Model,
    pub optimizer: Optimizer,
    pub data: DataStream,
    pub device: Device,
    pub iter: i64,
}

impl Run {
    /// Seeds, initialises the parameters and positions the data stream at iteration 0, in the
    /// reference order: teacher (own seed) → seed(s) → init → batches.
    pub fn start(cfg: &Config) -> Result<Run> {
        if cfg.train.mode == Mode::Fast {
            return Err(anyhow!(BadInput(
                "config key train.mode: a Run steps through the faithful protocol; fast mode trains \
                 through linattn::ensemble::train_ensemble (linattn train accepts both modes)"
                    .into()
            )));
        }
        let device = crate::device::parse(&cfg.train.device)
            .map_err(|e| anyhow!(BadInput(format!("config key train.device: {e}"))))?;
        let arch = Arch::from_config(cfg);
        let teacher = (cfg.data.setting == Setting::MlpTeacher).then(|| data::build_teacher(&cfg.data, cfg.model.dim));
        let numpy = data::seed_both(cfg.train.seed);
        let model = Model::init(arch, cfg.model.init_std, device);
        let optimizer = Optimizer::new(&cfg.train, &model.vs, &model.tensors())?;
        let data = DataStream::new(cfg, teacher, numpy, device);
        Ok(Run { cfg: cfg.clone(), model, optimizer, data, device, iter: 0 })
    }

    /// One iteration: draw a batch, loss, backward, global norm, clip, update. Returns the
    /// row for `metrics.csv`; when the loss or the norm is not finite no update is made.
    pub fn step(&mut self) -> MetricsRow {
        let batch = self.data.next_batch();
        self.step_on(&batch)
    }

    /// [`Run::step`] on a given batch instead of the next one of the run's stream.
    pub fn step_on(&mut self, batch: &Batch) -> MetricsRow {
        let params = self.model.tensors();
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let loss = self.model.loss(batch);
        loss.backward();
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        let norm = optim::global_grad_norm(&grads);
        let row = MetricsRow {
            iter: self.iter,
            train_loss: optim::scalar_f32(&loss) as f64,
            grad_norm: optim::scalar_f32(&norm) as f64,
        };
        if row.is_finite() {
            let t = &self.cfg.train;
            optim::clip_gradients(&grads, &norm, row.grad_norm, t.clip, t.clip_mode);
            self.optimizer.step(&params);
        }
        self.iter += 1;
        row
    }
}

/// `train.skip_nonfinite`: counts the steps in a row whose loss or gradient norm was not finite
/// (such a step made no update) and says when a run has diverged.
pub struct NonFinite {
    limit: i64,
    in_a_row: i64,
}

impl NonFinite {
    /// `rows`: the metrics so far, whose trailing non-finite steps count (a resumed run).
    pub fn new(limit: i64, rows: &[MetricsRow]) -> NonFinite {
        NonFinite { limit, in_a_row: rows.iter().rev().take_while(|r| !r.is_finite()).count() as i64 }
    }

    /// Whether `row`, the next step, ends the run: more than `limit` non-finite steps in a row.
    pub fn diverges(&mut self, row: &MetricsRow) -> bool {
        self.in_a_row = if row.is_finite() { 0 } else { self.in_a_row + 1 };
        self.in_a_row > self.limit
    }
}

/// How many steps of the finished run in `dir` were skipped as non-finite: its metrics.csv's
/// non-finite rows, less the one it diverged at.
pub fn skipped_steps(dir: &Path, summary: &Summary) -> Result<usize> {
    let rows = artifacts::read_metrics(&dir.join("metrics.csv"))?;
    Ok(rows.iter().filter(|r| !r.is_finite() && Some(r.iter) != summary.diverged_at).count())
}

/// Whether step `t` of a run of `iters` iterations is saved in the trajectory.
pub fn is_saved_step(t: i64, save_every: i64, iters: i64) -> bool {
    t % save_every == 0 || t == iters
}

/// Everything recorded so far, besides the live model and optimizer.
struct Progress {
    metrics: Vec<MetricsRow>,
    steps: Vec<i64>,
    snapshots: Vec<Vec<Tensor>>,
}

/// An exclusive lock on a run folder, released when dropped (or when the process dies).
pub struct FolderLock(#[allow(dead_code)] std::fs::File);

pub fn lock_folder(dir: &Path) -> Result<FolderLock> {
    use fs2::FileExt;
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow!(BadInput(format!("output folder {}: cannot write to it ({e})", dir.display()))))?;
    file.try_lock_exclusive().map_err(|_| {
        anyhow!(BadInput(format!("output folder {}: another linattn process is writing into it", dir.display())))
    })?;
    Ok(FolderLock(file))
}

/// Files a run writes, and the measurements taken from its trajectory (`analyze`,
/// `reproduce`); `--force` removes them all before starting again, since measurements of the
/// old trajectory would otherwise be reused for the new one.
const RUN_FILES: &[&str] = &[
    artifacts::CONFIG,
    artifacts::METRICS,
    artifacts::TRAJECTORY,
    artifacts::FINAL,
    artifacts::SUMMARY,
    CHECKPOINT,
    crate::landscape::ANALYSIS,
    crate::reproduce::measure::MEASUREMENTS,
];

/// Removes what a run wrote into `out`, so that training it again cannot leave stale files.
pub fn clear_run_folder(out: &Path) {
    for f in RUN_FILES {
        let _ = std::fs::remove_file(out.join(f));
    }
}

/// `linattn train`: runs the config and writes the run folder `out`.
pub fn train(cfg: &Config, out: &Path, opts: &Options) -> Result<Outcome> {
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow!(BadInput(format!("output folder {}: cannot create it ({e})", out.display()))))?;
    let _lock = lock_folder(out)?;
    if out.join(artifacts::CONFIG).exists() {
        if !opts.force {
            return Err(anyhow!(BadInput(format!(
                "output folder {} already holds a run; pass --force to replace it or --resume to continue it",
                out.display()
            ))));
        }
        clear_run_folder(out);
    }
    if cfg.train.mode == Mode::Fast {
        // Fast mode trains as an ensemble of one (crate::ensemble), where the fast step lives.
        let member = crate::ensemble::Member::from_config(cfg);
        let mut outcomes =
            crate::ensemble::train_ensemble(cfg, &[member], &[out.to_path_buf()], opts.progress, &opts.stop)?;
        return Ok(outcomes.remove(0));
    }
    let run = Run::start(cfg)?;
    create_run_folder(cfg, out)?;
    let progress = Progress { metrics: Vec::new(), steps: vec![0], snapshots: vec![run.model.snapshot()] };
    drive(run, progress, out, opts)
}

/// `linattn train --resume DIR`: continues a run from its last checkpoint.
pub fn resume(out: &Path, opts: &Options) -> Result<Outcome> {
    let cfg = Config::load_run(out)?;
    let _lock = lock_folder(out)?;
    if cfg.train.mode == Mode::Fast {
        return Err(anyhow!(BadInput(format!(
            "{}: --resume continues faithful runs only; start this fast run again with --force",
            out.display()
        ))));
    }
    if let Ok(summary) = Summary::read(out) {
        if summary.status != Status::Running && summary.status != Status::Interrupted {
            return Err(anyhow!(BadInput(format!(
                "{}: the run already ended ({:?}); nothing to resume",
                out.display(),
                summary.status
            ))));
        }
    }
    let mut run = Run::start(&cfg)?;
    let ckpt = out.join(CHECKPOINT);
    if !ckpt.exists() {
        // Interrupted before its first checkpoint: start over.
        let progress = Progress { metrics: Vec::new(), steps: vec![0], snapshots: vec![run.model.snapshot()] };
        return drive(run, progress, out, opts);
    }
    let saved = artifacts::read_safetensors(&ckpt)?;
    let progress = restore(&mut run, &saved).map_err(|e| anyhow!(BadInput(format!("{}: {e:#}", ckpt.display()))))?;
    drive(run, progress, out, opts)
}

/// Writes the checkpoint: live parameters, optimizer state, metrics and trajectory so far.
fn write_checkpoint(run: &Run, progress: &Progress, out: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vec![("iter".into(), Tensor::from_slice(&[run.iter]))];
    for ((name, _), value) in run.model.params.iter().zip(run.model.snapshot()) {
        named.push((format!("param.{name}"), value));
    }
    for (name, t) in run.optimizer.state() {
        named.push((format!("optim.{name}"), t.detach().to_device(Device::Cpu).copy()));
    }
    // A checkpointed (faithful) run is float32: the casts are exact.
    let losses: Vec<f32> = progress.metrics.iter().map(|r| r.train_loss as f32).collect();
    let norms: Vec<f32> = progress.metrics.iter().map(|r| r.grad_norm as f32).collect();
    named.push(("metrics.train_loss".into(), Tensor::from_slice(&losses)));
    named.push(("metrics.grad_norm".into(), Tensor::from_slice(&norms)));
    named.push(("trajectory.step".into(), Tensor::from_slice(&progress.steps)));
    let stacked = artifacts::stack_snapshots(&progress.snapshots, run.model.params.len());
    for ((name, _), t) in run.model.params.iter().zip(stacked) {
        named.push((format!("trajectory.{name}"), t));
    }
    artifacts::write_safetensors(&out.join(CHECKPOINT), &named)
}

/// Puts a freshly started run into the state a checkpoint recorded. The data stream is
/// advanced by replaying the draws of the iterations already done.
fn restore(run: &mut Run, saved: &[(String, Tensor)]) -> Result<Progress> {
    let get = |name: &str| {
        saved.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).ok_or_else(|| anyhow!("has no tensor {name:?}"))
    };
    let iter = get("iter")?.int64_value(&[0]);
    let params: Vec<(String, Tensor)> = run
        .model
        .params
        .iter()
        .map(|(n, _)| Ok((n.clone(), get(&format!("param.{n}"))?)))
        .collect::<Result<_>>()?;
    model::check_shapes(&run.model.arch, &params).context("does not match config.yaml")?;
    let losses = Vec::<f32>::try_from(&get("metrics.train_loss")?.to_kind(Kind::Float))?;
    let norms = Vec::<f32>::try_from(&get("metrics.grad_norm")?.to_kind(Kind::Float))?;
    let steps = Vec::<i64>::try_from(&get("trajectory.step")?.to_kind(Kind::Int64))?;
    if losses.len() as i64 != iter || norms.len() as i64 != iter || iter > run.cfg.train.iters {
        return Err(anyhow!("is inconsistent: iteration {iter} with {} metric rows", losses.len()));
    }
    let mut snapshots: Vec<Vec<Tensor>> = (0..steps.len()).map(|_| Vec::new()).collect();
    for (name, _) in &run.model.params {
        let t = get(&format!("trajectory.{name}"))?;
        if t.size().first() != Some(&(steps.len() as i64)) {
            return Err(anyhow!("trajectory.{name} does not have one entry per saved step"));
        }
        for (s, snap) in snapshots.iter_mut().enumerate() {
            snap.push(t.get(s as i64));
        }
    }
    let optim_state: Vec<(String, Tensor)> = saved
        .iter()
        .filter_map(|(n, t)| n.strip_prefix("optim.").map(|k| (k.to_string(), t.to_device(run.device))))
        .collect();
    if !run.optimizer.load_state(&optim_state) {
        return Err(anyhow!("its optimizer state cannot be restored (optimizer_impl: libtorch keeps it inside libtorch)"));
    }
    tch::no_grad(|| {
        for ((_, var), (_, value)) in run.model.params.iter_mut().zip(&params) {
            var.copy_(value);
        }
    });
    run.data.skip(iter);
    run.iter = iter;
    let metrics = (0..iter as usize)
        .map(|i| MetricsRow { iter: i as i64, train_loss: losses[i] as f64, grad_norm: norms[i] as f64 })
        .collect();
    Ok(Progress { metrics, steps, snapshots })
}

/// The loop shared by fresh and resumed runs, and the files written at its end.
fn drive(mut run: Run, mut progress: Progress, out: &Path, opts: &Options) -> Result<Outcome> {
    let started = Instant::now();
    let cfg = run.cfg.clone();
    let iters = cfg.train.iters;
    let device = run.device;
    let summary_now =
        |status, diverged_at, iters_done| Summary::of_rust(status, diverged_at, iters_done, started.elapsed().as_secs_f64(), device);
    summary_now(Status::Running, None, run.iter).write(out)?;
    let bar = crate::progress::bar(iters as u64, "train", opts.progress);
    bar.set_position(run.iter as u64);
    let mut status = Status::Completed;
    let mut diverged_at = None;
    let mut nonfinite = NonFinite::new(cfg.train.skip_nonfinite, &progress.metrics);
    while run.iter < iters {
        if opts.stop.load(Ordering::Relaxed) {
            status = Status::Interrupted;
            break;
        }
        let row = run.step();
        progress.metrics.push(row);
        bar.inc(1);
        if nonfinite.diverges(&row) {
            status = Status::Diverged;
            diverged_at = Some(row.iter);
            break;
        }
        if is_saved_step(run.iter, cfg.train.save_every, iters) {
            progress.steps.push(run.iter);
            progress.snapshots.push(run.model.snapshot());
        }
        if opts.checkpoint_every > 0 && run.iter % opts.checkpoint_every == 0 && run.iter < iters {
            write_checkpoint(&run, &progress, out)?;
        }
    }
    bar.finish_and_clear();
    if status == Status::Interrupted {
        write_checkpoint(&run, &progress, out)?;
        let summary = summary_now(status, None, run.iter);
        summary.write(out)?;
        return Ok(Outcome { summary, metrics: progress.metrics });
    }
    let names: Vec<String> = run.model.params.iter().map(|(n, _)| n.clone()).collect();
    let trajectory = artifacts::stack_snapshots(&progress.snapshots, names.len());
    let outcome = write_run_folder(
        out,
        RunRecord {
            names,
            metrics: progress.metrics,
            steps: progress.steps,
            trajectory,
            final_params: run.model.snapshot(),
            status,
            diverged_at,
            wall_time_s: started.elapsed().as_secs_f64(),
            device: run.device,
        },
    )?;
    let _ = std::fs::remove_file(out.join(CHECKPOINT));
    Ok(outcome)
}

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
    pub device: Device,
}

/// Creates the run folder and writes the resolved `config.yaml` into it, before training, so
/// that a folder that cannot be written is reported before any work is done.
pub fn create_run_folder(cfg: &Config, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow!(BadInput(format!("output folder {}: cannot create it ({e})", out.display()))))?;
    artifacts::write_atomic(&out.join(artifacts::CONFIG), cfg.to_yaml().as_bytes())
        .map_err(|e| anyhow!(BadInput(format!("output folder {}: cannot write to it ({e:#})", out.display()))))
}

/// Writes `metrics.csv`, `trajectory.safetensors`, `final.safetensors` and `summary.json`.
pub fn write_run_folder(out: &Path, record: RunRecord) -> Result<Outcome> {
    artifacts::write_atomic(&out.join(artifacts::METRICS), artifacts::metrics_csv(&record.metrics).as_bytes())?;
    artifacts::write_trajectory_stacked(&out.join(artifacts::TRAJECTORY), &record.names, &record.steps, &record.trajectory)?;
    let final_params: Vec<(String, Tensor)> = record.names.iter().cloned().zip(record.final_params).collect();
    artifacts::write_safetensors(&out.join(artifacts::FINAL), &final_params)?;
    let summary = Summary::of_rust(record.status, record.diverged_at, record.metrics.len() as i64, record.wall_time_s, record.device);
    summary.write(out).context("writing summary.json")?;
    Ok(Outcome { summary, metrics: record.metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(iter: i64, loss: f64) -> MetricsRow {
        MetricsRow { iter, train_loss: loss, grad_norm: 1.0 }
    }

    #[test]
    fn a_resumed_run_counts_the_nonfinite_steps_it_ended_with() {
        let rows = [row(0, 1.0), row(1, f64::INFINITY), row(2, f64::NAN)];
        let mut resumed = NonFinite::new(2, &rows);
        assert!(resumed.diverges(&row(3, f64::INFINITY)), "the third in a row");
        let mut fresh = NonFinite::new(2, &rows[..1]);
        assert!(!fresh.diverges(&row(1, f64::INFINITY)) && !fresh.diverges(&row(2, f64::NAN)));
        assert!(!fresh.diverges(&row(3, 0.5)) && !fresh.diverges(&row(4, f64::NAN)), "a finite step resets the count");
        assert!(NonFinite::new(0, &[]).diverges(&row(0, f64::NAN)), "0: the first one diverges");
    }
}

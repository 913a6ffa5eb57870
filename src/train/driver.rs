//! The training loop, written once for every mode.
//!
//! The driver owns what training means: the iteration count, the rule for steps whose loss or
//! gradient is not finite ([`NonFinite`]), the clip coefficient ([`optim::clip_coefficient`]),
//! checkpoints (every `--checkpoint-every` iterations and on Ctrl-C/SIGTERM), metrics rows,
//! trajectory snapshots, progress, and the final write. It drives a [`Stepper`], which computes
//! a step (gradients, then an update with the coefficient and mask it is given) and decides
//! nothing about what a step means.
//!
//! Everything a step produces stays on the device: losses, gradient norms and snapshots are
//! gathered in device buffers ([`Recorder`]) and copied to the host every `sync_every` steps
//! (1 for the faithful stepper, which reads the loss on the host as the authors' `loss.item()`
//! does anyway).
use super::{Options, Outcome, Progress};
use crate::config::{Config, TrainConfig};
use crate::model::Layout;
use crate::optim::{self, NonFinite};
use crate::run::{Checkpoint, Composition, MetricsRow, RunFolder, RunRecord, Status, Summary};
use anyhow::{Context, Result};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// One step's per-member values, `[K]` each, on the device.
pub struct Gradients {
    /// The loss of the batch drawn at this iteration, before the update.
    pub losses: Tensor,
    /// The logged gradient norm (of the concatenated gradient), before clipping.
    pub norms: Tensor,
    /// The norm the clip coefficient is computed from (clip_grad_norm_'s own).
    pub clip_norms: Tensor,
}

/// What the driver needs to know of a stepper.
pub struct Shape {
    /// K, the runs that advance together.
    pub members: usize,
    pub device: Device,
    pub layout: Layout,
    /// Steps whose values may wait on the device before the host reads them.
    pub sync_every: i64,
}

/// K runs that advance together; the faithful stepper's K is 1.
pub trait Stepper {
    fn shape(&self) -> &Shape;
    /// Forward and backward on every member's batch of iteration `iter`.
    fn gradients(&mut self, iter: i64) -> Gradients;
    /// Scales each member's gradient by `coef[k]` (if given) and updates the members where
    /// `stepping[k]` is true; the others, and their optimizer state, stay as they are.
    fn update(&mut self, coef: Option<&Tensor>, stepping: &Tensor);
    /// All members' current parameters, `[K, P]`, detached.
    fn flat_params(&self) -> Tensor;
    /// Member `i`'s optimizer state, with stable names, for its checkpoint.
    fn member_state(&self, i: usize) -> Vec<(String, Tensor)>;
    /// Puts member `i` into a checkpointed state: parameters `[P]` and optimizer state.
    fn load_member(&mut self, i: usize, flat: &Tensor, state: &[(String, Tensor)]) -> Result<()>;
    /// Positions the stepper's data at iteration `iter` (a resumed run).
    fn seek(&mut self, iter: i64);
}

/// What a resumed session starts from; a fresh one starts at iteration 0 with nothing recorded.
pub struct Restored {
    pub iter: i64,
    pub rows: Vec<Vec<MetricsRow>>,
    pub saved_steps: Vec<i64>,
    /// `[S, K, P]` on the CPU.
    pub snapshots: Tensor,
    /// Per member: the rule's count of non-finite steps in a row, and whether it is active.
    pub in_a_row: Vec<i64>,
    pub active: Vec<bool>,
}

/// One step as the driver takes it: gradients, the non-finite rule, the clip coefficient, the
/// update. Public for tools and tests that step by hand.
pub fn step(
    stepper: &mut dyn Stepper,
    rule: &mut NonFinite,
    t: &TrainConfig,
    iter: i64,
) -> Gradients {
    let g = stepper.gradients(iter);
    let stepping = rule.step(&g.losses, &g.norms);
    let coef = tch::no_grad(|| optim::clip_coefficient(&g.clip_norms, t.clip, t.clip_mode));
    stepper.update(coef.as_ref(), &stepping);
    g
}

/// Whether step `t` of a run of `iters` iterations is saved in the trajectory.
pub fn is_saved_step(t: i64, save_every: i64, iters: i64) -> bool {
    t % save_every == 0 || t == iters
}

/// Trains the members of `stepper` into `folders` (one per member, created and locked by the
/// caller) from `restored` or from iteration 0. `configs[i]` is member i's resolved config;
/// they share everything the driver reads (iterations, clipping, the non-finite rule).
pub fn drive(
    stepper: &mut dyn Stepper,
    configs: &[Config],
    folders: &[RunFolder],
    restored: Option<Restored>,
    opts: &Options,
) -> Result<Vec<Outcome>> {
    let started = Instant::now();
    let t = configs[0].train.clone();
    let (k, device) = (stepper.shape().members, stepper.shape().device);
    let fresh = restored.is_none();
    let (mut rule, mut recorder, mut iter) = start(stepper, &t, restored);
    let summary_now = |status, iters_done| {
        Summary::of_rust(
            status,
            None,
            iters_done,
            started.elapsed().as_secs_f64(),
            device,
        )
    };
    for (f, rows) in folders.iter().zip(&recorder.rows) {
        f.write_summary(&summary_now(Status::Running, rows.len() as i64))?;
    }
    // An ensemble's members are checkpointed before its first step, so that a kill at any
    // moment leaves every member naming the whole ensemble: `--resume` on any of them then
    // continues all of them together, never one alone.
    if fresh && k > 1 {
        checkpoint(stepper, &mut recorder, &rule, configs, folders, 0)?;
    }
    let progress = ProgressReport::new(opts.progress, t.iters, iter, k);
    let mut interrupted = false;
    while iter < t.iters {
        if opts.stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let g = step(stepper, &mut rule, &t, iter);
        recorder.metrics(iter, &g, &rule.active);
        iter += 1;
        if is_saved_step(iter, t.save_every, t.iters) {
            recorder.snapshot(iter, &stepper.flat_params());
        }
        progress.step(iter);
        if recorder.all_diverged() {
            break;
        }
        if opts.checkpoint_every > 0 && iter % opts.checkpoint_every == 0 && iter < t.iters {
            checkpoint(stepper, &mut recorder, &rule, configs, folders, iter)?;
            progress.checkpoint(iter);
        }
    }
    recorder.flush();
    progress.finish();
    if interrupted {
        checkpoint(stepper, &mut recorder, &rule, configs, folders, iter)?;
        return folders
            .iter()
            .zip(&recorder.rows)
            .map(|(f, rows)| {
                let summary = summary_now(Status::Interrupted, rows.len() as i64);
                f.write_summary(&summary)?;
                Ok(Outcome {
                    summary,
                    metrics: rows.clone(),
                })
            })
            .collect();
    }
    finish(
        stepper,
        &mut recorder,
        folders,
        started.elapsed().as_secs_f64(),
    )
}

/// The non-finite rule, the recorder and the iteration a session starts from: a checkpoint's,
/// or iteration 0 with its snapshot.
fn start(
    stepper: &mut dyn Stepper,
    t: &TrainConfig,
    restored: Option<Restored>,
) -> (NonFinite, Recorder, i64) {
    let Shape {
        members: k,
        device,
        ref layout,
        sync_every,
    } = *stepper.shape();
    let mut rule = NonFinite::new(t.skip_nonfinite, k as i64, device);
    let mut recorder = Recorder::new(k, layout.total, sync_every, t.dtype.kind(), device);
    match restored {
        Some(r) => {
            let iter = r.iter;
            stepper.seek(iter);
            rule.restore(&r.in_a_row, &r.active, device);
            recorder.restore(r);
            (rule, recorder, iter)
        }
        None => {
            recorder.snapshot(0, &stepper.flat_params());
            (rule, recorder, 0)
        }
    }
}

/// Writes every member's results (metrics, trajectory, final parameters, then the summary that
/// marks it done), then removes the checkpoints.
fn finish(
    stepper: &dyn Stepper,
    recorder: &mut Recorder,
    folders: &[RunFolder],
    wall: f64,
) -> Result<Vec<Outcome>> {
    let device = stepper.shape().device;
    let snapshots = recorder.snapshots();
    let flat = stepper.flat_params().to_device(Device::Cpu);
    let mut outcomes = vec![];
    for (i, f) in folders.iter().enumerate() {
        let record = recorder.record(&stepper.shape().layout, &snapshots, &flat, i, wall, device);
        let metrics = record.metrics.clone();
        let summary = f
            .finish(record)
            .with_context(|| format!("writing {}", f.dir().display()))?;
        outcomes.push(Outcome { summary, metrics });
    }
    // Only now, with every member's results written: a process killed while writing them
    // resumes the whole ensemble from the checkpoints, as it was.
    for f in folders {
        f.remove_checkpoint();
    }
    Ok(outcomes)
}

/// Writes every member's checkpoint and its metrics so far.
fn checkpoint(
    stepper: &dyn Stepper,
    recorder: &mut Recorder,
    rule: &NonFinite,
    configs: &[Config],
    folders: &[RunFolder],
    iter: i64,
) -> Result<()> {
    recorder.flush();
    let layout = &stepper.shape().layout;
    let flat = stepper.flat_params().to_device(Device::Cpu);
    let snapshots = recorder.snapshots();
    let in_a_row = Vec::<i64>::try_from(&rule.in_a_row.to_device(Device::Cpu))?;
    let active = Vec::<i64>::try_from(&rule.active.to_kind(Kind::Int64).to_device(Device::Cpu))?;
    let dirs: Vec<&std::path::Path> = folders.iter().map(RunFolder::dir).collect();
    for (i, f) in folders.iter().enumerate() {
        let ckpt = Checkpoint {
            iter,
            composition: Composition::of(&dirs, i)?,
            // What the run started from, so that a resume can refuse an edited config.yaml.
            config: Some(configs[i].clone()),
            flat: flat.get(i as i64),
            optim: stepper
                .member_state(i)
                .into_iter()
                .map(|(name, t)| (name, t.detach().to_device(Device::Cpu)))
                .collect(),
            rows: recorder.rows[i].clone(),
            saved_steps: recorder.saved_steps.clone(),
            snapshots: snapshots.select(1, i as i64),
            saved: recorder.saved_steps.len() as i64,
            in_a_row: in_a_row[i],
            active: active[i] != 0,
        };
        f.write_checkpoint_next(&ckpt, layout)
            .with_context(|| format!("checkpointing {}", f.dir().display()))?;
    }
    // Only once every member's next checkpoint is written are they renamed in place: a kill
    // before this point leaves every member at the old iteration, one after it leaves every
    // member either renamed or with its next checkpoint, which resume then renames
    // (crate::train::settle_checkpoints).
    for (f, rows) in folders.iter().zip(&recorder.rows) {
        f.promote_checkpoint_next()?;
        f.write_metrics(rows)?;
    }
    Ok(())
}

/// Gathers per-step metrics and parameter snapshots in device buffers and copies them to the
/// host every `chunk` steps, so that the loop never waits for the device in between.
pub struct Recorder {
    k: usize,
    chunk: i64,
    /// `[chunk, 3, K]`: loss, gradient norm, and whether the member is still active after it.
    log: Tensor,
    log_iters: Vec<i64>,
    /// `[chunk, K, P]`: the pending snapshots.
    snaps: Tensor,
    snap_pending: i64,
    rows: Vec<Vec<MetricsRow>>,
    diverged_at: Vec<Option<i64>>,
    saved_steps: Vec<i64>,
    /// Flushed snapshots, `[s, K, P]` each, on the CPU.
    saved: Vec<Tensor>,
}

impl Recorder {
    fn new(k: usize, p: i64, chunk: i64, kind: Kind, device: Device) -> Recorder {
        let kk = k as i64;
        Recorder {
            k,
            chunk,
            log: Tensor::empty([chunk, 3, kk], (kind, device)),
            log_iters: Vec::new(),
            snaps: Tensor::empty([chunk, kk, p], (kind, device)),
            snap_pending: 0,
            rows: vec![Vec::new(); k],
            diverged_at: vec![None; k],
            saved_steps: Vec::new(),
            saved: Vec::new(),
        }
    }

    fn restore(&mut self, r: Restored) {
        for (i, rows) in r.rows.iter().enumerate() {
            if !r.active[i] {
                self.diverged_at[i] = rows.last().map(|row| row.iter);
            }
        }
        self.rows = r.rows;
        self.saved_steps = r.saved_steps;
        self.saved = vec![r.snapshots];
    }

    fn metrics(&mut self, iter: i64, g: &Gradients, active: &Tensor) {
        if self.log_iters.len() as i64 == self.chunk {
            self.flush();
        }
        let slot = self.log.get(self.log_iters.len() as i64);
        slot.get(0).copy_(&g.losses.detach());
        slot.get(1).copy_(&g.norms);
        slot.get(2).copy_(active);
        self.log_iters.push(iter);
        if self.chunk == 1 {
            self.flush();
        }
    }

    fn snapshot(&mut self, step: i64, flat: &Tensor) {
        if self.snap_pending == self.chunk {
            self.flush();
        }
        self.snaps.get(self.snap_pending).copy_(flat);
        self.snap_pending += 1;
        self.saved_steps.push(step);
    }

    /// Copies the pending metrics and snapshots to the host (one copy each).
    fn flush(&mut self) {
        if !self.log_iters.is_empty() {
            let host = self
                .log
                .narrow(0, 0, self.log_iters.len() as i64)
                .to_device(Device::Cpu);
            // Read in the run's own dtype: a float64 run's loss may lie beyond float32's range.
            let values = Vec::<f64>::try_from(host.reshape([-1]).to_kind(Kind::Double))
                .expect("float metrics");
            let k = self.k;
            for (s, &iter) in self.log_iters.iter().enumerate() {
                for m in 0..k {
                    if self.diverged_at[m].is_some() {
                        continue;
                    }
                    let at = |q: usize| values[(3 * s + q) * k + m];
                    self.rows[m].push(MetricsRow {
                        iter,
                        train_loss: at(0),
                        grad_norm: at(1),
                    });
                    if at(2) == 0.0 {
                        self.diverged_at[m] = Some(iter);
                    }
                }
            }
            self.log_iters.clear();
        }
        if self.snap_pending > 0 {
            // An owned copy: on a CPU device `to_device` returns the buffer itself.
            self.saved.push(
                self.snaps
                    .narrow(0, 0, self.snap_pending)
                    .to_device(Device::Cpu)
                    .copy(),
            );
            self.snap_pending = 0;
        }
    }

    /// Whether every member has diverged (as of the last flush).
    fn all_diverged(&self) -> bool {
        self.diverged_at.iter().all(Option::is_some)
    }

    /// All snapshots taken, `[S, K, P]` on the CPU. Call after a flush.
    fn snapshots(&mut self) -> Tensor {
        if self.saved.len() > 1 {
            self.saved = vec![Tensor::cat(&self.saved, 0)];
        }
        self.saved[0].shallow_clone()
    }

    /// Member `i`'s run record; `snapshots` is [`Recorder::snapshots`], `flat` the final `[K, P]`.
    fn record(
        &self,
        layout: &Layout,
        snapshots: &Tensor,
        flat: &Tensor,
        i: usize,
        wall_time_s: f64,
        device: Device,
    ) -> RunRecord {
        let diverged_at = self.diverged_at[i];
        // A diverged run keeps the steps up to the one it diverged at.
        let keep: Vec<i64> = (0..self.saved_steps.len() as i64)
            .filter(|&s| diverged_at.is_none_or(|t| self.saved_steps[s as usize] <= t))
            .collect();
        let kept = snapshots
            .select(1, i as i64)
            .index_select(0, &Tensor::from_slice(&keep)); // [S, P]
        RunRecord {
            names: layout.names.clone(),
            metrics: self.rows[i].clone(),
            steps: keep.iter().map(|&s| self.saved_steps[s as usize]).collect(),
            trajectory: layout
                .views(&kept)
                .into_iter()
                .map(|t| t.contiguous())
                .collect(),
            final_params: layout
                .unflatten(&flat.get(i as i64))
                .into_iter()
                .map(|t| t.contiguous())
                .collect(),
            status: if diverged_at.is_some() {
                Status::Diverged
            } else {
                Status::Completed
            },
            diverged_at,
            wall_time_s,
            device,
        }
    }
}

/// The bar on a terminal; one line per checkpoint elsewhere.
struct ProgressReport {
    mode: Progress,
    bar: indicatif::ProgressBar,
    iters: i64,
    from: i64,
    members: usize,
    started: Instant,
}

impl ProgressReport {
    fn new(mode: Progress, iters: i64, from: i64, members: usize) -> ProgressReport {
        let what = if members == 1 {
            "train".to_string()
        } else {
            format!("train ×{members}")
        };
        let bar = crate::progress::bar(iters as u64, &what, mode == Progress::Bar);
        bar.set_position(from as u64);
        ProgressReport {
            mode,
            bar,
            iters,
            from,
            members,
            started: Instant::now(),
        }
    }

    fn step(&self, iter: i64) {
        self.bar.set_position(iter as u64);
    }

    fn checkpoint(&self, iter: i64) {
        if self.mode != Progress::Lines {
            return;
        }
        let rate = (iter - self.from) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let eta = (self.iters - iter) as f64 / rate.max(1e-9);
        let runs = if self.members == 1 {
            String::new()
        } else {
            format!(" of {} runs", self.members)
        };
        eprintln!(
            "train: iteration {iter}/{}{runs}, {rate:.1} it/s, eta {}; checkpoint written",
            self.iters,
            crate::progress::duration(eta)
        );
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

//! The training loop (SPEC protocol steps 1–5) and the run folder it writes.
use crate::artifacts::{self, MetricsRow, Status, Summary};
use crate::config::{Config, Mode, Setting};
use crate::data::{self, Batch, DataStream};
use crate::model::{Arch, Model};
use crate::optim::{self, Optimizer};
use crate::BadInput;
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Tensor};

/// What a finished `train` reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub summary: Summary,
    pub metrics: Vec<MetricsRow>,
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
            train_loss: optim::scalar_f32(&loss),
            grad_norm: optim::scalar_f32(&norm),
        };
        if row.train_loss.is_finite() && row.grad_norm.is_finite() {
            let t = &self.cfg.train;
            optim::clip_gradients(&grads, &norm, row.grad_norm as f64, t.clip, t.clip_mode);
            self.optimizer.step(&params);
        }
        self.iter += 1;
        row
    }
}

/// Whether step `t` of a run of `iters` iterations is saved in the trajectory.
pub fn is_saved_step(t: i64, save_every: i64, iters: i64) -> bool {
    t % save_every == 0 || t == iters
}

/// `linattn train`: runs the config and writes the run folder `out`. Fast mode trains as an
/// ensemble of one ([`crate::ensemble`]), which is where the fast step lives.
pub fn train(cfg: &Config, out: &Path, progress: bool) -> Result<Outcome> {
    if cfg.train.mode == Mode::Fast {
        let member = crate::ensemble::Member::from_config(cfg);
        let mut outcomes = crate::ensemble::train_ensemble(cfg, &[member], &[out.to_path_buf()], progress)?;
        return Ok(outcomes.remove(0));
    }
    create_run_folder(cfg, out)?;
    let started = Instant::now();
    let mut run = Run::start(cfg)?;
    let names: Vec<String> = run.model.params.iter().map(|(n, _)| n.clone()).collect();
    let iters = cfg.train.iters;
    let bar = crate::progress::bar(iters as u64, "train", progress);
    let mut metrics = Vec::with_capacity(iters as usize);
    let mut steps = vec![0];
    let mut snapshots = vec![run.model.snapshot()];
    let mut status = Status::Completed;
    let mut diverged_at = None;
    while run.iter < iters {
        let row = run.step();
        metrics.push(row);
        bar.inc(1);
        if !(row.train_loss.is_finite() && row.grad_norm.is_finite()) {
            status = Status::Diverged;
            diverged_at = Some(row.iter);
            break;
        }
        if is_saved_step(run.iter, cfg.train.save_every, iters) {
            steps.push(run.iter);
            snapshots.push(run.model.snapshot());
        }
    }
    bar.finish_and_clear();
    let trajectory = (0..names.len())
        .map(|i| Tensor::stack(&snapshots.iter().map(|s| &s[i]).collect::<Vec<_>>(), 0))
        .collect();
    write_run_folder(
        out,
        RunRecord {
            names,
            metrics,
            steps,
            trajectory,
            final_params: run.model.snapshot(),
            status,
            diverged_at,
            wall_time_s: started.elapsed().as_secs_f64(),
            device: run.device,
        },
    )
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
    let summary = Summary {
        status: record.status,
        diverged_at: record.diverged_at,
        iters_done: record.metrics.len() as i64,
        wall_time_s: record.wall_time_s,
        device: crate::device::describe(record.device),
        side: "rust".into(),
    };
    summary.write(out).context("writing summary.json")?;
    Ok(Outcome { summary, metrics: record.metrics })
}

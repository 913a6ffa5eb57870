//! Ensemble training: K runs of one setting (seeds × optimizers × learning rates) trained
//! together as one batched computation on one device. This is also how a single
//! `train.mode: fast` run trains (an ensemble of one).
//!
//! Why: a run of the paper's model is thousands of tiny operations per step, so its cost is
//! the overhead per operation, not arithmetic. Giving every parameter a leading member axis
//! K makes one operation do the work of K runs.
//!
//! Each member keeps what makes it a run of its own: its data stream (its seed, see
//! [`DeviceStream`]), its initial parameters (drawn exactly as the faithful run with that seed
//! draws them), its optimizer and learning rate, its optimizer state, its gradient clipping,
//! and its divergence status. Members never mix: every operation of the step acts on each
//! member's slice alone, so a member that diverges stops updating (its iteration is reported)
//! and the others go on.
//!
//! Within the step nothing is read back to the host: clipping and the divergence test are
//! computed on the device, and the metrics and trajectory snapshots are gathered in device
//! buffers that are copied to the host once every [`CHUNK`] steps.
use crate::artifacts::{MetricsRow, Status, Summary};
use crate::config::{ClipMode, Config, Mode, OptimizerKind, Setting};
use crate::data::{self, Batch, DeviceStream};
use crate::model::{self, Arch};
use crate::train::{self, Outcome, RunRecord};
use crate::BadInput;
use anyhow::{anyhow, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Steps gathered on the device before the metrics and snapshots are copied to the host.
pub const CHUNK: i64 = 64;

/// One run of an ensemble: what differs between the runs of one setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    pub seed: u32,
    pub optimizer: OptimizerKind,
    pub lr: f64,
}

impl Member {
    /// The run that `cfg` describes on its own.
    pub fn from_config(cfg: &Config) -> Member {
        Member { seed: cfg.train.seed, optimizer: cfg.train.optimizer, lr: cfg.train.lr }
    }

    /// The resolved config of this member's run folder: `cfg` with this member's seed,
    /// optimizer and learning rate, in fast mode (its data stream and arithmetic are fast mode's,
    /// so `linattn train` on this config repeats the run).
    pub fn config(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        c.train.seed = self.seed;
        c.train.optimizer = self.optimizer;
        c.train.lr = self.lr;
        c.train.mode = Mode::Fast;
        c
    }
}

/// Where each parameter lives in a member's flat parameter vector.
struct Layout {
    names: Vec<String>,
    shapes: Vec<Vec<i64>>,
    offsets: Vec<i64>,
    total: i64,
}

impl Layout {
    fn new(arch: &Arch) -> Layout {
        let (mut names, mut shapes, mut offsets, mut total) = (vec![], vec![], vec![], 0);
        for (name, shape) in arch.param_specs() {
            offsets.push(total);
            total += shape.iter().product::<i64>();
            names.push(name);
            shapes.push(shape);
        }
        Layout { names, shapes, offsets, total }
    }

    /// The parameters of all members as views of `flat [K, P]`, shaped `[K, *shape]`.
    fn views(&self, flat: &Tensor) -> Vec<Tensor> {
        let k = flat.size()[0];
        self.shapes
            .iter()
            .zip(&self.offsets)
            .map(|(shape, &off)| {
                let mut s = vec![k];
                s.extend(shape);
                flat.narrow(1, off, shape.iter().product()).view(s.as_slice())
            })
            .collect()
    }
}

/// SGD with momentum and Adam for all members at once, on flat `[K, P]` tensors.
///
/// The arithmetic is torch.optim's (`buf = μ·buf + g`, `p -= lr·buf`; Adam with bias
/// corrections, weight decay 0), written as a few whole-ensemble tensor ops: every member
/// keeps its own buffers and learning rate; a member whose kind is the other one simply never
/// reads the buffers it does not use. A zero momentum buffer makes the first step `buf = g`,
/// exactly torch's `clone(g)`.
///
/// A member that does not step (a skipped non-finite step, or a diverged run) keeps its buffers
/// and its own step count, as torch.optim's state does when `step()` is not called; so Adam's
/// bias corrections are per member, read from a table computed on the host in float64 exactly
/// as torch computes the scalars.
struct Optimizer {
    momentum: f64,
    betas: [f64; 2],
    eps: f64,
    /// `[K, 1]` learning rates.
    lr: Tensor,
    /// `[K, 1]`, true for Adam members; `None` when all members use the same kind.
    is_adam: Option<Tensor>,
    any_sgd: bool,
    any_adam: bool,
    momentum_buf: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// `[K]` int64: how many updates each member has made.
    steps: Tensor,
    /// Updates made by the ensemble (an upper bound of `steps`).
    step: i64,
    /// `[T, 1]` in the run's dtype, T > `step`: `1/(1-β₁ᵗ)` and `√(1-β₂ᵗ)` for t = 0, 1, ….
    bias_corrections: (Tensor, Tensor),
}

impl Optimizer {
    fn new(cfg: &Config, members: &[Member], k: i64, p: i64, device: Device) -> Optimizer {
        let kind = cfg.train.dtype.kind();
        // The learning rate as the run's dtype holds it (a float32 run's is float32, as in torch).
        let lrs: Vec<f64> = members.iter().map(|m| m.lr).collect();
        let adam: Vec<bool> = members.iter().map(|m| m.optimizer == OptimizerKind::Adam).collect();
        let (any_adam, any_sgd) = (adam.iter().any(|&a| a), adam.iter().any(|&a| !a));
        let zeros = || Tensor::zeros([k, p], (kind, device));
        Optimizer {
            momentum: cfg.train.momentum,
            betas: cfg.train.betas,
            eps: cfg.train.eps,
            lr: Tensor::from_slice(&lrs).to_kind(kind).view([k, 1]).to_device(device),
            is_adam: (any_adam && any_sgd).then(|| Tensor::from_slice(&adam).view([k, 1]).to_device(device)),
            any_sgd,
            any_adam,
            momentum_buf: if any_sgd { zeros() } else { Tensor::new() },
            exp_avg: if any_adam { zeros() } else { Tensor::new() },
            exp_avg_sq: if any_adam { zeros() } else { Tensor::new() },
            steps: Tensor::zeros([k], (Kind::Int64, device)),
            step: 0,
            bias_corrections: bias_correction_table(cfg.train.betas, cfg.train.iters + 1, kind, device),
        }
    }

    /// The update `Δ` (to subtract from the parameters) for the clipped gradients `grad [K, P]`
    /// of the members where `stepping [K]` is true; the others' state is left as it was.
    fn update(&mut self, grad: &Tensor, stepping: &Tensor) -> Tensor {
        self.step += 1;
        let rows = stepping.unsqueeze(1);
        let _ = self.steps.g_add_(&stepping.to_kind(Kind::Int64));
        let sgd = self.any_sgd.then(|| {
            let next = &self.momentum_buf * self.momentum + grad;
            self.momentum_buf = next.where_self(&rows, &self.momentum_buf);
            self.momentum_buf.shallow_clone()
        });
        let adam = self.any_adam.then(|| {
            let (b1, b2) = (self.betas[0], self.betas[1]);
            if self.step >= self.bias_corrections.0.size()[0] {
                let len = 2 * self.step;
                self.bias_corrections = bias_correction_table(self.betas, len, grad.kind(), grad.device());
            }
            // A member that does not step may read t = 0's entries (inf): its update is discarded.
            let inv_bias_correction1 = self.bias_corrections.0.index_select(0, &self.steps);
            let bias_correction2_sqrt = self.bias_corrections.1.index_select(0, &self.steps);
            self.exp_avg = self.exp_avg.lerp(grad, 1.0 - b1).where_self(&rows, &self.exp_avg);
            self.exp_avg_sq =
                (&self.exp_avg_sq * b2).addcmul(&(grad * (1.0 - b2)), grad).where_self(&rows, &self.exp_avg_sq);
            let denom = self.exp_avg_sq.sqrt() / bias_correction2_sqrt + self.eps;
            &self.exp_avg / denom * inv_bias_correction1
        });
        let direction = match (sgd, adam, &self.is_adam) {
            (Some(s), Some(a), Some(is_adam)) => a.where_self(is_adam, &s),
            (Some(s), None, _) => s,
            (None, Some(a), _) => a,
            _ => unreachable!("an ensemble has at least one member"),
        };
        direction * &self.lr
    }
}

/// `(1/(1-β₁ᵗ), √(1-β₂ᵗ))` for t = 0..len, each `[len, 1]` in `kind`: the f64 scalars torch.optim's
/// Adam computes, rounded to the run's dtype as a tensor-scalar operation rounds them.
fn bias_correction_table(betas: [f64; 2], len: i64, kind: Kind, device: Device) -> (Tensor, Tensor) {
    let column = |f: &dyn Fn(f64) -> f64| {
        let v: Vec<f64> = (0..len).map(|t| f(t as f64)).collect();
        Tensor::from_slice(&v).to_kind(kind).view([len, 1]).to_device(device)
    };
    (column(&|t| 1.0 / (1.0 - betas[0].powf(t))), column(&|t| (1.0 - betas[1].powf(t)).powf(0.5)))
}

/// Losses and gradient norms of one step, `[K]` each, on the device.
pub struct StepOutput {
    pub losses: Tensor,
    pub grad_norms: Tensor,
}

/// K runs in memory, positioned at iteration `iter`.
pub struct Ensemble {
    pub cfg: Config,
    pub members: Vec<Member>,
    pub arch: Arch,
    pub device: Device,
    pub iter: i64,
    layout: Layout,
    /// All members' parameters, `[K, P]`: one leaf, so the gradient, its norm, clipping and
    /// the optimizer are one tensor op each for the whole ensemble.
    theta: Tensor,
    optimizer: Optimizer,
    /// `[K]`: false once a member has diverged (more than `train.skip_nonfinite` steps in a row
    /// whose loss or gradient was not finite).
    active: Tensor,
    /// `[K]` int64: each member's current run of non-finite steps.
    nonfinite_in_a_row: Tensor,
    stream: DeviceStream,
    /// Which stream each member reads (members with one seed share one); `None`: stream i.
    rows: Option<Tensor>,
    /// Set when the ensemble lowered libtorch's thread count: restores it when dropped.
    _threads: Option<ThreadCount>,
}

/// libtorch's intra-op thread count is per process; this sets it for as long as the value
/// lives and then puts the previous count back, so that a caller who trains an ensemble and
/// then measures in the same process gets its own thread count again.
struct ThreadCount {
    previous: i32,
}

impl ThreadCount {
    fn set(threads: i32) -> ThreadCount {
        let previous = tch::get_num_threads();
        tch::set_num_threads(threads);
        ThreadCount { previous }
    }
}

impl Drop for ThreadCount {
    fn drop(&mut self) {
        tch::set_num_threads(self.previous);
    }
}

impl Ensemble {
    /// Initialises every member as the faithful run with its seed does (teacher with its own
    /// seed, then seed(s), then the parameters on the CPU generator), on `cfg.train.device`.
    pub fn start(cfg: &Config, members: &[Member]) -> Result<Ensemble> {
        if members.is_empty() {
            return Err(anyhow!(BadInput("an ensemble needs at least one member".into())));
        }
        for m in members {
            if !(m.lr > 0.0 && m.lr.is_finite()) {
                return Err(anyhow!(BadInput(format!("ensemble member {m:?}: lr must be > 0"))));
            }
        }
        let device = crate::device::parse(&cfg.train.device)
            .map_err(|e| anyhow!(BadInput(format!("config key train.device: {e}"))))?;
        let arch = Arch::from_config(cfg);
        let threads = (device == Device::Cpu && model::fast_prefers_one_thread(&arch, cfg.data.batch, members.len() as i64))
            .then(|| ThreadCount::set(1));
        let layout = Layout::new(&arch);
        let teacher =
            (cfg.data.setting == Setting::MlpTeacher).then(|| data::build_teacher(&cfg.data, cfg.model.dim));
        let flat_inits: Vec<Tensor> = members
            .iter()
            .map(|m| {
                let _ = data::seed_both(m.seed);
                let values = model::init_values(&arch, cfg.model.init_std);
                Tensor::cat(&values.iter().map(|v| v.reshape([-1])).collect::<Vec<_>>(), 0)
            })
            .collect();
        // Drawn in float32 as the faithful run draws them, then widened for a float64 run.
        let theta =
            Tensor::stack(&flat_inits, 0).to_kind(cfg.train.dtype.kind()).to_device(device).set_requires_grad(true);
        let k = members.len() as i64;

        let mut seeds: Vec<u32> = Vec::new();
        let rows: Vec<i64> = members
            .iter()
            .map(|m| match seeds.iter().position(|&s| s == m.seed) {
                Some(i) => i as i64,
                None => {
                    seeds.push(m.seed);
                    seeds.len() as i64 - 1
                }
            })
            .collect();
        let identity = rows.iter().enumerate().all(|(i, &r)| r == i as i64);
        Ok(Ensemble {
            cfg: cfg.clone(),
            members: members.to_vec(),
            arch,
            device,
            iter: 0,
            optimizer: Optimizer::new(cfg, members, k, layout.total, device),
            layout,
            theta,
            active: Tensor::ones([k], (Kind::Bool, device)),
            nonfinite_in_a_row: Tensor::zeros([k], (Kind::Int64, device)),
            stream: DeviceStream::new(cfg, &seeds, teacher, device),
            rows: (!identity).then(|| Tensor::from_slice(&rows).to_device(device)),
            _threads: threads,
        })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Parameter names in `state_dict` order.
    pub fn names(&self) -> &[String] {
        &self.layout.names
    }

    /// All members' parameters, `[K, P]` (each member's parameters flattened in `state_dict`
    /// order).
    pub fn flat_params(&self) -> &Tensor {
        &self.theta
    }

    /// Member `i`'s current parameters in `state_dict` shapes, copied to the CPU.
    pub fn member_params(&self, i: usize) -> Vec<Tensor> {
        let row = self.theta.detach().get(i as i64).to_device(Device::Cpu);
        self.layout.views(&row.unsqueeze(0)).into_iter().map(|t| t.squeeze_dim(0).copy()).collect()
    }

    /// One iteration on each member's own data stream.
    pub fn step(&mut self) -> StepOutput {
        let batch = self.stream.batch(self.iter);
        let rows = self.rows.as_ref().map(|r| r.shallow_clone());
        self.step_on(&batch, rows.as_ref())
    }

    /// One iteration on given batches: `batch` holds U streams (`z [U, B, n+1, d+1]`) and member
    /// i reads stream `member_rows[i]` (`None`: stream i). This is how a test feeds an ensemble
    /// the batches of another run.
    pub fn step_on(&mut self, batch: &Batch, member_rows: Option<&Tensor>) -> StepOutput {
        assert!(
            member_rows.is_some() || batch.z.size()[0] == self.len() as i64,
            "without member_rows the batch must hold one stream per member"
        );
        let params = self.layout.views(&self.theta);
        let losses = model::fast_losses(&self.arch, &params, batch, member_rows);
        // Members are independent, so the gradient of the sum is every member's own gradient.
        let grad = Tensor::run_backward(&[losses.sum(self.theta.kind())], &[&self.theta], false, false)
            .pop()
            .expect("one gradient");
        let t = &self.cfg.train;
        let grad_norms = tch::no_grad(|| {
            let norms = grad.norm_scalaropt_dim(2, [1i64].as_slice(), false);
            let finite = losses.isfinite().logical_and(&norms.isfinite());
            self.nonfinite_in_a_row = (&self.nonfinite_in_a_row + 1).where_scalarother(&finite.logical_not(), 0);
            let _ = self.active.logical_and_(&self.nonfinite_in_a_row.le(t.skip_nonfinite));
            let stepping = self.active.logical_and(&finite);
            let clipped = if t.clip > 0.0 {
                // threshold: g·c/‖g‖ when ‖g‖ > c; clip_grad_norm: g·min(1, c/(‖g‖+1e-6)).
                let total = match t.clip_mode {
                    ClipMode::Threshold => norms.shallow_clone(),
                    ClipMode::ClipGradNorm => &norms + 1e-6,
                };
                let coef = (total.reciprocal() * t.clip).clamp_max(1.0);
                &grad * coef.unsqueeze(1)
            } else {
                grad.shallow_clone()
            };
            let delta = self.optimizer.update(&clipped, &stepping).where_scalarother(&stepping.unsqueeze(1), 0.0);
            let _ = self.theta.g_sub_(&delta);
            norms
        });
        self.iter += 1;
        StepOutput { losses: losses.detach(), grad_norms }
    }
}

/// Gathers per-step metrics and parameter snapshots in device buffers and copies them to the
/// host in chunks, so that the training loop never waits for the device.
pub struct Recorder {
    k: usize,
    /// `[CHUNK, 2, K]`: loss and gradient norm of the pending steps.
    log: Tensor,
    log_iters: Vec<i64>,
    /// `[CHUNK, K, P]`: the pending snapshots.
    snaps: Tensor,
    snap_pending: usize,
    rows: Vec<Vec<MetricsRow>>,
    nonfinite: Vec<train::NonFinite>,
    diverged_at: Vec<Option<i64>>,
    saved_steps: Vec<i64>,
    saved: Vec<Tensor>,
}

impl Recorder {
    pub fn new(ensemble: &Ensemble) -> Recorder {
        let (k, p) = (ensemble.len() as i64, ensemble.layout.total);
        let opts = (ensemble.theta.kind(), ensemble.device);
        Recorder {
            k: k as usize,
            log: Tensor::empty([CHUNK, 2, k], opts),
            log_iters: Vec::new(),
            snaps: Tensor::empty([CHUNK, k, p], opts),
            snap_pending: 0,
            rows: vec![Vec::new(); k as usize],
            nonfinite: (0..k).map(|_| train::NonFinite::new(ensemble.cfg.train.skip_nonfinite, &[])).collect(),
            diverged_at: vec![None; k as usize],
            saved_steps: Vec::new(),
            saved: Vec::new(),
        }
    }

    /// Records the metrics of iteration `iter`.
    pub fn metrics(&mut self, iter: i64, out: &StepOutput) {
        if self.log_iters.len() as i64 == CHUNK {
            self.flush();
        }
        let slot = self.log.get(self.log_iters.len() as i64);
        slot.get(0).copy_(&out.losses);
        slot.get(1).copy_(&out.grad_norms);
        self.log_iters.push(iter);
    }

    /// Records the parameters at `step` (before update `step`).
    pub fn snapshot(&mut self, step: i64, ensemble: &Ensemble) {
        if self.snap_pending as i64 == CHUNK {
            self.flush();
        }
        self.snaps.get(self.snap_pending as i64).copy_(&ensemble.theta.detach());
        self.snap_pending += 1;
        self.saved_steps.push(step);
    }

    /// Copies the pending metrics and snapshots to the host (one copy each).
    pub fn flush(&mut self) {
        if !self.log_iters.is_empty() {
            let host = self.log.narrow(0, 0, self.log_iters.len() as i64).to_device(Device::Cpu);
            // Divergence is judged in the run's own dtype: a float64 run's loss may lie beyond
            // float32's range and still be finite.
            let values = Vec::<f64>::try_from(host.reshape([-1]).to_kind(Kind::Double)).expect("float metrics");
            for (s, &iter) in self.log_iters.iter().enumerate() {
                for m in 0..self.k {
                    if self.diverged_at[m].is_some() {
                        continue;
                    }
                    let (loss, norm) = (values[(2 * s) * self.k + m], values[(2 * s + 1) * self.k + m]);
                    let row = MetricsRow { iter, train_loss: loss, grad_norm: norm };
                    self.rows[m].push(row);
                    if self.nonfinite[m].diverges(&row) {
                        self.diverged_at[m] = Some(iter);
                    }
                }
            }
            self.log_iters.clear();
        }
        if self.snap_pending > 0 {
            // An owned copy: on a CPU device `to_device` returns the buffer itself.
            self.saved.push(self.snaps.narrow(0, 0, self.snap_pending as i64).to_device(Device::Cpu).copy());
            self.snap_pending = 0;
        }
    }

    /// Whether every member has diverged (as of the last flush).
    pub fn all_diverged(&self) -> bool {
        self.diverged_at.iter().all(Option::is_some)
    }

    /// The rows recorded so far for member `i` (as of the last flush).
    pub fn rows(&self, i: usize) -> &[MetricsRow] {
        &self.rows[i]
    }

    /// All snapshots taken, `[S, K, P]` on the CPU. Call after a final [`Recorder::flush`].
    pub fn snapshots(&self) -> Tensor {
        Tensor::cat(&self.saved, 0)
    }

    /// The steps of [`Recorder::snapshots`].
    pub fn saved_steps(&self) -> &[i64] {
        &self.saved_steps
    }

    /// Member `i`'s run record; `snapshots` is [`Recorder::snapshots`].
    fn record(&self, ensemble: &Ensemble, snapshots: &Tensor, i: usize, wall_time_s: f64) -> RunRecord {
        let diverged_at = self.diverged_at[i];
        let keep: Vec<i64> = (0..self.saved_steps.len() as i64)
            .filter(|&s| diverged_at.is_none_or(|t| self.saved_steps[s as usize] <= t))
            .collect();
        let kept = snapshots.select(1, i as i64).index_select(0, &Tensor::from_slice(&keep)); // [S, P]
        let trajectory = ensemble
            .layout
            .views(&kept)
            .into_iter()
            .map(|t| t.contiguous())
            .collect();
        RunRecord {
            names: ensemble.layout.names.clone(),
            metrics: self.rows[i].clone(),
            steps: keep.iter().map(|&s| self.saved_steps[s as usize]).collect(),
            trajectory,
            final_params: ensemble.member_params(i),
            status: if diverged_at.is_some() { Status::Diverged } else { Status::Completed },
            diverged_at,
            wall_time_s,
            device: ensemble.device,
        }
    }
}

/// Trains the members of one setting together and writes each member's run folder exactly as
/// `linattn train` does (`config.yaml` with the member's seed, optimizer and learning rate,
/// `metrics.csv`, `trajectory.safetensors`, `final.safetensors`, `summary.json`). The wall
/// time in each summary is the ensemble's.
///
/// When `stop` is set (Ctrl-C, SIGTERM) it stops after the current step and writes only an
/// `interrupted` summary.json into each folder: fast runs keep no checkpoint, so such a folder
/// is trained again from the start (`linattn train --force`; `reproduce` does it by itself).
pub fn train_ensemble(
    cfg: &Config,
    members: &[Member],
    outs: &[PathBuf],
    progress: bool,
    stop: &AtomicBool,
) -> Result<Vec<Outcome>> {
    if members.len() != outs.len() {
        return Err(anyhow!(BadInput(format!(
            "an ensemble of {} members needs as many output folders, got {}",
            members.len(),
            outs.len()
        ))));
    }
    for (i, out) in outs.iter().enumerate() {
        if outs[..i].contains(out) {
            return Err(anyhow!(BadInput(format!("output folder {} is given twice", out.display()))));
        }
        train::create_run_folder(&members[i].config(cfg), out)?;
    }
    let started = Instant::now();
    let mut ensemble = Ensemble::start(cfg, members)?;
    let mut recorder = Recorder::new(&ensemble);
    let (iters, save_every) = (cfg.train.iters, cfg.train.save_every);
    let bar = crate::progress::bar(iters as u64, "train", progress);
    recorder.snapshot(0, &ensemble);
    let mut interrupted = false;
    while ensemble.iter < iters {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let out = ensemble.step();
        recorder.metrics(ensemble.iter - 1, &out);
        if train::is_saved_step(ensemble.iter, save_every, iters) {
            recorder.snapshot(ensemble.iter, &ensemble);
        }
        bar.inc(1);
        if recorder.all_diverged() {
            break;
        }
    }
    recorder.flush();
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    if interrupted {
        return outs
            .iter()
            .enumerate()
            .map(|(i, out)| {
                let metrics = recorder.rows(i).to_vec();
                let summary = Summary::of_rust(Status::Interrupted, None, metrics.len() as i64, wall, ensemble.device);
                summary.write(out).with_context(|| format!("{}: writing summary.json", out.display()))?;
                Ok(Outcome { summary, metrics })
            })
            .collect();
    }
    let snapshots = recorder.snapshots();
    outs.iter()
        .enumerate()
        .map(|(i, out)| train::write_run_folder(out, recorder.record(&ensemble, &snapshots, i, wall)))
        .collect()
}

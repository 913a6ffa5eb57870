//! The landscape measurements of paper §4 (Fig. 2 rows 3–4, Fig. 6, App. B): on the
//! evaluation batch, the test loss, the gradient norm, the robust condition number
//! `max|diag H| / median|diag H|` and the directional smoothness `uᵀHu`; beyond the paper,
//! two exact quantities from the eigenvalues of the full Hessian.
//!
//! Everything is taken with respect to ONE flat parameter vector (all parameters together, in
//! `state_dict` order, as the PyTorch side's `torch.autograd.functional.hessian` sees them).
//! The model's parameters are views into that vector, fed to the single forward pass
//! [`model::loss`], so the linear model and the MLP variant are handled alike.
use crate::artifacts::{self, fmt_f32, Trajectory};
use crate::config::{Config, Mode};
use crate::data::{self, Batch};
use crate::model::{self, Arch};
use crate::{optim, BadInput};
use anyhow::{anyhow, Result};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Tensor};

pub const ANALYSIS: &str = "analysis.csv";
pub const ANALYSIS_HEADER: &str =
    "iter,test_loss,grad_norm,condition_number,dir_smoothness,condition_number_eig,sharpness";

/// The parameters as one detached flat vector, `state_dict` order.
pub fn flatten(params: &[Tensor]) -> Tensor {
    let parts: Vec<Tensor> = params.iter().map(|p| p.detach().reshape([-1])).collect();
    Tensor::cat(&parts, 0)
}

/// Views of `flat` with the architecture's parameter shapes, `state_dict` order. Being views,
/// gradients with respect to them flow into `flat`.
pub fn unflatten(arch: &Arch, flat: &Tensor) -> Vec<Tensor> {
    let mut offset = 0;
    arch.param_specs()
        .into_iter()
        .map(|(_, shape)| {
            let numel: i64 = shape.iter().product();
            let view = flat.narrow(0, offset, numel).view(shape.as_slice());
            offset += numel;
            view
        })
        .collect()
}

/// The loss at one point of parameter space, as a function of the flat parameter vector, with
/// its gradient kept differentiable: every Hessian row or Hessian-vector product is then one
/// more backward pass through the graph built once here, instead of a new forward each time.
pub struct Point {
    arch: Arch,
    /// The flat parameter vector (a leaf that requires grad).
    pub flat: Tensor,
    pub loss: Tensor,
    /// ∇loss, built with `create_graph` so that it can be differentiated again.
    pub grad: Tensor,
}

impl Point {
    /// The point in the faithful forward pass (what the PyTorch side differentiates).
    pub fn new(arch: &Arch, params: &[Tensor], batch: &Batch) -> Point {
        Point::with_mode(arch, params, batch, Mode::Faithful)
    }

    /// The point in the forward pass of `mode`: a run trained in fast mode is measured with
    /// [`model::fast_loss`] (the same model to about 1e-6 relative, several times cheaper per
    /// Hessian row on a CPU).
    pub fn with_mode(arch: &Arch, params: &[Tensor], batch: &Batch, mode: Mode) -> Point {
        let flat = flatten(params).set_requires_grad(true);
        assert_eq!(flat.size()[0], arch.num_params(), "the parameters do not fit the architecture");
        let views = unflatten(arch, &flat);
        let loss = match mode {
            Mode::Faithful => model::loss(arch, &views, batch),
            Mode::Fast => model::fast_loss(arch, &views, batch),
        };
        let grad = single(Tensor::run_backward(&[&loss], &[&flat], true, true));
        Point { arch: *arch, flat, loss, grad }
    }

    /// ‖∇loss‖ as training reports it: the norm of the per-parameter norms.
    pub fn grad_norm(&self) -> Tensor {
        optim::global_grad_norm(&unflatten(&self.arch, &self.grad.detach()))
    }

    /// H·u, one backward pass of `⟨∇loss, u⟩`.
    pub fn hvp(&self, u: &Tensor) -> Tensor {
        let u = u.detach().to_kind(self.flat.kind()).to_device(self.flat.device());
        single(Tensor::run_backward(&[self.grad.dot(&u)], &[&self.flat], true, false))
    }

    /// Row i of the Hessian: the gradient of the i-th gradient entry (what
    /// `torch.autograd.functional.hessian` computes row by row, without its Python loop).
    pub fn hessian_row(&self, i: i64) -> Tensor {
        single(Tensor::run_backward(&[self.grad.get(i)], &[&self.flat], true, false))
    }

    /// The full Hessian, row by row; `on_row` is called after each row (progress).
    pub fn hessian(&self, mut on_row: impl FnMut()) -> Tensor {
        let p = self.flat.size()[0];
        let h = Tensor::empty([p, p], (self.flat.kind(), self.flat.device()));
        for i in 0..p {
            let mut row = h.get(i);
            row.copy_(&self.hessian_row(i));
            on_row();
        }
        h
    }
}

fn single(mut grads: Vec<Tensor>) -> Tensor {
    grads.pop().expect("one input, one gradient")
}

/// The exact Hessian of the loss with respect to all parameters (flat, `state_dict` order).
pub fn hessian(arch: &Arch, params: &[Tensor], batch: &Batch) -> Tensor {
    Point::new(arch, params, batch).hessian(|| {})
}

/// The exact diagonal of the Hessian. Double backward gives whole rows, so this costs as much
/// as the full Hessian; it exists for readers who only need the diagonal.
pub fn hessian_diag(arch: &Arch, params: &[Tensor], batch: &Batch) -> Tensor {
    hessian(arch, params, batch).diagonal(0, 0, 1)
}

/// H·u at `params`, one Hessian-vector product.
pub fn hvp(arch: &Arch, params: &[Tensor], batch: &Batch, u: &Tensor) -> Tensor {
    Point::new(arch, params, batch).hvp(u)
}

/// The robust condition number `max|x| / median|x|` of a Hessian diagonal (R_med) or of its
/// eigenvalues. The median is `Tensor::median`, the LOWER of the two middle values for an even
/// count, as `torch.median` on the PyTorch side.
pub fn condition_number(diag_or_eigs: &Tensor) -> f64 {
    let a = diag_or_eigs.abs();
    (a.max() / a.median()).double_value(&[])
}

/// The largest eigenvalue of a symmetric matrix (the sharpness, when it is the Hessian) and
/// `max|λ| / median|λ|`; NaN for both when the matrix is not finite (a diverged run).
pub fn eigen_summary(h: &Tensor) -> (f64, f64) {
    if h.isfinite().all().int64_value(&[]) == 0 {
        return (f64::NAN, f64::NAN);
    }
    match h.f_linalg_eigvalsh("L") {
        Ok(lam) => (condition_number(&lam), lam.max().double_value(&[])),
        Err(_) => (f64::NAN, f64::NAN),
    }
}

/// `(θ_{t+1} − θ_t) / ‖θ_{t+1} − θ_t‖` as flat vectors; None when the two points coincide.
pub fn unit_direction(flat_t: &Tensor, flat_t1: &Tensor) -> Option<Tensor> {
    let delta = flat_t1.detach() - flat_t.detach();
    let norm = delta.norm();
    if norm.double_value(&[]) == 0.0 {
        return None;
    }
    Some(&delta / norm)
}

/// The directional smoothness `uᵀ H(θ_t) u` with `u` the normalised step from `params_t` to
/// `params_t1` (paper Fig. 2 row 4): one Hessian-vector product. None when the step is zero.
pub fn directional_smoothness(arch: &Arch, params_t: &[Tensor], params_t1: &[Tensor], batch: &Batch) -> Option<f64> {
    let point = Point::new(arch, params_t, batch);
    let u = unit_direction(&point.flat, &flatten(params_t1).to_device(point.flat.device()))?;
    Some(u.dot(&point.hvp(&u)).double_value(&[]))
}

/// One row of `analysis.csv`: the measurements at one saved step, on the evaluation batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalysisRow {
    pub iter: i64,
    pub test_loss: f64,
    pub grad_norm: f64,
    /// R_med = max|diag H| / median|diag H|.
    pub condition_number: f64,
    /// uᵀHu towards the next step; None when step iter+1 was not saved (NaN when the step was zero).
    pub dir_smoothness: Option<f64>,
    /// max|λ| / median|λ| over the eigenvalues of H.
    pub condition_number_eig: f64,
    /// λ_max of H.
    pub sharpness: f64,
}

/// All measurements at one point; `next` holds the parameters of step t+1 when saved.
fn measure(
    arch: &Arch,
    mode: Mode,
    iter: i64,
    params: &[Tensor],
    next: Option<&[Tensor]>,
    batch: &Batch,
    on_row: impl FnMut(),
) -> AnalysisRow {
    let point = Point::with_mode(arch, params, batch, mode);
    let h = point.hessian(on_row);
    let (condition_number_eig, sharpness) = eigen_summary(&h);
    // The full Hessian is at hand, so uᵀ(H u) costs a matrix-vector product instead of an HVP.
    let dir_smoothness = next.map(|next| {
        match unit_direction(&point.flat, &flatten(next).to_device(point.flat.device())) {
            Some(u) => u.dot(&h.mv(&u)).double_value(&[]),
            None => f64::NAN,
        }
    });
    AnalysisRow {
        iter,
        test_loss: point.loss.double_value(&[]),
        grad_norm: point.grad_norm().double_value(&[]),
        condition_number: condition_number(&h.diagonal(0, 0, 1)),
        dir_smoothness,
        condition_number_eig,
        sharpness,
    }
}

/// `analysis.csv`. The values are float32 computations (the run's dtype), written as the
/// shortest decimals that read back to them, like `metrics.csv`.
pub fn analysis_csv(rows: &[AnalysisRow]) -> String {
    let f = |v: f64| fmt_f32(v as f32);
    let mut s = String::from(ANALYSIS_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r.iter,
            f(r.test_loss),
            f(r.grad_norm),
            f(r.condition_number),
            r.dir_smoothness.map(f).unwrap_or_default(),
            f(r.condition_number_eig),
            f(r.sharpness)
        ));
    }
    s
}

fn bad(msg: String) -> anyhow::Error {
    anyhow!(BadInput(msg))
}

/// `linattn analyze DIR --every K` on the run's own device.
pub fn analyze_dir(dir: &Path, every: i64, progress: bool) -> Result<Vec<AnalysisRow>> {
    analyze_dir_on(dir, every, None, progress)
}

/// [`analyze_dir`] on `device` (None: the run's `train.device`), e.g. a GPU run on a laptop.
pub fn analyze_dir_on(dir: &Path, every: i64, device: Option<Device>, progress: bool) -> Result<Vec<AnalysisRow>> {
    if every < 1 {
        return Err(bad(format!("--every: must be >= 1, got {every}")));
    }
    if !dir.is_dir() {
        let why = if dir.exists() { "not a folder" } else { "no such folder" };
        return Err(bad(format!("{}: not a linattn run folder ({why})", dir.display())));
    }
    let cfg = Config::load_run(dir)?;
    let device = match device {
        Some(d) => d,
        None => crate::device::parse(&cfg.train.device)
            .map_err(|e| bad(format!("{}: config key train.device: {e} (pass --device)", dir.display())))?,
    };
    let arch = Arch::from_config(&cfg);
    let specs = arch.param_specs();
    let names: Vec<String> = specs.iter().map(|(n, _)| n.clone()).collect();
    let traj_path = dir.join(artifacts::TRAJECTORY);
    let traj = Trajectory::read(&traj_path, &names)?;
    for ((name, t), (_, shape)) in traj.params.iter().zip(&specs) {
        if t.size()[1..] != shape[..] {
            return Err(bad(format!(
                "{}: {name} has shape {:?} per step, but config.yaml implies {shape:?}",
                traj_path.display(),
                &t.size()[1..]
            )));
        }
    }
    let batch = data::eval_batch(&cfg, device);
    let on_device = |ps: Vec<Tensor>| -> Vec<Tensor> { ps.iter().map(|p| p.to_device(device)).collect() };
    let selected: Vec<i64> = traj.steps.iter().copied().filter(|t| t % every == 0).collect();
    // Counted in Hessian rows, so that large models move the bar too.
    let bar = crate::progress::bar(selected.len() as u64 * arch.num_params() as u64, "analyze", progress);
    let mut rows = Vec::with_capacity(selected.len());
    for &t in &selected {
        let params = on_device(traj.at(t).expect("a selected step is saved"));
        let next = traj.at(t + 1).map(on_device);
        rows.push(measure(&arch, cfg.train.mode, t, &params, next.as_deref(), &batch, || bar.inc(1)));
    }
    bar.finish_and_clear();
    artifacts::write_atomic(&dir.join(ANALYSIS), analysis_csv(&rows).as_bytes())?;
    Ok(rows)
}

/// R_med at the initialisation of `cfg` (seed, init, eval batch, as a run starts), timed:
/// Hessian from double backward through the forward pass of `mode`, diagonal, median.
pub struct ConditionNumberTimer {
    arch: Arch,
    mode: Mode,
    params: Vec<Tensor>,
    batch: Batch,
}

impl ConditionNumberTimer {
    pub fn new(cfg: &Config, mode: Mode) -> Result<ConditionNumberTimer> {
        let mut faithful = cfg.clone();
        faithful.train.mode = Mode::Faithful; // the point itself is the faithful run's init
        let run = crate::train::Run::start(&faithful)?;
        // In the config's dtype, as the eval batch is (the faithful init is float32).
        let params = run.model.tensors().iter().map(|p| p.detach().to_kind(cfg.train.dtype.kind())).collect();
        Ok(ConditionNumberTimer { arch: run.model.arch, mode, params, batch: data::eval_batch(cfg, run.device) })
    }

    /// One computation: (milliseconds, the condition number). Reading the value back also
    /// waits for a GPU.
    pub fn time_once(&self) -> (f64, f64) {
        let start = Instant::now();
        let h = Point::with_mode(&self.arch, &self.params, &self.batch, self.mode).hessian(|| {});
        let cond = condition_number(&h.diagonal(0, 0, 1));
        (start.elapsed().as_secs_f64() * 1e3, cond)
    }
}

/// The median of a non-empty list of timings.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn minimum(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

/// `linattn bench-hessian`: Rust against `torch.autograd.functional.hessian` on the PyTorch side.
pub struct HessianBench {
    /// Medians over the timed repetitions.
    pub rust_ms: f64,
    pub torch_ms: f64,
    /// Fastest repetitions: on a shared machine, the least disturbed by other work.
    pub rust_min_ms: f64,
    pub torch_min_ms: f64,
    pub rust_condition_number: f64,
    pub torch_condition_number: f64,
    /// The same R_med through the fast forward pass (`train.mode: fast`): median, minimum, value.
    pub rust_fast_ms: f64,
    pub rust_fast_min_ms: f64,
    pub rust_fast_condition_number: f64,
    pub num_params: i64,
    pub repeats: usize,
    pub rust_threads: i64,
    pub torch_threads: i64,
    pub device: String,
}

impl HessianBench {
    pub fn ratio(&self) -> f64 {
        self.rust_ms / self.torch_ms
    }
}

/// Times both sides, one after the other (never concurrently: they would share the cores).
/// `threads`: libtorch's intra-op threads on both sides (None: each side's default).
pub fn bench_hessian(
    cfg: &Config,
    config_path: &Path,
    sets: &[String],
    repeats: usize,
    threads: Option<usize>,
    progress: bool,
) -> Result<HessianBench> {
    if repeats < 1 {
        return Err(bad(format!("--repeats: must be >= 1, got {repeats}")));
    }
    if let Some(n) = threads {
        if n < 1 {
            return Err(bad(format!("--threads: must be >= 1, got {n}")));
        }
        tch::set_num_threads(n as i32);
    }
    // A shared machine's load drifts: half of the Rust repetitions run before the PyTorch side
    // and half after, so that a drift does not favour the side that runs first.
    let timers = [ConditionNumberTimer::new(cfg, Mode::Faithful)?, ConditionNumberTimer::new(cfg, Mode::Fast)?];
    let bar = crate::progress::bar(2 * (repeats as u64 + 1), "rust", progress);
    let timed = |i: usize| {
        let t = timers[i].time_once();
        bar.inc(1);
        t
    };
    // Warm-up, untimed (the PyTorch side does the same); its values are the reported ones.
    let conds = [timed(0).1, timed(1).1];
    let mut times: [Vec<f64>; 2] = [0, 1].map(|i| (0..repeats.div_ceil(2)).map(|_| timed(i).0).collect());
    let mut args: Vec<std::ffi::OsString> = vec!["bench-hessian".into(), "--config".into(), config_path.into()];
    for s in sets {
        args.push("--set".into());
        args.push(s.into());
    }
    args.push("--repeats".into());
    args.push(repeats.to_string().into());
    if let Some(n) = threads {
        args.push("--threads".into());
        args.push(n.to_string().into());
    }
    bar.set_message("pytorch");
    let out = crate::reference::run(crate::reference::command(args)?, "the benchmark")?;
    bar.set_message("rust");
    for (i, t) in times.iter_mut().enumerate() {
        t.extend((0..repeats / 2).map(|_| timed(i).0));
    }
    bar.finish_and_clear();
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow!("the PyTorch side printed no JSON result: {text}"))?;
    let num = |k: &str| json[k].as_f64().ok_or_else(|| anyhow!("the PyTorch side's result lacks {k}: {json}"));
    Ok(HessianBench {
        rust_ms: median(&times[0]),
        torch_ms: num("ms")?,
        rust_min_ms: minimum(&times[0]),
        torch_min_ms: num("min_ms")?,
        rust_condition_number: conds[0],
        rust_fast_ms: median(&times[1]),
        rust_fast_min_ms: minimum(&times[1]),
        rust_fast_condition_number: conds[1],
        torch_condition_number: num("condition_number")?,
        num_params: Arch::from_config(cfg).num_params(),
        repeats,
        rust_threads: tch::get_num_threads() as i64,
        torch_threads: num("threads")? as i64,
        device: cfg.train.device.clone(),
    })
}

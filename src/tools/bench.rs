//! `linattn bench`: the PyTorch side and the Rust side timed on the same config, in one
//! invocation, mode by mode.
//!
//! Every measurement runs in a child process of its own (the PyTorch side's `bench`
//! subcommand, and this binary's hidden `bench-worker`), so that the two sides are measured
//! alike: each process loads libtorch once, times `steps` steps after `warmup` untimed ones,
//! and reports its ms per step and its own peak resident memory (VmHWM / ru_maxrss).
//!
//! The Rust side times the real training driver ([`crate::train::drive`]) on temporary run
//! folders, as `linattn train` runs it (metrics, snapshots, the final write; no checkpoints).
//!
//! Modes (the PyTorch side has one training loop, the authors'; it is the baseline of all):
//! - `faithful`: the faithful stepper, the reference protocol op for op;
//! - `fast`: one `train.mode: fast` run (an ensemble of one);
//! - `ensemble`: 12 runs (seeds 0–5 × SGD, Adam; the config's learning rate) as one
//!   ensemble, against PyTorch running the 12 one after another. ms/step is the time of one
//!   step of all 12 runs on both sides.
use super::pytorch;
use crate::config::{Config, Mode, OptimizerKind};
use crate::data::{self, Batch};
use crate::measure::landscape::{condition_number, Point};
use crate::model::Arch;
use crate::run::{protocol, RunFolder};
use crate::train::{self, EnsembleStepper, FaithfulStepper, Member, Options, Stepper};
use crate::BadInput;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tch::Tensor;

/// Runs in the ensemble mode (6 seeds × 2 optimizers), as the PyTorch side's `--ensemble 12`.
pub const ENSEMBLE_RUNS: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BenchMode {
    Faithful,
    Fast,
    Ensemble,
}

impl BenchMode {
    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Faithful => "faithful",
            BenchMode::Fast => "fast",
            BenchMode::Ensemble => "ensemble",
        }
    }
}

/// The ensemble mode's members: run i has seed i/2 and SGD (even i) or Adam (odd i), the
/// PyTorch side's `--ensemble` order.
pub fn ensemble_members(cfg: &Config) -> Vec<Member> {
    (0..ENSEMBLE_RUNS)
        .map(|i| Member {
            seed: (i / 2) as u32,
            optimizer: if i % 2 == 0 {
                OptimizerKind::Sgd
            } else {
                OptimizerKind::Adam
            },
            lr: cfg.train.lr,
        })
        .collect()
}

/// What one measuring process reports (one JSON line; the PyTorch side prints the same keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    pub ms_per_step: f64,
    pub side: String,
    pub device: String,
    pub threads: i64,
    /// Peak resident memory of the process, KiB (absent where the OS does not say).
    #[serde(default)]
    pub peak_rss_kb: Option<u64>,
    /// The Rust side's fast modes: where a step's time goes (absent on the PyTorch side).
    #[serde(default)]
    pub split: Option<Split>,
}

/// A fast step taken apart, ms per step of each part timed alone over the same steps:
/// `draw` the data, `gradients` the losses and gradients (the draw included, as a step does
/// it), `update` the optimizer's. The rest of a step is the loop's own work (the divergence
/// rule, clipping, metrics).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub draw_ms: f64,
    pub gradients_ms: f64,
    pub update_ms: f64,
}

/// Times the parts of a fast step of `members` on a stepper of their own, `steps` each after a
/// warm-up of a few. Every part ends by reading a value back, which also waits for a GPU.
fn split(base: &Config, members: &[Member], device: tch::Device, steps: i64) -> Result<Split> {
    let mut stepper = EnsembleStepper::start(base, members, device)?;
    let stepping = Tensor::ones([members.len() as i64], (tch::Kind::Bool, device));
    let per_step = |t: Instant| t.elapsed().as_secs_f64() * 1000.0 / steps as f64;
    for i in 0..3 {
        stepper.draw(i);
        let _ = stepper.gradients(i);
        stepper.update(None, &stepping);
    }
    let t = Instant::now();
    for i in 0..steps {
        stepper.draw(i);
    }
    let _ = stepper.flat_params().double_value(&[0, 0]);
    let draw_ms = per_step(t);
    let t = Instant::now();
    let mut last = None;
    for i in 0..steps {
        last = Some(stepper.gradients(i).losses);
    }
    let _ = last.map(|l| l.double_value(&[0]));
    let gradients_ms = per_step(t);
    let t = Instant::now();
    for _ in 0..steps {
        stepper.update(None, &stepping);
    }
    let _ = stepper.flat_params().double_value(&[0, 0]);
    Ok(Split {
        draw_ms,
        gradients_ms,
        update_ms: per_step(t),
    })
}

/// This process's peak resident memory in KiB (`VmHWM` of /proc/self/status, Linux).
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The Rust side of one mode, in this process: `warmup` untimed steps, then `steps` timed ones,
/// each a session of the real driver on the same stepper (so the timed one starts warm).
pub fn worker(cfg: &Config, mode: BenchMode, steps: i64, warmup: i64) -> Result<Measurement> {
    let mut base = cfg.clone();
    base.train.mode = if mode == BenchMode::Faithful {
        Mode::Faithful
    } else {
        Mode::Fast
    };
    let members = match mode {
        BenchMode::Ensemble => ensemble_members(cfg),
        _ => vec![Member::from_config(&base)],
    };
    let mut timer = DriverTimer::start(&base, &members)?;
    if warmup > 0 {
        timer.session(warmup)?;
    }
    let timed = timer.session(steps)?;
    let split = match mode {
        BenchMode::Faithful => None,
        _ => Some(split(&base, &members, timer.device, steps)?),
    };
    Ok(Measurement {
        ms_per_step: timed.as_secs_f64() * 1000.0 / steps as f64,
        side: "rust".into(),
        device: cfg.train.device.to_string(),
        threads: tch::get_num_threads() as i64,
        peak_rss_kb: peak_rss_kb(),
        split,
    })
}

/// Sessions of the real training driver on one stepper (faithful: the one run of `base`;
/// fast: `members` as one ensemble), into temporary run folders, as `linattn train` runs it
/// (metrics, snapshots, the final write; no checkpoints).
pub struct DriverTimer {
    base: Config,
    members: Vec<Member>,
    device: tch::Device,
    stepper: Box<dyn Stepper>,
    tmp: tempfile::TempDir,
    sessions: usize,
}

impl DriverTimer {
    pub fn start(base: &Config, members: &[Member]) -> Result<DriverTimer> {
        let device = base.device()?;
        let stepper: Box<dyn Stepper> = match base.train.mode {
            Mode::Faithful => Box::new(FaithfulStepper::start(base, device)?),
            Mode::Fast => Box::new(EnsembleStepper::start(base, members, device)?),
        };
        Ok(DriverTimer {
            base: base.clone(),
            members: members.to_vec(),
            device,
            stepper,
            tmp: tempfile::tempdir()?,
            sessions: 0,
        })
    }

    /// The wall time of `iters` steps, in fresh run folders.
    pub fn session(&mut self, iters: i64) -> Result<std::time::Duration> {
        self.sessions += 1;
        let configs: Vec<Config> = self
            .members
            .iter()
            .map(|m| {
                let mut c = m.config(&self.base);
                c.train.mode = self.base.train.mode;
                c.train.iters = iters;
                c
            })
            .collect();
        let folders: Vec<RunFolder> = (0..self.members.len())
            .map(|i| {
                RunFolder::new(
                    self.tmp
                        .path()
                        .join(format!("session{}-{i}", self.sessions)),
                )
            })
            .collect();
        for (f, c) in folders.iter().zip(&configs) {
            f.create(c)?;
        }
        let opts = Options {
            checkpoint_every: 0,
            ..Options::default()
        };
        let t0 = Instant::now();
        // Ends by reading every value back, which also waits for a GPU.
        train::drive(self.stepper.as_mut(), &configs, &folders, None, &opts)?;
        Ok(t0.elapsed())
    }
}

/// What `linattn bench` was asked to do.
pub struct BenchRequest<'a> {
    pub config: &'a Path,
    pub sets: &'a [String],
    pub steps: i64,
    pub warmup: i64,
    pub modes: &'a [BenchMode],
    pub device: Option<&'a str>,
    /// Measurements per side and mode; the fastest is kept (the least disturbed by other load).
    pub repeats: usize,
    /// Threads per side (`OMP_NUM_THREADS`/`MKL_NUM_THREADS` of the children); `None`: libtorch's default.
    pub threads: Option<usize>,
    /// `OMP_WAIT_POLICY=passive` for both sides: idle OpenMP threads sleep instead of spinning.
    /// On a machine shared with other work, spinning threads that wait for a descheduled
    /// sibling made both sides 5–8× slower in our measurements, so the numbers then measure
    /// the other load more than the code.
    pub passive_wait: bool,
    /// The `linattn` binary that runs `bench-worker`.
    pub exe: &'a Path,
}

/// One row of the report.
pub struct BenchRow {
    pub mode: BenchMode,
    pub torch: Measurement,
    pub rust: Measurement,
}

impl BenchRow {
    pub fn ratio(&self) -> f64 {
        self.torch.ms_per_step / self.rust.ms_per_step
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn cpu_model() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{model}, {cpus} CPUs")
}

fn parse_measurement(stdout: &[u8], what: &str) -> Result<Measurement> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON line"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))
}

fn threads_env(c: &mut Command, req: &BenchRequest) {
    if let Some(t) = req.threads {
        c.env("OMP_NUM_THREADS", t.to_string())
            .env("MKL_NUM_THREADS", t.to_string());
    }
    if req.passive_wait {
        c.env("OMP_WAIT_POLICY", "passive");
    }
}

fn measure_torch(req: &BenchRequest, ensemble: bool) -> Result<Measurement> {
    let mut args: Vec<String> = vec![
        "bench".into(),
        "--config".into(),
        req.config.display().to_string(),
    ];
    for s in req.sets {
        args.extend(["--set".into(), s.clone()]);
    }
    args.extend([
        "--steps".into(),
        req.steps.to_string(),
        "--warmup".into(),
        req.warmup.to_string(),
    ]);
    if ensemble {
        args.extend(["--ensemble".into(), ENSEMBLE_RUNS.to_string()]);
    }
    if let Some(d) = req.device {
        args.extend(["--device".into(), d.into()]);
    }
    let mut c = pytorch::command(&args)?;
    threads_env(&mut c, req);
    let out = pytorch::run(c, "the bench")?;
    parse_measurement(&out.stdout, "the PyTorch side's bench")
}

fn measure_rust(req: &BenchRequest, mode: BenchMode) -> Result<Measurement> {
    let mut c = Command::new(req.exe);
    c.args(["bench-worker", "--config"]).arg(req.config);
    for s in req.sets {
        c.args(["--set", s]);
    }
    if let Some(d) = req.device {
        c.args(["--set", &format!("train.device={d}")]);
    }
    c.args([
        "--mode",
        mode.name(),
        "--steps",
        &req.steps.to_string(),
        "--warmup",
        &req.warmup.to_string(),
    ]);
    threads_env(&mut c, req);
    let out = c
        .output()
        .map_err(|e| anyhow!("could not start {}: {e}", req.exe.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no message)");
        bail!("the Rust bench worker ({}) failed: {line}", mode.name());
    }
    parse_measurement(&out.stdout, "the Rust bench worker")
}

fn faster(best: Option<Measurement>, m: Measurement) -> Option<Measurement> {
    match best {
        Some(b) if b.ms_per_step <= m.ms_per_step => Some(b),
        _ => Some(m),
    }
}

/// Runs the benchmark and prints the report to stdout as it goes. Returns the rows.
pub fn run(cfg: &Config, req: &BenchRequest) -> Result<Vec<BenchRow>> {
    if req.steps < 1 || req.warmup < 0 || req.repeats < 1 || req.modes.is_empty() {
        return Err(anyhow!(BadInput(
            "bench: --steps and --repeats must be >= 1, --warmup >= 0, and --modes must name a mode".into()
        )));
    }
    print_header(cfg, req);
    let (torch_solo, torch_ensemble, rust) = measure_all(req)?;
    let rows = print_table(req, torch_solo.as_ref(), torch_ensemble.as_ref(), rust);
    report_arithmetic(cfg, &rows);
    report_split_and_memory(&rows, torch_solo.as_ref());
    println!("load average after: {}", load_average());
    Ok(rows)
}

/// What is measured, on what machine, and how.
fn print_header(cfg: &Config, req: &BenchRequest) {
    let (m, d) = (&cfg.model, &cfg.data);
    println!(
        "linattn bench: {} (L={} H={} d={} n={} B={}, {:?} data, {:?}, {:?} attention, mlp_hidden {}), device {}",
        req.config.display(),
        m.layers,
        m.heads,
        m.dim,
        d.context,
        d.batch,
        d.setting,
        m.parametrization,
        m.attention,
        m.mlp_hidden,
        req.device.map(str::to_string).unwrap_or_else(|| cfg.train.device.to_string())
    );
    println!(
        "machine: {}; load average before: {}",
        cpu_model(),
        load_average()
    );
    println!(
        "{} timed steps after {} warm-up steps, fastest of {} per side and mode; threads per side: {}{}",
        req.steps,
        req.warmup,
        req.repeats,
        req.threads.map(|t| t.to_string()).unwrap_or_else(|| "libtorch default".into()),
        if req.passive_wait { "; OMP_WAIT_POLICY=passive" } else { "" }
    );
}

/// The fastest of `req.repeats` interleaved measurements of each side and mode: PyTorch's
/// solo run, PyTorch's 12 runs, and the Rust side per mode.
#[allow(clippy::type_complexity)]
fn measure_all(
    req: &BenchRequest,
) -> Result<(
    Option<Measurement>,
    Option<Measurement>,
    Vec<Option<Measurement>>,
)> {
    let needs_solo = req.modes.iter().any(|&m| m != BenchMode::Ensemble);
    let (mut torch_solo, mut torch_ensemble) = (None, None);
    let mut rust: Vec<Option<Measurement>> = vec![None; req.modes.len()];
    // Interleaved, so that a change in the machine's load hits both sides alike.
    // Each measurement is also logged on stderr as it comes, since a round can take minutes.
    let log = |what: &str, m: &Measurement| {
        eprintln!(
            "  {what}: {:.3} ms/step (load average {})",
            m.ms_per_step,
            load_average()
        )
    };
    for _ in 0..req.repeats {
        if needs_solo {
            let m = measure_torch(req, false)?;
            log("pytorch, one run", &m);
            torch_solo = faster(torch_solo, m);
        }
        for (i, &mode) in req.modes.iter().enumerate() {
            if mode == BenchMode::Ensemble {
                let m = measure_torch(req, true)?;
                log("pytorch, 12 runs one after another", &m);
                torch_ensemble = faster(torch_ensemble, m);
            }
            let m = measure_rust(req, mode)?;
            log(&format!("rust, {}", mode.name()), &m);
            rust[i] = faster(rust[i].take(), m);
        }
    }
    Ok((torch_solo, torch_ensemble, rust))
}

/// The table of ms/step and ratios, one row per mode, and the threads each side used.
fn print_table(
    req: &BenchRequest,
    torch_solo: Option<&Measurement>,
    torch_ensemble: Option<&Measurement>,
    rust: Vec<Option<Measurement>>,
) -> Vec<BenchRow> {
    println!(
        "{:<10} {:>16} {:>14} {:>14}",
        "mode", "pytorch ms/step", "rust ms/step", "pytorch/rust"
    );
    let mut rows = Vec::new();
    for (i, &mode) in req.modes.iter().enumerate() {
        let torch = match mode {
            BenchMode::Ensemble => torch_ensemble.cloned(),
            _ => torch_solo.cloned(),
        }
        .expect("measured above");
        let row = BenchRow {
            mode,
            torch,
            rust: rust[i].clone().expect("measured above"),
        };
        let note = match mode {
            BenchMode::Faithful => "",
            BenchMode::Fast => "  (PyTorch: the authors' loop)",
            BenchMode::Ensemble => "  (12 runs, 6 seeds x sgd/adam; PyTorch: one after another)",
        };
        println!(
            "{:<10} {:>16.3} {:>14.3} {:>14.2}{note}",
            mode.name(),
            row.torch.ms_per_step,
            row.rust.ms_per_step,
            row.ratio()
        );
        rows.push(row);
    }
    // The Rust side may use fewer intra-op threads than it was given: the fast path on small
    // models could run faster on fewer, so each mode says its own.
    if let Some(r) = rows.first() {
        let rust: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {}", r.mode.name(), r.rust.threads))
            .collect();
        println!(
            "threads used: pytorch {}; rust {} (libtorch's, which fast mode's native kernel also takes as its cores: at most one per member, one for a solo run of a small model)",
            r.torch.threads,
            rust.join(", ")
        );
    }
    rows
}

/// Where the Rust step's time goes, and the peak memory of both sides.
fn report_split_and_memory(rows: &[BenchRow], torch_solo: Option<&Measurement>) {
    for row in rows {
        if let Some(s) = row.rust.split {
            let rest = row.rust.ms_per_step - s.gradients_ms - s.update_ms;
            let pct = |x: f64| 100.0 * x / row.rust.ms_per_step;
            println!(
                "split of the {} step (rust, ms; each part timed alone): draw {:.3} ({:.0}%), forward/backward {:.3} ({:.0}%), update {:.3} ({:.0}%), the rest of the loop {:.3} ({:.0}%)",
                row.mode.name(),
                s.draw_ms,
                pct(s.draw_ms),
                s.gradients_ms - s.draw_ms,
                pct(s.gradients_ms - s.draw_ms),
                s.update_ms,
                pct(s.update_ms),
                rest,
                pct(rest)
            );
        }
    }
    let mib = |kb: u64| kb as f64 / 1024.0;
    if let Some(fast) = rows.iter().find(|r| r.mode == BenchMode::Fast) {
        match (fast.rust.peak_rss_kb, torch_solo.and_then(|t| t.peak_rss_kb)) {
            (Some(r), Some(t)) => println!(
                "peak resident memory: rust fast run {:.1} MiB, pytorch run {:.1} MiB (rust/pytorch {:.2})",
                mib(r),
                mib(t),
                r as f64 / t as f64
            ),
            _ => println!("peak resident memory: not reported on this system"),
        }
    }
}

/// The native kernel's arithmetic per step and the rate each fast mode achieved (the whole
/// step: data draw, kernel and update), where the kernel computes the model on a CPU.
fn report_arithmetic(cfg: &Config, rows: &[BenchRow]) {
    let Some(dims) = crate::model::native::Dims::of(&Arch::from_config(cfg)) else {
        return;
    };
    if cfg.train.device.tch().ok() != Some(tch::Device::Cpu) {
        return;
    }
    for row in rows.iter().filter(|r| r.mode != BenchMode::Faithful) {
        let members = ensemble_members(cfg);
        let (k, u) = match row.mode {
            BenchMode::Ensemble => {
                let mut seeds: Vec<u32> = members.iter().map(|m| m.seed).collect();
                seeds.sort();
                seeds.dedup();
                (members.len(), seeds.len())
            }
            _ => (1, 1),
        };
        let flops = crate::model::native::flops_per_step(&dims, cfg.data.batch as usize, k, u);
        println!(
            "arithmetic, {}: {:.1} MFLOP per step in the native kernel ({k} members, {u} streams); {:.1} GFLOP/s over the whole step",
            row.mode.name(),
            flops / 1e6,
            flops / (row.rust.ms_per_step * 1e6)
        );
    }
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
        let device = cfg.device()?;
        // The point is the run's init (the faithful and the fast run start alike), in the
        // config's dtype, as the eval batch is.
        let init = protocol::start(cfg, cfg.train.seed).init;
        let params = init
            .iter()
            .map(|p| p.to_kind(cfg.train.dtype.kind()).to_device(device))
            .collect();
        Ok(ConditionNumberTimer {
            arch: Arch::from_config(cfg),
            mode,
            params,
            batch: data::eval_batch(cfg, device),
        })
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
/// `threads`: libtorch's intra-op threads on both sides (None: each side's default); the caller
/// has set this process's.
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
    if threads.is_some_and(|n| n < 1) {
        return Err(bad("--threads: must be >= 1".into()));
    }
    // A shared machine's load drifts: half of the Rust repetitions run before the PyTorch side
    // and half after, so that a drift does not favour the side that runs first.
    let timers = [
        ConditionNumberTimer::new(cfg, Mode::Faithful)?,
        ConditionNumberTimer::new(cfg, Mode::Fast)?,
    ];
    let bar = crate::progress::bar(2 * (repeats as u64 + 1), "rust", progress);
    let timed = |i: usize| {
        let t = timers[i].time_once();
        bar.inc(1);
        t
    };
    // Warm-up, untimed (the PyTorch side does the same); its values are the reported ones.
    let conds = [timed(0).1, timed(1).1];
    let mut times: [Vec<f64>; 2] =
        [0, 1].map(|i| (0..repeats.div_ceil(2)).map(|_| timed(i).0).collect());
    let mut args: Vec<std::ffi::OsString> = vec![
        "bench-hessian".into(),
        "--config".into(),
        config_path.into(),
    ];
    // The PyTorch side's config has no train.dtype (its runs are the authors' float32): the
    // dtype goes as its own flag.
    for s in sets
        .iter()
        .filter(|s| !s.trim_start().starts_with("train.dtype="))
    {
        args.push("--set".into());
        args.push(s.into());
    }
    args.push("--dtype".into());
    args.push(cfg.train.dtype.name().into());
    args.push("--repeats".into());
    args.push(repeats.to_string().into());
    if let Some(n) = threads {
        args.push("--threads".into());
        args.push(n.to_string().into());
    }
    bar.set_message("pytorch");
    let out = pytorch::run(pytorch::command(args)?, "the benchmark")?;
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
    // A non-finite value comes as the string "inf" or "nan" (strict JSON has neither).
    let num = |k: &str| {
        json[k]
            .as_f64()
            .or_else(|| json[k].as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| anyhow!("the PyTorch side's result lacks {k}: {json}"))
    };
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
        device: cfg.train.device.to_string(),
    })
}

use crate::bad_input as bad;

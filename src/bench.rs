//! `linattn bench`: the PyTorch side and the Rust side timed on the same config, in one
//! invocation, mode by mode.
//!
//! Every measurement runs in a child process of its own (the PyTorch side's `bench`
//! subcommand, and this binary's hidden `bench-worker`), so that the two sides are measured
//! alike: each process loads libtorch once, times `steps` steps after `warmup` untimed ones,
//! and reports its ms per step and its own peak resident memory (VmHWM / ru_maxrss).
//!
//! Modes (the PyTorch side has one training loop, the authors'; it is the baseline of all):
//! - `faithful`: [`crate::train::Run::step`], the reference protocol op for op;
//! - `fast`: one `train.mode: fast` run (an ensemble of one);
//! - `ensemble`: 12 runs (seeds 0–5 × SGD, Adam; the config's learning rate) as one
//!   ensemble, against PyTorch running the 12 one after another. ms/step is the time of one
//!   step of all 12 runs on both sides.
use crate::config::{Config, Mode, OptimizerKind};
use crate::ensemble::{Ensemble, Member, Recorder};
use crate::train::{is_saved_step, Run};
use crate::{reference, BadInput};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

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
            optimizer: if i % 2 == 0 { OptimizerKind::Sgd } else { OptimizerKind::Adam },
            lr: cfg.train.lr,
        })
        .collect()
}

/// What one measuring process reports (one JSON line; the PyTorch side prints the same keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub ms_per_step: f64,
    pub side: String,
    pub device: String,
    pub threads: i64,
    /// Peak resident memory of the process, KiB (absent where the OS does not say).
    #[serde(default)]
    pub peak_rss_kb: Option<u64>,
}

/// This process's peak resident memory in KiB (`VmHWM` of /proc/self/status, Linux).
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The Rust side of one mode, in this process: `warmup` untimed steps, then `steps` timed ones.
pub fn worker(cfg: &Config, mode: BenchMode, steps: i64, warmup: i64) -> Result<Measurement> {
    // The thread count is read while the run is alive: an ensemble may lower it for its lifetime.
    let (started, threads) = match mode {
        BenchMode::Faithful => {
            let mut faithful = cfg.clone();
            faithful.train.mode = Mode::Faithful;
            let mut run = Run::start(&faithful)?;
            for _ in 0..warmup {
                run.step();
            }
            let t0 = Instant::now();
            for _ in 0..steps {
                run.step(); // reads loss and grad_norm on the host, as the PyTorch side does
            }
            (t0.elapsed(), tch::get_num_threads())
        }
        BenchMode::Fast | BenchMode::Ensemble => {
            let members = match mode {
                BenchMode::Fast => vec![Member::from_config(cfg)],
                _ => ensemble_members(cfg),
            };
            let mut ensemble = Ensemble::start(cfg, &members)?;
            let mut recorder = Recorder::new(&ensemble);
            // The steps of a real run: metrics and snapshots are recorded as `train` records them.
            let one = |ensemble: &mut Ensemble, recorder: &mut Recorder| {
                let out = ensemble.step();
                recorder.metrics(ensemble.iter - 1, &out);
                if is_saved_step(ensemble.iter, cfg.train.save_every, i64::MAX) {
                    recorder.snapshot(ensemble.iter, ensemble);
                }
            };
            for _ in 0..warmup {
                one(&mut ensemble, &mut recorder);
            }
            recorder.flush();
            let t0 = Instant::now();
            for _ in 0..steps {
                one(&mut ensemble, &mut recorder);
            }
            recorder.flush(); // copies to the host, which also waits for a GPU
            (t0.elapsed(), tch::get_num_threads())
        }
    };
    Ok(Measurement {
        ms_per_step: started.as_secs_f64() * 1000.0 / steps as f64,
        side: "rust".into(),
        device: cfg.train.device.clone(),
        threads: threads as i64,
        peak_rss_kb: peak_rss_kb(),
    })
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

fn cpu_model() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{model}, {cpus} CPUs")
}

fn parse_measurement(stdout: &[u8], what: &str) -> Result<Measurement> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).with_context(|| format!("{what} printed no JSON line"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))
}

fn threads_env(c: &mut Command, req: &BenchRequest) {
    if let Some(t) = req.threads {
        c.env("OMP_NUM_THREADS", t.to_string()).env("MKL_NUM_THREADS", t.to_string());
    }
    if req.passive_wait {
        c.env("OMP_WAIT_POLICY", "passive");
    }
}

fn measure_torch(req: &BenchRequest, ensemble: bool) -> Result<Measurement> {
    let mut args: Vec<String> = vec!["bench".into(), "--config".into(), req.config.display().to_string()];
    for s in req.sets {
        args.extend(["--set".into(), s.clone()]);
    }
    args.extend(["--steps".into(), req.steps.to_string(), "--warmup".into(), req.warmup.to_string()]);
    if ensemble {
        args.extend(["--ensemble".into(), ENSEMBLE_RUNS.to_string()]);
    }
    if let Some(d) = req.device {
        args.extend(["--device".into(), d.into()]);
    }
    let mut c = reference::command(&args)?;
    threads_env(&mut c, req);
    let out = reference::run(c, "the bench")?;
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
    c.args(["--mode", mode.name(), "--steps", &req.steps.to_string(), "--warmup", &req.warmup.to_string()]);
    threads_env(&mut c, req);
    let out = c.output().map_err(|e| anyhow!("could not start {}: {e}", req.exe.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no message)");
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
        req.device.unwrap_or(&cfg.train.device)
    );
    println!("machine: {}; load average before: {}", cpu_model(), load_average());
    println!(
        "{} timed steps after {} warm-up steps, fastest of {} per side and mode; threads per side: {}{}",
        req.steps,
        req.warmup,
        req.repeats,
        req.threads.map(|t| t.to_string()).unwrap_or_else(|| "libtorch default".into()),
        if req.passive_wait { "; OMP_WAIT_POLICY=passive" } else { "" }
    );
    let needs_solo = req.modes.iter().any(|&m| m != BenchMode::Ensemble);
    let (mut torch_solo, mut torch_ensemble) = (None, None);
    let mut rust: Vec<Option<Measurement>> = vec![None; req.modes.len()];
    // Interleaved, so that a change in the machine's load hits both sides alike.
    // Each measurement is also logged on stderr as it comes, since a round can take minutes.
    let log = |what: &str, m: &Measurement| eprintln!("  {what}: {:.3} ms/step (load average {})", m.ms_per_step, load_average());
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
    println!("{:<10} {:>16} {:>14} {:>14}", "mode", "pytorch ms/step", "rust ms/step", "pytorch/rust");
    let mut rows = Vec::new();
    for (i, &mode) in req.modes.iter().enumerate() {
        let torch = match mode {
            BenchMode::Ensemble => torch_ensemble.clone(),
            _ => torch_solo.clone(),
        }
        .expect("measured above");
        let row = BenchRow { mode, torch, rust: rust[i].clone().expect("measured above") };
        let note = match mode {
            BenchMode::Faithful => "",
            BenchMode::Fast => "  (PyTorch: the authors' loop)",
            BenchMode::Ensemble => "  (12 runs, 6 seeds x sgd/adam; PyTorch: one after another)",
        };
        println!("{:<10} {:>16.3} {:>14.3} {:>14.2}{note}", mode.name(), row.torch.ms_per_step, row.rust.ms_per_step, row.ratio());
        rows.push(row);
    }
    // The Rust side may use fewer intra-op threads than it was given: the fast path on small
    // models runs faster on one (model::fast_prefers_one_thread), so each mode says its own.
    if let Some(r) = rows.first() {
        let rust: Vec<String> = rows.iter().map(|r| format!("{} {}", r.mode.name(), r.rust.threads)).collect();
        println!("threads used: pytorch {}; rust {}", r.torch.threads, rust.join(", "));
    }
    let mib = |kb: u64| kb as f64 / 1024.0;
    if let Some(fast) = rows.iter().find(|r| r.mode == BenchMode::Fast) {
        match (fast.rust.peak_rss_kb, torch_solo.as_ref().and_then(|t| t.peak_rss_kb)) {
            (Some(r), Some(t)) => println!(
                "peak resident memory: rust fast run {:.1} MiB, pytorch run {:.1} MiB (rust/pytorch {:.2})",
                mib(r),
                mib(t),
                r as f64 / t as f64
            ),
            _ => println!("peak resident memory: not reported on this system"),
        }
    }
    println!("load average after: {}", load_average());
    Ok(rows)
}

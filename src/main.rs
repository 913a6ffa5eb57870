//! The `linattn` command line (SPEC, "The command-line contract").
use anyhow::Result;
use clap::{Parser, Subcommand};
use linattn::config::{Config, DeviceName, Mode, OptimizerKind};
use linattn::measure::noise::NoiseOutcome;
use linattn::run::{FolderBusy, Status};
use linattn::tools::bench::BenchMode;
use linattn::train::{Outcome, Progress};
use linattn::{exit, BadInput};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "linattn",
    version,
    about = "Linear Transformers on in-context regression (Ahn et al., ICLR 2024)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A config file plus `--set section.key=value` overrides.
#[derive(clap::Args)]
struct ConfigArgs {
    /// YAML config (unknown keys are an error).
    #[arg(long)]
    config: PathBuf,
    /// Override one config key, e.g. `--set train.lr=0.01` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        Config::load(&self.config, &self.sets)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train one run (or, with --seeds/--optimizers, several as one ensemble) and write its folder
    /// (config, metrics, trajectory, final parameters, summary).
    Train(TrainArgs),
    /// Run one config through the Rust model and the PyTorch side; compare them step by step.
    Compare(CompareArgs),
    /// Time the PyTorch side and the Rust side on the same config; print ms/step and the ratio.
    Bench(BenchArgs),
    /// One side of `bench`: times the Rust side of one mode in this process, prints one JSON line.
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
    /// Landscape measurements of a run folder on the evaluation batch: test loss, gradient
    /// norm, condition numbers, directional smoothness, sharpness (writes DIR/measurements.csv, the file reproduce measures into).
    Analyze(AnalyzeArgs),
    /// Stochastic-gradient noise ‖g_B − g‖ at initialisation (writes noise.csv, noise.json, noise.png).
    Noise(NoiseArgs),
    /// Time the condition number at the config's initialisation: Rust against the PyTorch
    /// side's torch.autograd.functional.hessian (a benchmark; run it on a quiet machine).
    BenchHessian(BenchHessianArgs),
    /// Reproduce the paper's figures from experiments/figures/*.yaml into PNGs and a summary;
    /// trains only the runs that are missing (finished runs are reused, interrupted ones resumed).
    Reproduce(ReproduceArgs),
}

/// The flags of `linattn train`.
#[derive(clap::Args)]
struct TrainArgs {
    /// YAML config (unknown keys are an error).
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Override one config key, e.g. `--set train.lr=0.01` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    /// Output folder.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the interrupted run in DIR from its last checkpoint.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "sets", "force"])]
    resume: Option<PathBuf>,
    /// Replace a run that already exists in --out.
    #[arg(long)]
    force: bool,
    /// Checkpoint every this many iterations (0: only on Ctrl-C/SIGTERM).
    #[arg(long, default_value_t = 250)]
    checkpoint_every: i64,
    /// Train these seeds as one batched ensemble (fast mode) into OUT/<optimizer>-seed<s>/.
    #[arg(long, value_delimiter = ',', conflicts_with = "resume")]
    seeds: Option<Vec<u32>>,
    /// With --seeds: the optimizers of the ensemble (default: the config's).
    #[arg(long, value_enum, value_delimiter = ',', requires = "seeds")]
    optimizers: Option<Vec<OptimizerKind>>,
    /// With --seeds: learning rates of the ensemble (default: the config's), each run into
    /// OUT/<optimizer>-lr<lr>-seed<s>/. The runs share the fixed cost of each operation, not
    /// the arithmetic: at L = 8 an ensemble's step grows about linearly with its members.
    #[arg(long, value_delimiter = ',', requires = "seeds")]
    lrs: Option<Vec<f64>>,
    /// CPU threads: libtorch's intra-op threads and the cores fast mode's native kernel may
    /// take (default: libtorch's, one per core).
    #[arg(long)]
    threads: Option<i32>,
}

/// The flags of `linattn compare`.
#[derive(clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Output folder (gets rust/, torch/, compare.csv and compare.png).
    #[arg(long)]
    out: PathBuf,
    /// Largest relative difference accepted (train_loss, grad_norm and final parameters).
    #[arg(long, default_value_t = 1e-6)]
    tolerance: f64,
    /// Device for both sides (overrides train.device).
    #[arg(long)]
    device: Option<DeviceName>,
}

/// The flags of `linattn bench`.
#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Timed steps per measurement.
    #[arg(long, default_value_t = 200)]
    steps: i64,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 20)]
    warmup: i64,
    /// Modes to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "faithful,fast,ensemble"
    )]
    modes: Vec<BenchMode>,
    /// Device for both sides (overrides train.device).
    #[arg(long)]
    device: Option<DeviceName>,
    /// Measurements per side and mode, interleaved; the fastest of each is reported.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// CPU threads per side (OMP_NUM_THREADS of both processes); default: libtorch's choice.
    #[arg(long)]
    threads: Option<usize>,
    /// Run both sides with OMP_WAIT_POLICY=passive (fairer on a machine shared with other work).
    #[arg(long)]
    passive_wait: bool,
}

/// The flags of `linattn bench-worker`.
#[derive(clap::Args)]
struct BenchWorkerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long, value_enum)]
    mode: BenchMode,
    #[arg(long)]
    steps: i64,
    #[arg(long, default_value_t = 0)]
    warmup: i64,
}

/// The flags of `linattn analyze`.
#[derive(clap::Args)]
struct AnalyzeArgs {
    /// A run folder written by `linattn train`.
    dir: PathBuf,
    /// Analyze the saved steps that are multiples of K.
    #[arg(long, default_value_t = 1, value_name = "K")]
    every: i64,
    /// Device for the analysis (default: the run's train.device).
    #[arg(long)]
    device: Option<DeviceName>,
    /// Also the exact eigenvalues of the whole Hessian and of each block's diagonal
    /// sub-Hessian (each P and Q, each MLP weight and bias) into DIR/spectrum.csv, and their
    /// block_heterogeneity (Zhang et al., 2024) into measurements.csv.
    #[arg(long)]
    spectrum: bool,
}

/// The flags of `linattn noise`.
#[derive(clap::Args)]
struct NoiseArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Number of sampled batches of data.batch prompts.
    #[arg(long, value_name = "S")]
    samples: i64,
    /// Prompts in the batch that gives the full gradient g.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    full_batch: i64,
    /// Output folder (a folder of its own: not a training run's).
    #[arg(long)]
    out: PathBuf,
    /// Replace a finished measurement that is already in --out.
    #[arg(long)]
    force: bool,
}

/// The flags of `linattn bench-hessian`.
#[derive(clap::Args)]
struct BenchHessianArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Timed repetitions per side, after one warm-up (the median and the minimum are reported).
    #[arg(long, default_value_t = 5, value_name = "R")]
    repeats: usize,
    /// Intra-op threads for both sides (default: libtorch's, one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

/// The flags of `linattn reproduce`.
#[derive(clap::Args)]
struct ReproduceArgs {
    /// Figure ids (fig2_setting1, ..., appB, lr-grid) or figure YAML files; none: all figures.
    figures: Vec<String>,
    /// The figures' quick scale (fewer iterations, seeds and noise samples).
    #[arg(long)]
    quick: bool,
    /// Device for training and measurements.
    #[arg(long, default_value = "cpu")]
    device: DeviceName,
    /// Folder for the run folders (reused across invocations).
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Folder for the PNGs, summary.md and summary.json [default: plots, or plots/quick with
    /// --quick, so that a quick smoke test never replaces the committed paper-scale figures]
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Folder holding figures/ and settings/ (default: ./experiments).
    #[arg(long)]
    experiments: Option<PathBuf>,
    /// Override every figure's number of iterations.
    #[arg(long)]
    iters: Option<i64>,
    /// Override every figure's seeds (comma-separated, e.g. 0,1,2).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u32>>,
    /// CPU threads per process: libtorch's intra-op threads and the cores fast mode's native
    /// kernel may take (default 1, so that several shards share a machine; give the core
    /// count to one process alone).
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Worker processes over the one runs folder, each with --threads threads; each takes
    /// whichever unit no other holds, then this process draws [default: the cores divided
    /// by --threads on CPU, 1 on CUDA].
    #[arg(long, value_name = "N", conflicts_with_all = ["shard", "draw_only"])]
    jobs: Option<usize>,
    /// Internal: this process is worker K of N of a `--jobs N` parent.
    #[arg(long, value_name = "K/N", hide = true, requires = "worker_report")]
    worker: Option<linattn::figures::Shard>,
    /// Internal: where a `--jobs` worker writes its report for the parent.
    #[arg(long, value_name = "FILE", hide = true, requires = "worker")]
    worker_report: Option<PathBuf>,
    /// train.mode of the runs and forward pass of the measurements: fast (default with
    /// --quick) or faithful (default otherwise: the authors' protocol op for op).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Do share K of N of the work (runs, measurements, noise; split by a stable hash of
    /// each unit's name) into the shared runs folder, and draw nothing.
    #[arg(long, value_name = "K/N", conflicts_with = "draw_only")]
    shard: Option<linattn::figures::Shard>,
    /// Train and measure nothing: draw from the runs folder, or name the missing units and
    /// exit 4.
    #[arg(long)]
    draw_only: bool,
    /// Train and measure nothing: time a few steps of each kind of work left, and print
    /// each figure's units and their predicted wall time with the --jobs workers.
    #[arg(long, conflicts_with_all = ["shard", "draw_only", "worker"])]
    estimate: bool,
}

/// Ctrl-C and SIGTERM ask a running command to stop at the next safe point.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// Sets libtorch's intra-op thread count, once per process, where `--threads` gives one (else
/// libtorch's default, one per core). The native kernel of fast mode takes the same count.
fn set_threads(given: Option<i32>) -> Result<()> {
    if let Some(n) = given {
        check_threads(n as i64)?;
        tch::set_num_threads(n);
    }
    Ok(())
}

/// `--threads` between 1 and the CPUs this process may run on (its affinity and cgroup quota):
/// more threads than CPUs only contend, and a typo such as 100000 would start that many.
fn check_threads(n: i64) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get()) as i64;
    if n < 1 || n > cpus {
        return Err(anyhow::anyhow!(BadInput(format!(
            "--threads: must be between 1 and the {cpus} CPU(s) this process may use, got {n}"
        ))));
    }
    Ok(())
}

fn device(d: DeviceName, flag: &str) -> Result<tch::Device> {
    d.tch()
        .map_err(|e| anyhow::anyhow!(BadInput(format!("{flag}: {e}"))))
}

/// The exit code and lines of a finished `train` (one outcome per run folder).
fn report_training(outcomes: &[(PathBuf, Outcome)], fast: bool) -> i32 {
    let mut code = exit::OK;
    for (out, outcome) in outcomes {
        let diverged = outcome.summary.status == Status::Diverged;
        let (skipped, trailing) = linattn::run::io::nonfinite_steps(&outcome.metrics, diverged);
        match outcome.summary.status {
            Status::Interrupted | Status::Running | Status::Failed => {
                let how = if fast && outcome.metrics.is_empty() {
                    format!(
                        "nothing to keep; run the same command again ({})",
                        out.display()
                    )
                } else {
                    format!("continue with: linattn train --resume {}", out.display())
                };
                eprintln!(
                    "linattn: interrupted after {} iterations; {how}",
                    outcome.summary.iters_done
                );
                code = exit::INTERRUPTED;
            }
            Status::Diverged => {
                let in_a_row = if trailing > 1 {
                    format!(", {trailing} steps in a row")
                } else {
                    String::new()
                };
                eprintln!(
                    "linattn: run diverged at iteration {} (loss or gradient not finite{in_a_row}); {} kept",
                    outcome.summary.diverged_at.unwrap_or_default(),
                    out.display()
                );
                if code == exit::OK {
                    code = exit::DIVERGED;
                }
            }
            Status::Completed => {
                if let Some(r) = outcome.metrics.last() {
                    let skipped = if skipped > 0 {
                        format!(" ({skipped} non-finite steps skipped)")
                    } else {
                        String::new()
                    };
                    println!(
                        "done: {} iterations in {:.1} s{skipped}, last train_loss {} grad_norm {}; wrote {}",
                        outcome.summary.iters_done,
                        outcome.summary.wall_time_s,
                        linattn::run::io::fmt_metric(r.train_loss),
                        linattn::run::io::fmt_metric(r.grad_norm),
                        out.display()
                    );
                }
            }
        }
    }
    code
}

fn run(cli: Cli) -> Result<i32> {
    let progress = if std::io::stderr().is_terminal() {
        Progress::Bar
    } else {
        Progress::Lines
    };
    let options = linattn::train::Options {
        progress,
        stop: stop_flag()?,
        ..Default::default()
    };
    match cli.command {
        Command::Train(args) => train_command(args, options),
        Command::Bench(args) => bench_command(args),
        Command::BenchWorker(args) => bench_worker_command(args),
        Command::Reproduce(args) => reproduce_command(args, options),
        Command::Compare(args) => compare_command(args, options),
        Command::Analyze(args) => analyze_command(args, options),
        Command::Noise(args) => noise_command(args, options),
        Command::BenchHessian(args) => bench_hessian_command(args, options),
    }
}

/// `linattn train`: one run, an ensemble (`--seeds`), or a resume.
fn train_command(args: TrainArgs, options: linattn::train::Options) -> Result<i32> {
    let TrainArgs {
        config,
        sets,
        out,
        resume,
        force,
        checkpoint_every,
        seeds,
        optimizers,
        lrs,
        threads,
    } = args;
    if checkpoint_every < 0 {
        return Err(anyhow::anyhow!(BadInput(format!(
            "--checkpoint-every: must be >= 0, got {checkpoint_every}"
        ))));
    }
    let opts = linattn::train::Options {
        replace: linattn::train::Replace::forced(force),
        checkpoint_every,
        ..options
    };
    if let Some(dir) = resume {
        return resume_command(&dir, threads, &opts);
    }
    let (config, out) = (
        config.expect("clap requires --config"),
        out.expect("clap requires --out"),
    );
    let cfg = Config::load(&config, &sets)?;
    let Some(seeds) = seeds else {
        set_threads(threads)?;
        let outcome = linattn::train::train(&cfg, &out, &opts)?;
        return Ok(report_training(
            &[(out, outcome)],
            cfg.train.mode == Mode::Fast,
        ));
    };
    let (members, outs) = ensemble_members(&cfg, &seeds, optimizers, lrs, &out)?;
    let mut cfg = cfg;
    cfg.train.mode = Mode::Fast;
    set_threads(threads)?;
    let outcomes = linattn::train::train_ensemble(&cfg, &members, &outs, &opts)?;
    Ok(report_training(
        &outs.into_iter().zip(outcomes).collect::<Vec<_>>(),
        true,
    ))
}

/// `linattn train --resume DIR`: the run in DIR, or the whole ensemble it belongs to.
fn resume_command(
    dir: &std::path::Path,
    threads: Option<i32>,
    opts: &linattn::train::Options,
) -> Result<i32> {
    let cfg = linattn::run::RunFolder::new(dir).config()?;
    set_threads(threads)?;
    let folders: Vec<PathBuf> = match linattn::train::checkpointed_group(dir) {
        Ok(g) => g.iter().map(|f| f.dir().to_path_buf()).collect(),
        Err(_) => vec![dir.to_path_buf()],
    };
    let outcomes = linattn::train::resume(dir, opts)?;
    if folders.len() > 1 {
        eprintln!(
            "linattn: resumed the ensemble of {} runs that {} belongs to",
            folders.len(),
            dir.display()
        );
    }
    Ok(report_training(
        &folders.into_iter().zip(outcomes).collect::<Vec<_>>(),
        cfg.train.mode == Mode::Fast,
    ))
}

/// The members of `train --seeds` (every seed × optimizer × learning rate) and their folders:
/// `OUT/<optimizer>-seed<s>`, or `OUT/<optimizer>-lr<lr>-seed<s>` with `--lrs`.
fn ensemble_members(
    cfg: &Config,
    seeds: &[u32],
    optimizers: Option<Vec<OptimizerKind>>,
    lrs: Option<Vec<f64>>,
    out: &std::path::Path,
) -> Result<(Vec<linattn::train::Member>, Vec<PathBuf>)> {
    if seeds.is_empty() {
        return Err(anyhow::anyhow!(BadInput(
            "--seeds: give at least one seed".into()
        )));
    }
    if let Some(bad) = lrs
        .iter()
        .flatten()
        .find(|lr| !(**lr > 0.0 && lr.is_finite()))
    {
        return Err(anyhow::anyhow!(BadInput(format!(
            "--lrs: every learning rate must be > 0, got {bad}"
        ))));
    }
    let optimizers = optimizers.unwrap_or_else(|| vec![cfg.train.optimizer]);
    let rates = lrs.clone().unwrap_or_else(|| vec![cfg.train.lr]);
    let members: Vec<linattn::train::Member> = seeds
        .iter()
        .flat_map(|&seed| optimizers.iter().map(move |&optimizer| (seed, optimizer)))
        .flat_map(|(seed, optimizer)| {
            rates.iter().map(move |&lr| linattn::train::Member {
                seed,
                optimizer,
                lr,
            })
        })
        .collect();
    let outs = members
        .iter()
        .map(|m| match lrs {
            Some(_) => out.join(format!("{}-lr{}-seed{}", m.optimizer.name(), m.lr, m.seed)),
            None => out.join(format!("{}-seed{}", m.optimizer.name(), m.seed)),
        })
        .collect();
    Ok((members, outs))
}

/// `linattn bench`.
fn bench_command(args: BenchArgs) -> Result<i32> {
    let BenchArgs {
        mut config,
        steps,
        warmup,
        modes,
        device,
        repeats,
        threads,
        passive_wait,
    } = args;
    if let Some(n) = threads {
        check_threads(n.min(i64::MAX as usize) as i64)?;
    }
    if let Some(d) = &device {
        config.sets.push(format!("train.device={d}"));
    }
    let cfg = config.load()?;
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the linattn binary: {e}"))?;
    let device = device.map(|d| d.to_string());
    let req = linattn::tools::bench::BenchRequest {
        config: &config.config,
        sets: &config.sets,
        steps,
        warmup,
        modes: &modes,
        device: device.as_deref(),
        repeats,
        threads,
        passive_wait,
        exe: &exe,
    };
    linattn::tools::bench::run(&cfg, &req)?;
    Ok(exit::OK)
}

/// `linattn bench-worker`.
fn bench_worker_command(args: BenchWorkerArgs) -> Result<i32> {
    let BenchWorkerArgs {
        config,
        mode,
        steps,
        warmup,
    } = args;
    let cfg = config.load()?;
    if steps < 1 || warmup < 0 {
        return Err(BadInput("bench-worker: --steps must be >= 1 and --warmup >= 0".into()).into());
    }
    // The thread count `linattn train` would use: libtorch's (OMP_NUM_THREADS).
    let m = linattn::tools::bench::worker(&cfg, mode, steps, warmup)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(exit::OK)
}

/// The flags of `reproduce` that clap cannot check.
fn check_reproduce_args(a: &ReproduceArgs) -> Result<()> {
    let bad = |msg: &str| Err(anyhow::anyhow!(BadInput(msg.into())));
    if a.iters.is_some_and(|i| i < 1) {
        return bad("--iters: must be >= 1");
    }
    if a.seeds.as_ref().is_some_and(|s| s.is_empty()) {
        return bad("--seeds: give at least one seed");
    }
    if let Some(seeds) = &a.seeds {
        if let Some((i, s)) = seeds
            .iter()
            .enumerate()
            .find(|(i, s)| seeds[..*i].contains(s))
        {
            return bad(&format!(
                "--seeds: seed {s} is given twice (at positions {} and {})",
                seeds.iter().position(|x| x == s).unwrap_or(0) + 1,
                i + 1
            ));
        }
    }
    check_threads(a.threads as i64)?;
    if let (Some(jobs), DeviceName::Cpu) = (a.jobs, a.device) {
        // Workers beyond the cores only wait for each other (13 processes on 2 CPUs made a
        // no-op take 20 times as long), and an estimate for them would promise the impossible.
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        let threads = a.threads.max(1) as usize;
        if jobs == 0 || jobs.saturating_mul(threads) > cpus {
            return bad(&format!(
                "--jobs: must be between 1 and {} (the {cpus} CPU(s) this process may use, at --threads {threads} per worker), got {jobs}",
                (cpus / threads).max(1)
            ));
        }
    }
    self::device(a.device, "--device")?;
    set_threads(Some(a.threads))
}

/// `linattn reproduce`.
fn reproduce_command(args: ReproduceArgs, options: linattn::train::Options) -> Result<i32> {
    check_reproduce_args(&args)?;
    let ReproduceArgs {
        figures,
        quick,
        device,
        runs,
        plots,
        experiments,
        iters,
        seeds,
        threads,
        jobs,
        worker,
        worker_report,
        mode,
        shard,
        draw_only,
        estimate,
    } = args;
    let mut options = options;
    if worker.is_some() {
        linattn::figures::jobs::enter_worker(&options.stop)?;
        // Several processes' bars on one terminal would overwrite each other.
        if options.progress == Progress::Bar {
            options.progress = Progress::Lines;
        }
    }
    let mut req = linattn::figures::Request {
        figures,
        scale: linattn::figures::spec::Scale {
            quick,
            iters,
            seeds,
            mode,
        },
        device,
        runs,
        plots: plots.unwrap_or_else(|| PathBuf::from(if quick { "plots/quick" } else { "plots" })),
        experiments,
        options: linattn::train::Options {
            checkpoint_every: 250,
            ..options
        },
        shard,
        worker,
        prior: None,
        draw_only,
    };
    let started = std::time::Instant::now();
    // A worker's command line is its parent's, `--jobs` included: it does its own share.
    let jobs = match (shard, worker, draw_only, device) {
        (_, Some(_), _, _) => 1,
        (None, None, false, DeviceName::Cpu) => {
            jobs.unwrap_or_else(|| linattn::figures::jobs::default_jobs(threads as usize))
        }
        _ => jobs.unwrap_or(1),
    };
    if estimate {
        let estimate = linattn::figures::estimate(&req, jobs)?;
        let cpu = linattn::tools::bench::cpu_model();
        let s = if threads == 1 { "" } else { "s" };
        println!("reproduce --estimate on {cpu}, {threads} thread{s} per worker:\n{estimate}");
        return Ok(exit::OK);
    }
    let report = reproduce_with_workers(&mut req, jobs, started)?;
    if let Some(path) = &worker_report {
        linattn::figures::jobs::write_report(path, &report)?;
        return Ok(if report.interrupted {
            exit::INTERRUPTED
        } else {
            exit::OK
        });
    }
    Ok(report_reproduce(&report, &req, jobs, started))
}

/// Runs `jobs` worker processes over the runs folder (when more than one), then this process's
/// own pass, which draws; the report covers them all.
fn reproduce_with_workers(
    req: &mut linattn::figures::Request,
    jobs: usize,
    started: std::time::Instant,
) -> Result<linattn::figures::Report> {
    if jobs <= 1 {
        return linattn::figures::reproduce(req);
    }
    // A bad figure or folder is said once, here, before any worker starts.
    linattn::figures::check(req)?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let w = linattn::figures::jobs::run(&args, jobs, &req.options.stop)?;
    req.prior = Some(linattn::figures::Prior {
        started,
        worked: w.reports.iter().flat_map(|r| r.worked.clone()).collect(),
    });
    let own = if w.interrupted {
        linattn::figures::Report {
            interrupted: true,
            ..Default::default()
        }
    } else {
        linattn::figures::reproduce(req)?
    };
    Ok(linattn::figures::jobs::combine(&w.reports, own))
}

/// What a finished `reproduce` says: the work done, the files written; its exit code.
fn report_reproduce(
    report: &linattn::figures::Report,
    req: &linattn::figures::Request,
    jobs: usize,
    started: std::time::Instant,
) -> i32 {
    let t = report.tally;
    let who = match (req.shard, jobs) {
        (Some(s), _) => format!(" (shard {}/{})", s.index, s.count),
        (None, 1) => String::new(),
        (None, n) => format!(" ({n} workers)"),
    };
    println!(
        "reproduce{who}: runs trained {}, reused {}, resumed {}, restarted {}; ensembles trained {}; runs measured {}; noise computed {}; units left to other workers {}; {:.0} s",
        t.trained,
        t.reused,
        t.resumed,
        t.restarted,
        t.ensembles,
        report.measured,
        report.noise_computed,
        report.busy,
        started.elapsed().as_secs_f64()
    );
    for p in &report.pngs {
        println!("wrote {}", p.display());
    }
    if report.interrupted {
        eprintln!("linattn: interrupted; run the same command again to continue where it stopped");
        return exit::INTERRUPTED;
    }
    if req.shard.is_some() {
        println!("shard done; draw with: linattn reproduce ... --draw-only");
    } else {
        println!("wrote {}", req.plots.join("summary.md").display());
    }
    exit::OK
}

/// `linattn compare`.
fn compare_command(args: CompareArgs, options: linattn::train::Options) -> Result<i32> {
    let CompareArgs {
        mut config,
        out,
        tolerance,
        device,
    } = args;
    if let Some(d) = device {
        config.sets.push(format!("train.device={d}"));
    }
    let cfg = config.load()?;
    let c = linattn::tools::compare::compare(&cfg, &config.config, &config.sets, &out, &options)?;
    println!(
        "compared {} iterations: largest relative difference {:e} (train_loss/grad_norm {:e}, final parameters {:e}); bit-identical: {}",
        c.iters,
        c.max_rel(),
        c.max_rel_metrics,
        c.max_rel_params,
        if c.bit_identical { "yes" } else { "no" }
    );
    println!("wrote {}", out.join("compare.csv").display());
    if c.max_rel() > tolerance {
        eprintln!("linattn: the two sides differ beyond the tolerance {tolerance:e}");
        return Ok(exit::FAILURE);
    }
    Ok(exit::OK)
}

/// `linattn analyze`.
fn analyze_command(args: AnalyzeArgs, options: linattn::train::Options) -> Result<i32> {
    let AnalyzeArgs {
        dir,
        every,
        device,
        spectrum,
    } = args;
    let device = device.map(|d| self::device(d, "--device")).transpose()?;
    let rows = linattn::measure::analyze(
        &dir,
        every,
        spectrum,
        device,
        options.progress == Progress::Bar,
        &options.stop,
    )?;
    let path = linattn::run::RunFolder::new(&dir).measurements_path();
    let f = |v: Option<f64>| {
        v.map(|v| (v as f32).to_string())
            .unwrap_or_else(|| "-".into())
    };
    match rows.last() {
        Some((t, r)) => {
            println!(
                "analyzed {} steps; at iteration {t}: test_loss {} condition_number {} sharpness {}{}; wrote {}",
                rows.len(),
                f(r.test_loss),
                f(r.condition_number),
                f(r.sharpness),
                match spectrum {
                    true => format!(" block_heterogeneity {}", f(r.block_heterogeneity)),
                    false => String::new(),
                },
                path.display()
            );
            if spectrum {
                let folder = linattn::run::RunFolder::new(&dir);
                println!("wrote {}", folder.spectrum_path().display());
            }
        }
        None => println!("no saved step is a multiple of {every}; nothing measured"),
    }
    Ok(exit::OK)
}

/// `linattn noise`.
fn noise_command(args: NoiseArgs, options: linattn::train::Options) -> Result<i32> {
    let NoiseArgs {
        config,
        samples,
        full_batch,
        out,
        force,
    } = args;
    let cfg = config.load()?;
    let s = match linattn::measure::noise::measure_into(
        &cfg,
        samples,
        full_batch,
        &out,
        force,
        options.progress == Progress::Bar,
        &options.stop,
    )? {
        NoiseOutcome::Done(s) => s,
        NoiseOutcome::Interrupted { measured } => {
            eprintln!("linattn: interrupted after {measured} of {samples} batches; run the same command again to continue");
            return Ok(exit::INTERRUPTED);
        }
    };
    println!(
        "noise over {} batches of {}: mean {:.6} std {:.6} kurtosis {:.3} Hill tail index {:.3} (k = {}); wrote {}",
        s.count,
        s.batch,
        s.mean,
        s.std,
        s.kurtosis,
        s.hill_tail_index,
        s.hill_k,
        out.join(linattn::measure::noise::NOISE_CSV).display()
    );
    Ok(exit::OK)
}

/// `linattn bench-hessian`.
fn bench_hessian_command(args: BenchHessianArgs, options: linattn::train::Options) -> Result<i32> {
    let BenchHessianArgs {
        config,
        repeats,
        threads,
    } = args;
    let cfg = config.load()?;
    if let Some(n) = threads {
        check_threads(n.min(i64::MAX as usize) as i64)?;
    }
    set_threads(threads.map(|n| n as i32))?;
    let b = linattn::tools::bench::bench_hessian(
        &cfg,
        &config.config,
        &config.sets,
        repeats,
        threads,
        options.progress == Progress::Bar,
    )?;
    println!(
        "condition number at init ({} parameters, {}, {} repeats): rust median {:.1} ms (min {:.1}, {} threads), pytorch median {:.1} ms (min {:.1}, {} threads); ratio rust/pytorch {:.3} (of the minima {:.3}); values {} vs {}",
        b.num_params,
        b.device,
        b.repeats,
        b.rust_ms,
        b.rust_min_ms,
        b.rust_threads,
        b.torch_ms,
        b.torch_min_ms,
        b.torch_threads,
        b.ratio(),
        b.rust_min_ms / b.torch_min_ms,
        b.rust_condition_number as f32,
        b.torch_condition_number as f32
    );
    println!(
        "through the fast forward (train.mode: fast): rust median {:.1} ms (min {:.1}); ratio rust/pytorch {:.3} (of the minima {:.3}); value {}",
        b.rust_fast_ms,
        b.rust_fast_min_ms,
        b.rust_fast_ms / b.torch_ms,
        b.rust_fast_min_ms / b.torch_min_ms,
        b.rust_fast_condition_number as f32
    );
    Ok(exit::OK)
}

fn main() {
    // A panic is a bug, but the user still gets one line and an exit code, not a backtrace.
    std::panic::set_hook(Box::new(|_| {}));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            if !e.use_stderr() {
                let _ = e.print();
                std::process::exit(exit::OK);
            }
            // One line, like every other bad input; the usage is one `--help` away.
            let text = e.to_string();
            let what: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("tip:"))
                .filter(|l| !l.is_empty())
                .collect();
            let what = what.join(" ");
            eprintln!(
                "linattn: error: {} (see linattn --help)",
                what.trim_start_matches("error: ")
            );
            std::process::exit(exit::BAD_INPUT);
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)))
        .unwrap_or_else(|payload| {
            Err(anyhow::anyhow!(
                "internal error: {}",
                linattn::panic_line(payload.as_ref())
            ))
        });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            let incomplete = e
                .chain()
                .any(|c| c.downcast_ref::<linattn::figures::Incomplete>().is_some());
            let bad = e.chain().any(|c| {
                c.downcast_ref::<BadInput>().is_some() || c.downcast_ref::<FolderBusy>().is_some()
            });
            let msg = match e.chain().find_map(|c| c.downcast_ref::<BadInput>()) {
                Some(b) => b.to_string(),
                None => format!("{e:#}"),
            };
            eprintln!("linattn: error: {}", msg.replace('\n', " "));
            match (incomplete, bad) {
                (true, _) => exit::INCOMPLETE,
                (_, true) => exit::BAD_INPUT,
                _ => exit::FAILURE,
            }
        }
    };
    std::process::exit(code);
}

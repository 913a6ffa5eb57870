//! The `linattn` command line (SPEC, "The command-line contract").
use anyhow::Result;
use clap::{Parser, Subcommand};
use linattn::artifacts::Status;
use linattn::bench::BenchMode;
use linattn::config::Config;
use linattn::{exit, BadInput};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "linattn", version, about = "Linear Transformers on in-context regression (Ahn et al., ICLR 2024)")]
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
    /// Train one run and write its folder (config, metrics, trajectory, final parameters, summary).
    Train {
        #[command(flatten)]
        config: ConfigArgs,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one config through the Rust model and the PyTorch side; compare them step by step.
    Compare {
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
        device: Option<String>,
    },
    /// Time the PyTorch side and the Rust side on the same config; print ms/step and the ratio.
    Bench {
        #[command(flatten)]
        config: ConfigArgs,
        /// Timed steps per measurement.
        #[arg(long, default_value_t = 200)]
        steps: i64,
        /// Untimed steps before the timed ones.
        #[arg(long, default_value_t = 20)]
        warmup: i64,
        /// Modes to measure, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "faithful,fast,ensemble")]
        modes: Vec<BenchMode>,
        /// Device for both sides (overrides train.device).
        #[arg(long)]
        device: Option<String>,
        /// Measurements per side and mode, interleaved; the fastest of each is reported.
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// CPU threads per side (OMP_NUM_THREADS of both processes); default: libtorch's choice.
        #[arg(long)]
        threads: Option<usize>,
        /// Run both sides with OMP_WAIT_POLICY=passive (fairer on a machine shared with other work).
        #[arg(long)]
        passive_wait: bool,
    },
    /// One side of `bench`: times the Rust side of one mode in this process, prints one JSON line.
    #[command(hide = true)]
    BenchWorker {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum)]
        mode: BenchMode,
        #[arg(long)]
        steps: i64,
        #[arg(long, default_value_t = 0)]
        warmup: i64,
    },
}

fn run(cli: Cli) -> Result<i32> {
    let progress = std::io::stderr().is_terminal();
    match cli.command {
        Command::Train { config, out } => {
            let cfg = config.load()?;
            let outcome = linattn::train::train(&cfg, &out, progress)?;
            let last = outcome.metrics.last();
            match outcome.summary.status {
                Status::Diverged => {
                    eprintln!(
                        "linattn: run diverged at iteration {} (loss or gradient not finite); {} kept",
                        outcome.summary.diverged_at.unwrap_or_default(),
                        out.display()
                    );
                    Ok(exit::DIVERGED)
                }
                _ => {
                    if let Some(r) = last {
                        println!(
                            "done: {} iterations in {:.1} s, last train_loss {} grad_norm {}; wrote {}",
                            outcome.summary.iters_done,
                            outcome.summary.wall_time_s,
                            r.train_loss,
                            r.grad_norm,
                            out.display()
                        );
                    }
                    Ok(exit::OK)
                }
            }
        }
        Command::Bench { mut config, steps, warmup, modes, device, repeats, threads, passive_wait } => {
            if let Some(d) = &device {
                config.sets.push(format!("train.device={d}"));
            }
            let cfg = config.load()?;
            let exe = std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find the linattn binary: {e}"))?;
            let req = linattn::bench::BenchRequest {
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
            linattn::bench::run(&cfg, &req)?;
            Ok(exit::OK)
        }
        Command::BenchWorker { config, mode, steps, warmup } => {
            let cfg = config.load()?;
            if steps < 1 || warmup < 0 {
                return Err(BadInput("bench-worker: --steps must be >= 1 and --warmup >= 0".into()).into());
            }
            let m = linattn::bench::worker(&cfg, mode, steps, warmup)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(exit::OK)
        }
        Command::Compare { mut config, out, tolerance, device } => {
            if let Some(d) = device {
                config.sets.push(format!("train.device={d}"));
            }
            let cfg = config.load()?;
            let c = linattn::compare::compare(&cfg, &config.config, &config.sets, &out, progress)?;
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
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { exit::BAD_INPUT } else { exit::OK };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let bad = e.chain().any(|c| c.downcast_ref::<BadInput>().is_some());
            let msg = match e.chain().find_map(|c| c.downcast_ref::<BadInput>()) {
                Some(b) => b.to_string(),
                None => format!("{e:#}"),
            };
            eprintln!("linattn: error: {}", msg.replace('\n', " "));
            if bad { exit::BAD_INPUT } else { exit::FAILURE }
        }
    };
    std::process::exit(code);
}

//! The `linattn` command line (SPEC, "The command-line contract").
use anyhow::Result;
use clap::{Parser, Subcommand};
use linattn::artifacts::Status;
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
    /// Landscape measurements of a run folder on the evaluation batch: test loss, gradient
    /// norm, condition numbers, directional smoothness, sharpness (writes DIR/analysis.csv).
    Analyze {
        /// A run folder written by `linattn train`.
        dir: PathBuf,
        /// Analyze the saved steps that are multiples of K.
        #[arg(long, default_value_t = 1, value_name = "K")]
        every: i64,
        /// Device for the analysis (default: the run's train.device).
        #[arg(long)]
        device: Option<String>,
    },
    /// Stochastic-gradient noise ‖g_B − g‖ at initialisation (writes noise.csv, noise.json, noise.png).
    Noise {
        #[command(flatten)]
        config: ConfigArgs,
        /// Number of sampled batches of data.batch prompts.
        #[arg(long, value_name = "S")]
        samples: i64,
        /// Prompts in the batch that gives the full gradient g.
        #[arg(long, default_value_t = 100_000, value_name = "N")]
        full_batch: i64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Time the condition number at the config's initialisation: Rust against the PyTorch
    /// side's torch.autograd.functional.hessian (a benchmark; run it on a quiet machine).
    BenchHessian {
        #[command(flatten)]
        config: ConfigArgs,
        /// Timed repetitions per side, after one warm-up (the median and the minimum are reported).
        #[arg(long, default_value_t = 5, value_name = "R")]
        repeats: usize,
        /// Intra-op threads for both sides (default: libtorch's, one per core).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
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
        Command::Analyze { dir, every, device } => {
            let device = device
                .map(|d| linattn::device::parse(&d).map_err(|e| anyhow::anyhow!(BadInput(format!("--device: {e}")))))
                .transpose()?;
            let rows = linattn::landscape::analyze_dir_on(&dir, every, device, progress)?;
            match rows.last() {
                Some(r) => println!(
                    "analyzed {} steps; at iteration {}: test_loss {} condition_number {} sharpness {}; wrote {}",
                    rows.len(),
                    r.iter,
                    r.test_loss as f32,
                    r.condition_number as f32,
                    r.sharpness as f32,
                    dir.join(linattn::landscape::ANALYSIS).display()
                ),
                None => println!(
                    "no saved step is a multiple of {every}; wrote an empty {}",
                    dir.join(linattn::landscape::ANALYSIS).display()
                ),
            }
            Ok(exit::OK)
        }
        Command::Noise { config, samples, full_batch, out } => {
            let cfg = config.load()?;
            let s = linattn::noise::run_noise(&cfg, samples, full_batch, &out, progress)?;
            println!(
                "noise over {} batches of {}: mean {:.6} std {:.6} kurtosis {:.3} Hill tail index {:.3} (k = {}); wrote {}",
                s.count,
                s.batch,
                s.mean,
                s.std,
                s.kurtosis,
                s.hill_tail_index,
                s.hill_k,
                out.join(linattn::noise::NOISE_CSV).display()
            );
            Ok(exit::OK)
        }
        Command::BenchHessian { config, repeats, threads } => {
            let cfg = config.load()?;
            let b = linattn::landscape::bench_hessian(&cfg, &config.config, &config.sets, repeats, threads, progress)?;
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

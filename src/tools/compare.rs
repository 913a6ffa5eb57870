//! `linattn compare`: the same config through the Rust model and the PyTorch side, side by side.
use super::pytorch;
use crate::config::{Config, Mode};
use crate::plots;
use crate::run::io::{self as artifacts, fmt_f32};
use crate::run::RunFolder;
use crate::train::{self, Options, Replace};
use crate::BadInput;
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};

pub struct Comparison {
    pub iters: usize,
    /// Largest relative difference over every train_loss and grad_norm.
    pub max_rel_metrics: f64,
    /// Largest elementwise relative difference of the final parameters.
    pub max_rel_params: f64,
    pub bit_identical: bool,
}

impl Comparison {
    pub fn max_rel(&self) -> f64 {
        self.max_rel_metrics.max(self.max_rel_params)
    }
}

fn rel(a: f64, b: f64) -> f64 {
    if a.to_bits() == b.to_bits() || a == b {
        0.0
    } else {
        (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
    }
}

/// The largest elementwise relative difference of the two sides' final parameters, and
/// whether they are bit-identical.
fn compare_final(rust_run: &RunFolder, torch_run: &RunFolder) -> Result<(f64, bool)> {
    let mut bit_identical = true;
    let rust_final = rust_run.final_params()?;
    let torch_final = torch_run.final_params()?;
    let mut max_rel_params = 0f64;
    for (name, a) in &rust_final {
        let b = &torch_final
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("the PyTorch side's final.safetensors has no {name}"))?
            .1;
        bit_identical &= a.equal(b);
        let diff = (a - b).abs() / b.abs().clamp_min(f64::MIN_POSITIVE);
        max_rel_params = max_rel_params.max(diff.max().double_value(&[]));
    }
    Ok((max_rel_params, bit_identical))
}

/// Runs both sides into `out/rust` and `out/torch` and writes `compare.csv` and `compare.png`.
pub fn compare(
    cfg: &Config,
    config_path: &Path,
    sets: &[String],
    out: &Path,
    opts: &Options,
) -> Result<Comparison> {
    if cfg.train.mode == Mode::Fast {
        return Err(anyhow!(BadInput(
            "config key train.mode: compare needs faithful mode; fast mode draws its data from other random streams than the PyTorch side, so the two sides would differ from the first step (bench times fast mode against the PyTorch side)".into()
        )));
    }
    let (rust_dir, torch_dir) = (out.join("rust"), out.join("torch"));
    let opts = Options {
        replace: Replace::Anything,
        ..opts.clone()
    };
    train::train(cfg, &rust_dir, &opts)?;
    let mut args: Vec<std::ffi::OsString> =
        vec!["train".into(), "--config".into(), config_path.into()];
    for s in sets {
        args.push("--set".into());
        args.push(s.into());
    }
    args.push("--out".into());
    args.push(PathBuf::from(&torch_dir).into());
    let _ = std::fs::remove_dir_all(&torch_dir);
    pytorch::run(pytorch::command(args)?, "the config")?;

    let (rust_run, torch_run) = (RunFolder::new(&rust_dir), RunFolder::new(&torch_dir));
    let rust = rust_run.metrics()?;
    let torch = torch_run.metrics()?;
    let mut csv = String::from("iter,rust_loss,torch_loss,abs_diff,rel_diff\n");
    let mut max_rel_metrics = 0f64;
    let mut bit_identical = rust.len() == torch.len();
    for (r, t) in rust.iter().zip(&torch) {
        let (a, b) = (r.train_loss, t.train_loss);
        let d = rel(a, b);
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            r.iter,
            fmt_f32(r.train_loss as f32),
            fmt_f32(t.train_loss as f32),
            (a - b).abs(),
            d
        ));
        max_rel_metrics = max_rel_metrics.max(d).max(rel(r.grad_norm, t.grad_norm));
        bit_identical &= r.train_loss.to_bits() == t.train_loss.to_bits()
            && r.grad_norm.to_bits() == t.grad_norm.to_bits();
    }
    artifacts::write_atomic(&out.join("compare.csv"), csv.as_bytes())?;

    let (max_rel_params, params_identical) = compare_final(&rust_run, &torch_run)?;
    bit_identical &= params_identical;
    let iters: Vec<f64> = rust.iter().map(|r| r.iter as f64).collect();
    let losses = |m: &[artifacts::MetricsRow]| m.iter().map(|r| r.train_loss).collect::<Vec<_>>();
    plots::compare_overlay(
        &out.join("compare.png"),
        &iters,
        &losses(&rust),
        &losses(&torch),
        &format!(
            "Rust vs PyTorch: {:?}, {:?}, {}",
            cfg.data.setting, cfg.train.optimizer, cfg.train.device
        ),
    )?;
    Ok(Comparison {
        iters: rust.len(),
        max_rel_metrics,
        max_rel_params,
        bit_identical,
    })
}

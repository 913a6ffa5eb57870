//! Shared helpers for the integration tests: the `linattn` binary, the PyTorch side in the
//! project's venv, and run folders.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The venv's python: the PyTorch side of every side-by-side test. A missing venv fails the
/// test with a message saying how to make it; it never passes silently.
pub fn python() -> PathBuf {
    let venv = std::env::var("LINATTN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache/linattn/venv-torch-2.11.0")
        });
    let py = venv.join("bin/python3");
    assert!(
        py.exists(),
        "no python at {} — run `bash scripts/test.sh`, which sets up the venv",
        py.display()
    );
    py
}

/// The checkout: `$LINATTN_ROOT` (scripts/gpu-check.sh runs test binaries built in another
/// folder), else the one the tests were built in.
pub fn root() -> PathBuf {
    std::env::var_os("LINATTN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn linattn() -> Command {
    // `$LINATTN_BIN` as for LINATTN_ROOT, else the binary cargo built with the tests.
    let bin = std::env::var_os("LINATTN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_linattn")));
    let mut c = Command::new(bin);
    c.env("LINATTN_VENV", python().parent().unwrap().parent().unwrap());
    c
}

pub fn reference() -> Command {
    let mut c = Command::new(python());
    c.arg(root().join("experiments/pytorch_reference.py"));
    c
}

pub fn experiment(name: &str) -> PathBuf {
    root().join("experiments").join(name)
}

/// Runs a command and returns its output, panicking with stderr if it could not start.
pub fn output(mut c: Command) -> Output {
    c.output()
        .unwrap_or_else(|e| panic!("could not run {c:?}: {e}"))
}

pub fn ok(c: Command) -> Output {
    let desc = format!("{c:?}");
    let o = output(c);
    assert!(
        o.status.success(),
        "{desc} failed ({:?}):\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Adds `--config`, the `--set`s and `--out` to a train-like command.
pub fn with_config(mut c: Command, config: &Path, sets: &[String], out: &Path) -> Command {
    c.arg("--config").arg(config);
    for s in sets {
        c.arg("--set").arg(s);
    }
    c.arg("--out").arg(out);
    c
}

/// `(iter, train_loss, grad_norm)` rows of a metrics.csv, parsed as float32.
pub fn metrics(dir: &Path) -> Vec<(i64, f32, f32)> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("iter,train_loss,grad_norm"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

pub fn rel_diff(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / b.abs().max(1e-30)
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// What every script given to [`python_on_run`] starts with: the PyTorch side imported as
/// `ref`, safetensors' `load_file`, and the run folder's `run_dir` and `cfg`.
const RUN_SCRIPT_PREAMBLE: &str = r#"
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
import pytorch_reference as ref
from safetensors.torch import load_file
run_dir = sys.argv[2]
cfg = ref.load_config(run_dir + "/config.yaml")
"#;

/// Runs `script` (Python source, after [`RUN_SCRIPT_PREAMBLE`]) in the venv with `argv[1]` =
/// experiments/ (so it can import the PyTorch side) and `argv[2]` = `dir`; returns its stdout.
/// It fails the test if the script fails.
pub fn python_on_run(script: &str, dir: &Path) -> String {
    let mut c = Command::new(python());
    c.arg("-c")
        .arg(format!("{RUN_SCRIPT_PREAMBLE}{script}"))
        .arg(root().join("experiments"))
        .arg(dir);
    String::from_utf8_lossy(&ok(c).stdout).into_owned()
}

/// A model small enough for exact Hessians and finite differences: L = 2, H = 2, d = 3, n = 4.
pub fn small_arch(
    parametrization: linattn::config::Parametrization,
    attention: linattn::config::Attention,
    mlp_hidden: i64,
) -> linattn::model::Arch {
    linattn::model::Arch {
        layers: 2,
        heads: 2,
        dim: 3,
        context: 4,
        parametrization,
        attention,
        mlp_hidden,
    }
}

/// Random float64 parameters (normal × 0.3) and a batch of 6 prompts for `arch`, drawn from
/// `seed` in that order.
pub fn random_problem(
    arch: &linattn::model::Arch,
    seed: i64,
) -> (Vec<tch::Tensor>, linattn::data::Batch) {
    use tch::{Device, Kind, Tensor};
    tch::manual_seed(seed);
    let opts = (Kind::Double, Device::Cpu);
    let params = arch
        .param_specs()
        .iter()
        .map(|(_, s)| Tensor::randn(s.as_slice(), opts) * 0.3)
        .collect();
    let z = Tensor::randn([6, arch.context + 1, arch.dim + 1], opts);
    let _ = z
        .narrow(1, arch.context, 1)
        .narrow(2, arch.dim, 1)
        .fill_(0.0);
    let y_query = Tensor::randn([6], opts);
    (params, linattn::data::Batch { z, y_query })
}

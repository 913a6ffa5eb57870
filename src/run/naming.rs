//! Where runs and noise measurements live in a runs folder: a folder is named after its
//! resolved config (a readable part plus a hash of the whole config except `train.device`), so
//! two figures that need the same run share one folder, a finished run is found again by any
//! later invocation, and a run trained on one device is reused on another.
pub use super::io::fnv1a;
use crate::config::{Attention, Config, Dtype, Mode, Parametrization, TrainConfig};
use std::path::{Path, PathBuf};

/// Hash of everything that determines a run's numbers (the device only changes the last bits):
/// the config's YAML with an empty `train.device`.
pub fn config_hash(cfg: &Config) -> u64 {
    let mut tree = serde_yaml::to_value(cfg).expect("a Config always serializes");
    tree["train"]["device"] = serde_yaml::Value::String(String::new());
    fnv1a(
        serde_yaml::to_string(&tree)
            .expect("a YAML tree always serializes")
            .as_bytes(),
    )
}
/// The readable part of a run folder's path: what model on what data.
pub fn group_name(cfg: &Config) -> String {
    let (m, d) = (&cfg.model, &cfg.data);
    let setting = serde_yaml::to_string(&d.setting)
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut name = format!("{setting}-n{}-L{}-d{}", d.context, m.layers, m.dim);
    if m.heads != 1 {
        name.push_str(&format!("-H{}", m.heads));
    }
    if m.attention == Attention::Softmax {
        name.push_str("-softmax");
    }
    if m.parametrization == Parametrization::Full {
        name.push_str("-full");
    }
    if m.mlp_hidden > 0 {
        name.push_str(&format!("-mlp{}", m.mlp_hidden));
    }
    if cfg.train.mode == Mode::Fast {
        name.push_str("-fast");
    }
    if cfg.train.dtype == Dtype::Float64 {
        name.push_str("-f64");
    }
    name
}

/// `RUNS/<group>/<optimizer>-lr<lr>-seed<s>-it<iters>-<hash>`.
pub fn run_dir(runs: &Path, cfg: &Config) -> PathBuf {
    let t = &cfg.train;
    runs.join(group_name(cfg)).join(format!(
        "{}-lr{}-seed{}-it{}-{:08x}",
        t.optimizer.name(),
        t.lr,
        t.seed,
        t.iters,
        config_hash(cfg) as u32
    ))
}

/// The config a noise measurement depends on: model, data, seed and the runs' mode and dtype
/// (not the optimizer). Noise is always drawn by the faithful protocol (`linattn noise`),
/// whatever mode the runs train in; the mode says only how its gradients are computed.
pub fn noise_config(cfg: &Config, seed: u32) -> Config {
    let mut c = cfg.clone();
    c.train = TrainConfig {
        seed,
        // A fast figure's noise is computed in fast mode (the same batches, values within
        // rounding of the faithful ones, measure::noise) and a faithful figure's faithfully.
        mode: cfg.train.mode,
        dtype: cfg.train.dtype,
        device: cfg.train.device,
        ..TrainConfig::default()
    };
    // The noise is measured on fresh prompts whatever the training set.
    c.data.train_prompts = 0;
    c
}

/// `RUNS/<group>/noise-seed<s>-n<samples>-fb<full_batch>-<hash>`.
pub fn noise_dir(runs: &Path, cfg: &Config, samples: i64, full_batch: i64) -> PathBuf {
    runs.join(group_name(cfg)).join(format!(
        "noise-seed{}-n{samples}-fb{full_batch}-{:08x}",
        cfg.train.seed,
        config_hash(cfg) as u32
    ))
}

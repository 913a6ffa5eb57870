//! The run folders of `reproduce`: where each run lives, whether it is already done, and
//! training what is missing.
//!
//! A run's folder is named after its resolved config (a readable part plus a hash of the whole
//! config except `train.device`), so two figures that need the same run share one folder, a
//! finished run is found again by any later invocation, and a run trained on one device is
//! reused when the figures are drawn on another.
use crate::artifacts::{self, Status, Summary};
use crate::config::{Attention, Config, Mode, Parametrization, TrainConfig};
use crate::figures::opt_name;
use crate::train::{self, Options};
use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};

/// Which of the work a run needed, summed over an invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub trained: usize,
    /// Finished (completed or diverged) before this invocation: used as they are.
    pub reused: usize,
    /// Interrupted with a checkpoint: continued with `train::resume`.
    pub resumed: usize,
    /// Left half-done without a checkpoint: trained again from the start.
    pub restarted: usize,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.trained += o.trained;
        self.reused += o.reused;
        self.resumed += o.resumed;
        self.restarted += o.restarted;
    }
}

/// 64-bit FNV-1a: stable across Rust versions and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Hash of everything that determines a run's numbers (the device only changes the last bits).
pub fn config_hash(cfg: &Config) -> u64 {
    let mut c = cfg.clone();
    c.train.device = String::new();
    fnv1a(c.to_yaml().as_bytes())
}

/// The readable part of a run folder's path: what model on what data.
pub fn group_name(cfg: &Config) -> String {
    let (m, d) = (&cfg.model, &cfg.data);
    let setting = serde_yaml::to_string(&d.setting).unwrap_or_default().trim().to_string();
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
    name
}

/// `RUNS/<group>/<optimizer>-lr<lr>-seed<s>-it<iters>-<hash>`.
pub fn run_dir(runs: &Path, cfg: &Config) -> PathBuf {
    let t = &cfg.train;
    runs.join(group_name(cfg)).join(format!(
        "{}-lr{}-seed{}-it{}-{:08x}",
        opt_name(t.optimizer),
        t.lr,
        t.seed,
        t.iters,
        config_hash(cfg) as u32
    ))
}

/// The config a noise measurement depends on: model, data and seed (not the optimizer). Noise
/// is always drawn by the faithful protocol (`linattn noise`), whatever mode the runs train in.
pub fn noise_config(cfg: &Config, seed: u32) -> Config {
    let mut c = cfg.clone();
    c.train = TrainConfig { seed, mode: Mode::Faithful, device: cfg.train.device.clone(), ..TrainConfig::default() };
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

/// Where a run folder stands.
#[derive(Debug)]
pub enum State {
    /// Completed or diverged: a result.
    Done(Summary),
    /// Interrupted after a checkpoint.
    Resumable,
    /// Something is there, but nothing to continue from.
    Broken,
    Missing,
}

pub fn state(dir: &Path) -> State {
    if !dir.join(artifacts::CONFIG).exists() {
        return if dir.exists() { State::Broken } else { State::Missing };
    }
    match Summary::read(dir) {
        Ok(s) if matches!(s.status, Status::Completed | Status::Diverged) => {
            if dir.join(artifacts::TRAJECTORY).exists() {
                State::Done(s)
            } else {
                State::Broken
            }
        }
        _ if dir.join(train::CHECKPOINT).exists() => State::Resumable,
        _ => State::Broken,
    }
}

/// What training a run ended in; `Interrupted` means Ctrl-C/SIGTERM stopped it.
pub enum Trained {
    Done(Summary, Tally),
    Interrupted,
}

/// Makes sure the run of `cfg` is in `dir`: reuses it, resumes it, or trains it.
pub fn ensure(cfg: &Config, dir: &Path, opts: &Options) -> Result<Trained> {
    let mut tally = Tally::default();
    let outcome = match state(dir) {
        State::Done(s) => {
            tally.reused = 1;
            return Ok(Trained::Done(s, tally));
        }
        State::Resumable => {
            tally.resumed = 1;
            train::resume(dir, opts)?
        }
        State::Broken => {
            tally.restarted = 1;
            train::train(cfg, dir, &Options { force: true, ..opts.clone() })?
        }
        State::Missing => {
            tally.trained = 1;
            train::train(cfg, dir, opts)?
        }
    };
    match outcome.summary.status {
        Status::Interrupted | Status::Running => Ok(Trained::Interrupted),
        Status::Completed | Status::Diverged => Ok(Trained::Done(outcome.summary, tally)),
    }
}

/// The last step a finished run saved: `iters`, or the iteration it diverged at.
pub fn last_step(cfg: &Config, summary: &Summary) -> i64 {
    match summary.status {
        Status::Diverged => summary.diverged_at.unwrap_or(0),
        _ => cfg.train.iters,
    }
}

/// Whether a finished run's trajectory holds step `t`.
pub fn has_step(cfg: &Config, summary: &Summary, t: i64) -> bool {
    t >= 0 && t <= last_step(cfg, summary) && train::is_saved_step(t, cfg.train.save_every, cfg.train.iters)
}

/// Reads back the resolved config of a finished run, checking that it is the one asked for.
pub fn check_config(dir: &Path, want: &Config) -> Result<()> {
    let got = Config::load_run(dir)?;
    if config_hash(&got) != config_hash(want) {
        return Err(anyhow!(
            "{}: holds a run of another config than its name says; remove the folder to train it again",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_name_ignores_the_device_but_not_the_rest() {
        let a = Config::default();
        let mut b = a.clone();
        b.train.device = "cuda".into();
        assert_eq!(run_dir(Path::new("r"), &a), run_dir(Path::new("r"), &b));
        let mut c = a.clone();
        c.model.init_std = 0.06;
        assert_ne!(run_dir(Path::new("r"), &a), run_dir(Path::new("r"), &c));
        assert!(run_dir(Path::new("r"), &a).starts_with("r/normal-n20-L3-d5"));
    }

    #[test]
    fn noise_folders_do_not_depend_on_the_optimizer() {
        let a = Config::default();
        let mut b = a.clone();
        b.train.optimizer = crate::config::OptimizerKind::Adam;
        b.train.iters = 7;
        assert_eq!(noise_dir(Path::new("r"), &noise_config(&a, 1), 10, 100), noise_dir(Path::new("r"), &noise_config(&b, 1), 10, 100));
    }
}

//! The run folders of `reproduce`: where each run lives, whether it is already done, and
//! training what is missing.
//!
//! Fast-mode runs of one setting (they differ only in seed, optimizer and learning rate, as a
//! figure's seeds and a learning-rate grid do) train together as one ensemble
//! (`crate::ensemble`), each into its own folder; faithful runs train one by one, so that an
//! interrupted one resumes from its checkpoint.
//!
//! A run's folder is named after its resolved config (a readable part plus a hash of the whole
//! config except `train.device`), so two figures that need the same run share one folder, a
//! finished run is found again by any later invocation, and a run trained on one device is
//! reused when the figures are drawn on another.
use crate::artifacts::{self, Status, Summary};
use crate::config::{Attention, Config, Dtype, Mode, OptimizerKind, Parametrization, TrainConfig};
use crate::ensemble::{self, Member};
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
    /// Ensembles the fast-mode runs among `trained` and `restarted` were trained in.
    pub ensembles: usize,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.trained += o.trained;
        self.reused += o.reused;
        self.resumed += o.resumed;
        self.restarted += o.restarted;
        self.ensembles += o.ensembles;
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

/// The most runs trained as one ensemble. What an ensemble saves, the fixed cost of each
/// operation, is shared out by a few dozen members already, while its memory and the work a
/// Ctrl-C loses (a fast run keeps no checkpoint) grow with every member.
pub const MAX_MEMBERS: usize = 24;

/// What a run does not share with the other members of its ensemble.
fn setting_of(cfg: &Config) -> Config {
    Member { seed: 0, optimizer: OptimizerKind::Sgd, lr: 1.0 }.config(cfg)
}

/// Splits the runs `todo` (indices into `cfgs`) into what trains in one go: a faithful run
/// alone; fast runs of one setting together, in ensembles of at most [`MAX_MEMBERS`] of about
/// equal size. Runs keep the order of `todo` within and across groups.
pub fn batches(cfgs: &[&Config], todo: &[usize]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Option<Config>, Vec<usize>)> = vec![];
    for &i in todo {
        let setting = (cfgs[i].train.mode == Mode::Fast).then(|| setting_of(cfgs[i]));
        match groups.iter_mut().find(|(s, _)| s.is_some() && *s == setting) {
            Some((_, members)) => members.push(i),
            None => groups.push((setting, vec![i])),
        }
    }
    let mut out = vec![];
    for (_, runs) in groups {
        let size = runs.len().div_ceil(runs.len().div_ceil(MAX_MEMBERS));
        out.extend(runs.chunks(size).map(<[usize]>::to_vec));
    }
    out
}

/// What training a batch of runs ended in; `Interrupted` means Ctrl-C/SIGTERM stopped it.
pub enum Trained {
    /// The summaries, in the batch's order.
    Done(Vec<Summary>, Tally),
    Interrupted,
}

/// Makes sure the runs of `cfgs` (a batch of [`batches`]) are in their folders `dirs`: a
/// faithful run is reused, resumed or trained; fast runs are reused when all of them are
/// finished, else the unfinished ones are trained as one ensemble.
pub fn ensure(cfgs: &[&Config], dirs: &[PathBuf], opts: &Options) -> Result<Trained> {
    match cfgs {
        [cfg] if cfg.train.mode == Mode::Faithful => ensure_alone(cfg, &dirs[0], opts),
        _ => ensure_together(cfgs, dirs, opts),
    }
}

fn ensure_alone(cfg: &Config, dir: &Path, opts: &Options) -> Result<Trained> {
    let mut tally = Tally::default();
    let outcome = match state(dir) {
        State::Done(s) => {
            tally.reused = 1;
            return Ok(Trained::Done(vec![s], tally));
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
        Status::Completed | Status::Diverged => Ok(Trained::Done(vec![outcome.summary], tally)),
    }
}

fn ensure_together(cfgs: &[&Config], dirs: &[PathBuf], opts: &Options) -> Result<Trained> {
    let mut tally = Tally::default();
    let mut summaries: Vec<Option<Summary>> = vec![];
    let (mut members, mut outs, mut locks) = (vec![], vec![], vec![]);
    let base = cfgs.first().ok_or_else(|| anyhow!("an ensemble needs at least one run"))?;
    for (cfg, dir) in cfgs.iter().zip(dirs) {
        let member = Member::from_config(cfg);
        // The ensemble writes `member.config(base)` into the folder named after `cfg`: were they
        // different, the run would not be found again under its name.
        if config_hash(&member.config(base)) != config_hash(cfg) {
            return Err(anyhow!("{}: its config is not that of an ensemble member of {}", dir.display(), group_name(base)));
        }
        match state(dir) {
            State::Done(s) => {
                tally.reused += 1;
                summaries.push(Some(s));
                continue;
            }
            State::Missing => tally.trained += 1,
            // A fast run keeps no checkpoint: whatever is there is trained again from the start.
            State::Resumable | State::Broken => tally.restarted += 1,
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!(crate::BadInput(format!("output folder {}: cannot create it ({e})", dir.display()))))?;
        locks.push(train::lock_folder(dir)?);
        train::clear_run_folder(dir);
        summaries.push(None);
        members.push(member);
        outs.push(dir.clone());
    }
    if !members.is_empty() {
        tally.ensembles = 1;
        let mut outcomes = ensemble::train_ensemble(base, &members, &outs, opts.progress, &opts.stop)?.into_iter();
        for slot in summaries.iter_mut().filter(|s| s.is_none()) {
            let summary = outcomes.next().expect("one outcome per member").summary;
            if !matches!(summary.status, Status::Completed | Status::Diverged) {
                return Ok(Trained::Interrupted);
            }
            *slot = Some(summary);
        }
    }
    Ok(Trained::Done(summaries.into_iter().flatten().collect(), tally))
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
    fn a_float32_config_is_written_without_a_dtype_key_so_earlier_run_folders_keep_their_names() {
        let mut a = Config::default();
        a.train.mode = Mode::Fast;
        assert!(!a.to_yaml().contains("dtype"), "{}", a.to_yaml());
        let mut b = a.clone();
        b.train.dtype = Dtype::Float64;
        assert!(b.to_yaml().contains("dtype: float64"));
        assert!(run_dir(Path::new("r"), &b).starts_with("r/normal-n20-L3-d5-fast-f64"));
        assert_ne!(config_hash(&a), config_hash(&b));
    }

    /// The quick-scale plan (fast mode) of a figure in `experiments/figures/`.
    fn quick_plan(id: &str) -> Vec<Config> {
        let experiments = crate::figures::experiments_dir(None);
        let spec = crate::figures::FigureSpec::load(&experiments.join("figures").join(format!("{id}.yaml"))).unwrap();
        let res = spec.resolve(&crate::figures::Scale { quick: true, ..Default::default() });
        spec.plan(&experiments.join("settings"), &res, "cpu").unwrap().into_iter().map(|r| r.cfg).collect()
    }

    #[test]
    fn an_ensemble_member_resolves_to_the_config_and_folder_of_its_run() {
        for id in ["fig2_setting1", "lr_grid", "fig8"] {
            let plan = quick_plan(id);
            let cfgs: Vec<&Config> = plan.iter().collect();
            let all: Vec<usize> = (0..plan.len()).collect();
            for batch in batches(&cfgs, &all) {
                let base = cfgs[batch[0]];
                for &i in &batch {
                    let member = Member::from_config(cfgs[i]).config(base);
                    assert_eq!(config_hash(&member), config_hash(cfgs[i]), "{id}: run {i}");
                    assert_eq!(run_dir(Path::new("r"), &member), run_dir(Path::new("r"), cfgs[i]), "{id}: run {i}");
                }
            }
        }
    }

    #[test]
    fn fast_runs_of_one_setting_form_ensembles_of_at_most_max_members_and_faithful_runs_train_alone() {
        let plan = quick_plan("lr_grid");
        let cfgs: Vec<&Config> = plan.iter().collect();
        let all: Vec<usize> = (0..plan.len()).collect();
        let fast = batches(&cfgs, &all);
        let mut seen: Vec<usize> = fast.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, all, "every run in exactly one batch");
        assert!(fast.iter().all(|b| b.len() <= MAX_MEMBERS));
        for b in &fast {
            assert!(b.iter().all(|&i| setting_of(cfgs[i]) == setting_of(cfgs[b[0]])), "one setting per ensemble");
        }
        let settings = plan.iter().map(setting_of).fold(vec![], |mut v: Vec<Config>, s| {
            if !v.contains(&s) {
                v.push(s);
            }
            v
        });
        let fewest: usize = settings.iter().map(|s| plan.iter().filter(|c| setting_of(c) == *s).count().div_ceil(MAX_MEMBERS)).sum();
        assert_eq!(fast.len(), fewest, "no more ensembles than the setting count and MAX_MEMBERS need");

        let faithful: Vec<Config> = plan.iter().map(|c| Config { train: TrainConfig { mode: Mode::Faithful, ..c.train.clone() }, ..c.clone() }).collect();
        let cfgs: Vec<&Config> = faithful.iter().collect();
        assert!(batches(&cfgs, &all).iter().all(|b| b.len() == 1));
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

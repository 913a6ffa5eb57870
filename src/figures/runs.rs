//! The run folders of `reproduce`: where each run lives, and training what is missing.
//!
//! Fast-mode runs of one setting (they differ only in seed, optimizer and learning rate, as a
//! figure's seeds and a learning-rate grid do) train together as one ensemble, each into its
//! own folder; faithful runs train one by one. Either resumes from its checkpoints.
//!
//! Where a run's folder is: [`crate::run::naming`].
use crate::config::{Config, Mode, OptimizerKind};
use crate::run::{FolderBusy, RunFolder, State, Status, Summary};
use crate::train::{self, Member, Options, Replace};
use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};

/// Which of the work a run needed, summed over an invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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

pub use crate::run::naming::{config_hash, fnv1a, group_name, noise_config, noise_dir, run_dir};

/// The most runs trained as one ensemble. What an ensemble saves, the fixed cost of each
/// operation, is shared out by a few dozen members already, while its memory and the work a
/// Ctrl-C loses grow with every member.
pub const MAX_MEMBERS: usize = 24;

/// What a run does not share with the other members of its ensemble.
fn setting_of(cfg: &Config) -> Config {
    // An optimizer with weight decay, so that the key keeps the run's `train.weight_decay`:
    // an ensemble has one, for its members whose optimizer decays.
    Member {
        seed: 0,
        optimizer: OptimizerKind::Adamw,
        lr: 1.0,
    }
    .config(cfg)
}

/// Splits the runs `todo` (indices into `cfgs`) into what trains in one go: a faithful run
/// alone; fast runs of one setting together, in ensembles of at most [`MAX_MEMBERS`] of about
/// equal size. Runs keep the order of `todo` within and across groups.
pub fn batches(cfgs: &[&Config], todo: &[usize]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Option<Config>, Vec<usize>)> = vec![];
    for &i in todo {
        let setting = (cfgs[i].train.mode == Mode::Fast).then(|| setting_of(cfgs[i]));
        match groups
            .iter_mut()
            .find(|(s, _)| s.is_some() && *s == setting)
        {
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

/// What training a batch of runs ended in.
pub enum Trained {
    /// The summaries, in the batch's order.
    Done(Vec<Summary>, Tally),
    /// Ctrl-C/SIGTERM stopped it; the checkpoints are written.
    Interrupted,
    /// Another live process is training (some of) these runs.
    Busy,
}

fn busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<FolderBusy>().is_some())
}

/// Makes sure the runs of `cfgs` (a batch of [`batches`]) are finished in their folders `dirs`:
/// finished runs are reused; runs with a checkpoint resume together with the ensemble their
/// checkpoint names; the rest train (again) from the start, fast ones as one ensemble.
pub fn ensure(cfgs: &[&Config], dirs: &[PathBuf], opts: &Options) -> Result<Trained> {
    check_members(cfgs, dirs)?;
    let folders: Vec<RunFolder> = dirs.iter().map(RunFolder::new).collect();
    let mut tally = Tally::default();
    if let Some(stopped) = resume_checkpointed(cfgs, &folders, opts, &mut tally)? {
        return Ok(stopped);
    }
    let mut summaries: Vec<Option<Summary>> = vec![None; cfgs.len()];
    let mut todo = vec![];
    for (i, f) in folders.iter().enumerate() {
        match f.state() {
            State::Done(s) => {
                check_config(f.dir(), cfgs[i])?;
                summaries[i] = Some(s);
            }
            State::Missing => {
                tally.trained += 1;
                todo.push(i);
            }
            State::Broken | State::Resumable => {
                tally.restarted += 1;
                todo.push(i);
            }
        }
    }
    tally.reused = cfgs.len() - todo.len() - tally.resumed;
    if !todo.is_empty() {
        tally.ensembles = usize::from(cfgs[todo[0]].train.mode == Mode::Fast);
        if let Some(stopped) = train_todo(cfgs, dirs, &todo, opts, &mut summaries)? {
            return Ok(stopped);
        }
    }
    // Resumed runs finished above.
    for (i, f) in folders.iter().enumerate() {
        if summaries[i].is_none() {
            match f.state() {
                State::Done(s) => summaries[i] = Some(s),
                _ => {
                    return Err(anyhow!(
                        "{}: not finished after training",
                        f.dir().display()
                    ))
                }
            }
        }
    }
    Ok(Trained::Done(
        summaries.into_iter().flatten().collect(),
        tally,
    ))
}

/// The folder of each run is named after its config, and an ensemble writes
/// `member.config(base)` into it: were they different, the run would not be found again under
/// its name.
fn check_members(cfgs: &[&Config], dirs: &[PathBuf]) -> Result<()> {
    let base = cfgs
        .first()
        .ok_or_else(|| anyhow!("a batch needs at least one run"))?;
    for (cfg, dir) in cfgs.iter().zip(dirs) {
        if cfg.train.mode == Mode::Fast
            && config_hash(&Member::from_config(cfg).config(base)) != config_hash(cfg)
        {
            return Err(anyhow!(
                "{}: its config is not that of an ensemble member of {}",
                dir.display(),
                group_name(base)
            ));
        }
    }
    Ok(())
}

/// Resumes every run with a checkpoint, together with the ensemble its checkpoint names; a
/// checkpoint whose ensemble cannot be put together again (or that is damaged) is cleared, to
/// be trained anew. `Some` when training stopped or another worker holds a run.
fn resume_checkpointed(
    cfgs: &[&Config],
    folders: &[RunFolder],
    opts: &Options,
    tally: &mut Tally,
) -> Result<Option<Trained>> {
    for (i, f) in folders.iter().enumerate() {
        if !matches!(f.state(), State::Resumable) {
            continue;
        }
        match train::checkpointed_group(f.dir()) {
            Ok(group) => match train::resume(f.dir(), opts) {
                Ok(outcomes)
                    if outcomes
                        .iter()
                        .any(|o| o.summary.status == Status::Interrupted) =>
                {
                    return Ok(Some(Trained::Interrupted))
                }
                Ok(_) => tally.resumed += folders.iter().filter(|g| group.contains(g)).count(),
                Err(e) if busy(&e) => return Ok(Some(Trained::Busy)),
                // Another worker finished it between the look at its state and the lock.
                Err(_) if matches!(f.state(), State::Done(_)) => {}
                Err(e) => return Err(e),
            },
            Err(_) => {
                check_config(f.dir(), cfgs[i])?;
                let Some(_lock) = f.try_lock()? else {
                    return Ok(Some(Trained::Busy));
                };
                // Another worker may have finished it (and removed its checkpoint) since the look
                // at its state: a finished run is never cleared.
                if !matches!(f.state(), State::Done(_)) {
                    f.clear();
                }
            }
        }
    }
    Ok(None)
}

/// Trains the runs `todo` (indices into `cfgs`) from the start, fast ones as one ensemble, and
/// puts their summaries into `summaries`. `Some` when training stopped or another worker
/// holds a run.
fn train_todo(
    cfgs: &[&Config],
    dirs: &[PathBuf],
    todo: &[usize],
    opts: &Options,
    summaries: &mut [Option<Summary>],
) -> Result<Option<Trained>> {
    // Whatever the look in `ensure` saw, the lock decides: a run another worker finished
    // meanwhile is kept (and reported busy, so that this worker comes back and reuses it).
    let opts = Options {
        replace: Replace::Leftovers,
        ..opts.clone()
    };
    let trained = match cfgs[todo[0]].train.mode {
        Mode::Faithful => todo
            .iter()
            .map(|&i| train::train(cfgs[i], &dirs[i], &opts))
            .collect::<Result<Vec<_>>>(),
        Mode::Fast => {
            let members: Vec<Member> = todo.iter().map(|&i| Member::from_config(cfgs[i])).collect();
            let outs: Vec<PathBuf> = todo.iter().map(|&i| dirs[i].clone()).collect();
            train::train_ensemble(cfgs[todo[0]], &members, &outs, &opts)
        }
    };
    let outcomes = match trained {
        Ok(o) => o,
        Err(e) if busy(&e) => return Ok(Some(Trained::Busy)),
        Err(e) => return Err(e),
    };
    for (&i, o) in todo.iter().zip(outcomes) {
        if !matches!(o.summary.status, Status::Completed | Status::Diverged) {
            return Ok(Some(Trained::Interrupted));
        }
        summaries[i] = Some(o.summary);
    }
    Ok(None)
}

/// Reads back the resolved config of a run folder, checking that it is the one asked for.
pub fn check_config(dir: &Path, want: &Config) -> Result<()> {
    let got = RunFolder::new(dir).config()?;
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
    use crate::config::{Dtype, TrainConfig};

    #[test]
    fn the_folder_name_ignores_the_device_but_not_the_rest() {
        let a = Config::default();
        let mut b = a.clone();
        b.train.device = crate::config::DeviceName::Cuda(None);
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
        let experiments = crate::figures::spec::experiments_dir(None).unwrap();
        let spec = crate::figures::spec::FigureSpec::load(
            &experiments.join("figures").join(format!("{id}.yaml")),
        )
        .unwrap();
        let res = spec.resolve(&crate::figures::spec::Scale {
            quick: true,
            ..Default::default()
        });
        spec.plan(
            &experiments.join("settings"),
            &res,
            crate::config::DeviceName::Cpu,
        )
        .unwrap()
        .into_iter()
        .map(|r| r.cfg)
        .collect()
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
                    assert_eq!(
                        run_dir(Path::new("r"), &member),
                        run_dir(Path::new("r"), cfgs[i]),
                        "{id}: run {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_runs_of_one_setting_form_ensembles_of_at_most_max_members_and_faithful_runs_train_alone(
    ) {
        let plan = quick_plan("lr_grid");
        let cfgs: Vec<&Config> = plan.iter().collect();
        let all: Vec<usize> = (0..plan.len()).collect();
        let fast = batches(&cfgs, &all);
        let mut seen: Vec<usize> = fast.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, all, "every run in exactly one batch");
        assert!(fast.iter().all(|b| b.len() <= MAX_MEMBERS));
        for b in &fast {
            assert!(
                b.iter()
                    .all(|&i| setting_of(cfgs[i]) == setting_of(cfgs[b[0]])),
                "one setting per ensemble"
            );
        }
        let settings = plan
            .iter()
            .map(setting_of)
            .fold(vec![], |mut v: Vec<Config>, s| {
                if !v.contains(&s) {
                    v.push(s);
                }
                v
            });
        let fewest: usize = settings
            .iter()
            .map(|s| {
                plan.iter()
                    .filter(|c| setting_of(c) == *s)
                    .count()
                    .div_ceil(MAX_MEMBERS)
            })
            .sum();
        assert_eq!(
            fast.len(),
            fewest,
            "no more ensembles than the setting count and MAX_MEMBERS need"
        );

        let faithful: Vec<Config> = plan
            .iter()
            .map(|c| Config {
                train: TrainConfig {
                    mode: Mode::Faithful,
                    ..c.train.clone()
                },
                ..c.clone()
            })
            .collect();
        let cfgs: Vec<&Config> = faithful.iter().collect();
        assert!(batches(&cfgs, &all).iter().all(|b| b.len() == 1));
    }

    #[test]
    fn noise_folders_do_not_depend_on_the_optimizer() {
        let a = Config::default();
        let mut b = a.clone();
        b.train.optimizer = crate::config::OptimizerKind::Adam;
        b.train.iters = 7;
        assert_eq!(
            noise_dir(Path::new("r"), &noise_config(&a, 1), 10, 100),
            noise_dir(Path::new("r"), &noise_config(&b, 1), 10, 100)
        );
    }
}

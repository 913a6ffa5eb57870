//! The paper's figures as data: one YAML file per figure in `experiments/figures/`.
//!
//! A figure says which runs it needs (series of a base settings file plus `--set`-style
//! overrides, × optimizers × seeds, at the authors' learning rates or over a learning-rate
//! grid), what is measured on them and at which strides, and which panels are drawn. Its
//! `quick:` block shrinks the same figure (fewer iterations, seeds and noise samples) for
//! `linattn reproduce --quick`. Unknown keys are an error, as in the run configs.
//!
//! [`FigureSpec::plan`] resolves a figure at one scale into run configs; everything that
//! executes them lives in [`crate::figures`].
use crate::config::{Config, DeviceName, Mode, OptimizerKind};
use crate::measure::MeasureSpec;
use crate::BadInput;
use anyhow::{anyhow, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `experiments/figures/*.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FigureSpec {
    /// Drawn above the panels.
    pub title: String,
    /// Where this is in the paper, and what the paper shows there.
    pub paper: String,
    /// Choices the paper leaves open and how this figure fills them (shown in the summary).
    #[serde(default)]
    pub notes: Option<String>,
    /// One column of panels per series.
    pub series: Vec<Series>,
    pub runs: RunsSpec,
    #[serde(default)]
    pub measure: MeasureSpec,
    /// One row of panels per entry, top to bottom.
    pub panels: Vec<PanelKind>,
    /// The learning-rate grid: present only in the `lr_grid` figure.
    #[serde(default)]
    pub lr_grid: Option<LrGridSpec>,
    /// The paper's numbers to print beside ours.
    #[serde(default)]
    pub paper_numbers: PaperNumbers,
    /// The `--quick` scale: every key replaces the paper-scale value.
    pub quick: QuickSpec,
    /// A figure of the testbed beyond the paper (other optimizers, full batch, block spectra):
    /// `reproduce` without figure names leaves it out, so that it reproduces the paper; name
    /// it to make it.
    #[serde(default)]
    pub beyond_paper: bool,
}

/// A group of runs that differ only in optimizer and seed (and lr in the grid).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    /// Short name, used in file names and the summary.
    pub id: String,
    /// Column title.
    pub label: String,
    /// Base run config, relative to `experiments/settings/`.
    pub settings: String,
    /// Overrides applied to the settings file, as `--set section.key=value`.
    #[serde(default)]
    pub set: Vec<String>,
    /// Learning rate per optimizer (the authors' values, or the centre of the lr grid).
    pub lr: Lrs,
}

/// `{sgd: 0.02, adam: 0.02}`: a learning rate per optimizer the figure runs.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lrs {
    pub sgd: Option<f64>,
    pub adam: Option<f64>,
    pub adamw: Option<f64>,
    pub sign: Option<f64>,
    pub normalized: Option<f64>,
    pub lion: Option<f64>,
    pub adam_mini: Option<f64>,
    pub muon: Option<f64>,
}

impl Lrs {
    pub fn get(&self, o: OptimizerKind) -> Option<f64> {
        match o {
            OptimizerKind::Sgd => self.sgd,
            OptimizerKind::Adam => self.adam,
            OptimizerKind::Adamw => self.adamw,
            OptimizerKind::Sign => self.sign,
            OptimizerKind::Normalized => self.normalized,
            OptimizerKind::Lion => self.lion,
            OptimizerKind::AdamMini => self.adam_mini,
            OptimizerKind::Muon => self.muon,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsSpec {
    pub optimizers: Vec<OptimizerKind>,
    pub seeds: Vec<u32>,
    pub iters: i64,
    /// Trajectory stride (`train.save_every`); directional smoothness at t needs t+1 saved.
    #[serde(default = "one")]
    pub save_every: i64,
    /// `train.weight_decay` of the optimizers that have one (adamw, lion, adam_mini, muon); the
    /// others run without, as in an ensemble (None: the settings file's).
    #[serde(default)]
    pub weight_decay: Option<f64>,
}

fn one() -> i64 {
    1
}

/// A row of panels. Each kind has one plot function in [`super::panels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanelKind {
    /// Test loss against iteration, log y, mean ± std/4 over seeds, per optimizer.
    Loss,
    /// Density histogram of the noise norms at initialisation.
    Noise,
    /// The same with a normal Q-Q inset.
    NoiseQq,
    /// Robust condition number against iteration, per optimizer.
    Condition,
    /// Directional smoothness against iteration, per optimizer.
    Smoothness,
    /// log gradient norm against log directional smoothness, coloured by iteration.
    GradVsSmoothness,
    /// Final test loss against learning rate, per optimizer (the lr grid).
    LrSweep,
    /// Per seed, the first iteration whose loss or gradient was not finite: where each run
    /// breaks under the authors' rule (for figures whose runs skip such steps).
    BreakPoints,
    /// Test loss against iteration at each optimizer's best learning rate of the grid.
    BestLoss,
    /// The sorted |eigenvalues| of each block's diagonal sub-Hessian (and of the whole), of the
    /// first seed: one row per optimizer, one panel per iteration of `measure.spectrum_at`.
    BlockSpectra,
    /// block_heterogeneity against iteration, per optimizer.
    Heterogeneity,
}

impl PanelKind {
    /// The name a figure file uses.
    pub fn name(self) -> &'static str {
        match self {
            PanelKind::Loss => "loss",
            PanelKind::Noise => "noise",
            PanelKind::NoiseQq => "noise_qq",
            PanelKind::Condition => "condition",
            PanelKind::Smoothness => "smoothness",
            PanelKind::GradVsSmoothness => "grad_vs_smoothness",
            PanelKind::LrSweep => "lr_sweep",
            PanelKind::BreakPoints => "break_points",
            PanelKind::BestLoss => "best_loss",
            PanelKind::BlockSpectra => "block_spectra",
            PanelKind::Heterogeneity => "heterogeneity",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrGridSpec {
    /// Multiples of the series' lr (the authors' value) that make the grid.
    pub factors: Vec<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperNumbers {
    /// R_SGD / R_Adam at an iteration: [mean, std] over seeds.
    #[serde(default)]
    pub ratio: BTreeMap<i64, [f64; 2]>,
    /// What the paper shows for the final loss, in words.
    #[serde(default)]
    pub final_loss: Option<String>,
    /// What the paper shows for the noise, in words.
    #[serde(default)]
    pub noise: Option<String>,
}

/// `quick:`: each present key replaces the paper-scale value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickSpec {
    pub iters: Option<i64>,
    pub seeds: Option<Vec<u32>>,
    pub save_every: Option<i64>,
    pub loss_every: Option<i64>,
    pub smoothness_every: Option<i64>,
    pub smoothness_until: Option<i64>,
    pub condition_every: Option<i64>,
    pub condition_at_init: Option<bool>,
    pub spectrum_every: Option<i64>,
    pub spectrum_at: Option<Vec<i64>>,
    pub noise_samples: Option<i64>,
    pub noise_full_batch: Option<i64>,
    pub lr_factors: Option<Vec<f64>>,
    /// Extra overrides for every run at quick scale (e.g. a smaller model); say why in `notes`.
    pub set: Option<Vec<String>>,
}

/// Paper or quick scale, with optional user overrides of iterations, seeds and mode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scale {
    pub quick: bool,
    pub iters: Option<i64>,
    pub seeds: Option<Vec<u32>>,
    /// `train.mode` of every run and the forward pass of the measurements; None: `fast` at
    /// quick scale, `faithful` (the authors' protocol op for op) otherwise.
    pub mode: Option<Mode>,
}

impl Scale {
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(if self.quick {
            Mode::Fast
        } else {
            Mode::Faithful
        })
    }

    pub fn name(&self) -> String {
        let mut base = if self.quick { "quick" } else { "paper" };
        if !self.quick && (self.iters.is_some() || self.seeds.is_some()) {
            base = "custom";
        }
        let mut extra = vec![];
        if let Some(i) = self.iters {
            extra.push(format!("iters={i}"));
        }
        if let Some(s) = &self.seeds {
            extra.push(format!("seeds={s:?}"));
        }
        if self.mode.is_some() {
            extra.push(format!("mode={}", self.mode().name()));
        }
        if extra.is_empty() {
            base.to_string()
        } else {
            format!("{base} ({})", extra.join(", "))
        }
    }
}

/// A figure resolved at one scale: the numbers every later step uses.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub mode: Mode,
    pub seeds: Vec<u32>,
    pub iters: i64,
    pub save_every: i64,
    pub measure: MeasureSpec,
    pub lr_factors: Vec<f64>,
    pub extra_set: Vec<String>,
}

/// One training run a figure needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub series: usize,
    pub optimizer: OptimizerKind,
    pub seed: u32,
    pub lr: f64,
    pub cfg: Config,
}

impl FigureSpec {
    /// Reads and checks a figure file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<FigureSpec> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!(BadInput(format!("figure file {}: {e}", path.display()))))?;
        Self::from_yaml_str(&text)
            .map_err(|e| anyhow!(BadInput(format!("figure file {}: {e:#}", path.display()))))
    }

    pub fn from_yaml_str(text: &str) -> Result<FigureSpec> {
        let de = serde_yaml::Deserializer::from_str(text);
        let spec: FigureSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            // serde_yaml's own message may start with the path again; the root's path is "."
            // (or "?" when unknown), which names no key.
            let (path, inner) = (e.path().to_string(), e.inner().to_string());
            let inner = inner.strip_prefix(&format!("{path}: ")).unwrap_or(&inner);
            match path.as_str() {
                "." | "?" | "" => {
                    anyhow!("not a figure (a mapping of title, series, runs, …): {inner}")
                }
                _ => anyhow!("key {path}: {inner}"),
            }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<()> {
        self.validate_counts()?;
        self.validate_series()?;
        self.validate_panels()
    }

    /// The counts and the iterations: every one positive.
    fn validate_counts(&self) -> Result<()> {
        let r = &self.runs;
        let q = &self.quick;
        let positive = |v: i64, key: &str| -> Result<()> {
            if v < 1 {
                return Err(anyhow!("key {key}: must be >= 1, got {v}"));
            }
            Ok(())
        };
        if self.series.is_empty() {
            return Err(anyhow!("key series: a figure needs at least one series"));
        }
        if r.optimizers.is_empty() || r.seeds.is_empty() {
            return Err(anyhow!("key runs: optimizers and seeds must not be empty"));
        }
        positive(r.iters, "runs.iters")?;
        positive(r.save_every, "runs.save_every")?;
        positive(self.measure.loss_every, "measure.loss_every")?;
        for (v, k) in [
            (self.measure.smoothness_every, "measure.smoothness_every"),
            (self.measure.condition_every, "measure.condition_every"),
            (self.measure.spectrum_every, "measure.spectrum_every"),
            (q.spectrum_every, "quick.spectrum_every"),
            (q.iters, "quick.iters"),
            (q.save_every, "quick.save_every"),
            (q.loss_every, "quick.loss_every"),
            (q.smoothness_every, "quick.smoothness_every"),
            (q.condition_every, "quick.condition_every"),
            (q.noise_samples, "quick.noise_samples"),
            (q.noise_full_batch, "quick.noise_full_batch"),
        ] {
            if let Some(v) = v {
                positive(v, k)?;
            }
        }
        if let Some(t) = self.measure.spectrum_at.iter().find(|t| **t < 0) {
            return Err(anyhow!(
                "key measure.spectrum_at: iterations must be >= 0, got {t}"
            ));
        }
        if let Some(t) = self.measure.condition_at.iter().find(|t| **t <= 0) {
            return Err(anyhow!(
                "key measure.condition_at: iterations must be > 0, got {t}"
            ));
        }
        if !self.measure.condition_at.is_empty() && self.measure.condition_every.is_none() {
            return Err(anyhow!(
                "key measure.condition_at: needs measure.condition_every as well"
            ));
        }
        if let Some(wd) = r.weight_decay.filter(|w| !(*w >= 0.0 && w.is_finite())) {
            return Err(anyhow!("key runs.weight_decay: must be >= 0, got {wd}"));
        }
        if q.seeds.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(anyhow!("key quick.seeds: must not be empty"));
        }
        Ok(())
    }

    /// Each series: a unique id of safe characters, a positive rate per optimizer.
    fn validate_series(&self) -> Result<()> {
        let r = &self.runs;
        let mut ids = std::collections::HashSet::new();
        for (i, s) in self.series.iter().enumerate() {
            if !ids.insert(&s.id) {
                return Err(anyhow!("key series[{i}].id: {:?} is used twice", s.id));
            }
            if s.id.is_empty()
                || !s
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(anyhow!(
                    "key series[{i}].id: use letters, digits, _ and - only, got {:?}",
                    s.id
                ));
            }
            for o in &r.optimizers {
                match s.lr.get(*o) {
                    Some(lr) if lr > 0.0 && lr.is_finite() => {}
                    Some(lr) => {
                        return Err(anyhow!(
                            "key series[{i}].lr.{}: must be > 0, got {lr}",
                            o.name()
                        ))
                    }
                    None => {
                        return Err(anyhow!(
                            "key series[{i}].lr: no learning rate for {}",
                            o.name()
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// What the panels need of the rest.
    fn validate_panels(&self) -> Result<()> {
        let r = &self.runs;
        if let Some(g) = &self.lr_grid {
            if g.factors.is_empty() || g.factors.iter().any(|f| !(*f > 0.0 && f.is_finite())) {
                return Err(anyhow!("key lr_grid.factors: must be positive numbers"));
            }
        }
        let needs = |k: PanelKind| self.panels.contains(&k);
        for k in [PanelKind::LrSweep, PanelKind::BestLoss] {
            if needs(k) && self.lr_grid.is_none() {
                return Err(anyhow!("key panels: {} needs an lr_grid block", k.name()));
            }
        }
        if needs(PanelKind::BlockSpectra) && self.measure.spectrum_at.is_empty() {
            return Err(anyhow!(
                "key measure.spectrum_at: the block_spectra panel draws the iterations it names"
            ));
        }
        if needs(PanelKind::Heterogeneity) && self.measure.spectrum_every.is_none() {
            return Err(anyhow!(
                "key measure.spectrum_every: the heterogeneity panel needs it"
            ));
        }
        if (needs(PanelKind::Noise) || needs(PanelKind::NoiseQq)) && self.measure.noise.is_none() {
            return Err(anyhow!("key measure.noise: the noise panel needs it"));
        }
        if needs(PanelKind::Condition) && self.measure.condition_every.is_none() {
            return Err(anyhow!(
                "key measure.condition_every: the condition panel needs it"
            ));
        }
        if (needs(PanelKind::Smoothness) || needs(PanelKind::GradVsSmoothness))
            && self.measure.smoothness_every.is_none()
        {
            return Err(anyhow!(
                "key measure.smoothness_every: the smoothness panels need it"
            ));
        }
        if self.measure.smoothness_every.is_some() && r.save_every != 1 {
            return Err(anyhow!(
                "key runs.save_every: directional smoothness at t needs step t+1 saved, so save_every must be 1"
            ));
        }
        Ok(())
    }

    /// The numbers of this figure at `scale`.
    pub fn resolve(&self, scale: &Scale) -> Resolved {
        let q = if scale.quick {
            self.quick.clone()
        } else {
            QuickSpec::default()
        };
        let mut m = self.measure.clone();
        m.loss_every = q.loss_every.unwrap_or(m.loss_every);
        m.smoothness_every = q.smoothness_every.or(m.smoothness_every);
        m.smoothness_until = q.smoothness_until.or(m.smoothness_until);
        m.condition_every = q.condition_every.or(m.condition_every);
        m.condition_at_init = q.condition_at_init.unwrap_or(m.condition_at_init);
        m.spectrum_every = q.spectrum_every.or(m.spectrum_every);
        m.spectrum_at = q.spectrum_at.unwrap_or(m.spectrum_at);
        if let Some(n) = &mut m.noise {
            n.samples = q.noise_samples.unwrap_or(n.samples);
            n.full_batch = q.noise_full_batch.unwrap_or(n.full_batch);
        }
        Resolved {
            mode: scale.mode(),
            seeds: scale
                .seeds
                .clone()
                .or(q.seeds)
                .unwrap_or_else(|| self.runs.seeds.clone()),
            iters: scale.iters.or(q.iters).unwrap_or(self.runs.iters),
            save_every: q.save_every.unwrap_or(self.runs.save_every),
            measure: m,
            lr_factors: q
                .lr_factors
                .or_else(|| self.lr_grid.as_ref().map(|g| g.factors.clone()))
                .unwrap_or_else(|| vec![1.0]),
            extra_set: q.set.unwrap_or_default(),
        }
    }

    /// The learning rates series `s` is run at with optimizer `o`.
    pub fn lrs(&self, res: &Resolved, s: usize, o: OptimizerKind) -> Vec<f64> {
        let centre = self.series[s]
            .lr
            .get(o)
            .expect("validated: every optimizer has an lr");
        if self.lr_grid.is_some() {
            res.lr_factors
                .iter()
                .map(|f| round_lr(centre * f))
                .collect()
        } else {
            vec![centre]
        }
    }

    /// The resolved config of series `s` (without optimizer, lr and seed).
    pub fn series_config(
        &self,
        settings_dir: &Path,
        res: &Resolved,
        s: usize,
        device: DeviceName,
    ) -> Result<Config> {
        let series = &self.series[s];
        let mut sets = series.set.clone();
        sets.extend(res.extra_set.iter().cloned());
        let path = settings_dir.join(&series.settings);
        let mut cfg = Config::read(&path, &sets)?;
        cfg.train.iters = res.iters;
        cfg.train.save_every = res.save_every;
        cfg.train.device = device;
        cfg.train.mode = res.mode;
        // Validated once every value is in: the checks that depend on the mode (train.dtype)
        // see the mode the runs will have.
        cfg.validate()
            .map_err(|e| crate::config::in_file(&path, e))?;
        Ok(cfg)
    }

    /// Every run of the figure at `res`: series × optimizers × lrs × seeds.
    pub fn plan(
        &self,
        settings_dir: &Path,
        res: &Resolved,
        device: DeviceName,
    ) -> Result<Vec<RunSpec>> {
        let mut runs = vec![];
        for s in 0..self.series.len() {
            let base = self.series_config(settings_dir, res, s, device)?;
            for &o in &self.runs.optimizers {
                for lr in self.lrs(res, s, o) {
                    for &seed in &res.seeds {
                        let mut cfg = base.clone();
                        cfg.train.optimizer = o;
                        cfg.train.lr = lr;
                        cfg.train.seed = seed;
                        match (o.decays(), self.runs.weight_decay) {
                            (true, Some(wd)) => cfg.train.weight_decay = wd,
                            (true, None) => {}
                            (false, _) => cfg.train.weight_decay = 0.0,
                        }
                        cfg.validate()?;
                        runs.push(RunSpec {
                            series: s,
                            optimizer: o,
                            seed,
                            lr,
                            cfg,
                        });
                    }
                }
            }
        }
        Ok(runs)
    }
}

/// Grid values are products of decimal numbers; rounding to 6 significant digits keeps
/// `0.02 × 4` = 0.08 instead of 0.08000000000000002 in file names and tables.
fn round_lr(v: f64) -> f64 {
    let digits = 6 - v.abs().log10().ceil() as i32;
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// Where the experiments live: `--experiments DIR` (bad input unless it holds `figures/`),
/// else `./experiments` when it holds `figures/`, else the copy shipped in this binary.
pub fn experiments_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = given {
        if !d.join("figures").is_dir() {
            return Err(anyhow!(BadInput(format!(
                "--experiments {}: holds no figures/ folder",
                d.display()
            ))));
        }
        return Ok(d.to_path_buf());
    }
    let local = PathBuf::from("experiments");
    if local.join("figures").is_dir() {
        return Ok(local);
    }
    crate::shipped::unpacked()
}

/// The figure ids in `experiments/figures/`, sorted (the order `reproduce` runs them in,
/// except that `lr_grid` goes first: its runs are the cheapest per figure and tell whether the
/// authors' learning rates are also ours).
pub fn figure_ids(experiments: &Path) -> Result<Vec<String>> {
    let dir = experiments.join("figures");
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        anyhow!(BadInput(format!(
            "{}: cannot list the figures ({e})",
            dir.display()
        )))
    })?;
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    ids.sort_by_key(|id| (id != "lr_grid", id.clone()));
    Ok(ids)
}

/// A figure named on the command line: an id from `experiments/figures/` (`lr-grid` is
/// accepted for `lr_grid`), or a path to a figure YAML. Returns (id, file).
pub fn locate(experiments: &Path, name: &str) -> Result<(String, PathBuf)> {
    let as_path = Path::new(name);
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        if !as_path.is_file() {
            return Err(anyhow!(BadInput(format!(
                "figure file {name}: no such file"
            ))));
        }
        let id = as_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok((id, as_path.to_path_buf()));
    }
    let id = name.replace('-', "_");
    let path = experiments.join("figures").join(format!("{id}.yaml"));
    if !path.is_file() {
        let known = figure_ids(experiments).unwrap_or_default().join(", ");
        return Err(anyhow!(BadInput(format!(
            "unknown figure {name:?}; known figures: {known}"
        ))));
    }
    Ok((id, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
title: t
paper: p
series: [{id: a, label: A, settings: setting1_normal_n20.yaml, lr: {sgd: 0.02, adam: 0.02}}]
runs: {optimizers: [sgd, adam], seeds: [0, 1, 2], iters: 1000}
measure: {condition_every: 250}
panels: [loss, condition]
quick: {iters: 10, seeds: [0], condition_every: 5}
"#;

    #[test]
    fn quick_block_replaces_the_paper_scale_values() {
        let f = FigureSpec::from_yaml_str(MINIMAL).unwrap();
        let paper = f.resolve(&Scale::default());
        assert_eq!(
            (
                paper.iters,
                paper.seeds.clone(),
                paper.measure.condition_every
            ),
            (1000, vec![0, 1, 2], Some(250))
        );
        let quick = f.resolve(&Scale {
            quick: true,
            ..Default::default()
        });
        assert_eq!(
            (
                quick.iters,
                quick.seeds.clone(),
                quick.measure.condition_every
            ),
            (10, vec![0], Some(5))
        );
        let custom = f.resolve(&Scale {
            quick: false,
            iters: Some(1250),
            seeds: None,
            mode: None,
        });
        assert_eq!((paper.mode, quick.mode), (Mode::Faithful, Mode::Fast));
        assert_eq!(custom.iters, 1250);
    }

    #[test]
    fn a_mistyped_key_a_panel_without_its_measurement_and_a_nonpositive_iteration_are_rejected_by_name(
    ) {
        let cases = [
            (
                MINIMAL.replace("quick: {", "quick: {itres: 3, "),
                &["quick", "itres"][..],
            ),
            (
                MINIMAL.replace("measure: {condition_every: 250}", "measure: {}"),
                &["condition_every"][..],
            ),
            (
                MINIMAL.replace(
                    "measure: {condition_every: 250}",
                    "measure: {condition_every: 250, condition_at: [750, 0]}",
                ),
                &["measure.condition_at", "got 0"][..],
            ),
            (
                MINIMAL.replace(
                    "panels: [loss, condition]",
                    "panels: [best_loss, condition]",
                ),
                &["best_loss", "lr_grid"][..],
            ),
            (
                MINIMAL.replace(
                    "panels: [loss, condition]",
                    "panels: [block_spectra, condition]",
                ),
                &["measure.spectrum_at"][..],
            ),
            (
                MINIMAL.replace(
                    "panels: [loss, condition]",
                    "panels: [heterogeneity, condition]",
                ),
                &["measure.spectrum_every"][..],
            ),
            (
                MINIMAL.replace(
                    "lr: {sgd: 0.02, adam: 0.02}",
                    "lr: {sgd: 0.02, adam: 0.02, lamb: 1}",
                ),
                &["lamb"][..],
            ),
        ];
        for (bad, names) in cases {
            let e = FigureSpec::from_yaml_str(&bad).unwrap_err().to_string();
            assert!(names.iter().all(|n| e.contains(n)), "{names:?}: {e}");
        }
    }

    #[test]
    fn the_weight_decay_of_a_figure_goes_to_the_optimizers_that_have_one_only() {
        let f = FigureSpec::from_yaml_str(
            &MINIMAL
                .replace(
                    "lr: {sgd: 0.02, adam: 0.02}",
                    "lr: {sgd: 0.02, adamw: 0.02}",
                )
                .replace("optimizers: [sgd, adam]", "optimizers: [sgd, adamw]")
                .replace("iters: 1000}", "iters: 1000, weight_decay: 0.01}"),
        )
        .unwrap();
        let settings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments/settings");
        let res = f.resolve(&Scale::default());
        let runs = f.plan(&settings, &res, DeviceName::Cpu).unwrap();
        for r in &runs {
            let want = match r.optimizer {
                OptimizerKind::Adamw => 0.01,
                _ => 0.0,
            };
            assert_eq!(r.cfg.train.weight_decay, want, "{:?}", r.optimizer);
        }
        assert_eq!(runs.len(), 6);
    }

    #[test]
    fn grid_lrs_are_rounded_products_of_the_centre() {
        assert_eq!(round_lr(0.02 * 4.0), 0.08);
        assert_eq!(round_lr(0.005 / 16.0), 0.0003125);
        assert_eq!(round_lr(5.0 * 32.0), 160.0);
    }
}

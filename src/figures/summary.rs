//! `plots/summary.md` and `plots/summary.json`: per figure, the headline numbers we measured
//! beside the paper's. Each reproduced figure leaves its numbers in `plots/data/<id>.json`;
//! the summary is rebuilt from all of them, so figures reproduced one at a time add up.
use super::numbers::{self, GridPoint, Ratio};
use super::panels::optimizer_label;
use super::spec::PanelKind;
use super::{FigureData, RunResult};
use crate::config::{Mode, OptimizerKind};
use crate::run::io as artifacts;
use crate::stats;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalLoss {
    pub series: String,
    pub label: String,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// Over the seeds that did not diverge.
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub seeds: usize,
    pub diverged: usize,
    /// Non-finite steps skipped (`train.skip_nonfinite`), over all seeds.
    #[serde(default)]
    pub skipped_steps: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatioRow {
    pub series: String,
    pub label: String,
    pub iter: i64,
    /// The paper's [mean, std], where it reports this iteration.
    pub paper: Option<[f64; 2]>,
    pub ours: Option<Ratio>,
}

/// An optimizer's final test loss over SGD with momentum's (mean over mean) for one series;
/// in a learning-rate grid, each at its best rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossRatio {
    pub series: String,
    pub label: String,
    /// The numerator's optimizer (records from before the testbed's optimizers: Adam).
    #[serde(default = "adam")]
    pub optimizer: OptimizerKind,
    pub ratio: f64,
    /// Percentile-bootstrap 95% interval over seeds.
    pub ci95: Option<[f64; 2]>,
    /// Seeds where both runs finished.
    pub seeds: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseRow {
    pub series: String,
    pub label: String,
    pub hill_tail_index: Option<f64>,
    pub kurtosis: Option<f64>,
    pub samples: usize,
    pub full_batch: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correlation {
    pub series: String,
    pub label: String,
    pub optimizer: OptimizerKind,
    pub seed: u32,
    /// Pearson r of (ln gradient norm, ln directional smoothness).
    pub r: Option<f64>,
    pub points: usize,
    /// Steps whose smoothness was not positive (no logarithm).
    pub left_out: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrChoice {
    pub series: String,
    pub label: String,
    pub optimizer: OptimizerKind,
    pub authors_lr: f64,
    pub best_lr: Option<f64>,
    pub grid: Vec<GridPoint>,
}

/// Everything `summary.md` says about one figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FigureSummary {
    pub id: String,
    pub title: String,
    pub paper: String,
    pub notes: Option<String>,
    pub png: String,
    /// `quick` or `paper`, with any `--iters`/`--seeds` override.
    pub scale: String,
    pub quick: bool,
    /// `fast` or `faithful`: the runs' train.mode and the measurements' forward pass.
    #[serde(default = "faithful")]
    pub mode: Mode,
    pub seeds: Vec<u32>,
    pub iters: i64,
    /// This invocation's time for the figure (runs it had to train or measure, and drawing).
    pub wall_time_s: f64,
    pub machine: String,
    /// Every run, measurement and noise came from the runs folder and no earlier record of this
    /// figure was in the plots folder (e.g. the runs were made by processes split by --seeds):
    /// `wall_time_s` is then only the drawing, and the time the work took is not known here.
    #[serde(default)]
    pub all_reused: bool,
    pub runs: usize,
    pub final_loss: Vec<FinalLoss>,
    /// Each optimizer's final loss over SGD's per series (at their best rates in a grid), with
    /// its interval.
    #[serde(default)]
    pub loss_ratios: Vec<LossRatio>,
    pub ratios: Vec<RatioRow>,
    pub noise: Vec<NoiseRow>,
    pub correlations: Vec<Correlation>,
    pub lr_choices: Vec<LrChoice>,
    pub paper_final_loss: Option<String>,
    pub paper_noise: Option<String>,
    /// A figure of the testbed beyond the paper (the figure file's `beyond_paper`).
    #[serde(default)]
    pub beyond_paper: bool,
    /// Block heterogeneity and update sharpness per optimizer, where the figure draws them.
    #[serde(default)]
    pub quantities: Vec<Quantity>,
}

fn adam() -> OptimizerKind {
    OptimizerKind::Adam
}

/// A quantity measured along the runs of one optimizer, beyond the paper's numbers, over
/// seeds: the block heterogeneity at an iteration, or the update sharpness of a run (its
/// median over the measured iterations).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantity {
    pub series: String,
    pub label: String,
    pub optimizer: OptimizerKind,
    /// What was measured, and where (e.g. "block_heterogeneity at 1000").
    pub quantity: String,
    /// Mean over seeds, with the percentile-bootstrap 95% interval of that mean.
    pub mean: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    pub seeds: usize,
    /// Over seeds, the mean of the per-seed ratio to SGD with momentum's value (same seed, same
    /// initialisation), with its interval; none for SGD itself or without SGD runs.
    pub vs_sgd: Option<f64>,
    pub vs_sgd_ci95: Option<[f64; 2]>,
}

/// Records written before `mode` was recorded came from faithful runs.
fn faithful() -> Mode {
    Mode::Faithful
}

fn fin(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

pub fn figure_summary(
    fig: &FigureData,
    png: &str,
    wall_time_s: f64,
    machine: &str,
) -> FigureSummary {
    let spec = &fig.spec;
    let mut out = FigureSummary {
        id: fig.id.clone(),
        title: spec.title.clone(),
        paper: spec.paper.clone(),
        notes: spec.notes.clone(),
        png: png.to_string(),
        scale: fig.scale.name(),
        quick: fig.scale.quick,
        mode: fig.res.mode,
        seeds: fig.res.seeds.clone(),
        iters: fig.res.iters,
        wall_time_s,
        machine: machine.to_string(),
        all_reused: false,
        runs: fig.runs.len(),
        final_loss: vec![],
        loss_ratios: vec![],
        ratios: vec![],
        noise: vec![],
        correlations: vec![],
        lr_choices: vec![],
        paper_final_loss: spec.paper_numbers.final_loss.clone(),
        paper_noise: spec.paper_numbers.noise.clone(),
        beyond_paper: spec.beyond_paper,
        quantities: vec![],
    };
    for s in 0..spec.series.len() {
        losses_of_series(&mut out, fig, s);
        ratios_of_series(&mut out, fig, s);
        if let Some(n) = &fig.noise[s] {
            let series = &spec.series[s];
            out.noise.push(NoiseRow {
                series: series.id.clone(),
                label: series.label.clone(),
                hill_tail_index: fin(n.summary.hill_tail_index),
                kurtosis: fin(n.summary.kurtosis),
                samples: n.values.len(),
                full_batch: Some(n.summary.full_batch as f64),
            });
        }
        correlation_of_series(&mut out, fig, s);
        quantities_of_series(&mut out, fig, s);
    }
    out
}

/// Series `s`'s final losses per optimizer (or its learning-rate grid) and its Adam/SGD ratio.
fn losses_of_series(out: &mut FigureSummary, fig: &FigureData, s: usize) {
    let spec = &fig.spec;
    let (id, label) = (spec.series[s].id.clone(), spec.series[s].label.clone());
    let series = &spec.series[s];
    for &o in &spec.runs.optimizers {
        if spec.lr_grid.is_some() {
            let grid = numbers::lr_grid(fig, s, o);
            out.lr_choices.push(LrChoice {
                series: id.clone(),
                label: label.clone(),
                optimizer: o,
                authors_lr: series.lr.get(o).unwrap_or(f64::NAN),
                best_lr: numbers::best_lr(&grid),
                grid,
            });
            continue;
        }
        let runs: Vec<_> = fig.runs_of(s, o).collect();
        let losses: Vec<f64> = runs.iter().map(|r| numbers::final_loss(r)).collect();
        let (mean, std, n) = stats::mean_std(&losses);
        out.final_loss.push(FinalLoss {
            series: id.clone(),
            label: label.clone(),
            optimizer: o,
            lr: runs.first().map(|r| r.spec.lr).unwrap_or(f64::NAN),
            mean: fin(mean),
            std: (n > 0).then_some(std),
            seeds: runs.len(),
            diverged: losses.len() - n,
            skipped_steps: runs.iter().map(|r| r.skipped_steps).sum(),
        });
    }
    if !spec.runs.optimizers.contains(&OptimizerKind::Sgd) {
        return;
    }
    let sgd = numbers::compared_runs(fig, s, OptimizerKind::Sgd);
    for &o in spec
        .runs
        .optimizers
        .iter()
        .filter(|o| **o != OptimizerKind::Sgd)
    {
        let runs = numbers::compared_runs(fig, s, o);
        if let Some((ratio, ci95, seeds)) = numbers::final_loss_ratio(fig, &runs, &sgd) {
            out.loss_ratios.push(LossRatio {
                series: id.clone(),
                label: label.clone(),
                optimizer: o,
                ratio,
                ci95,
                seeds,
            });
        }
    }
}

/// A quantity the summary reports per run, averaged over seeds and set against SGD's.
#[derive(Clone, Copy)]
enum Measured {
    /// Block heterogeneity at this iteration.
    HeterogeneityAt(i64),
    /// The median over the measured iterations of the update sharpness.
    UpdateSharpness,
}

/// Series `s`'s block heterogeneity at each iteration the block spectra are drawn at (and the
/// last), where the figure draws it; and each run's update sharpness, the median over its
/// measured iterations, where the figure draws the directional smoothness (Pan & Li's
/// uᵀHu/‖u‖² along the update is the paper's directional smoothness).
fn quantities_of_series(out: &mut FigureSummary, fig: &FigureData, s: usize) {
    let spec = &fig.spec;
    let mut wanted: Vec<Measured> = vec![];
    if spec.panels.contains(&PanelKind::Heterogeneity) {
        let mut at: std::collections::BTreeSet<i64> =
            fig.res.measure.spectrum_at.iter().copied().collect();
        at.insert(fig.res.iters);
        wanted.extend(
            at.into_iter()
                .filter(|t| fig.needs.spectrum.contains(t))
                .map(Measured::HeterogeneityAt),
        );
    }
    if spec.panels.contains(&PanelKind::Smoothness) {
        wanted.push(Measured::UpdateSharpness);
    }
    for quantity in wanted {
        let value = |r: &RunResult| match quantity {
            Measured::HeterogeneityAt(t) => r.rows.get(&t).and_then(|row| row.block_heterogeneity),
            Measured::UpdateSharpness => {
                numbers::run_median(r, |row| row.dir_smoothness, &fig.needs.smoothness)
            }
        };
        let quantity = match quantity {
            Measured::HeterogeneityAt(t) => format!("block_heterogeneity at {t}"),
            Measured::UpdateSharpness => "update sharpness (median over iterations)".into(),
        };
        let per_seed = |o: OptimizerKind| -> Vec<(u32, f64)> {
            numbers::compared_runs(fig, s, o)
                .into_iter()
                .filter_map(|r| Some((r.spec.seed, value(r).filter(|v| v.is_finite())?)))
                .collect()
        };
        let sgd = per_seed(OptimizerKind::Sgd);
        for &o in &spec.runs.optimizers {
            let mine = per_seed(o);
            let values: Vec<f64> = mine.iter().map(|p| p.1).collect();
            let ratios: Vec<f64> = match o {
                OptimizerKind::Sgd => vec![],
                _ => mine
                    .iter()
                    .filter_map(|(seed, v)| {
                        let d = sgd.iter().find(|p| p.0 == *seed)?.1;
                        (d != 0.0).then_some(v / d)
                    })
                    .collect(),
            };
            let mean_ci = |v: &[f64]| {
                let (m, _, n) = stats::mean_std(v);
                let ci = stats::bootstrap(v.len(), |idx| stats::resampled_mean(v, idx));
                ((n > 0).then_some(m), ci)
            };
            let (mean, ci95) = mean_ci(&values);
            let (vs_sgd, vs_sgd_ci95) = mean_ci(&ratios);
            out.quantities.push(Quantity {
                series: spec.series[s].id.clone(),
                label: spec.series[s].label.clone(),
                optimizer: o,
                quantity: quantity.clone(),
                mean,
                ci95,
                seeds: values.len(),
                vs_sgd,
                vs_sgd_ci95,
            });
        }
    }
}

/// Series `s`'s R_SGD / R_Adam: the paper's iterations first (reached or not), then every
/// other measured one.
fn ratios_of_series(out: &mut FigureSummary, fig: &FigureData, s: usize) {
    let spec = &fig.spec;
    let (id, label) = (spec.series[s].id.clone(), spec.series[s].label.clone());
    if spec.panels.contains(&PanelKind::Condition) {
        // The paper's iterations first (reached or not), then every other measured one.
        let mut iters: Vec<i64> = spec.paper_numbers.ratio.keys().copied().collect();
        let measured: std::collections::BTreeSet<i64> = fig
            .runs
            .iter()
            .filter(|r| r.spec.series == s)
            .flat_map(|r| {
                r.rows
                    .iter()
                    .filter(|(_, row)| row.condition_number.is_some())
                    .map(|(t, _)| *t)
            })
            .filter(|t| *t > 0)
            .collect();
        iters.extend(
            measured
                .into_iter()
                .filter(|t| !spec.paper_numbers.ratio.contains_key(t)),
        );
        for t in iters {
            out.ratios.push(RatioRow {
                series: id.clone(),
                label: label.clone(),
                iter: t,
                paper: spec.paper_numbers.ratio.get(&t).copied(),
                ours: numbers::condition_ratio(fig, s, t),
            });
        }
    }
}

/// Series `s`'s correlation of ln gradient norm and ln directional smoothness (Fig. 6).
fn correlation_of_series(out: &mut FigureSummary, fig: &FigureData, s: usize) {
    let spec = &fig.spec;
    let (id, label) = (spec.series[s].id.clone(), spec.series[s].label.clone());
    if spec.panels.contains(&PanelKind::GradVsSmoothness) {
        if let Some(run) = fig.runs.iter().find(|r| r.spec.series == s) {
            let pts = numbers::log_pairs(run, &fig.needs.smoothness);
            let with_smoothness = run
                .rows
                .iter()
                .filter(|(t, r)| fig.needs.smoothness.contains(t) && r.dir_smoothness.is_some())
                .count();
            out.correlations.push(Correlation {
                series: id.clone(),
                label: label.clone(),
                optimizer: run.spec.optimizer,
                seed: run.spec.seed,
                r: fin(stats::pearson(
                    &pts.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>(),
                )),
                points: pts.len(),
                left_out: with_smoothness - pts.len(),
            });
        }
    }
}

pub const DATA_DIR: &str = "data";

pub fn save(plots: &Path, fs: &FigureSummary) -> Result<()> {
    let dir = plots.join(DATA_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(fs)? + "\n";
    artifacts::write_atomic(&dir.join(format!("{}.json", fs.id)), text.as_bytes())
}

/// Every figure summary saved in `plots/data/`, in the order `reproduce` runs figures.
pub fn load_all(plots: &Path) -> Result<Vec<FigureSummary>> {
    let dir = plots.join(DATA_DIR);
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p)?;
            match serde_json::from_str::<FigureSummary>(&text) {
                Ok(mut fs) => {
                    // A record written before intervals existed: its per-seed ratios give them.
                    for r in fs
                        .ratios
                        .iter_mut()
                        .filter_map(|r| r.ours.as_mut())
                        .filter(|o| o.ci95.is_none())
                    {
                        let v: Vec<f64> = r.per_seed.iter().map(|p| p.3).collect();
                        r.ci95 = stats::bootstrap(v.len(), |idx| stats::resampled_mean(&v, idx));
                    }
                    out.push(fs)
                }
                Err(e) => eprintln!(
                    "linattn: warning: {} is not a figure summary ({e}); left out",
                    p.display()
                ),
            }
        }
    }
    out.sort_by_key(|f| (f.id != "lr_grid", f.id.clone()));
    Ok(out)
}

/// A learning rate as the grid has it (grid points are already rounded to 6 significant
/// digits): three significant digits would show 0.0125 as 0.013, a value not in the grid.
fn lr(v: f64) -> String {
    format!("{v}")
}

fn num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn ms(mean: Option<f64>, std: Option<f64>) -> String {
    match (mean, std) {
        (Some(m), Some(s)) => format!("{} ({})", num(m), num(s)),
        (Some(m), None) => num(m),
        _ => "—".into(),
    }
}

/// `summary.md`.
pub fn markdown(figs: &[FigureSummary]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Reproduction summary\n");
    let scales: std::collections::BTreeSet<&str> = figs.iter().map(|f| f.scale.as_str()).collect();
    let _ = writeln!(
        md,
        "Generated by `linattn reproduce`. **Scale: {}.** Paper scale is 10 000 iterations and 6 seeds \
         (seeds 0–5); quick scale (`--quick`) shrinks iterations, seeds and noise samples as each \
         figure's `quick:` block in `experiments/figures/` says, so quick numbers are a smoke test of \
         the pipeline, not the paper's measurements. Each figure's section says its mode: faithful (the \
         authors' protocol op for op, bit-identical to PyTorch on CPU; the default at paper scale) or \
         fast (the same model by associativity, data drawn on the training device: the same \
         distributions, other draws; the default at quick scale, and what `--mode fast` chose for the \
         committed paper-scale figures). Each run is measured with its own mode's forward pass (the two \
         agree to about 1e-6).\n",
        scales.into_iter().collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        md,
        "Conventions: losses are the test loss on the evaluation batch (B prompts drawn once with \
         seed 99). \"mean (std)\" is over seeds, with the sample standard deviation (n − 1). \
         The condition number is R_med = max|diag H| / median|diag H| of the Hessian of the test loss; \
         **the ratio R_SGD/R_Adam is computed per seed (SGD and Adam runs with the same seed and \
         hence the same initialisation), then averaged over seeds.** A diverged run counts as the \
         worst result and is left out of means (the tables say how many).\n"
    );
    let (beyond, paper): (Vec<FigureSummary>, Vec<FigureSummary>) =
        figs.iter().cloned().partition(|f| f.beyond_paper);
    if let Some(grid) = paper.iter().find(|f| !f.lr_choices.is_empty()) {
        lr_section(&mut md, grid);
    }
    ratio_overview(&mut md, &paper);
    headline_overview(&mut md, &paper);
    for f in paper.iter().filter(|f| f.lr_choices.is_empty()) {
        figure_section(&mut md, f);
    }
    if !beyond.is_empty() {
        let _ = writeln!(
            md,
            "# Beyond the paper

The testbed's figures that the paper does not have (`beyond_paper: true` \
             in their figure files; `reproduce` makes them only when they are named). They test later \
             papers' claims on this model; docs/results.md sets each against the claim.\n"
        );
        for f in &beyond {
            figure_section(&mut md, f);
        }
    }
    md
}

fn ratio_overview(md: &mut String, figs: &[FigureSummary]) {
    let rows: Vec<(&FigureSummary, &RatioRow)> = figs
        .iter()
        .flat_map(|f| {
            f.ratios
                .iter()
                .filter(|r| r.paper.is_some())
                .map(move |r| (f, r))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Condition-number ratio R_SGD / R_Adam (Fig. 2 row 3 table, App. B)\n"
    );
    let header = [
        "figure",
        "setting",
        "iteration",
        "paper: mean (std)",
        "ours: mean (std)",
        "ours: 95% interval",
        "paper's mean in our interval",
        "seeds",
    ];
    let lines = rows.into_iter().map(|(f, r)| {
        let paper = r
            .paper
            .map(|p| format!("{} ({})", num(p[0]), num(p[1])))
            .unwrap_or_default();
        let (ours, ci, inside, n) = match (&r.ours, r.paper) {
            (Some(o), Some(p)) => (
                format!("{} ({})", num(o.mean), num(o.std)),
                interval(o.ci95),
                verdict(o.ci95, p[0]),
                o.n.to_string(),
            ),
            _ => (missing_ratio(f, r.iter), "—".into(), "—".into(), "—".into()),
        };
        vec![
            f.id.clone(),
            r.label.clone(),
            r.iter.to_string(),
            paper,
            ours,
            ci,
            inside,
            n,
        ]
    });
    table(md, &header, lines);
    let _ = writeln!(
        md,
        "\nThe interval is a percentile bootstrap of the mean over seeds ({} resamples of the seeds with \
         replacement, 2.5th and 97.5th percentiles); with 6 seeds it is wide, and one seed can move it.\n",
        stats::BOOTSTRAP_RESAMPLES
    );
}

/// `[lo, hi]`, or "—" without an interval (fewer than two seeds).
fn interval(ci: Option<[f64; 2]>) -> String {
    ci.map(|[lo, hi]| format!("[{}, {}]", num(lo), num(hi)))
        .unwrap_or_else(|| "—".into())
}

/// Whether `v` lies in the interval.
fn verdict(ci: Option<[f64; 2]>, v: f64) -> String {
    match ci {
        Some([lo, hi]) => if (lo..=hi).contains(&v) { "yes" } else { "no" }.into(),
        None => "—".into(),
    }
}

/// Why a ratio is missing: the runs stop earlier, or no seed has a finite R for both optimizers
/// there (a run diverged).
fn missing_ratio(f: &FigureSummary, iter: i64) -> String {
    if iter > f.iters {
        format!("not reached ({} iterations run)", f.iters)
    } else {
        "— (no seed with both runs finite: a run diverged)".into()
    }
}

/// The other headline numbers of every figure in one place: final loss Adam vs SGD, noise
/// tail index, and the gradient-norm/smoothness correlation.
fn headline_overview(md: &mut String, figs: &[FigureSummary]) {
    overview_losses(md, figs);
    overview_noise(md, figs);
    overview_correlations(md, figs);
}

/// Final test loss, Adam against SGD, of every setting of every figure that trains both.
fn overview_losses(md: &mut String, figs: &[FigureSummary]) {
    let mut loss = vec![];
    for f in figs {
        let series: Vec<&str> =
            f.final_loss
                .iter()
                .map(|r| r.series.as_str())
                .fold(vec![], |mut v, s| {
                    if !v.contains(&s) {
                        v.push(s);
                    }
                    v
                });
        for s in series {
            let get = |o: OptimizerKind| {
                f.final_loss
                    .iter()
                    .find(|r| r.series == s && r.optimizer == o)
            };
            if let (Some(sgd), Some(adam)) = (get(OptimizerKind::Sgd), get(OptimizerKind::Adam)) {
                loss.push((f, sgd, adam));
            }
        }
    }
    if loss.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Final test loss: Adam vs SGD with momentum\n");
    let header = [
        "figure",
        "setting",
        "scale",
        "SGD with momentum",
        "Adam",
        "Adam / SGD",
        "Adam / SGD: 95% interval",
        "diverged (SGD, Adam)",
    ];
    let lines = loss.into_iter().map(|(f, sgd, adam)| {
        let paired = f
            .loss_ratios
            .iter()
            .find(|r| r.series == sgd.series && r.optimizer == OptimizerKind::Adam);
        let ratio = match (sgd.mean, adam.mean) {
            (Some(a), Some(b)) => num(b / a),
            _ => "—".into(),
        };
        let ci = paired
            .map(|r| interval(r.ci95))
            .unwrap_or_else(|| "—".into());
        let (sgd_loss, adam_loss) = (ms(sgd.mean, sgd.std), ms(adam.mean, adam.std));
        let diverged = format!("{}, {}", sgd.diverged, adam.diverged);
        vec![
            f.id.clone(),
            sgd.label.clone(),
            f.scale.clone(),
            sgd_loss,
            adam_loss,
            ratio,
            ci,
            diverged,
        ]
    });
    table(md, &header, lines);
    let _ = writeln!(md, "\nPaper: Adam ends below SGD with momentum in every setting (read off its plots; no numbers given).\n");
}

/// The noise's tail index of every setting of every figure.
fn overview_noise(md: &mut String, figs: &[FigureSummary]) {
    let noise: Vec<(&FigureSummary, &NoiseRow)> = figs
        .iter()
        .flat_map(|f| f.noise.iter().map(move |n| (f, n)))
        .collect();
    if noise.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Gradient noise at initialisation: tail index per setting and depth\n"
    );
    let _ = writeln!(md, "Hill estimate α̂ over the largest 10 % of ‖g_B − g‖ (smaller = heavier tail); kurtosis 3 for a normal.\n");
    let lines = noise.into_iter().map(|(f, n)| {
        vec![
            f.id.clone(),
            n.label.clone(),
            n.samples.to_string(),
            or_dash(n.hill_tail_index),
            or_dash(n.kurtosis),
        ]
    });
    table(
        md,
        &["figure", "setting", "samples", "Hill α̂", "kurtosis"],
        lines,
    );
    let _ = writeln!(md, "\nPaper: heavy-tailed noise, heavier with heavy-tailed covariates and with depth (histograms; no numbers given).\n");
}

/// Fig. 6's correlations.
fn overview_correlations(md: &mut String, figs: &[FigureSummary]) {
    let corr: Vec<(&FigureSummary, &Correlation)> = figs
        .iter()
        .flat_map(|f| f.correlations.iter().map(move |c| (f, c)))
        .collect();
    if corr.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Correlation of ln gradient norm and ln directional smoothness (Fig. 6)\n"
    );
    let lines = corr.into_iter().map(|(f, c)| {
        let run = format!("{} seed {}", optimizer_label(c.optimizer), c.seed);
        vec![
            f.id.clone(),
            c.label.clone(),
            run,
            or_dash(c.r),
            c.points.to_string(),
        ]
    });
    table(
        md,
        &["figure", "setting", "run", "Pearson r", "points"],
        lines,
    );
    let _ = writeln!(
        md,
        "\nPaper: strongly positively correlated (scatter plot; no number given).\n"
    );
}

fn lr_section(md: &mut String, f: &FigureSummary) {
    let _ = writeln!(
        md,
        "## Learning-rate selection ({}; scale: {})\n",
        f.id, f.scale
    );
    lr_grid_paragraph(md, f, "around the authors' value", "authors' lr");
    let _ = writeln!(md, "\nThe figures use the authors' learning rates (their own grid's choice); this table checks it.\n");
}

/// How a learning-rate grid (`around` its centre, named `centre` in the table) picks its best
/// rate, and the table of the choices: said once for the paper's grid and the testbed's.
fn lr_grid_paragraph(md: &mut String, f: &FigureSummary, around: &str, centre: &str) {
    let _ = writeln!(
        md,
        "A grid of {} learning rates per optimizer and setting {around}; the best is the \
         lowest final test loss (mean over seeds {:?}, {} iterations); a learning rate where any seed \
         diverged is the worst result. Full grid: `{id}.csv`, `{id}.json`, `{}`.\n",
        f.lr_choices.first().map_or(0, |c| c.grid.len()),
        f.seeds,
        f.iters,
        f.png,
        id = f.id
    );
    lr_table(md, f, centre);
}

/// Per setting and optimizer: the grid's centre (`centre`: what it is), the best rate and the
/// final loss there, and the rates where a seed diverged.
fn lr_table(md: &mut String, f: &FigureSummary, centre: &str) {
    let header = [
        "setting",
        "optimizer",
        centre,
        "our best lr",
        "same",
        "final loss at ours",
        "diverged grid points",
    ];
    let lines = f.lr_choices.iter().map(|c| {
        let at = |lr: Option<f64>| c.grid.iter().find(|p| Some(p.lr) == lr);
        let best = c
            .best_lr
            .map(lr)
            .unwrap_or_else(|| "— (all diverged)".into());
        let same = if c.best_lr == Some(c.authors_lr) {
            "yes"
        } else {
            "no"
        }
        .to_string();
        let loss = at(c.best_lr)
            .map(|p| ms(p.mean, p.std))
            .unwrap_or_else(|| "—".into());
        let div: Vec<String> = c
            .grid
            .iter()
            .filter(|p| p.diverged > 0)
            .map(|p| lr(p.lr))
            .collect();
        let div = if div.is_empty() {
            "none".into()
        } else {
            div.join(", ")
        };
        vec![
            c.label.clone(),
            optimizer_label(c.optimizer).to_string(),
            lr(c.authors_lr),
            best,
            same,
            loss,
            div,
        ]
    });
    table(md, &header, lines);
}

/// Each optimizer's final test loss over SGD with momentum's, with its interval, where a
/// figure compares more optimizers than Adam with SGD (the overview has Adam's).
fn loss_ratio_section(md: &mut String, f: &FigureSummary) {
    if f.loss_ratios
        .iter()
        .all(|r| r.optimizer == OptimizerKind::Adam)
    {
        return;
    }
    let at_best = if f.lr_choices.is_empty() {
        ""
    } else {
        ", each at its best learning rate"
    };
    let _ = writeln!(
        md,
        "Final test loss over SGD with momentum's (mean over mean, seeds where both finished{at_best}; \
         95% percentile-bootstrap interval over seeds):\n"
    );
    let lines = f.loss_ratios.iter().map(|r| {
        vec![
            r.label.clone(),
            optimizer_label(r.optimizer).to_string(),
            num(r.ratio),
            interval(r.ci95),
            r.seeds.to_string(),
        ]
    });
    table(
        md,
        &[
            "setting",
            "optimizer",
            "loss / SGD's",
            "95% interval",
            "seeds",
        ],
        lines,
    );
    let _ = writeln!(md);
}

/// The measured quantities per optimizer: mean over seeds, and the per-seed ratio to SGD.
fn quantities_section(md: &mut String, f: &FigureSummary) {
    if f.quantities.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Measured along the runs (mean over seeds; the ratio to SGD with momentum is per seed, \
         then averaged; 95% percentile-bootstrap intervals over seeds):\n"
    );
    let lines = f.quantities.iter().map(|q| {
        vec![
            q.label.clone(),
            q.quantity.clone(),
            optimizer_label(q.optimizer).to_string(),
            or_dash(q.mean),
            interval(q.ci95),
            or_dash(q.vs_sgd),
            interval(q.vs_sgd_ci95),
            q.seeds.to_string(),
        ]
    });
    table(
        md,
        &[
            "setting",
            "quantity",
            "optimizer",
            "mean",
            "95% interval",
            "/ SGD's",
            "95% interval",
            "seeds",
        ],
        lines,
    );
    let _ = writeln!(md);
}

fn figure_section(md: &mut String, f: &FigureSummary) {
    let _ = writeln!(md, "## {} — {}\n", f.id, f.title);
    let _ = writeln!(md, "![{}]({})\n", f.id, f.png);
    let _ = writeln!(md, "Paper: {}\n", f.paper);
    let produced = if f.all_reused {
        "Every run and measurement was reused from the runs folder, made by earlier invocations \
         (e.g. split over processes by seed) whose time is not recorded here; see the README"
            .to_string()
    } else {
        format!(
            "Produced in {:.0} s (training and measuring; reused work not counted) on {}",
            f.wall_time_s, f.machine
        )
    };
    let _ = writeln!(
        md,
        "Scale: **{}** — seeds {:?}, {} iterations, {} runs, {} mode. {produced}.\n",
        f.scale,
        f.seeds,
        f.iters,
        f.runs,
        f.mode.name()
    );
    if let Some(n) = &f.notes {
        let _ = writeln!(md, "Notes: {}\n", n.trim());
    }
    if !f.lr_choices.is_empty() {
        lr_grid_paragraph(
            md,
            f,
            "around the centre set in the figure's file",
            "grid centre",
        );
        let _ = writeln!(md);
    }
    final_loss_section(md, f);
    loss_ratio_section(md, f);
    quantities_section(md, f);
    ratio_section(md, f);
    noise_section(md, f);
    correlation_section(md, f);
}

/// The final test losses, the skipped steps and the Adam/SGD verdict per setting.
fn final_loss_section(md: &mut String, f: &FigureSummary) {
    if f.final_loss.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Final test loss (iteration {}), mean (std) over seeds:\n",
        f.iters
    );
    let lines = f.final_loss.iter().map(|r| {
        let (opt, rate, loss) = (
            optimizer_label(r.optimizer).to_string(),
            lr(r.lr),
            ms(r.mean, r.std),
        );
        vec![
            r.label.clone(),
            opt,
            rate,
            loss,
            r.seeds.to_string(),
            r.diverged.to_string(),
        ]
    });
    table(
        md,
        &[
            "setting",
            "optimizer",
            "lr",
            "final test loss",
            "seeds",
            "diverged",
        ],
        lines,
    );
    let skipped: Vec<String> = f
        .final_loss
        .iter()
        .filter(|r| r.skipped_steps > 0)
        .map(|r| {
            format!(
                "{} {}: {}",
                r.label,
                optimizer_label(r.optimizer),
                r.skipped_steps
            )
        })
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(
            md,
            "\nSteps skipped because their loss or gradient was not finite (`train.skip_nonfinite`), \
             over all seeds: {}.",
            skipped.join("; ")
        );
    }
    let verdicts = adam_sgd_verdicts(f);
    if !verdicts.is_empty() {
        let _ = writeln!(md, "\n{}.", verdicts.join("; "));
    }
    if let Some(p) = &f.paper_final_loss {
        let _ = writeln!(md, "Paper: {p}");
    }
    let _ = writeln!(md);
}

/// Per setting: "label: Adam/SGD final loss = r".
fn adam_sgd_verdicts(f: &FigureSummary) -> Vec<String> {
    let series: std::collections::BTreeSet<&str> =
        f.final_loss.iter().map(|r| r.series.as_str()).collect();
    series
        .iter()
        .filter_map(|s| {
            let get = |o: OptimizerKind| {
                f.final_loss
                    .iter()
                    .find(|r| r.series == *s && r.optimizer == o)
                    .and_then(|r| r.mean)
            };
            let (sgd, adam) = (get(OptimizerKind::Sgd)?, get(OptimizerKind::Adam)?);
            let label = &f.final_loss.iter().find(|r| r.series == *s)?.label;
            Some(format!(
                "{label}: Adam/SGD final loss = {}",
                num(adam / sgd)
            ))
        })
        .collect()
}

/// R_SGD / R_Adam per seed and over seeds, beside the paper's.
fn ratio_section(md: &mut String, f: &FigureSummary) {
    if f.ratios.is_empty() {
        return;
    }
    let _ = writeln!(md, "R_SGD / R_Adam, per seed then mean (std) over seeds:\n");
    let lines = f.ratios.iter().map(|r| {
        let paper = r
            .paper
            .map(|p| format!("{} ({})", num(p[0]), num(p[1])))
            .unwrap_or_else(|| "—".into());
        let (ours, per) = match &r.ours {
            Some(o) => (
                format!("{} ({})", num(o.mean), num(o.std)),
                o.per_seed
                    .iter()
                    .map(|(s, a, b, q)| format!("s{s}: {}/{} = {}", num(*a), num(*b), num(*q)))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            None => (missing_ratio(f, r.iter), String::new()),
        };
        let ci = r
            .ours
            .as_ref()
            .map(|o| interval(o.ci95))
            .unwrap_or_else(|| "—".into());
        vec![r.label.clone(), r.iter.to_string(), paper, ours, ci, per]
    });
    table(
        md,
        &[
            "setting",
            "iteration",
            "paper",
            "ours",
            "95% interval",
            "per seed (R_SGD / R_Adam)",
        ],
        lines,
    );
    let _ = writeln!(md);
}

/// The noise at initialisation: tail index and kurtosis per setting.
fn noise_section(md: &mut String, f: &FigureSummary) {
    if f.noise.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Stochastic-gradient noise ‖g_B − g‖ at initialisation (seed 1):\n"
    );
    let header = [
        "setting",
        "samples",
        "g from prompts",
        "Hill tail index α̂ (top 10 %)",
        "kurtosis (normal: 3)",
    ];
    let lines = f.noise.iter().map(|n| {
        let full_batch = n.full_batch.map(|v| format!("{v:.0}")).unwrap_or_default();
        vec![
            n.label.clone(),
            n.samples.to_string(),
            full_batch,
            or_dash(n.hill_tail_index),
            or_dash(n.kurtosis),
        ]
    });
    table(md, &header, lines);
    if let Some(p) = &f.paper_noise {
        let _ = writeln!(md, "\nPaper: {p}");
    }
    let _ = writeln!(md);
}

/// Fig. 6's correlation of ln gradient norm and ln directional smoothness.
fn correlation_section(md: &mut String, f: &FigureSummary) {
    if f.correlations.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Correlation of ln gradient norm and ln directional smoothness (Pearson r):\n"
    );
    let lines = f.correlations.iter().map(|c| {
        let run = format!("{} seed {}", optimizer_label(c.optimizer), c.seed);
        vec![
            c.label.clone(),
            run,
            or_dash(c.r),
            c.points.to_string(),
            c.left_out.to_string(),
        ]
    });
    table(
        md,
        &["setting", "run", "r", "points", "left out (smoothness ≤ 0)"],
        lines,
    );
    let _ = writeln!(
        md,
        "\nPaper (Fig. 6): the two are strongly positively correlated along Adam's trajectory.\n"
    );
}

/// One markdown table: the header, its separator, one line per row.
fn table(md: &mut String, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
}

/// A number as the tables write it, or "—" when there is none.
fn or_dash(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "—".into())
}

/// The per-run rows of the learning-rate grid, as `lr_grid.csv`.
pub fn lr_grid_csv(fig: &FigureData) -> String {
    let mut s =
        String::from("setting,optimizer,lr,seed,status,final_test_loss,authors_lr,chosen\n");
    for (i, series) in fig.spec.series.iter().enumerate() {
        for &o in &fig.spec.runs.optimizers {
            let best = numbers::best_lr(&numbers::lr_grid(fig, i, o));
            for r in fig.runs_of(i, o) {
                let loss = numbers::final_loss(r);
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{}",
                    series.id,
                    o.name(),
                    r.spec.lr,
                    r.spec.seed,
                    serde_json::to_value(r.summary.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    if loss.is_finite() {
                        loss.to_string()
                    } else {
                        "inf".into()
                    },
                    series.lr.get(o).unwrap_or(f64::NAN),
                    best == Some(r.spec.lr)
                );
            }
        }
    }
    s
}

/// Writes `summary.md` and `summary.json` from every figure summary in `plots/data/`.
pub fn write_all(plots: &Path) -> Result<()> {
    let figs = load_all(plots)?;
    artifacts::write_atomic(&plots.join("summary.md"), markdown(&figs).as_bytes())?;
    let json = serde_json::json!({
        "conventions": {
            "ratio": "R_med per run; R_SGD/R_Adam per seed (same seed = same init); mean and sample std (n-1) over seeds; ci95: percentile bootstrap of the mean over seeds (10000 resamples)",
            "loss_ratios": "an optimizer's (Adam's unless named) / SGD's final test loss, mean over mean, seeds where both finished, each at its best rate in a learning-rate grid; ci95: percentile bootstrap over seeds (a seed's two runs resampled together)",
            "quantities": "per optimizer, mean over seeds of a measured quantity (block_heterogeneity at an iteration; update sharpness: per run, the median of the directional smoothness over its measured iterations); vs_sgd: mean over seeds of the per-seed ratio to SGD's; ci95: percentile bootstrap of the mean over seeds",
            "final_loss": "test loss on the evaluation batch (seed 99) at the last iteration; diverged runs excluded from the mean and counted",
            "noise": "Hill tail index over the top 10% of the noise norms at initialisation; kurtosis m4/m2^2",
        },
        "figures": figs,
    });
    artifacts::write_atomic(
        &plots.join("summary.json"),
        (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure data are a file format with `deny_unknown_fields`: every committed one must
    /// still read back (a renamed or dropped field would leave it out of the summary).
    #[test]
    fn every_committed_figure_data_file_reads_back_with_no_unknown_field() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plots");
        let mut read = 0;
        for dir in [root.join(DATA_DIR), root.join("ratio_check").join(DATA_DIR)] {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap();
                serde_json::from_str::<FigureSummary>(&text)
                    .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
                read += 1;
            }
        }
        assert!(read >= 10, "{read} files");
    }
}

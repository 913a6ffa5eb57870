//! The numbers a figure draws and reports: curves over seeds, condition-number ratios, final
//! losses, correlations and the learning-rate choice, from the run folders (the statistics
//! themselves are [`crate::stats`]). Shared by the panels and the summary so that a number in
//! `summary.md` is the number in the PNG.
use super::{FigureData, RunResult};
use crate::config::OptimizerKind;
use crate::measure::Row;
use crate::run::Status;
use crate::stats::{bootstrap, mean_std, quantile, resampled_mean};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// (iterations, mean over runs, std/4) of one quantity at the iterations of `grid` (the figure's
/// stride for it: a run folder may hold more points, measured for another figure) where at
/// least one run has a finite value.
pub fn seed_curve(
    runs: &[&RunResult],
    field: fn(&Row) -> Option<f64>,
    grid: &BTreeSet<i64>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let iters: BTreeSet<i64> = runs
        .iter()
        .flat_map(|r| {
            r.rows
                .iter()
                .filter(|(t, row)| grid.contains(t) && field(row).is_some())
                .map(|(t, _)| *t)
        })
        .collect();
    let (mut x, mut mean, mut band) = (vec![], vec![], vec![]);
    for t in iters {
        let vals: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.rows.get(&t).and_then(field))
            .collect();
        let (m, s, n) = mean_std(&vals);
        if n > 0 {
            x.push(t as f64);
            mean.push(m);
            band.push(s / 4.0);
        }
    }
    (x, mean, band)
}

/// (iteration, ln gradient norm, ln directional smoothness) at the iterations of `grid` where
/// both are positive and finite.
pub fn log_pairs(run: &RunResult, grid: &BTreeSet<i64>) -> Vec<(i64, f64, f64)> {
    run.rows
        .iter()
        .filter(|(t, _)| grid.contains(t))
        .filter_map(|(t, r)| match (r.grad_norm, r.dir_smoothness) {
            (Some(g), Some(s)) if g > 0.0 && s > 0.0 && g.is_finite() && s.is_finite() => {
                Some((*t, g.ln(), s.ln()))
            }
            _ => None,
        })
        .collect()
}

/// The final test loss of a run; a diverged run (or a non-finite loss) is +∞, the worst result.
pub fn final_loss(run: &RunResult) -> f64 {
    if run.summary.status == Status::Diverged {
        return f64::INFINITY;
    }
    match run
        .rows
        .get(&run.spec.cfg.train.iters)
        .and_then(|r| r.test_loss)
    {
        Some(v) if v.is_finite() => v,
        _ => f64::INFINITY,
    }
}

/// R_SGD / R_Adam at iteration `t`, computed per seed (the runs of the two optimizers with the
/// same seed), then summarised over seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratio {
    pub iter: i64,
    pub mean: f64,
    pub std: f64,
    pub n: usize,
    /// Percentile-bootstrap 95% interval of the mean over seeds ([`bootstrap`]).
    #[serde(default)]
    pub ci95: Option<[f64; 2]>,
    /// (seed, R_SGD, R_Adam, ratio).
    pub per_seed: Vec<(u32, f64, f64, f64)>,
}

pub fn condition_ratio(fig: &FigureData, s: usize, t: i64) -> Option<Ratio> {
    let cond = |o: OptimizerKind, seed: u32| {
        fig.runs_of(s, o)
            .find(|r| r.spec.seed == seed)
            .and_then(|r| r.rows.get(&t))
            .and_then(|r| r.condition_number)
    };
    let per_seed: Vec<(u32, f64, f64, f64)> = fig
        .res
        .seeds
        .iter()
        .filter_map(|&seed| {
            let (a, b) = (
                cond(OptimizerKind::Sgd, seed)?,
                cond(OptimizerKind::Adam, seed)?,
            );
            (a.is_finite() && b.is_finite() && b != 0.0).then_some((seed, a, b, a / b))
        })
        .collect();
    if per_seed.is_empty() {
        return None;
    }
    let ratios: Vec<f64> = per_seed.iter().map(|p| p.3).collect();
    let (mean, std, n) = mean_std(&ratios);
    let ci95 = bootstrap(ratios.len(), |idx| resampled_mean(&ratios, idx));
    Some(Ratio {
        iter: t,
        mean,
        std,
        n,
        ci95,
        per_seed,
    })
}

/// The final test loss of the runs `num` over that of the runs `den` (e.g. Adam's over SGD
/// with momentum's), mean over mean, with its bootstrap interval over seeds (the two runs of a
/// seed resampled together). Seeds where either run diverged are left out. None without a
/// seed where both finished.
pub fn final_loss_ratio(
    fig: &FigureData,
    num: &[&RunResult],
    den: &[&RunResult],
) -> Option<(f64, Option<[f64; 2]>, usize)> {
    let loss = |runs: &[&RunResult], seed: u32| {
        runs.iter()
            .find(|r| r.spec.seed == seed)
            .map(|r| final_loss(r))
    };
    let pairs: Vec<(f64, f64)> = fig
        .res
        .seeds
        .iter()
        .filter_map(|&seed| Some((loss(den, seed)?, loss(num, seed)?)))
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let (den, num): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let ratio = |idx: &[usize]| resampled_mean(&num, idx) / resampled_mean(&den, idx);
    let all: Vec<usize> = (0..den.len()).collect();
    Some((ratio(&all), bootstrap(den.len(), ratio), den.len()))
}

/// The runs of series `s` with optimizer `o` that a figure compares: all of them, or in a
/// learning-rate grid those at the optimizer's best rate (none when every rate diverged).
pub fn compared_runs(fig: &FigureData, s: usize, o: OptimizerKind) -> Vec<&RunResult> {
    match fig.spec.lr_grid {
        None => fig.runs_of(s, o).collect(),
        Some(_) => {
            let best = best_lr(&lr_grid(fig, s, o));
            fig.runs_of(s, o)
                .filter(|r| Some(r.spec.lr) == best)
                .collect()
        }
    }
}

/// Per run, the median over the iterations of `grid` where `field` is finite; None for a run
/// without one.
pub fn run_median(
    run: &RunResult,
    field: fn(&Row) -> Option<f64>,
    grid: &BTreeSet<i64>,
) -> Option<f64> {
    let mut v: Vec<f64> = grid
        .iter()
        .filter_map(|t| run.rows.get(t).and_then(field))
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(quantile(&v, 0.5))
}

/// One learning rate of the grid: final test loss over seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridPoint {
    pub lr: f64,
    /// Mean final loss over seeds; None (the worst result) when any seed diverged.
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub seeds: usize,
    pub diverged: usize,
}

pub fn lr_grid(fig: &FigureData, s: usize, o: OptimizerKind) -> Vec<GridPoint> {
    let lrs: BTreeSet<u64> = fig.runs_of(s, o).map(|r| r.spec.lr.to_bits()).collect();
    let mut pts: Vec<GridPoint> = lrs
        .into_iter()
        .map(f64::from_bits)
        .map(|lr| {
            let losses: Vec<f64> = fig
                .runs_of(s, o)
                .filter(|r| r.spec.lr == lr)
                .map(final_loss)
                .collect();
            let diverged = losses.iter().filter(|v| !v.is_finite()).count();
            let (mean, std, n) = mean_std(&losses);
            let ok = diverged == 0 && n > 0;
            GridPoint {
                lr,
                mean: ok.then_some(mean),
                std: ok.then_some(std),
                seeds: losses.len(),
                diverged,
            }
        })
        .collect();
    pts.sort_by(|a, b| a.lr.total_cmp(&b.lr));
    pts
}

/// The learning rate with the lowest mean final loss; a diverged point never wins.
pub fn best_lr(grid: &[GridPoint]) -> Option<f64> {
    grid.iter()
        .filter_map(|p| p.mean.map(|m| (p.lr, m)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(lr, _)| lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diverged_grid_point_is_never_the_best() {
        let p = |lr: f64, mean: Option<f64>, diverged| GridPoint {
            lr,
            mean,
            std: Some(0.0),
            seeds: 1,
            diverged,
        };
        let grid = vec![
            p(0.01, Some(0.5), 0),
            p(0.1, None, 1),
            p(0.05, Some(0.2), 0),
        ];
        assert_eq!(best_lr(&grid), Some(0.05));
        assert_eq!(best_lr(&grid[1..2]), None);
    }
}

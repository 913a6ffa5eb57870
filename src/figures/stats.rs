//! The numbers drawn and reported: means over seeds, condition-number ratios, correlations
//! and the learning-rate choice. Shared by the panels and the summary so that a number in
//! `summary.md` is the number in the PNG.
use super::{FigureData, RunResult};
use crate::config::OptimizerKind;
use crate::measure::Row;
use crate::run::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Mean, sample standard deviation (n − 1; 0 for one value) and count of the finite values.
pub fn mean_std(values: &[f64]) -> (f64, f64, usize) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, 0);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    (mean, std, n)
}

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

/// Pearson's correlation coefficient; NaN for fewer than 3 points or no spread.
pub fn pearson(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    if pts.len() < 3 {
        return f64::NAN;
    }
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    sxy / (sxx * syy).sqrt()
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

/// Resamples drawn by [`bootstrap`]: enough that the percentiles of a 6-seed sample move by
/// well under 1 % between generator seeds.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// A percentile-bootstrap 95% interval `[lo, hi]` of `statistic` over the seeds: the seeds are
/// drawn with replacement `BOOTSTRAP_RESAMPLES` times (MT19937 seeded with 0, so a summary is
/// the same every time it is drawn), the statistic taken on each resample, and the 2.5th and
/// 97.5th percentiles (linear interpolation) reported. `statistic` gets the resampled seed
/// indices. None for fewer than two seeds, or when a resample gives no finite value.
pub fn bootstrap(seeds: usize, statistic: impl Fn(&[usize]) -> f64) -> Option<[f64; 2]> {
    if seeds < 2 {
        return None;
    }
    let mut rng = crate::rng::LegacyRandomState::new(0);
    let mut idx = vec![0; seeds];
    let mut values = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for i in idx.iter_mut() {
            *i = ((rng.random_sample() * seeds as f64) as usize).min(seeds - 1);
        }
        let v = statistic(&idx);
        if !v.is_finite() {
            return None;
        }
        values.push(v);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let pos = q * (values.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
    };
    Some([at(0.025), at(0.975)])
}

/// The mean of `values` over the resampled indices.
pub fn resampled_mean(values: &[f64], idx: &[usize]) -> f64 {
    idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64
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

/// Adam's final test loss over SGD with momentum's, mean over mean, for series `s`, with its
/// bootstrap interval over seeds (the two runs of a seed resampled together). Seeds where
/// either run diverged are left out. None without a seed where both finished.
pub fn final_loss_ratio(fig: &FigureData, s: usize) -> Option<(f64, Option<[f64; 2]>, usize)> {
    let loss = |o: OptimizerKind, seed: u32| {
        fig.runs_of(s, o)
            .find(|r| r.spec.seed == seed)
            .map(final_loss)
    };
    let pairs: Vec<(f64, f64)> = fig
        .res
        .seeds
        .iter()
        .filter_map(|&seed| {
            Some((
                loss(OptimizerKind::Sgd, seed)?,
                loss(OptimizerKind::Adam, seed)?,
            ))
        })
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let (sgd, adam): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let ratio = |idx: &[usize]| resampled_mean(&adam, idx) / resampled_mean(&sgd, idx);
    let all: Vec<usize> = (0..sgd.len()).collect();
    Some((ratio(&all), bootstrap(sgd.len(), ratio), sgd.len()))
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
    fn mean_std_uses_n_minus_1_and_skips_non_finite() {
        let (m, s, n) = mean_std(&[1.0, 3.0, f64::NAN, f64::INFINITY]);
        assert_eq!((m, n), (2.0, 2));
        assert!((s - 2f64.sqrt()).abs() < 1e-15);
        assert_eq!(mean_std(&[5.0]).1, 0.0);
        assert!(mean_std(&[]).0.is_nan());
    }

    #[test]
    fn the_bootstrap_interval_of_a_mean_matches_the_exact_resampling_distribution() {
        // Two seeds: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
        // 2.5th and 97.5th percentiles are 0 and 1.
        let two = [0.0, 1.0];
        assert_eq!(
            bootstrap(2, |idx| resampled_mean(&two, idx)),
            Some([0.0, 1.0])
        );
        // Six seeds 1..6: mean 3.5, the normal approximation 3.5 ± 1.96·1.708/√6 = [2.13, 4.87];
        // the percentile bootstrap is a little narrower (it uses the n, not n − 1, spread).
        let six = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let [lo, hi] = bootstrap(6, |idx| resampled_mean(&six, idx)).unwrap();
        assert!(
            (2.1..2.5).contains(&lo) && (4.5..4.9).contains(&hi),
            "[{lo}, {hi}]"
        );
        assert_eq!(
            bootstrap(6, |idx| resampled_mean(&six, idx)),
            Some([lo, hi]),
            "the same every time"
        );
        assert_eq!(
            bootstrap(3, |idx| resampled_mean(&[2.0, 2.0, 2.0], idx)),
            Some([2.0, 2.0])
        );
        assert_eq!(
            bootstrap(1, |idx| resampled_mean(&[2.0], idx)),
            None,
            "one seed has no interval"
        );
    }

    #[test]
    fn pearson_of_a_line_is_one() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0 * i as f64 + 1.0)).collect();
        assert!((pearson(&pts) - 1.0).abs() < 1e-12);
        assert!(pearson(&pts[..2]).is_nan());
    }

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

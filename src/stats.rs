//! The statistics linattn reports, each written once: the mean and sample spread over seeds,
//! quantiles, the percentile bootstrap, Pearson's correlation, Hill's tail index, the
//! normal quantile function of the Q-Q plots, and the smoothed spectral densities and
//! Jensen–Shannon distances of the Hessian's blocks. Pure functions of their samples (the bootstrap
//! draws from its own fixed-seed generator, so a summary is the same every time).

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

/// The `q`-quantile of an ascending sample, interpolating linearly between order statistics
/// (numpy's default); `sorted` must not be empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
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
    Some([quantile(&values, 0.025), quantile(&values, 0.975)])
}

/// The mean of `values` over the resampled indices.
pub fn resampled_mean(values: &[f64], idx: &[usize]) -> f64 {
    idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64
}

/// Hill's estimator on an ascending sample: `α̂ = 1 / ((1/k) Σ_{i<k} ln(X_(i) / X_(k)))` with
/// X_(0) ≥ X_(1) ≥ … the values in descending order, k = ⌊n/10⌋ clamped to [1, n−1].
/// NaN when there are fewer than two values.
pub fn hill_estimator(ascending: &[f64]) -> (f64, usize) {
    let n = ascending.len();
    if n < 2 {
        return (f64::NAN, 0);
    }
    let k = (n / 10).clamp(1, n - 1);
    let desc = |i: usize| ascending[n - 1 - i];
    let threshold = desc(k);
    let mean_log = (0..k).map(|i| (desc(i) / threshold).ln()).sum::<f64>() / k as f64;
    (1.0 / mean_log, k)
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, |rel. error| < 1.2e-9).
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    const P_LOW: f64 = 0.02425;
    if p.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - P_LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Spectral densities of several sets of eigenvalues on one common grid, smoothed as
/// PyHessian's `density_generate` smooths a spectrum (the smoothing of Zhang et al., 2024):
/// each eigenvalue a Gaussian of variance `sigma_squared · max(1, hi − lo)` with weight 1/m, on
/// `bins` equal bins from the smallest eigenvalue of all sets − 0.01 to the largest + 0.01.
/// Where PyHessian samples each Gaussian at the grid points, this integrates it over each bin
/// (a difference of normal CDFs), so that no eigenvalue is lost when the Gaussian is narrower
/// than a bin (a spread of eigenvalues above about 1000). Each density is then normalised to
/// sum to 1. One grid for all sets, so that any two compare bin by bin.
pub fn spectral_densities(spectra: &[Vec<f64>], bins: usize, sigma_squared: f64) -> Vec<Vec<f64>> {
    let all = spectra.iter().flatten().copied();
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (lo, hi) = (lo - 0.01, hi + 0.01);
    let scale = (2.0 * sigma_squared * (hi - lo).max(1.0)).sqrt();
    let width = (hi - lo) / bins as f64;
    spectra
        .iter()
        .map(|eigs| {
            let mut p = vec![0.0; bins];
            for &l in eigs {
                let cdf = |j: usize| libm::erf((lo + j as f64 * width - l) / scale);
                let mut below = cdf(0);
                for (j, v) in p.iter_mut().enumerate() {
                    let above = cdf(j + 1);
                    *v += 0.5 * (above - below);
                    below = above;
                }
            }
            let total: f64 = p.iter().sum();
            p.iter_mut().for_each(|v| *v /= total);
            p
        })
        .collect()
}

/// The Jensen–Shannon distance between two distributions on the same bins: the square root
/// of the divergence `½ KL(p‖m) + ½ KL(q‖m)`, m = (p + q)/2, natural logarithm (scipy's
/// `jensenshannon`); 0 for equal distributions, √ln 2 for disjoint ones.
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(p.len(), q.len(), "two distributions on the same bins");
    let kl = |a: f64, m: f64| if a > 0.0 { a * (a / m).ln() } else { 0.0 };
    let div: f64 = p
        .iter()
        .zip(q)
        .map(|(&a, &b)| {
            let m = 0.5 * (a + b);
            0.5 * kl(a, m) + 0.5 * kl(b, m)
        })
        .sum();
    div.max(0.0).sqrt()
}

/// The mean Jensen–Shannon distance over all pairs i < j of `spectra`'s smoothed densities
/// ([`spectral_densities`]); NaN with fewer than two sets or a non-finite eigenvalue.
pub fn mean_pairwise_js(spectra: &[Vec<f64>], bins: usize, sigma_squared: f64) -> f64 {
    if spectra.len() < 2 || spectra.iter().flatten().any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let d = spectral_densities(spectra, bins, sigma_squared);
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..d.len() {
        for j in i + 1..d.len() {
            sum += js_distance(&d[i], &d[j]);
            pairs += 1;
        }
    }
    sum / pairs as f64
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
    fn hill_estimator_recovers_the_index_of_a_pareto_sample() {
        // Exact Pareto(α=2) quantiles: x = (1 − u)^(−1/α) on a fine grid.
        let n = 100_000;
        let xs: Vec<f64> = (0..n)
            .map(|i| (1.0 - (i as f64 + 0.5) / n as f64).powf(-0.5))
            .collect();
        let (alpha, k) = hill_estimator(&xs);
        assert_eq!(k, n / 10);
        assert!((alpha - 2.0).abs() < 0.02, "alpha {alpha}");
    }

    #[test]
    fn inverse_normal_cdf_matches_known_quantiles() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959963984540054),
            (0.8413447460685429, 1.0),
            (0.001, -3.090232306167813),
            (1e-10, -6.361340902404056),
            (0.02, -2.053748910631823),
        ] {
            assert!(
                (inverse_normal_cdf(p) - z).abs() < 1e-8 * z.abs().max(1.0),
                "p={p}"
            );
        }
        assert_eq!(inverse_normal_cdf(0.0), f64::NEG_INFINITY);
        assert_eq!(inverse_normal_cdf(1.0), f64::INFINITY);
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&xs, 0.5), 2.5);
        assert_eq!(quantile(&xs, 0.25), 1.75);
        assert_eq!((quantile(&xs, 0.0), quantile(&xs, 1.0)), (1.0, 4.0));
    }

    #[test]
    fn js_distance_is_zero_for_equal_and_sqrt_ln2_for_disjoint_distributions() {
        let p = [0.25, 0.25, 0.5, 0.0];
        assert_eq!(js_distance(&p, &p), 0.0);
        let (a, b) = ([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.3, 0.7]);
        assert!((js_distance(&a, &b) - 2f64.ln().sqrt()).abs() < 1e-15);
        // The definition evaluated in Python for [0.1, 0.9] and [0.6, 0.4]: 0.38522632...
        let d = js_distance(&[0.1, 0.9], &[0.6, 0.4]);
        let m = [0.35, 0.65];
        let want = (0.5 * (0.1 * (0.1f64 / m[0]).ln() + 0.9 * (0.9f64 / m[1]).ln())
            + 0.5 * (0.6 * (0.6f64 / m[0]).ln() + 0.4 * (0.4f64 / m[1]).ln()))
        .sqrt();
        assert!(
            (d - want).abs() < 1e-15 && (d - 0.385_226_32).abs() < 1e-8,
            "{d}"
        );
    }

    #[test]
    fn blocks_with_one_spectrum_are_homogeneous_and_far_apart_spectra_are_not() {
        let a = vec![0.1, 0.5, 2.0];
        assert_eq!(
            mean_pairwise_js(&[a.clone(), a.clone(), a.clone()], 10_000, 1e-5),
            0.0
        );
        let far = mean_pairwise_js(&[vec![0.0, 0.01], vec![5.0, 5.01]], 10_000, 1e-5);
        assert!((far - 2f64.ln().sqrt()).abs() < 1e-9, "{far}");
        let d = spectral_densities(&[a], 10_000, 1e-5);
        assert!((d[0].iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(mean_pairwise_js(&[vec![1.0]], 100, 1e-5).is_nan());
    }
}

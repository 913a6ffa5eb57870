//! Density histograms of a sample, with a normal Q-Q inset.
use super::*;
use crate::stats::inverse_normal_cdf;

// ---------------------------------------------------------------- histograms

/// Density histogram of the finite values: (left edge, bin width, densities) with
/// Σ density·width = 1. None if no finite value; all-equal values get a unit-wide range.
pub(super) fn density_bins(values: &[f64], bins: usize) -> Option<(f64, f64, Vec<f64>)> {
    let bins = bins.max(1);
    let (lo, hi) = finite_min_max(values.iter().copied());
    if lo > hi {
        return None;
    }
    let (lo, hi) = if hi - lo > 0.0 && (hi - lo).is_finite() {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    let mut n = 0usize;
    for v in values.iter().filter(|v| v.is_finite()) {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
        n += 1;
    }
    Some((
        lo,
        width,
        counts
            .iter()
            .map(|&c| c as f64 / (n as f64 * width))
            .collect(),
    ))
}

/// Normal Q-Q points: (theoretical quantile, standardized sample quantile), at most `max` of
/// them. Empty if fewer than two finite values or zero spread.
pub(super) fn qq_points(values: &[f64], max: usize) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let n = v.len();
    if n < 2 {
        return vec![];
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    if sd <= 0.0 || !sd.is_finite() {
        return vec![];
    }
    v.sort_by(f64::total_cmp);
    let k = n.min(max.max(2));
    (0..k)
        .map(|j| {
            let i = if k == n {
                j
            } else {
                (j as f64 * (n - 1) as f64 / (k - 1) as f64).round() as usize
            };
            (
                inverse_normal_cdf((i as f64 + 0.5) / n as f64),
                (v[i] - mean) / sd,
            )
        })
        .collect()
}

/// One histogram panel as its own PNG.
pub fn histogram(path: &Path, panel: &HistogramPanel) -> Result<()> {
    render(path, PANEL, |root| draw_histogram(root, panel))
}

pub(super) fn draw_histogram(area: &Area, panel: &HistogramPanel) -> Result<()> {
    let HistogramPanel {
        title,
        x_label,
        values,
        bins,
        qq_inset,
    } = panel;
    let (bins, qq_inset) = (*bins, *qq_inset);
    let dens = density_bins(values, if bins == 0 { 100 } else { bins });
    let (xa, ya) = match &dens {
        Some((lo, w, d)) => {
            let hi = lo + w * d.len() as f64;
            let pad = 0.02 * (hi - lo);
            let top = d.iter().copied().fold(0.0, f64::max) * 1.08;
            // Raise the y range so that no bar reaches under the inset (right 44%, top 54%).
            let cut = lo - pad + (1.0 - INSET.0) * (hi - lo + 2.0 * pad);
            let under = d
                .iter()
                .enumerate()
                .filter(|(i, _)| lo + w * (*i + 1) as f64 > cut)
                .map(|(_, h)| *h)
                .fold(0.0, f64::max);
            let top = if qq_inset {
                top.max(under / (1.0 - INSET.1) * 1.03)
            } else {
                top
            };
            (
                Axis::linear((lo - pad, hi + pad), 5),
                Axis::linear((0.0, if top > 0.0 { top } else { 1.0 }), 5),
            )
        }
        None => (Axis::linear((0.0, 1.0), 5), Axis::linear((0.0, 1.0), 5)),
    };
    let mut ch = chart(area, title, &xa, &ya, x_label, "density", false)?;
    let Some((lo, w, d)) = dens else {
        return no_data(&ch, &xa, &ya);
    };
    ch.draw_series(
        d.iter()
            .enumerate()
            .filter(|(_, h)| **h > 0.0)
            .map(|(i, h)| {
                let x0 = lo + w * i as f64;
                Rectangle::new([(x0, 0.0), (x0 + w, *h)], HIST_COLOR.mix(0.85).filled())
            }),
    )?;
    if qq_inset {
        let (px, py) = ch.plotting_area().get_pixel_range();
        let (bx, by) = area.get_base_pixel();
        let (iw, ih) = (
            ((px.end - px.start) as f64 * INSET.0) as i32 - 4,
            ((py.end - py.start) as f64 * INSET.1) as i32 - 4,
        );
        let inset = area
            .clone()
            .shrink((px.end - bx - iw - 4, py.start - by + 4), (iw, ih));
        inset.fill(&WHITE)?;
        draw_qq(&inset, values)?;
    }
    Ok(())
}

pub(super) fn draw_qq(area: &Area, values: &[f64]) -> Result<()> {
    let pts = qq_points(values, 400);
    let (xlo, xhi) = lin_range(pts.iter().map(|p| p.0).chain([-2.0, 2.0]));
    let (ylo, yhi) = lin_range(pts.iter().map(|p| p.1).chain([-2.0, 2.0]));
    let (xa, ya) = (Axis::linear((xlo, xhi), 3), Axis::linear((ylo, yhi), 3));
    let mut ch = chart(
        area,
        "",
        &xa,
        &ya,
        "normal quantile",
        "sample quantile",
        true,
    )?;
    let (a, b) = (xlo.max(ylo), xhi.min(yhi));
    if a < b {
        ch.draw_series(DashedLineSeries::new(
            [(a, a), (b, b)],
            6,
            4,
            ADAM_COLOR.stroke_width(2),
        ))?;
    }
    ch.draw_series(
        pts.iter()
            .map(|&(x, y)| Circle::new((x, y), 2, HIST_COLOR.filled())),
    )?;
    if pts.is_empty() {
        no_data(&ch, &xa, &ya)?;
    }
    Ok(())
}

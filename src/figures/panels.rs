//! One plot function per panel kind: each turns a figure's measured runs into one panel for
//! one series, in the paper's visual language (log-scale curves, mean over seeds ± std/4,
//! SGD with momentum black, Adam red, the testbed's optimizers in colours of their own;
//! density histograms; scatter coloured by iteration). Adding a panel kind means one function
//! here and one arm in [`panel`] (the block spectra, a row of panels per optimizer, are laid
//! out by [`rows`]).
use super::numbers;
use super::spec::PanelKind;
use super::{FigureData, RunResult};
use crate::config::OptimizerKind;
use crate::measure::{spectrum, Row};
use crate::model::{Arch, Layout};
use crate::plots::{
    AnyPanel, Curve, HistogramPanel, Panel, ScatterPanel, ADAM_COLOR, PALETTE, SGD_COLOR,
};
use plotters::style::RGBColor;
use std::collections::BTreeSet;

/// The panel of kind `kind` for series `s`.
pub fn panel(fig: &FigureData, kind: PanelKind, s: usize) -> AnyPanel {
    match kind {
        PanelKind::Loss => loss(fig, s),
        PanelKind::Noise => noise(fig, s, false),
        PanelKind::NoiseQq => noise(fig, s, true),
        PanelKind::Condition => condition(fig, s),
        PanelKind::Smoothness => smoothness(fig, s),
        PanelKind::GradVsSmoothness => grad_vs_smoothness(fig, s),
        PanelKind::LrSweep => lr_sweep(fig, s),
        PanelKind::BreakPoints => break_points(fig, s),
        PanelKind::BestLoss => best_loss(fig, s),
        PanelKind::Heterogeneity => heterogeneity(fig, s),
        // One panel per optimizer and iteration: [`rows`] lays them out.
        PanelKind::BlockSpectra => AnyPanel::Blank,
    }
}

/// Per seed, the first iteration whose loss or gradient was not finite: where the run stops
/// under the authors' rule (a run that skipped such steps is, up to there, the run that rule
/// trains). Seeds whose runs never met one are named in the title.
fn break_points(fig: &FigureData, s: usize) -> AnyPanel {
    let label = &fig.spec.series[s].label;
    let mut unbroken = vec![];
    let curves = per_optimizer(fig, |o| {
        let runs: Vec<&RunResult> = fig.runs_of(s, o).collect();
        let broken: Vec<&&RunResult> = runs
            .iter()
            .filter(|r| r.first_nonfinite.is_some())
            .collect();
        // One entry per optimizer, short enough for a panel title: "SGD s0, s3" or "Adam all 6".
        let seeds: Vec<String> = runs
            .iter()
            .filter(|r| r.first_nonfinite.is_none())
            .map(|r| format!("s{}", r.spec.seed))
            .collect();
        if seeds.len() == runs.len() && !runs.is_empty() {
            unbroken.push(format!("{} all {}", short(o), runs.len()));
        } else if !seeds.is_empty() {
            unbroken.push(format!("{} {}", short(o), seeds.join(", ")));
        }
        Curve {
            label: format!(
                "{} ({} of {} break)",
                optimizer_label(o),
                broken.len(),
                runs.len()
            ),
            color: color(o),
            x: broken.iter().map(|r| r.spec.seed as f64).collect(),
            mean: broken
                .iter()
                .map(|r| r.first_nonfinite.unwrap_or_default() as f64)
                .collect(),
            band: None,
            markers: true,
        }
    });
    let never = if unbroken.is_empty() {
        String::new()
    } else {
        format!("; never: {}", unbroken.join("; "))
    };
    AnyPanel::Lines(Panel {
        title: format!("{label}: first non-finite step{never}"),
        x_label: "seed".into(),
        y_label: "iteration (authors' rule stops)".into(),
        log_y: false,
        curves,
        empty_text: Some("no run breaks".into()),
    })
}

fn short(o: OptimizerKind) -> &'static str {
    match o {
        OptimizerKind::Sgd => "SGD",
        other => optimizer_label(other),
    }
}

pub fn optimizer_label(o: OptimizerKind) -> &'static str {
    match o {
        OptimizerKind::Sgd => "SGD with momentum",
        OptimizerKind::Adam => "Adam",
        OptimizerKind::Adamw => "AdamW",
        OptimizerKind::Sign => "sign descent",
        OptimizerKind::Normalized => "normalized GD",
        OptimizerKind::Lion => "Lion",
        OptimizerKind::AdamMini => "Adam-mini",
        OptimizerKind::Muon => "Muon",
    }
}

/// SGD black and Adam red as in the paper; each testbed optimizer a colour of its own.
fn color(o: OptimizerKind) -> RGBColor {
    match o {
        OptimizerKind::Sgd => SGD_COLOR,
        OptimizerKind::Adam => ADAM_COLOR,
        OptimizerKind::Adamw => PALETTE[1],
        OptimizerKind::Sign => PALETTE[0],
        OptimizerKind::Normalized => PALETTE[2],
        OptimizerKind::Lion => PALETTE[4],
        OptimizerKind::AdamMini => PALETTE[5],
        OptimizerKind::Muon => PALETTE[6],
    }
}

/// One curve (or anything) per optimizer of the figure, in the figure's optimizer order.
fn per_optimizer<T>(fig: &FigureData, mut curve: impl FnMut(OptimizerKind) -> T) -> Vec<T> {
    fig.spec.runs.optimizers.iter().map(|&o| curve(o)).collect()
}

/// Mean over the seeds of `runs` (one optimizer's, at one lr) ± std/4 of one quantity.
fn seed_band(
    o: OptimizerKind,
    runs: &[&RunResult],
    field: fn(&Row) -> Option<f64>,
    grid: &BTreeSet<i64>,
) -> Curve {
    let (x, mean, band) = numbers::seed_curve(runs, field, grid);
    let lr = runs.first().map(|r| r.spec.lr).unwrap_or(f64::NAN);
    Curve {
        label: format!("{} (lr {lr})", optimizer_label(o)),
        color: color(o),
        x,
        mean,
        band: Some(band),
        markers: false,
    }
}

/// Mean over seeds ± std/4 of one measured quantity, one curve per optimizer.
fn curves(
    fig: &FigureData,
    s: usize,
    field: fn(&Row) -> Option<f64>,
    grid: &BTreeSet<i64>,
) -> Vec<Curve> {
    per_optimizer(fig, |o| {
        let runs: Vec<&RunResult> = fig.runs_of(s, o).collect();
        seed_band(o, &runs, field, grid)
    })
}

fn lines(
    fig: &FigureData,
    s: usize,
    y_label: &str,
    field: fn(&Row) -> Option<f64>,
    grid: &BTreeSet<i64>,
) -> AnyPanel {
    AnyPanel::Lines(Panel {
        title: fig.spec.series[s].label.clone(),
        x_label: "iteration".into(),
        y_label: y_label.into(),
        log_y: true,
        curves: curves(fig, s, field, grid),
        empty_text: None,
    })
}

/// Test loss against iteration at each optimizer's best learning rate of the grid (the lowest
/// mean final loss, [`numbers::best_lr`]): the runs behind the minima of the lr_sweep panel.
fn best_loss(fig: &FigureData, s: usize) -> AnyPanel {
    let curves = per_optimizer(fig, |o| {
        let runs = numbers::compared_runs(fig, s, o);
        let mut curve = seed_band(o, &runs, |r| r.test_loss, &fig.needs.loss);
        if runs.is_empty() {
            curve.label = format!("{}: every lr diverged", optimizer_label(o));
        }
        curve
    });
    AnyPanel::Lines(Panel {
        title: format!("{}: test loss at each best lr", fig.spec.series[s].label),
        x_label: "iteration".into(),
        y_label: "test loss".into(),
        log_y: true,
        curves,
        empty_text: None,
    })
}

/// block_heterogeneity against iteration: the mean pairwise Jensen–Shannon distance between
/// the spectral densities of the Hessian's blocks (0: every block has the same spectrum).
fn heterogeneity(fig: &FigureData, s: usize) -> AnyPanel {
    AnyPanel::Lines(Panel {
        title: format!("{}: block heterogeneity", fig.spec.series[s].label),
        x_label: "iteration".into(),
        y_label: "mean JS distance between blocks".into(),
        log_y: false,
        curves: curves(fig, s, |r| r.block_heterogeneity, &fig.needs.spectrum),
        empty_text: None,
    })
}

/// The sorted |eigenvalues| of the whole Hessian (black) and of each block's diagonal
/// sub-Hessian at iteration `t`, for the first seed's run of optimizer `o`. The x axis is the
/// rank over the block's size (0 the largest, 1 the smallest), so that blocks of any size
/// share it; an eigenvalue of exactly 0 has no place on the log axis.
fn block_spectra(fig: &FigureData, s: usize, o: OptimizerKind, t: i64) -> AnyPanel {
    let Some(run) = fig.runs_of(s, o).next() else {
        return AnyPanel::Blank;
    };
    let names = std::iter::once(spectrum::ALL.to_string())
        .chain(Layout::new(&Arch::from_config(&run.spec.cfg)).block_names());
    let spectra = run.spectra.get(&t).map(Vec::as_slice).unwrap_or_default();
    let curves = names
        .zip(spectra)
        .enumerate()
        .map(|(i, (name, eigs))| {
            let mut mags: Vec<f64> = eigs.iter().map(|v| v.abs()).collect();
            mags.sort_by(|a, b| b.total_cmp(a));
            let last = mags.len().saturating_sub(1).max(1) as f64;
            // A block the loss does not depend on has only zeros, which a log axis cannot draw;
            // its legend entry says so rather than naming a line that is not there.
            let label = match mags.iter().all(|&m| m == 0.0) {
                true => format!("{name}: all 0, not drawn"),
                false => name,
            };
            Curve {
                label,
                color: match i {
                    0 => SGD_COLOR,
                    _ => PALETTE[(i - 1) % PALETTE.len()],
                },
                x: (0..mags.len()).map(|k| k as f64 / last).collect(),
                mean: mags,
                band: None,
                markers: false,
            }
        })
        .collect();
    AnyPanel::Lines(Panel {
        title: format!(
            "{}: {} seed {}, iteration {t}",
            fig.spec.series[s].label,
            short(o),
            run.spec.seed
        ),
        x_label: "rank / block size".into(),
        y_label: "|eigenvalue|".into(),
        log_y: true,
        curves,
        empty_text: Some(format!("no spectrum at iteration {t}")),
    })
}

/// The block spectra's rows: per series and optimizer, one panel per iteration of
/// `measure.spectrum_at` that the runs reach.
fn spectra_rows(fig: &FigureData) -> Vec<Vec<AnyPanel>> {
    let at: Vec<i64> = fig
        .res
        .measure
        .spectrum_at
        .iter()
        .copied()
        .filter(|&t| t <= fig.res.iters)
        .collect();
    let mut rows = vec![];
    for s in 0..fig.spec.series.len() {
        for &o in &fig.spec.runs.optimizers {
            rows.push(at.iter().map(|&t| block_spectra(fig, s, o, t)).collect());
        }
    }
    rows
}

/// Test loss on the evaluation batch against iteration.
fn loss(fig: &FigureData, s: usize) -> AnyPanel {
    lines(fig, s, "test loss", |r| r.test_loss, &fig.needs.loss)
}

/// Robust condition number max|diag H| / median|diag H| against iteration.
fn condition(fig: &FigureData, s: usize) -> AnyPanel {
    lines(
        fig,
        s,
        "robust condition number",
        |r| r.condition_number,
        &fig.needs.condition,
    )
}

/// Directional smoothness uᵀH(θ_t)u along the step taken, against iteration.
fn smoothness(fig: &FigureData, s: usize) -> AnyPanel {
    lines(
        fig,
        s,
        "directional smoothness",
        |r| r.dir_smoothness,
        &fig.needs.smoothness,
    )
}

/// Density histogram of ‖g_B − g‖ at initialisation.
fn noise(fig: &FigureData, s: usize, qq_inset: bool) -> AnyPanel {
    let label = &fig.spec.series[s].label;
    match &fig.noise[s] {
        Some(n) => {
            let a = n.summary.hill_tail_index;
            let alpha = if a.is_finite() {
                // "α̂" would need a combining circumflex, which the plots' text renderer
                // draws beside the α, not over it.
                format!(" (Hill α ≈ {a:.2})")
            } else {
                String::new()
            };
            AnyPanel::Histogram(HistogramPanel {
                title: format!("{label}: noise at init{alpha}"),
                x_label: "‖g_B − g‖".into(),
                values: n.values.clone(),
                // The paper's 100 bins hold 10 000 samples; fewer samples get fewer bins.
                bins: (n.values.len() / 20).clamp(20, 100),
                qq_inset,
            })
        }
        None => AnyPanel::Blank,
    }
}

/// ln gradient norm against ln directional smoothness, coloured by iteration (the first run of
/// the series: Adam, seed 1 in Fig. 6). Non-positive smoothness has no logarithm and is left out.
fn grad_vs_smoothness(fig: &FigureData, s: usize) -> AnyPanel {
    let label = &fig.spec.series[s].label;
    let Some(run) = fig.runs.iter().find(|r| r.spec.series == s) else {
        return AnyPanel::Blank;
    };
    let pts = numbers::log_pairs(run, &fig.needs.smoothness);
    let r = crate::stats::pearson(&pts.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>());
    AnyPanel::Scatter(ScatterPanel {
        title: format!(
            "{label}: {} seed {} (r = {r:.2})",
            optimizer_label(run.spec.optimizer),
            run.spec.seed
        ),
        x_label: "ln gradient norm".into(),
        y_label: "ln directional smoothness".into(),
        x: pts.iter().map(|p| p.1).collect(),
        y: pts.iter().map(|p| p.2).collect(),
        color_value: pts.iter().map(|p| p.0 as f64).collect(),
        color_label: "iteration".into(),
    })
}

/// Final test loss against log₁₀ learning rate, per optimizer, mean over seeds; a grid point
/// where any seed diverged has no loss to draw (it is the worst result): the legend counts
/// those points and the summary lists them.
fn lr_sweep(fig: &FigureData, s: usize) -> AnyPanel {
    let curves = per_optimizer(fig, |o| {
        let grid = numbers::lr_grid(fig, s, o);
        let diverged = grid.iter().filter(|p| p.diverged > 0).count();
        let outcome = match numbers::best_lr(&grid) {
            Some(b) if diverged > 0 => format!(": best {b}, {diverged} diverged"),
            Some(b) => format!(": best {b}"),
            None => format!(": all {} learning rates diverged", grid.len()),
        };
        let (mut x, mut mean, mut band) = (vec![], vec![], vec![]);
        for p in &grid {
            x.push(p.lr.log10());
            mean.push(p.mean.unwrap_or(f64::NAN));
            band.push(p.std.map_or(f64::NAN, |s| s / 4.0));
        }
        Curve {
            label: format!("{}{outcome}", optimizer_label(o)),
            color: color(o),
            x,
            mean,
            band: Some(band),
            markers: false,
        }
    });
    AnyPanel::Lines(Panel {
        title: format!("{}: final test loss", fig.spec.series[s].label),
        x_label: "log₁₀ learning rate".into(),
        y_label: "final test loss".into(),
        log_y: true,
        curves,
        empty_text: None,
    })
}

/// Every panel of the figure, laid out as the paper does: one row per panel kind and one
/// column per series; a single series is one row of its panels, and a single panel kind
/// wraps its series into rows of at most three. The block spectra are rows of their own, one
/// per series and optimizer, above the rest when the figure lists them first.
pub fn rows(fig: &FigureData) -> Vec<Vec<AnyPanel>> {
    let kinds: Vec<PanelKind> = fig
        .spec
        .panels
        .iter()
        .copied()
        .filter(|k| *k != PanelKind::BlockSpectra)
        .collect();
    let series = fig.spec.series.len();
    let rest: Vec<Vec<AnyPanel>> = if kinds.is_empty() {
        vec![]
    } else if series == 1 {
        vec![kinds.iter().map(|&k| panel(fig, k, 0)).collect()]
    } else if kinds.len() == 1 {
        let all: Vec<AnyPanel> = (0..series).map(|s| panel(fig, kinds[0], s)).collect();
        all.chunks(3).map(|c| c.to_vec()).collect()
    } else {
        kinds
            .iter()
            .map(|&k| (0..series).map(|s| panel(fig, k, s)).collect())
            .collect()
    };
    match fig
        .spec
        .panels
        .iter()
        .position(|k| *k == PanelKind::BlockSpectra)
    {
        None => rest,
        Some(0) => spectra_rows(fig).into_iter().chain(rest).collect(),
        Some(_) => rest.into_iter().chain(spectra_rows(fig)).collect(),
    }
}

#[cfg(test)]
mod tests {
    /// The plots' text renderer (plotters with ab_glyph) draws a combining mark as a glyph of
    /// its own, beside the letter it belongs over, so no text drawn in a PNG may hold one.
    #[test]
    fn no_text_drawn_in_a_png_holds_a_combining_mark() {
        for (file, text) in [
            ("figures/panels.rs", include_str!("panels.rs")),
            ("plots/mod.rs", include_str!("../plots/mod.rs")),
            ("plots/axis.rs", include_str!("../plots/axis.rs")),
            ("plots/lines.rs", include_str!("../plots/lines.rs")),
            ("plots/histogram.rs", include_str!("../plots/histogram.rs")),
            ("plots/scatter.rs", include_str!("../plots/scatter.rs")),
            ("plots/compare.rs", include_str!("../plots/compare.rs")),
        ] {
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code.chars().any(|c| ('\u{300}'..='\u{36f}').contains(&c)),
                    "{file} line {}: a combining mark in drawn text: {line}",
                    i + 1
                );
            }
        }
    }
}

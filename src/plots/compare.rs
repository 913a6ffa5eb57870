//! The Rust-against-PyTorch overlay of `linattn compare`.
use super::*;

// ---------------------------------------------------------------- Rust vs PyTorch

/// Per-step |r−t|/|t|. Exact matches are put at the returned floor, 1e-12 or a decade below the
/// smallest nonzero difference if that is lower; NaN stays NaN and t = 0 ≠ r gives +inf (both are
/// skipped when drawn).
pub(super) fn relative_difference(r: &[f64], t: &[f64]) -> (Vec<f64>, f64) {
    let rel: Vec<f64> = r
        .iter()
        .zip(t)
        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() / b.abs() })
        .collect();
    let min_pos = rel
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let floor = REL_DIFF_FLOOR.min(min_pos / 10.0).max(f64::MIN_POSITIVE);
    let rel = rel.into_iter().map(|v| if v == 0.0 { floor } else { v });
    (rel.collect(), floor)
}

/// Two stacked panels: both loss curves on a log axis (Rust solid black, PyTorch dashed
/// orange), and the per-step relative difference |r−t|/|t| on a log axis, exact zeros drawn at
/// a floor (1e-12, lower if needed) that the axis label names.
pub fn compare_overlay(
    path: &Path,
    iters: &[f64],
    rust: &[f64],
    torch: &[f64],
    title: &str,
) -> Result<()> {
    let n = iters.len().min(rust.len()).min(torch.len());
    let (it, r, t) = (&iters[..n], &rust[..n], &torch[..n]);
    let (rel, floor) = relative_difference(r, t);
    let rel_label = format!("|r−t|/|t|  (0 drawn at {floor:.0e})");
    render(path, (700, 2 * PANEL.1), |root| {
        let (top, bottom) = root.split_vertically(PANEL.1);
        let xa = Axis::linear(lin_range(it.iter().copied()), 6);
        let ya = Axis::log(log_range(r.iter().chain(t).copied()));
        let mut ch = chart(&top, title, &xa, &ya, "iteration", "loss", false)?;
        let (rs, ts) = (segments(it, r, &xa, &ya), segments(it, t, &xa, &ya));
        draw_lines(&mut ch, &rs, BLACK.stroke_width(2), false)?;
        draw_lines(&mut ch, &ts, TORCH_COLOR.stroke_width(2), true)?;
        legend_entry(&mut ch, "Rust (tch)", BLACK.stroke_width(2))?;
        legend_entry(&mut ch, "PyTorch", TORCH_COLOR.stroke_width(2))?;
        if rs.is_empty() && ts.is_empty() {
            no_data(&ch, &xa, &ya)?;
        }
        draw_legend(&mut ch)?;
        let ya = Axis::log(log_range(rel.iter().copied()));
        let mut ch = chart(
            &bottom,
            "relative difference per step",
            &xa,
            &ya,
            "iteration",
            &rel_label,
            false,
        )?;
        let segs = segments(it, &rel, &xa, &ya);
        draw_lines(&mut ch, &segs, BLACK.stroke_width(1), false)?;
        if segs.is_empty() {
            no_data(&ch, &xa, &ya)?;
        }
        Ok(())
    })
}

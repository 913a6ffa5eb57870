//! Line panels: curves with shaded bands or markers, legends placed in the emptiest corner.
use super::*;

/// Splits (x, y) into runs of drawable points (plotting space), breaking at unshowable ones.
pub(super) fn segments(x: &[f64], y: &[f64], xa: &Axis, ya: &Axis) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![vec![]];
    for (&xv, &yv) in x.iter().zip(y) {
        match (xa.t(xv), ya.t(yv)) {
            (Some(a), Some(b)) => out.last_mut().unwrap().push((a, b)),
            _ if !out.last().unwrap().is_empty() => out.push(vec![]),
            _ => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

pub(super) fn draw_lines(
    ch: &mut Chart,
    segs: &[Vec<(f64, f64)>],
    style: ShapeStyle,
    dashed: bool,
) -> Result<()> {
    for s in segs {
        if s.len() == 1 {
            ch.draw_series(std::iter::once(Circle::new(s[0], 2, style.filled())))?;
        } else if dashed {
            ch.draw_series(DashedLineSeries::new(s.iter().copied(), 8, 5, style))?;
        } else {
            ch.draw_series(LineSeries::new(s.iter().copied(), style))?;
        }
    }
    Ok(())
}

pub(super) fn legend_entry(ch: &mut Chart, label: &str, style: ShapeStyle) -> Result<()> {
    ch.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    Ok(())
}

pub(super) fn draw_legend<'a, 'b: 'a>(ch: &mut Chart<'a, 'b>) -> Result<()> {
    draw_legend_at(ch, SeriesLabelPosition::UpperRight)
}

pub(super) fn draw_legend_at<'a, 'b: 'a>(
    ch: &mut Chart<'a, 'b>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    ch.configure_series_labels()
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(pos)
        .draw()?;
    Ok(())
}

/// The corner of the plotting area that hides the fewest drawn points under a legend box of
/// about `w` × `h` (fractions of the area), in the order upper right, upper left, lower right,
/// lower left when several are equally empty; with the number of points it hides.
pub(super) fn emptiest_corner(
    points: &[(f64, f64)],
    xa: &Axis,
    ya: &Axis,
    w: f64,
    h: f64,
) -> (SeriesLabelPosition, usize) {
    let frac = |v: f64, a: &Axis| {
        if a.hi > a.lo {
            (v - a.lo) / (a.hi - a.lo)
        } else {
            0.5
        }
    };
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let count = |right: bool, upper: bool| {
        points
            .iter()
            .filter(|(x, y)| {
                let (fx, fy) = (frac(*x, xa), frac(*y, ya));
                (if right { fx >= 1.0 - w } else { fx <= w })
                    && (if upper { fy >= 1.0 - h } else { fy <= h })
            })
            .count()
    };
    let mut best = (SeriesLabelPosition::UpperRight, usize::MAX);
    for (pos, right, upper) in corners {
        let c = count(right, upper);
        if c < best.1 {
            best = (pos, c);
        }
    }
    best
}

// ---------------------------------------------------------------- line panels

/// The axes of a line panel, and the corner its legend hides the least data in (the y axis
/// is raised to make room above the data when every corner would hide some).
fn line_axes(p: &Panel) -> (Axis, Axis, (SeriesLabelPosition, usize)) {
    let xs = p
        .curves
        .iter()
        .flat_map(|c| c.x.iter().take(c.mean.len()).copied());
    let mut ys = vec![];
    for c in &p.curves {
        let band = c.band.as_deref().unwrap_or(&[]);
        for (i, &m) in c.mean.iter().enumerate().take(c.x.len()) {
            ys.push(m);
            if let Some(&b) = band.get(i).filter(|b| b.is_finite()) {
                ys.extend([m + b.abs(), m - b.abs()]);
            }
        }
    }
    let xa = Axis::linear(lin_range(xs), 5);
    let y_axis = |(lo, hi): (f64, f64)| {
        if p.log_y {
            Axis::log((lo, hi))
        } else {
            Axis::linear((lo, hi), 6)
        }
    };
    let y_range = if p.log_y {
        log_range(ys.iter().copied())
    } else {
        lin_range(ys.iter().copied())
    };
    let mut ya = y_axis(y_range);
    // Legend box: about 9 px per character of the longest label, 24 px per entry, in
    // fractions of a plotting area of roughly the panel's size.
    let longest = p
        .curves
        .iter()
        .map(|c| c.label.chars().count())
        .max()
        .unwrap_or(0);
    let (lw, lh) = (
        ((longest as f64 * 9.0 + 50.0) / (PANEL.0 as f64 - 120.0)).min(1.0),
        ((p.curves.len() as f64 * 24.0 + 12.0) / (PANEL.1 as f64 - 110.0)).min(0.6),
    );
    let points = |ya: &Axis| -> Vec<(f64, f64)> {
        p.curves
            .iter()
            .flat_map(|c| segments(&c.x, &c.mean, &xa, ya).into_iter().flatten())
            .collect()
    };
    let mut corner = emptiest_corner(&points(&ya), &xa, &ya, lw, lh);
    if corner.1 > 0 {
        // Every corner would hide data: raise the top of the axis to make room above it.
        let (lo, hi) = (ya.lo, ya.hi);
        let top = hi + (hi - lo) * lh / (1.0 - lh);
        ya = y_axis(if p.log_y {
            (10f64.powf(lo), 10f64.powf(top))
        } else {
            (lo, top)
        });
        corner = (SeriesLabelPosition::UpperRight, 0);
    }
    (xa, ya, corner)
}

/// The shaded bands (mean ± band) of the curves that have one.
fn draw_bands(ch: &mut Chart, p: &Panel, xa: &Axis, ya: &Axis) -> Result<()> {
    for c in &p.curves {
        if let Some(band) = &c.band {
            let mut poly: Vec<Vec<(f64, f64, f64)>> = vec![vec![]];
            for ((&x, &m), &b) in c.x.iter().zip(&c.mean).zip(band) {
                match (xa.t(x), ya.t(m), ya.t_floor(m - b.abs()), ya.t(m + b.abs())) {
                    (Some(x), Some(_), Some(lo), Some(hi)) => {
                        poly.last_mut().unwrap().push((x, lo, hi))
                    }
                    _ => poly.push(vec![]),
                }
            }
            for run in poly.iter().filter(|r| r.len() >= 2) {
                let pts: Vec<(f64, f64)> = run
                    .iter()
                    .map(|p| (p.0, p.2))
                    .chain(run.iter().rev().map(|p| (p.0, p.1)))
                    .collect();
                ch.draw_series(std::iter::once(Polygon::new(
                    pts,
                    c.color.mix(0.2).filled(),
                )))?;
            }
        }
    }
    Ok(())
}

pub(super) fn draw_line_panel(area: &Area, p: &Panel) -> Result<()> {
    let (xa, ya, corner) = line_axes(p);
    let mut ch = chart(area, &p.title, &xa, &ya, &p.x_label, &p.y_label, false)?;
    draw_bands(&mut ch, p, &xa, &ya)?;
    let mut any = false;
    for c in &p.curves {
        let segs = segments(&c.x, &c.mean, &xa, &ya);
        any |= !segs.is_empty();
        let style = c.color.stroke_width(2);
        if c.markers {
            let points = segs
                .iter()
                .flatten()
                .map(|&p| Circle::new(p, 5, c.color.filled()));
            ch.draw_series(points)?
                .label(c.label.as_str())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, style.filled()));
        } else {
            draw_lines(&mut ch, &segs, style, false)?;
            legend_entry(&mut ch, &c.label, style)?;
        }
    }
    if !any {
        say_empty(
            &ch,
            &xa,
            &ya,
            p.empty_text.as_deref().unwrap_or(NO_FINITE_DATA),
        )?;
    }
    if !p.curves.is_empty() {
        draw_legend_at(&mut ch, corner.0)?;
    }
    Ok(())
}

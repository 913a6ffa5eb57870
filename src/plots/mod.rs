//! PNG figures in the paper's visual language (log-scale loss curves with shaded bands,
//! density histograms with a normal Q-Q inset, colour-coded scatter plots, Rust-vs-PyTorch
//! overlays).
//!
//! Text is rendered with an embedded DejaVu Sans through plotters' `ab_glyph` backend, which
//! never looks at system fonts, so figures render identically on a bare machine. Every writer
//! draws into `.<name>.tmp.png` beside the target and renames it into place, so a reader never
//! sees a half-written file. Non-finite values are skipped; a panel with nothing left to draw is
//! still drawn, with its title and axis labels.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// SGD with momentum is drawn in black, Adam in red, as in the paper.
pub const SGD_COLOR: RGBColor = BLACK;
pub const ADAM_COLOR: RGBColor = RGBColor(214, 39, 40);
const HIST_COLOR: RGBColor = RGBColor(31, 119, 180);
const TORCH_COLOR: RGBColor = RGBColor(255, 127, 14);

const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/DejaVuSans.ttf"
));
const PANEL: (u32, u32) = (500, 380);
const COLORBAR_W: u32 = 110;
/// Q-Q inset size as fractions of the histogram's plotting area (width, height).
const INSET: (f64, f64) = (0.44, 0.54);
/// Relative differences that are exactly zero are drawn at this floor (or lower) on the log axis.
const REL_DIFF_FLOOR: f64 = 1e-12;

#[derive(Clone, Debug)]
pub struct Curve {
    pub label: String,
    pub color: RGBColor,
    pub x: Vec<f64>,
    pub mean: Vec<f64>,
    /// Half-width of the shaded band (e.g. std/4), drawn as mean ± band.
    pub band: Option<Vec<f64>>,
    /// Points drawn as markers instead of joined by a line (values that are not a curve, such
    /// as one number per seed).
    pub markers: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub curves: Vec<Curve>,
    /// What the panel says when no curve has a point to draw (None: [`NO_FINITE_DATA`]). A panel
    /// of events, such as the break points, is empty because nothing happened, not because
    /// the values were not finite.
    pub empty_text: Option<String>,
}

/// A density histogram (area 1; 100 bins when `bins` is 0), optionally with a normal Q-Q inset
/// in the upper right.
#[derive(Clone, Debug, Default)]
pub struct HistogramPanel {
    pub title: String,
    pub x_label: String,
    pub values: Vec<f64>,
    pub bins: usize,
    pub qq_inset: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ScatterPanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Value mapped through the viridis colour map (e.g. the iteration of each point).
    pub color_value: Vec<f64>,
    pub color_label: String,
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<Axis, Axis>>;

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("embedded DejaVuSans.ttf could not be parsed")
    }
}

/// Draws into `.<name>.tmp.png` beside `path` and renames it into place; removes the
/// temporary file on failure.
fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Result<()>) -> Result<()> {
    let ctx = || format!("writing plot {}", path.display());
    ensure_font().with_context(ctx)?;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("path has no file name"))
        .with_context(ctx)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(ctx)?;
    let tmp = dir.join(format!(".{}.tmp.png", name.to_string_lossy()));
    let drawn = (|| -> Result<()> {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })();
    let result = drawn.and_then(|()| std::fs::rename(&tmp, path).map_err(Into::into));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(ctx)
}

// ---------------------------------------------------------------- axes and ticks

/// Linear axis range with 5% padding; empty input gives 0..1, equal values a unit-ish window.
fn lin_range(vals: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = finite_min_max(vals.into_iter());
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo <= 1e-12 * hi.abs().max(lo.abs()) || !(hi - lo).is_finite() {
        let w = if lo == 0.0 { 1.0 } else { 0.5 * lo.abs() };
        return (lo - w, lo + w);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

/// Log axis range over the positive finite values, padded by 5% of the span in decades and at
/// least 0.3 decades wide; a single or all-equal value gets one decade centred on it, and no
/// positive value at all gives 0.1..10.
fn log_range(vals: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = finite_min_max(vals.into_iter().filter(|v| *v > 0.0));
    if lo > hi {
        return (0.1, 10.0);
    }
    let (l, h) = (lo.log10(), hi.log10());
    let pad = if h - l < 1e-12 {
        0.5
    } else {
        (0.05 * (h - l)).max((0.3 - (h - l)) / 2.0)
    };
    (10f64.powf(l - pad), 10f64.powf(h + pad))
}

fn finite_min_max(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    vals.filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        })
}

/// "Nice" ticks (1, 2, 2.5, 5 × 10^k steps) inside `lo..=hi`, about `target` of them.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let span = hi - lo;
    if span <= 0.0 || !span.is_finite() {
        return (vec![lo], 1.0);
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let ticks: Vec<f64> = (first..first + 50)
        .map(|k| k as f64 * step)
        .take_while(|t| *t <= hi + 1e-9 * step)
        .map(|t| if t.abs() < 1e-9 * step { 0.0 } else { t })
        .collect();
    if ticks.len() < 2 && target < 16 {
        return nice_ticks(lo, hi, target * 2);
    }
    (ticks, step)
}

fn superscript(e: i64) -> String {
    e.to_string()
        .chars()
        .map(|c| match c {
            '-' => '⁻',
            d => ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹']
                [d.to_digit(10).unwrap_or(0) as usize],
        })
        .collect()
}

/// Formats `v` for ticks spaced `step` apart: plain decimals for moderate magnitudes, else
/// `m×10ᵏ`.
fn fmt_num(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = |s: f64| {
        let d = -s.log10().floor();
        let frac = (s / 10f64.powf(-d)).fract().abs() > 1e-6;
        (d + frac as i32 as f64).max(0.0) as usize
    };
    let mag = v.abs().max(step);
    if (1e-3..1e5).contains(&mag) {
        format!("{:.*}", digits(step), v)
    } else {
        let e = v.abs().log10().floor() as i64;
        let m = v / 10f64.powi(e as i32);
        let m = format!("{:.*}", digits(step / 10f64.powi(e as i32)).min(3), m);
        if m == "1" {
            format!("10{}", superscript(e))
        } else {
            format!("{m}×10{}", superscript(e))
        }
    }
}

/// One axis in plotting space (log10 of the value for log axes) with its own tick positions.
#[derive(Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    major: Vec<f64>,
    minor: Vec<f64>,
    step: f64,
}

impl Axis {
    fn linear((lo, hi): (f64, f64), target: usize) -> Axis {
        let (major, step) = nice_ticks(lo, hi, target);
        Axis {
            lo,
            hi,
            log: false,
            major,
            minor: vec![],
            step,
        }
    }

    fn log((vlo, vhi): (f64, f64)) -> Axis {
        let (lo, hi) = (vlo.log10(), vhi.log10());
        let decades: Vec<f64> = ((lo.ceil() as i64)..=(hi.floor() as i64))
            .map(|e| e as f64)
            .collect();
        let stride = decades.len().div_ceil(6).max(1);
        let mut major: Vec<f64> = decades.iter().copied().step_by(stride).collect();
        let mut minor = vec![];
        if decades.len() <= 6 {
            for e in (lo.floor() as i64)..=(hi.ceil() as i64) {
                for m in 2..10 {
                    let t = (m as f64).log10() + e as f64;
                    if t >= lo && t <= hi {
                        minor.push(t);
                        if decades.len() < 2 && (m == 2 || m == 5) {
                            major.push(t);
                        }
                    }
                }
            }
        }
        if major.len() < 2 {
            major = nice_ticks(vlo, vhi, 4)
                .0
                .into_iter()
                .filter(|v| *v > 0.0)
                .map(f64::log10)
                .collect();
        }
        major.sort_by(f64::total_cmp);
        Axis {
            lo,
            hi,
            log: true,
            major,
            minor,
            step: 0.0,
        }
    }

    /// Plotting-space position of a value, or None if it cannot be shown (non-finite, or
    /// non-positive on a log axis). Values are clamped into the axis range.
    fn t(&self, v: f64) -> Option<f64> {
        let t = if self.log {
            if v > 0.0 {
                v.log10()
            } else {
                return None;
            }
        } else {
            v
        };
        t.is_finite().then(|| t.clamp(self.lo, self.hi))
    }

    /// Like `t`, but values below a log axis (including non-positive ones) sit on its floor.
    fn t_floor(&self, v: f64) -> Option<f64> {
        if self.log && v <= 0.0 {
            Some(self.lo)
        } else {
            self.t(v)
        }
    }

    fn label(&self, t: f64) -> String {
        if !self.log {
            return fmt_num(t, self.step);
        }
        let v = 10f64.powf(t);
        if (t - t.round()).abs() < 1e-9 {
            format!("10{}", superscript(t.round() as i64))
        } else {
            fmt_num(v, 10f64.powf(t.floor()))
        }
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let frac = if self.hi > self.lo {
            (v - self.lo) / (self.hi - self.lo)
        } else {
            0.5
        };
        limit.0 + (frac * (limit.1 - limit.0) as f64).round() as i32
    }
    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.major.clone()
        }
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn chart<'a, 'b>(
    area: &'a Area<'b>,
    title: &str,
    xa: &Axis,
    ya: &Axis,
    xl: &str,
    yl: &str,
    small: bool,
) -> Result<Chart<'a, 'b>> {
    let (tick, desc) = if small { (13, 14) } else { (16, 18) };
    let mut b = ChartBuilder::on(area);
    if small {
        b.margin(4).x_label_area_size(36).y_label_area_size(48);
    } else {
        b.caption(title, (FONT, fitting_font_size(area, title, 20)?))
            .margin(8)
            .margin_right(26)
            .x_label_area_size(50)
            .y_label_area_size(82);
    }
    let mut ch = b.build_cartesian_2d(xa.clone(), ya.clone())?;
    ch.configure_mesh()
        .x_desc(xl)
        .y_desc(yl)
        .x_label_formatter(&|v| xa.label(*v))
        .y_label_formatter(&|v| ya.label(*v))
        .label_style((FONT, tick))
        .axis_desc_style((FONT, desc))
        .bold_line_style(BLACK.mix(0.10))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    ch.draw_series(std::iter::once(Rectangle::new(
        [(xa.lo, ya.lo), (xa.hi, ya.hi)],
        BLACK.stroke_width(1),
    )))?;
    Ok(ch)
}

/// What an empty panel says unless it names its own reason ([`Panel::empty_text`]).
const NO_FINITE_DATA: &str = "no finite data";

fn no_data(ch: &Chart, xa: &Axis, ya: &Axis) -> Result<()> {
    say_empty(ch, xa, ya, NO_FINITE_DATA)
}

fn say_empty(ch: &Chart, xa: &Axis, ya: &Axis, text: &str) -> Result<()> {
    let grey = BLACK.mix(0.5);
    let style = TextStyle::from((FONT, 18).into_font())
        .color(&grey)
        .pos(Pos::new(HPos::Center, VPos::Center));
    ch.plotting_area().draw(&Text::new(
        text,
        ((xa.lo + xa.hi) / 2.0, (ya.lo + ya.hi) / 2.0),
        style,
    ))?;
    Ok(())
}

/// Splits (x, y) into runs of drawable points (plotting space), breaking at unshowable ones.
fn segments(x: &[f64], y: &[f64], xa: &Axis, ya: &Axis) -> Vec<Vec<(f64, f64)>> {
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

fn draw_lines(
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

fn legend_entry(ch: &mut Chart, label: &str, style: ShapeStyle) -> Result<()> {
    ch.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    Ok(())
}

fn draw_legend<'a, 'b: 'a>(ch: &mut Chart<'a, 'b>) -> Result<()> {
    draw_legend_at(ch, SeriesLabelPosition::UpperRight)
}

fn draw_legend_at<'a, 'b: 'a>(ch: &mut Chart<'a, 'b>, pos: SeriesLabelPosition) -> Result<()> {
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
fn emptiest_corner(
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

fn draw_line_panel(area: &Area, p: &Panel) -> Result<()> {
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
    let mut ch = chart(area, &p.title, &xa, &ya, &p.x_label, &p.y_label, false)?;
    let mut any = false;
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

// ---------------------------------------------------------------- histograms

/// Density histogram of the finite values: (left edge, bin width, densities) with
/// Σ density·width = 1. None if no finite value; all-equal values get a unit-wide range.
fn density_bins(values: &[f64], bins: usize) -> Option<(f64, f64, Vec<f64>)> {
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

/// Inverse of the standard normal CDF (Acklam's rational approximation, |rel. error| < 1.2e-9).
fn inverse_normal_cdf(p: f64) -> f64 {
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

/// Normal Q-Q points: (theoretical quantile, standardized sample quantile), at most `max` of
/// them. Empty if fewer than two finite values or zero spread.
fn qq_points(values: &[f64], max: usize) -> Vec<(f64, f64)> {
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

fn draw_histogram(area: &Area, panel: &HistogramPanel) -> Result<()> {
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

fn draw_qq(area: &Area, values: &[f64]) -> Result<()> {
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

// ---------------------------------------------------------------- scatter with colour bar

fn draw_scatter(area: &Area, p: &ScatterPanel) -> Result<()> {
    let keep: Vec<(f64, f64, f64)> = (0..p.x.len().min(p.y.len()).min(p.color_value.len()))
        .map(|i| (p.x[i], p.y[i], p.color_value[i]))
        .filter(|(x, y, c)| x.is_finite() && y.is_finite() && c.is_finite())
        .collect();
    let (main, bar) = area.split_horizontally(area.dim_in_pixel().0 as i32 - COLORBAR_W as i32);
    let xa = Axis::linear(lin_range(keep.iter().map(|k| k.0)), 5);
    let ya = Axis::linear(lin_range(keep.iter().map(|k| k.1)), 6);
    let (clo, chi) = finite_min_max(keep.iter().map(|k| k.2));
    let (clo, chi) = if clo < chi {
        (clo, chi)
    } else if clo == chi {
        (clo - 0.5, clo + 0.5)
    } else {
        (0.0, 1.0)
    };
    let mut ch = chart(&main, &p.title, &xa, &ya, &p.x_label, &p.y_label, false)?;
    let color = |c: f64| ViridisRGB::get_color(((c - clo) / (chi - clo)).clamp(0.0, 1.0));
    ch.draw_series(
        keep.iter()
            .map(|&(x, y, c)| Circle::new((x, y), 3, color(c).filled())),
    )?;
    if keep.is_empty() {
        no_data(&ch, &xa, &ya)?;
    }
    // Colour bar: same vertical extent as the plotting area, ticks and label on its right.
    let (_, py) = ch.plotting_area().get_pixel_range();
    let (_, by) = bar.get_base_pixel();
    let bar_area = bar.clone().shrink(
        (4, py.start - by),
        (COLORBAR_W as i32 - 30, py.end - py.start),
    );
    let ca = Axis::linear((clo, chi), 5);
    let mut cb = ChartBuilder::on(&bar_area)
        .set_label_area_size(LabelAreaPosition::Right, COLORBAR_W as i32 - 52)
        .build_cartesian_2d(
            Axis {
                lo: 0.0,
                hi: 1.0,
                log: false,
                major: vec![],
                minor: vec![],
                step: 1.0,
            },
            ca.clone(),
        )?;
    let n = 128;
    cb.draw_series((0..n).map(|i| {
        let (a, b) = (
            clo + (chi - clo) * i as f64 / n as f64,
            clo + (chi - clo) * (i + 1) as f64 / n as f64,
        );
        Rectangle::new([(0.0, a), (1.0, b)], color((a + b) / 2.0).filled())
    }))?;
    cb.configure_mesh()
        .disable_mesh()
        .y_label_formatter(&|v| ca.label(*v))
        .label_style((FONT, 16))
        .draw()?;
    cb.draw_series(std::iter::once(Rectangle::new(
        [(0.0, clo), (1.0, chi)],
        BLACK.stroke_width(1),
    )))?;
    // Plotters clips a rotated right-hand axis description, so place the label by hand.
    let style = TextStyle::from((FONT, 18).into_font())
        .transform(FontTransform::Rotate90)
        .pos(Pos::new(HPos::Center, VPos::Center));
    bar.draw_text(
        &p.color_label,
        &style,
        (COLORBAR_W as i32 - 16, (py.start + py.end) / 2 - by),
    )?;
    Ok(())
}

// ---------------------------------------------------------------- mixed figure grids

/// One cell of a [`figure_grid`]: any of the panel kinds above.
#[derive(Clone, Debug)]
pub enum AnyPanel {
    Lines(Panel),
    Histogram(HistogramPanel),
    Scatter(ScatterPanel),
    /// An empty cell (e.g. a series without that measurement).
    Blank,
}

/// Height of the title strip (title and subtitle) above a figure grid.
const FIGURE_TITLE_H: u32 = 60;

/// The largest font size up to `size` at which `text` fits the width of `area` with a small
/// margin: a one-column figure (e.g. a single learning-rate sweep) is narrower than its title,
/// and a panel caption can be wider than its panel.
fn fitting_font_size(area: &Area, text: &str, size: u32) -> Result<u32> {
    let room = area.dim_in_pixel().0.saturating_sub(20);
    let mut s = size;
    while s > 8 {
        let (w, _) = area
            .estimate_text_size(text, &TextStyle::from((FONT, s).into_font()))
            .map_err(|e| anyhow!("measuring a title: {e:?}"))?;
        if w <= room {
            break;
        }
        s -= 1;
    }
    Ok(s)
}

/// A figure as the paper lays it out: `rows` of panels of mixed kinds under one title (e.g.
/// loss, noise histogram and condition number, one column per setting). All cells have the
/// same size, widened for the colour bar when any cell is a scatter plot.
pub fn figure_grid(path: &Path, title: &str, subtitle: &str, rows: &[Vec<AnyPanel>]) -> Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let n_rows = rows.len().max(1);
    let scatter = rows
        .iter()
        .flatten()
        .any(|p| matches!(p, AnyPanel::Scatter(_)));
    let cell_w = PANEL.0 + if scatter { COLORBAR_W } else { 0 };
    let size = (
        cell_w * cols as u32,
        PANEL.1 * n_rows as u32 + FIGURE_TITLE_H,
    );
    render(path, size, |root| {
        let (top, body) = root.split_vertically(FIGURE_TITLE_H);
        let centre = Pos::new(HPos::Center, VPos::Center);
        let style =
            TextStyle::from((FONT, fitting_font_size(&top, title, 22)?).into_font()).pos(centre);
        top.draw_text(title, &style, (size.0 as i32 / 2, 18))?;
        let grey = BLACK.mix(0.7);
        let style = TextStyle::from((FONT, fitting_font_size(&top, subtitle, 17)?).into_font())
            .color(&grey)
            .pos(centre);
        top.draw_text(subtitle, &style, (size.0 as i32 / 2, 44))?;
        let areas = body.split_evenly((n_rows, cols));
        for (r, row) in rows.iter().enumerate() {
            for (c, panel) in row.iter().enumerate() {
                let area = &areas[r * cols + c];
                match panel {
                    AnyPanel::Lines(p) => draw_line_panel(area, p)?,
                    AnyPanel::Histogram(p) => draw_histogram(area, p)?,
                    AnyPanel::Scatter(p) => draw_scatter(area, p)?,
                    AnyPanel::Blank => {}
                }
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------- Rust vs PyTorch

/// Per-step |r−t|/|t|. Exact matches are put at the returned floor, 1e-12 or a decade below the
/// smallest nonzero difference if that is lower; NaN stays NaN and t = 0 ≠ r gives +inf (both are
/// skipped when drawn).
fn relative_difference(r: &[f64], t: &[f64]) -> (Vec<f64>, f64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("linattn-plots-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn is_png(p: &Path) -> bool {
        std::fs::read(p)
            .map(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
            .unwrap_or(false)
    }

    fn curve(label: &str, color: RGBColor, f: impl Fn(f64) -> f64) -> Curve {
        let x: Vec<f64> = (0..200).map(|i| i as f64 * 10.0).collect();
        let mean = x.iter().map(|&v| f(v)).collect::<Vec<_>>();
        let band = Some(mean.iter().map(|m| m * 0.2).collect());
        Curve {
            label: label.into(),
            color,
            x,
            mean,
            band,
            markers: false,
        }
    }

    fn hist(values: &[f64], bins: usize, qq_inset: bool) -> HistogramPanel {
        HistogramPanel {
            title: "h".into(),
            x_label: "x".into(),
            values: values.to_vec(),
            bins,
            qq_inset,
        }
    }

    /// A loss-against-iteration panel, log y.
    fn loss_panel(title: &str, curves: Vec<Curve>) -> Panel {
        Panel {
            title: title.into(),
            x_label: "iteration".into(),
            y_label: "loss".into(),
            log_y: true,
            curves,
            empty_text: None,
        }
    }

    #[test]
    fn line_panels_writes_a_png_with_no_system_fonts() {
        // The ab_glyph backend only knows fonts passed to register_font: text drawing would
        // fail with FontUnavailable if the embedded font were not used.
        let d = scratch("lines");
        let p = d.join("loss.png");
        let panel = loss_panel(
            "Linear Transformer",
            vec![
                curve("SGDM", SGD_COLOR, |t| 1.0 / (1.0 + t / 100.0)),
                curve("Adam", ADAM_COLOR, |t| (-t / 300.0).exp() + 1e-3),
            ],
        );
        figure_grid(&p, "t", "s", &[vec![AnyPanel::Lines(panel)]]).unwrap();
        assert!(is_png(&p));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn text_is_rendered_with_the_embedded_font() {
        ensure_font().unwrap();
        let mut buf = vec![255u8; 200 * 60 * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (200, 60)).into_drawing_area();
            root.draw_text("Adam 10⁻³", &(FONT, 24).into(), (10, 15))
                .unwrap();
            root.present().unwrap();
        }
        assert!(
            buf.iter().filter(|&&b| b < 100).count() > 100,
            "no dark text pixels"
        );
    }

    #[test]
    fn histogram_density_integrates_to_one() {
        let vals: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f64 / 37.0)
            .collect();
        for bins in [1, 7, 100] {
            let (_, w, d) = density_bins(&vals, bins).unwrap();
            assert_eq!(d.len(), bins);
            assert!((d.iter().sum::<f64>() * w - 1.0).abs() < 1e-12);
        }
        let (_, w, d) = density_bins(&[3.0, 3.0, f64::NAN], 10).unwrap();
        assert!((d.iter().sum::<f64>() * w - 1.0).abs() < 1e-12);
        assert!(density_bins(&[f64::NAN, f64::INFINITY], 10).is_none());
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
    fn qq_points_of_normal_quantiles_lie_on_the_identity() {
        let vals: Vec<f64> = (0..999)
            .map(|i| 3.0 + 2.0 * inverse_normal_cdf((i as f64 + 0.5) / 999.0))
            .collect();
        let pts = qq_points(&vals, 200);
        assert_eq!(pts.len(), 200);
        assert!(pts
            .iter()
            .all(|(x, y)| (x - y).abs() < 0.02 * x.abs().max(1.0)));
        assert!(qq_points(&[1.0, 1.0], 10).is_empty());
    }

    #[test]
    fn log_range_handles_single_equal_and_nonpositive_values() {
        let (lo, hi) = log_range([0.5]);
        assert!((lo * hi - 0.25).abs() < 1e-12 && (hi / lo - 10.0).abs() < 1e-9);
        assert_eq!(log_range([2.0, 2.0, 2.0]), log_range([2.0]));
        assert_eq!(log_range([0.0, -1.0, f64::NAN]), (0.1, 10.0));
        let (lo, hi) = log_range([1e-3, 1.0, 0.0]);
        assert!(lo > 0.0 && lo < 1e-3 && hi > 1.0);
        let (lo, hi) = log_range([1.0, 1.01]);
        assert!((hi / lo).log10() >= 0.3 - 1e-12);
        assert!(!Axis::log(log_range([0.3, 0.31])).major.is_empty());
    }

    #[test]
    fn a_title_too_wide_for_a_one_column_figure_is_shrunk_until_it_fits() {
        let d = scratch("title");
        let long = "Probe: learning rates for Fig. 5's model (L = 8, d = 20, n = 60), seed 0";
        render(&d.join("t.png"), (PANEL.0, 100), |area| {
            let room = PANEL.0 - 20;
            let width = |s: u32| {
                area.estimate_text_size(long, &TextStyle::from((FONT, s).into_font()))
                    .unwrap()
                    .0
            };
            assert!(
                width(22) > room,
                "the test title must be too wide at the default size"
            );
            let s = fitting_font_size(area, long, 22)?;
            assert!(s < 22 && width(s) <= room && width(s + 1) > room);
            assert_eq!(fitting_font_size(area, "loss", 22)?, 22);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn figure_grid_draws_mixed_rows_with_a_title() {
        let d = scratch("grid");
        let p = d.join("fig.png");
        let loss = loss_panel("loss", vec![curve("SGD", SGD_COLOR, |t| 1.0 / (1.0 + t))]);
        let hist = AnyPanel::Histogram(HistogramPanel {
            title: "noise".into(),
            x_label: "‖g_B − g‖".into(),
            values: (0..500).map(|i| (i % 37) as f64).collect(),
            bins: 0,
            qq_inset: true,
        });
        let sc = ScatterPanel {
            title: "s".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x: vec![1.0, 2.0],
            y: vec![2.0, 1.0],
            color_value: vec![0.0, 1.0],
            color_label: "iteration".into(),
        };
        let rows = vec![
            vec![AnyPanel::Lines(loss.clone()), AnyPanel::Lines(loss)],
            vec![hist, AnyPanel::Blank],
            vec![AnyPanel::Scatter(sc)],
        ];
        figure_grid(&p, "Fig. X", "quick scale: seeds 0, 1", &rows).unwrap();
        assert!(is_png(&p));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn nonfinite_values_do_not_panic() {
        let d = scratch("nonfinite");
        let bad = vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -1.0];
        let c = Curve {
            label: "bad".into(),
            color: ADAM_COLOR,
            x: bad.clone(),
            mean: bad.clone(),
            band: Some(bad.clone()),
            markers: true,
        };
        let empty = Curve {
            label: "empty".into(),
            color: SGD_COLOR,
            x: vec![],
            mean: vec![],
            band: None,
            markers: false,
        };
        for log_y in [true, false] {
            let p = Panel {
                title: "t".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                log_y,
                curves: vec![c.clone(), empty.clone()],
                empty_text: None,
            };
            figure_grid(&d.join("l.png"), "t", "s", &[vec![AnyPanel::Lines(p)]]).unwrap();
        }
        figure_grid(&d.join("none.png"), "t", "s", &[vec![AnyPanel::Blank]]).unwrap();
        histogram(&d.join("h.png"), &hist(&bad, 0, true)).unwrap();
        histogram(&d.join("h1.png"), &hist(&[1.0], 10, true)).unwrap();
        let hist = |values: Vec<f64>| {
            AnyPanel::Histogram(HistogramPanel {
                title: "h".into(),
                x_label: "x".into(),
                values,
                bins: 100,
                qq_inset: true,
            })
        };
        figure_grid(
            &d.join("hs.png"),
            "t",
            "s",
            &[vec![hist(vec![]), hist(bad.clone())]],
        )
        .unwrap();
        let sp = ScatterPanel {
            title: "s".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x: bad.clone(),
            y: bad.clone(),
            color_value: vec![1.0; 5],
            color_label: "c".into(),
        };
        figure_grid(&d.join("s.png"), "t", "s", &[vec![AnyPanel::Scatter(sp)]]).unwrap();
        compare_overlay(&d.join("c.png"), &bad, &bad, &[0.0; 5], "t").unwrap();
        compare_overlay(&d.join("c0.png"), &[], &[], &[], "t").unwrap();
        compare_overlay(
            &d.join("c1.png"),
            &[0.0, 1.0],
            &[1.0, 0.5],
            &[1.0, 0.5],
            "identical",
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn relative_difference_puts_exact_zeros_at_a_floor_below_the_data() {
        let (rel, floor) = relative_difference(&[1.0, 2.0, 0.0, f64::NAN], &[1.0, 1.0, 0.0, 1.0]);
        assert_eq!(floor, 1e-12);
        assert_eq!(&rel[..3], &[1e-12, 1.0, 1e-12]);
        assert!(rel[3].is_nan());
        let (rel, floor) = relative_difference(&[1.0, 1.0 + 1e-15], &[1.0, 1.0]);
        assert!(floor < rel[1] && rel[0] == floor);
        let (rel, _) = relative_difference(&[1.0], &[0.0]);
        assert_eq!(rel[0], f64::INFINITY);
    }

    #[test]
    fn writes_are_atomic_no_tmp_left_behind() {
        let d = scratch("atomic");
        let p = d.join("h.png");
        histogram(&p, &hist(&[1.0, 2.0, 3.0], 10, false)).unwrap();
        histogram(&p, &hist(&[1.0, 2.0, 4.0], 10, true)).unwrap();
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["h.png".to_string()]);
        // A failing write (parent is a file) reports the path and leaves nothing behind.
        let err = histogram(&p.join("x.png"), &hist(&[1.0], 10, false)).unwrap_err();
        assert!(format!("{err:#}").contains("x.png"));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}

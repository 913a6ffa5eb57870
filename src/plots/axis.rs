//! Axes: ranges, tick positions and labels, linear or log scales, and the chart they span.
use super::*;

// ---------------------------------------------------------------- axes and ticks

/// Linear axis range with 5% padding; empty input gives 0..1, equal values a unit-ish window.
pub(super) fn lin_range(vals: impl IntoIterator<Item = f64>) -> (f64, f64) {
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
pub(super) fn log_range(vals: impl IntoIterator<Item = f64>) -> (f64, f64) {
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

pub(super) fn finite_min_max(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    vals.filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        })
}

/// "Nice" ticks (1, 2, 2.5, 5 × 10^k steps) inside `lo..=hi`, about `target` of them.
pub(super) fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
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

pub(super) fn superscript(e: i64) -> String {
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
pub(super) fn fmt_num(v: f64, step: f64) -> String {
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
pub(super) struct Axis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    pub(super) log: bool,
    pub(super) major: Vec<f64>,
    pub(super) minor: Vec<f64>,
    pub(super) step: f64,
}

impl Axis {
    pub(super) fn linear((lo, hi): (f64, f64), target: usize) -> Axis {
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

    pub(super) fn log((vlo, vhi): (f64, f64)) -> Axis {
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
    pub(super) fn t(&self, v: f64) -> Option<f64> {
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
    pub(super) fn t_floor(&self, v: f64) -> Option<f64> {
        if self.log && v <= 0.0 {
            Some(self.lo)
        } else {
            self.t(v)
        }
    }

    pub(super) fn label(&self, t: f64) -> String {
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

pub(super) fn chart<'a, 'b>(
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
pub(super) const NO_FINITE_DATA: &str = "no finite data";

pub(super) fn no_data(ch: &Chart, xa: &Axis, ya: &Axis) -> Result<()> {
    say_empty(ch, xa, ya, NO_FINITE_DATA)
}

pub(super) fn say_empty(ch: &Chart, xa: &Axis, ya: &Axis, text: &str) -> Result<()> {
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

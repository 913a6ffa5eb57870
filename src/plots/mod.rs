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

mod axis;
mod compare;
mod histogram;
mod lines;
mod scatter;

use axis::*;
pub use compare::compare_overlay;
pub use histogram::histogram;
use histogram::*;
use lines::*;
use scatter::*;

/// SGD with momentum is drawn in black, Adam in red, as in the paper.
pub const SGD_COLOR: RGBColor = BLACK;
pub const ADAM_COLOR: RGBColor = RGBColor(214, 39, 40);
/// Tableau's colours without its red (Adam's) and grey: the testbed's optimizers and the
/// Hessian's blocks.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),  // blue
    RGBColor(255, 127, 14),  // orange
    RGBColor(44, 160, 44),   // green
    RGBColor(23, 190, 207),  // cyan
    RGBColor(148, 103, 189), // purple
    RGBColor(140, 86, 75),   // brown
    RGBColor(227, 119, 194), // pink
    RGBColor(188, 189, 34),  // olive
];
const HIST_COLOR: RGBColor = PALETTE[0];
const TORCH_COLOR: RGBColor = PALETTE[1];

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

#[cfg(test)]
mod tests {
    use super::compare::relative_difference;
    use super::*;
    use crate::stats::inverse_normal_cdf;

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

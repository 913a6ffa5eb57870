//! Scatter panels coloured by a third value, with a colour bar.
use super::*;

// ---------------------------------------------------------------- scatter with colour bar

pub(super) fn draw_scatter(area: &Area, p: &ScatterPanel) -> Result<()> {
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

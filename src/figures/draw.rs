//! Drawing a figure from its runs folder: its data read back, the PNG and the summary.
use super::*;

pub(super) fn relative(req: &Request, p: &Path) -> String {
    p.strip_prefix(&req.runs).unwrap_or(p).display().to_string()
}

/// Gathers one figure's runs, measurements and noise from the runs folder.
pub(super) fn figure_data(fig: &Figure, req: &Request) -> Result<FigureData> {
    let mut results = Vec::with_capacity(fig.plan.len());
    for (spec_run, dir) in fig.plan.iter().zip(&fig.dirs) {
        let folder = RunFolder::new(dir);
        let State::Done(summary) = folder.state() else {
            return Err(anyhow::Error::new(Incomplete(vec![format!(
                "{} (training)",
                relative(req, dir)
            )])));
        };
        runs::check_config(dir, &spec_run.cfg)?;
        // What the figure needs must be there and whole: a damaged or deleted measurements or
        // spectrum file is never drawn as if it held nothing to draw.
        if !measure::missing(&folder, &spec_run.cfg, &summary, &fig.needs)?.is_empty() {
            return Err(anyhow::Error::new(Incomplete(vec![format!(
                "{} (measurements)",
                relative(req, dir)
            )])));
        }
        let rows = measure::read(&folder)?;
        let metrics = folder.metrics()?;
        let (skipped_steps, _) =
            io::nonfinite_steps(&metrics, summary.status == crate::run::Status::Diverged);
        let first_nonfinite = metrics.iter().find(|r| !r.is_finite()).map(|r| r.iter);
        let spectra = match fig.spec.panels.contains(&spec::PanelKind::BlockSpectra) {
            true => measure::spectrum::read(&folder)?,
            false => Default::default(),
        };
        results.push(RunResult {
            spec: spec_run.clone(),
            dir: dir.clone(),
            summary,
            rows,
            skipped_steps,
            first_nonfinite,
            spectra,
        });
    }
    let mut noise = vec![];
    for s in 0..fig.spec.series.len() {
        noise.push(match fig.res.measure.noise {
            Some(n) => {
                let base = &fig
                    .plan
                    .iter()
                    .find(|r| r.series == s)
                    .expect("every series has runs")
                    .cfg;
                let dir = runs::noise_dir(
                    &req.runs,
                    &runs::noise_config(base, n.seed),
                    n.samples,
                    n.full_batch,
                );
                let (values, summary) = measure::noise::read(&dir)?.ok_or_else(|| {
                    anyhow::Error::new(Incomplete(vec![format!("{} (noise)", relative(req, &dir))]))
                })?;
                Some(Noise { values, summary })
            }
            None => None,
        });
    }
    Ok(FigureData {
        id: fig.id.clone(),
        spec: fig.spec.clone(),
        scale: req.scale.clone(),
        res: fig.res.clone(),
        needs: fig.needs.clone(),
        runs: results,
        noise,
    })
}

/// Draws one figure and rebuilds the summary.
pub(super) fn draw(
    data: &FigureData,
    req: &Request,
    started: Instant,
    all_reused: bool,
    report: &mut Report,
) -> Result<()> {
    std::fs::create_dir_all(&req.plots).map_err(|e| {
        anyhow!(BadInput(format!(
            "plots folder {}: cannot create it ({e})",
            req.plots.display()
        )))
    })?;
    let id = &data.id;
    let png = req.plots.join(format!("{id}.png"));
    crate::plots::figure_grid(
        &png,
        &title(data),
        &scale_caption(data),
        &panels::rows(data),
    )?;
    report.pngs.push(png.clone());
    // A grid's every run, beside the figure: `lr_grid.csv` for the lr_grid figure.
    if data.spec.lr_grid.is_some() {
        io::write_atomic(
            &req.plots.join(format!("{id}.csv")),
            summary::lr_grid_csv(data).as_bytes(),
        )?;
    }
    let png_name = png
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut fs =
        summary::figure_summary(data, &png_name, started.elapsed().as_secs_f64(), &machine());
    fs.title = title(data);
    if all_reused {
        // Everything was reused: the time worth reporting is the one of the invocation that
        // did the work, if its record is there: same scale, and the same runs (their final
        // losses), not an older figure of the same name made from other settings.
        // (serde_json writes an f64 so that it reads back to the same bits.)
        match summary::load_all(&req.plots)?
            .into_iter()
            .find(|o| o.id == fs.id && o.scale == fs.scale && o.final_loss == fs.final_loss)
        {
            Some(old) => {
                fs.wall_time_s = old.wall_time_s;
                fs.machine = old.machine;
                fs.all_reused = old.all_reused;
            }
            None => fs.all_reused = true,
        }
    }
    if data.spec.lr_grid.is_some() {
        let json = serde_json::to_string_pretty(&fs.lr_choices)? + "\n";
        io::write_atomic(&req.plots.join(format!("{id}.json")), json.as_bytes())?;
    }
    summary::save(&req.plots, &fs)?;
    summary::write_all(&req.plots)?;
    say(format!(
        "[{id}] wrote {} ({:.0} s)",
        png.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The figure's title; where its runs skipped non-finite steps (a rule the authors did not
/// have), the title says so and how many, per optimizer.
pub(super) fn title(d: &FigureData) -> String {
    let skipped: Vec<String> = d
        .spec
        .runs
        .optimizers
        .iter()
        .map(|&o| {
            (
                o,
                d.runs
                    .iter()
                    .filter(|r| r.spec.optimizer == o)
                    .map(|r| r.skipped_steps)
                    .sum::<usize>(),
            )
        })
        .map(|(o, n)| {
            format!(
                "{} {n}",
                panels::optimizer_label(o).replace(" with momentum", "")
            )
        })
        .collect();
    let any = d.runs.iter().any(|r| r.skipped_steps > 0);
    if any {
        format!(
            "{} (non-finite steps skipped: {})",
            d.spec.title,
            skipped.join(", ")
        )
    } else {
        d.spec.title.clone()
    }
}

/// "quick scale: seeds [0, 1], 300 iterations".
pub(super) fn scale_caption(d: &FigureData) -> String {
    let seeds = if d.res.seeds.len() == 1 {
        "seed"
    } else {
        "seeds"
    };
    let list = d
        .res
        .seeds
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let base = if d.scale.quick {
        "quick scale"
    } else if d.scale.iters.is_some() || d.scale.seeds.is_some() {
        "custom scale"
    } else {
        "paper scale"
    };
    let mode = d.res.mode.name();
    format!(
        "{base}: {seeds} {list}, {} iterations, {mode} mode",
        d.res.iters
    )
}

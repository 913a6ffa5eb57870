//! `linattn reproduce`: the paper's figures from `experiments/figures/*.yaml`.
//!
//! For each figure, in order: train the runs that are missing (finished runs are reused, an
//! interrupted one is resumed from its checkpoint, fast-mode runs of one setting train as one
//! ensemble), measure what the figure needs on each run
//! and the gradient noise of each series, draw `plots/<figure>.png`, and record the headline
//! numbers for `plots/summary.md`. Everything is keyed by config, so a second invocation only
//! does what the first did not finish.
pub mod measure;
pub mod panels;
pub mod runs;
pub mod stats;
pub mod summary;

use crate::artifacts::Summary;
use crate::config::{Config, OptimizerKind};
use crate::figures::{self, FigureSpec, Resolved, RunSpec, Scale};
use crate::train::{self, Options};
use crate::BadInput;
use anyhow::{anyhow, Result};
use measure::{Needs, Noise, Rows};
use runs::{Tally, Trained};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What the command line asks for.
#[derive(Clone)]
pub struct Request {
    /// Figure ids or figure YAML paths; empty means every figure.
    pub figures: Vec<String>,
    pub scale: Scale,
    pub device: String,
    pub runs: PathBuf,
    pub plots: PathBuf,
    pub experiments: Option<PathBuf>,
    pub options: Options,
}

/// A finished run with its measurements.
pub struct RunResult {
    pub spec: RunSpec,
    pub dir: PathBuf,
    pub summary: Summary,
    pub rows: Rows,
    /// Steps whose loss or gradient was not finite and that the run skipped
    /// (`train.skip_nonfinite`), read from its metrics.csv.
    pub skipped_steps: usize,
}

/// A figure's runs and noise, measured: what the panels and the summary read.
pub struct FigureData {
    pub id: String,
    pub spec: FigureSpec,
    pub scale: Scale,
    pub res: Resolved,
    /// The iterations at which the figure measures each quantity.
    pub needs: Needs,
    pub runs: Vec<RunResult>,
    /// Per series, when the figure measures noise.
    pub noise: Vec<Option<Noise>>,
}

impl FigureData {
    /// The runs of series `s` with optimizer `o` (every lr of a grid).
    pub fn runs_of(&self, s: usize, o: OptimizerKind) -> impl Iterator<Item = &RunResult> {
        self.runs.iter().filter(move |r| r.spec.series == s && r.spec.optimizer == o)
    }
}

/// What an invocation did.
#[derive(Debug, Default)]
pub struct Report {
    pub tally: Tally,
    /// Runs whose measurements were (partly) computed in this invocation.
    pub measured: usize,
    pub noise_computed: usize,
    pub pngs: Vec<PathBuf>,
    /// Ctrl-C/SIGTERM stopped a run; rerunning the same command continues it.
    pub interrupted: bool,
}

impl Report {
    /// Runs trained, resumed, restarted or measured and noise computed so far.
    fn work(&self) -> usize {
        self.tally.trained + self.tally.resumed + self.tally.restarted + self.measured + self.noise_computed
    }
}

/// The machine, for the record: cores, CPU model and the load average now.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores ({model}), {} threads for libtorch, load average {load} at the end", tch::get_num_threads())
}

/// One status line per run, noise measurement and figure, on stderr (also into logs: the
/// progress bars only draw on a terminal).
fn say(_progress: bool, msg: impl AsRef<str>) {
    eprintln!("{}", msg.as_ref());
}

/// Runs the request; see the module documentation.
pub fn reproduce(req: &Request) -> Result<Report> {
    let experiments = figures::experiments_dir(req.experiments.as_deref());
    let names = if req.figures.is_empty() { figures::figure_ids(&experiments)? } else { req.figures.clone() };
    // Read every figure first, so that a typo is reported before hours of training.
    let mut figs = vec![];
    for name in &names {
        let (id, path) = figures::locate(&experiments, name)?;
        let spec = FigureSpec::load(&path)?;
        let res = spec.resolve(&req.scale);
        let plan = spec.plan(&experiments.join("settings"), &res, &req.device).map_err(|e| {
            anyhow!(BadInput(format!("figure file {}: {}", path.display(), e)))
        })?;
        figs.push((id, spec, res, plan));
    }
    std::fs::create_dir_all(&req.runs)
        .map_err(|e| anyhow!(BadInput(format!("runs folder {}: cannot create it ({e})", req.runs.display()))))?;
    std::fs::create_dir_all(&req.plots)
        .map_err(|e| anyhow!(BadInput(format!("plots folder {}: cannot create it ({e})", req.plots.display()))))?;
    let _lock = crate::train::lock_folder(&req.runs)
        .map_err(|_| anyhow!(BadInput(format!("runs folder {}: another linattn reproduce is using it", req.runs.display()))))?;
    let mut report = Report::default();
    for (id, spec, res, plan) in figs {
        let started = Instant::now();
        let work_before = report.work();
        let Some(data) = figure_data(req, &id, spec, res, plan, &mut report)? else {
            report.interrupted = true;
            return Ok(report);
        };
        let png = req.plots.join(format!("{id}.png"));
        crate::plots::figure_grid(&png, &data.spec.title, &scale_caption(&data), &panels::rows(&data))?;
        report.pngs.push(png.clone());
        if data.spec.lr_grid.is_some() {
            crate::artifacts::write_atomic(&req.plots.join("lr_grid.csv"), summary::lr_grid_csv(&data).as_bytes())?;
        }
        let png_name = png.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut fs = summary::figure_summary(&data, &png_name, started.elapsed().as_secs_f64(), &machine());
        if report.work() == work_before {
            // Everything was reused: the time worth reporting is the one of the invocation that
            // did the work, if its record is there (same scale).
            match summary::load_all(&req.plots)?.into_iter().find(|o| o.id == fs.id && o.scale == fs.scale) {
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
            crate::artifacts::write_atomic(&req.plots.join("lr_grid.json"), json.as_bytes())?;
        }
        summary::save(&req.plots, &fs)?;
        summary::write_all(&req.plots)?;
        say(req.options.progress, format!("[{id}] wrote {} ({:.0} s)", png.display(), started.elapsed().as_secs_f64()));
    }
    Ok(report)
}

/// "quick scale: seeds [0, 1], 300 iterations".
fn scale_caption(d: &FigureData) -> String {
    let seeds = if d.res.seeds.len() == 1 { "seed" } else { "seeds" };
    let list = d.res.seeds.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let base = if d.scale.quick { "quick scale" } else if d.scale.iters.is_some() || d.scale.seeds.is_some() { "custom scale" } else { "paper scale" };
    let mode = d.res.mode.name();
    format!("{base}: {seeds} {list}, {} iterations, {mode} mode", d.res.iters)
}

/// Trains, measures and gathers one figure; None when interrupted.
fn figure_data(req: &Request, id: &str, spec: FigureSpec, res: Resolved, plan: Vec<RunSpec>, report: &mut Report) -> Result<Option<FigureData>> {
    let progress = req.options.progress;
    let needs = Needs::of(&res.measure, res.iters);
    let dirs: Vec<PathBuf> = plan.iter().map(|r| runs::run_dir(&req.runs, &r.cfg)).collect();
    let cfgs: Vec<&Config> = plan.iter().map(|r| &r.cfg).collect();
    let mut summaries: Vec<Option<Summary>> = vec![None; plan.len()];
    for (i, dir) in dirs.iter().enumerate() {
        if let runs::State::Done(s) = runs::state(dir) {
            runs::check_config(dir, cfgs[i])?;
            report.tally.reused += 1;
            summaries[i] = Some(s);
        }
    }
    let todo: Vec<usize> = (0..plan.len()).filter(|&i| summaries[i].is_none()).collect();
    let total = plan.len();
    for batch in runs::batches(&cfgs, &todo) {
        let name = |i: usize| dirs[i].strip_prefix(&req.runs).unwrap_or(&dirs[i]).display().to_string();
        let what = match batch.as_slice() {
            [i] => format!("run {}/{total}: {}", i + 1, name(*i)),
            _ => format!(
                "runs {} of {total} as one ensemble: {}",
                batch.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join(", "),
                name(batch[0])
            ),
        };
        say(progress, format!("[{id}] {what}: training"));
        let batch_cfgs: Vec<&Config> = batch.iter().map(|&i| cfgs[i]).collect();
        let batch_dirs: Vec<PathBuf> = batch.iter().map(|&i| dirs[i].clone()).collect();
        match runs::ensure(&batch_cfgs, &batch_dirs, &req.options)? {
            Trained::Done(ss, t) => {
                report.tally.add(t);
                for (&i, s) in batch.iter().zip(ss) {
                    summaries[i] = Some(s);
                }
            }
            Trained::Interrupted => return Ok(None),
        }
        if req.options.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
    }
    let mut results = Vec::with_capacity(plan.len());
    for ((spec_run, dir), summary) in plan.into_iter().zip(dirs).zip(summaries) {
        let summary = summary.expect("every run is trained above");
        // Measure on the run's config, but on the device asked for now.
        let mut cfg = spec_run.cfg.clone();
        cfg.train.device = req.device.clone();
        let (rows, computed) = measure::measure_run(&dir, &cfg, &summary, &needs, progress, &req.options.stop)?;
        if computed {
            report.measured += 1;
        }
        if req.options.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let skipped_steps = train::skipped_steps(&dir, &summary)?;
        results.push(RunResult { spec: spec_run, dir, summary, rows, skipped_steps });
    }
    let mut noise = vec![];
    for s in 0..spec.series.len() {
        noise.push(match res.measure.noise {
            Some(n) => {
                let base = results
                    .iter()
                    .find(|r| r.spec.series == s)
                    .map(|r| r.spec.cfg.clone())
                    .ok_or_else(|| anyhow!("figure {id}: series {s} has no runs"))?;
                let cfg = runs::noise_config(&base, n.seed);
                let dir = runs::noise_dir(&req.runs, &cfg, n.samples, n.full_batch);
                if !dir.join("noise.json").exists() {
                    say(progress, format!("[{id}] noise of {}: {} batches", spec.series[s].id, n.samples));
                }
                let (v, computed) = measure::noise(&cfg, n.samples, n.full_batch, &dir, progress)?;
                report.noise_computed += computed as usize;
                Some(v)
            }
            None => None,
        });
        if req.options.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
    }
    Ok(Some(FigureData { id: id.to_string(), spec, scale: req.scale.clone(), res, needs, runs: results, noise }))
}

/// Figure ids that exist, for `--help` and error messages.
pub fn known_figures(experiments: Option<&Path>) -> Vec<String> {
    figures::figure_ids(&figures::experiments_dir(experiments)).unwrap_or_default()
}

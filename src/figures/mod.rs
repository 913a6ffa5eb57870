//! `linattn reproduce`: the paper's figures from `experiments/figures/*.yaml`.
//!
//! A figure is data ([`spec`]: which runs, what is measured, which panels) plus one plot
//! function per panel kind ([`panels`]). Reproducing figures is a list of units of work:
//! - a **training unit**: the runs that train together (a faithful run alone, the fast runs of
//!   one setting as one ensemble, [`runs::batches`]), then the measurements of those runs
//!   (what every requested figure needs of them, in one pass);
//! - a **noise unit**: the stochastic-gradient noise at initialisation of one series.
//!
//! Units are listed figure by figure in a fixed order, a run belonging to the first figure that
//! needs it, so the list (and each ensemble's members) does not depend on what is done already.
//! Everything is keyed by config in the runs folder: a unit that is done is skipped, an
//! interrupted one resumes from its checkpoints.
//!
//! Without `--shard` every unit is done in order and each figure is drawn as soon as its units
//! are (`plots/<figure>.png`, `plots/data/<figure>.json`, and `plots/summary.md` rebuilt). With
//! `--shard K/N` a worker does only the units whose name hashes to K (stable across machines
//! and invocations), skips a unit another live worker holds the lock of, and draws nothing;
//! `--draw-only` then draws from the shared runs folder, or names the missing units.
pub mod panels;
pub mod runs;
pub mod spec;
pub mod stats;
pub mod summary;

use crate::config::{Config, DeviceName, OptimizerKind};
use crate::measure::{self, noise::NoiseSummary, Needs, Rows};
use crate::run::{io, RunFolder, State, Summary};
use crate::train::Options;
use crate::BadInput;
use anyhow::{anyhow, Result};
use runs::{Tally, Trained};
use spec::{FigureSpec, Resolved, RunSpec, Scale};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Share K of N of the work (`--shard K/N`, 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let parse = || -> Option<Shard> {
            let (k, n) = s.split_once('/')?;
            let (index, count) = (k.trim().parse().ok()?, n.trim().parse().ok()?);
            (1..=count).contains(&index).then_some(Shard { index, count })
        };
        parse().ok_or_else(|| format!("expected K/N with 1 <= K <= N, e.g. 1/4, got {s:?}"))
    }
}

impl Shard {
    /// Whether the unit named `name` is this shard's: FNV-1a of the name, modulo N.
    pub fn owns(&self, name: &str) -> bool {
        (runs::fnv1a(name.as_bytes()) % self.count as u64) as usize == self.index - 1
    }
}

/// What the command line asks for.
#[derive(Clone)]
pub struct Request {
    /// Figure ids or figure YAML paths; empty means every figure.
    pub figures: Vec<String>,
    pub scale: Scale,
    pub device: DeviceName,
    pub runs: PathBuf,
    pub plots: PathBuf,
    pub experiments: Option<PathBuf>,
    pub options: Options,
    pub shard: Option<Shard>,
    /// Train nothing, measure nothing: draw, or name what is missing.
    pub draw_only: bool,
}

/// `--draw-only` found units that are not done: their names.
#[derive(Debug)]
pub struct Incomplete(pub Vec<String>);

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} units are not done, so nothing was drawn: {}", self.0.len(), self.0.join("; "))
    }
}

impl std::error::Error for Incomplete {}

/// A finished run with its measurements.
pub struct RunResult {
    pub spec: RunSpec,
    pub dir: PathBuf,
    pub summary: Summary,
    pub rows: Rows,
    /// Steps whose loss or gradient was not finite and that the run skipped
    /// (`train.skip_nonfinite`).
    pub skipped_steps: usize,
}

/// The noise at initialisation of one series.
#[derive(Debug, Clone)]
pub struct Noise {
    pub values: Vec<f64>,
    pub summary: NoiseSummary,
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
    /// Units left to another live worker.
    pub busy: usize,
    pub pngs: Vec<PathBuf>,
    /// Ctrl-C/SIGTERM stopped the work; rerunning the same command continues it.
    pub interrupted: bool,
}

impl Report {
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

/// One status line on stderr (also into logs: the progress bars only draw on a terminal).
fn say(msg: impl AsRef<str>) {
    eprintln!("{}", msg.as_ref());
}

/// A figure read and resolved at the requested scale.
struct Figure {
    id: String,
    spec: FigureSpec,
    res: Resolved,
    plan: Vec<RunSpec>,
    dirs: Vec<PathBuf>,
    needs: Needs,
}

/// Runs that train together, and then are measured.
struct TrainingUnit {
    name: String,
    cfgs: Vec<Config>,
    dirs: Vec<PathBuf>,
}

struct NoiseUnit {
    name: String,
    cfg: Config,
    samples: i64,
    full_batch: i64,
    dir: PathBuf,
}

/// Every unit, figure by figure: (training units, noise units) per figure.
struct Plan {
    figures: Vec<Figure>,
    training: Vec<Vec<TrainingUnit>>,
    noise: Vec<Vec<NoiseUnit>>,
    /// Per run folder, what all requested figures measure on it.
    needs: BTreeMap<PathBuf, Needs>,
}

fn plan(req: &Request) -> Result<Plan> {
    let experiments = spec::experiments_dir(req.experiments.as_deref());
    let names = if req.figures.is_empty() { spec::figure_ids(&experiments)? } else { req.figures.clone() };
    let mut figures = vec![];
    // Every figure is read first, so that a typo is reported before hours of training.
    for name in &names {
        let (id, path) = spec::locate(&experiments, name)?;
        let spec = FigureSpec::load(&path)?;
        let res = spec.resolve(&req.scale);
        let plan = spec
            .plan(&experiments.join("settings"), &res, req.device)
            .map_err(|e| anyhow!(BadInput(format!("figure file {}: {e}", path.display()))))?;
        let dirs = plan.iter().map(|r| runs::run_dir(&req.runs, &r.cfg)).collect();
        let needs = Needs::of(&res.measure.strides(), res.iters);
        figures.push(Figure { id, spec, res, plan, dirs, needs });
    }
    let relative = |p: &Path| p.strip_prefix(&req.runs).unwrap_or(p).display().to_string();
    let (mut training, mut noise) = (vec![], vec![]);
    let mut needs: BTreeMap<PathBuf, Needs> = BTreeMap::new();
    let mut noise_dirs = vec![];
    for fig in &figures {
        let unclaimed: Vec<usize> = (0..fig.plan.len()).filter(|&i| !needs.contains_key(&fig.dirs[i])).collect();
        for (i, dir) in fig.dirs.iter().enumerate() {
            let n = needs.entry(dir.clone()).or_default();
            *n = n.union(&fig.needs);
            let _ = i;
        }
        let cfgs: Vec<&Config> = fig.plan.iter().map(|r| &r.cfg).collect();
        let units = runs::batches(&cfgs, &unclaimed)
            .into_iter()
            .map(|batch| {
                let first = relative(&fig.dirs[batch[0]]);
                // No spaces: logs name units as one word.
                let name = if batch.len() == 1 { first } else { format!("{first}+{}", batch.len() - 1) };
                TrainingUnit { name, cfgs: batch.iter().map(|&i| cfgs[i].clone()).collect(), dirs: batch.iter().map(|&i| fig.dirs[i].clone()).collect() }
            })
            .collect();
        training.push(units);
        let mut units = vec![];
        if let Some(n) = fig.res.measure.noise {
            for s in 0..fig.spec.series.len() {
                let base = fig.plan.iter().find(|r| r.series == s).ok_or_else(|| anyhow!("figure {}: series {s} has no runs", fig.id))?;
                let cfg = runs::noise_config(&base.cfg, n.seed);
                let dir = runs::noise_dir(&req.runs, &cfg, n.samples, n.full_batch);
                if !noise_dirs.contains(&dir) {
                    noise_dirs.push(dir.clone());
                    units.push(NoiseUnit { name: relative(&dir), cfg, samples: n.samples, full_batch: n.full_batch, dir });
                }
            }
        }
        noise.push(units);
    }
    Ok(Plan { figures, training, noise, needs })
}

/// Runs the request; see the module documentation.
pub fn reproduce(req: &Request) -> Result<Report> {
    let plan = plan(req)?;
    std::fs::create_dir_all(&req.runs)
        .map_err(|e| anyhow!(BadInput(format!("runs folder {}: cannot create it ({e})", req.runs.display()))))?;
    let mut report = Report::default();
    if req.draw_only {
        let missing = missing_units(&plan, req)?;
        if !missing.is_empty() {
            return Err(anyhow::Error::new(Incomplete(missing)));
        }
    }
    for (f, fig) in plan.figures.iter().enumerate() {
        let started = Instant::now();
        let work_before = report.work();
        if !req.draw_only {
            let prefix = match req.shard {
                Some(s) => format!("shard {}/{}:", s.index, s.count),
                None => format!("[{}]", fig.id),
            };
            for unit in &plan.training[f] {
                if req.shard.is_some_and(|s| !s.owns(&unit.name)) {
                    continue;
                }
                if !train_unit(unit, &plan.needs, req, &prefix, &mut report)? {
                    report.interrupted = true;
                    return Ok(report);
                }
            }
            for unit in &plan.noise[f] {
                if req.shard.is_some_and(|s| !s.owns(&unit.name)) {
                    continue;
                }
                noise_unit(unit, req, &prefix, &mut report)?;
                if req.options.stop.load(Ordering::Relaxed) {
                    report.interrupted = true;
                    return Ok(report);
                }
            }
        }
        if req.shard.is_some() {
            continue;
        }
        let data = figure_data(fig, &plan, req)?;
        draw(&data, req, started, report.work() == work_before, &mut report)?;
    }
    Ok(report)
}

/// Trains a unit's runs (unless done or another worker's) and measures them. False when
/// interrupted.
fn train_unit(unit: &TrainingUnit, needs: &BTreeMap<PathBuf, Needs>, req: &Request, prefix: &str, report: &mut Report) -> Result<bool> {
    let folders: Vec<RunFolder> = unit.dirs.iter().map(RunFolder::new).collect();
    let done = folders.iter().all(|f| matches!(f.state(), State::Done(_)));
    if !done {
        say(format!("{prefix} training {}", unit.name));
    }
    let cfgs: Vec<&Config> = unit.cfgs.iter().collect();
    match runs::ensure(&cfgs, &unit.dirs, &req.options)? {
        Trained::Done(_, t) => {
            report.tally.add(t);
            if !done {
                say(format!("{prefix} trained {}", unit.name));
            } else if req.shard.is_some() {
                say(format!("{prefix} skipped {} (done)", unit.name));
            }
        }
        Trained::Interrupted => return Ok(false),
        Trained::Busy => {
            report.busy += 1;
            say(format!("{prefix} skipped {} (locked by another worker)", unit.name));
            return Ok(true);
        }
    }
    for (dir, cfg) in unit.dirs.iter().zip(&unit.cfgs) {
        if req.options.stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let folder = RunFolder::new(dir);
        let summary = folder.summary()?;
        let need = &needs[dir];
        if need.available(cfg, &summary).missing(&measure::read(&folder)?).is_empty() {
            continue;
        }
        let Some(_lock) = folder.try_lock()? else {
            report.busy += 1;
            say(format!("{prefix} skipped measuring {} (locked by another worker)", relative(req, dir)));
            continue;
        };
        let device = req.device.tch().map_err(|e| anyhow!(BadInput(format!("--device: {e}"))))?;
        let progress = req.options.progress == crate::train::Progress::Bar;
        let (_, computed) = measure::measure_run(&folder, cfg, &summary, need, device, progress, &req.options.stop)?;
        if computed && !req.options.stop.load(Ordering::Relaxed) {
            report.measured += 1;
            say(format!("{prefix} measured {}", relative(req, dir)));
        }
    }
    Ok(!req.options.stop.load(Ordering::Relaxed))
}

fn relative(req: &Request, p: &Path) -> String {
    p.strip_prefix(&req.runs).unwrap_or(p).display().to_string()
}

fn noise_unit(unit: &NoiseUnit, req: &Request, prefix: &str, report: &mut Report) -> Result<()> {
    if measure::noise::read(&unit.dir)?.is_some() {
        if req.shard.is_some() {
            say(format!("{prefix} skipped {} (done)", unit.name));
        }
        return Ok(());
    }
    let folder = RunFolder::new(&unit.dir);
    let Some(_lock) = folder.try_lock()? else {
        report.busy += 1;
        say(format!("{prefix} skipped {} (locked by another worker)", unit.name));
        return Ok(());
    };
    say(format!("{prefix} noise {}: {} batches", unit.name, unit.samples));
    let mut cfg = unit.cfg.clone();
    cfg.train.device = req.device;
    measure::noise::run_noise(&cfg, unit.samples, unit.full_batch, &unit.dir, req.options.progress == crate::train::Progress::Bar)?;
    report.noise_computed += 1;
    say(format!("{prefix} measured {}", unit.name));
    Ok(())
}

/// The units `--draw-only` would need and that are not done.
fn missing_units(plan: &Plan, req: &Request) -> Result<Vec<String>> {
    let mut missing = vec![];
    for (f, units) in plan.training.iter().enumerate() {
        for unit in units {
            for (dir, cfg) in unit.dirs.iter().zip(&unit.cfgs) {
                let folder = RunFolder::new(dir);
                let name = relative(req, dir);
                match folder.state() {
                    State::Done(s) => {
                        if !plan.needs[dir].available(cfg, &s).missing(&measure::read(&folder)?).is_empty() {
                            missing.push(format!("{name} (measurements)"));
                        }
                    }
                    _ => missing.push(format!("{name} (training)")),
                }
            }
        }
        for unit in &plan.noise[f] {
            if measure::noise::read(&unit.dir)?.is_none() {
                missing.push(format!("{} (noise)", unit.name));
            }
        }
    }
    Ok(missing)
}

/// Gathers one figure's runs, measurements and noise from the runs folder.
fn figure_data(fig: &Figure, plan: &Plan, req: &Request) -> Result<FigureData> {
    let mut results = Vec::with_capacity(fig.plan.len());
    for (spec_run, dir) in fig.plan.iter().zip(&fig.dirs) {
        let folder = RunFolder::new(dir);
        let State::Done(summary) = folder.state() else {
            return Err(anyhow::Error::new(Incomplete(vec![format!("{} (training)", relative(req, dir))])));
        };
        runs::check_config(dir, &spec_run.cfg)?;
        let rows = measure::read(&folder)?;
        let metrics = folder.metrics()?;
        let (skipped_steps, _) = io::nonfinite_steps(&metrics, summary.status == crate::run::Status::Diverged);
        results.push(RunResult { spec: spec_run.clone(), dir: dir.clone(), summary, rows, skipped_steps });
    }
    let mut noise = vec![];
    for s in 0..fig.spec.series.len() {
        noise.push(match fig.res.measure.noise {
            Some(n) => {
                let base = &fig.plan.iter().find(|r| r.series == s).expect("every series has runs").cfg;
                let dir = runs::noise_dir(&req.runs, &runs::noise_config(base, n.seed), n.samples, n.full_batch);
                let (values, summary) = measure::noise::read(&dir)?
                    .ok_or_else(|| anyhow::Error::new(Incomplete(vec![format!("{} (noise)", relative(req, &dir))])))?;
                Some(Noise { values, summary })
            }
            None => None,
        });
    }
    let _ = plan;
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
fn draw(data: &FigureData, req: &Request, started: Instant, all_reused: bool, report: &mut Report) -> Result<()> {
    std::fs::create_dir_all(&req.plots)
        .map_err(|e| anyhow!(BadInput(format!("plots folder {}: cannot create it ({e})", req.plots.display()))))?;
    let id = &data.id;
    let png = req.plots.join(format!("{id}.png"));
    crate::plots::figure_grid(&png, &data.spec.title, &scale_caption(data), &panels::rows(data))?;
    report.pngs.push(png.clone());
    if data.spec.lr_grid.is_some() {
        io::write_atomic(&req.plots.join("lr_grid.csv"), summary::lr_grid_csv(data).as_bytes())?;
    }
    let png_name = png.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut fs = summary::figure_summary(data, &png_name, started.elapsed().as_secs_f64(), &machine());
    if all_reused {
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
        io::write_atomic(&req.plots.join("lr_grid.json"), json.as_bytes())?;
    }
    summary::save(&req.plots, &fs)?;
    summary::write_all(&req.plots)?;
    say(format!("[{id}] wrote {} ({:.0} s)", png.display(), started.elapsed().as_secs_f64()));
    Ok(())
}

/// "quick scale: seeds [0, 1], 300 iterations".
fn scale_caption(d: &FigureData) -> String {
    let seeds = if d.res.seeds.len() == 1 { "seed" } else { "seeds" };
    let list = d.res.seeds.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let base = if d.scale.quick { "quick scale" } else if d.scale.iters.is_some() || d.scale.seeds.is_some() { "custom scale" } else { "paper scale" };
    let mode = d.res.mode.name();
    format!("{base}: {seeds} {list}, {} iterations, {mode} mode", d.res.iters)
}

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
pub mod estimate;
pub mod jobs;
pub mod panels;
pub mod runs;
pub mod spec;
pub mod stats;
pub mod summary;

use crate::config::{Config, DeviceName, OptimizerKind};
use crate::measure::{
    self,
    noise::{NoiseOutcome, NoiseSummary},
    Needs, Rows,
};
use crate::run::{io, RunFolder, State, Summary};
use crate::train::Options;
use crate::BadInput;
use anyhow::{anyhow, Result};
use runs::{Tally, Trained};
use spec::{FigureSpec, Resolved, RunSpec, Scale};
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
            (1..=count)
                .contains(&index)
                .then_some(Shard { index, count })
        };
        parse().ok_or_else(|| format!("expected K/N with 1 <= K <= N, e.g. 1/4, got {s:?}"))
    }
}

impl Shard {
    /// Whether the unit named `name` is this shard's: FNV-1a of the name, mixed (FNV-1a's low
    /// bits are the parity of the bytes, too regular for a modulus), modulo N.
    pub fn owns(&self, name: &str) -> bool {
        let mut h = runs::fnv1a(name.as_bytes());
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        (h % self.count as u64) as usize == self.index - 1
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
    /// Worker K of N of `--jobs N`: takes every unit no other worker holds, waits for none,
    /// draws nothing (the parent draws).
    pub worker: Option<Shard>,
    /// What the workers of `--jobs` did before this (the parent's) pass, for the summary.
    pub prior: Option<Prior>,
    /// Train nothing, measure nothing: draw, or name what is missing.
    pub draw_only: bool,
}

/// The work `--jobs` workers did before the parent's pass that draws.
#[derive(Debug, Clone)]
pub struct Prior {
    /// When the workers started: a figure's wall time is counted from here.
    pub started: Instant,
    /// Ids of the figures in which some worker trained or measured something.
    pub worked: Vec<String>,
}

impl Request {
    /// Whether this process does every unit itself, waiting for any another process holds,
    /// and draws (neither a shard nor a worker).
    fn alone(&self) -> bool {
        self.shard.is_none() && self.worker.is_none()
    }
}

/// `--draw-only` found units that are not done: their names.
#[derive(Debug)]
pub struct Incomplete(pub Vec<String>);

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} units are not done, so nothing was drawn: {}",
            self.0.len(),
            self.0.join("; ")
        )
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
    /// The first iteration whose loss or gradient was not finite, if any.
    pub first_nonfinite: Option<i64>,
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
        self.runs
            .iter()
            .filter(move |r| r.spec.series == s && r.spec.optimizer == o)
    }
}

/// What an invocation did (a `--jobs` worker hands it to its parent as JSON).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Ids of the figures in which this invocation trained or measured something.
    pub worked: Vec<String>,
}

impl Report {
    fn work(&self) -> usize {
        self.tally.trained
            + self.tally.resumed
            + self.tally.restarted
            + self.measured
            + self.noise_computed
    }
}

/// The machine, for the record: cores, CPU model and the load average now.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into());
    format!(
        "{cores} cores ({model}), {} threads for libtorch, load average {load} at the end",
        tch::get_num_threads()
    )
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

/// Runs that train together.
struct TrainingUnit {
    name: String,
    figure: usize,
    cfgs: Vec<Config>,
    dirs: Vec<PathBuf>,
}

/// What all requested figures measure on one run; `training` is the unit that trains it.
struct MeasureUnit {
    name: String,
    figure: usize,
    dir: PathBuf,
    cfg: Config,
    needs: Needs,
    training: usize,
}

struct NoiseUnit {
    name: String,
    figure: usize,
    cfg: Config,
    samples: i64,
    full_batch: i64,
    dir: PathBuf,
}

/// Every unit, listed figure by figure.
struct Plan {
    figures: Vec<Figure>,
    training: Vec<TrainingUnit>,
    measuring: Vec<MeasureUnit>,
    noise: Vec<NoiseUnit>,
}

fn plan(req: &Request) -> Result<Plan> {
    let experiments = spec::experiments_dir(req.experiments.as_deref())?;
    let names = if req.figures.is_empty() {
        spec::figure_ids(&experiments)?
    } else {
        req.figures.clone()
    };
    let mut figures = vec![];
    // Every figure is read first, so that a typo is reported before hours of training.
    for name in &names {
        let (id, path) = spec::locate(&experiments, name)?;
        let spec = FigureSpec::load(&path)?;
        let res = spec.resolve(&req.scale);
        let plan = spec
            .plan(&experiments.join("settings"), &res, req.device)
            .map_err(|e| anyhow!(BadInput(format!("figure file {}: {e}", path.display()))))?;
        let dirs = plan
            .iter()
            .map(|r| runs::run_dir(&req.runs, &r.cfg))
            .collect();
        let needs = Needs::of(&res.measure, res.iters);
        figures.push(Figure {
            id,
            spec,
            res,
            plan,
            dirs,
            needs,
        });
    }
    let relative = |p: &Path| p.strip_prefix(&req.runs).unwrap_or(p).display().to_string();
    let (mut training, mut measuring, mut noise): (
        Vec<TrainingUnit>,
        Vec<MeasureUnit>,
        Vec<NoiseUnit>,
    ) = (vec![], vec![], vec![]);
    for (f, fig) in figures.iter().enumerate() {
        let cfgs: Vec<&Config> = fig.plan.iter().map(|r| &r.cfg).collect();
        for (i, dir) in fig.dirs.iter().enumerate() {
            match measuring.iter_mut().find(|m| m.dir == *dir) {
                Some(m) => m.needs = m.needs.union(&fig.needs),
                None => measuring.push(MeasureUnit {
                    name: relative(dir),
                    figure: f,
                    dir: dir.clone(),
                    cfg: cfgs[i].clone(),
                    needs: fig.needs.clone(),
                    training: usize::MAX,
                }),
            }
        }
        // A run belongs to the training unit of the first figure that needs it.
        let unclaimed: Vec<usize> = (0..fig.plan.len())
            .filter(|&i| !training.iter().any(|u| u.dirs.contains(&fig.dirs[i])))
            .collect();
        for batch in runs::batches(&cfgs, &unclaimed) {
            let first = relative(&fig.dirs[batch[0]]);
            // No spaces: logs name units as one word.
            let name = if batch.len() == 1 {
                first
            } else {
                format!("{first}+{}", batch.len() - 1)
            };
            training.push(TrainingUnit {
                name,
                figure: f,
                cfgs: batch.iter().map(|&i| cfgs[i].clone()).collect(),
                dirs: batch.iter().map(|&i| fig.dirs[i].clone()).collect(),
            });
        }
        if let Some(n) = fig.res.measure.noise {
            for s in 0..fig.spec.series.len() {
                let base = fig
                    .plan
                    .iter()
                    .find(|r| r.series == s)
                    .ok_or_else(|| anyhow!("figure {}: series {s} has no runs", fig.id))?;
                let cfg = runs::noise_config(&base.cfg, n.seed);
                let dir = runs::noise_dir(&req.runs, &cfg, n.samples, n.full_batch);
                if !noise.iter().any(|u| u.dir == dir) {
                    noise.push(NoiseUnit {
                        name: relative(&dir),
                        figure: f,
                        cfg,
                        samples: n.samples,
                        full_batch: n.full_batch,
                        dir,
                    });
                }
            }
        }
    }
    for m in &mut measuring {
        m.training = training
            .iter()
            .position(|u| u.dirs.contains(&m.dir))
            .expect("every run has a training unit");
    }
    Ok(Plan {
        figures,
        training,
        measuring,
        noise,
    })
}

/// Reads and resolves every requested figure and creates the runs folder: what a bad request
/// fails on, before any work.
pub fn check(req: &Request) -> Result<()> {
    planned(req).map(|_| ())
}

fn planned(req: &Request) -> Result<Plan> {
    let plan = plan(req)?;
    std::fs::create_dir_all(&req.runs).map_err(|e| {
        anyhow!(BadInput(format!(
            "runs folder {}: cannot create it ({e})",
            req.runs.display()
        )))
    })?;
    Ok(plan)
}

/// `reproduce --estimate`: the predicted wall time of what the request has left to do, with
/// `workers` workers, from work timed here; trains and measures nothing.
pub fn estimate(req: &Request, workers: usize) -> Result<estimate::Estimate> {
    estimate::estimate(&planned(req)?, workers)
}

/// Runs the request; see the module documentation.
pub fn reproduce(req: &Request) -> Result<Report> {
    let plan = planned(req)?;
    let mut report = Report::default();
    if let Some(shard) = req.shard {
        let names = plan
            .training
            .iter()
            .map(|u| &u.name)
            .chain(plan.measuring.iter().map(|u| &u.name))
            .chain(plan.noise.iter().map(|u| &u.name));
        let (mine, all) = names.fold((0, 0), |(m, a), n| (m + shard.owns(n) as usize, a + 1));
        say(format!(
            "shard {}/{}: {mine} of {all} units (training, measuring, noise) are this shard's",
            shard.index, shard.count
        ));
    }
    if req.draw_only {
        let missing = missing_units(&plan)?;
        if !missing.is_empty() {
            return Err(anyhow::Error::new(Incomplete(missing)));
        }
    }
    for (f, fig) in plan.figures.iter().enumerate() {
        let started = Instant::now();
        let work_before = report.work();
        let step = match req.draw_only {
            true => Step::Done,
            false => work_figure(f, fig, &plan, req, &mut report)?,
        };
        if report.work() > work_before {
            report.worked.push(fig.id.clone());
        }
        if step == Step::Interrupted {
            report.interrupted = true;
            return Ok(report);
        }
        if !req.alone() {
            continue;
        }
        let data = figure_data(fig, req)?;
        let (started, reused) = match &req.prior {
            Some(p) => (
                p.started,
                !report.worked.contains(&fig.id) && !p.worked.contains(&fig.id),
            ),
            None => (started, report.work() == work_before),
        };
        draw(&data, req, started, reused, &mut report)?;
    }
    Ok(report)
}

/// Trains and measures what figure `f` needs and this worker owns. [`Step::Interrupted`] when
/// Ctrl-C/SIGTERM stopped it; rerunning the same command continues.
fn work_figure(
    f: usize,
    fig: &Figure,
    plan: &Plan,
    req: &Request,
    report: &mut Report,
) -> Result<Step> {
    let prefix = match (req.shard, req.worker) {
        (Some(s), _) => format!("shard {}/{}:", s.index, s.count),
        (None, Some(w)) => format!("worker {}/{}:", w.index, w.count),
        (None, None) => format!("[{}]", fig.id),
    };
    let ours = |name: &str| req.shard.is_none_or(|s| s.owns(name));
    // A shard or a worker leaves a training unit another worker holds to it; a shard's
    // measurements of it wait for it below.
    let wait = req.alone();
    for unit in plan
        .training
        .iter()
        .filter(|u| u.figure == f && ours(&u.name))
    {
        match train_unit(unit, req, &prefix, wait, report)? {
            Step::Interrupted => return Ok(Step::Interrupted),
            Step::Busy => {
                report.busy += 1;
                // A `--jobs` worker skips what the others hold as a matter of course.
                if req.worker.is_none() {
                    say(format!(
                        "{prefix} skipped {} (locked by another worker)",
                        unit.name
                    ));
                }
            }
            Step::Done => {}
        }
    }
    for unit in plan.noise.iter().filter(|u| u.figure == f && ours(&u.name)) {
        noise_unit(unit, req, &prefix, report)?;
        if req.options.stop.load(Ordering::Relaxed) {
            return Ok(Step::Interrupted);
        }
    }
    // A shard first measures what it can start now (training a free unit itself) and leaves
    // the runs another worker is training or measuring for last, so that it never idles while
    // a unit nobody holds is waiting.
    let mut deferred = Vec::new();
    for unit in plan
        .measuring
        .iter()
        .filter(|u| u.figure == f && ours(&u.name))
    {
        match measure_unit(unit, plan, req, &prefix, wait, report)? {
            Step::Interrupted => return Ok(Step::Interrupted),
            // A `--jobs` worker leaves it to the worker that holds it (which measures it next)
            // and goes on; the parent's pass finishes anything left.
            Step::Busy if req.worker.is_some() => {}
            Step::Busy => {
                say(format!(
                    "{prefix} {} is another worker's for now; measuring it later",
                    unit.name
                ));
                deferred.push(unit);
            }
            Step::Done => {}
        }
    }
    // Then each pass takes whichever of them has become free, so that one long unit of
    // another worker does not hold up the rest.
    let what = format!("{} runs", deferred.len());
    let mut waiting = Waiting::new(&prefix, &what);
    while !deferred.is_empty() {
        let mut busy = vec![];
        for unit in deferred {
            match measure_unit(unit, plan, req, &prefix, false, report)? {
                Step::Interrupted => return Ok(Step::Interrupted),
                Step::Busy => busy.push(unit),
                Step::Done => {}
            }
        }
        deferred = busy;
        if !deferred.is_empty() && !waiting.wait(req) {
            return Ok(Step::Interrupted);
        }
    }
    Ok(Step::Done)
}

/// How a unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Done,
    /// Another live worker holds it.
    Busy,
    Interrupted,
}

/// How often a worker looks again at a unit another worker holds.
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Trains a unit's runs unless they are done. With `wait`, a unit another live worker holds
/// is waited for (and taken over, resumed from its checkpoints, if that worker dies).
fn train_unit(
    unit: &TrainingUnit,
    req: &Request,
    prefix: &str,
    wait: bool,
    report: &mut Report,
) -> Result<Step> {
    let done = || {
        unit.dirs
            .iter()
            .all(|d| matches!(RunFolder::new(d).state(), State::Done(_)))
    };
    let was_done = done();
    let cfgs: Vec<&Config> = unit.cfgs.iter().collect();
    let mut waiting = Waiting::new(prefix, &unit.name);
    let mut said = false;
    loop {
        // Said only when no other worker holds the unit (looked at just before `ensure` takes
        // the locks itself), so that a log never names a unit as trained by two workers.
        if !said && !done() && free(&unit.dirs)? {
            say(format!("{prefix} training {}", unit.name));
            said = true;
        }
        match runs::ensure(&cfgs, &unit.dirs, &req.options)? {
            Trained::Done(_, t) => {
                report.tally.add(t);
                if t.trained + t.resumed + t.restarted > 0 {
                    // The other worker let go between the look above and `ensure`'s own locks:
                    // this worker trained it, so it names it now, still before "trained".
                    if !said {
                        say(format!("{prefix} training {}", unit.name));
                    }
                    say(format!("{prefix} trained {}", unit.name));
                } else if req.shard.is_some() && was_done {
                    say(format!("{prefix} skipped {} (done)", unit.name));
                }
                return Ok(Step::Done);
            }
            Trained::Interrupted => return Ok(Step::Interrupted),
            Trained::Busy if !wait => return Ok(Step::Busy),
            Trained::Busy => {
                if !waiting.wait(req) {
                    return Ok(Step::Interrupted);
                }
            }
        }
    }
}

/// Whether no other live worker holds any of these run folders.
fn free(dirs: &[PathBuf]) -> Result<bool> {
    // A folder that does not exist yet is nobody's (and looking must not create it).
    let locks = dirs
        .iter()
        .filter(|d| d.exists())
        .map(|d| RunFolder::new(d).try_lock())
        .collect::<Result<Vec<_>>>()?;
    Ok(locks.iter().all(Option::is_some))
}

/// Waiting for a unit that another live worker holds: one line when it starts, then a look
/// every [`POLL`].
struct Waiting<'a> {
    prefix: &'a str,
    name: &'a str,
    said: bool,
}

impl<'a> Waiting<'a> {
    fn new(prefix: &'a str, name: &'a str) -> Self {
        Waiting {
            prefix,
            name,
            said: false,
        }
    }

    /// Sleeps one poll; false when Ctrl-C/SIGTERM asked to stop.
    fn wait(&mut self, req: &Request) -> bool {
        if !self.said {
            say(format!(
                "{} waiting for {} (locked by another worker)",
                self.prefix, self.name
            ));
            self.said = true;
        }
        if req.options.stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(POLL);
        true
    }
}

/// Measures a run once its training unit is done: trains that unit if nobody holds it, and
/// waits for the worker that does with `wait` (otherwise returns [`Step::Busy`]).
fn measure_unit(
    unit: &MeasureUnit,
    plan: &Plan,
    req: &Request,
    prefix: &str,
    wait: bool,
    report: &mut Report,
) -> Result<Step> {
    let folder = RunFolder::new(&unit.dir);
    let missing = |summary: &Summary| -> Result<bool> {
        Ok(!unit
            .needs
            .available(&unit.cfg, summary)
            .missing(&measure::read(&folder)?)
            .is_empty())
    };
    if let State::Done(s) = folder.state() {
        if !missing(&s)? {
            return Ok(Step::Done);
        }
    }
    let training = &plan.training[unit.training];
    if !training
        .dirs
        .iter()
        .all(|d| matches!(RunFolder::new(d).state(), State::Done(_)))
    {
        let step = train_unit(training, req, prefix, wait, report)?;
        if step != Step::Done {
            return Ok(step);
        }
    }
    let summary = folder.summary()?;
    let mut waiting = Waiting::new(prefix, &unit.name);
    let _lock = loop {
        if let Some(lock) = folder.try_lock()? {
            break lock;
        }
        if !wait {
            return Ok(Step::Busy);
        }
        if !waiting.wait(req) {
            return Ok(Step::Interrupted);
        }
    };
    if !missing(&summary)? {
        return Ok(Step::Done); // another worker measured it meanwhile
    }
    let device = req
        .device
        .tch()
        .map_err(|e| anyhow!(BadInput(format!("--device: {e}"))))?;
    let progress = req.options.progress == crate::train::Progress::Bar;
    let (_, computed) = measure::measure_run(
        &folder,
        &unit.cfg,
        &summary,
        &unit.needs,
        device,
        progress,
        &req.options.stop,
    )?;
    if req.options.stop.load(Ordering::Relaxed) {
        return Ok(Step::Interrupted);
    }
    if computed {
        report.measured += 1;
        say(format!("{prefix} measured {}", unit.name));
    }
    Ok(Step::Done)
}

fn relative(req: &Request, p: &Path) -> String {
    p.strip_prefix(&req.runs).unwrap_or(p).display().to_string()
}

/// Measures a noise unit unless it is done. A unit another live process holds is waited for
/// when this process works alone (as its training units are), and left to that process by a
/// shard or a `--jobs` worker.
fn noise_unit(unit: &NoiseUnit, req: &Request, prefix: &str, report: &mut Report) -> Result<()> {
    if measure::noise::read(&unit.dir)?.is_some() {
        if req.shard.is_some() {
            say(format!("{prefix} skipped {} (done)", unit.name));
        }
        return Ok(());
    }
    let folder = RunFolder::new(&unit.dir);
    let mut waiting = Waiting::new(prefix, &unit.name);
    let _lock = loop {
        if let Some(lock) = folder.try_lock()? {
            break lock;
        }
        if !req.alone() {
            report.busy += 1;
            if req.worker.is_none() {
                say(format!(
                    "{prefix} skipped {} (locked by another worker)",
                    unit.name
                ));
            }
            return Ok(());
        }
        if !waiting.wait(req) {
            return Ok(()); // the caller sees the stop flag
        }
    };
    // The process that held it may have finished it.
    if measure::noise::read(&unit.dir)?.is_some() {
        return Ok(());
    }
    say(format!(
        "{prefix} noise {}: {} batches",
        unit.name, unit.samples
    ));
    let mut cfg = unit.cfg.clone();
    cfg.train.device = req.device;
    let progress = req.options.progress == crate::train::Progress::Bar;
    match measure::noise::run_noise(
        &cfg,
        unit.samples,
        unit.full_batch,
        &unit.dir,
        progress,
        &req.options.stop,
    )? {
        NoiseOutcome::Done(_) => {
            report.noise_computed += 1;
            say(format!("{prefix} measured {}", unit.name));
        }
        NoiseOutcome::Interrupted { measured } => {
            // The caller sees the stop flag and reports the interruption.
            say(format!(
                "{prefix} interrupted {} after {measured} of {} batches",
                unit.name, unit.samples
            ));
        }
    }
    Ok(())
}

/// The units `--draw-only` would need and that are not done.
fn missing_units(plan: &Plan) -> Result<Vec<String>> {
    let mut missing = vec![];
    for unit in &plan.measuring {
        let folder = RunFolder::new(&unit.dir);
        match folder.state() {
            State::Done(s) => {
                if !unit
                    .needs
                    .available(&unit.cfg, &s)
                    .missing(&measure::read(&folder)?)
                    .is_empty()
                {
                    missing.push(format!("{} (measurements)", unit.name));
                }
            }
            _ => missing.push(format!("{} (training)", unit.name)),
        }
    }
    for unit in &plan.noise {
        if measure::noise::read(&unit.dir)?.is_none() {
            missing.push(format!("{} (noise)", unit.name));
        }
    }
    Ok(missing)
}

/// Gathers one figure's runs, measurements and noise from the runs folder.
fn figure_data(fig: &Figure, req: &Request) -> Result<FigureData> {
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
        let rows = measure::read(&folder)?;
        let metrics = folder.metrics()?;
        let (skipped_steps, _) =
            io::nonfinite_steps(&metrics, summary.status == crate::run::Status::Diverged);
        let first_nonfinite = metrics.iter().find(|r| !r.is_finite()).map(|r| r.iter);
        results.push(RunResult {
            spec: spec_run.clone(),
            dir: dir.clone(),
            summary,
            rows,
            skipped_steps,
            first_nonfinite,
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
fn draw(
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
    if data.spec.lr_grid.is_some() {
        io::write_atomic(
            &req.plots.join("lr_grid.csv"),
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
        io::write_atomic(&req.plots.join("lr_grid.json"), json.as_bytes())?;
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
fn title(d: &FigureData) -> String {
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
fn scale_caption(d: &FigureData) -> String {
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

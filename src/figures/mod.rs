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
//!
//! [`plan`] lists the units, [`work`] does them (taking, waiting for or leaving each unit by
//! its folders' locks), [`draw`] reads a figure's results back and draws it; [`jobs`] runs
//! several workers over one runs folder.
pub mod estimate;
pub mod jobs;
pub mod panels;
pub mod runs;
pub mod spec;
pub mod numbers;
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

mod draw;
mod plan;
mod work;

use draw::*;
pub use plan::check;
use plan::*;
use work::*;

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
    /// The block spectra of `spectrum.csv`, read only for a figure that draws them.
    pub spectra: measure::spectrum::Spectra,
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

/// `reproduce --estimate`: the predicted wall time of what the request has left to do, with
/// `workers` workers, from work timed here; trains and measures nothing.
pub fn estimate(req: &Request, workers: usize) -> Result<estimate::Estimate> {
    // An estimate only reads the runs folder: it makes no folder.
    estimate::estimate(&plan::plan(req)?, workers)
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
    // A `--jobs` worker leaves what another worker holds and goes on; when its pass is over it
    // comes back for those units, so that a long unit's measurements (App. B's 12 runs, each
    // with 23 Hessians) are shared by the workers that are free instead of waiting for the one
    // that trained them.
    let waiting = work::Waiting::new("", "the units other workers hold");
    loop {
        let busy_before = report.busy;
        if pass(&plan, req, &mut report)? == Step::Interrupted {
            report.interrupted = true;
            return Ok(report);
        }
        if req.worker.is_none() || report.busy == busy_before {
            return Ok(report);
        }
        if !waiting.pause(req) {
            report.interrupted = true;
            return Ok(report);
        }
    }
}

/// One pass over the plan's figures: each one's units of work, then (alone) its drawing.
fn pass(plan: &Plan, req: &Request, report: &mut Report) -> Result<Step> {
    // Alone, the figures come in the request's order, each drawn when its work is done; workers
    // that share the machine start the longest units first.
    let order: Vec<usize> = match req.alone() {
        true => (0..plan.figures.len()).collect(),
        false => plan.work_order.clone(),
    };
    for f in order {
        let fig = &plan.figures[f];
        let started = Instant::now();
        let work_before = report.work();
        let step = match req.draw_only {
            true => Step::Done,
            false => work_figure(f, fig, plan, req, report)?,
        };
        if report.work() > work_before && !report.worked.contains(&fig.id) {
            report.worked.push(fig.id.clone());
        }
        if step == Step::Interrupted {
            return Ok(Step::Interrupted);
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
        draw(&data, req, started, reused, report)?;
    }
    Ok(Step::Done)
}

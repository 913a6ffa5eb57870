//! `reproduce --estimate`: before anything trains, each figure's units of work that are not
//! done and their predicted wall time on this machine, from a few steps of each kind of work
//! timed here (docs/performance.md compares the prediction with measured runs).
//!
//! What is timed, once per kind (the same model, data, mode and ensemble size share one timing):
//! - a training unit: steps of the real driver on the unit's own ensemble (or faithful run),
//!   times its iterations;
//! - its measurements: the loss and gradient, a directional smoothness and a Hessian at
//!   initialisation on the evaluation batch ([`measure::Costs`]), times how many the figures
//!   need;
//! - a noise unit: a pass of its batches ([`measure::noise::seconds_per_batch`]), times its
//!   batches and g's chunks.
//!
//! The wall time with N workers is a list schedule: each unit (a training unit with the
//! measurements of its runs, or a noise unit) goes, in the plan's order, to the worker that
//! is free first. Units another worker already did count nothing.
use super::{say, Plan, TrainingUnit};
use crate::measure::{self, noise, Costs};
use crate::run::{RunFolder, State};
use crate::tools::bench::DriverTimer;
use crate::train::Member;
use anyhow::Result;
use std::collections::HashMap;
use std::time::Duration;

/// What one figure's remaining work is predicted to cost.
#[derive(Debug, Clone, Default)]
pub struct FigureEstimate {
    pub id: String,
    pub training_units: usize,
    pub runs: usize,
    pub training_s: f64,
    pub measured_runs: usize,
    pub hessians: usize,
    pub measuring_s: f64,
    pub noise_units: usize,
    pub noise_s: f64,
}

impl FigureEstimate {
    pub fn total_s(&self) -> f64 {
        self.training_s + self.measuring_s + self.noise_s
    }
}

/// The prediction for a whole request.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub figures: Vec<FigureEstimate>,
    /// Seconds of work over all figures, one worker.
    pub work_s: f64,
    pub workers: usize,
    /// Predicted wall time with `workers` workers.
    pub wall_s: f64,
}

/// How long a timed training session should run: long enough to dwarf its start.
const TIMED_SESSION: Duration = Duration::from_millis(500);

/// Timings already taken, by what they depend on.
#[derive(Default)]
struct Timings {
    step: HashMap<String, f64>,
    costs: HashMap<String, Costs>,
    noise: HashMap<String, f64>,
}

/// What a timing depends on: the model, the data, how it is computed, and how many runs share
/// a step.
fn key(cfg: &crate::config::Config, members: usize) -> String {
    serde_json::json!({
        "model": cfg.model, "data": cfg.data, "mode": cfg.train.mode,
        "dtype": cfg.train.dtype, "device": cfg.train.device, "members": members,
    })
    .to_string()
}

/// Seconds per step of `cfgs` trained as their training unit trains them.
fn seconds_per_step(cfgs: &[crate::config::Config], t: &mut Timings) -> Result<f64> {
    let k = key(&cfgs[0], cfgs.len());
    if let Some(&s) = t.step.get(&k) {
        return Ok(s);
    }
    let members: Vec<Member> = cfgs.iter().map(Member::from_config).collect();
    let mut timer = DriverTimer::start(&cfgs[0], &members)?;
    let warm = timer.session(3)?.as_secs_f64() / 3.0;
    let steps = ((TIMED_SESSION.as_secs_f64() / warm.max(1e-6)).ceil() as i64).clamp(5, 400);
    let s = timer.session(steps)?.as_secs_f64() / steps as f64;
    t.step.insert(k, s);
    Ok(s)
}

fn costs(cfg: &crate::config::Config, needs: &measure::Needs, t: &mut Timings) -> Result<Costs> {
    // What is timed depends on what is needed (a Hessian of Fig. 5's model costs minutes).
    let wants = [
        !needs.smoothness.is_empty(),
        !needs.condition.is_empty() || !needs.eigen.is_empty(),
    ];
    let k = format!("{}{wants:?}", key(cfg, 1));
    if let Some(&c) = t.costs.get(&k) {
        return Ok(c);
    }
    let device = cfg
        .train
        .device
        .tch()
        .map_err(|e| anyhow::anyhow!("config key train.device: {e}"))?;
    let c = Costs::measure(cfg, needs, device)?;
    t.costs.insert(k, c);
    Ok(c)
}

fn noise_batch(cfg: &crate::config::Config, t: &mut Timings) -> Result<f64> {
    let k = key(cfg, 1);
    if let Some(&s) = t.noise.get(&k) {
        return Ok(s);
    }
    let s = noise::seconds_per_batch(cfg)?;
    t.noise.insert(k, s);
    Ok(s)
}

/// Times what the plan's remaining units need and predicts their wall time with `workers`.
pub(super) fn estimate(plan: &Plan, workers: usize) -> Result<Estimate> {
    let mut t = Timings::default();
    let mut figures: Vec<FigureEstimate> = plan
        .figures
        .iter()
        .map(|f| FigureEstimate {
            id: f.id.clone(),
            ..Default::default()
        })
        .collect();
    // Seconds of each schedulable unit, in the plan's order.
    let mut jobs: Vec<f64> = vec![];
    for unit in &plan.training {
        let done = unit
            .dirs
            .iter()
            .all(|d| matches!(RunFolder::new(d).state(), State::Done(_)));
        let mut job = 0.0;
        let fig = &mut figures[unit.figure];
        if !done {
            say(format!("estimate: timing the steps of {}", unit.name));
            let iters = unit.cfgs.iter().map(|c| c.train.iters).max().unwrap_or(0);
            let s = seconds_per_step(&unit.cfgs, &mut t)? * iters as f64;
            fig.training_units += 1;
            fig.runs += unit.cfgs.len();
            fig.training_s += s;
            job += s;
        }
        job += measuring_s(plan, unit, &mut figures, &mut t)?;
        if job > 0.0 {
            jobs.push(job);
        }
    }
    for unit in &plan.noise {
        if noise::read(&unit.dir)?.is_some() {
            continue;
        }
        say(format!(
            "estimate: timing the noise batches of {}",
            unit.name
        ));
        let b = unit.cfg.data.batch;
        let batches = unit.samples + (unit.full_batch + b - 1) / b;
        let s = noise_batch(&unit.cfg, &mut t)? * batches as f64;
        let fig = &mut figures[unit.figure];
        fig.noise_units += 1;
        fig.noise_s += s;
        jobs.push(s);
    }
    let workers = workers.max(1);
    let mut load = vec![0.0f64; workers];
    for job in &jobs {
        let first_free = (0..workers)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .expect("at least one worker");
        load[first_free] += job;
    }
    Ok(Estimate {
        work_s: figures.iter().map(FigureEstimate::total_s).sum(),
        figures,
        workers,
        wall_s: load.into_iter().fold(0.0, f64::max),
    })
}

/// The seconds the measurements of a training unit's runs take, added to their figures.
fn measuring_s(
    plan: &Plan,
    unit: &TrainingUnit,
    figures: &mut [FigureEstimate],
    t: &mut Timings,
) -> Result<f64> {
    let mut total = 0.0;
    for m in &plan.measuring {
        if !unit.dirs.contains(&m.dir) {
            continue;
        }
        let needs = match RunFolder::new(&m.dir).state() {
            State::Done(s) => m
                .needs
                .available(&m.cfg, &s)
                .missing(&measure::read(&RunFolder::new(&m.dir))?),
            _ => m.needs.clone(),
        };
        if needs.is_empty() {
            continue;
        }
        let s = costs(&m.cfg, &needs, t)?.of(&needs);
        let fig = &mut figures[m.figure];
        fig.measured_runs += 1;
        fig.hessians += needs.condition.union(&needs.eigen).count();
        fig.measuring_s += s;
        total += s;
    }
    Ok(total)
}

/// `1 h 02 min`, `3 min 10 s`, `12 s`.
pub fn duration(s: f64) -> String {
    let s = s.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.figures {
            if e.total_s() == 0.0 {
                writeln!(f, "{}: nothing left to do", e.id)?;
                continue;
            }
            writeln!(
                f,
                "{}: {}; training {} ({} units, {} runs), measuring {} ({} runs, {} Hessians), noise {} ({} units)",
                e.id,
                duration(e.total_s()),
                duration(e.training_s),
                e.training_units,
                e.runs,
                duration(e.measuring_s),
                e.measured_runs,
                e.hessians,
                duration(e.noise_s),
                e.noise_units,
            )?;
        }
        write!(
            f,
            "estimate: {} of work; with {} worker{} about {} of wall time",
            duration(self.work_s),
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            duration(self.wall_s)
        )
    }
}

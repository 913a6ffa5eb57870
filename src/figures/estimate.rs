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
//! The wall time with N workers is a list schedule, as `--jobs` workers take units: the worker
//! that is free first takes the first unit in the plan's order that it can start (a training
//! unit, a noise unit, or one run's measurements once its training unit is over). Units
//! another worker already did count nothing.
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
        !needs.hessian_steps().is_empty(),
    ];
    let k = format!("{}{wants:?}", key(cfg, 1));
    if let Some(&c) = t.costs.get(&k) {
        return Ok(c);
    }
    let device = cfg.device()?;
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
    // Each schedulable unit, in the order `--jobs` workers take them: figure by figure in
    // the plan's work order, each figure's training units (with its runs' measurements after
    // them), then its noise.
    let mut jobs: Vec<Job> = vec![];
    for &f in &plan.work_order {
        for unit in plan.training.iter().filter(|u| u.figure == f) {
            let done = unit
                .dirs
                .iter()
                .all(|d| matches!(RunFolder::new(d).state(), State::Done(_)));
            let mut after = None;
            if !done {
                say(format!("estimate: timing the steps of {}", unit.name));
                let iters = unit.cfgs.iter().map(|c| c.train.iters).max().unwrap_or(0);
                let s = seconds_per_step(&unit.cfgs, &mut t)? * iters as f64;
                let fig = &mut figures[f];
                fig.training_units += 1;
                fig.runs += unit.cfgs.len();
                fig.training_s += s;
                after = Some(jobs.len());
                jobs.push(Job { s, after: None });
            }
            for s in measuring_s(plan, unit, &mut figures, &mut t)? {
                jobs.push(Job { s, after });
            }
        }
        for unit in plan.noise.iter().filter(|u| u.figure == f) {
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
            let fig = &mut figures[f];
            fig.noise_units += 1;
            fig.noise_s += s;
            jobs.push(Job { s, after: None });
        }
    }
    let workers = workers.max(1);
    Ok(Estimate {
        work_s: figures.iter().map(FigureEstimate::total_s).sum(),
        figures,
        workers,
        wall_s: schedule(&jobs, workers),
    })
}

/// A unit of work for the schedule: its seconds, and the training unit it must wait for.
struct Job {
    s: f64,
    after: Option<usize>,
}

/// The wall time of `jobs` on `workers` workers: the worker free first takes the first job
/// whose training is over by then (or, when none is, waits for the first to become ready).
fn schedule(jobs: &[Job], workers: usize) -> f64 {
    let mut free_at = vec![0.0f64; workers.max(1)];
    let mut end: Vec<Option<f64>> = vec![None; jobs.len()];
    let ready = |j: &Job, end: &[Option<f64>]| match j.after {
        None => Some(0.0),
        Some(a) => end[a],
    };
    let mut pending: Vec<usize> = (0..jobs.len()).collect();
    while !pending.is_empty() {
        let w = (0..free_at.len())
            .min_by(|&a, &b| free_at[a].total_cmp(&free_at[b]))
            .expect("at least one worker");
        let now = free_at[w];
        // Jobs come after the job they wait for in the plan's order, so the first pending job
        // always has a known ready time.
        let pick = pending
            .iter()
            .position(|&i| ready(&jobs[i], &end).is_some_and(|r| r <= now))
            .unwrap_or_else(|| {
                let soonest = pending
                    .iter()
                    .enumerate()
                    .filter_map(|(p, &i)| ready(&jobs[i], &end).map(|r| (p, r)))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("a job whose training is scheduled");
                soonest.0
            });
        let i = pending.remove(pick);
        let start = now.max(ready(&jobs[i], &end).unwrap_or(now));
        end[i] = Some(start + jobs[i].s);
        free_at[w] = start + jobs[i].s;
    }
    free_at.into_iter().fold(0.0, f64::max)
}

/// The seconds the measurements of each of a training unit's runs take (runs with nothing
/// left to measure left out), added to their figures.
fn measuring_s(
    plan: &Plan,
    unit: &TrainingUnit,
    figures: &mut [FigureEstimate],
    t: &mut Timings,
) -> Result<Vec<f64>> {
    let mut runs = vec![];
    for m in &plan.measuring {
        if !unit.dirs.contains(&m.dir) {
            continue;
        }
        let needs = match RunFolder::new(&m.dir).state() {
            State::Done(s) => measure::missing(&RunFolder::new(&m.dir), &m.cfg, &s, &m.needs)?,
            _ => m.needs.clone(),
        };
        if needs.is_empty() {
            continue;
        }
        let s = costs(&m.cfg, &needs, t)?.of(&needs);
        let fig = &mut figures[m.figure];
        fig.measured_runs += 1;
        fig.hessians += needs.hessian_steps().len();
        fig.measuring_s += s;
        runs.push(s);
    }
    Ok(runs)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_workers_share_the_measurements_of_a_unit_another_worker_trained() {
        // A 100 s training unit with two 40 s measurements, and a 10 s unit: the second worker
        // ends its short unit, waits for the long one, then takes one of its two runs.
        let jobs = [
            Job {
                s: 100.0,
                after: None,
            },
            Job {
                s: 40.0,
                after: Some(0),
            },
            Job {
                s: 40.0,
                after: Some(0),
            },
            Job {
                s: 10.0,
                after: None,
            },
        ];
        assert_eq!(schedule(&jobs, 2), 140.0);
        assert_eq!(schedule(&jobs, 1), 190.0);
    }

    #[test]
    fn a_free_worker_takes_a_later_unit_that_is_ready_before_one_that_is_not() {
        let jobs = [
            Job {
                s: 50.0,
                after: None,
            },
            Job {
                s: 10.0,
                after: Some(0),
            },
            Job {
                s: 30.0,
                after: None,
            },
            Job {
                s: 30.0,
                after: None,
            },
        ];
        // Worker 2 takes the two 30 s units while worker 1 trains, then the measurement waits
        // for nobody: 50 + 10 on worker 1, 30 + 30 on worker 2.
        assert_eq!(schedule(&jobs, 2), 60.0);
    }
}

//! What a figure measures on each finished run, on the evaluation batch, at the strides its
//! YAML asks for: test loss and gradient norm, directional smoothness, robust condition number;
//! and the stochastic-gradient noise at initialisation.
//!
//! The quantities are [`crate::landscape`]'s (flat parameter vector, R_med, the unit step
//! direction) and [`crate::noise`]'s. What this module adds is the bookkeeping: each quantity
//! at its own stride (a condition number costs a full Hessian, a test loss one backward pass),
//! kept in `RUN/measurements.csv` and extended when a later figure needs more points, never
//! recomputed; and the choice of forward pass. A run in `train.mode: fast` is measured with
//! [`model::fast_loss`] (the same model by associativity, equal to the faithful forward to about
//! 1e-6 relative, 1.5 to 8 times cheaper per Hessian on a CPU); a faithful run with
//! [`model::loss`], exactly as `linattn analyze` measures it.
use super::runs;
use crate::artifacts::{self, Summary, Trajectory};
use crate::config::{Config, Dtype};
use crate::data;
use crate::figures::MeasureSpec;
use crate::landscape::{self, Point};
use crate::model::Arch;
use anyhow::{anyhow, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::Tensor;

pub const MEASUREMENTS: &str = "measurements.csv";
const HEADER: &str = "iter,test_loss,grad_norm,dir_smoothness,condition_number";

/// The steps at which each quantity is wanted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    pub loss: BTreeSet<i64>,
    pub smoothness: BTreeSet<i64>,
    pub condition: BTreeSet<i64>,
}

impl Needs {
    /// The strides of `m` on a run of `iters` iterations. Loss and condition number include the
    /// final step; smoothness at t needs t+1, so it stops at `iters − 1`.
    pub fn of(m: &MeasureSpec, iters: i64) -> Needs {
        let grid = |every: i64, from: i64, to: i64| -> BTreeSet<i64> {
            (from..=to).filter(|t| t % every == 0).collect()
        };
        let mut loss = grid(m.loss_every, 0, iters);
        loss.insert(iters);
        let smoothness = match m.smoothness_every {
            Some(e) => grid(e, 0, (iters - 1).min(m.smoothness_until.map_or(i64::MAX, |u| u - 1))),
            None => BTreeSet::new(),
        };
        let condition = match m.condition_every {
            Some(e) => {
                let mut c = grid(e, 1, iters);
                c.extend(m.condition_at.iter().copied().filter(|t| *t <= iters));
                c.insert(iters);
                if m.condition_at_init {
                    c.insert(0);
                }
                c
            }
            None => BTreeSet::new(),
        };
        Needs { loss, smoothness, condition }
    }

    /// Keeps the steps that the run's trajectory holds (a diverged run stops early;
    /// smoothness at t also needs t+1).
    pub fn available(&self, cfg: &Config, summary: &Summary) -> Needs {
        let has = |t: &i64| runs::has_step(cfg, summary, *t);
        Needs {
            loss: self.loss.iter().copied().filter(has).collect(),
            smoothness: self.smoothness.iter().copied().filter(|t| has(t) && has(&(t + 1))).collect(),
            condition: self.condition.iter().copied().filter(has).collect(),
        }
    }

    fn steps(&self) -> BTreeSet<i64> {
        self.loss.iter().chain(&self.smoothness).chain(&self.condition).copied().collect()
    }
}

/// One row of `measurements.csv`; `None` is a quantity not measured at that step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Row {
    pub test_loss: Option<f64>,
    pub grad_norm: Option<f64>,
    pub dir_smoothness: Option<f64>,
    pub condition_number: Option<f64>,
}

pub type Rows = BTreeMap<i64, Row>;

fn missing(rows: &Rows, needs: &Needs) -> Needs {
    let lacks = |t: &i64, f: fn(&Row) -> Option<f64>| rows.get(t).and_then(f).is_none();
    Needs {
        loss: needs.loss.iter().copied().filter(|t| lacks(t, |r| r.test_loss)).collect(),
        smoothness: needs.smoothness.iter().copied().filter(|t| lacks(t, |r| r.dir_smoothness)).collect(),
        condition: needs.condition.iter().copied().filter(|t| lacks(t, |r| r.condition_number)).collect(),
    }
}

/// The rows already measured in `dir` (none if the file is absent).
pub fn read(dir: &Path) -> Result<Rows> {
    let path = dir.join(MEASUREMENTS);
    if !path.exists() {
        return Ok(Rows::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(anyhow!("{}: unexpected header; remove the file to measure again", path.display()));
    }
    let mut rows = Rows::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || anyhow!("{} line {}: not a measurements row", path.display(), i + 2);
        if f.len() != 5 {
            return Err(bad());
        }
        let num = |s: &str| -> Result<Option<f64>> {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse::<f64>().map(Some).map_err(|_| bad())
            }
        };
        let iter: i64 = f[0].parse().map_err(|_| bad())?;
        rows.insert(
            iter,
            Row { test_loss: num(f[1])?, grad_norm: num(f[2])?, dir_smoothness: num(f[3])?, condition_number: num(f[4])? },
        );
    }
    Ok(rows)
}

/// A float32 run's values are written as float32 (its measurements are float32 numbers); a
/// float64 run's keep their digits, so that a test loss beyond float32's range is not read
/// back as inf.
fn write(dir: &Path, rows: &Rows, dtype: Dtype) -> Result<()> {
    let f = |v: Option<f64>| {
        v.map(|v| match dtype {
            Dtype::Float32 => artifacts::fmt_f32(v as f32),
            Dtype::Float64 => artifacts::fmt_metric(v),
        })
        .unwrap_or_default()
    };
    let mut s = String::from(HEADER);
    s.push('\n');
    for (t, r) in rows {
        s.push_str(&format!(
            "{t},{},{},{},{}\n",
            f(r.test_loss),
            f(r.grad_norm),
            f(r.dir_smoothness),
            f(r.condition_number)
        ));
    }
    artifacts::write_atomic(&dir.join(MEASUREMENTS), s.as_bytes())
}

/// Measures what `needs` asks for on the finished run in `dir` and is not measured yet.
/// Returns all rows and whether anything was computed.
/// Stops early (keeping what is measured) when `stop` is set.
pub fn measure_run(
    dir: &Path,
    cfg: &Config,
    summary: &Summary,
    needs: &Needs,
    progress: bool,
    stop: &AtomicBool,
) -> Result<(Rows, bool)> {
    let mut rows = read(dir)?;
    let todo = missing(&rows, &needs.available(cfg, summary));
    let steps = todo.steps();
    if steps.is_empty() {
        return Ok((rows, false));
    }
    let device = crate::device::parse(&cfg.train.device).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let arch = Arch::from_config(cfg);
    let names: Vec<String> = arch.param_specs().into_iter().map(|(n, _)| n).collect();
    let traj = Trajectory::read(&dir.join(artifacts::TRAJECTORY), &names)?;
    let batch = data::eval_batch(cfg, device);
    let at = |t: i64| -> Result<Vec<Tensor>> {
        let ps = traj.at(t).ok_or_else(|| anyhow!("{}: step {t} is not in the trajectory", dir.display()))?;
        Ok(ps.iter().map(|p| p.to_device(device)).collect())
    };
    // Counted in backward passes: a Hessian is one per parameter, the rest one each.
    let work = steps.len() as u64 + todo.smoothness.len() as u64 + todo.condition.len() as u64 * arch.num_params() as u64;
    let bar = crate::progress::bar(work, "measure", progress);
    for &t in &steps {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let params = at(t)?;
        let point = Point::with_mode(&arch, &params, &batch, cfg.train.mode);
        let row = rows.entry(t).or_default();
        row.test_loss = Some(point.loss.double_value(&[]));
        row.grad_norm = Some(point.grad_norm().double_value(&[]));
        bar.inc(1);
        if todo.smoothness.contains(&t) {
            let next = landscape::flatten(&at(t + 1)?).to_device(device);
            row.dir_smoothness = Some(match landscape::unit_direction(&point.flat, &next) {
                Some(u) => u.dot(&point.hvp(&u)).double_value(&[]),
                None => f64::NAN,
            });
            bar.inc(1);
        }
        if todo.condition.contains(&t) {
            let h = point.hessian(|| bar.inc(1));
            row.condition_number = Some(landscape::condition_number(&h.diagonal(0, 0, 1)));
        }
    }
    bar.finish_and_clear();
    write(dir, &rows, cfg.train.dtype)?;
    Ok((rows, true))
}

/// The noise at initialisation of one series, as `linattn noise` writes it.
#[derive(Debug, Clone)]
pub struct Noise {
    pub values: Vec<f64>,
    /// `noise.json` as written (Hill tail index, kurtosis, ...).
    pub stats: serde_json::Value,
}

impl Noise {
    pub fn stat(&self, key: &str) -> Option<f64> {
        self.stats.get(key).and_then(|v| v.as_f64())
    }
}

/// Runs `linattn noise` into `dir` unless it is already there; returns the values and stats.
pub fn noise(cfg: &Config, samples: i64, full_batch: i64, dir: &Path, progress: bool) -> Result<(Noise, bool)> {
    let json = dir.join("noise.json");
    let mut computed = false;
    if !json.exists() {
        crate::noise::run_noise(cfg, samples, full_batch, dir, progress)?;
        computed = true;
    }
    let stats: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)
        .with_context(|| format!("reading {}", json.display()))?;
    let text = std::fs::read_to_string(dir.join("noise.csv")).with_context(|| format!("reading {}/noise.csv", dir.display()))?;
    let values = text.lines().skip(1).filter_map(|l| l.trim().parse::<f64>().ok()).collect();
    Ok((Noise { values, stats }, computed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_the_strides_and_always_include_the_final_step() {
        let m = MeasureSpec {
            loss_every: 50,
            smoothness_every: Some(10),
            smoothness_until: Some(30),
            condition_every: Some(250),
            condition_at: vec![],
            condition_at_init: false,
            noise: None,
        };
        let n = Needs::of(&m, 120);
        assert_eq!(n.loss.iter().copied().collect::<Vec<_>>(), vec![0, 50, 100, 120]);
        assert_eq!(n.smoothness.iter().copied().collect::<Vec<_>>(), vec![0, 10, 20]);
        assert_eq!(n.condition.iter().copied().collect::<Vec<_>>(), vec![120]);
    }

    #[test]
    fn a_float64_runs_measurements_keep_values_beyond_float32() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let row = Row { test_loss: Some(6.6e151), grad_norm: Some(0.1), ..Row::default() };
        let rows: Rows = [(5, row)].into_iter().collect();
        write(dir, &rows, Dtype::Float64).unwrap();
        assert_eq!(read(dir).unwrap()[&5].test_loss, Some(6.6e151));
        write(dir, &rows, Dtype::Float32).unwrap();
        assert_eq!(read(dir).unwrap()[&5].test_loss, Some(f64::INFINITY));
    }

    #[test]
    fn condition_at_adds_iterations_to_the_stride_and_drops_those_past_the_end() {
        let m = MeasureSpec {
            condition_every: Some(500),
            condition_at: vec![750, 1250, 5000],
            ..MeasureSpec::default()
        };
        let n = Needs::of(&m, 2000);
        assert_eq!(n.condition.iter().copied().collect::<Vec<_>>(), vec![0, 500, 750, 1000, 1250, 1500, 2000]);
    }
}

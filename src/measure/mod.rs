//! The measurements on a finished run's trajectory, on the evaluation batch: one row type, one
//! file (`measurements.csv` in the run folder) and one pipeline, for `linattn analyze` and for
//! `reproduce`. Each quantity is measured at its own set of iterations (a condition number
//! costs a full Hessian, a test loss one backward pass); rows already in the file are kept and
//! extended, never recomputed.
//!
//! The quantities themselves are [`landscape`]'s; the stochastic-gradient noise at
//! initialisation is [`noise`]'s. A run trained in fast mode is measured through the fast
//! forward ([`crate::model::fast_loss`], the same model by associativity to about 1e-6
//! relative, 1.5 to 8 times cheaper per Hessian on a CPU); a faithful run through the faithful
//! one, as the PyTorch side measures it.
pub mod landscape;
pub mod noise;
pub mod spectrum;

use crate::config::Config;
use crate::data;
use crate::model::{Arch, Layout};
use crate::run::folder::MEASUREMENTS;
use crate::run::io::{self, Metric};
use crate::run::{RunFolder, State, Status, Summary};
use crate::train::is_saved_step;
use crate::BadInput;
use anyhow::{anyhow, Context, Result};
use landscape::Point;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Tensor};

/// A line of `measurements.csv`, as written (every column) and as read: a file written before
/// `condition_number_eig` and `sharpness` joined the row (5 columns), or `block_heterogeneity`
/// (7), reads with those quantities not measured.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    iter: i64,
    test_loss: Option<Metric>,
    grad_norm: Option<Metric>,
    dir_smoothness: Option<Metric>,
    condition_number: Option<Metric>,
    #[serde(default)]
    condition_number_eig: Option<Metric>,
    #[serde(default)]
    sharpness: Option<Metric>,
    #[serde(default)]
    block_heterogeneity: Option<Metric>,
}

/// One row of `measurements.csv`; `None` is a quantity not measured at that step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Row {
    /// The loss on the evaluation batch.
    pub test_loss: Option<f64>,
    /// ‖∇ test loss‖ (of the concatenated gradient).
    pub grad_norm: Option<f64>,
    /// uᵀHu towards step t+1 (NaN when the step was zero).
    pub dir_smoothness: Option<f64>,
    /// R_med = max|diag H| / median|diag H|.
    pub condition_number: Option<f64>,
    /// max|λ| / median|λ| over the eigenvalues of H (beyond the paper).
    pub condition_number_eig: Option<f64>,
    /// λ_max of H (beyond the paper).
    pub sharpness: Option<f64>,
    /// The mean pairwise Jensen–Shannon distance between the spectral densities of the
    /// Hessian's blocks (Zhang et al., 2024; [`landscape::block_heterogeneity`]).
    pub block_heterogeneity: Option<f64>,
}

pub type Rows = BTreeMap<i64, Row>;

/// The steps at which each quantity is wanted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// Test loss and gradient norm.
    pub loss: BTreeSet<i64>,
    pub smoothness: BTreeSet<i64>,
    pub condition: BTreeSet<i64>,
    /// The eigenvalues of the full Hessian (condition_number_eig, sharpness).
    pub eigen: BTreeSet<i64>,
    /// The block spectra (`spectrum.csv`) and block_heterogeneity.
    pub spectrum: BTreeSet<i64>,
}

/// What is measured on the evaluation batch of each run, and how often (a figure's `measure:`
/// block). A stride of `None`
/// means "not measured". Every stride counts iterations; the final iteration is always
/// measured when its quantity is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureSpec {
    /// Test loss and gradient norm.
    #[serde(default = "fifty")]
    pub loss_every: i64,
    /// Directional smoothness uᵀH(θ_t)u (one Hessian-vector product).
    #[serde(default)]
    pub smoothness_every: Option<i64>,
    /// Directional smoothness only for t < this (Fig. 6: the first 2000 iterations).
    #[serde(default)]
    pub smoothness_until: Option<i64>,
    /// Robust condition number R_med (a full Hessian per point: the expensive measurement).
    #[serde(default)]
    pub condition_every: Option<i64>,
    /// Further iterations for the condition number besides the stride: the ratio table's
    /// (750, 1250) when a coarser stride keeps the Hessians affordable (App. B).
    #[serde(default)]
    pub condition_at: Vec<i64>,
    /// Also measure the condition number at iteration 0 (the same for both optimizers).
    #[serde(default = "yes")]
    pub condition_at_init: bool,
    /// The Hessian's block spectra (`spectrum.csv`) and block_heterogeneity every K
    /// iterations from 0 (a full Hessian each, beyond the paper).
    #[serde(default)]
    pub spectrum_every: Option<i64>,
    /// Further iterations for the block spectra (those past the end are dropped).
    #[serde(default)]
    pub spectrum_at: Vec<i64>,
    /// Stochastic-gradient noise at initialisation, per series.
    #[serde(default)]
    pub noise: Option<NoiseSpec>,
}

fn fifty() -> i64 {
    50
}

fn yes() -> bool {
    true
}

impl Default for MeasureSpec {
    fn default() -> Self {
        MeasureSpec {
            loss_every: 50,
            smoothness_every: None,
            smoothness_until: None,
            condition_every: None,
            condition_at: vec![],
            condition_at_init: true,
            spectrum_every: None,
            spectrum_at: vec![],
            noise: None,
        }
    }
}

/// `linattn noise` at initialisation: `samples` batches of B, `g` from `full_batch` prompts.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseSpec {
    pub seed: u32,
    pub samples: i64,
    pub full_batch: i64,
}

impl Needs {
    /// The strides on a run of `iters` iterations. Loss and condition number include the final
    /// step; smoothness at t needs t+1, so it stops at `iters − 1`.
    pub fn of(m: &MeasureSpec, iters: i64) -> Needs {
        let grid = |every: i64, from: i64, to: i64| -> BTreeSet<i64> {
            (from..=to).filter(|t| t % every == 0).collect()
        };
        let mut loss = grid(m.loss_every, 0, iters);
        loss.insert(iters);
        let smoothness = match m.smoothness_every {
            Some(e) => grid(
                e,
                0,
                (iters - 1).min(m.smoothness_until.map_or(i64::MAX, |u| u - 1)),
            ),
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
        let mut spectrum = match m.spectrum_every {
            Some(e) => grid(e, 0, iters),
            None => BTreeSet::new(),
        };
        spectrum.extend(
            m.spectrum_at
                .iter()
                .copied()
                .filter(|t| (0..=iters).contains(t)),
        );
        Needs {
            loss,
            smoothness,
            condition,
            eigen: BTreeSet::new(),
            spectrum,
        }
    }

    /// Everything at each of `steps` (`analyze`): smoothness where t+1 is among `saved`; the
    /// block spectra with `spectrum`.
    pub fn everything(steps: &[i64], saved: &[i64], spectrum: bool) -> Needs {
        let all: BTreeSet<i64> = steps.iter().copied().collect();
        Needs {
            spectrum: if spectrum {
                all.clone()
            } else {
                BTreeSet::new()
            },
            smoothness: all
                .iter()
                .copied()
                .filter(|t| saved.contains(&(t + 1)))
                .collect(),
            loss: all.clone(),
            condition: all.clone(),
            eigen: all,
        }
    }

    /// The union of two needs (several figures measuring one run).
    pub fn union(&self, other: &Needs) -> Needs {
        let u = |a: &BTreeSet<i64>, b: &BTreeSet<i64>| a.union(b).copied().collect();
        Needs {
            loss: u(&self.loss, &other.loss),
            smoothness: u(&self.smoothness, &other.smoothness),
            condition: u(&self.condition, &other.condition),
            eigen: u(&self.eigen, &other.eigen),
            spectrum: u(&self.spectrum, &other.spectrum),
        }
    }

    /// Keeps the steps that a finished run's trajectory holds (a diverged run stops early;
    /// smoothness at t also needs t+1).
    pub fn available(&self, cfg: &Config, summary: &Summary) -> Needs {
        let has = |t: &i64| has_step(cfg, summary, *t);
        let keep = |s: &BTreeSet<i64>| s.iter().copied().filter(has).collect();
        Needs {
            loss: keep(&self.loss),
            smoothness: self
                .smoothness
                .iter()
                .copied()
                .filter(|t| has(t) && has(&(t + 1)))
                .collect(),
            condition: keep(&self.condition),
            eigen: keep(&self.eigen),
            spectrum: keep(&self.spectrum),
        }
    }

    /// What `rows` does not hold yet.
    pub fn missing(&self, rows: &Rows) -> Needs {
        let lacks = |s: &BTreeSet<i64>, f: fn(&Row) -> Option<f64>| -> BTreeSet<i64> {
            s.iter()
                .copied()
                .filter(|t| rows.get(t).and_then(f).is_none())
                .collect()
        };
        Needs {
            loss: lacks(&self.loss, |r| r.test_loss),
            smoothness: lacks(&self.smoothness, |r| r.dir_smoothness),
            condition: lacks(&self.condition, |r| r.condition_number),
            eigen: lacks(&self.eigen, |r| r.sharpness),
            spectrum: lacks(&self.spectrum, |r| r.block_heterogeneity),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps().is_empty()
    }

    /// The steps that need a full Hessian.
    pub fn hessian_steps(&self) -> BTreeSet<i64> {
        self.condition
            .iter()
            .chain(&self.eigen)
            .chain(&self.spectrum)
            .copied()
            .collect()
    }

    fn steps(&self) -> BTreeSet<i64> {
        self.loss
            .iter()
            .chain(&self.smoothness)
            .chain(&self.condition)
            .chain(&self.eigen)
            .chain(&self.spectrum)
            .copied()
            .collect()
    }
}

/// The last step a finished run saved: `iters`, or the iteration it diverged at.
pub fn last_step(cfg: &Config, summary: &Summary) -> i64 {
    match summary.status {
        Status::Diverged => summary.diverged_at.unwrap_or(0),
        _ => cfg.train.iters,
    }
}

/// Whether a finished run's trajectory holds step `t`.
pub fn has_step(cfg: &Config, summary: &Summary, t: i64) -> bool {
    t >= 0
        && t <= last_step(cfg, summary)
        && is_saved_step(t, cfg.train.save_every, cfg.train.iters)
}

/// The rows already measured in the run folder (none if the file is absent).
pub fn read(folder: &RunFolder) -> Result<Rows> {
    let path = folder.measurements_path();
    if !path.exists() {
        return Ok(Rows::new());
    }
    if !folder.intact(MEASUREMENTS)? {
        // Derived data: measured again rather than refused.
        eprintln!(
            "{}: does not match the SHA-256 in summary.json (damaged, or its writer was killed before recording it); ignored (analyze and reproduce measure it again)",
            path.display()
        );
        return Ok(Rows::new());
    }
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Rows::new();
    for (i, line) in reader.deserialize::<Line>().enumerate() {
        let l = line.map_err(|e| {
            anyhow!(BadInput(format!(
                "{} line {}: not a measurements row ({e}); remove the file to measure again",
                path.display(),
                i + 2
            )))
        })?;
        let v = |m: Option<Metric>| m.map(|m| m.0);
        rows.insert(
            l.iter,
            Row {
                test_loss: v(l.test_loss),
                grad_norm: v(l.grad_norm),
                dir_smoothness: v(l.dir_smoothness),
                condition_number: v(l.condition_number),
                condition_number_eig: v(l.condition_number_eig),
                sharpness: v(l.sharpness),
                block_heterogeneity: v(l.block_heterogeneity),
            },
        );
    }
    Ok(rows)
}

/// Every value is written as the shortest decimal that reads back to it: a float32 run's
/// measurements are float32 numbers, a float64 run's keep their digits (a test loss beyond
/// float32's range is not read back as inf).
fn write(folder: &RunFolder, rows: &Rows) -> Result<()> {
    let m = |v: Option<f64>| v.map(Metric);
    let mut w = csv::Writer::from_writer(vec![]);
    for (&iter, r) in rows {
        w.serialize(Line {
            iter,
            test_loss: m(r.test_loss),
            grad_norm: m(r.grad_norm),
            dir_smoothness: m(r.dir_smoothness),
            condition_number: m(r.condition_number),
            condition_number_eig: m(r.condition_number_eig),
            sharpness: m(r.sharpness),
            block_heterogeneity: m(r.block_heterogeneity),
        })?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| anyhow!("measurements.csv: {e}"))?;
    io::write_atomic(&folder.measurements_path(), &bytes)?;
    folder.record_sha256(&[MEASUREMENTS])
}

/// The run's trajectory, each parameter's shape checked against `layout` (its config's).
fn trajectory(folder: &RunFolder, layout: &Layout) -> Result<io::Trajectory> {
    let traj = folder.trajectory(&layout.names)?;
    for ((name, t), shape) in traj.params.iter().zip(&layout.shapes) {
        if t.size()[1..] != shape[..] {
            return Err(anyhow!(BadInput(format!(
                "{}: {name} has shape {:?} per step, but config.yaml implies {shape:?}",
                folder.dir().display(),
                &t.size()[1..]
            ))));
        }
    }
    Ok(traj)
}

/// What `needs` asks of a finished run that its measurements do not hold yet: rows without the
/// value, and block spectra whose lines are not in spectrum.csv (a damaged or deleted file holds
/// none), so that what is damaged is measured again, never drawn as if whole.
fn to_measure(
    cfg: &Config,
    summary: &Summary,
    needs: &Needs,
    rows: &Rows,
    spectra: &spectrum::Spectra,
) -> Needs {
    let wanted = needs.available(cfg, summary);
    let mut todo = wanted.missing(rows);
    // A finite block_heterogeneity says a spectrum was written; a NaN one is a Hessian that was
    // not finite, whose spectrum is empty and has no line to look for.
    let written = |t: &i64| {
        rows.get(t)
            .and_then(|r| r.block_heterogeneity)
            .is_some_and(f64::is_finite)
    };
    todo.spectrum.extend(
        wanted
            .spectrum
            .iter()
            .filter(|t| written(t) && !spectra.contains_key(t)),
    );
    todo
}

/// What [`measure_run`] would measure on the finished run in `folder`: empty when everything
/// `needs` asks for is there and whole.
pub fn missing(
    folder: &RunFolder,
    cfg: &Config,
    summary: &Summary,
    needs: &Needs,
) -> Result<Needs> {
    let spectra = match needs.spectrum.is_empty() {
        true => spectrum::Spectra::new(),
        false => spectrum::read(folder)?,
    };
    Ok(to_measure(cfg, summary, needs, &read(folder)?, &spectra))
}

/// Measures what `needs` asks for on the finished run in `folder` and is not measured yet, on
/// `device`. Returns all rows and whether anything was computed. Stops early (keeping what is
/// measured) when `stop` is set.
pub fn measure_run(
    folder: &RunFolder,
    cfg: &Config,
    summary: &Summary,
    needs: &Needs,
    device: Device,
    progress: bool,
    stop: &AtomicBool,
) -> Result<(Rows, bool)> {
    let mut rows = read(folder)?;
    // Read (and rewritten) only when spectra are asked for: most measurements never touch it.
    let mut spectrum = match needs.spectrum.is_empty() {
        true => spectrum::Spectra::new(),
        false => spectrum::read(folder)?,
    };
    let todo = to_measure(cfg, summary, needs, &rows, &spectrum);
    let steps = todo.steps();
    if steps.is_empty() {
        return Ok((rows, false));
    }
    let arch = Arch::from_config(cfg);
    let layout = Layout::new(&arch);
    let traj = trajectory(folder, &layout)?;
    let batch = data::eval_batch(cfg, device);
    let at = |t: i64| -> Result<Vec<Tensor>> {
        let ps = traj.at(t).ok_or_else(|| {
            anyhow!(
                "{}: step {t} is not in the trajectory",
                folder.dir().display()
            )
        })?;
        Ok(ps.iter().map(|p| p.to_device(device)).collect())
    };
    // Counted in backward passes: a Hessian is one per parameter, the rest one each.
    let hessians = todo.hessian_steps().len() as u64;
    let work = steps.len() as u64 + todo.smoothness.len() as u64 + hessians * layout.total as u64;
    let bar = crate::progress::bar(work, "measure", progress);
    for &t in &steps {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let point = Point::with_mode(&arch, &at(t)?, &batch, cfg.train.mode);
        let row = rows.entry(t).or_default();
        row.test_loss = Some(point.loss.double_value(&[]));
        row.grad_norm = Some(point.grad_norm().double_value(&[]));
        bar.inc(1);
        if todo.smoothness.contains(&t) {
            row.dir_smoothness = Some(point.directional_smoothness(&layout.flatten(&at(t + 1)?)));
            bar.inc(1);
        }
        if todo.hessian_steps().contains(&t) {
            let h = point.hessian(|| bar.inc(1));
            row.condition_number = Some(landscape::condition_number(&h.diagonal(0, 0, 1)));
            if todo.eigen.contains(&t) {
                let (eig, sharpness) = landscape::eigen_summary(&h);
                row.condition_number_eig = Some(eig);
                row.sharpness = Some(sharpness);
            }
            if todo.spectrum.contains(&t) {
                let spectra = landscape::block_spectra(&h, &layout.blocks());
                row.block_heterogeneity = Some(match spectra.split_first() {
                    Some((_, blocks)) => landscape::block_heterogeneity(blocks),
                    None => f64::NAN,
                });
                spectrum.insert(t, spectra);
            }
        }
    }
    bar.finish_and_clear();
    // The spectra first: a row's block_heterogeneity says its spectrum is in spectrum.csv.
    if !todo.spectrum.is_empty() {
        spectrum::write(folder, &layout.block_names(), &spectrum)?;
    }
    write(folder, &rows)?;
    Ok((rows, true))
}

/// What [`measure_run`] spends on one point of a run, in seconds: the loss and gradient on the
/// evaluation batch, a directional smoothness, a full Hessian (an eigendecomposition is
/// negligible beside it).
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    pub point: f64,
    pub smoothness: f64,
    pub hessian: f64,
}

impl Costs {
    /// Timed at `cfg`'s initialisation on its evaluation batch, each after a warm-up, what
    /// `needs` asks for (the rest is 0). A Hessian computed row by row (autograd's) is timed on
    /// a few rows and scaled to all of them; one from the native kernel is timed whole.
    pub fn measure(cfg: &Config, needs: &Needs, device: Device) -> Result<Costs> {
        let arch = Arch::from_config(cfg);
        let init = crate::run::protocol::start(cfg, cfg.train.seed).init;
        let params: Vec<Tensor> = init
            .iter()
            .map(|p| p.to_kind(cfg.train.dtype.kind()).to_device(device))
            .collect();
        let batch = data::eval_batch(cfg, device);
        let timed = |f: &mut dyn FnMut()| {
            f();
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        let new_point = || Point::with_mode(&arch, &params, &batch, cfg.train.mode);
        let point = timed(&mut || {
            let _ = new_point().loss.double_value(&[]);
        });
        let at = new_point();
        let next = at.flat.detach() + 1e-3;
        let smoothness = match needs.smoothness.is_empty() {
            true => 0.0,
            false => timed(&mut || {
                let _ = at.directional_smoothness(&next);
            }),
        };
        let p = at.flat.size()[0];
        let hessian = if needs.hessian_steps().is_empty() {
            0.0
        } else if cfg.train.mode == crate::config::Mode::Fast
            && device == Device::Cpu
            && crate::model::native::applies(&arch)
        {
            timed(&mut || {
                let _ = at.hessian(|| {}).double_value(&[0, 0]);
            })
        } else {
            let rows = p.min(8);
            timed(&mut || {
                for i in 0..rows {
                    let _ = at.hessian_row(i).double_value(&[0]);
                }
            }) * p as f64
                / rows as f64
        };
        Ok(Costs {
            point,
            smoothness,
            hessian,
        })
    }

    /// The seconds [`measure_run`] takes for `needs` (every wanted step assumed in the
    /// trajectory).
    pub fn of(&self, needs: &Needs) -> f64 {
        let hessians = needs.hessian_steps().len();
        needs.steps().len() as f64 * self.point
            + needs.smoothness.len() as f64 * self.smoothness
            + hessians as f64 * self.hessian
    }
}

/// `linattn analyze DIR --every K`: everything at the saved steps that are multiples of K, on
/// `device` (None: the run's own). Returns the rows of those steps.
pub fn analyze(
    dir: &Path,
    every: i64,
    spectrum: bool,
    device: Option<Device>,
    progress: bool,
    stop: &AtomicBool,
) -> Result<Vec<(i64, Row)>> {
    if every < 1 {
        return Err(anyhow!(BadInput(format!(
            "--every: must be >= 1, got {every}"
        ))));
    }
    let folder = RunFolder::new(dir);
    let cfg = folder.config()?;
    let device = match device {
        Some(d) => d,
        None => cfg.train.device.tch().map_err(|e| {
            anyhow!(BadInput(format!(
                "{}: config key train.device: {e} (pass --device)",
                dir.display()
            )))
        })?,
    };
    let layout = Layout::new(&Arch::from_config(&cfg));
    // Asked first: a run still training (or stopped) has no trajectory yet, and saying so
    // beats "trajectory.safetensors: no such file".
    let summary = match folder.state() {
        State::Done(s) => s,
        State::Resumable => {
            return Err(anyhow!(BadInput(format!(
                "{}: not a finished run (training, or stopped with a checkpoint); analyze measures a run once it ends: wait for it, or continue it with train --resume",
                dir.display()
            ))))
        }
        State::Broken | State::Missing => {
            let why = match folder.summary() {
                Ok(s) => format!(" (status {:?}, nothing to measure yet)", s.status),
                Err(e) => format!(" ({e:#})"),
            };
            return Err(anyhow!(BadInput(format!(
                "{}: not a finished run{why}",
                dir.display()
            ))));
        }
    };
    let saved = folder.trajectory(&layout.names)?.steps;
    let selected: Vec<i64> = saved.iter().copied().filter(|t| t % every == 0).collect();
    let (rows, _) = measure_run(
        &folder,
        &cfg,
        &summary,
        &Needs::everything(&selected, &saved, spectrum),
        device,
        progress,
        stop,
    )?;
    Ok(selected
        .iter()
        .filter_map(|t| rows.get(t).map(|r| (*t, *r)))
        .collect())
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
            ..MeasureSpec::default()
        };
        let n = Needs::of(&m, 120);
        assert_eq!(
            n.loss.iter().copied().collect::<Vec<_>>(),
            vec![0, 50, 100, 120]
        );
        assert_eq!(
            n.smoothness.iter().copied().collect::<Vec<_>>(),
            vec![0, 10, 20]
        );
        // Iteration 0 by default (the authors' plots start at range(0, max_iters, stride)[0] = 0).
        assert_eq!(
            n.condition.iter().copied().collect::<Vec<_>>(),
            vec![0, 120]
        );
        let without_init = Needs::of(
            &MeasureSpec {
                condition_at_init: false,
                ..m
            },
            120,
        );
        assert_eq!(
            without_init.condition.iter().copied().collect::<Vec<_>>(),
            vec![120]
        );
    }

    #[test]
    fn a_float64_runs_measurements_keep_values_beyond_float32_and_a_float32_value_keeps_its_digits()
    {
        let tmp = tempfile::tempdir().unwrap();
        let folder = RunFolder::new(tmp.path());
        let row = Row {
            test_loss: Some(6.6e151),
            grad_norm: Some(0.1f32 as f64),
            ..Row::default()
        };
        let rows: Rows = [(5, row)].into_iter().collect();
        write(&folder, &rows).unwrap();
        assert_eq!(read(&folder).unwrap()[&5], row);
        let text = std::fs::read_to_string(folder.measurements_path()).unwrap();
        assert!(
            text.contains(",0.1,"),
            "a float32 value is written as float32's shortest decimal: {text}"
        );
    }

    #[test]
    fn measurements_that_do_not_match_their_recorded_checksum_are_measured_again() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = RunFolder::new(tmp.path());
        let done = Summary::of_rust(Status::Completed, None, 5, 0.0, Device::Cpu);
        folder.write_summary(&done).unwrap();
        let row = Row {
            test_loss: Some(0.5),
            ..Row::default()
        };
        let rows: Rows = [(0, row), (5, row)].into_iter().collect();
        write(&folder, &rows).unwrap();
        assert_eq!(read(&folder).unwrap(), rows);
        let path = folder.measurements_path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("0.5", "0.6")).unwrap();
        assert!(read(&folder).unwrap().is_empty(), "read as not measured");
        // A file of a linattn before checksums (none recorded) is read as it is.
        folder.write_summary(&done).unwrap();
        assert_eq!(read(&folder).unwrap()[&0].test_loss, Some(0.6f32 as f64));
    }

    #[test]
    fn condition_at_adds_iterations_to_the_stride_and_drops_those_past_the_end() {
        let m = MeasureSpec {
            loss_every: 50,
            condition_every: Some(500),
            condition_at: vec![750, 1250, 5000],
            condition_at_init: true,
            ..MeasureSpec::default()
        };
        let n = Needs::of(&m, 2000);
        assert_eq!(
            n.condition.iter().copied().collect::<Vec<_>>(),
            vec![0, 500, 750, 1000, 1250, 1500, 2000]
        );
    }

    #[test]
    fn block_spectra_follow_their_stride_and_their_listed_iterations() {
        let m = MeasureSpec {
            spectrum_every: Some(500),
            spectrum_at: vec![100, 5000],
            ..MeasureSpec::default()
        };
        let n = Needs::of(&m, 1000);
        assert_eq!(
            n.spectrum.iter().copied().collect::<Vec<_>>(),
            vec![0, 100, 500, 1000]
        );
        assert!(
            n.hessian_steps().contains(&100),
            "a spectrum needs a Hessian"
        );
        assert!(Needs::of(&MeasureSpec::default(), 1000).spectrum.is_empty());
    }
}

//! Stochastic-gradient noise at initialisation (paper Fig. 2 row 2, Fig. 5, 7, 8, App. B):
//! the distribution of `‖g_B − g‖` over many batches of B prompts, where g is the gradient of
//! the mean loss over a large "full" batch.
//!
//! Drawn as the reference does (docs/spec.md, "What the paper measures"): seed both generators with
//! train.seed, initialise the model, draw ONE batch of `full_batch` prompts, then the batches
//! of B one after another. Only the computation of g is split into chunks; the draws are not.
//!
//! A fast-mode config (`train.mode: fast`) draws the same batches in the same order, and
//! computes their gradients with fast mode's arithmetic, [`PASS_BATCHES`] batches per pass at
//! the one θ (the native kernel on a CPU, the batched fast forward and autograd elsewhere):
//! each value is then the faithful one up to rounding, at a small fraction of its cost.
use crate::config::{Config, Mode};
use crate::data::Batch;
use crate::model::native::NativeFast;
use crate::model::{self, Arch, Layout};
use crate::run::io::{self as artifacts, fmt_f32};
use crate::run::protocol;
use crate::{optim, plots, BadInput};
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::Tensor;

pub const NOISE_CSV: &str = "noise.csv";
pub const NOISE_JSON: &str = "noise.json";
pub const NOISE_PNG: &str = "noise.png";

/// The quantile levels reported in `noise.json`.
pub const QUANTILES: [f64; 9] = [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0];

/// `noise.json`: summary statistics of the `samples` noise norms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoiseSummary {
    pub count: usize,
    pub batch: i64,
    pub full_batch: i64,
    pub seed: u32,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean: f64,
    /// Population standard deviation (divides by count).
    #[serde(deserialize_with = "f64_or_nan")]
    pub std: f64,
    /// Level ("0", "0.01", …, "1") → value; linear interpolation between order statistics
    /// (numpy's default).
    pub quantiles: BTreeMap<String, f64>,
    /// Pearson's kurtosis m4/m2², 3 for a normal distribution.
    #[serde(deserialize_with = "f64_or_nan")]
    pub kurtosis: f64,
    /// `kurtosis − 3`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub excess_kurtosis: f64,
    /// Hill's estimate of the tail index α from the `hill_k` largest values (smaller α =
    /// heavier tail; a normal tail gives a large α that grows with the sample).
    #[serde(deserialize_with = "f64_or_nan")]
    pub hill_tail_index: f64,
    /// k = ⌊count/10⌋, the top 10 % of the sample (at least 1; at most count−1).
    pub hill_k: usize,
    /// Seconds of the invocation that finished the measurement (a resumed one counts its own).
    pub wall_time_s: f64,
}

/// serde_json writes NaN (an estimate of too small a sample) as null; read it back as NaN.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Moments, quantiles and the Hill estimate of a sample of positive values.
pub fn summarize(values: &[f64]) -> (f64, f64, BTreeMap<String, f64>, f64, f64, usize) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let moment = |p: i32| values.iter().map(|v| (v - mean).powi(p)).sum::<f64>() / n;
    let (m2, m4) = (moment(2), moment(4));
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let pos = q * (sorted.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
    };
    let quantiles = QUANTILES
        .iter()
        .map(|&q| (format!("{q}"), quantile(q)))
        .collect();
    let (hill, k) = hill_estimator(&sorted);
    (mean, m2.sqrt(), quantiles, m4 / (m2 * m2), hill, k)
}

/// Hill's estimator on an ascending sample: `α̂ = 1 / ((1/k) Σ_{i<k} ln(X_(i) / X_(k)))` with
/// X_(0) ≥ X_(1) ≥ … the values in descending order, k = ⌊n/10⌋ clamped to [1, n−1].
/// NaN when there are fewer than two values.
pub fn hill_estimator(ascending: &[f64]) -> (f64, usize) {
    let n = ascending.len();
    if n < 2 {
        return (f64::NAN, 0);
    }
    let k = (n / 10).clamp(1, n - 1);
    let desc = |i: usize| ascending[n - 1 - i];
    let threshold = desc(k);
    let mean_log = (0..k).map(|i| (desc(i) / threshold).ln()).sum::<f64>() / k as f64;
    (1.0 / mean_log, k)
}

fn bad(msg: String) -> anyhow::Error {
    anyhow!(BadInput(msg))
}

/// The values measured so far while a measurement runs, so that a killed one resumes where it
/// stopped: g is computed again (about 1% of the work at the paper's sizes) and the stream
/// skips the batches already measured, so the result is bit-identical to an unbroken run.
pub const NOISE_PARTIAL: &str = "noise.partial.csv";

/// How many batches between two writes of [`NOISE_PARTIAL`] (about a minute for Fig. 5's model
/// on one CPU thread); Ctrl-C or SIGTERM writes it at once.
const PARTIAL_EVERY: usize = 100;

/// What [`run_noise`] ended with.
pub enum NoiseOutcome {
    Done(NoiseSummary),
    /// Stopped by the stop flag; the values so far are in [`NOISE_PARTIAL`].
    Interrupted {
        measured: usize,
    },
}

/// What the values depend on: the model, the data, the seed and device, and g's batch. A
/// partial file written under another key is not resumed from.
fn resume_key(cfg: &Config, full_batch: i64) -> Result<String> {
    let mut key = serde_json::json!({
        "model": cfg.model, "data": cfg.data, "seed": cfg.train.seed,
        "device": cfg.train.device, "full_batch": full_batch,
    });
    // Fast mode's values round otherwise; a faithful key stays what it was before fast noise.
    if cfg.train.mode == Mode::Fast {
        key["mode"] = serde_json::json!(cfg.train.mode);
        key["dtype"] = serde_json::json!(cfg.train.dtype);
    }
    Ok(format!("# {}", serde_json::to_string(&key)?))
}

/// The values of a partial file written under `key`; none when there is no such file or it was
/// written under another key (then the measurement starts over and says so).
fn read_partial(path: &Path, key: &str) -> Result<Vec<f32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut lines = text.lines();
    if lines.next() != Some(key) || lines.next() != Some("noise") {
        eprintln!(
            "noise: {} was written for another config; starting over",
            path.display()
        );
        return Ok(vec![]);
    }
    lines
        .map(|l| {
            l.parse::<f32>().map_err(|e| {
                anyhow!(BadInput(format!(
                    "{}: bad value {l:?} ({e})",
                    path.display()
                )))
            })
        })
        .collect()
}

fn csv_of(header: &str, values: &[f32]) -> String {
    let mut csv = String::with_capacity(header.len() + 12 * (values.len() + 1));
    csv.push_str(header);
    for v in values {
        csv.push_str(&fmt_f32(*v));
        csv.push('\n');
    }
    csv
}

/// `linattn noise`: writes `noise.csv`, `noise.json` and `noise.png` into `out`. Resumes from
/// the values of an interrupted measurement of the same config in `out`, and stops at the next
/// batch once `stop` is set.
pub fn run_noise(
    cfg: &Config,
    samples: i64,
    full_batch: i64,
    out: &Path,
    progress: bool,
    stop: &AtomicBool,
) -> Result<NoiseOutcome> {
    if samples < 1 {
        return Err(bad(format!("--samples: must be >= 1, got {samples}")));
    }
    if full_batch < 1 {
        return Err(bad(format!("--full-batch: must be >= 1, got {full_batch}")));
    }
    std::fs::create_dir_all(out).map_err(|e| {
        bad(format!(
            "output folder {}: cannot create it ({e})",
            out.display()
        ))
    })?;
    let started = Instant::now();
    let (key, partial) = (resume_key(cfg, full_batch)?, out.join(NOISE_PARTIAL));
    let mut noise = read_partial(&partial, &key)?;
    // A longer measurement's first values are this one's.
    noise.truncate(samples as usize);
    let save = |values: &[f32]| {
        artifacts::write_atomic(
            &partial,
            csv_of(&format!("{key}\nnoise\n"), values).as_bytes(),
        )
    };
    // Teacher (own seed) → seed(train.seed) → init → batches: the order a training run starts in.
    let device = cfg
        .train
        .device
        .tch()
        .map_err(|e| bad(format!("config key train.device: {e}")))?;
    let arch = Arch::from_config(cfg);
    let (init, mut data) = protocol::start(cfg, cfg.train.seed).into_stream(cfg, device);
    let b = cfg.data.batch;
    let chunks = (full_batch + b - 1) / b;
    let bar = crate::progress::bar((chunks + samples) as u64, "noise", progress);
    if cfg.train.mode == Mode::Fast {
        let mut passes = Passes::new(cfg, &init, device);
        // g: the chunks' gradients weighted by their share, summed in float64.
        let full = data.draw(full_batch);
        let mut g = Tensor::zeros([passes.layout.total], (tch::Kind::Double, device));
        let mut c = 0;
        while c < chunks {
            if stop.load(Ordering::Relaxed) {
                return Ok(NoiseOutcome::Interrupted {
                    measured: noise.len(),
                });
            }
            // A pass holds chunks of one length: the last one may be shorter.
            let len = b.min(full_batch - c * b);
            let k = if len < b {
                1
            } else {
                (PASS_BATCHES as i64).min(full_batch / b - c)
            };
            let pass: Vec<Batch> = (c..c + k)
                .map(|i| Batch {
                    z: full.z.narrow(0, i * b, len),
                    y_query: full.y_query.narrow(0, i * b, len),
                })
                .collect();
            let grads = passes.gradients(&pass).to_kind(tch::Kind::Double);
            g += grads.sum_dim_intlist([0i64].as_slice(), false, None::<tch::Kind>)
                * (len as f64 / full_batch as f64);
            c += k;
            bar.inc(k as u64);
        }
        let g = g.to_kind(cfg.train.dtype.kind());
        drop(full);
        data.skip(noise.len() as i64);
        bar.inc(noise.len() as u64);
        while noise.len() < samples as usize {
            if stop.load(Ordering::Relaxed) {
                save(&noise)?;
                return Ok(NoiseOutcome::Interrupted {
                    measured: noise.len(),
                });
            }
            let k = PASS_BATCHES.min(samples as usize - noise.len());
            let pass: Vec<Batch> = (0..k).map(|_| data.next_batch()).collect();
            let norms = (passes.gradients(&pass) - g.unsqueeze(0))
                .norm_scalaropt_dim(2, [1i64].as_slice(), false)
                .to_kind(tch::Kind::Float)
                .to_device(tch::Device::Cpu);
            let before = noise.len() / PARTIAL_EVERY;
            noise.extend(Vec::<f32>::try_from(&norms)?);
            if noise.len() / PARTIAL_EVERY > before {
                save(&noise)?;
            }
            bar.inc(k as u64);
        }
        bar.finish_and_clear();
        return finish(cfg, noise, full_batch, started, out, &partial);
    }
    let params: Vec<Tensor> = init
        .iter()
        .map(|p| p.to_device(device).set_requires_grad(true))
        .collect();

    // g over all `full_batch` prompts, drawn in one call per tensor as the reference does.
    // The loss is a mean over all of them, so each chunk of (up to) B prompts is weighted by
    // its share; the sum runs in the same order as PyTorch's accumulation into `.grad`.
    let full = data.draw(full_batch);
    let mut g: Option<Vec<Tensor>> = None;
    for c in 0..chunks {
        if stop.load(Ordering::Relaxed) {
            return Ok(NoiseOutcome::Interrupted {
                measured: noise.len(),
            });
        }
        let (start, len) = (c * b, b.min(full_batch - c * b));
        let chunk = Batch {
            z: full.z.narrow(0, start, len),
            y_query: full.y_query.narrow(0, start, len),
        }
        .to_device(device);
        let loss = model::loss(&arch, &params, &chunk) * (len as f64 / full_batch as f64);
        let grads = Tensor::run_backward(&[loss], &params, false, false);
        g = Some(match g {
            None => grads,
            Some(acc) => acc.iter().zip(&grads).map(|(a, x)| a + x).collect(),
        });
        bar.inc(1);
    }
    let g = g.expect("full_batch >= 1 gives at least one chunk");
    drop(full);

    data.skip(noise.len() as i64);
    bar.inc(noise.len() as u64);
    while noise.len() < samples as usize {
        if stop.load(Ordering::Relaxed) {
            save(&noise)?;
            return Ok(NoiseOutcome::Interrupted {
                measured: noise.len(),
            });
        }
        let batch = data.next_batch();
        let gb = Tensor::run_backward(
            &[model::loss(&arch, &params, &batch)],
            &params,
            false,
            false,
        );
        let diff: Vec<Tensor> = gb.iter().zip(&g).map(|(a, x)| a - x).collect();
        noise.push(optim::gradient_norm(&diff).double_value(&[]) as f32);
        if noise.len() % PARTIAL_EVERY == 0 {
            save(&noise)?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    finish(cfg, noise, full_batch, started, out, &partial)
}

/// Batches of noise gradients computed together: enough to share a pass's fixed costs and to
/// give both cores a member each, few enough to keep a pass of Fig. 5's model (L = 8, d = 20,
/// n = 60, B = 1000) within about 100 MB.
pub const PASS_BATCHES: usize = 16;

/// Fast mode's gradients at one θ for up to [`PASS_BATCHES`] batches at once: each batch is a
/// member of an ensemble whose members all sit at θ and read a stream each.
struct Passes {
    arch: Arch,
    layout: Layout,
    /// θ repeated for every member of a full pass, `[PASS_BATCHES, P]`.
    theta: Tensor,
    native: Option<NativeFast>,
}

impl Passes {
    fn new(cfg: &Config, init: &[Tensor], device: tch::Device) -> Passes {
        let arch = Arch::from_config(cfg);
        let layout = Layout::new(&arch);
        // Drawn in float32 as a training run's are, then widened for a float64 run.
        let theta = layout
            .flatten(init)
            .to_kind(cfg.train.dtype.kind())
            .to_device(device)
            .unsqueeze(0)
            .repeat([PASS_BATCHES as i64, 1]);
        let threads = (tch::get_num_threads().max(1) as usize).min(PASS_BATCHES);
        let native = NativeFast::new(&arch, PASS_BATCHES, cfg.train.dtype.kind(), device, threads);
        Passes {
            arch,
            layout,
            theta,
            native,
        }
    }

    /// The gradient of each batch's mean loss, `[K, P]`, for K = `batches.len()` batches of
    /// one size.
    fn gradients(&mut self, batches: &[Batch]) -> Tensor {
        let k = batches.len() as i64;
        let device = self.theta.device();
        let batch = Batch {
            z: Tensor::stack(&batches.iter().map(|b| &b.z).collect::<Vec<_>>(), 0),
            y_query: Tensor::stack(&batches.iter().map(|b| &b.y_query).collect::<Vec<_>>(), 0),
        }
        .to_device(device);
        let kind = self.theta.kind();
        let batch = Batch {
            z: batch.z.to_kind(kind),
            y_query: batch.y_query.to_kind(kind),
        };
        let theta = self.theta.narrow(0, 0, k);
        let rows = Tensor::arange(k, (tch::Kind::Int64, device));
        if let Some(native) = &mut self.native {
            return native.losses_and_gradients(&theta, &batch, Some(&rows)).1;
        }
        let theta = theta.detach().set_requires_grad(true);
        let losses = model::fast_losses(&self.arch, &self.layout.views(&theta), &batch, None);
        Tensor::run_backward(&[losses.sum(kind)], &[&theta], false, false)
            .pop()
            .expect("one gradient")
    }
}

/// Seconds one batch of a noise measurement of `cfg` costs on this machine (its draw and its
/// gradient, as [`run_noise`] computes them), timed over a pass after a warm-up one: what
/// `reproduce --estimate` multiplies by the batches of a noise unit.
pub fn seconds_per_batch(cfg: &Config) -> Result<f64> {
    let device = cfg
        .train
        .device
        .tch()
        .map_err(|e| bad(format!("config key train.device: {e}")))?;
    let (init, mut data) = protocol::start(cfg, cfg.train.seed).into_stream(cfg, device);
    let timed = |f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    if cfg.train.mode == Mode::Fast {
        let mut passes = Passes::new(cfg, &init, device);
        let s = timed(&mut || {
            let pass: Vec<Batch> = (0..PASS_BATCHES).map(|_| data.next_batch()).collect();
            let _ = passes.gradients(&pass).double_value(&[0, 0]);
        });
        return Ok(s / PASS_BATCHES as f64);
    }
    let arch = Arch::from_config(cfg);
    let params: Vec<Tensor> = init
        .iter()
        .map(|p| p.to_device(device).set_requires_grad(true))
        .collect();
    const BATCHES: usize = 3;
    let s = timed(&mut || {
        for _ in 0..BATCHES {
            let batch = data.next_batch();
            let gb = Tensor::run_backward(
                &[model::loss(&arch, &params, &batch)],
                &params,
                false,
                false,
            );
            let _ = optim::gradient_norm(&gb).double_value(&[]);
        }
    });
    Ok(s / BATCHES as f64)
}

/// Writes a finished measurement's files and removes the partial values.
fn finish(
    cfg: &Config,
    noise: Vec<f32>,
    full_batch: i64,
    started: Instant,
    out: &Path,
    partial: &Path,
) -> Result<NoiseOutcome> {
    let b = cfg.data.batch;
    artifacts::write_atomic(&out.join(NOISE_CSV), csv_of("noise\n", &noise).as_bytes())?;
    let values: Vec<f64> = noise.iter().map(|&v| v as f64).collect();
    let (mean, std, quantiles, kurtosis, hill_tail_index, hill_k) = summarize(&values);
    let summary = NoiseSummary {
        count: values.len(),
        batch: b,
        full_batch,
        seed: cfg.train.seed,
        mean,
        std,
        quantiles,
        kurtosis,
        excess_kurtosis: kurtosis - 3.0,
        hill_tail_index,
        hill_k,
        wall_time_s: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&summary)? + "\n";
    artifacts::write_atomic(&out.join(NOISE_JSON), json.as_bytes())?;
    // Short enough for one panel's width.
    let title = format!(
        "noise at init, L={} n={} seed {}",
        cfg.model.layers, cfg.data.context, cfg.train.seed
    );
    let panel = plots::HistogramPanel {
        title,
        x_label: "‖g_B − g‖".into(),
        values: values.clone(),
        bins: 100,
        qq_inset: true,
    };
    plots::histogram(&out.join(NOISE_PNG), &panel)?;
    // noise.json marks the measurement done, so the partial values are no longer needed.
    std::fs::remove_file(partial)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
        .with_context(|| format!("removing {}", partial.display()))?;
    Ok(NoiseOutcome::Done(summary))
}

/// The noise of a folder written by [`run_noise`]: the values and their summary; None when the
/// folder holds no complete measurement (`noise.json` is written after `noise.csv`).
pub fn read(dir: &Path) -> Result<Option<(Vec<f64>, NoiseSummary)>> {
    let json = dir.join(NOISE_JSON);
    if !json.exists() {
        return Ok(None);
    }
    let summary: NoiseSummary = serde_json::from_str(&std::fs::read_to_string(&json)?)
        .with_context(|| format!("reading {}", json.display()))?;
    let csv = dir.join(NOISE_CSV);
    let text =
        std::fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
    let values = text
        .lines()
        .skip(1)
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .collect();
    Ok(Some((values, summary)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hill_estimator_recovers_the_index_of_a_pareto_sample() {
        // Exact Pareto(α=2) quantiles: x = (1 − u)^(−1/α) on a fine grid.
        let n = 100_000;
        let xs: Vec<f64> = (0..n)
            .map(|i| (1.0 - (i as f64 + 0.5) / n as f64).powf(-0.5))
            .collect();
        let (alpha, k) = hill_estimator(&xs);
        assert_eq!(k, n / 10);
        assert!((alpha - 2.0).abs() < 0.02, "alpha {alpha}");
    }

    #[test]
    fn summary_of_a_small_sample_matches_hand_computation() {
        let (mean, std, q, kurt, _, _) = summarize(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean, 2.5);
        assert!((std - 1.25f64.sqrt()).abs() < 1e-15);
        assert_eq!(q["0.5"], 2.5);
        assert_eq!(q["0.25"], 1.75);
        assert_eq!((q["0"], q["1"]), (1.0, 4.0));
        // m4 = (2·1.5⁴ + 2·0.5⁴)/4 = 2.5625; m2² = 1.5625.
        assert!((kurt - 2.5625 / 1.5625).abs() < 1e-12);
    }
}

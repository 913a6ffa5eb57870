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
use crate::data::{Batch, DataStream};
use crate::model::native::NativeFast;
use crate::model::{self, Arch, Layout};
use crate::run::noise::NoiseFolder;
use crate::run::protocol;
use crate::run::RunFolder;
use crate::{optim, plots};
use anyhow::Result;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::Tensor;

pub use crate::run::noise::{read, NoiseSummary, NOISE_CSV};
use crate::stats::{hill_estimator, quantile};

/// The quantile levels reported in `noise.json`.
pub const QUANTILES: [f64; 9] = [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0];

/// `noise.json` of a sample of positive values (the noise norms of `batch`-prompt batches
/// against a `full_batch` gradient): moments, quantiles and the Hill estimate.
pub fn summarize(
    values: &[f64],
    batch: i64,
    full_batch: i64,
    seed: u32,
    wall_time_s: f64,
) -> NoiseSummary {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let moment = |p: i32| values.iter().map(|v| (v - mean).powi(p)).sum::<f64>() / n;
    let (m2, m4) = (moment(2), moment(4));
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let quantiles = QUANTILES
        .iter()
        .map(|&q| (format!("{q}"), quantile(&sorted, q)))
        .collect();
    let (hill_tail_index, hill_k) = hill_estimator(&sorted);
    let kurtosis = m4 / (m2 * m2);
    NoiseSummary {
        count: values.len(),
        batch,
        full_batch,
        seed,
        mean,
        std: m2.sqrt(),
        quantiles,
        kurtosis,
        excess_kurtosis: kurtosis - 3.0,
        hill_tail_index,
        hill_k,
        wall_time_s,
        sha256: None,
    }
}

use crate::bad_input as bad;

/// How many batches between two writes of the partial file (about a minute for Fig. 5's model
/// on one CPU thread); Ctrl-C or SIGTERM writes it at once.
const PARTIAL_EVERY: usize = 100;

/// `--samples` and `--full-batch`, checked before any folder is touched.
fn check_counts(cfg: &Config, samples: i64, full_batch: i64) -> Result<()> {
    if samples < 1 {
        return Err(bad(format!("--samples: must be >= 1, got {samples}")));
    }
    if full_batch < cfg.data.batch {
        return Err(bad(format!(
            "--full-batch: g needs at least one batch of data.batch = {} prompts, got {full_batch}",
            cfg.data.batch
        )));
    }
    Ok(())
}

/// `linattn noise`: [`run_noise`] into a folder of its own, locked while it runs (a second
/// process into the same folder is refused). A finished measurement is replaced only with
/// `force`; a partial one is continued.
pub fn measure_into(
    cfg: &Config,
    samples: i64,
    full_batch: i64,
    out: &Path,
    force: bool,
    progress: bool,
    stop: &AtomicBool,
) -> Result<NoiseOutcome> {
    check_counts(cfg, samples, full_batch)?;
    let folder = RunFolder::new(out);
    if folder.has_config() {
        return Err(bad(format!(
            "output folder {}: holds a training run; give the noise measurement a folder of its own",
            out.display()
        )));
    }
    let _lock = folder.lock()?;
    let noise = NoiseFolder::new(out);
    if noise.read()?.is_some() {
        if !force {
            return Err(bad(format!(
                "output folder {}: already holds a finished noise measurement; pass --force to replace it",
                out.display()
            )));
        }
        noise.clear();
    }
    run_noise(cfg, samples, full_batch, out, progress, stop)
}

/// What [`run_noise`] ended with.
pub enum NoiseOutcome {
    Done(NoiseSummary),
    /// Stopped by the stop flag; the values so far are in the partial file.
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
    check_counts(cfg, samples, full_batch)?;
    std::fs::create_dir_all(out).map_err(|e| {
        bad(format!(
            "output folder {}: cannot create it ({e})",
            out.display()
        ))
    })?;
    let started = Instant::now();
    let (key, folder) = (resume_key(cfg, full_batch)?, NoiseFolder::new(out));
    let mut noise = folder.read_partial(&key)?;
    // A longer measurement's first values are this one's.
    noise.truncate(samples as usize);
    // Teacher (own seed) → seed(train.seed) → init → batches: the order a training run starts in.
    let device = cfg.device()?;
    let (init, mut data) = protocol::start(cfg, cfg.train.seed).into_stream(cfg, device);
    let chunks = (full_batch + cfg.data.batch - 1) / cfg.data.batch;
    let mut m = Measuring {
        samples: samples as usize,
        full_batch,
        chunks,
        noise,
        folder,
        key,
        bar: crate::progress::bar((chunks + samples) as u64, "noise", progress),
        stop,
    };
    let done = if cfg.train.mode == Mode::Fast {
        fast_noise(&mut m, cfg, &init, &mut data, device)?
    } else {
        faithful_noise(&mut m, cfg, &init, &mut data, device)?
    };
    if !done {
        return Ok(NoiseOutcome::Interrupted {
            measured: m.noise.len(),
        });
    }
    m.bar.finish_and_clear();
    finish(cfg, m.noise, full_batch, started, &m.folder)
}

/// A measurement under way: the values so far and where they are kept.
struct Measuring<'a> {
    samples: usize,
    full_batch: i64,
    /// Chunks of up to B prompts that g is computed in.
    chunks: i64,
    noise: Vec<f32>,
    folder: NoiseFolder,
    key: String,
    bar: indicatif::ProgressBar,
    stop: &'a AtomicBool,
}

impl Measuring<'_> {
    /// Whether Ctrl-C/SIGTERM asked to stop; the values so far are saved first with `save`
    /// (while g is computed there is nothing new to save).
    fn stopped(&self, save: bool) -> Result<bool> {
        if !self.stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        if save {
            self.folder.write_partial(&self.key, &self.noise)?;
        }
        Ok(true)
    }

    /// Adds values; the partial file is written whenever their count passes a multiple of
    /// [`PARTIAL_EVERY`].
    fn extend(&mut self, values: Vec<f32>) -> Result<()> {
        let before = self.noise.len() / PARTIAL_EVERY;
        let added = values.len() as u64;
        self.noise.extend(values);
        if self.noise.len() / PARTIAL_EVERY > before {
            self.folder.write_partial(&self.key, &self.noise)?;
        }
        self.bar.inc(added);
        Ok(())
    }

    /// Skips the batches measured before (a resumed measurement).
    fn skip_measured(&self, data: &mut DataStream) {
        data.skip(self.noise.len() as i64);
        self.bar.inc(self.noise.len() as u64);
    }
}

/// Fast mode: g and the noise from [`PASS_BATCHES`] batches per pass. False when stopped.
fn fast_noise(
    m: &mut Measuring,
    cfg: &Config,
    init: &[Tensor],
    data: &mut DataStream,
    device: tch::Device,
) -> Result<bool> {
    let (b, full_batch) = (cfg.data.batch, m.full_batch);
    let mut passes = Passes::new(cfg, init, device);
    // g: the chunks' gradients weighted by their share, summed in float64.
    let full = data.draw(full_batch);
    let mut g = Tensor::zeros([passes.layout.total], (tch::Kind::Double, device));
    let mut c = 0;
    while c < m.chunks {
        if m.stopped(false)? {
            return Ok(false);
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
        m.bar.inc(k as u64);
    }
    let g = g.to_kind(cfg.train.dtype.kind());
    drop(full);
    m.skip_measured(data);
    while m.noise.len() < m.samples {
        if m.stopped(true)? {
            return Ok(false);
        }
        let k = PASS_BATCHES.min(m.samples - m.noise.len());
        let pass: Vec<Batch> = (0..k).map(|_| data.next_batch()).collect();
        let norms = (passes.gradients(&pass) - g.unsqueeze(0))
            .norm_scalaropt_dim(2, [1i64].as_slice(), false)
            .to_kind(tch::Kind::Float)
            .to_device(tch::Device::Cpu);
        m.extend(Vec::<f32>::try_from(&norms)?)?;
    }
    Ok(true)
}

/// Faithful mode: g and each batch's gradient by autograd, one at a time, as the reference
/// does. False when stopped.
fn faithful_noise(
    m: &mut Measuring,
    cfg: &Config,
    init: &[Tensor],
    data: &mut DataStream,
    device: tch::Device,
) -> Result<bool> {
    let (b, full_batch) = (cfg.data.batch, m.full_batch);
    let arch = Arch::from_config(cfg);
    let params: Vec<Tensor> = init
        .iter()
        .map(|p| p.to_device(device).set_requires_grad(true))
        .collect();
    // g over all `full_batch` prompts, drawn in one call per tensor as the reference does.
    // The loss is a mean over all of them, so each chunk of (up to) B prompts is weighted by
    // its share; the sum runs in the same order as PyTorch's accumulation into `.grad`.
    let full = data.draw(full_batch);
    let mut g: Option<Vec<Tensor>> = None;
    for c in 0..m.chunks {
        if m.stopped(false)? {
            return Ok(false);
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
        m.bar.inc(1);
    }
    let g = g.expect("full_batch >= 1 gives at least one chunk");
    drop(full);
    m.skip_measured(data);
    while m.noise.len() < m.samples {
        if m.stopped(true)? {
            return Ok(false);
        }
        let batch = data.next_batch();
        let gb = Tensor::run_backward(
            &[model::loss(&arch, &params, &batch)],
            &params,
            false,
            false,
        );
        let diff: Vec<Tensor> = gb.iter().zip(&g).map(|(a, x)| a - x).collect();
        m.extend(vec![optim::gradient_norm(&diff).double_value(&[]) as f32])?;
    }
    Ok(true)
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
    let device = cfg.device()?;
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
    folder: &NoiseFolder,
) -> Result<NoiseOutcome> {
    let values: Vec<f64> = noise.iter().map(|&v| v as f64).collect();
    let summary = summarize(
        &values,
        cfg.data.batch,
        full_batch,
        cfg.train.seed,
        started.elapsed().as_secs_f64(),
    );
    folder.write_finished(&noise, &summary)?;
    // Short enough for one panel's width.
    let title = format!(
        "noise at init, L={} n={} seed {}",
        cfg.model.layers, cfg.data.context, cfg.train.seed
    );
    let panel = plots::HistogramPanel {
        title,
        x_label: "‖g_B − g‖".into(),
        values,
        bins: 100,
        qq_inset: true,
    };
    plots::histogram(&folder.png_path(), &panel)?;
    // noise.json marks the measurement done, so the partial values are no longer needed.
    folder.remove_partial()?;
    Ok(NoiseOutcome::Done(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_small_sample_matches_hand_computation() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0], 10, 100, 1, 0.0);
        let (q, kurt) = (&s.quantiles, s.kurtosis);
        assert_eq!((s.count, s.mean), (4, 2.5));
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-15);
        assert_eq!(q["0.5"], 2.5);
        assert_eq!(q["0.25"], 1.75);
        assert_eq!((q["0"], q["1"]), (1.0, 4.0));
        // m4 = (2·1.5⁴ + 2·0.5⁴)/4 = 2.5625; m2² = 1.5625.
        assert!((kurt - 2.5625 / 1.5625).abs() < 1e-12);
    }
}

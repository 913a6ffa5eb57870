//! The in-context regression data of paper Table 1: `normal`, `sphere`, `gamma` (heavy-tailed)
//! and `mlp_teacher` (App. B), drawn in the authors' order.
//!
//! The order in which random numbers are drawn is part of the replication: it is what makes a
//! Rust run bit-identical to the PyTorch one on CPU (docs/spec.md, "The reference protocol",
//! and docs/conventions.md). Every draw of data goes through this module; the seeds come from
//! [`crate::rng`].
use crate::config::{Config, DataConfig, Setting};
use crate::mlp::Mlp;
use crate::rng::{self, LegacyRandomState};
use tch::{Device, Kind, Tensor};

/// One batch of B prompts: `z` is `[B, n+1, d+1]` (rows `[x_i, y_i]`, last row `[x_query, 0]`),
/// `y_query` is `[B]`.
pub struct Batch {
    pub z: Tensor,
    pub y_query: Tensor,
}

impl Batch {
    pub fn to_device(&self, device: Device) -> Batch {
        Batch {
            z: self.z.to_device(device),
            y_query: self.y_query.to_device(device),
        }
    }

    /// The batch in `kind` (the same tensors, not a copy, when it already is).
    pub fn to_kind(self, kind: Kind) -> Batch {
        if self.z.kind() == kind {
            return self;
        }
        Batch {
            z: self.z.to_kind(kind),
            y_query: self.y_query.to_kind(kind),
        }
    }
}

/// An endless stream of fresh batches, one per iteration.
pub struct DataStream {
    cfg: DataConfig,
    dim: i64,
    numpy: LegacyRandomState,
    teacher: Option<Mlp>,
    device: Device,
    /// The fixed training set of `data.train_prompts` (on the CPU), once drawn.
    set: Option<Batch>,
}

impl DataStream {
    /// `numpy` is the generator returned by [`rng::seed_both`] for this run; the torch CPU
    /// generator is the one that was seeded with it.
    pub fn new(
        cfg: &Config,
        teacher: Option<Mlp>,
        numpy: LegacyRandomState,
        device: Device,
    ) -> Self {
        DataStream {
            cfg: cfg.data.clone(),
            dim: cfg.model.dim,
            numpy,
            teacher,
            device,
            set: None,
        }
    }

    /// The batch of training iteration `iter`: the next fresh batch (the paper's protocol), or
    /// with `data.train_prompts: N` the prompts (iter·B + i) mod N, i < B, of the training
    /// set, drawn as one batch of N prompts at the first call (where the paper's protocol
    /// draws the first batch: with N = B the set is that batch).
    pub fn training_batch(&mut self, iter: i64) -> Batch {
        let (n_set, b) = (self.cfg.train_prompts, self.cfg.batch);
        if n_set == 0 {
            return self.next_batch();
        }
        let set = self.training_set();
        let at = Tensor::arange_start(iter * b, iter * b + b, (Kind::Int64, Device::Cpu))
            .remainder(n_set);
        Batch {
            z: set.z.index_select(0, &at),
            y_query: set.y_query.index_select(0, &at),
        }
        .to_device(self.device)
    }

    /// The training set, drawn at the first call.
    fn training_set(&mut self) -> &Batch {
        if self.set.is_none() {
            self.set = Some(self.draw(self.cfg.train_prompts));
        }
        self.set.as_ref().expect("just drawn")
    }

    /// Stands the training stream where an uninterrupted run has it after `iters` iterations
    /// ([`DataStream::training_batch`]): past `iters` fresh batches, or past the set's draw.
    pub fn skip_training(&mut self, iters: i64) {
        match self.cfg.train_prompts {
            0 => self.skip(iters),
            _ if iters > 0 => {
                self.training_set();
            }
            _ => {}
        }
    }

    /// Draws the next batch of `batch` prompts on the CPU generators and moves it to the
    /// device (the faithful protocol).
    pub fn next_batch(&mut self) -> Batch {
        self.draw(self.cfg.batch).to_device(self.device)
    }

    /// Advances the stream past `iters` batches by drawing and discarding them: the
    /// generators then stand exactly where an uninterrupted run would have them.
    pub fn skip(&mut self, iters: i64) {
        for _ in 0..iters {
            let _ = self.draw(self.cfg.batch);
        }
    }

    /// Draws `b` prompts in the reference order. Everything here runs on the CPU so that the
    /// numbers do not depend on the training device.
    pub fn draw(&mut self, b: i64) -> Batch {
        let (n, d) = (self.cfg.context, self.dim);
        let normal =
            |shape: &[i64]| Tensor::empty(shape, (Kind::Float, Device::Cpu)).normal_(0.0, 1.0);
        // Linear settings draw W, X, X_query; the MLP experiments draw X, X_query, W.
        let (w, mut x, mut xq) = if self.cfg.setting == Setting::MlpTeacher {
            let x = normal(&[b, n, d]);
            let xq = normal(&[b, 1, d]);
            (normal(&[b, d]), x, xq)
        } else {
            let w = normal(&[b, d]);
            let x = normal(&[b, n, d]);
            (w, x, normal(&[b, 1, d]))
        };
        match self.cfg.setting {
            Setting::Normal | Setting::MlpTeacher => {}
            Setting::Sphere => {
                x = unit_rows(&x);
                xq = unit_rows(&xq);
            }
            Setting::Gamma => {
                // Radii² ~ Gamma(k, √(10/k)) from numpy's legacy sampler, after the torch draws.
                let k = self.cfg.gamma_shape;
                let scale = (10.0 / k).sqrt();
                let g = self.gamma_tensor(k, scale, &[b, n]);
                let gq = self.gamma_tensor(k, scale, &[b, 1]);
                x = unit_rows(&x) * g.sqrt().unsqueeze(-1);
                xq = unit_rows(&xq) * gq.sqrt().unsqueeze(-1);
            }
        }
        let (features, features_q) = match &self.teacher {
            Some(t) => (t.forward(&x), t.forward(&xq)),
            None => (x.shallow_clone(), xq.shallow_clone()),
        };
        let y = Tensor::einsum("bni,bi->bn", &[&features, &w], None::<i64>);
        let y_query = Tensor::einsum("bni,bi->bn", &[&features_q, &w], None::<i64>).select(1, 0);
        let tokens = Tensor::cat(&[x, y.unsqueeze(-1)], -1);
        let query = Tensor::cat(
            &[xq, Tensor::zeros([b, 1, 1], (Kind::Float, Device::Cpu))],
            -1,
        );
        Batch {
            z: Tensor::cat(&[tokens, query], 1),
            y_query,
        }
    }

    fn gamma_tensor(&mut self, shape: f64, scale: f64, size: &[i64]) -> Tensor {
        let count = size.iter().product::<i64>() as usize;
        // numpy draws float64; the authors cast to float32 (round to nearest), as `as f32` does.
        let values: Vec<f32> = self
            .numpy
            .gamma_fill(shape, scale, count)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        Tensor::from_slice(&values).reshape(size)
    }
}

fn unit_rows(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1i64].as_slice(), true)
}

/// The evaluation batch: B prompts drawn once after re-seeding both generators with
/// `eval_seed` (the teacher, if any, is built first with its own seed).
pub fn eval_batch(cfg: &Config, device: Device) -> Batch {
    let teacher =
        (cfg.data.setting == Setting::MlpTeacher).then(|| Mlp::teacher(&cfg.data, cfg.model.dim));
    let numpy = rng::seed_both(cfg.data.eval_seed);
    DataStream::new(cfg, teacher, numpy, device)
        .next_batch()
        .to_kind(cfg.train.dtype.kind())
}

/// The fast mode's data: one stream per seed, drawn on the training device.
///
/// The reference protocol draws every batch on the CPU generator and copies it to the device;
/// fast mode does not reproduce that stream. A stream is a function of (seed, iteration) only,
/// so it does not depend on which other streams are drawn beside it (an ensemble member sees
/// exactly the batches of the solo fast run with its seed), and a resumed run continues it from
/// the iteration alone.
///
/// Per prompt the normal draws fill `[w; x_1 … x_n; x_query]` (n+2 rows of d) in one call;
/// `sphere` and `gamma` then put the covariates on the sphere, and `gamma` scales them by radii
/// drawn with libtorch's `_standard_gamma` after [`rng::seed_stream`].
/// - On the CPU the normals are linattn's own Philox generator ([`rng::normal`]), and the
///   setting's transform runs on the host: the native kernel reads the rows where they were
///   drawn ([`DeviceStream::host_rows`]).
/// - On a GPU they are libtorch's `normal_` on the device after [`rng::seed_stream`], and the
///   transform is tensor operations.
pub struct DeviceStream {
    cfg: DataConfig,
    dim: i64,
    seeds: Vec<u32>,
    teacher: Option<Mlp>,
    /// The teacher's parameters on the host, for the native kernel ([`HostTeacher`]).
    host_teacher: Option<(usize, Vec<f32>)>,
    draws: Draws,
    /// `[B, n+1]` filled with the gamma shape k: the argument of `_standard_gamma`.
    gamma_shape: Option<Tensor>,
    /// The run's `train.dtype`: batches are drawn in float32 (the same numbers whatever the
    /// dtype) and then converted.
    kind: Kind,
    /// The fixed training set of `data.train_prompts`, once drawn: `[U, N, n+2, d]` rows.
    set: Option<PromptSet>,
}

/// A fast run's training set: per stream the N prompts of its first ⌈N/B⌉ iterations' draws.
enum PromptSet {
    Host(Vec<f32>),
    Device(Tensor),
}

enum Draws {
    /// `[U, B, n+2, d]` rows in float32 and the iteration they hold (`None`: none yet); the
    /// squared radii of `gamma` are copied through `radii2`.
    Host {
        rows: Vec<f32>,
        iter: Option<i64>,
        radii2: Vec<f32>,
    },
    /// `[U, B, n+2, d]` on the device, refilled in place for every batch.
    Device { normals: Tensor },
}

/// The prompt rows of one iteration of every stream, where they were drawn on the host:
/// `[streams, prompts, n+2, d]` in float32, the setting's transform applied; with the teacher
/// of `mlp_teacher`, whose features make the labels `y_t = ⟨w, φ*(x_t)⟩`.
pub struct HostRows<'a> {
    pub rows: &'a [f32],
    pub streams: usize,
    pub prompts: usize,
    pub teacher: Option<HostTeacher<'a>>,
}

/// The teacher φ* of `mlp_teacher` in float32 on the host: `w0 [h, d]`, `b0 [h]`,
/// `w2 [d, h]`, `b2 [d]` flattened in that order, h = `hidden`.
#[derive(Clone, Copy)]
pub struct HostTeacher<'a> {
    pub hidden: usize,
    pub params: &'a [f32],
}

impl DeviceStream {
    /// One stream per seed, `batch` prompts each. `teacher` (for `mlp_teacher`) is moved to
    /// `device`.
    pub fn new(cfg: &Config, seeds: &[u32], teacher: Option<Mlp>, device: Device) -> DeviceStream {
        let (b, n, d) = (cfg.data.batch, cfg.data.context, cfg.model.dim);
        let opts = (Kind::Float, device);
        let teacher = teacher.map(|t| t.to_device(device));
        let host_teacher = teacher.as_ref().filter(|_| device == Device::Cpu).map(|t| {
            let parts = [&t.w0, &t.b0, &t.w2, &t.b2];
            let flat = Tensor::cat(&parts.map(|p| p.to_kind(Kind::Float).view(-1)), 0);
            let params = Vec::<f32>::try_from(&flat).expect("a float32 teacher");
            (t.b0.size()[0] as usize, params)
        });
        let shape = [seeds.len() as i64, b, n + 2, d];
        let draws = if device == Device::Cpu {
            Draws::Host {
                rows: vec![0.0; shape.iter().product::<i64>() as usize],
                iter: None,
                radii2: Vec::new(),
            }
        } else {
            Draws::Device {
                normals: Tensor::empty(shape, opts),
            }
        };
        DeviceStream {
            cfg: cfg.data.clone(),
            dim: d,
            seeds: seeds.to_vec(),
            teacher,
            host_teacher,
            draws,
            gamma_shape: (cfg.data.setting == Setting::Gamma)
                .then(|| Tensor::full([b, n + 1], cfg.data.gamma_shape, opts)),
            kind: cfg.train.dtype.kind(),
            set: None,
        }
    }

    /// The batches of iteration `iter` of every stream: `z [U, B, n+1, d+1]`, `y_query [U, B]`.
    pub fn batch(&mut self, iter: i64) -> Batch {
        let (n, d) = (self.cfg.context, self.dim);
        let (w, x) = self.covariates(iter);
        let features = match &self.teacher {
            Some(t) => t.forward(&x),
            None => x.shallow_clone(),
        };
        let y = (features * &w).sum_dim_intlist([-1i64].as_slice(), true, None::<Kind>); // [U, B, n+1, 1]
        let z = Tensor::cat(&[&x, &y], -1);
        let _ = z.select(2, n).select(-1, d).fill_(0.0);
        Batch {
            z,
            y_query: y.select(2, n).squeeze_dim(-1),
        }
        .to_kind(self.kind)
    }

    /// Per prompt the rows `[w; x_1 … x_n; x_query]` of iteration `iter` on the host, the
    /// setting's transform applied: [`DeviceStream::batch`] is these rows with `y_i = x_i · w`.
    /// For the native kernel, which forms y (through the teacher's features, for
    /// `mlp_teacher`) and G itself. `None` on a GPU, or where the run is not in float32 (its
    /// batch forms y in float32 before widening).
    pub fn host_rows(&mut self, iter: i64) -> Option<HostRows<'_>> {
        if self.kind != Kind::Float {
            return None;
        }
        self.draw_host(iter);
        let (streams, prompts) = (self.seeds.len(), self.cfg.batch as usize);
        match &self.draws {
            Draws::Host { rows, .. } => Some(HostRows {
                rows,
                streams,
                prompts,
                teacher: self
                    .host_teacher
                    .as_ref()
                    .map(|(hidden, params)| HostTeacher {
                        hidden: *hidden,
                        params,
                    }),
            }),
            Draws::Device { .. } => None,
        }
    }

    /// Fills the host rows with iteration `iter`'s prompts, unless they already hold it: fresh
    /// draws, or with `data.train_prompts: N` the prompts (iter·B + i) mod N of the training
    /// set (per stream the prompts of its first ⌈N/B⌉ iterations, in order).
    fn draw_host(&mut self, iter: i64) {
        let n_set = self.cfg.train_prompts as usize;
        if n_set == 0 {
            return self.draw_fresh(iter);
        }
        if matches!(&self.draws, Draws::Host { iter: held, .. } if *held == Some(iter)) {
            return;
        }
        let (b, per) = (
            self.cfg.batch as usize,
            (self.cfg.context as usize + 2) * self.dim as usize,
        );
        let streams = self.seeds.len();
        if self.set.is_none() {
            let mut set = vec![0.0f32; streams * n_set * per];
            for chunk in 0..n_set.div_ceil(b) {
                self.draw_fresh(chunk as i64);
                let Draws::Host { rows, .. } = &self.draws else {
                    return;
                };
                let take = b.min(n_set - chunk * b);
                for u in 0..streams {
                    let to = (u * n_set + chunk * b) * per;
                    set[to..to + take * per].copy_from_slice(&rows[u * b * per..][..take * per]);
                }
            }
            self.set = Some(PromptSet::Host(set));
        }
        let (
            Some(PromptSet::Host(set)),
            Draws::Host {
                rows, iter: held, ..
            },
        ) = (&self.set, &mut self.draws)
        else {
            return;
        };
        for u in 0..streams {
            for i in 0..b {
                let from = (u * n_set + (iter as usize * b + i) % n_set) * per;
                rows[(u * b + i) * per..][..per].copy_from_slice(&set[from..from + per]);
            }
        }
        *held = Some(iter);
    }

    /// Draws iteration `iter` of the streams into the host rows, unless they already hold it.
    fn draw_fresh(&mut self, iter: i64) {
        let (b, n, d) = (
            self.cfg.batch as usize,
            self.cfg.context as usize,
            self.dim as usize,
        );
        let Draws::Host {
            rows,
            iter: held,
            radii2,
        } = &mut self.draws
        else {
            return;
        };
        if *held == Some(iter) {
            return;
        }
        let per_stream = b * (n + 2) * d;
        for (u, &seed) in self.seeds.iter().enumerate() {
            let stream = &mut rows[u * per_stream..(u + 1) * per_stream];
            rng::normal::fill(seed, iter, stream);
            // Exhaustive, so that a new setting cannot compile into the sphere's projection.
            match self.cfg.setting {
                Setting::Normal | Setting::MlpTeacher => continue,
                Setting::Sphere | Setting::Gamma => {}
            }
            if let Some(k) = &self.gamma_shape {
                rng::seed_stream(seed, iter);
                radii2.resize(b * (n + 1), 0.0);
                k.internal_standard_gamma().copy_data(radii2, b * (n + 1));
            }
            // Gamma(k, scale) = scale · Gamma(k, 1); the radius is its square root.
            let scale = (10.0 / self.cfg.gamma_shape).sqrt() as f32;
            for (p, prompt) in stream.chunks_mut((n + 2) * d).enumerate() {
                // Row 0 is w; rows 1..=n+1 are the covariates, each put on the sphere.
                for (t, x) in prompt.chunks_mut(d).skip(1).enumerate() {
                    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let radius = match self.cfg.setting {
                        Setting::Gamma => (radii2[p * (n + 1) + t] * scale).sqrt(),
                        Setting::Sphere => 1.0,
                        Setting::Normal | Setting::MlpTeacher => unreachable!("left above"),
                    };
                    x.iter_mut().for_each(|v| *v = *v / norm * radius);
                }
            }
        }
        *held = Some(iter);
    }

    /// The draws of iteration `iter`: `w [U, B, 1, d]` and the covariates `x [U, B, n+1, d]`
    /// (context rows and the query row), transformed as the setting says; from the training set
    /// where `data.train_prompts` is set.
    fn covariates(&mut self, iter: i64) -> (Tensor, Tensor) {
        if self.cfg.train_prompts > 0 && matches!(self.draws, Draws::Device { .. }) {
            let n = self.cfg.context;
            let rows = self.device_set_rows(iter);
            return (rows.narrow(2, 0, 1), rows.narrow(2, 1, n + 1));
        }
        self.covariates_fresh(iter)
    }

    /// [`DeviceStream::covariates`] of fresh draws (on the host: whatever
    /// [`DeviceStream::draw_host`] holds).
    fn covariates_fresh(&mut self, iter: i64) -> (Tensor, Tensor) {
        let (b, n, d) = (self.cfg.batch, self.cfg.context, self.dim);
        self.draw_host(iter);
        let rows = match &self.draws {
            Draws::Host { rows, .. } => {
                Tensor::from_slice(rows).view([self.seeds.len() as i64, b, n + 2, d])
            }
            Draws::Device { normals } => {
                let mut radii2 = Vec::new();
                for (u, &seed) in self.seeds.iter().enumerate() {
                    rng::seed_stream(seed, iter);
                    let _ = normals.get(u as i64).normal_(0.0, 1.0);
                    if let Some(k) = &self.gamma_shape {
                        radii2.push(k.internal_standard_gamma());
                    }
                }
                let w = normals.narrow(2, 0, 1);
                let mut x = normals.narrow(2, 1, n + 1);
                match self.cfg.setting {
                    Setting::Normal | Setting::MlpTeacher => {}
                    Setting::Sphere => x = unit_rows(&x),
                    Setting::Gamma => {
                        let scale = (10.0 / self.cfg.gamma_shape).sqrt();
                        let radii = (Tensor::stack(&radii2, 0) * scale).sqrt().unsqueeze(-1);
                        x = unit_rows(&x) * radii;
                    }
                }
                return (w, x);
            }
        };
        (rows.narrow(2, 0, 1), rows.narrow(2, 1, n + 1))
    }

    /// On a GPU, the rows `[U, B, n+2, d]` of iteration `iter` from the training set (drawn at
    /// the first call from the first ⌈N/B⌉ iterations, as on the host).
    fn device_set_rows(&mut self, iter: i64) -> Tensor {
        let (n_set, b) = (self.cfg.train_prompts, self.cfg.batch);
        if self.set.is_none() {
            let parts: Vec<Tensor> = (0..(n_set + b - 1) / b)
                .map(|chunk| {
                    let (w, x) = self.covariates_fresh(chunk);
                    Tensor::cat(&[w, x], 2)
                })
                .collect();
            self.set = Some(PromptSet::Device(
                Tensor::cat(&parts, 1).narrow(1, 0, n_set),
            ));
        }
        let Some(PromptSet::Device(set)) = &self.set else {
            unreachable!("a GPU stream's set is on the device")
        };
        let at = Tensor::arange_start(iter * b, iter * b + b, (Kind::Int64, set.device()))
            .remainder(n_set);
        set.index_select(1, &at)
    }
}

//! The ensemble stepper: K runs of one setting (seeds × optimizers × learning rates) as one
//! computation on one device. This is how fast mode trains, alone (K = 1) or as an ensemble.
//!
//! Why: a run of the paper's model is thousands of tiny operations per step, so its cost is the
//! overhead per operation, not arithmetic. Giving every parameter a leading member axis K makes
//! one operation do the work of K runs.
//!
//! Each member keeps what makes it a run of its own: its data stream (its seed, see
//! [`DeviceStream`]), its initial parameters (drawn exactly as the faithful run with that seed
//! draws them, [`protocol::start`]), its optimizer, learning rate and optimizer state. Members
//! never mix: every operation acts on each member's slice alone, so a member that stops
//! updating (a skipped or diverged step) leaves the others as they were. Within a step nothing
//! is read back to the host.
use super::driver::{Gradients, Shape, Stepper};
use crate::config::{Config, Mode, OptimizerKind};
use crate::data::{Batch, DeviceStream};
use crate::model::native::NativeFast;
use crate::model::{self, Arch, Layout};
use crate::optim::ensemble::EnsembleOptimizer;
use crate::run::protocol;
use crate::BadInput;
use anyhow::{anyhow, Result};
use tch::{Device, Tensor};

/// One run of an ensemble: what differs between the runs of one setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    pub seed: u32,
    pub optimizer: OptimizerKind,
    pub lr: f64,
}

impl Member {
    /// The run that `cfg` describes on its own.
    pub fn from_config(cfg: &Config) -> Member {
        Member {
            seed: cfg.train.seed,
            optimizer: cfg.train.optimizer,
            lr: cfg.train.lr,
        }
    }

    /// The resolved config of this member's run folder: `cfg` with this member's seed,
    /// optimizer and learning rate, in fast mode (its data stream and arithmetic are fast
    /// mode's, so `linattn train` on this config repeats the run). The ensemble's
    /// `train.weight_decay` applies to the members whose optimizer has one; the others' configs
    /// say 0.
    pub fn config(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        c.train.seed = self.seed;
        c.train.optimizer = self.optimizer;
        c.train.lr = self.lr;
        if !self.optimizer.decays() {
            c.train.weight_decay = 0.0;
        }
        c.train.mode = Mode::Fast;
        c
    }
}

/// The config an ensemble was started with, from its members' resolved configs (the inverse of
/// [`Member::config`]): the first member's, with the weight decay of the members whose
/// optimizer has one (the others' configs say 0, whatever the ensemble's was).
pub fn ensemble_config(configs: &[Config]) -> Result<Config> {
    let mut base = configs
        .first()
        .ok_or_else(|| anyhow!("an ensemble has at least one member"))?
        .clone();
    let decays: Vec<f64> = configs
        .iter()
        .filter(|c| c.train.optimizer.decays())
        .map(|c| c.train.weight_decay)
        .collect();
    if let Some(&wd) = decays.first() {
        if decays.iter().any(|&w| w != wd) {
            return Err(anyhow!(crate::BadInput(format!(
                "the ensemble's members have different train.weight_decay ({decays:?}); an ensemble shares one"
            ))));
        }
        base.train.weight_decay = wd;
    }
    Ok(base)
}

pub struct EnsembleStepper {
    arch: Arch,
    shape: Shape,
    /// All members' parameters, `[K, P]`: one leaf, so the gradient, its norm, clipping and the
    /// optimizer are one tensor op each for the whole ensemble.
    theta: Tensor,
    optimizer: EnsembleOptimizer,
    stream: DeviceStream,
    /// Which stream each member reads (members with one seed share one); `None`: stream i.
    rows: Option<Tensor>,
    /// The gradient of the last [`Stepper::gradients`], `[K, P]`.
    grad: Tensor,
    /// Batches given by [`EnsembleStepper::feed`] for the next step instead of the streams'.
    fed: Option<(Batch, Option<Tensor>)>,
    /// The native CPU kernel, where the model is one it computes ([`NativeFast::new`]);
    /// otherwise the libtorch fast forward and autograd.
    native: Option<NativeFast>,
}

/// Threads for the native kernel: one per core, at most one per task (a member on a block of
/// its prompts), and one alone for a solo run of a small model. Measured on 2 cores: a solo
/// Setting 1 run (L = 3, d = 5, B = 1000) takes 0.65 ms per step on one thread and 0.80 ms on
/// two (waking a second thread costs more than half a step's kernel); a 12-member ensemble
/// 4.85 ms on one and 4.24 ms on two; a solo run of Fig. 5's model (L = 8, d = 20) 37 ms on
/// one and 22 ms on two. The cores it may take are libtorch's thread count, as the caller set
/// it (`--threads`), so that one number governs the process.
fn kernel_threads(arch: &Arch, members: usize, prompts: i64) -> usize {
    let cores = tch::get_num_threads().max(1) as usize;
    let mlp = (arch.context + 1) * arch.mlp_hidden * arch.dim;
    let work = prompts * (arch.layers * (arch.dim + 1).pow(3) + mlp);
    if members == 1 && work < SOLO_THREADS_MIN_WORK {
        return 1;
    }
    let blocks = (prompts.max(1) as usize).div_ceil(crate::model::native::BLOCK_PROMPTS);
    cores.min(members * blocks).max(1)
}

/// prompts × (layers × (d+1)³ + (n+1)·h·d of an MLP front end) above which a solo run gains
/// from a second thread: Setting 1 is 0.65 million, App. B's model 7.6 million, Fig. 5's model
/// 74 million.
const SOLO_THREADS_MIN_WORK: i64 = 4_000_000;

impl EnsembleStepper {
    /// Every member at iteration 0, initialised as the faithful run with its seed is
    /// ([`protocol::start`]), on `device`.
    pub fn start(cfg: &Config, members: &[Member], device: Device) -> Result<EnsembleStepper> {
        if members.is_empty() {
            return Err(anyhow!(BadInput(
                "an ensemble needs at least one member".into()
            )));
        }
        for m in members {
            if !(m.lr > 0.0 && m.lr.is_finite()) {
                return Err(anyhow!(BadInput(format!(
                    "ensemble member {m:?}: lr must be > 0"
                ))));
            }
        }
        let arch = Arch::from_config(cfg);
        let layout = Layout::new(&arch);
        let mut teacher = None;
        let flat_inits: Vec<Tensor> = members
            .iter()
            .map(|m| {
                let start = protocol::start(cfg, m.seed);
                teacher = start.teacher;
                layout.flatten(&start.init)
            })
            .collect();
        // Drawn in float32 as the faithful run draws them, then widened for a float64 run.
        let theta = Tensor::stack(&flat_inits, 0)
            .to_kind(cfg.train.dtype.kind())
            .to_device(device)
            .set_requires_grad(true);
        let mut seeds: Vec<u32> = Vec::new();
        let rows: Vec<i64> = members
            .iter()
            .map(|m| match seeds.iter().position(|&s| s == m.seed) {
                Some(i) => i as i64,
                None => {
                    seeds.push(m.seed);
                    seeds.len() as i64 - 1
                }
            })
            .collect();
        let identity = rows.iter().enumerate().all(|(i, &r)| r == i as i64);
        let rules: Vec<(OptimizerKind, f64)> =
            members.iter().map(|m| (m.optimizer, m.lr)).collect();
        Ok(EnsembleStepper {
            arch,
            optimizer: EnsembleOptimizer::new(
                &cfg.train,
                &rules,
                layout.blocks(),
                layout.total,
                device,
            ),
            theta,
            stream: DeviceStream::new(cfg, &seeds, teacher, device),
            rows: (!identity).then(|| Tensor::from_slice(&rows).to_device(device)),
            grad: Tensor::new(),
            fed: None,
            native: NativeFast::new(
                &arch,
                members.len(),
                cfg.train.dtype.kind(),
                device,
                kernel_threads(&arch, members.len(), cfg.data.batch),
            ),
            // A step's values wait on the device for 64 steps: the loop never waits for it.
            shape: Shape {
                members: members.len(),
                device,
                layout,
                sync_every: 64,
            },
        })
    }

    /// Draws step `iter`'s data as [`Stepper::gradients`] would, and drops it: what `bench`
    /// times as the draw of a step.
    pub fn draw(&mut self, iter: i64) {
        if self.native.is_some() && self.stream.host_rows(iter).is_some() {
            return;
        }
        let _ = self.stream.batch(iter);
    }

    /// Member `i`'s current parameters in `state_dict` shapes, copied to the CPU.
    pub fn member_params(&self, i: usize) -> Vec<Tensor> {
        let row = self.theta.detach().get(i as i64).to_device(Device::Cpu);
        self.shape
            .layout
            .unflatten(&row)
            .into_iter()
            .map(|t| t.copy())
            .collect()
    }

    /// The gradients of a step whose losses and gradient the native kernel computed.
    fn gradients_from(&mut self, losses: Tensor, grad: Tensor) -> Gradients {
        self.grad = grad;
        let norms = self.grad.norm_scalaropt_dim(2, [1i64].as_slice(), false);
        Gradients {
            losses,
            clip_norms: norms.shallow_clone(),
            norms,
        }
    }

    /// The next step reads these batches instead of the streams': `batch` holds U streams
    /// (`z [U, B, n+1, d+1]`) and member i reads stream `member_rows[i]` (`None`: stream i).
    /// This is how a test feeds an ensemble the batches of another run.
    pub fn feed(&mut self, batch: Batch, member_rows: Option<Tensor>) {
        assert!(
            member_rows.is_some() || batch.z.size()[0] == self.shape.members as i64,
            "without member_rows the batch must hold one stream per member"
        );
        self.fed = Some((batch, member_rows));
    }
}

impl Stepper for EnsembleStepper {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn gradients(&mut self, iter: i64) -> Gradients {
        if let (Some(native), None) = (&mut self.native, &self.fed) {
            if let Some(prompt_rows) = self.stream.host_rows(iter) {
                let rows = self.rows.as_ref();
                let (losses, grad) =
                    native.losses_and_gradients_from_rows(&self.theta, &prompt_rows, rows);
                return self.gradients_from(losses, grad);
            }
        }
        let (batch, rows) = match self.fed.take() {
            Some(fed) => fed,
            None => (
                self.stream.batch(iter),
                self.rows.as_ref().map(|r| r.shallow_clone()),
            ),
        };
        if let Some(native) = &mut self.native {
            let (losses, grad) = native.losses_and_gradients(&self.theta, &batch, rows.as_ref());
            return self.gradients_from(losses, grad);
        }
        let params = self.shape.layout.views(&self.theta);
        let losses = model::fast_losses(&self.arch, &params, &batch, rows.as_ref());
        // Members are independent, so the gradient of the sum is every member's own gradient.
        self.grad = Tensor::run_backward(
            &[losses.sum(self.theta.kind())],
            &[&self.theta],
            false,
            false,
        )
        .pop()
        .expect("one gradient");
        let norms = tch::no_grad(|| self.grad.norm_scalaropt_dim(2, [1i64].as_slice(), false));
        Gradients {
            losses: losses.detach(),
            clip_norms: norms.shallow_clone(),
            norms,
        }
    }

    fn update(&mut self, coef: Option<&Tensor>, stepping: &Tensor) {
        tch::no_grad(|| {
            let clipped = match coef {
                Some(c) => &self.grad * c.unsqueeze(1),
                None => self.grad.shallow_clone(),
            };
            self.optimizer.update(&mut self.theta, &clipped, stepping);
        });
    }

    fn flat_params(&self) -> Tensor {
        self.theta.detach()
    }

    fn member_state(&self, i: usize) -> Vec<(String, Tensor)> {
        self.optimizer.member_state(i as i64)
    }

    fn load_member(&mut self, i: usize, flat: &Tensor, state: &[(String, Tensor)]) -> Result<()> {
        // `steps` is an integer count; the buffers are in the run's dtype.
        let state: Vec<(String, Tensor)> = state
            .iter()
            .map(|(n, t)| {
                let kind = if n == "steps" {
                    tch::Kind::Int64
                } else {
                    self.theta.kind()
                };
                (n.clone(), t.to_kind(kind).to_device(self.shape.device))
            })
            .collect();
        if !self.optimizer.load_member_state(i as i64, &state) {
            return Err(anyhow!("its optimizer state does not fit the ensemble"));
        }
        tch::no_grad(|| {
            self.theta
                .get(i as i64)
                .copy_(&flat.to_kind(self.theta.kind()).to_device(self.shape.device));
        });
        Ok(())
    }

    fn seek(&mut self, _iter: i64) {
        // A fast stream is a function of (seed, iteration): nothing to replay.
    }
}

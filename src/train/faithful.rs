//! The faithful stepper: one run in the authors' op order (docs/spec.md, "The reference
//! protocol", steps 3-5), bit-identical to PyTorch on CPU. Data is drawn on the CPU generators
//! and moved to the device, the forward is [`model::loss`], the optimizer is torch.optim's
//! single-tensor path ([`optim::faithful`]).
use super::driver::{Gradients, Shape, Stepper};
use crate::config::{ClipMode, Config};
use crate::data::{Batch, DataStream};
use crate::model::{self, Arch, Layout};
use crate::optim::{self, faithful::FaithfulOptimizer};
use crate::run::protocol;
use anyhow::{anyhow, Result};
use tch::{nn, Device, Tensor};

pub struct FaithfulStepper {
    arch: Arch,
    shape: Shape,
    clip_mode: ClipMode,
    /// Keeps the variables alive (and gives libtorch's SGD update primitive its parameters).
    _vs: nn::VarStore,
    /// Shallow handles on the VarStore's variables, in `state_dict` order.
    params: Vec<Tensor>,
    optimizer: FaithfulOptimizer,
    data: DataStream,
    /// A batch given by [`FaithfulStepper::feed`] for the next step instead of the stream's.
    fed: Option<Batch>,
}

impl FaithfulStepper {
    /// The run of `cfg` at iteration 0: teacher, seed, init, data stream, in the reference order.
    pub fn start(cfg: &Config, device: Device) -> Result<FaithfulStepper> {
        let arch = Arch::from_config(cfg);
        let layout = Layout::new(&arch);
        let (init, data) = protocol::start(cfg, cfg.train.seed).into_stream(cfg, device);
        let vs = nn::VarStore::new(device);
        let mut params = Vec::new();
        for (i, ((name, shape), value)) in arch.param_specs().into_iter().zip(&init).enumerate() {
            // Parameter names come from the path (`mlp / 0 / weight`), so checkpoints name
            // themselves; each parameter is its own group, so that an optimizer can give each
            // its own rate (Muon's adjusted one).
            let mut path = vs.root().set_group(i);
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().expect("parameter names are not empty");
            for p in parts {
                path = path / p;
            }
            let mut var = path.zeros(leaf, &shape);
            tch::no_grad(|| var.copy_(value));
            params.push(var);
        }
        let optimizer = FaithfulOptimizer::new(&cfg.train, &vs, &params)?;
        let shape = Shape {
            members: 1,
            device,
            layout,
            sync_every: 1,
        };
        Ok(FaithfulStepper {
            arch,
            shape,
            clip_mode: cfg.train.clip_mode,
            _vs: vs,
            params,
            optimizer,
            data,
            fed: None,
        })
    }

    /// The next step reads `batch` instead of the stream's (tests feed runs the same batches).
    pub fn feed(&mut self, batch: Batch) {
        self.fed = Some(batch);
    }

    /// The current parameters (shallow handles, `state_dict` order).
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }
}

impl Stepper for FaithfulStepper {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn gradients(&mut self, iter: i64) -> Gradients {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let batch = self
            .fed
            .take()
            .unwrap_or_else(|| self.data.training_batch(iter));
        let loss = model::loss(&self.arch, &self.params, &batch);
        loss.backward();
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).collect();
        let norm = optim::gradient_norm(&grads);
        let clip_norm = match self.clip_mode {
            ClipMode::Threshold => norm.shallow_clone(),
            ClipMode::ClipGradNorm => optim::norm_of_norms(&grads),
        };
        Gradients {
            losses: loss.detach().reshape([1]),
            norms: norm.reshape([1]),
            clip_norms: clip_norm.reshape([1]),
        }
    }

    fn update(&mut self, coef: Option<&Tensor>, stepping: &Tensor) {
        // The authors' loop reads the loss on the host every step; so does this one.
        if stepping.int64_value(&[0]) == 0 {
            return;
        }
        if let Some(coef) = coef {
            let coef = coef.reshape([]);
            tch::no_grad(|| {
                for p in &self.params {
                    let _ = p.grad().f_mul_(&coef).expect("mul_ on a gradient");
                }
            });
        }
        self.optimizer.step(&self.params);
    }

    fn flat_params(&self) -> Tensor {
        self.shape.layout.flatten(&self.params).unsqueeze(0)
    }

    fn member_state(&self, _i: usize) -> Vec<(String, Tensor)> {
        self.optimizer.state()
    }

    fn load_member(&mut self, _i: usize, flat: &Tensor, state: &[(String, Tensor)]) -> Result<()> {
        let state: Vec<(String, Tensor)> = state
            .iter()
            .map(|(n, t)| (n.clone(), t.to_device(self.shape.device)))
            .collect();
        if !self.optimizer.load_state(&state) {
            return Err(anyhow!("its optimizer state cannot be restored (optimizer_impl: libtorch keeps it inside libtorch)"));
        }
        let values = self
            .shape
            .layout
            .unflatten(&flat.to_device(self.shape.device));
        tch::no_grad(|| {
            for (var, value) in self.params.iter_mut().zip(&values) {
                var.copy_(value);
            }
        });
        Ok(())
    }

    fn seek(&mut self, iter: i64) {
        // Replays the draws of the iterations already done: the CPU generators then stand
        // exactly where an uninterrupted run has them.
        self.data.skip_training(iter);
    }
}

//! Every optimizer on one tensor per parameter, following torch.optim's single-tensor code path
//! (what PyTorch runs for CPU tensors) op for op where torch has the optimizer, and the papers'
//! equations as `experiments/pytorch_reference.py` writes them otherwise (docs/spec.md), so
//! that a run is bit-identical to PyTorch. The only op tch cannot express directly is
//! `param.add_(d, alpha=-lr)`: libtorch fuses it into one multiply-add, which `param += d * -lr`
//! does not reproduce. libtorch's own C++ SGD with momentum 0 performs exactly that op, so it
//! is used as the update primitive while the state stays ours (inspectable and restorable for
//! `--resume`). Muon adds its bfloat16 update per matrix with libtorch's own `add_` through
//! [`crate::aten`], as torch.optim.Muon does.
use crate::config::{OptimizerImpl, OptimizerKind, TrainConfig};
use anyhow::Result;
use tch::{nn, nn::OptimizerConfig, Tensor};

/// What the heavy-ball rules apply momentum to.
#[derive(Clone, Copy, PartialEq)]
enum Transform {
    /// g itself: SGD with momentum.
    Gradient,
    /// sign(g): sign descent (Kunstner et al., 2023).
    Sign,
    /// g / ‖g‖ over all parameters: normalized GD (Kunstner et al., 2023).
    Normalized,
}

#[derive(Clone, Copy, PartialEq)]
enum Rule {
    HeavyBall(Transform),
    /// Adam, and AdamW with a weight decay.
    Adam,
    Lion,
    AdamMini,
    Muon,
    /// tch's C++ SGD or Adam (`optimizer_impl: libtorch`).
    Libtorch,
}

/// One optimizer over all the parameters of a `VarStore`.
pub struct FaithfulOptimizer {
    lr: f64,
    momentum: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    rule: Rule,
    /// The C++ optimizer of [`Rule::Libtorch`].
    libtorch: Option<nn::Optimizer>,
    /// `p.add_(p.grad, alpha=-lr)` for every parameter: libtorch's SGD with momentum 0, one
    /// group per parameter.
    update: Option<nn::Optimizer>,
    /// Updates made (Adam's t).
    step: i64,
    /// The state by checkpoint name (`exp_avg.0`, `momentum_buffer.3`, …). The tensors made
    /// at the start must be in a checkpoint; the heavy ball's buffers appear at the first step.
    state: Vec<(String, Tensor)>,
}

/// Where a block lives: parameter `param`, and for `allparam` the (layer, head, P or Q) slice.
#[derive(Clone, Copy)]
struct Block {
    param: usize,
    at: Option<[i64; 3]>,
}

impl Block {
    fn of(&self, t: &Tensor) -> Tensor {
        match self.at {
            Some([l, h, j]) => t.get(l).get(h).get(j),
            None => t.shallow_clone(),
        }
    }

    /// An MLP bias: the 1-D parameters.
    fn bias(&self, params: &[Tensor]) -> bool {
        self.at.is_none() && params[self.param].dim() == 1
    }
}

/// The blocks of Adam-mini and Muon: each P and Q of each layer and head (slices of
/// `allparam`, the first parameter), then each MLP weight and bias.
fn blocks(params: &[Tensor]) -> Vec<Block> {
    let s = params[0].size();
    let mut out: Vec<Block> = (0..s[0])
        .flat_map(|l| (0..s[1]).flat_map(move |h| (0..2).map(move |j| [l, h, j])))
        .map(|at| Block {
            param: 0,
            at: Some(at),
        })
        .collect();
    out.extend((1..params.len()).map(|param| Block { param, at: None }));
    out
}

impl FaithfulOptimizer {
    pub fn new(
        cfg: &TrainConfig,
        vs: &nn::VarStore,
        params: &[Tensor],
    ) -> Result<FaithfulOptimizer> {
        let primitive = || nn::Sgd::default().build(vs, cfg.lr);
        let libtorch = match (cfg.optimizer_impl, cfg.optimizer) {
            (OptimizerImpl::Reference, _) => None,
            (OptimizerImpl::Libtorch, OptimizerKind::Sgd) => Some(
                nn::Sgd {
                    momentum: cfg.momentum,
                    ..Default::default()
                }
                .build(vs, cfg.lr)?,
            ),
            (OptimizerImpl::Libtorch, _) => Some(
                nn::Adam {
                    beta1: cfg.betas[0],
                    beta2: cfg.betas[1],
                    wd: 0.0,
                    eps: cfg.eps,
                    amsgrad: false,
                }
                .build(vs, cfg.lr)?,
            ),
        };
        let (rule, update) = match (cfg.optimizer_impl, cfg.optimizer) {
            (OptimizerImpl::Libtorch, _) => (Rule::Libtorch, None),
            (_, OptimizerKind::Sgd) => (Rule::HeavyBall(Transform::Gradient), Some(primitive()?)),
            (_, OptimizerKind::Sign) => (Rule::HeavyBall(Transform::Sign), Some(primitive()?)),
            (_, OptimizerKind::Normalized) => {
                (Rule::HeavyBall(Transform::Normalized), Some(primitive()?))
            }
            (_, OptimizerKind::Adam | OptimizerKind::Adamw) => (Rule::Adam, None),
            (_, OptimizerKind::Lion) => (Rule::Lion, Some(primitive()?)),
            (_, OptimizerKind::AdamMini) => (Rule::AdamMini, None),
            (_, OptimizerKind::Muon) => (Rule::Muon, None),
        };
        let mut opt = FaithfulOptimizer {
            lr: cfg.lr,
            momentum: cfg.momentum,
            betas: cfg.betas,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            rule,
            libtorch,
            update,
            step: 0,
            state: vec![],
        };
        opt.initial_state(params);
        Ok(opt)
    }

    /// The state torch.optim makes at the first step as zeros, made now (so that a checkpoint
    /// always holds it), and Muon's adjusted rates.
    fn initial_state(&mut self, params: &[Tensor]) {
        let zeros = |t: &Tensor| t.zeros_like();
        let mut state = vec![];
        match self.rule {
            Rule::Adam => {
                for (i, p) in params.iter().enumerate() {
                    state.push((format!("exp_avg.{i}"), zeros(p)));
                    state.push((format!("exp_avg_sq.{i}"), zeros(p)));
                }
            }
            Rule::Lion => {
                for (i, p) in params.iter().enumerate() {
                    state.push((format!("exp_avg.{i}"), zeros(p)));
                }
            }
            Rule::AdamMini => {
                for (b, block) in blocks(params).iter().enumerate() {
                    let p = block.of(&params[block.param]);
                    state.push((format!("exp_avg.{b}"), zeros(&p)));
                    state.push((
                        format!("block_exp_avg_sq.{b}"),
                        Tensor::zeros([], (p.kind(), p.device())),
                    ));
                }
            }
            Rule::Muon => {
                for (b, block) in blocks(params).iter().enumerate() {
                    let p = block.of(&params[block.param]);
                    if block.bias(params) {
                        state.push((format!("exp_avg.{}", block.param), zeros(&p)));
                        state.push((format!("exp_avg_sq.{}", block.param), zeros(&p)));
                    } else {
                        state.push((format!("momentum_buffer.{b}"), zeros(&p)));
                    }
                }
            }
            Rule::HeavyBall(_) | Rule::Libtorch => {}
        }
        self.state = state;
    }

    fn get(&self, name: &str) -> Option<Tensor> {
        self.state
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
    }

    /// One update from the (already clipped) gradients stored in `params[i].grad()`.
    pub fn step(&mut self, params: &[Tensor]) {
        self.step += 1;
        tch::no_grad(|| match self.rule {
            Rule::Libtorch => self.libtorch.as_mut().expect("a libtorch optimizer").step(),
            Rule::HeavyBall(transform) => self.heavy_ball(transform, params),
            Rule::Adam => {
                for (i, p) in params.iter().enumerate() {
                    let name = |s: &str| format!("{s}.{i}");
                    let (m, v) = (self.get(&name("exp_avg")), self.get(&name("exp_avg_sq")));
                    self.adam(p, &p.grad(), m.expect("Adam's m"), v.expect("v"));
                }
            }
            Rule::Lion => self.lion(params),
            Rule::AdamMini => self.adam_mini(params),
            Rule::Muon => self.muon(params),
        })
    }

    /// Decoupled weight decay, `param.mul_(1 - lr·λ)` (skipped at λ = 0, a multiply by 1).
    fn decay(&self, param: &Tensor) {
        if self.weight_decay != 0.0 {
            let _ = param
                .shallow_clone()
                .f_mul_scalar_(1.0 - self.lr * self.weight_decay)
                .expect("mul_");
        }
    }

    /// SGD with momentum, sign descent, normalized GD: d from the gradient, `buf = clone(d)` at
    /// the first step, then `buf.mul_(μ).add_(d)`; `p.add_(buf, alpha=-lr)` by the primitive.
    fn heavy_ball(&mut self, transform: Transform, params: &[Tensor]) {
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        let norm = (transform == Transform::Normalized).then(|| super::gradient_norm(&grads));
        for (i, grad) in grads.iter().enumerate() {
            let d = match (transform, &norm) {
                (Transform::Sign, _) => grad.sign(),
                (Transform::Normalized, Some(norm)) => grad / norm,
                _ => grad.shallow_clone(),
            };
            let d = if self.momentum != 0.0 {
                let name = format!("momentum_buffer.{i}");
                match self.get(&name) {
                    None => {
                        let b = d.detach().copy();
                        self.state.push((name, b.shallow_clone()));
                        b
                    }
                    Some(mut b) => {
                        let _ = b
                            .f_mul_scalar_(self.momentum)
                            .and_then(|mut b| b.f_add_(&d));
                        b
                    }
                }
            } else {
                d
            };
            if transform != Transform::Gradient || self.momentum != 0.0 {
                grad.shallow_clone().copy_(&d);
            }
        }
        // p.add_(grad, alpha=-lr), through libtorch's fused kernel.
        self.update.as_mut().expect("the update primitive").step();
    }

    /// torch.optim.Adam(W) `_single_tensor_adam` on one parameter: the decoupled weight decay
    /// (AdamW), then the moments and the step. The bias corrections are computed in float64
    /// with pow(), as Python's `**` does.
    fn adam(&self, param: &Tensor, grad: &Tensor, mut m: Tensor, mut v: Tensor) {
        let t = self.step as f64;
        let [b1, b2] = self.betas;
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        let step_size = self.lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        self.decay(param);
        let _ = m.lerp_(grad, 1.0 - b1);
        // addcmul_(g, g, value) computes (value*g)*g; scaling the first factor first is the
        // same arithmetic (tch's addcmul_ takes no value).
        let _ = v.f_mul_scalar_(b2).expect("mul_");
        let _ = v.addcmul_(&(grad * (1.0 - b2)), grad);
        let denom = (v.sqrt() / bias_correction2_sqrt) + self.eps;
        let _ = param.shallow_clone().addcdiv_(&(&m * (-step_size)), &denom);
    }

    /// Lion, as pytorch_reference.py's `Lion`: the sign of lerp(m, g, 1 − β₁) is the update,
    /// then m = lerp(m, g, 1 − β₂).
    fn lion(&mut self, params: &[Tensor]) {
        let [b1, b2] = self.betas;
        for (i, p) in params.iter().enumerate() {
            let grad = p.grad();
            let mut m = self.get(&format!("exp_avg.{i}")).expect("Lion's m");
            let update = m.lerp(&grad, 1.0 - b1).sign();
            let _ = m.lerp_(&grad, 1.0 - b2);
            self.decay(p);
            grad.shallow_clone().copy_(&update);
        }
        self.update.as_mut().expect("the update primitive").step();
    }

    /// Adam-mini, as pytorch_reference.py's `AdamMini`: one second moment per block.
    fn adam_mini(&mut self, params: &[Tensor]) {
        let [b1, b2] = self.betas;
        let t = self.step as f64;
        let inv_bias_correction1 = 1.0 / (1.0 - b1.powf(t));
        let bias_correction2_sqrt = (1.0 - b2.powf(t)).sqrt();
        for (b, block) in blocks(params).iter().enumerate() {
            let param = block.of(&params[block.param]);
            let grad = block.of(&params[block.param].grad());
            let mean_sq = (&grad * &grad).sum(grad.kind()) / grad.numel() as f64;
            if !block.bias(params) {
                self.decay(&param);
            }
            let mut m = self.get(&format!("exp_avg.{b}")).expect("Adam-mini's m");
            let mut v = self.get(&format!("block_exp_avg_sq.{b}")).expect("v");
            let _ = m.lerp_(&grad, 1.0 - b1);
            let _ = v.f_mul_scalar_(b2).expect("mul_");
            let _ = v.f_add_(&(mean_sq * (1.0 - b2))).expect("add_");
            let h = v.sqrt() / bias_correction2_sqrt + self.eps;
            // Python's `(1 / bias_correction1) / h` is Tensor.__rtruediv__: h.reciprocal() * x.
            let step_size = h.reciprocal() * inv_bias_correction1;
            let update = (&m * &step_size) * self.lr;
            let _ = param.shallow_clone().f_sub_(&update).expect("sub_");
        }
    }

    /// torch.optim.Muon `_single_tensor_muon` on each matrix block, op for op; AdamW on the
    /// MLP's biases.
    fn muon(&mut self, params: &[Tensor]) {
        let mu = self.momentum;
        for (b, block) in blocks(params).iter().enumerate() {
            let param = block.of(&params[block.param]);
            let grad = block.of(&params[block.param].grad());
            if block.bias(params) {
                let i = block.param;
                let (m, v) = (
                    self.get(&format!("exp_avg.{i}")),
                    self.get(&format!("exp_avg_sq.{i}")),
                );
                self.adam(&param, &grad, m.expect("AdamW's m"), v.expect("v"));
                continue;
            }
            let mut buf = self
                .get(&format!("momentum_buffer.{b}"))
                .expect("Muon's buffer");
            let _ = buf.lerp_(&grad, 1.0 - mu);
            let update = super::newton_schulz(&grad.lerp(&buf, mu));
            if self.weight_decay != 0.0 {
                let _ = param
                    .shallow_clone()
                    .f_mul_scalar_(1.0 - self.lr * self.weight_decay);
            }
            // torch.optim.Muon's `param.add_(update, alpha=-adjusted_lr)` on this matrix, with
            // the bfloat16 update as it is: the same op on the same shape (an add over the whole
            // allparam could split its SIMD body and tail elsewhere), at lr·√max(1, rows/cols).
            let size = param.size();
            let ratio = (size[0] as f64 / size[1] as f64).max(1.0);
            crate::aten::add_(&mut param.shallow_clone(), &update, -self.lr * ratio.sqrt());
        }
    }

    /// The optimizer's state tensors with stable names, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        if self.rule == Rule::Libtorch {
            return vec![];
        }
        let mut s = vec![];
        if !matches!(self.rule, Rule::HeavyBall(_)) {
            s.push(("step".to_string(), Tensor::from_slice(&[self.step])));
        }
        s.extend(
            self.state
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone())),
        );
        s
    }

    /// Restores what [`FaithfulOptimizer::state`] saved. Returns false when the state cannot be
    /// restored (tch's C++ optimizers keep theirs out of reach, or a tensor is missing).
    pub fn load_state(&mut self, saved: &[(String, Tensor)]) -> bool {
        let find = |name: &str| saved.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        match self.rule {
            Rule::Libtorch => return false,
            Rule::HeavyBall(_) => {
                // The buffers appear at the first step: take whichever were saved.
                self.state = saved
                    .iter()
                    .filter(|(n, _)| n.starts_with("momentum_buffer."))
                    .map(|(n, t)| (n.clone(), t.copy()))
                    .collect();
                return true;
            }
            _ => {}
        }
        let Some(step) = find("step") else {
            return false;
        };
        self.step = step.int64_value(&[0]);
        for (name, t) in &self.state {
            match find(name) {
                Some(v) if v.size() == t.size() => tch::no_grad(|| {
                    t.shallow_clone().copy_(v);
                }),
                _ => return false,
            }
        }
        true
    }
}

//! SGD with momentum and Adam on one tensor per parameter, following torch.optim's
//! single-tensor code path (what PyTorch runs for CPU tensors) op for op, so that a run is
//! bit-identical to PyTorch. The only op tch cannot express directly is
//! `param.add_(d, alpha=-lr)`: libtorch fuses it into one multiply-add, which
//! `param += d * -lr` does not reproduce. libtorch's own C++ SGD with momentum 0 performs
//! exactly that op, so it is used as the update primitive while the momentum buffers stay ours
//! (inspectable and restorable for `--resume`).
use crate::config::{OptimizerImpl, OptimizerKind, TrainConfig};
use anyhow::Result;
use tch::{nn, nn::OptimizerConfig, Tensor};

enum Rule {
    Sgd {
        momentum: f64,
        buffers: Vec<Option<Tensor>>,
        update: nn::Optimizer,
    },
    Adam {
        betas: [f64; 2],
        eps: f64,
        step: i64,
        exp_avg: Vec<Tensor>,
        exp_avg_sq: Vec<Tensor>,
    },
    Libtorch(nn::Optimizer),
}

/// One optimizer over all the parameters of a `VarStore`.
pub struct Optimizer {
    lr: f64,
    rule: Rule,
}

impl Optimizer {
    pub fn new(cfg: &TrainConfig, vs: &nn::VarStore, params: &[Tensor]) -> Result<Optimizer> {
        let zeros = || params.iter().map(|p| p.zeros_like()).collect::<Vec<_>>();
        let rule = match (cfg.optimizer_impl, cfg.optimizer) {
            (OptimizerImpl::Reference, OptimizerKind::Sgd) => Rule::Sgd {
                momentum: cfg.momentum,
                buffers: params.iter().map(|_| None).collect(),
                update: nn::Sgd::default().build(vs, cfg.lr)?,
            },
            (OptimizerImpl::Reference, OptimizerKind::Adam) => Rule::Adam {
                betas: cfg.betas,
                eps: cfg.eps,
                step: 0,
                exp_avg: zeros(),
                exp_avg_sq: zeros(),
            },
            (OptimizerImpl::Libtorch, OptimizerKind::Sgd) => Rule::Libtorch(
                nn::Sgd {
                    momentum: cfg.momentum,
                    ..Default::default()
                }
                .build(vs, cfg.lr)?,
            ),
            (OptimizerImpl::Libtorch, OptimizerKind::Adam) => Rule::Libtorch(
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
        Ok(Optimizer { lr: cfg.lr, rule })
    }

    /// One update from the (already clipped) gradients stored in `params[i].grad()`.
    pub fn step(&mut self, params: &[Tensor]) {
        let lr = self.lr;
        tch::no_grad(|| match &mut self.rule {
            Rule::Libtorch(opt) => opt.step(),
            Rule::Sgd {
                momentum,
                buffers,
                update,
            } => {
                for (p, buf) in params.iter().zip(buffers.iter_mut()) {
                    let mut grad = p.grad();
                    if *momentum != 0.0 {
                        // torch.optim.SGD: buf = clone(g) at the first step, then
                        // buf.mul_(momentum).add_(g); the update uses buf.
                        let b = match buf.take() {
                            None => grad.detach().copy(),
                            Some(mut b) => {
                                let _ =
                                    b.f_mul_scalar_(*momentum).and_then(|mut b| b.f_add_(&grad));
                                b
                            }
                        };
                        grad.copy_(&b);
                        *buf = Some(b);
                    }
                }
                // p.add_(grad, alpha=-lr), through libtorch's fused kernel.
                update.step();
            }
            Rule::Adam {
                betas,
                eps,
                step,
                exp_avg,
                exp_avg_sq,
            } => {
                // torch.optim.Adam(W) `_single_tensor_adam`, weight_decay = 0. The bias
                // corrections are computed in float64 with pow(), as Python's `**` does.
                *step += 1;
                let t = *step as f64;
                let (b1, b2) = (betas[0], betas[1]);
                let bias_correction1 = 1.0 - b1.powf(t);
                let bias_correction2 = 1.0 - b2.powf(t);
                let step_size = lr / bias_correction1;
                let bias_correction2_sqrt = bias_correction2.powf(0.5);
                for ((p, m), v) in params
                    .iter()
                    .zip(exp_avg.iter_mut())
                    .zip(exp_avg_sq.iter_mut())
                {
                    let grad = p.grad();
                    let _ = m.lerp_(&grad, 1.0 - b1);
                    // addcmul_(g, g, value) computes (value*g)*g; scaling the first factor
                    // first is the same arithmetic (tch's addcmul_ takes no value).
                    let _ = v.f_mul_scalar_(b2).expect("mul_");
                    let _ = v.addcmul_(&(&grad * (1.0 - b2)), &grad);
                    let denom = (v.sqrt() / bias_correction2_sqrt) + *eps;
                    let _ = p.shallow_clone().addcdiv_(&(&*m * (-step_size)), &denom);
                }
            }
        })
    }

    /// The optimizer's state tensors with stable names, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        match &self.rule {
            Rule::Sgd { buffers, .. } => buffers
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    b.as_ref()
                        .map(|b| (format!("momentum_buffer.{i}"), b.shallow_clone()))
                })
                .collect(),
            Rule::Adam {
                step,
                exp_avg,
                exp_avg_sq,
                ..
            } => {
                let mut s = vec![("step".to_string(), Tensor::from_slice(&[*step]))];
                for (i, (m, v)) in exp_avg.iter().zip(exp_avg_sq).enumerate() {
                    s.push((format!("exp_avg.{i}"), m.shallow_clone()));
                    s.push((format!("exp_avg_sq.{i}"), v.shallow_clone()));
                }
                s
            }
            Rule::Libtorch(_) => vec![],
        }
    }

    /// Restores what [`Optimizer::state`] saved. Returns false when the state cannot be
    /// restored (tch's C++ optimizers keep theirs out of reach).
    pub fn load_state(&mut self, saved: &[(String, Tensor)]) -> bool {
        let find = |name: String| saved.iter().find(|(n, _)| *n == name).map(|(_, t)| t);
        match &mut self.rule {
            Rule::Sgd { buffers, .. } => {
                for (i, b) in buffers.iter_mut().enumerate() {
                    *b = find(format!("momentum_buffer.{i}")).map(|t| t.copy());
                }
                true
            }
            Rule::Adam {
                step,
                exp_avg,
                exp_avg_sq,
                ..
            } => {
                let Some(s) = find("step".into()) else {
                    return false;
                };
                *step = s.int64_value(&[0]);
                for (i, (m, v)) in exp_avg.iter_mut().zip(exp_avg_sq.iter_mut()).enumerate() {
                    match (
                        find(format!("exp_avg.{i}")),
                        find(format!("exp_avg_sq.{i}")),
                    ) {
                        (Some(a), Some(b)) => {
                            tch::no_grad(|| {
                                m.copy_(a);
                                v.copy_(b);
                            });
                        }
                        _ => return false,
                    }
                }
                true
            }
            Rule::Libtorch(_) => false,
        }
    }
}

//! SGD with momentum and Adam for K members at once, on flat `[K, P]` tensors (fast mode and
//! ensembles): the batched engine's layout of the rules that [`super::reference`] writes per
//! tensor.
use crate::config::{OptimizerKind, TrainConfig};
use tch::{Device, Kind, Tensor};

/// SGD with momentum and Adam for all members at once, on flat `[K, P]` tensors.
///
/// The arithmetic is torch.optim's (`buf = μ·buf + g`, `p -= lr·buf`; Adam with bias
/// corrections, weight decay 0), written as a few whole-ensemble tensor ops: every member
/// keeps its own buffers and learning rate; a member whose kind is the other one simply never
/// reads the buffers it does not use. A zero momentum buffer makes the first step `buf = g`,
/// exactly torch's `clone(g)`.
///
/// A member that does not step (a skipped non-finite step, or a diverged run) keeps its buffers
/// and its own step count, as torch.optim's state does when `step()` is not called; so Adam's
/// bias corrections are per member, read from a table computed on the host in float64 exactly
/// as torch computes the scalars.
pub struct Optimizer {
    momentum: f64,
    betas: [f64; 2],
    eps: f64,
    /// `[K, 1]` learning rates.
    lr: Tensor,
    /// `[K, 1]`, true for Adam members; `None` when all members use the same kind.
    is_adam: Option<Tensor>,
    any_sgd: bool,
    any_adam: bool,
    momentum_buf: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// `[K]` int64: how many updates each member has made.
    steps: Tensor,
    /// Updates made by the ensemble (an upper bound of `steps`).
    step: i64,
    /// `[T, 1]` in the run's dtype, T > `step`: `1/(1-β₁ᵗ)` and `√(1-β₂ᵗ)` for t = 0, 1, ….
    bias_corrections: (Tensor, Tensor),
}

impl Optimizer {
    /// `members`: each member's optimizer and learning rate; `p` parameters per member.
    pub fn new(
        cfg: &TrainConfig,
        members: &[(OptimizerKind, f64)],
        p: i64,
        device: Device,
    ) -> Optimizer {
        let kind = cfg.dtype.kind();
        let k = members.len() as i64;
        // The learning rate as the run's dtype holds it (a float32 run's is float32, as in torch).
        let lrs: Vec<f64> = members.iter().map(|m| m.1).collect();
        let adam: Vec<bool> = members.iter().map(|m| m.0 == OptimizerKind::Adam).collect();
        let (any_adam, any_sgd) = (adam.iter().any(|&a| a), adam.iter().any(|&a| !a));
        let zeros = || Tensor::zeros([k, p], (kind, device));
        Optimizer {
            momentum: cfg.momentum,
            betas: cfg.betas,
            eps: cfg.eps,
            lr: Tensor::from_slice(&lrs)
                .to_kind(kind)
                .view([k, 1])
                .to_device(device),
            is_adam: (any_adam && any_sgd)
                .then(|| Tensor::from_slice(&adam).view([k, 1]).to_device(device)),
            any_sgd,
            any_adam,
            momentum_buf: if any_sgd { zeros() } else { Tensor::new() },
            exp_avg: if any_adam { zeros() } else { Tensor::new() },
            exp_avg_sq: if any_adam { zeros() } else { Tensor::new() },
            steps: Tensor::zeros([k], (Kind::Int64, device)),
            step: 0,
            bias_corrections: bias_correction_table(cfg.betas, cfg.iters + 1, kind, device),
        }
    }

    /// The update `Δ` (to subtract from the parameters) for the clipped gradients `grad [K, P]`
    /// of the members where `stepping [K]` is true; the others' state is left as it was.
    pub fn update(&mut self, grad: &Tensor, stepping: &Tensor) -> Tensor {
        self.step += 1;
        let rows = stepping.unsqueeze(1);
        let _ = self.steps.g_add_(&stepping.to_kind(Kind::Int64));
        let sgd = self.any_sgd.then(|| {
            let next = &self.momentum_buf * self.momentum + grad;
            self.momentum_buf = next.where_self(&rows, &self.momentum_buf);
            self.momentum_buf.shallow_clone()
        });
        let adam = self.any_adam.then(|| {
            let (b1, b2) = (self.betas[0], self.betas[1]);
            if self.step >= self.bias_corrections.0.size()[0] {
                let len = 2 * self.step;
                self.bias_corrections =
                    bias_correction_table(self.betas, len, grad.kind(), grad.device());
            }
            // A member that does not step may read t = 0's entries (inf): its update is discarded.
            let inv_bias_correction1 = self.bias_corrections.0.index_select(0, &self.steps);
            let bias_correction2_sqrt = self.bias_corrections.1.index_select(0, &self.steps);
            self.exp_avg = self
                .exp_avg
                .lerp(grad, 1.0 - b1)
                .where_self(&rows, &self.exp_avg);
            self.exp_avg_sq = (&self.exp_avg_sq * b2)
                .addcmul(&(grad * (1.0 - b2)), grad)
                .where_self(&rows, &self.exp_avg_sq);
            let denom = self.exp_avg_sq.sqrt() / bias_correction2_sqrt + self.eps;
            &self.exp_avg / denom * inv_bias_correction1
        });
        let direction = match (sgd, adam, &self.is_adam) {
            (Some(s), Some(a), Some(is_adam)) => a.where_self(is_adam, &s),
            (Some(s), None, _) => s,
            (None, Some(a), _) => a,
            _ => unreachable!("an ensemble has at least one member"),
        };
        direction * &self.lr
    }

    /// The optimizer state of member `i`, with stable names, for its checkpoint.
    pub fn member_state(&self, i: i64) -> Vec<(String, Tensor)> {
        let mut s = vec![("steps".to_string(), self.steps.get(i).reshape([1]))];
        for (name, t) in [
            ("momentum_buffer", &self.momentum_buf),
            ("exp_avg", &self.exp_avg),
            ("exp_avg_sq", &self.exp_avg_sq),
        ] {
            if t.defined() {
                s.push((name.to_string(), t.get(i)));
            }
        }
        s
    }

    /// Restores what [`Optimizer::member_state`] saved into member `i`; false when a tensor is
    /// missing or has another shape.
    pub fn load_member_state(&mut self, i: i64, saved: &[(String, Tensor)]) -> bool {
        let find = |name: &str| saved.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let Some(steps) = find("steps") else {
            return false;
        };
        self.steps.get(i).copy_(&steps.reshape([]));
        self.step = self.step.max(steps.int64_value(&[0]));
        for (name, t) in [
            ("momentum_buffer", &self.momentum_buf),
            ("exp_avg", &self.exp_avg),
            ("exp_avg_sq", &self.exp_avg_sq),
        ] {
            if t.defined() {
                match find(name) {
                    Some(v) if v.size() == t.get(i).size() => {
                        t.get(i).copy_(v);
                    }
                    _ => return false,
                }
            }
        }
        true
    }
}

/// `(1/(1-β₁ᵗ), √(1-β₂ᵗ))` for t = 0..len, each `[len, 1]` in `kind`: the f64 scalars torch.optim's
/// Adam computes, rounded to the run's dtype as a tensor-scalar operation rounds them.
fn bias_correction_table(
    betas: [f64; 2],
    len: i64,
    kind: Kind,
    device: Device,
) -> (Tensor, Tensor) {
    let column = |f: &dyn Fn(f64) -> f64| {
        let v: Vec<f64> = (0..len).map(|t| f(t as f64)).collect();
        Tensor::from_slice(&v)
            .to_kind(kind)
            .view([len, 1])
            .to_device(device)
    };
    (
        column(&|t| 1.0 / (1.0 - betas[0].powf(t))),
        column(&|t| (1.0 - betas[1].powf(t)).powf(0.5)),
    )
}

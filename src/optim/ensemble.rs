//! Every optimizer for K members at once, on flat `[K, P]` tensors (fast mode and ensembles):
//! the ensemble stepper's layout of the rules that [`super::faithful`] writes per tensor, and
//! docs/spec.md in equations.
use crate::config::{OptimizerKind, TrainConfig};
use crate::model::Block;
use tch::{Device, Kind, Tensor};

/// The optimizers of an ensemble, on flat `[K, P]` tensors.
///
/// Members are grouped by optimizer kind. Each group computes its rule on every member's row
/// (`[K, …]` state; a row outside the group is never read) and the directions are merged by
/// member: an ensemble over several optimizers is a few whole-tensor ops per group, and every
/// op runs on the same `[K, P]` tensors whatever the mix (so the paper's SGD + Adam ensembles
/// keep the bits they had when these were the only two). The arithmetic is torch.optim's where
/// torch has the optimizer (SGD: `buf = μ·buf + g`; Adam with bias corrections), and the
/// papers' equations otherwise (docs/spec.md). A zero momentum buffer makes the first step
/// `buf = g`, exactly torch's `clone(g)`.
///
/// A member that does not step (a skipped non-finite step, or a diverged run) keeps its state
/// and its own step count, as torch.optim's state does when `step()` is not called; so bias
/// corrections are per member, read from a table computed on the host in float64 exactly as
/// torch computes the scalars.
pub struct EnsembleOptimizer {
    hyper: Hyper,
    /// `[K, 1]` learning rates.
    lr: Tensor,
    /// The factor `1 − lr·λ` of decoupled weight decay, `[K, 1]` (or `[K, P]` where Adam-mini
    /// spares the biases); `None` when no member decays.
    decay: Option<Tensor>,
    groups: Vec<Group>,
    /// Each member's group.
    place: Vec<usize>,
    /// `[K]` int64: how many updates each member has made.
    steps: Tensor,
    /// Updates made by the ensemble (an upper bound of `steps`).
    step: i64,
    /// `[T, 1]` in the run's dtype, T > `step`: `1/(1-β₁ᵗ)` and `√(1-β₂ᵗ)` for t = 0, 1, ….
    bias_corrections: (Tensor, Tensor),
}

/// The hyper-parameters every member shares, and the block structure of a member.
struct Hyper {
    momentum: f64,
    betas: [f64; 2],
    eps: f64,
    blocks: Vec<Block>,
}

/// The members of one optimizer kind.
struct Group {
    kind: OptimizerKind,
    /// `[K, 1]` bool: the group's members; `None` when the group is the whole ensemble.
    members: Option<Tensor>,
    /// The group's state by checkpoint name, `[K, …]` each.
    state: Vec<(&'static str, Tensor)>,
}

/// A step's per-member values a group reads: `[K, 1]` each.
struct StepValues {
    stepping: Tensor,
    inv_bias_correction1: Tensor,
    bias_correction2_sqrt: Tensor,
}

impl EnsembleOptimizer {
    /// `members`: each member's optimizer and learning rate; `blocks` the block structure of
    /// one member's `p` parameters ([`crate::model::Layout::blocks`]).
    pub fn new(
        cfg: &TrainConfig,
        members: &[(OptimizerKind, f64)],
        blocks: Vec<Block>,
        p: i64,
        device: Device,
    ) -> EnsembleOptimizer {
        let kind = cfg.dtype.kind();
        let k = members.len() as i64;
        // The kinds in order of first appearance, and each member's.
        let mut kinds: Vec<OptimizerKind> = vec![];
        let place: Vec<usize> = members
            .iter()
            .map(|&(o, _)| {
                kinds.iter().position(|&x| x == o).unwrap_or_else(|| {
                    kinds.push(o);
                    kinds.len() - 1
                })
            })
            .collect();
        let nblocks = blocks.len() as i64;
        let groups = kinds
            .iter()
            .enumerate()
            .map(|(g, &o)| {
                let mine: Vec<bool> = place.iter().map(|&x| x == g).collect();
                Group {
                    kind: o,
                    members: (kinds.len() > 1)
                        .then(|| Tensor::from_slice(&mine).view([k, 1]).to_device(device)),
                    state: Group::state_names(o)
                        .iter()
                        .map(|&name| {
                            let cols = if name == BLOCK_SECOND_MOMENT {
                                nblocks
                            } else {
                                p
                            };
                            (name, Tensor::zeros([k, cols], (kind, device)))
                        })
                        .collect(),
                }
            })
            .collect();
        // The learning rate as the run's dtype holds it (a float32 run's is float32, as in torch).
        let lrs: Vec<f64> = members.iter().map(|m| m.1).collect();
        EnsembleOptimizer {
            decay: decay_factors(cfg.weight_decay, members, &blocks, p, kind, device),
            hyper: Hyper {
                momentum: cfg.momentum,
                betas: cfg.betas,
                eps: cfg.eps,
                blocks,
            },
            lr: Tensor::from_slice(&lrs)
                .to_kind(kind)
                .view([k, 1])
                .to_device(device),
            groups,
            place,
            steps: Tensor::zeros([k], (Kind::Int64, device)),
            step: 0,
            bias_corrections: bias_correction_table(cfg.betas, cfg.iters + 1, kind, device),
        }
    }

    /// One update of `theta [K, P]` from the clipped gradients `grad [K, P]`, for the members
    /// where `stepping [K]` is true; the others' parameters and state are left as they were.
    pub fn update(&mut self, theta: &mut Tensor, grad: &Tensor, stepping: &Tensor) {
        self.step += 1;
        let _ = self.steps.g_add_(&stepping.to_kind(Kind::Int64));
        if self.step >= self.bias_corrections.0.size()[0] {
            let len = 2 * self.step;
            self.bias_corrections =
                bias_correction_table(self.hyper.betas, len, grad.kind(), grad.device());
        }
        // A member that does not step may read t = 0's entries (inf): its update is discarded.
        let rows = stepping.unsqueeze(1);
        let values = StepValues {
            stepping: rows.shallow_clone(),
            inv_bias_correction1: self.bias_corrections.0.index_select(0, &self.steps),
            bias_correction2_sqrt: self.bias_corrections.1.index_select(0, &self.steps),
        };
        let mut direction: Option<Tensor> = None;
        for g in &mut self.groups {
            let d = g.direction(&self.hyper, grad, &values);
            direction = Some(match (direction, &g.members) {
                (Some(merged), Some(mine)) => d.where_self(mine, &merged),
                _ => d,
            });
        }
        let direction = direction.expect("an ensemble has at least one member");
        if let Some(decay) = &self.decay {
            let _ = theta.g_mul_(&decay.where_self(&rows, &decay.ones_like()));
        }
        let delta = (direction * &self.lr).where_scalarother(&rows, 0.0);
        let _ = theta.g_sub_(&delta);
    }

    /// The optimizer state of member `i`, with stable names, for its checkpoint.
    pub fn member_state(&self, i: i64) -> Vec<(String, Tensor)> {
        let mut s = vec![("steps".to_string(), self.steps.get(i).reshape([1]))];
        for (name, t) in &self.groups[self.place[i as usize]].state {
            s.push((name.to_string(), t.get(i)));
        }
        s
    }

    /// Restores what [`EnsembleOptimizer::member_state`] saved into member `i`; false when a tensor is
    /// missing or has another shape. Names the member's optimizer does not keep are ignored
    /// (an older checkpoint of a mixed ensemble holds every member's SGD and Adam buffers).
    pub fn load_member_state(&mut self, i: i64, saved: &[(String, Tensor)]) -> bool {
        let find = |name: &str| saved.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let Some(steps) = find("steps") else {
            return false;
        };
        self.steps.get(i).copy_(&steps.reshape([]));
        self.step = self.step.max(steps.int64_value(&[0]));
        for (name, t) in &self.groups[self.place[i as usize]].state {
            match find(name) {
                Some(v) if v.size() == t.get(i).size() => {
                    t.get(i).copy_(v);
                }
                _ => return false,
            }
        }
        true
    }
}

/// The state name of Adam-mini's second moment: one value per block, `[k, blocks]`.
const BLOCK_SECOND_MOMENT: &str = "block_exp_avg_sq";

impl Group {
    /// The state each kind keeps, each `[k, P]` but Adam-mini's second moment. Muon's
    /// `exp_avg` and `exp_avg_sq` are the AdamW state of the MLP's biases (the other columns
    /// are never read).
    fn state_names(kind: OptimizerKind) -> &'static [&'static str] {
        match kind {
            OptimizerKind::Sgd | OptimizerKind::Sign | OptimizerKind::Normalized => {
                &["momentum_buffer"]
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => &["exp_avg", "exp_avg_sq"],
            OptimizerKind::Lion => &["exp_avg"],
            OptimizerKind::AdamMini => &["exp_avg", BLOCK_SECOND_MOMENT],
            OptimizerKind::Muon => &["momentum_buffer", "exp_avg", "exp_avg_sq"],
        }
    }

    fn get(&self, name: &str) -> &Tensor {
        &self
            .state
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a kept state")
            .1
    }

    /// Replaces state `name` by `next` in the rows that step.
    fn set(&mut self, name: &str, next: Tensor, stepping: &Tensor) {
        let slot = self
            .state
            .iter_mut()
            .find(|(n, _)| *n == name)
            .expect("a kept state");
        slot.1 = next.where_self(stepping, &slot.1);
    }

    /// The direction u of this step (the update is θ ← θ − lr·u, after any weight decay) for
    /// every row of `grad [K, P]` by this group's rule; the state of the rows that step moves on.
    fn direction(&mut self, h: &Hyper, grad: &Tensor, v: &StepValues) -> Tensor {
        let [b1, b2] = h.betas;
        match self.kind {
            OptimizerKind::Sgd => self.heavy_ball(h.momentum, grad, v),
            OptimizerKind::Sign => self.heavy_ball(h.momentum, &grad.sign(), v),
            OptimizerKind::Normalized => {
                let norms = grad.norm_scalaropt_dim(2, [1i64].as_slice(), true);
                self.heavy_ball(h.momentum, &(grad / norms), v)
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => self.adam(h, grad, v),
            OptimizerKind::Lion => {
                let m = self.get("exp_avg").shallow_clone();
                let c = m.lerp(grad, 1.0 - b1);
                self.set("exp_avg", m.lerp(grad, 1.0 - b2), &v.stepping);
                c.sign()
            }
            OptimizerKind::AdamMini => {
                let m = self.get("exp_avg").lerp(grad, 1.0 - b1);
                self.set("exp_avg", m, &v.stepping);
                let mean_sq = block_means(&(grad * grad), &h.blocks);
                let second = self.get(BLOCK_SECOND_MOMENT) * b2 + mean_sq * (1.0 - b2);
                self.set(BLOCK_SECOND_MOMENT, second, &v.stepping);
                let denom = self.get(BLOCK_SECOND_MOMENT).sqrt() / &v.bias_correction2_sqrt + h.eps;
                let step_size = denom.reciprocal() * &v.inv_bias_correction1;
                self.get("exp_avg") * per_value(&step_size, &h.blocks)
            }
            OptimizerKind::Muon => {
                let buf = self.get("momentum_buffer").lerp(grad, 1.0 - h.momentum);
                self.set("momentum_buffer", buf, &v.stepping);
                let nesterov = grad.lerp(self.get("momentum_buffer"), h.momentum);
                let out = if h.blocks.iter().any(|b| b.bias) {
                    self.adam(h, grad, v)
                } else {
                    grad.zeros_like()
                };
                for run in runs(&h.blocks).into_iter().filter(|r| !r.bias) {
                    let (k, count) = (grad.size()[0], run.count);
                    let mut cols = out.narrow(1, run.offset, count * run.size());
                    let x = nesterov.narrow(1, run.offset, count * run.size()).reshape([
                        k * count,
                        run.rows,
                        run.cols,
                    ]);
                    let adjust = (run.rows as f64 / run.cols as f64).max(1.0).sqrt();
                    let each: Vec<Tensor> = (0..k * count)
                        .map(|i| super::newton_schulz(&x.get(i)))
                        .collect();
                    let o = Tensor::stack(&each, 0).to_kind(grad.kind()) * adjust;
                    cols.copy_(&o.reshape([k, count * run.size()]));
                }
                out
            }
        }
    }

    /// `buf ← μ·buf + d` (torch.optim.SGD's buffer, dampening 0); the direction is `buf`.
    fn heavy_ball(&mut self, momentum: f64, d: &Tensor, v: &StepValues) -> Tensor {
        let next = self.get("momentum_buffer") * momentum + d;
        self.set("momentum_buffer", next, &v.stepping);
        self.get("momentum_buffer").shallow_clone()
    }

    /// torch.optim.Adam's direction `m̂ / (√v̂ + ε)`, its moments moved on.
    fn adam(&mut self, h: &Hyper, grad: &Tensor, v: &StepValues) -> Tensor {
        let [b1, b2] = h.betas;
        let m = self.get("exp_avg").lerp(grad, 1.0 - b1);
        self.set("exp_avg", m, &v.stepping);
        let sq = (self.get("exp_avg_sq") * b2).addcmul(&(grad * (1.0 - b2)), grad);
        self.set("exp_avg_sq", sq, &v.stepping);
        let denom = self.get("exp_avg_sq").sqrt() / &v.bias_correction2_sqrt + h.eps;
        self.get("exp_avg") / denom * &v.inv_bias_correction1
    }
}

/// Consecutive blocks of one shape and kind, as one `[k, count·rows·cols]` slice.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    offset: i64,
    rows: i64,
    cols: i64,
    bias: bool,
    count: i64,
}

impl Run {
    fn size(&self) -> i64 {
        self.rows * self.cols
    }
}

fn runs(blocks: &[Block]) -> Vec<Run> {
    let mut out: Vec<Run> = vec![];
    for b in blocks {
        match out.last_mut() {
            Some(r)
                if (r.rows, r.cols, r.bias) == (b.rows, b.cols, b.bias)
                    && r.offset + r.count * r.size() == b.offset =>
            {
                r.count += 1
            }
            _ => out.push(Run {
                offset: b.offset,
                rows: b.rows,
                cols: b.cols,
                bias: b.bias,
                count: 1,
            }),
        }
    }
    out
}

/// The mean of `x [k, P]` over each block, `[k, blocks]`: Adam-mini's `sum(g·g) / numel`.
fn block_means(x: &Tensor, blocks: &[Block]) -> Tensor {
    let k = x.size()[0];
    let parts: Vec<Tensor> = runs(blocks)
        .iter()
        .map(|r| {
            x.narrow(1, r.offset, r.count * r.size())
                .reshape([k, r.count, r.size()])
                .sum_dim_intlist([2i64].as_slice(), false, None::<Kind>)
                / r.size() as f64
        })
        .collect();
    Tensor::cat(&parts, 1)
}

/// `[k, blocks]` spread to `[k, P]`: each block's value on each of its parameters.
fn per_value(x: &Tensor, blocks: &[Block]) -> Tensor {
    let sizes: Vec<i64> = blocks.iter().map(|b| b.size()).collect();
    let total = sizes.iter().sum::<i64>();
    let repeats = Tensor::from_slice(&sizes).to_device(x.device());
    x.repeat_interleave_self_tensor(&repeats, 1, total)
}

/// `1 − lr·λ` per member (`[K, 1]`, or `[K, P]` where an Adam-mini member spares the MLP's
/// biases, as Adam-mini's code does); `None` when no member decays.
fn decay_factors(
    weight_decay: f64,
    members: &[(OptimizerKind, f64)],
    blocks: &[Block],
    p: i64,
    kind: Kind,
    device: Device,
) -> Option<Tensor> {
    let decays = |o: OptimizerKind| weight_decay > 0.0 && o.decays();
    if !members.iter().any(|m| decays(m.0)) {
        return None;
    }
    let spare_biases = members
        .iter()
        .any(|m| decays(m.0) && m.0 == OptimizerKind::AdamMini)
        && blocks.iter().any(|b| b.bias);
    let rows: Vec<Tensor> = members
        .iter()
        .map(|&(o, lr)| {
            let f = if decays(o) {
                1.0 - lr * weight_decay
            } else {
                1.0
            };
            let row = Tensor::full(
                [if spare_biases { p } else { 1 }],
                f,
                (Kind::Double, device),
            );
            if spare_biases && o == OptimizerKind::AdamMini {
                for b in blocks.iter().filter(|b| b.bias) {
                    let _ = row.narrow(0, b.offset, b.size()).fill_(1.0);
                }
            }
            row
        })
        .collect();
    Some(Tensor::stack(&rows, 0).to_kind(kind))
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

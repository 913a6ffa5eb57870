//! What one training step means, written once for every engine: the gradient norm that is
//! logged, the clip coefficient, the rule for steps whose loss or gradient is not finite,
//! Muon's orthogonalization, and every optimizer (the paper's SGD with momentum and Adam, and
//! the testbed's six, docs/spec.md) in each tensor layout:
//! - [`faithful`]: one tensor per parameter, torch.optim's single-tensor code path op for op
//!   (the faithful stepper, bit-identical to PyTorch on CPU);
//! - [`ensemble`]: all members' parameters as one flat `[K, P]` tensor (the ensemble stepper:
//!   fast mode, one run or many).
//!
//! The rules act on per-member tensors `[K]` (the faithful stepper's K is 1) and never read a
//! value back to the host, so the ensemble stepper stays asynchronous on a GPU.
pub mod ensemble;
pub mod faithful;

use crate::config::ClipMode;
use tch::{Kind, Tensor};

/// ‖g‖ of the concatenated gradient, as the authors log it: `grad.norm()` of their one
/// parameter tensor, `torch.norm(torch.cat([g.view(-1) …]))` for the MLP variant.
pub fn gradient_norm(grads: &[Tensor]) -> Tensor {
    match grads {
        [g] => g.norm(),
        _ => Tensor::cat(
            &grads.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
            0,
        )
        .norm(),
    }
}

/// ‖g‖ as `torch.nn.utils.clip_grad_norm_` computes it for its coefficient: the norm of the
/// per-tensor norms (it can differ from [`gradient_norm`] in the last bit).
pub fn norm_of_norms(grads: &[Tensor]) -> Tensor {
    Tensor::stack(&grads.iter().map(|g| g.norm()).collect::<Vec<_>>(), 0).norm()
}

/// The factor every gradient of a member is multiplied by, per member (`norms` is `[K]`, or
/// 0-dim), in the gradient's dtype; None when clipping is off (`clip` 0).
///
/// - threshold (the linear experiments): if ‖g‖ > c, `g.mul_(c / ‖g‖)`. That is the authors'
///   `grad_all.mul_(clip_threshold / norm_p)` with `norm_p` a 0-dim float32 tensor, which Python
///   evaluates as `norm_p.reciprocal() * c` in float32 (Tensor.__rtruediv__); the comparison
///   `norm_p > c` is float32 too. Otherwise the factor is exactly 1, which changes no bit.
/// - clip_grad_norm (the MLP experiments): `torch.nn.utils.clip_grad_norm_`, i.e.
///   `(‖g‖ + 1e-6).reciprocal() * c` clamped at 1, with ‖g‖ from [`norm_of_norms`].
pub fn clip_coefficient(norms: &Tensor, clip: f64, mode: ClipMode) -> Option<Tensor> {
    if clip <= 0.0 {
        return None;
    }
    Some(match mode {
        ClipMode::Threshold => {
            (norms.reciprocal() * clip).where_self(&norms.gt(clip), &norms.ones_like())
        }
        ClipMode::ClipGradNorm => ((norms + 1e-6).reciprocal() * clip).clamp_max(1.0),
    })
}

/// `train.skip_nonfinite`: a step whose loss or gradient norm is not finite makes no update and
/// leaves the optimizer state untouched (as `torch.amp.GradScaler` skips it); more than `limit`
/// such steps in a row and the run has diverged. With `limit` 0, the authors' rule, the first
/// one ends the run. Per member, on the device.
pub struct NonFinite {
    limit: i64,
    /// `[K]` int64: each member's current run of non-finite steps.
    pub in_a_row: Tensor,
    /// `[K]` bool: false once a member has diverged.
    pub active: Tensor,
}

impl NonFinite {
    pub fn new(limit: i64, members: i64, device: tch::Device) -> NonFinite {
        NonFinite {
            limit,
            in_a_row: Tensor::zeros([members], (Kind::Int64, device)),
            active: Tensor::ones([members], (Kind::Bool, device)),
        }
    }

    /// The state a checkpoint recorded: per member, the count of non-finite steps in a row and
    /// whether it is still active.
    pub fn restore(&mut self, in_a_row: &[i64], active: &[bool], device: tch::Device) {
        self.in_a_row = Tensor::from_slice(in_a_row).to_device(device);
        self.active = Tensor::from_slice(active).to_device(device);
    }

    /// Takes one step's losses and gradient norms `[K]`; returns `[K]` bool, the members that
    /// update in this step. A member that diverges in this step is inactive from now on.
    pub fn step(&mut self, losses: &Tensor, norms: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let finite = losses.isfinite().logical_and(&norms.isfinite());
            self.in_a_row = (&self.in_a_row + 1).where_scalarother(&finite.logical_not(), 0);
            self.active = self.active.logical_and(&self.in_a_row.le(self.limit));
            self.active.logical_and(&finite)
        })
    }
}

/// torch.optim.Muon's `_zeropower_via_newtonschulz` of one matrix `[rows, cols]`, op for op:
/// in bfloat16, transposed when taller than wide, divided by max(‖X‖_F, 1e-7), then five steps
/// `A = X @ Xᵀ`, `B = addmm(A, A, A, beta=b, alpha=c)`, `X = addmm(X, B, X, beta=a)` with
/// Muon's coefficients. Each op is the libtorch call torch makes (`addmm` through
/// [`crate::aten`]), because bfloat16 rounds differently in other kernels of the same
/// arithmetic on CPUs with native bfloat16 instructions. One matrix at a time, also in an
/// ensemble: a batched kernel's rounding may depend on the batch around a member.
pub fn newton_schulz(x: &Tensor) -> Tensor {
    const COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
    const STEPS: usize = 5;
    const EPS: f64 = 1e-7;
    assert_eq!(x.dim(), 2, "Newton-Schulz takes one matrix");
    let (a, b, c) = COEFFICIENTS;
    let size = x.size();
    let tall = size[0] > size[1];
    let mut o = x.to_kind(Kind::BFloat16);
    if tall {
        o = o.tr();
    }
    o /= o.norm().clamp_min(EPS);
    for _ in 0..STEPS {
        let gram = o.matmul(&o.tr());
        let update = crate::aten::addmm(&gram, &gram, &gram, b, c);
        o = crate::aten::addmm(&o, &update, &o, a, 1.0);
    }
    if tall {
        o = o.tr();
    }
    o
}

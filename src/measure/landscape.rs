//! The landscape measurements of paper §4 (Fig. 2 rows 3–4, Fig. 6, App. B): on the
//! evaluation batch, the test loss, the gradient norm, the robust condition number
//! `max|diag H| / median|diag H|` and the directional smoothness `uᵀHu`; beyond the paper,
//! two exact quantities from the eigenvalues of the full Hessian.
//!
//! Everything is taken with respect to ONE flat parameter vector (all parameters together, in
//! `state_dict` order, as the PyTorch side's `torch.autograd.functional.hessian` sees them,
//! [`Layout`]). The model's parameters are views into that vector, fed to the forward pass, so
//! the linear model and the MLP variant are handled alike.
use crate::config::Mode;
use crate::data::Batch;
use crate::model::{self, Arch, Block, Layout};
use crate::stats;
use tch::{Device, Kind, Tensor};

/// The loss at one point of parameter space, as a function of the flat parameter vector, with
/// its gradient kept differentiable: every Hessian row or Hessian-vector product is then one
/// more backward pass through the graph built once here, instead of a new forward each time.
pub struct Point {
    /// The flat parameter vector (a leaf that requires grad).
    pub flat: Tensor,
    pub loss: Tensor,
    /// ∇loss, built with `create_graph` so that it can be differentiated again.
    pub grad: Tensor,
    /// A fast-mode point on the CPU whose model the native kernel computes: its Hessian comes
    /// from the kernel's forward mode ([`model::native::hessian`]), not from P backward passes.
    native: Option<(Arch, Batch)>,
}

impl Point {
    /// The point in the faithful forward pass (what the PyTorch side differentiates).
    pub fn new(arch: &Arch, params: &[Tensor], batch: &Batch) -> Point {
        Point::with_mode(arch, params, batch, Mode::Faithful)
    }

    /// The point in the forward pass of `mode`: a run trained in fast mode is measured with
    /// [`model::fast_loss`] (the same model to about 1e-6 relative, several times cheaper per
    /// Hessian row on a CPU).
    pub fn with_mode(arch: &Arch, params: &[Tensor], batch: &Batch, mode: Mode) -> Point {
        let layout = Layout::new(arch);
        let flat = layout.flatten(params).set_requires_grad(true);
        assert_eq!(
            flat.size()[0],
            layout.total,
            "the parameters do not fit the architecture"
        );
        let views = layout.unflatten(&flat);
        let loss = match mode {
            Mode::Faithful => model::loss(arch, &views, batch),
            Mode::Fast => model::fast_loss(arch, &views, batch),
        };
        let grad = single(Tensor::run_backward(&[&loss], &[&flat], true, true));
        let native =
            (mode == Mode::Fast && flat.device() == Device::Cpu && model::native::applies(arch))
                .then(|| {
                    let batch = Batch {
                        z: batch.z.shallow_clone(),
                        y_query: batch.y_query.shallow_clone(),
                    };
                    (*arch, batch)
                });
        Point {
            flat,
            loss,
            grad,
            native,
        }
    }

    /// ‖∇loss‖ as training logs it: the norm of the concatenated gradient.
    pub fn grad_norm(&self) -> Tensor {
        self.grad.detach().norm()
    }

    /// H·u, one backward pass of `⟨∇loss, u⟩` (a native fast-mode point: one forward-mode
    /// pass of the kernel).
    pub fn hvp(&self, u: &Tensor) -> Tensor {
        if let Some((arch, batch)) = &self.native {
            if let Some(hu) = model::native::hvp_tensor(arch, &self.flat, batch, u, 1) {
                return hu;
            }
        }
        let u = u
            .detach()
            .to_kind(self.flat.kind())
            .to_device(self.flat.device());
        single(Tensor::run_backward(
            &[self.grad.dot(&u)],
            &[&self.flat],
            true,
            false,
        ))
    }

    /// Row i of the Hessian: the gradient of the i-th gradient entry (what
    /// `torch.autograd.functional.hessian` computes row by row, without its Python loop).
    pub fn hessian_row(&self, i: i64) -> Tensor {
        single(Tensor::run_backward(
            &[self.grad.get(i)],
            &[&self.flat],
            true,
            false,
        ))
    }

    /// The full Hessian, row by row; `on_row` is called after each row (progress).
    pub fn hessian(&self, mut on_row: impl FnMut()) -> Tensor {
        let p = self.flat.size()[0];
        if let Some((arch, batch)) = &self.native {
            // libtorch's intra-op threads, as the caller set them (`--threads`; one per
            // `reproduce` worker): not every core, which two workers would oversubscribe.
            let threads = tch::get_num_threads().max(1) as usize;
            if let Some(h) = model::native::hessian_tensor(arch, &self.flat, batch, threads) {
                (0..p).for_each(|_| on_row());
                return h;
            }
        }
        let h = Tensor::empty([p, p], (self.flat.kind(), self.flat.device()));
        for i in 0..p {
            let mut row = h.get(i);
            row.copy_(&self.hessian_row(i));
            on_row();
        }
        h
    }
}

fn single(mut grads: Vec<Tensor>) -> Tensor {
    grads.pop().expect("one input, one gradient")
}

/// The exact Hessian of the loss with respect to all parameters (flat, `state_dict` order).
pub fn hessian(arch: &Arch, params: &[Tensor], batch: &Batch) -> Tensor {
    Point::new(arch, params, batch).hessian(|| {})
}

/// H·u at `params`, one Hessian-vector product.
pub fn hvp(arch: &Arch, params: &[Tensor], batch: &Batch, u: &Tensor) -> Tensor {
    Point::new(arch, params, batch).hvp(u)
}

/// The robust condition number `max|x| / median|x|` of a Hessian diagonal (R_med) or of its
/// eigenvalues. The median is `Tensor::median`, the LOWER of the two middle values for an even
/// count, as `torch.median` on the PyTorch side.
pub fn condition_number(diag_or_eigs: &Tensor) -> f64 {
    let a = diag_or_eigs.abs();
    (a.max() / a.median()).double_value(&[])
}

/// The largest eigenvalue of a symmetric matrix (the sharpness, when it is the Hessian) and
/// `max|λ| / median|λ|`; NaN for both when the matrix is not finite (a diverged run).
pub fn eigen_summary(h: &Tensor) -> (f64, f64) {
    if h.isfinite().all().int64_value(&[]) == 0 {
        return (f64::NAN, f64::NAN);
    }
    match h.f_linalg_eigvalsh("L") {
        Ok(lam) => (condition_number(&lam), lam.max().double_value(&[])),
        Err(_) => (f64::NAN, f64::NAN),
    }
}

/// The exact eigenvalues (ascending) of the whole Hessian `h [P, P]` and of each block's
/// diagonal sub-Hessian (`blocks`, as Adam-mini's): the first entry is the whole one. Empty
/// when `h` is not finite.
pub fn block_spectra(h: &Tensor, blocks: &[Block]) -> Vec<Vec<f64>> {
    if h.isfinite().all().int64_value(&[]) == 0 {
        return vec![];
    }
    let h = h.to_kind(Kind::Double);
    let eigs = |m: &Tensor| -> Vec<f64> {
        match m.f_linalg_eigvalsh("L") {
            Ok(l) => Vec::<f64>::try_from(&l).unwrap_or_default(),
            Err(_) => vec![],
        }
    };
    let mut out = vec![eigs(&h)];
    out.extend(blocks.iter().map(|b| {
        let sub = h
            .narrow(0, b.offset, b.size())
            .narrow(1, b.offset, b.size());
        eigs(&sub)
    }));
    out
}

/// Zhang et al.'s block heterogeneity: the mean pairwise Jensen–Shannon distance between the
/// blocks' smoothed spectral densities (`spectra` without the whole Hessian's;
/// [`stats::mean_pairwise_js`], 10 000 bins, σ² = 1e-5 as PyHessian smooths).
///
/// A block whose sub-Hessian is exactly zero is left out: the loss does not depend on it (the
/// last layer's P writes only to the covariate rows, which the prediction never reads), so it
/// has no curvature to compare: its density is one spike at 0, and a distance to it would only
/// say how much of the other block's spectrum lies near 0.
pub fn block_heterogeneity(block_spectra: &[Vec<f64>]) -> f64 {
    let live: Vec<Vec<f64>> = block_spectra
        .iter()
        .filter(|eigs| eigs.iter().any(|&e| e != 0.0))
        .cloned()
        .collect();
    stats::mean_pairwise_js(&live, 10_000, 1e-5)
}

/// `(θ_{t+1} − θ_t) / ‖θ_{t+1} − θ_t‖` as flat vectors; None when the two points coincide.
pub fn unit_direction(flat_t: &Tensor, flat_t1: &Tensor) -> Option<Tensor> {
    let delta = flat_t1.detach() - flat_t.detach();
    let norm = delta.norm();
    if norm.double_value(&[]) == 0.0 {
        return None;
    }
    Some(&delta / norm)
}

impl Point {
    /// The directional smoothness `uᵀ H(θ_t) u` with `u` the normalised step from this point to
    /// `next` (flat, the parameters of step t+1; paper Fig. 2 row 4): one Hessian-vector
    /// product. NaN when the step is zero. The one place it is computed.
    pub fn directional_smoothness(&self, next: &Tensor) -> f64 {
        match unit_direction(&self.flat, &next.to_device(self.flat.device())) {
            Some(u) => u.dot(&self.hvp(&u)).double_value(&[]),
            None => f64::NAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_whose_sub_hessian_is_zero_is_left_out_of_the_heterogeneity() {
        let (a, b) = (vec![0.5, 1.0, 2.0], vec![0.01, 0.02, 3.0]);
        let with_dead = block_heterogeneity(&[a.clone(), vec![0.0; 3], b.clone()]);
        assert_eq!(with_dead, block_heterogeneity(&[a.clone(), b.clone()]));
        assert!(with_dead > 0.0);
        // A block with a single nonzero eigenvalue is live and counts.
        let with_live = block_heterogeneity(&[a, vec![0.0, 0.0, 1e-9], b]);
        assert_ne!(with_live, with_dead);
    }
}

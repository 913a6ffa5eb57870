//! The faithful forward pass: the authors' three einsums per layer and head, in their order,
//! so that a run is bit-identical to PyTorch on CPU.
use super::Arch;
use crate::config::{Attention, Parametrization};
use crate::data::Batch;
use crate::mlp;
use tch::{Kind, Tensor};

/// P~ and Q~ of one head, from its learned `[2, k, k]` slice.
fn embed(arch: &Arch, pq: &Tensor) -> (Tensor, Tensor) {
    let (p, q) = (pq.get(0), pq.get(1));
    match arch.parametrization {
        Parametrization::Full => (p, q),
        Parametrization::Restricted => {
            // P~ = [[P,0],[0,1]], Q~ = [[Q,0],[0,0]]; padding adds exact zeros, so the values
            // are the same however the embedding is written.
            let d = arch.dim;
            let one = Tensor::zeros([d + 1, d + 1], (pq.kind(), pq.device()));
            let _ = one.get(d).get(d).fill_(1.0);
            let pt = p.constant_pad_nd([0, 1, 0, 1]) + one;
            let qt = q.constant_pad_nd([0, 1, 0, 1]);
            (pt, qt)
        }
    }
}

/// M = diag(1, …, 1, 0): the query token is never a key or a value.
fn query_mask(n: i64, like: &Tensor) -> Tensor {
    let mut diag = vec![1f32; n as usize + 1];
    diag[n as usize] = 0.0;
    Tensor::from_slice(&diag)
        .diag_embed(0, -2, -1)
        .to_kind(like.kind())
        .to_device(like.device())
}

/// Z_L: the tokens after the optional MLP and all attention layers.
///
/// The three einsums are the authors' contraction order; another order computes the same
/// model only to about 1e-6, so faithful runs keep this one.
// `z = z + a`, not `z += a`: on a tch tensor `+=` is the in-place `add_`, and autograd needs
// the old z, which the layer's products saved for the backward pass.
#[allow(clippy::assign_op_pattern)]
pub fn forward(arch: &Arch, params: &[Tensor], z: &Tensor) -> Tensor {
    let n = arch.context;
    let mut z = z.shallow_clone();
    if arch.mlp_hidden > 0 {
        let p: Vec<&Tensor> = params[1..5].iter().collect();
        let covariates = mlp::forward(&z.narrow(2, 0, arch.dim), &p);
        z = Tensor::cat(&[covariates, z.narrow(2, arch.dim, 1)], 2);
    }
    let mask = query_mask(n, &z);
    let allparam = &params[0];
    for l in 0..arch.layers {
        let mut acc: Option<Tensor> = None;
        for h in 0..arch.heads {
            let (pt, qt) = embed(arch, &allparam.get(l).get(h));
            let mut s = Tensor::einsum("BNi,ij,BMj->BNM", &[&z, &qt, &z], None::<i64>);
            if arch.attention == Attention::Softmax {
                s = s.softmax(-1, None::<Kind>);
            }
            let k = Tensor::einsum("ij,BNj->BNi", &[&pt, &z], None::<i64>);
            let a = Tensor::einsum("BNM,ML,BLi->BNi", &[&s, &mask, &k], None::<i64>) / n as f64;
            acc = Some(match acc {
                None => a,
                Some(acc) => acc + a,
            });
        }
        z = z + acc.expect("heads >= 1");
    }
    z
}

/// The prediction for each prompt's query is −Z_L[b, n, d]; the loss is the mean squared error.
pub fn loss(arch: &Arch, params: &[Tensor], batch: &Batch) -> Tensor {
    let z = forward(arch, params, &batch.z);
    (z.select(1, arch.context).select(1, arch.dim) + &batch.y_query)
        .square()
        .mean(None::<Kind>)
}

//! The autograd gradient of the forward pass, checked against central finite differences
//! in float64.
mod common;
use common::{random_problem, small_arch};
use linattn::config::{Attention, Parametrization};
use linattn::model::{self, Arch};
use tch::Tensor;

fn check_gradient(arch: Arch) {
    let (params, batch) = random_problem(&arch, 3);
    let params: Vec<Tensor> = params
        .into_iter()
        .map(|p| p.set_requires_grad(true))
        .collect();
    let loss = model::loss(&arch, &params, &batch);
    let grads = Tensor::run_backward(&[loss], &params, false, false);
    let h = 1e-6;
    for (p, g) in params.iter().zip(&grads) {
        let flat = p.detach().view([-1]);
        for i in 0..flat.size()[0] {
            let eval = |delta: f64| {
                let q: Vec<Tensor> = params.iter().map(|t| t.detach().copy()).collect();
                let target = q.iter().position(|t| t.size() == p.size()).unwrap();
                let _ = q[target].view([-1]).get(i).g_add_scalar_(delta);
                model::loss(&arch, &q, &batch).double_value(&[])
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            let ad = g.view([-1]).double_value(&[i]);
            let rel = (fd - ad).abs() / ad.abs().max(1e-3);
            assert!(rel < 1e-6, "{arch:?}: d loss / d param[{i}]: autograd {ad} vs finite differences {fd} (rel {rel:e})");
        }
    }
}

#[test]
fn gradient_matches_finite_differences_restricted_linear() {
    check_gradient(small_arch(
        Parametrization::Restricted,
        Attention::Linear,
        0,
    ));
}

#[test]
fn gradient_matches_finite_differences_full_softmax() {
    check_gradient(small_arch(Parametrization::Full, Attention::Softmax, 0));
}

#[test]
fn gradient_matches_finite_differences_mlp_variant() {
    check_gradient(small_arch(Parametrization::Full, Attention::Linear, 5));
}

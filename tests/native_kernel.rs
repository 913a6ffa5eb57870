//! The native CPU kernel of fast mode (`model::native`) computes the model of the faithful
//! forward: its loss and its closed-form gradient agree with the faithful loss and autograd's
//! gradient of it within 1e-5 relative in float32 (1e-12 in float64), its gradient agrees with
//! float64 finite differences of its own loss, and a member's result does not depend on the
//! members beside it.
use linattn::config::Config;
use linattn::data::{Batch, DataStream};
use linattn::model::native::NativeFast;
use linattn::model::{self, Arch, Layout};
use tch::{Device, Kind, Tensor};

fn config(sets: &[&str]) -> Config {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::from_yaml_str("", &sets).expect("a valid config")
}

/// A batch of the faithful stream with `seed`, and one member's parameters `[P]` drawn with
/// std `init_std`.
fn batch_and_theta(cfg: &Config, seed: u32, init_std: f64, kind: Kind) -> (Batch, Tensor) {
    let arch = Arch::from_config(cfg);
    let numpy = linattn::rng::seed_both(seed);
    let theta = Layout::new(&arch).flatten(&model::init_values(&arch, init_std));
    let b = DataStream::new(cfg, None, numpy, Device::Cpu).next_batch();
    (b.to_kind(kind), theta.to_kind(kind))
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).norm().double_value(&[]);
    diff / b.norm().double_value(&[]).max(1e-30)
}

/// The native loss and gradient of one member on one stream.
fn native(arch: &Arch, theta: &Tensor, batch: &Batch) -> (Tensor, Tensor) {
    let mut k = NativeFast::new(arch, 1, theta.kind(), Device::Cpu, 1)
        .expect("a model the kernel computes");
    let batch = Batch {
        z: batch.z.unsqueeze(0),
        y_query: batch.y_query.unsqueeze(0),
    };
    let (losses, grad) = k.losses_and_gradients(&theta.unsqueeze(0), &batch, None);
    (losses.get(0), grad.get(0))
}

/// (loss, gradient) relative differences of the kernel against the faithful forward.
fn native_vs_faithful(cfg: &Config, init_std: f64, kind: Kind) -> (f64, f64) {
    let arch = Arch::from_config(cfg);
    let layout = Layout::new(&arch);
    let (batch, theta) = batch_and_theta(cfg, 0, init_std, kind);
    let leaf = theta.copy().set_requires_grad(true);
    let faithful = model::loss(&arch, &layout.unflatten(&leaf), &batch);
    assert!(
        bool::try_from(faithful.isfinite()).unwrap(),
        "the faithful loss is not finite at init std {init_std}: choose a smaller std"
    );
    let g_faithful = Tensor::run_backward(&[&faithful], &[&leaf], false, false)
        .pop()
        .unwrap();
    let (loss, grad) = native(&arch, &theta, &batch);
    (rel(&loss, &faithful), rel(&grad, &g_faithful))
}

fn check(name: &str, sets: &[&str], large_std: f64) {
    let cfg = config(sets);
    for init_std in [cfg.model.init_std, large_std] {
        let (loss32, grad32) = native_vs_faithful(&cfg, init_std, Kind::Float);
        let (loss64, grad64) = native_vs_faithful(&cfg, init_std, Kind::Double);
        println!("{name} (init std {init_std}): float32 loss {loss32:.2e} grad {grad32:.2e}; float64 loss {loss64:.2e} grad {grad64:.2e}");
        assert!(
            loss32 < 1e-5 && grad32 < 1e-5,
            "{name}, init std {init_std}: float32 loss rel {loss32:e}, gradient rel {grad32:e}"
        );
        assert!(
            loss64 < 1e-12 && grad64 < 1e-12,
            "{name}, init std {init_std}: float64 loss rel {loss64:e}, gradient rel {grad64:e}"
        );
    }
}

#[test]
fn native_loss_and_gradient_match_the_faithful_forward_and_autograd_paper_default() {
    check("restricted, L=3 H=1 d=5 n=20", &["data.batch=1000"], 0.3);
}

#[test]
fn native_loss_and_gradient_match_the_faithful_forward_and_autograd_multi_head_and_full() {
    check(
        "restricted, H=3, gamma, B not a multiple of the lane count",
        &["data.batch=250", "model.heads=3", "data.setting=gamma"],
        0.3,
    );
    check(
        "full, H=2, L=4",
        &[
            "data.batch=256",
            "model.heads=2",
            "model.layers=4",
            "model.parametrization=full",
        ],
        0.1,
    );
    // More heads than the side of a matrix: the last layer keeps a column per head.
    check(
        "restricted, H=8, d=2",
        &["data.batch=37", "model.heads=8", "model.dim=2"],
        0.3,
    );
}

/// The MLP front end of App. B: its backward pass goes through G₀ to the tokens and the MLP.
#[test]
fn native_loss_and_gradient_match_the_faithful_forward_and_autograd_mlp_variant() {
    check(
        "MLP variant (App. B), B not a multiple of the lane count",
        &[
            "data.setting=mlp_teacher",
            "model.mlp_hidden=30",
            "model.parametrization=full",
            "data.batch=250",
        ],
        0.2,
    );
    check(
        "MLP variant, L=1, H=2",
        &[
            "data.setting=mlp_teacher",
            "model.mlp_hidden=7",
            "model.parametrization=full",
            "model.layers=1",
            "model.heads=2",
            "data.batch=40",
        ],
        0.3,
    );
}

/// Softmax attention (Fig. 4): its scores, their softmax and its backward pass.
#[test]
fn native_loss_and_gradient_match_the_faithful_forward_and_autograd_softmax() {
    check(
        "softmax, full, L=3 (Fig. 4), B not a multiple of the lane count",
        &[
            "model.attention=softmax",
            "model.parametrization=full",
            "data.batch=250",
        ],
        0.3,
    );
    check(
        "softmax, restricted, H=2, L=2, gamma",
        &[
            "model.attention=softmax",
            "model.heads=2",
            "model.layers=2",
            "data.setting=gamma",
            "data.batch=40",
        ],
        0.3,
    );
    check(
        "softmax with the MLP front end, L=1",
        &[
            "model.attention=softmax",
            "model.parametrization=full",
            "model.layers=1",
            "model.mlp_hidden=7",
            "data.setting=mlp_teacher",
            "data.batch=40",
        ],
        0.3,
    );
}

#[test]
fn native_loss_and_gradient_match_the_faithful_forward_and_autograd_one_layer_and_large_dims() {
    check("restricted, L=1", &["data.batch=64", "model.layers=1"], 0.3);
    check(
        "restricted, L=8 d=20 n=60",
        &[
            "data.batch=64",
            "model.layers=8",
            "model.dim=20",
            "data.context=60",
        ],
        0.08,
    );
}

/// Central differences in float64 of the kernel's own loss, at every parameter of a small model
/// far from the identity.
#[test]
fn native_gradient_matches_float64_finite_differences_of_its_loss() {
    for sets in [
        &[
            "data.batch=40",
            "model.layers=3",
            "model.heads=2",
            "model.dim=3",
            "data.context=7",
        ][..],
        &[
            "data.batch=40",
            "model.layers=2",
            "model.dim=3",
            "data.context=7",
            "model.parametrization=full",
        ][..],
        &[
            "data.batch=40",
            "model.layers=2",
            "model.dim=3",
            "data.context=7",
            "model.parametrization=full",
            "model.mlp_hidden=6",
            "data.setting=mlp_teacher",
        ][..],
        &[
            "data.batch=40",
            "model.layers=3",
            "model.heads=2",
            "model.dim=3",
            "data.context=7",
            "model.parametrization=full",
            "model.attention=softmax",
        ][..],
    ] {
        let cfg = config(sets);
        let arch = Arch::from_config(&cfg);
        let (batch, theta) = batch_and_theta(&cfg, 3, 0.4, Kind::Double);
        let (_, grad) = native(&arch, &theta, &batch);
        let eps = 1e-6;
        let mut worst: f64 = 0.0;
        let scale = grad.abs().max().double_value(&[]);
        for i in 0..theta.size()[0] {
            let plus = theta.copy();
            let _ = plus.get(i).g_add_scalar_(eps);
            let minus = theta.copy();
            let _ = minus.get(i).g_sub_scalar_(eps);
            let fd = (native(&arch, &plus, &batch).0.double_value(&[])
                - native(&arch, &minus, &batch).0.double_value(&[]))
                / (2.0 * eps);
            worst = worst.max((fd - grad.double_value(&[i])).abs() / scale);
        }
        println!("{sets:?}: largest |finite difference − gradient| / max|gradient| = {worst:.2e}");
        assert!(worst < 1e-7, "{sets:?}: finite differences differ from the gradient by {worst:e} of its largest entry");
    }
}

/// Members that share a stream, and members beside others, get exactly their solo result.
#[test]
fn a_native_member_gets_bit_for_bit_its_solo_result_whatever_the_members_beside_it() {
    for sets in [
        &["data.batch=100"][..],
        &[
            "data.batch=100",
            "data.setting=mlp_teacher",
            "model.mlp_hidden=30",
            "model.parametrization=full",
        ][..],
    ] {
        let cfg = config(sets);
        let arch = Arch::from_config(&cfg);
        let (b0, t0) = batch_and_theta(&cfg, 0, 0.2, Kind::Float);
        let (b1, t1) = batch_and_theta(&cfg, 1, 0.2, Kind::Float);
        let solo0 = native(&arch, &t0, &b0);
        let solo1 = native(&arch, &t1, &b1);
        let batch = Batch {
            z: Tensor::stack(&[&b0.z, &b1.z], 0),
            y_query: Tensor::stack(&[&b0.y_query, &b1.y_query], 0),
        };
        let theta = Tensor::stack(&[&t1, &t0, &t0], 0);
        let rows = Tensor::from_slice(&[1i64, 0, 0]);
        let mut k = NativeFast::new(&arch, 3, Kind::Float, Device::Cpu, 2).unwrap();
        let (losses, grad) = k.losses_and_gradients(&theta, &batch, Some(&rows));
        for (i, solo) in [(0, &solo1), (1, &solo0), (2, &solo0)] {
            assert!(
                losses.get(i).equal(&solo.0),
                "{sets:?} member {i}: loss differs from its solo run"
            );
            assert!(
                grad.get(i).equal(&solo.1),
                "{sets:?} member {i}: gradient differs from its solo run"
            );
        }
    }
}

#[test]
fn the_native_kernel_declines_the_dtypes_it_does_not_compute() {
    let arch = Arch::from_config(&config(&[]));
    assert!(NativeFast::new(&arch, 1, Kind::Half, Device::Cpu, 1).is_none());
}

/// The kernel's own labels from the host rows (y = x·w, or φ*(x)·w through the teacher) give the
/// batch of `DeviceStream::batch`.
#[test]
fn native_steps_from_host_rows_match_steps_from_the_device_streams_batch() {
    for setting in ["normal", "sphere", "gamma", "mlp_teacher"] {
        let mut sets = vec![
            "data.batch=100".to_string(),
            format!("data.setting={setting}"),
        ];
        if setting == "mlp_teacher" {
            // The labels through the teacher's features, and the learned MLP in front.
            sets.extend([
                "model.mlp_hidden=30".into(),
                "model.parametrization=full".into(),
            ]);
        }
        let cfg = Config::from_yaml_str("", &sets).expect("a valid config");
        let arch = Arch::from_config(&cfg);
        let teacher = (setting == "mlp_teacher")
            .then(|| linattn::mlp::Mlp::teacher(&cfg.data, cfg.model.dim));
        let mut stream = linattn::data::DeviceStream::new(&cfg, &[4, 9], teacher, Device::Cpu);
        let theta = Tensor::stack(
            &[
                batch_and_theta(&cfg, 0, 0.2, Kind::Float).1,
                batch_and_theta(&cfg, 1, 0.2, Kind::Float).1,
            ],
            0,
        );
        let mut k = NativeFast::new(&arch, 2, Kind::Float, Device::Cpu, 2).unwrap();
        let (l_batch, g_batch) = k.losses_and_gradients(&theta, &stream.batch(7), None);
        let rows = stream.host_rows(7).expect("rows for a float32 run");
        let (l_rows, g_rows) = k.losses_and_gradients_from_rows(&theta, &rows, None);
        let (lr, gr) = (rel(&l_rows, &l_batch), rel(&g_rows, &g_batch));
        println!("{setting}: loss rel {lr:.2e}, gradient rel {gr:.2e}");
        assert!(
            lr < 1e-6 && gr < 1e-6,
            "{setting}: loss rel {lr:e}, gradient rel {gr:e}"
        );
    }
}

/// The kernel's forward-mode Hessian equals autograd's Hessian of the faithful forward.
#[test]
fn native_hessian_matches_autograds_hessian_of_the_faithful_forward() {
    for sets in [
        &["data.batch=200"][..],
        &[
            "data.batch=50",
            "model.heads=2",
            "model.layers=2",
            "model.parametrization=full",
        ][..],
        &[
            "data.batch=50",
            "model.layers=2",
            "model.parametrization=full",
            "model.mlp_hidden=8",
            "data.setting=mlp_teacher",
        ][..],
        &[
            "data.batch=50",
            "model.layers=3",
            "model.parametrization=full",
            "model.attention=softmax",
        ][..],
    ] {
        let cfg = config(sets);
        let arch = Arch::from_config(&cfg);
        let layout = Layout::new(&arch);
        for (kind, bound) in [(Kind::Float, 1e-5), (Kind::Double, 1e-12)] {
            let (batch, theta) = batch_and_theta(&cfg, 2, 0.2, kind);
            let reference =
                linattn::measure::landscape::hessian(&arch, &layout.unflatten(&theta), &batch);
            let native = linattn::model::native::hessian_tensor(&arch, &theta, &batch, 2).unwrap();
            let r = rel(&native, &reference);
            println!("{sets:?} {kind:?}: Hessian rel {r:.2e}");
            assert!(r < bound, "{sets:?} {kind:?}: Hessian rel {r:e}");
        }
    }
}

/// One forward-mode pass gives autograd's Hessian-vector product of the faithful forward.
#[test]
fn native_hessian_vector_product_matches_autograds() {
    let cfg = config(&["data.batch=300", "model.heads=2"]);
    let arch = Arch::from_config(&cfg);
    let layout = Layout::new(&arch);
    for (kind, bound) in [(Kind::Float, 1e-5), (Kind::Double, 1e-12)] {
        let (batch, theta) = batch_and_theta(&cfg, 5, 0.2, kind);
        let u = Tensor::randn([layout.total], (kind, Device::Cpu));
        let reference =
            linattn::measure::landscape::hvp(&arch, &layout.unflatten(&theta), &batch, &u);
        let native = linattn::model::native::hvp_tensor(&arch, &theta, &batch, &u, 2).unwrap();
        let r = rel(&native, &reference);
        println!("{kind:?}: H·u rel {r:.2e}");
        assert!(r < bound, "{kind:?}: H·u rel {r:e}");
    }
}

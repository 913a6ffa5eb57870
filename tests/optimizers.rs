//! Each optimizer written twice agrees with itself: the per-tensor rule of the faithful stepper
//! (`optim::faithful`, which the PyTorch side checks bit for bit) and the `[K, P]` rule of the
//! ensemble stepper (`optim::ensemble`, fast mode, one run or many), fed the same gradients. And in an
//! ensemble over every optimizer each member updates as it does alone.
use linattn::config::{Config, OptimizerKind};
use linattn::model::{Arch, Layout};
use linattn::optim::{ensemble, faithful};
use tch::{nn, Device, Kind, Tensor};

const ALL: [OptimizerKind; 8] = [
    OptimizerKind::Sgd,
    OptimizerKind::Adam,
    OptimizerKind::Adamw,
    OptimizerKind::Sign,
    OptimizerKind::Normalized,
    OptimizerKind::Lion,
    OptimizerKind::AdamMini,
    OptimizerKind::Muon,
];

fn config(kind: OptimizerKind, mlp: bool) -> Config {
    let mut sets = vec![
        format!("train.optimizer={}", kind.name()),
        "train.lr=0.01".into(),
    ];
    if kind.decays() {
        sets.push("train.weight_decay=0.1".into());
    }
    if mlp {
        sets.extend(
            [
                "model.parametrization=full",
                "model.mlp_hidden=30",
                "data.setting=mlp_teacher",
            ]
            .map(String::from),
        );
    }
    Config::from_yaml_str("", &sets).expect("a valid config")
}

/// Parameters in a VarStore (one group each, as the faithful stepper makes them), drawn at
/// random.
fn variables(arch: &Arch, vs: &nn::VarStore) -> Vec<Tensor> {
    arch.param_specs()
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let mut v = vs.root().set_group(i).zeros(&name.replace('.', "_"), shape);
            tch::no_grad(|| {
                v.copy_(&(Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 0.1))
            });
            v
        })
        .collect()
}

/// Sets every parameter's gradient to `grads` (the gradient of Σ p·g is g, exactly).
fn set_gradients(params: &[Tensor], grads: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let total = params
        .iter()
        .zip(grads)
        .map(|(p, g)| (p * g).sum(Kind::Float))
        .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
    total.backward();
}

/// The largest relative difference between the two layouts' parameters over `steps` steps of
/// random gradients.
fn layouts_differ_by(kind: OptimizerKind, mlp: bool, steps: usize) -> f64 {
    tch::manual_seed(0);
    let cfg = config(kind, mlp);
    let arch = Arch::from_config(&cfg);
    let layout = Layout::new(&arch);
    let vs = nn::VarStore::new(Device::Cpu);
    let params = variables(&arch, &vs);
    let mut theta = layout.flatten(&params).unsqueeze(0);
    let mut per_tensor = faithful::FaithfulOptimizer::new(&cfg.train, &vs, &params).unwrap();
    let members = [(kind, cfg.train.lr)];
    let mut flat = ensemble::EnsembleOptimizer::new(
        &cfg.train,
        &members,
        layout.blocks(),
        layout.total,
        Device::Cpu,
    );
    let stepping = Tensor::from_slice(&[true]);
    let mut worst = 0f64;
    for _ in 0..steps {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| Tensor::randn(p.size().as_slice(), (Kind::Float, Device::Cpu)))
            .collect();
        set_gradients(&params, &grads);
        per_tensor.step(&params);
        tch::no_grad(|| flat.update(&mut theta, &layout.flatten(&grads).unsqueeze(0), &stepping));
        let a = layout.flatten(&params);
        let d = (&theta.get(0) - &a).norm().double_value(&[]) / a.norm().double_value(&[]);
        worst = worst.max(d);
    }
    worst
}

#[test]
fn every_optimizer_updates_alike_per_tensor_and_flat() {
    for kind in ALL {
        for mlp in [false, true] {
            let d = layouts_differ_by(kind, mlp, 20);
            println!(
                "{:<10} mlp {mlp}: largest relative difference {d:.2e}",
                kind.name()
            );
            // Measured here: at most 6.3e-8 (Muon 3.9e-8); Muon orthogonalizes in bfloat16,
            // where one rounding apart in its update is about 1e-5.
            let tol = if kind == OptimizerKind::Muon {
                1e-5
            } else {
                1e-6
            };
            assert!(
                d <= tol,
                "{} (mlp {mlp}): the layouts differ by {d:e}",
                kind.name()
            );
        }
    }
}

/// An ensemble over all eight optimizers is one computation per optimizer: each member's
/// parameters and state follow those of an ensemble of that member alone (to float32 rounding:
/// a vectorised loop over K·P values ends on other elements than one over P).
#[test]
fn in_an_ensemble_over_every_optimizer_each_member_updates_as_alone() {
    tch::manual_seed(1);
    let cfg = config(OptimizerKind::Adamw, true);
    let layout = Layout::new(&Arch::from_config(&cfg));
    let members: Vec<(OptimizerKind, f64)> = ALL
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, 0.001 * (i + 1) as f64))
        .collect();
    let k = members.len() as i64;
    let start = Tensor::randn([k, layout.total], (Kind::Float, Device::Cpu)) * 0.1;
    let mut together = start.copy();
    let mut all = ensemble::EnsembleOptimizer::new(
        &cfg.train,
        &members,
        layout.blocks(),
        layout.total,
        Device::Cpu,
    );
    let mut alone: Vec<(Tensor, ensemble::EnsembleOptimizer)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let opt = ensemble::EnsembleOptimizer::new(
                &cfg.train,
                &[*m],
                layout.blocks(),
                layout.total,
                Device::Cpu,
            );
            (start.get(i as i64).unsqueeze(0).copy(), opt)
        })
        .collect();
    // Member 2 skips step 3 (a non-finite step): its state must stay as it was.
    for step in 0..6 {
        let grad = Tensor::randn([k, layout.total], (Kind::Float, Device::Cpu));
        let stepping: Vec<bool> = (0..k).map(|i| !(i == 2 && step == 3)).collect();
        tch::no_grad(|| all.update(&mut together, &grad, &Tensor::from_slice(&stepping)));
        for (i, (theta, opt)) in alone.iter_mut().enumerate() {
            let s = Tensor::from_slice(&stepping[i..i + 1]);
            tch::no_grad(|| opt.update(theta, &grad.get(i as i64).unsqueeze(0), &s));
        }
    }
    let rel = |a: &Tensor, b: &Tensor| {
        (a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
    };
    for (i, (theta, opt)) in alone.iter().enumerate() {
        let kind = members[i].0;
        let tol = if kind == OptimizerKind::Muon {
            1e-5
        } else {
            1e-6
        };
        let d = rel(&together.get(i as i64), &theta.get(0));
        assert!(d <= tol, "{}: parameters differ by {d:e}", kind.name());
        let (a, b) = (all.member_state(i as i64), opt.member_state(0));
        assert_eq!(a.len(), b.len(), "{}: other state", kind.name());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            let d = rel(&ta.to_kind(Kind::Double), &tb.to_kind(Kind::Double));
            assert!(d <= tol, "{}: state {na} differs by {d:e}", kind.name());
        }
    }
}

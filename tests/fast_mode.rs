//! `train.mode: fast` computes the same model as the faithful forward: on the same batch and
//! parameters, the loss and the gradient agree within 1e-5 relative in float32 (and to
//! rounding in float64, which shows that the reassociation is exact algebra).
mod common;
use common::*;
use linattn::config::Config;
use linattn::data::{Batch, DataStream, DeviceStream};
use linattn::model::{self, Arch};
use tch::{Device, Kind, Tensor};

fn config(sets: &[&str]) -> Config {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::from_yaml_str("", &sets).expect("a valid config")
}

/// A batch of the faithful stream (seed 0) and parameters drawn with std `init_std`.
fn batch_and_params(cfg: &Config, init_std: f64, kind: Kind) -> (Batch, Vec<Tensor>) {
    let arch = Arch::from_config(cfg);
    let teacher = (cfg.data.setting == linattn::config::Setting::MlpTeacher)
        .then(|| linattn::mlp::Mlp::teacher(&cfg.data, cfg.model.dim));
    let numpy = linattn::rng::seed_both(0);
    let params: Vec<Tensor> = model::init_values(&arch, init_std)
        .into_iter()
        .map(|p| p.to_kind(kind).set_requires_grad(true))
        .collect();
    let b = DataStream::new(cfg, teacher, numpy, Device::Cpu).next_batch();
    (
        Batch {
            z: b.z.to_kind(kind),
            y_query: b.y_query.to_kind(kind),
        },
        params,
    )
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).norm().double_value(&[]);
    diff / b.norm().double_value(&[]).max(1e-30)
}

/// The largest relative differences (loss, worst parameter gradient) of fast vs faithful.
fn fast_vs_faithful(cfg: &Config, init_std: f64, kind: Kind) -> (f64, f64) {
    let arch = Arch::from_config(cfg);
    let (batch, params) = batch_and_params(cfg, init_std, kind);
    let faithful = model::loss(&arch, &params, &batch);
    let fast = model::fast_loss(&arch, &params, &batch);
    let g_faithful = Tensor::run_backward(&[&faithful], &params, false, false);
    let g_fast = Tensor::run_backward(&[&fast], &params, false, false);
    assert!(
        bool::try_from(faithful.isfinite()).unwrap(),
        "the faithful loss is {} at init std {init_std} ({kind:?}): choose a smaller std",
        faithful.double_value(&[])
    );
    let loss_rel = rel(&fast, &faithful);
    let grad_rel = g_fast
        .iter()
        .zip(&g_faithful)
        .map(|(a, b)| rel(a, b))
        .fold(0.0, f64::max);
    (loss_rel, grad_rel)
}

/// Checks at the config's init std and at `large_std`, where the attention is far from the
/// identity (deep or wide models overflow float32 well before 0.3).
fn check(name: &str, sets: &[&str], large_std: f64) {
    let cfg = config(sets);
    for init_std in [cfg.model.init_std, large_std] {
        let (loss32, grad32) = fast_vs_faithful(&cfg, init_std, Kind::Float);
        let (loss64, grad64) = fast_vs_faithful(&cfg, init_std, Kind::Double);
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
fn fast_forward_matches_faithful_restricted_paper_default() {
    check("restricted, L=3 H=1 d=5 n=20", &["data.batch=256"], 0.3);
}

#[test]
fn fast_forward_matches_faithful_restricted_multi_head_heavy_tailed() {
    check(
        "restricted, H=3, gamma",
        &["data.batch=256", "model.heads=3", "data.setting=gamma"],
        0.3,
    );
}

#[test]
fn fast_forward_matches_faithful_full_parametrization_multi_head() {
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
}

#[test]
fn fast_forward_matches_faithful_softmax() {
    check(
        "softmax restricted, H=2",
        &["data.batch=256", "model.heads=2", "model.attention=softmax"],
        0.3,
    );
    check(
        "softmax full, L=1",
        &[
            "data.batch=256",
            "model.layers=1",
            "model.attention=softmax",
            "model.parametrization=full",
        ],
        0.3,
    );
}

#[test]
fn fast_forward_matches_faithful_mlp_variant() {
    check(
        "MLP variant",
        &[
            "data.batch=256",
            "data.setting=mlp_teacher",
            "model.parametrization=full",
            "model.mlp_hidden=30",
            "model.init_std=0.1",
        ],
        0.3,
    );
}

/// Small d keeps the prompts last (elementwise products), d + 1 > 12 keeps them first (GEMMs).
#[test]
fn fast_forward_matches_faithful_one_layer_and_large_dims() {
    check("restricted, L=1", &["data.batch=64", "model.layers=1"], 0.3);
    check(
        "restricted, n=60 (G from a GEMM, then prompt-last)",
        &["data.batch=64", "data.context=60"],
        0.3,
    );
    check(
        "full, H=2, d=12",
        &[
            "data.batch=64",
            "model.dim=12",
            "model.heads=2",
            "model.parametrization=full",
        ],
        0.08,
    );
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

#[test]
fn device_stream_draws_well_formed_prompts_that_depend_only_on_seed_and_iteration() {
    let cfg = config(&["data.batch=4000"]);
    let (n, d) = (cfg.data.context, cfg.model.dim);
    let alone = DeviceStream::new(&cfg, &[7], None, Device::Cpu).batch(3);
    let among = DeviceStream::new(&cfg, &[1, 7, 2], None, Device::Cpu).batch(3);
    assert!(
        alone.z.get(0).equal(&among.z.get(1)),
        "a stream must not depend on the streams drawn beside it"
    );
    assert!(alone.y_query.get(0).equal(&among.y_query.get(1)));
    let next = DeviceStream::new(&cfg, &[7], None, Device::Cpu).batch(4);
    assert!(!alone.z.equal(&next.z), "iterations must differ");

    let z = alone.z.get(0);
    assert_eq!(z.size(), vec![4000, n + 1, d + 1]);
    let x = z.narrow(2, 0, d);
    let (mean, var) = (
        x.mean(Kind::Float).double_value(&[]),
        x.var(true).double_value(&[]),
    );
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
        "x ~ N(0, I): mean {mean}, var {var}"
    );
    assert_eq!(
        z.select(1, n).select(1, d).abs().max().double_value(&[]),
        0.0,
        "the query's label is hidden"
    );
    // y_i = <w, x_i> for one w per prompt: the labels lie in the span of the covariates.
    let labels = z.narrow(1, 0, n).select(2, d); // [B, n]
    let w = x
        .narrow(1, 0, n)
        .linalg_lstsq(&labels.unsqueeze(-1), None::<f64>, "gelsy")
        .0; // [B, d, 1]
    let fitted = x.matmul(&w).squeeze_dim(-1); // [B, n+1]
    assert!(rel(&fitted.narrow(1, 0, n), &labels) < 1e-4);
    assert!(
        rel(&fitted.select(1, n), &alone.y_query.get(0)) < 1e-4,
        "y_query = <w, x_query>"
    );
}

#[test]
fn fast_mode_train_writes_a_run_folder_and_learns() {
    let tmp = tempdir();
    let config = experiment("settings/setting1_normal_n20.yaml");
    let sets = [
        "train.mode=fast".to_string(),
        "train.iters=300".into(),
        "data.batch=500".into(),
        "train.save_every=100".into(),
    ];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        let mut c = linattn();
        c.arg("train");
        ok(with_config(c, &config, &sets, dir));
    }
    let rows = metrics(&a);
    assert_eq!(rows.len(), 300);
    assert_eq!(rows, metrics(&b), "a fast run is deterministic");
    let mean = |r: &[(i64, f32, f32)]| r.iter().map(|x| x.1 as f64).sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&rows[..20]), mean(&rows[280..]));
    assert!(
        last < 0.5 * first,
        "the loss must fall: first 20 iterations {first}, last 20 {last}"
    );
    for f in [
        "config.yaml",
        "trajectory.safetensors",
        "final.safetensors",
        "summary.json",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let resolved = linattn::run::RunFolder::new(&a).config().unwrap();
    assert_eq!(resolved.train.mode, linattn::config::Mode::Fast);
    let traj = Tensor::read_safetensors(a.join("trajectory.safetensors")).unwrap();
    let step = &traj.iter().find(|(n, _)| n == "step").unwrap().1;
    assert_eq!(Vec::<i64>::try_from(step).unwrap(), vec![0, 100, 200, 300]);
    // The initial parameters are the faithful run's (seed 0).
    let allparam = &traj.iter().find(|(n, _)| n == "allparam").unwrap().1;
    let _ = linattn::rng::seed_both(0);
    let init = model::init_values(&Arch::from_config(&resolved), resolved.model.init_std);
    assert!(allparam.get(0).equal(&init[0]));
}

//! CUDA runs. CI has no GPU, so these are ignored there (visible as `ignored` in the test
//! output); on a GPU machine run `bash scripts/test.sh --test cuda -- --ignored`.
mod common;
use common::*;

fn require_gpu() {
    assert!(
        tch::Cuda::is_available(),
        "these tests need a CUDA GPU, and none is visible to libtorch"
    );
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/test.sh --test cuda -- --ignored"]
fn training_on_cuda_follows_the_cpu_run_closely_in_faithful_mode() {
    require_gpu();
    let tmp = tempdir();
    let config = experiment("settings/setting1_normal_n20.yaml");
    let (cpu, gpu) = (tmp.path().join("cpu"), tmp.path().join("gpu"));
    for (dir, dev) in [(&cpu, "cpu"), (&gpu, "cuda")] {
        let mut c = linattn();
        c.arg("train");
        ok(with_config(
            c,
            &config,
            &["train.iters=50".into(), format!("train.device={dev}")],
            dir,
        ));
    }
    // Same data (drawn on the CPU generator), other kernels: close, not bit-identical.
    for (a, b) in metrics(&cpu).iter().zip(metrics(&gpu)) {
        assert!(
            rel_diff(a.1 as f64, b.1 as f64) < 1e-3,
            "iter {}: {} vs {}",
            a.0,
            a.1,
            b.1
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/test.sh --test cuda -- --ignored"]
fn compare_on_cuda_passes_for_setting1_and_the_mlp_variant() {
    require_gpu();
    for config in [
        "settings/setting1_normal_n20.yaml",
        "settings/mlp_variant.yaml",
    ] {
        let tmp = tempdir();
        let mut c = linattn();
        c.args(["compare", "--device", "cuda", "--tolerance", "1e-4"]);
        let o = output(with_config(
            c,
            &experiment(config),
            &["train.iters=100".into()],
            tmp.path(),
        ));
        assert!(
            o.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/test.sh --test cuda -- --ignored"]
fn fast_forward_on_cuda_matches_the_faithful_forward() {
    use linattn::config::Config;
    use linattn::data::{Batch, DataStream};
    use linattn::model::{self, Arch};
    use tch::{Device, Tensor};
    require_gpu();
    let gpu = Device::Cuda(0);
    for sets in [
        &["data.batch=256"][..],
        &["data.batch=256", "model.heads=2", "model.attention=softmax"],
    ] {
        let cfg =
            Config::from_yaml_str("", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let arch = Arch::from_config(&cfg);
        let numpy = linattn::rng::seed_both(0);
        let params: Vec<Tensor> = model::init_values(&arch, 0.3)
            .into_iter()
            .map(|p| p.to_device(gpu).set_requires_grad(true))
            .collect();
        let b = DataStream::new(&cfg, None, numpy, gpu).next_batch();
        let batch = Batch {
            z: b.z,
            y_query: b.y_query,
        };
        let (faithful, fast) = (
            model::loss(&arch, &params, &batch),
            model::fast_loss(&arch, &params, &batch),
        );
        let ga = Tensor::run_backward(&[&faithful], &params, false, false);
        let gb = Tensor::run_backward(&[&fast], &params, false, false);
        let rel =
            |a: &Tensor, b: &Tensor| (a - b).norm().double_value(&[]) / b.norm().double_value(&[]);
        assert!(rel(&fast, &faithful) < 1e-5, "{sets:?}: loss");
        assert!(rel(&gb[0], &ga[0]) < 1e-5, "{sets:?}: gradient");
    }
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/test.sh --test cuda -- --ignored"]
fn ensemble_on_cuda_trains_every_member_and_learns() {
    use linattn::config::{Config, OptimizerKind};
    use linattn::train::{train_ensemble, Member, Options};
    require_gpu();
    let tmp = tempdir();
    let cfg = Config::from_yaml_str(
        "",
        &[
            "train.device=cuda".into(),
            "train.iters=300".into(),
            "train.save_every=50".into(),
        ],
    )
    .unwrap();
    let members: Vec<Member> = (0..4)
        .map(|i| Member {
            seed: i / 2,
            optimizer: if i % 2 == 0 {
                OptimizerKind::Sgd
            } else {
                OptimizerKind::Adam
            },
            lr: 0.02,
        })
        .collect();
    let outs: Vec<_> = (0..4).map(|i| tmp.path().join(format!("m{i}"))).collect();
    for o in train_ensemble(&cfg, &members, &outs, &Options::default()).unwrap() {
        let m = &o.metrics;
        assert_eq!(m.len(), 300);
        let mean = |r: &[linattn::run::MetricsRow]| {
            r.iter().map(|x| x.train_loss).sum::<f64>() / r.len() as f64
        };
        assert!(
            mean(&m[280..]) < 0.5 * mean(&m[..20]),
            "the loss must fall on the GPU too"
        );
        assert!(o.summary.device.starts_with("cuda"));
    }
}

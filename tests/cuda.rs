//! CUDA runs. CI has no GPU, so these are ignored there (visible as `ignored` in the test
//! output); on a GPU machine run `bash scripts/test.sh --test cuda -- --ignored`.
mod common;
use common::*;

fn require_gpu() {
    assert!(tch::Cuda::is_available(), "these tests need a CUDA GPU, and none is visible to libtorch");
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
        ok(with_config(c, &config, &["train.iters=50".into(), format!("train.device={dev}")], dir));
    }
    // Same data (drawn on the CPU generator), other kernels: close, not bit-identical.
    for (a, b) in metrics(&cpu).iter().zip(metrics(&gpu)) {
        assert!(rel_diff(a.1 as f64, b.1 as f64) < 1e-3, "iter {}: {} vs {}", a.0, a.1, b.1);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: bash scripts/test.sh --test cuda -- --ignored"]
fn compare_on_cuda_passes_for_setting1_and_the_mlp_variant() {
    require_gpu();
    for config in ["settings/setting1_normal_n20.yaml", "settings/mlp_variant.yaml"] {
        let tmp = tempdir();
        let mut c = linattn();
        c.args(["compare", "--device", "cuda", "--tolerance", "1e-4"]);
        let o = output(with_config(c, &experiment(config), &["train.iters=100".into()], tmp.path()));
        assert!(o.status.success(), "{config}: {}", String::from_utf8_lossy(&o.stdout));
    }
}

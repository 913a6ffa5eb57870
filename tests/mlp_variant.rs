//! The MLP-augmented variant (App. B) against the PyTorch side, and its checkpoints.
mod common;
use common::*;

fn both_sides(sets: &[String], tmp: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = experiment("settings/mlp_variant.yaml");
    let (rs, py) = (tmp.join("rust"), tmp.join("torch"));
    let mut c = linattn();
    c.arg("train");
    ok(with_config(c, &config, sets, &rs));
    let mut c = reference();
    c.arg("train");
    ok(with_config(c, &config, sets, &py));
    (rs, py)
}

#[test]
fn mlp_variant_matches_pytorch_on_cpu_for_adam_and_sgd() {
    for (opt, lr) in [("adam", "0.01"), ("sgd", "0.05")] {
        for seed in [0, 1] {
            let tmp = tempdir();
            let sets: Vec<String> =
                vec![format!("train.optimizer={opt}"), format!("train.lr={lr}"), format!("train.seed={seed}"), "train.iters=200".into()];
            let (rs, py) = both_sides(&sets, tmp.path());
            let a = tch::Tensor::read_safetensors(rs.join("trajectory.safetensors")).unwrap();
            let b = tch::Tensor::read_safetensors(py.join("trajectory.safetensors")).unwrap();
            for (name, t) in &a {
                let u = &b.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("torch lacks {name}")).1;
                assert!(t.get(0).equal(&u.get(0)), "{opt} seed {seed}: initial {name} differs");
            }
            let (ma, mb) = (metrics(&rs), metrics(&py));
            assert_eq!(ma.len(), 200);
            for (x, y) in ma.iter().zip(&mb) {
                let worst = rel_diff(x.1 as f64, y.1 as f64).max(rel_diff(x.2 as f64, y.2 as f64));
                assert!(worst <= 1e-6, "{opt} seed {seed} iter {}: rel diff {worst:e}", x.0);
            }
        }
    }
}

#[test]
fn rust_checkpoint_loads_into_the_pytorch_model_with_load_state_dict() {
    let tmp = tempdir();
    let config = experiment("settings/mlp_variant.yaml");
    let rs = tmp.path().join("rust");
    let mut c = linattn();
    c.arg("train");
    ok(with_config(c, &config, &["train.iters=3".into()], &rs));
    let script = format!(
        r#"
import sys, torch, yaml
sys.path.insert(0, {exp:?})
import pytorch_reference as ref
from safetensors.torch import load_file
cfg = ref.load_config({cfg:?})
model = ref.LinearTransformer(cfg)
missing = model.load_state_dict(load_file({fin:?}), strict=True)
print("loaded", sorted(model.state_dict().keys()))
"#,
        exp = root().join("experiments").display().to_string(),
        cfg = rs.join("config.yaml").display().to_string(),
        fin = rs.join("final.safetensors").display().to_string(),
    );
    let mut c = std::process::Command::new(python());
    c.arg("-c").arg(script);
    let o = ok(c);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("mlp.0.weight") && stdout.contains("allparam"), "{stdout}");
}

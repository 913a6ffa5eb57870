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
    // One seed per optimizer, a different one each, as in tests/parity_with_pytorch.rs.
    for (opt, lr, seed) in [("adam", "0.01", 0), ("sgd", "0.05", 1)] {
        let tmp = tempdir();
        let sets: Vec<String> = vec![
            format!("train.optimizer={opt}"),
            format!("train.lr={lr}"),
            format!("train.seed={seed}"),
            "train.iters=200".into(),
        ];
        let (rs, py) = both_sides(&sets, tmp.path());
        let a = tch::Tensor::read_safetensors(rs.join("trajectory.safetensors")).unwrap();
        let b = tch::Tensor::read_safetensors(py.join("trajectory.safetensors")).unwrap();
        for (name, t) in &a {
            let u = &b
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("torch lacks {name}"))
                .1;
            assert!(
                t.get(0).equal(&u.get(0)),
                "{opt} seed {seed}: initial {name} differs"
            );
        }
        let (ma, mb) = (metrics(&rs), metrics(&py));
        assert_eq!(ma.len(), 200);
        assert_eq!(mb.len(), 200);
        for (x, y) in ma.iter().zip(&mb) {
            let worst = rel_diff(x.1 as f64, y.1 as f64).max(rel_diff(x.2 as f64, y.2 as f64));
            assert!(
                worst <= 1e-6,
                "{opt} seed {seed} iter {}: rel diff {worst:e}",
                x.0
            );
            // Bit for bit, the logged gradient norm (the norm of the concatenated gradient,
            // taken before clip_grad_norm_) included.
            assert_eq!(
                x.1.to_bits(),
                y.1.to_bits(),
                "{opt} seed {seed} iter {}: train_loss {} vs {}",
                x.0,
                x.1,
                y.1
            );
            assert_eq!(
                x.2.to_bits(),
                y.2.to_bits(),
                "{opt} seed {seed} iter {}: grad_norm {} vs {}",
                x.0,
                x.2,
                y.2
            );
        }
        let read = |dir: &std::path::Path| std::fs::read(dir.join("final.safetensors")).unwrap();
        assert!(
            read(&rs) == read(&py),
            "{opt} seed {seed}: final.safetensors differ"
        );
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
    assert!(
        stdout.contains("mlp.0.weight") && stdout.contains("allparam"),
        "{stdout}"
    );
}

/// The logged `grad_norm` of the MLP variant is the authors' (nonlinear_regression.ipynb,
/// `train_transformer`): `torch.norm(torch.cat([p.grad.view(-1) for p in params]))`, taken before
/// `clip_grad_norm_`, which keeps its own norm of the per-parameter norms for its coefficient.
/// A loop written here from those expressions, on the PyTorch side's model, batches and
/// optimizer, must reproduce every logged value of the Rust run bit for bit; the norm of the
/// per-parameter norms must differ from it in some rows (so the check tells the two apart).
#[test]
fn mlp_variant_logs_the_norm_of_the_concatenated_gradient() {
    const SCRIPT: &str = r#"
with open(run_dir + "/metrics.csv") as f:
    logged = [np.float32(l.split(",")[2]) for l in f.read().split("\n")[1:] if l]
run = ref.Run(cfg, torch.device("cpu"))
concat = nested = 0
for t in range(cfg["train"]["iters"]):
    Z, yq = ref.draw_batch(cfg, cfg["data"]["batch"], run.teacher)
    run.model(Z, yq).backward()
    grads = [p.grad for p in run.params]
    a = np.float32(torch.norm(torch.cat([g.clone().view(-1) for g in grads])).item())
    b = np.float32(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
    concat += int(a.tobytes() == logged[t].tobytes())
    nested += int(b.tobytes() == logged[t].tobytes())
    torch.nn.utils.clip_grad_norm_(run.params, max_norm=cfg["train"]["clip"])
    run.opt.step()
    run.opt.zero_grad()
print(f"rows={len(logged)} concat={concat} nested={nested}")
"#;
    // One optimizer: the norm is logged before the step, whichever optimizer takes it.
    let (opt, lr) = ("adam", "0.01");
    {
        let tmp = tempdir();
        let config = experiment("settings/mlp_variant.yaml");
        let rs = tmp.path().join("rust");
        let sets: Vec<String> = vec![
            format!("train.optimizer={opt}"),
            format!("train.lr={lr}"),
            "train.iters=60".into(),
        ];
        let mut c = linattn();
        c.arg("train");
        ok(with_config(c, &config, &sets, &rs));
        let said = python_on_run(SCRIPT, &rs);
        assert!(
            said.contains("rows=60 concat=60 "),
            "{opt}: the logged grad_norm is not the authors' norm: {said}"
        );
        assert!(
            !said.contains("nested=60"),
            "{opt}: the check does not tell the two norms apart: {said}"
        );
    }
}

//! Rust against the PyTorch side (experiments/pytorch_reference.py) on CPU, same config.
mod common;
use common::*;
use tch::Tensor;

struct Case {
    name: &'static str,
    config: &'static str,
    sets: &'static [&'static str],
}

/// The runs of the core acceptance: every data setting with both optimizers at the authors'
/// learning rates, two other depths, and the full parametrization.
const CASES: &[Case] = &[
    Case {
        name: "normal n=20 sgd",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["train.optimizer=sgd", "train.lr=0.02"],
    },
    Case {
        name: "normal n=20 adam",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["train.optimizer=adam", "train.lr=0.02"],
    },
    Case {
        name: "normal n=5 sgd",
        config: "settings/setting2_normal_n5.yaml",
        sets: &["train.optimizer=sgd", "train.lr=0.01"],
    },
    Case {
        name: "normal n=5 adam",
        config: "settings/setting2_normal_n5.yaml",
        sets: &["train.optimizer=adam", "train.lr=0.005"],
    },
    Case {
        name: "sphere sgd",
        config: "settings/sphere.yaml",
        sets: &["train.optimizer=sgd", "train.lr=5", "train.clip=0.1"],
    },
    Case {
        name: "sphere adam",
        config: "settings/sphere.yaml",
        sets: &["train.optimizer=adam", "train.lr=0.1", "train.clip=0.1"],
    },
    Case {
        name: "gamma sgd",
        config: "settings/setting3_gamma.yaml",
        sets: &["train.optimizer=sgd", "train.lr=0.02"],
    },
    Case {
        name: "gamma adam",
        config: "settings/setting3_gamma.yaml",
        sets: &["train.optimizer=adam", "train.lr=0.02"],
    },
    Case {
        name: "L=2",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["model.layers=2"],
    },
    Case {
        name: "L=6",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["model.layers=6"],
    },
    Case {
        name: "full parametrization",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["model.parametrization=full", "train.optimizer=adam"],
    },
];

fn initial_params(dir: &std::path::Path) -> Vec<(String, Tensor)> {
    let mut named = Tensor::read_safetensors(dir.join("trajectory.safetensors")).unwrap();
    named.retain(|(n, _)| n != "step");
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(n, t)| (n, t.get(0))).collect()
}

/// Runs one case on both sides; returns (rows, bit-identical rows, largest relative difference).
fn run_case(case: &Case, seed: u32, iters: i64) -> (usize, usize, f64) {
    let tmp = tempdir();
    let config = experiment(case.config);
    let mut sets: Vec<String> = case.sets.iter().map(|s| s.to_string()).collect();
    sets.push(format!("train.seed={seed}"));
    sets.push(format!("train.iters={iters}"));
    let (rs, py) = (tmp.path().join("rust"), tmp.path().join("torch"));
    let mut train = linattn();
    train.arg("train");
    ok(with_config(train, &config, &sets, &rs));
    let mut reference_train = reference();
    reference_train.arg("train");
    ok(with_config(reference_train, &config, &sets, &py));

    let (a, b) = (initial_params(&rs), initial_params(&py));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            ta.equal(tb),
            "{} seed {seed}: initial {na} differs",
            case.name
        );
    }
    let (ra, rb) = (metrics(&rs), metrics(&py));
    assert_eq!(ra.len(), rb.len(), "{}: row counts differ", case.name);
    let mut identical = 0;
    let mut worst = 0f64;
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x.0, y.0);
        if x.1.to_bits() == y.1.to_bits() && x.2.to_bits() == y.2.to_bits() {
            identical += 1;
        }
        worst = worst
            .max(rel_diff(x.1 as f64, y.1 as f64))
            .max(rel_diff(x.2 as f64, y.2 as f64));
    }
    (ra.len(), identical, worst)
}

#[test]
fn rust_run_is_bit_identical_to_pytorch_on_cpu() {
    let mut report = Vec::new();
    // One seed per case, alternating, so that both seeds' initialisations and data streams are
    // covered at half the cost of running every case twice.
    for (i, case) in CASES.iter().enumerate() {
        let seed = (i % 2) as u32;
        let (rows, identical, worst) = run_case(case, seed, 300);
        report.push(format!(
            "{:<22} seed {seed}: {identical}/{rows} rows bit-identical, max rel diff {worst:.3e}",
            case.name
        ));
        assert!(
            worst <= 1e-6,
            "{} seed {seed}: train_loss/grad_norm differ by {worst:e} relative",
            case.name
        );
        assert_eq!(
            identical, rows,
            "{} seed {seed}: within tolerance but not bit-identical",
            case.name
        );
    }
    println!("{}", report.join("\n"));
}

#[test]
fn a_run_that_skips_nonfinite_steps_matches_pytorch_bit_for_bit_and_goes_on() {
    // Gamma covariates through four layers at Adam lr 0.1: the batches of iterations 36 and 40
    // overflow float32 (a finite loss, an infinite gradient norm); both sides skip those steps.
    let tmp = tempdir();
    let config = experiment("settings/setting3_gamma.yaml");
    let sets = |skip: u32| -> Vec<String> {
        [
            "model.layers=4",
            "data.batch=100",
            "train.optimizer=adam",
            "train.lr=0.1",
            "train.iters=60",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("train.skip_nonfinite={skip}")])
        .collect()
    };
    let read = |dir: &std::path::Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    let (rs, py) = (tmp.path().join("rust"), tmp.path().join("torch"));
    let mut train = linattn();
    train.arg("train");
    let o = ok(with_config(train, &config, &sets(2), &rs));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("60 iterations") && said.contains("(2 non-finite steps skipped)"),
        "{said}"
    );
    let mut reference_train = reference();
    reference_train.arg("train");
    ok(with_config(reference_train, &config, &sets(2), &py));
    assert_eq!(
        read(&rs, "metrics.csv"),
        read(&py, "metrics.csv"),
        "every row, the skipped ones too"
    );
    assert_eq!(
        read(&rs, "final.safetensors"),
        read(&py, "final.safetensors")
    );
    let skipped: Vec<i64> = metrics(&rs)
        .iter()
        .filter(|r| !(r.1.is_finite() && r.2.is_finite()))
        .map(|r| r.0)
        .collect();
    assert_eq!(skipped, [36, 40], "the overflowing batches");

    // Without skipping (the default) both sides stop at the first one, exit code 3.
    for (side, mut c) in [("rust", linattn()), ("torch", reference())] {
        c.arg("train");
        let out = output(with_config(
            c,
            &config,
            &sets(0),
            &tmp.path().join(format!("{side}0")),
        ));
        assert_eq!(
            out.status.code(),
            Some(3),
            "{side}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary =
            std::fs::read_to_string(tmp.path().join(format!("{side}0/summary.json"))).unwrap();
        assert!(
            summary.replace(' ', "").contains("\"diverged_at\":36"),
            "{side}: {summary}"
        );
    }
}

/// The sphere clips at 0.1 with the authors' arithmetic (train.ipynb `clip_and_step`):
/// `if norm_p > c: grad.mul_(c / norm_p)`, where `c / norm_p` is Tensor.__rtruediv__, a float32
/// 0-dim tensor (`norm_p.reciprocal() * c`), and the comparison is a float32 one. A loop written
/// here from that expression, on the PyTorch side's model, batches and optimizer, must give the
/// Rust run's final parameters bit for bit; the same loop with a float64 host coefficient
/// `c / float(norm_p)` (which agrees with it at c = 1 only) must not.
#[test]
fn sphere_clip_at_0_1_is_the_authors_float32_coefficient() {
    const SCRIPT: &str = r#"
final = load_file(run_dir + "/final.safetensors")["allparam"]
c = cfg["train"]["clip"]

def train(host):
    run = ref.Run(cfg, torch.device("cpu"))
    p = run.model.allparam
    clipped = 0
    for _ in range(cfg["train"]["iters"]):
        Z, yq = ref.draw_batch(cfg, cfg["data"]["batch"], run.teacher)
        run.model(Z, yq).backward()
        norm_p = p.grad.norm()
        if host:
            if float(norm_p) > c:
                p.grad.mul_(c / float(norm_p))
                clipped += 1
        elif norm_p > c:
            p.grad.mul_(c / norm_p)
            clipped += 1
        run.opt.step()
        run.opt.zero_grad()
    return p.detach(), clipped

(a, na), (b, nb) = train(False), train(True)
print(f"authors={torch.equal(a, final)} host_f64={torch.equal(b, final)} clipped={na}")
"#;
    let config = experiment("settings/sphere.yaml");
    for (opt, lr) in [("sgd", "5"), ("adam", "0.1")] {
        let tmp = tempdir();
        let rs = tmp.path().join("rust");
        let sets: Vec<String> = vec![
            format!("train.optimizer={opt}"),
            format!("train.lr={lr}"),
            "train.clip=0.1".into(),
            "train.iters=50".into(),
        ];
        let mut c = linattn();
        c.arg("train");
        ok(with_config(c, &config, &sets, &rs));
        let said = python_on_run(SCRIPT, &rs);
        assert!(
            said.contains("authors=True"),
            "{opt} lr {lr}: the Rust run is not the authors' clip: {said}"
        );
        assert!(
            said.contains("host_f64=False"),
            "{opt} lr {lr}: the check does not tell the two clips apart: {said}"
        );
        assert!(
            !said.contains("clipped=0"),
            "{opt} lr {lr}: no step was clipped: {said}"
        );
    }
}

/// The testbed's optimizers and the fixed training set, each against the PyTorch side
/// (`torch.optim.AdamW` and `torch.optim.Muon` themselves; sign, normalized, Lion and Adam-mini
/// as experiments/pytorch_reference.py writes them from their papers), with weight decay where
/// the optimizer has one, on the linear model and on the MLP variant (whose biases Muon gives
/// to AdamW and Adam-mini spares from decay).
const TESTBED_CASES: &[Case] = &[
    Case {
        name: "adamw",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["train.optimizer=adamw", "train.weight_decay=0.1"],
    },
    Case {
        name: "sign",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["train.optimizer=sign", "train.lr=0.001"],
    },
    Case {
        name: "sign, no momentum",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["train.optimizer=sign", "train.lr=0.001", "train.momentum=0"],
    },
    Case {
        name: "normalized",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["train.optimizer=normalized", "train.lr=0.01"],
    },
    Case {
        name: "lion",
        config: "settings/setting1_normal_n20.yaml",
        sets: &[
            "train.optimizer=lion",
            "train.lr=0.001",
            "train.betas=[0.9,0.99]",
            "train.weight_decay=0.1",
        ],
    },
    Case {
        name: "adam_mini",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["train.optimizer=adam_mini", "train.weight_decay=0.1"],
    },
    Case {
        name: "adam_mini, MLP variant",
        config: "settings/mlp_variant.yaml",
        sets: &[
            "train.optimizer=adam_mini",
            "train.weight_decay=0.1",
            "data.batch=200",
        ],
    },
    Case {
        name: "full batch, sgd",
        config: "settings/setting1_normal_n20.yaml",
        sets: &["data.batch=200", "data.train_prompts=200"],
    },
    Case {
        name: "500 prompts, adam",
        config: "settings/setting3_gamma.yaml",
        sets: &[
            "data.batch=200",
            "data.train_prompts=500",
            "train.optimizer=adam",
        ],
    },
];

#[test]
fn every_testbed_optimizer_and_the_training_set_are_bit_identical_to_pytorch() {
    let mut report = Vec::new();
    for (i, case) in TESTBED_CASES.iter().enumerate() {
        let seed = (i % 2) as u32;
        let (rows, identical, worst) = run_case(case, seed, 100);
        report.push(format!(
            "{:<24} seed {seed}: {identical}/{rows} rows bit-identical, max rel diff {worst:.3e}",
            case.name
        ));
        assert_eq!(
            identical, rows,
            "{} seed {seed}: not bit-identical (max rel diff {worst:e})",
            case.name
        );
    }
    println!("{}", report.join("\n"));
}

/// Muon's Newton–Schulz steps run in bfloat16, where two kernels of the same arithmetic can
/// round a product's last bit differently (on AMD Zen 4's native bfloat16 instructions
/// `baddbmm` and `addmm` did, within 30 steps). The Rust side calls the very `addmm(beta,
/// alpha)` torch.optim.Muon calls (src/aten.rs), so every row is bit-identical on every CPU:
/// at the default rate 0.02 and at 0.01 with weight decay, linear and MLP.
#[test]
fn muon_is_bit_identical_to_torch_optim_muon_on_setting_1_and_the_mlp_variant() {
    let cases = [
        Case {
            name: "muon",
            config: "settings/setting1_normal_n20.yaml",
            sets: &["train.optimizer=muon"],
        },
        Case {
            name: "muon, weight decay",
            config: "settings/setting1_normal_n20.yaml",
            sets: &[
                "train.optimizer=muon",
                "train.lr=0.01",
                "train.weight_decay=0.1",
            ],
        },
        Case {
            name: "muon, MLP variant",
            config: "settings/mlp_variant.yaml",
            sets: &["train.optimizer=muon", "train.lr=0.01", "data.batch=200"],
        },
    ];
    for case in &cases {
        let (rows, identical, worst) = run_case(case, 0, 120);
        println!(
            "{}: {identical}/{rows} rows bit-identical, max rel diff {worst:.3e}",
            case.name
        );
        assert_eq!(
            identical, rows,
            "{}: not bit-identical (max rel diff {worst:e})",
            case.name
        );
    }
}

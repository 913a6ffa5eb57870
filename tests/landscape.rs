//! The landscape measurements: exact Hessians against finite differences, and `analyze` /
//! `noise` against the PyTorch side (torch.autograd.functional.hessian).
mod common;
use common::*;
use linattn::config::{Attention, Parametrization};
use linattn::data::Batch;
use linattn::measure::landscape::{self, Point};
use linattn::model::{Arch, Layout};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

// ----------------------------------------------------------------------------- exactness

/// The architectures every exactness test runs on: the paper's model, softmax attention and
/// the MLP variant (whose Hessian also covers the MLP's parameters).
fn arches() -> Vec<Arch> {
    vec![
        small_arch(Parametrization::Restricted, Attention::Linear, 0),
        small_arch(Parametrization::Full, Attention::Softmax, 0),
        small_arch(Parametrization::Full, Attention::Linear, 5),
    ]
}

/// Random float64 parameters and batch for `arch`.
fn problem(arch: &Arch) -> (Vec<Tensor>, Batch) {
    // Tiny tensors gain nothing from threads, and on a shared 2-core runner OpenMP threads
    // that spin-wait for a starved sibling make these hundreds of small passes many times slower.
    tch::set_num_threads(1);
    random_problem(arch, 11)
}

/// The Hessian by central differences of the autograd gradient, column by column.
fn finite_difference_hessian(arch: &Arch, params: &[Tensor], batch: &Batch) -> Tensor {
    let layout = Layout::new(arch);
    let flat = layout.flatten(params);
    let p = flat.size()[0];
    let h = 1e-5;
    let gradient_at = |delta: &Tensor| {
        let moved = layout.unflatten(&(&flat + delta));
        Point::new(arch, &moved, batch).grad.detach()
    };
    let columns: Vec<Tensor> = (0..p)
        .map(|j| {
            let e = Tensor::zeros([p], (Kind::Double, Device::Cpu));
            let _ = e.get(j).fill_(h);
            (gradient_at(&e) - gradient_at(&-&e)) / (2.0 * h)
        })
        .collect();
    Tensor::stack(&columns, 1)
}

/// Largest `|a − b| / max(|b|, floor)` over the entries; the floor keeps entries that are
/// zero by structure from dividing by ~0.
fn max_rel(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    ((a - b).abs() / b.abs().clamp_min(floor))
        .max()
        .double_value(&[])
}

#[test]
fn the_exact_hessian_and_its_diagonal_match_finite_differences() {
    for arch in arches() {
        let (params, batch) = problem(&arch);
        let fd = finite_difference_hessian(&arch, &params, &batch);
        let exact = landscape::hessian(&arch, &params, &batch);
        let p = arch.num_params();
        assert_eq!(exact.size(), [p, p]);
        let rel = max_rel(&exact, &fd, 1e-3);
        let diag = max_rel(&exact.diagonal(0, 0, 1), &fd.diagonal(0, 0, 1), 1e-3);
        println!("{arch:?}: full Hessian ({p}x{p}), max rel diff {rel:.2e}, diagonal {diag:.2e}");
        assert!(
            rel < 1e-5 && diag < 1e-5,
            "{arch:?}: Hessian differs from finite differences by {rel:e} relative"
        );
        let asym = max_rel(&exact, &exact.transpose(0, 1), 1e-3);
        assert!(
            asym < 1e-10,
            "{arch:?}: Hessian is not symmetric ({asym:e})"
        );
    }
}

#[test]
fn the_fast_forward_gives_the_same_hessian_as_the_faithful_one() {
    use linattn::config::Mode;
    for arch in arches() {
        let (params, batch) = problem(&arch);
        let faithful = Point::with_mode(&arch, &params, &batch, Mode::Faithful).hessian(|| {});
        let fast = Point::with_mode(&arch, &params, &batch, Mode::Fast).hessian(|| {});
        // float64: only the contraction order differs, so the two agree to rounding.
        let rel = max_rel(&fast, &faithful, 1e-3);
        println!("{arch:?}: fast against faithful Hessian, max rel diff {rel:.2e}");
        assert!(
            rel < 1e-10,
            "{arch:?}: the fast forward's Hessian differs by {rel:e} relative"
        );
    }
}

#[test]
fn hessian_vector_product_equals_hessian_times_u() {
    for arch in arches() {
        let (params, batch) = problem(&arch);
        let h = landscape::hessian(&arch, &params, &batch);
        let u = Tensor::randn([arch.num_params()], (Kind::Double, Device::Cpu));
        let hu = landscape::hvp(&arch, &params, &batch, &u);
        let rel = max_rel(&hu, &h.mv(&u), 1e-6);
        assert!(
            rel < 1e-10,
            "{arch:?}: HVP differs from H·u by {rel:e} relative"
        );

        // The directional smoothness is uᵀHu with u the normalised step between two points.
        let next: Vec<Tensor> = params.iter().map(|p| p + p.randn_like() * 0.01).collect();
        let layout = Layout::new(&arch);
        let step = layout.flatten(&next) - layout.flatten(&params);
        let unit = &step / step.norm();
        let expected = unit.dot(&h.mv(&unit)).double_value(&[]);
        let point = Point::new(&arch, &params, &batch);
        let got = point.directional_smoothness(&layout.flatten(&next));
        assert!(
            rel_diff(got, expected) < 1e-10,
            "{arch:?}: smoothness {got} vs uᵀHu {expected}"
        );
        assert!(
            point
                .directional_smoothness(&layout.flatten(&params))
                .is_nan(),
            "a zero step has no direction"
        );
    }
}

#[test]
fn condition_number_uses_the_lower_median_like_torch() {
    // |x| = 1, 2, 4, 8: the lower middle value is 2, so R = 8 / 2.
    let x = Tensor::from_slice(&[-8.0f32, 1.0, 4.0, -2.0]);
    assert_eq!(landscape::condition_number(&x), 4.0);
}

// ----------------------------------------------------------------------------- against PyTorch

/// Both sides with one intra-op thread: on a shared 2-core runner, OpenMP threads that
/// spin-wait for a starved sibling make the hundreds of Hessian rows and noise batches 5–10
/// times slower (measured). The values do not depend on it beyond the tolerances.
fn single_threaded(mut c: std::process::Command) -> std::process::Command {
    c.env("OMP_NUM_THREADS", "1");
    c
}

/// measurements.csv as iter → column name → value (None for an empty field).
fn read_analysis(dir: &Path) -> HashMap<i64, HashMap<String, Option<f64>>> {
    let text = std::fs::read_to_string(dir.join("measurements.csv")).expect("measurements.csv");
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("a header")
        .split(',')
        .map(String::from)
        .collect();
    assert_eq!(
        header.join(","),
        "iter,test_loss,grad_norm,dir_smoothness,condition_number,condition_number_eig,sharpness,block_heterogeneity",
        "{}",
        dir.display()
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let row: HashMap<String, Option<f64>> = header
                .iter()
                .zip(&f)
                .map(|(k, v)| (k.clone(), (!v.is_empty()).then(|| v.parse().unwrap())))
                .collect();
            (f[0].parse().unwrap(), row)
        })
        .collect()
}

/// One run of `config` with `sets` trained by each side, into `tmp/rust` and `tmp/torch`.
fn train_both_sides(config: &Path, sets: &[String], tmp: &Path) -> (PathBuf, PathBuf) {
    let (rs, py) = (tmp.join("rust"), tmp.join("torch"));
    for (mut c, out) in [
        (single_threaded(linattn()), &rs),
        (single_threaded(reference()), &py),
    ] {
        c.arg("train");
        ok(with_config(c, config, sets, out));
    }
    (rs, py)
}

#[test]
fn analyze_matches_the_pytorch_side_for_sgd_and_adam() {
    let config = experiment("settings/setting1_normal_n20.yaml");
    let mut report = Vec::new();
    for optimizer in ["sgd", "adam"] {
        let tmp = tempdir();
        let sets = vec![
            format!("train.optimizer={optimizer}"),
            "train.lr=0.02".to_string(),
            "train.seed=0".to_string(),
            "train.iters=100".to_string(),
            // A smaller evaluation batch (the run's batch): a Hessian costs in proportion to it,
            // and the claim, the same measurement on both sides, does not depend on its size.
            "data.batch=200".to_string(),
        ];
        let (rs, py) = train_both_sides(&config, &sets, tmp.path());
        // Every 50 keeps CI time sane; trajectories hold every step, so t+1 is always there.
        let mut c = single_threaded(linattn());
        c.arg("analyze").arg(&rs).args(["--every", "50"]);
        ok(c);
        let mut c = single_threaded(reference());
        c.arg("analyze").arg(&py).args(["--every", "50"]);
        ok(c);

        let (a, b) = (read_analysis(&rs), read_analysis(&py));
        let mut keys: Vec<&i64> = a.keys().collect();
        keys.sort();
        assert_eq!(keys, [&0, &50, &100], "{optimizer}: rows");
        let checks: [(&str, &[i64]); 4] = [
            ("test_loss", &[0, 50, 100]),
            ("condition_number", &[0, 100]),
            ("dir_smoothness", &[0, 50]),
            ("grad_norm", &[0, 50, 100]),
        ];
        for (column, iters) in checks {
            let mut worst = 0f64;
            for t in iters {
                let x = a[t][column]
                    .unwrap_or_else(|| panic!("{optimizer}: rust {column} empty at {t}"));
                let y = b[t][column]
                    .unwrap_or_else(|| panic!("{optimizer}: pytorch {column} empty at {t}"));
                let r = rel_diff(x, y);
                assert!(r <= 1e-4, "{optimizer}: {column} at iteration {t}: rust {x} vs pytorch {y} ({r:e} relative)");
                worst = worst.max(r);
            }
            report.push(format!(
                "{optimizer:<4} {column:<16} max rel diff {worst:.2e}"
            ));
        }
        // Beyond the acceptance: the eigenvalue quantities, reported, not asserted.
        for column in ["condition_number_eig", "sharpness"] {
            let worst = keys
                .iter()
                .map(|t| rel_diff(a[t][column].unwrap(), b[t][column].unwrap()))
                .fold(0f64, f64::max);
            report.push(format!(
                "{optimizer:<4} {column:<16} max rel diff {worst:.2e} (not asserted)"
            ));
        }
        // The last step has no t+1: an empty field on both sides.
        assert_eq!(a[&100]["dir_smoothness"], None);
        assert_eq!(b[&100]["dir_smoothness"], None);
    }
    println!("{}", report.join("\n"));
}

/// spectrum.csv as (iter, block, eigenvalue) rows in file order.
fn read_spectrum(dir: &Path) -> Vec<(i64, String, f64)> {
    let text = std::fs::read_to_string(dir.join("spectrum.csv")).expect("spectrum.csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("iter,block,eigenvalue"),
        "{}",
        dir.display()
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].to_string(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn block_spectra_and_heterogeneity_match_the_pytorch_side() {
    // The MLP variant: P and Q blocks and the MLP's weight and bias blocks.
    let config = experiment("settings/mlp_variant.yaml");
    let tmp = tempdir();
    let sets = vec!["train.iters=20".to_string(), "data.batch=200".to_string()];
    let (rs, py) = train_both_sides(&config, &sets, tmp.path());
    for (mut c, dir) in [
        (single_threaded(linattn()), &rs),
        (single_threaded(reference()), &py),
    ] {
        c.arg("analyze")
            .arg(dir)
            .args(["--every", "20", "--spectrum"]);
        ok(c);
    }
    let (a, b) = (read_spectrum(&rs), read_spectrum(&py));
    assert_eq!(a.len(), b.len(), "spectrum rows");
    // 551 parameters at 2 steps, the whole Hessian and its blocks (which partition it).
    assert_eq!(a.len(), 2 * 2 * 551);
    let blocks: Vec<&str> =
        a.iter()
            .filter(|r| r.0 == 0)
            .map(|r| r.1.as_str())
            .fold(vec![], |mut v, n| {
                if v.last() != Some(&n) {
                    v.push(n);
                }
                v
            });
    assert_eq!(
        blocks.len(),
        1 + 6 + 4,
        "all, 3 layers × (P, Q), the MLP's four: {blocks:?}"
    );
    assert_eq!(&blocks[..3], ["all", "P.l0.h0", "Q.l0.h0"]);
    let scale = a.iter().map(|r| r.2.abs()).fold(0f64, f64::max);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.0, &x.1),
            (y.0, &y.1),
            "the same step and block in the same order"
        );
        assert!(
            (x.2 - y.2).abs() <= 1e-5 * scale,
            "iteration {} block {}: rust {} vs pytorch {}",
            x.0,
            x.1,
            x.2,
            y.2
        );
    }
    let (ma, mb) = (read_analysis(&rs), read_analysis(&py));
    for t in [0, 20] {
        let x = ma[&t]["block_heterogeneity"].expect("rust block_heterogeneity");
        let y = mb[&t]["block_heterogeneity"].expect("pytorch block_heterogeneity");
        assert!(
            x > 0.0 && x <= 2f64.ln().sqrt() + 1e-12,
            "a JS distance: {x}"
        );
        assert!(
            rel_diff(x, y) < 1e-3,
            "iteration {t}: rust {x} vs pytorch {y}"
        );
        println!("iteration {t}: block_heterogeneity rust {x} pytorch {y}");
    }
}

fn read_noise(dir: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("noise.csv")).expect("noise.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("noise"));
    lines.map(|l| l.parse().unwrap()).collect()
}

#[test]
fn noise_matches_the_pytorch_side_on_the_first_300_samples() {
    let tmp = tempdir();
    let config = experiment("settings/setting1_normal_n20.yaml");
    let sets = vec!["train.seed=1".to_string()];
    let (rs, py) = (tmp.path().join("rust"), tmp.path().join("torch"));
    for (mut c, out) in [
        (single_threaded(linattn()), &rs),
        (single_threaded(reference()), &py),
    ] {
        c.arg("noise")
            .args(["--samples", "300", "--full-batch", "20000"]);
        ok(with_config(c, &config, &sets, out));
    }
    let (a, b) = (read_noise(&rs), read_noise(&py));
    assert_eq!((a.len(), b.len()), (300, 300));
    let mut worst = 0f64;
    let mut identical = 0;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let r = rel_diff(*x, *y);
        assert!(
            r <= 1e-5,
            "sample {i}: rust {x} vs pytorch {y} ({r:e} relative)"
        );
        worst = worst.max(r);
        identical += (x == y) as usize;
    }
    println!("noise: {identical}/300 samples identical, max rel diff {worst:.2e}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rs.join("noise.json")).unwrap()).unwrap();
    for key in [
        "count",
        "mean",
        "std",
        "quantiles",
        "kurtosis",
        "hill_tail_index",
        "hill_k",
    ] {
        assert!(!json[key].is_null(), "noise.json lacks {key}: {json}");
    }
    assert_eq!(json["count"], 300);
    assert!(std::fs::metadata(rs.join("noise.png")).unwrap().len() > 0);
}

#[test]
fn analyze_rejects_a_folder_that_is_not_a_run() {
    let tmp = tempdir();
    let with_config_only = tmp.path().join("config_only");
    std::fs::create_dir(&with_config_only).unwrap();
    std::fs::write(with_config_only.join("config.yaml"), "train: {iters: 3}\n").unwrap();
    let cases = [
        (tmp.path().to_path_buf(), "config.yaml"),
        (tmp.path().join("missing"), "missing"),
        (with_config_only.clone(), "not a finished run"),
    ];
    for (dir, must_name) in cases {
        let mut c = linattn();
        c.arg("analyze").arg(&dir);
        let o = output(c);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{}: expected exit 2, stderr: {stderr}",
            dir.display()
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one line: {stderr}"
        );
        assert!(
            stderr.contains(must_name),
            "the message does not name {must_name:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!dir.join("measurements.csv").exists());
    }
}

/// `linattn noise` of `config` with `sets`, `samples` batches and g from 4000 prompts, one
/// thread; its values.
fn noise_of(config: &Path, sets: &[&str], samples: usize, out: &Path) -> Vec<f64> {
    let mut c = single_threaded(linattn());
    c.arg("noise")
        .args(["--samples", &samples.to_string(), "--full-batch", "4000"]);
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    ok(with_config(c, config, &sets, out));
    read_noise(out)
}

#[test]
fn fast_noise_is_the_faithful_noise_batch_for_batch_within_1e_5_for_linear_softmax_and_mlp_models()
{
    let tmp = tempdir();
    let linear = experiment("settings/setting1_normal_n20.yaml");
    let mlp = experiment("settings/mlp_variant.yaml");
    // What, the config, its sets, and what the fast run sets besides train.mode.
    let cases: [(&str, &Path, &[&str], &[&str]); 4] = [
        ("linear (the native kernel)", &linear, &[], &[]),
        (
            "linear, fast in float64",
            &linear,
            &[],
            &["train.dtype=float64"],
        ),
        ("softmax", &linear, &["model.attention=softmax"], &[]),
        ("MLP variant", &mlp, &["data.batch=500"], &[]),
    ];
    for (i, (what, config, sets, fast_sets)) in cases.into_iter().enumerate() {
        let faithful = noise_of(config, sets, 40, &tmp.path().join(format!("{i}-faithful")));
        let sets: Vec<&str> = sets
            .iter()
            .chain(fast_sets)
            .copied()
            .chain(["train.mode=fast"])
            .collect();
        let fast = noise_of(config, &sets, 40, &tmp.path().join(format!("{i}-fast")));
        assert_eq!(fast.len(), 40, "{what}");
        let worst = faithful
            .iter()
            .zip(&fast)
            .map(|(x, y)| rel_diff(*x, *y))
            .fold(0f64, f64::max);
        println!("{what}: fast noise within {worst:.1e} of the faithful values");
        assert!(worst <= 1e-5, "{what}: {worst:e} relative");
    }
}

#[test]
fn fast_noise_values_do_not_depend_on_how_many_batches_share_a_pass() {
    // 37 batches are passes of 16, 16 and 5; 70 are four of 16 and one of 6.
    let tmp = tempdir();
    let config = experiment("settings/setting1_normal_n20.yaml");
    let short = noise_of(&config, &["train.mode=fast"], 37, &tmp.path().join("short"));
    let long = noise_of(&config, &["train.mode=fast"], 70, &tmp.path().join("long"));
    assert_eq!(short[..], long[..37]);
}

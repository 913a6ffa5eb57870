//! `linattn bench` times both sides on one config in one invocation and prints, per mode,
//! ms/step for each side and their ratio.
mod common;
use common::*;

#[test]
fn bench_prints_both_sides_and_the_ratio_for_every_mode() {
    let mut c = linattn();
    c.args(["bench", "--config"])
        .arg(experiment("settings/setting1_normal_n20.yaml"));
    c.args([
        "--set",
        "data.batch=50",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--modes",
        "faithful,fast,ensemble",
    ]);
    let o = ok(c);
    let out = String::from_utf8_lossy(&o.stdout);
    for mode in ["faithful", "fast", "ensemble"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(mode))
            .unwrap_or_else(|| panic!("no {mode} row in:\n{out}"));
        let numbers: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .take(3)
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(numbers.iter().all(|x| x.is_finite() && *x > 0.0), "{line}");
        assert!(
            (numbers[0] / numbers[1] - numbers[2]).abs() < 0.01 * numbers[2] + 0.01,
            "ratio = pytorch/rust: {line}"
        );
    }
    assert!(out.contains("peak resident memory: rust fast run"), "{out}");
}

#[test]
fn bench_rejects_an_unknown_mode_as_bad_input() {
    let mut c = linattn();
    c.args(["bench", "--config"])
        .arg(experiment("settings/setting1_normal_n20.yaml"));
    c.args(["--modes", "faithful,turbo"]);
    let o = output(c);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Issue 41's findings 6 and 7: `bench-hessian` where the condition number is infinite
/// (d = 1: the median of the Hessian's diagonal is 0) and with the documented key
/// `train.dtype` both finish, naming both sides' values.
#[test]
fn bench_hessian_reports_an_infinite_condition_number_and_takes_train_dtype() {
    let cases: [&[&str]; 2] = [
        &["model.dim=1", "model.layers=1", "data.batch=20"],
        &[
            "train.mode=fast",
            "train.dtype=float64",
            "data.batch=20",
            "model.layers=1",
        ],
    ];
    for sets in cases {
        let mut c = linattn();
        c.args(["bench-hessian", "--repeats", "1", "--config"])
            .arg(experiment("settings/setting1_normal_n20.yaml"));
        for s in sets {
            c.args(["--set", s]);
        }
        let o = ok(c);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("ratio rust/pytorch"), "{sets:?}: {out}");
    }
}

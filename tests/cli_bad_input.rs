//! Bad input never panics: it gets exit code 2 and one line on stderr naming what is wrong.
mod common;
use common::*;
use std::path::Path;

/// Runs `linattn train` with a config text and `--set`s; returns (exit code, stderr).
fn train_with(yaml: &str, sets: &[&str]) -> (Option<i32>, String) {
    let tmp = tempdir();
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut c = linattn();
    c.arg("train");
    let sets: Vec<String> = sets
        .iter()
        .map(|s| s.to_string())
        .chain(["train.iters=2".to_string()])
        .collect();
    let o = output(with_config(c, &cfg, &sets, &tmp.path().join("out")));
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_bad_input(yaml: &str, sets: &[&str], must_name: &str) {
    let (code, stderr) = train_with(yaml, sets);
    assert_eq!(
        code,
        Some(2),
        "{yaml:?} {sets:?}: expected exit 2, stderr: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{yaml:?} {sets:?}: not one line: {stderr}"
    );
    assert!(
        stderr.contains(must_name),
        "{yaml:?} {sets:?}: the message does not name {must_name:?}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn unknown_key_exits_2_naming_the_key() {
    assert_bad_input("model: {layers: 3, depth: 4}", &[], "depth");
    assert_bad_input("optimiser: {lr: 1}", &[], "optimiser");
}

#[test]
fn a_wrong_type_or_an_out_of_range_value_exits_2_naming_the_key() {
    let cases: [(&str, &[&str], &str); 6] = [
        ("train: {lr: fast}", &[], "train.lr"),
        ("", &["model.layers=[1,2]"], "model.layers"),
        ("train: {lr: -0.1}", &[], "train.lr"),
        ("", &["data.context=0"], "data.context"),
        ("data: {setting: cauchy}", &[], "data.setting"),
        ("", &["train.checkpoint_every=5"], "checkpoint_every"),
    ];
    for (yaml, sets, key) in cases {
        assert_bad_input(yaml, sets, key);
    }
}

#[test]
fn cuda_without_gpu_exits_2_naming_the_key() {
    if tch::Cuda::is_available() {
        println!("SKIPPED: this machine has a GPU, so device: cuda is valid here");
        return;
    }
    assert_bad_input("train: {device: cuda}", &[], "train.device");
    assert_bad_input("", &["train.device=tpu"], "train.device");
}

#[test]
fn malformed_set_exits_2_naming_the_argument() {
    assert_bad_input("", &["train.lr"], "train.lr");
    assert_bad_input("", &["lr=0.1"], "lr=0.1");
    assert_bad_input("", &["train.betas=[0.9"], "train.betas");
}

#[test]
fn missing_config_file_exits_2_naming_the_file() {
    let tmp = tempdir();
    let mut c = linattn();
    c.arg("train");
    let o = output(with_config(
        c,
        Path::new("/nonexistent/c.yaml"),
        &[],
        &tmp.path().join("o"),
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/c.yaml"));
}

#[test]
fn unknown_subcommand_or_flag_exits_2() {
    let mut c = linattn();
    c.arg("trian");
    assert_eq!(output(c).status.code(), Some(2));
}

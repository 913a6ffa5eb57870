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
fn a_setting_the_optimizer_or_the_data_cannot_use_exits_2_naming_the_key() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["train.optimizer=sgd", "train.weight_decay=0.1"],
            "train.weight_decay",
        ),
        (
            &["train.optimizer=adam", "train.weight_decay=0.1"],
            "train.weight_decay",
        ),
        (
            &["train.optimizer=adamw", "train.weight_decay=-1"],
            "train.weight_decay",
        ),
        (
            &["train.optimizer=lion", "train.optimizer_impl=libtorch"],
            "train.optimizer_impl",
        ),
        (
            &["data.batch=200", "data.train_prompts=100"],
            "data.train_prompts",
        ),
    ];
    for (sets, key) in cases {
        assert_bad_input("", sets, key);
    }
    assert_bad_input("", &["train.optimizer=rmsprop"], "train.optimizer");
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

/// Runs `linattn ARGS` under an 8 GB address-space limit (so that a check that failed could not
/// take the machine) and checks exit 2 with one line naming `must_name`; returns stderr.
fn assert_args_bad(args: &[&str], must_name: &str) -> String {
    let bin = linattn().get_program().to_owned();
    let mut c = std::process::Command::new("prlimit");
    c.arg("--as=8000000000").arg("--").arg(bin).args(args);
    for (k, v) in linattn().get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let o = output(c);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{args:?}: stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.contains(must_name), "{args:?}: {stderr}");
    stderr
}

#[test]
fn more_threads_than_cpus_or_a_model_beyond_memory_exits_2_before_any_folder_is_made() {
    let tmp = tempdir();
    let cfg = tmp.path().join("c.yaml");
    std::fs::write(&cfg, "train: {iters: 20}\n").unwrap();
    let out = tmp.path().join("out");
    let (cfg_s, out_s) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    assert_args_bad(
        &[
            "train",
            "--config",
            cfg_s,
            "--out",
            out_s,
            "--threads",
            "100000",
        ],
        "--threads",
    );
    for mode in ["fast", "faithful"] {
        let m = format!("train.mode={mode}");
        assert_args_bad(
            &[
                "train",
                "--config",
                cfg_s,
                "--out",
                out_s,
                "--set",
                "model.layers=1000000",
                "--set",
                &m,
            ],
            "model.layers",
        );
    }
    assert!(!out.exists(), "a refused run leaves no folder behind");
}

#[test]
fn an_empty_config_a_float_beyond_range_and_a_full_batch_below_the_batch_exit_2() {
    let tmp = tempdir();
    let empty = tmp.path().join("empty.yaml");
    std::fs::write(&empty, "# only a comment\n").unwrap();
    let out = tmp.path().join("out");
    let (empty_s, out_s) = (empty.to_str().unwrap(), out.to_str().unwrap());
    assert_args_bad(
        &["train", "--config", empty_s, "--out", out_s],
        "holds no keys",
    );
    let m = assert_args_bad(
        &[
            "train",
            "--config",
            empty_s,
            "--out",
            out_s,
            "--set",
            "train.lr=1e400",
        ],
        "train.lr",
    );
    assert!(m.contains("range"), "{m}");
    let setting = experiment("settings/setting1_normal_n20.yaml");
    let setting = setting.to_str().unwrap();
    assert_args_bad(
        &[
            "noise",
            "--config",
            setting,
            "--samples",
            "5",
            "--full-batch",
            "10",
            "--out",
            out_s,
        ],
        "--full-batch",
    );
    assert!(
        !out.exists(),
        "a refused measurement leaves no folder behind"
    );
    assert_args_bad(
        &[
            "compare",
            "--config",
            setting,
            "--set",
            "train.mode=fast",
            "--out",
            out_s,
        ],
        "train.mode",
    );
    assert_args_bad(
        &[
            "reproduce",
            "--experiments",
            "/nonexistent/experiments",
            "--draw-only",
        ],
        "--experiments",
    );
}

/// Issue 41's findings 4, 5, 8, 9 and 11: each refused with exit 2 and one line naming the
/// key or flag, before any folder is made (before the fixes: a panic with C++ frames, an
/// out-of-memory abort, a float32 eps of 0 that diverged, 13 processes on 2 CPUs, and a
/// `reproduce` that started and then stopped on a folder given twice).
#[test]
fn values_a_float32_run_cannot_hold_a_training_set_beyond_memory_and_repeated_seeds_exit_2() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    let setting = experiment("settings/setting1_normal_n20.yaml");
    let setting = setting.to_str().unwrap();
    let train = |sets: &[&str], key: &str| {
        let mut args = vec!["train", "--config", setting, "--out", out_s];
        for s in sets {
            args.extend(["--set", s]);
        }
        assert_args_bad(&args, key)
    };
    for optimizer in ["sgd", "sign", "normalized", "lion", "muon"] {
        let o = format!("train.optimizer={optimizer}");
        let m = train(&[&o, "train.lr=1e39"], "train.lr");
        assert!(m.contains("float32"), "{m}");
    }
    for optimizer in ["adam", "adamw", "adam_mini"] {
        let o = format!("train.optimizer={optimizer}");
        train(&[&o, "train.eps=1e-50"], "train.eps");
    }
    let m = train(&["train.clip=.inf"], "train.clip");
    assert!(m.contains("finite"), "{m}");
    // 10^9 prompts of 22 × 5 float32: 440 GB, beyond any machine this runs on.
    for mode in ["faithful", "fast"] {
        let m = format!("train.mode={mode}");
        train(
            &[&m, "data.batch=50", "data.train_prompts=1000000000"],
            "data.train_prompts",
        );
    }
    let mut compare = vec!["compare", "--config", setting, "--out", out_s];
    compare.extend(["--set", "train.lr=1e39"]);
    assert_args_bad(&compare, "train.lr");
    assert!(!out.exists(), "a refused run leaves no folder behind");

    let runs = tmp.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let too_many = (std::thread::available_parallelism().map_or(1, |c| c.get()) + 1).to_string();
    assert_args_bad(
        &[
            "reproduce",
            "fig2_setting1",
            "--quick",
            "--runs",
            runs_s,
            "--jobs",
            &too_many,
        ],
        "--jobs",
    );
    assert_args_bad(
        &[
            "reproduce",
            "fig2_setting1",
            "--quick",
            "--estimate",
            "--runs",
            runs_s,
            "--jobs",
            "64",
        ],
        "--jobs",
    );
    assert_args_bad(
        &[
            "reproduce",
            "fig2_setting1",
            "--quick",
            "--runs",
            runs_s,
            "--seeds",
            "0,0",
        ],
        "--seeds",
    );
    assert!(!runs.exists(), "a refused reproduce makes no runs folder");
}

/// Issue 41's finding 12: `--estimate` and `--draw-only` only read the runs folder and make
/// none; a figure file's error names its key once, and the root without "key ?" or "key .".
#[test]
fn an_estimate_or_a_drawing_makes_no_runs_folder_and_figure_errors_name_the_key_once() {
    let tmp = tempdir();
    let runs = tmp.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let o = output({
        let mut c = linattn();
        c.args([
            "reproduce",
            "fig2_setting1",
            "--quick",
            "--estimate",
            "--runs",
            runs_s,
        ]);
        c
    });
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = output({
        let mut c = linattn();
        c.args([
            "reproduce",
            "fig2_setting1",
            "--quick",
            "--draw-only",
            "--runs",
            runs_s,
        ]);
        c
    });
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !runs.exists(),
        "--estimate and --draw-only made {}",
        runs.display()
    );

    let experiments = tmp.path().join("experiments");
    std::fs::create_dir_all(experiments.join("figures")).unwrap();
    let fig2 = std::fs::read_to_string(experiment("figures/fig2_setting1.yaml")).unwrap();
    let bad_optimizer = fig2.replacen(
        "optimizers: [sgd, adam]",
        "optimizers: [sgd, adam, rmsprop]",
        1,
    );
    assert_ne!(
        bad_optimizer, fig2,
        "the figure names its optimizers as expected"
    );
    for (name, text, must, must_not) in [
        (
            "one",
            bad_optimizer.as_str(),
            "key runs.optimizers[2]: unknown variant",
            "[2]: runs.",
        ),
        ("two", "- 1\n- 2\n", "not a figure", "key"),
    ] {
        std::fs::write(
            experiments.join("figures").join(format!("{name}.yaml")),
            text,
        )
        .unwrap();
        let m = assert_args_bad(
            &[
                "reproduce",
                name,
                "--experiments",
                experiments.to_str().unwrap(),
                "--runs",
                runs_s,
                "--estimate",
            ],
            must,
        );
        assert!(!m.contains(must_not), "{m}");
    }
}

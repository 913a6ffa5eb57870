//! `linattn reproduce`: the figure files, a tiny end-to-end reproduction, reuse of finished
//! runs, restart of a broken one, the learning-rate grid's treatment of divergence, and fast
//! mode's training of one setting's runs as one ensemble.
mod common;
use common::*;
use linattn::figures::spec::{self as figures, FigureSpec, Scale};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A figure with every panel kind, tiny enough to train in seconds.
const TINY: &str = r#"
title: "tiny test figure"
paper: "none: a test"
series:
  - {id: s1, label: "Setting 1, B = 64", settings: setting1_normal_n20.yaml, set: [data.batch=64], lr: {sgd: 0.02, adam: 0.02}}
runs: {optimizers: [sgd, adam], seeds: [0, 1], iters: 6, save_every: 1}
measure:
  loss_every: 2
  smoothness_every: 2
  condition_every: 3
  noise: {seed: 1, samples: 8, full_batch: 256}
panels: [loss, noise_qq, condition, smoothness, grad_vs_smoothness]
paper_numbers:
  ratio: {3: [1.0, 0.5], 1250: [1.58, 0.41]}
quick: {iters: 4}
"#;

/// A learning-rate grid in which SGD without clipping at 10^6 × 0.02 overflows.
const GRID: &str = r#"
title: "tiny grid"
paper: "none: a test"
series:
  - {id: s1, label: "Setting 1, B = 32", settings: setting1_normal_n20.yaml, set: [data.batch=32, train.clip=0], lr: {sgd: 0.02, adam: 0.02}}
runs: {optimizers: [sgd, adam], seeds: [0], iters: 8, save_every: 4}
lr_grid: {factors: [0.5, 1, 1000000]}
measure: {loss_every: 4}
panels: [lr_sweep]
quick: {}
"#;

fn write_figure(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn reproduce(figure: &Path, work: &Path) -> Command {
    reproduce_into(figure, work, &work.join("plots"))
}

/// `reproduce` with the runs of `work` and another plots folder.
fn reproduce_into(figure: &Path, work: &Path, plots: &Path) -> Command {
    let mut c = linattn();
    c.arg("reproduce")
        .arg(figure)
        .arg("--experiments")
        .arg(root().join("experiments"))
        .arg("--runs")
        .arg(work.join("runs"))
        .arg("--plots")
        .arg(plots);
    c
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every run folder under `runs` (the ones holding a config.yaml).
fn run_folders(runs: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for group in std::fs::read_dir(runs).unwrap().flatten() {
        if group.path().is_dir() {
            for run in std::fs::read_dir(group.path()).unwrap().flatten() {
                if run.path().join("config.yaml").exists() {
                    out.push(run.path());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_figure_yaml_parses_and_names_existing_settings() {
    let experiments = root().join("experiments");
    let ids = figures::figure_ids(&experiments).unwrap();
    for want in [
        "fig2_setting1",
        "fig2_setting2",
        "fig2_setting3",
        "fig4",
        "fig5",
        "fig6",
        "fig7",
        "fig8",
        "appB",
        "lr_grid",
        "optimizers",
        "full_batch",
        "hessian_blocks",
    ] {
        assert!(
            ids.iter().any(|i| i == want),
            "experiments/figures/{want}.yaml is missing"
        );
    }
    for id in ids {
        let path = experiments.join("figures").join(format!("{id}.yaml"));
        let spec = FigureSpec::load(&path).unwrap_or_else(|e| panic!("{id}: {e:#}"));
        for s in &spec.series {
            let settings = experiments.join("settings").join(&s.settings);
            assert!(
                settings.is_file(),
                "{id}: series {} names {} which does not exist",
                s.id,
                settings.display()
            );
        }
        for quick in [false, true] {
            let res = spec.resolve(&Scale {
                quick,
                ..Default::default()
            });
            let runs = spec
                .plan(
                    &experiments.join("settings"),
                    &res,
                    linattn::config::DeviceName::Cpu,
                )
                .unwrap_or_else(|e| panic!("{id}: {e:#}"));
            assert!(!runs.is_empty(), "{id}: no runs");
            let per = runs
                .iter()
                .filter(|r| {
                    r.series == 0
                        && r.optimizer == spec.runs.optimizers[0]
                        && r.seed == res.seeds[0]
                })
                .count();
            if id == "lr_grid" && !quick {
                assert_eq!(
                    per, 10,
                    "{id}: the paper-scale grid has 10 learning rates per optimizer and setting"
                );
            }
            if id == "optimizers" && !quick {
                assert!(
                    per >= 8,
                    "{id}: at least 8 learning rates per optimizer, got {per}"
                );
                assert_eq!(spec.runs.optimizers.len(), 8, "{id}: every optimizer");
            }
            assert_eq!(
                spec.beyond_paper,
                ["optimizers", "full_batch", "hessian_blocks"].contains(&id.as_str()),
                "{id}: only the testbed's figures are beyond the paper"
            );
        }
    }
}

#[test]
fn tiny_reproduce_draws_the_png_and_summary_then_reuses_its_runs() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "tiny", TINY);
    let o = ok(reproduce(&fig, tmp.path()));
    let out = stdout(&o);
    assert!(out.contains("runs trained 4, reused 0"), "{out}");
    let plots = tmp.path().join("plots");
    let png = std::fs::read(plots.join("tiny.png")).expect("tiny.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    let md = std::fs::read_to_string(plots.join("summary.md")).unwrap();
    assert!(
        md.contains("tiny") && md.contains("R_SGD / R_Adam") && md.contains("1.58 (0.41)"),
        "{md}"
    );
    assert!(
        md.contains("Scale: paper") || md.contains("Scale: **paper"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plots.join("summary.json")).unwrap())
            .unwrap();
    let f = &json["figures"][0];
    assert_eq!(f["id"], "tiny");
    assert_eq!(f["ratios"][0]["iter"], 3);
    assert_eq!(
        f["ratios"][0]["ours"]["n"], 2,
        "a ratio per seed, both seeds: {f}"
    );
    assert!(f["noise"][0]["hill_tail_index"].is_number(), "{f}");
    assert!(f["correlations"][0]["points"].as_u64().unwrap() > 0, "{f}");

    let runs = run_folders(&tmp.path().join("runs"));
    assert_eq!(runs.len(), 4);
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before: Vec<_> = runs.iter().map(|r| mtime(&r.join("metrics.csv"))).collect();
    let measured_before: Vec<_> = runs
        .iter()
        .map(|r| mtime(&r.join("measurements.csv")))
        .collect();
    let o = ok(reproduce(&fig, tmp.path()));
    let out = stdout(&o);
    assert!(
        out.contains("runs trained 0, reused 4")
            && out.contains("runs measured 0")
            && out.contains("noise computed 0"),
        "{out}"
    );
    let after: Vec<_> = runs.iter().map(|r| mtime(&r.join("metrics.csv"))).collect();
    let measured_after: Vec<_> = runs
        .iter()
        .map(|r| mtime(&r.join("measurements.csv")))
        .collect();
    assert_eq!(before, after, "a finished run was trained again");
    assert_eq!(
        measured_before, measured_after,
        "a finished measurement was computed again"
    );
    let figure_json = |plots: &Path| -> serde_json::Value {
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(plots.join("summary.json")).unwrap())
                .unwrap();
        j["figures"][0].clone()
    };
    assert_eq!(
        figure_json(&plots)["all_reused"],
        false,
        "the first invocation's time is kept"
    );

    // Drawn into a fresh plots folder from the same runs (as after runs split over processes):
    // the summary says the work was reused instead of timing the drawing as the figure's cost.
    let fresh = tmp.path().join("plots_merged");
    ok(reproduce_into(&fig, tmp.path(), &fresh));
    assert_eq!(figure_json(&fresh)["all_reused"], true);
    let md = std::fs::read_to_string(fresh.join("summary.md")).unwrap();
    assert!(
        md.contains("reused from the runs folder") && !md.contains("Produced in"),
        "{md}"
    );
}

/// Reproduces the tiny figure with `command`, then removes the summary.json of the runs
/// `broken` (what a process killed before the end of a run leaves) and reproduces it again.
/// Returns the run folders and the second invocation's output.
fn break_runs_and_reproduce_again(
    tmp: &Path,
    command: fn(&Path, &Path) -> Command,
    broken: &[usize],
) -> (Vec<PathBuf>, String) {
    let fig = write_figure(tmp, "tiny", TINY);
    ok(command(&fig, tmp));
    let runs = run_folders(&tmp.join("runs"));
    for &i in broken {
        std::fs::remove_file(runs[i].join("summary.json")).unwrap();
    }
    let out = stdout(&ok(command(&fig, tmp)));
    (runs, out)
}

#[test]
fn a_run_left_without_its_summary_is_trained_again_and_the_rest_reused() {
    let tmp = tempdir();
    let (runs, out) = break_runs_and_reproduce_again(tmp.path(), reproduce, &[0]);
    assert!(
        out.contains("reused 3") && out.contains("restarted 1"),
        "{out}"
    );
    assert!(runs[0].join("summary.json").exists());
}

fn reproduce_fast(figure: &Path, work: &Path) -> Command {
    let mut c = reproduce(figure, work);
    c.arg("--mode").arg("fast");
    c
}

fn wall_time(run: &Path) -> f64 {
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    summary["wall_time_s"].as_f64().unwrap()
}

#[test]
fn fast_runs_of_one_setting_train_as_one_ensemble_and_a_second_invocation_reuses_them() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "tiny", TINY);
    let out = stdout(&ok(reproduce_fast(&fig, tmp.path())));
    assert!(
        out.contains("runs trained 4, reused 0") && out.contains("ensembles trained 1;"),
        "{out}"
    );
    let runs = run_folders(&tmp.path().join("runs"));
    assert_eq!(runs.len(), 4);
    // An ensemble writes its own wall time into every member's summary.
    let walls: Vec<f64> = runs.iter().map(|r| wall_time(r)).collect();
    assert!(walls.iter().all(|&w| w == walls[0]), "{walls:?}");
    // Each member's folder holds the config its name was made from.
    for r in &runs {
        let cfg = linattn::run::RunFolder::new(r).config().unwrap();
        assert_eq!(
            linattn::figures::runs::run_dir(&tmp.path().join("runs"), &cfg),
            *r
        );
    }

    let out = stdout(&ok(reproduce_fast(&fig, tmp.path())));
    assert!(
        out.contains("runs trained 0, reused 4")
            && out.contains("ensembles trained 0;")
            && out.contains("runs measured 0"),
        "{out}"
    );
    assert_eq!(
        walls,
        runs.iter().map(|r| wall_time(r)).collect::<Vec<_>>(),
        "a finished run was trained again"
    );
}

#[test]
fn a_fast_run_left_without_its_summary_is_trained_again_and_the_rest_reused() {
    let tmp = tempdir();
    let (runs, out) = break_runs_and_reproduce_again(tmp.path(), reproduce_fast, &[1, 2]);
    assert!(
        out.contains("reused 2")
            && out.contains("restarted 2")
            && out.contains("ensembles trained 1;"),
        "{out}"
    );
    assert!(runs.iter().all(|r| r.join("summary.json").exists()));
    assert_eq!(
        wall_time(&runs[1]),
        wall_time(&runs[2]),
        "the two broken runs trained together"
    );
}

#[test]
fn a_fast_lr_grid_trains_as_one_ensemble_and_its_diverged_member_is_a_result() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "grid", GRID);
    let out = stdout(&ok(reproduce_fast(&fig, tmp.path())));
    assert!(
        out.contains("runs trained 6") && out.contains("ensembles trained 1;"),
        "{out}"
    );
    let csv = std::fs::read_to_string(tmp.path().join("plots/grid.csv")).unwrap();
    let sgd_huge = csv
        .lines()
        .find(|l| l.starts_with("s1,sgd,20000,"))
        .unwrap_or_else(|| panic!("no sgd lr 20000 row:\n{csv}"));
    assert!(sgd_huge.contains(",diverged,inf,"), "{sgd_huge}");
    let out = stdout(&ok(reproduce_fast(&fig, tmp.path())));
    assert!(out.contains("runs trained 0, reused 6"), "{out}");
}

#[test]
fn quick_scale_uses_the_quick_block() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "tiny", TINY);
    let mut c = reproduce(&fig, tmp.path());
    c.arg("--quick");
    ok(c);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("plots/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["figures"][0]["iters"], 4);
    assert_eq!(json["figures"][0]["quick"], true);
    assert!(std::fs::read_to_string(tmp.path().join("plots/summary.md"))
        .unwrap()
        .contains("Scale: quick"));
}

#[test]
fn a_diverging_lr_in_the_grid_is_recorded_as_worst_not_a_crash() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "grid", GRID);
    let o = ok(reproduce(&fig, tmp.path()));
    assert!(stdout(&o).contains("runs trained 6"), "{}", stdout(&o));
    let csv = std::fs::read_to_string(tmp.path().join("plots/grid.csv")).unwrap();
    let sgd_huge = csv
        .lines()
        .find(|l| l.starts_with("s1,sgd,20000,"))
        .unwrap_or_else(|| panic!("no sgd lr 20000 row:\n{csv}"));
    assert!(
        sgd_huge.contains(",diverged,inf,") && sgd_huge.ends_with(",false"),
        "{sgd_huge}"
    );
    let choices: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("plots/grid.json")).unwrap())
            .unwrap();
    let sgd = choices
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["optimizer"] == "sgd")
        .unwrap();
    let best = sgd["best_lr"].as_f64().unwrap();
    assert!(best == 0.01 || best == 0.02, "{sgd}");
    let huge = sgd["grid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["lr"] == 20000.0)
        .unwrap();
    assert!(huge["mean"].is_null() && huge["diverged"] == 1, "{huge}");
    assert!(tmp.path().join("plots/grid.png").exists());
    assert!(std::fs::read_to_string(tmp.path().join("plots/summary.md"))
        .unwrap()
        .contains("Learning-rate selection"));
}

#[test]
fn an_unknown_figure_exits_2_naming_it() {
    let tmp = tempdir();
    let mut c = linattn();
    c.arg("reproduce")
        .arg("fig99")
        .arg("--runs")
        .arg(tmp.path().join("r"))
        .arg("--plots")
        .arg(tmp.path().join("p"));
    c.current_dir(root());
    let o = output(c);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fig99")
            && err.contains("fig2_setting1")
            && err.trim_end().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_quick_reproduce_writes_into_plots_quick_and_leaves_the_paper_scale_plots_alone() {
    let tmp = tempdir();
    let figure = write_figure(tmp.path(), "tiny", TINY);
    let committed = tmp.path().join("plots/tiny.png");
    std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
    std::fs::write(&committed, b"paper-scale figure").unwrap();
    let mut c = linattn();
    c.current_dir(tmp.path())
        .arg("reproduce")
        .arg(&figure)
        .arg("--quick")
        .arg("--experiments")
        .arg(root().join("experiments"));
    ok(c);
    assert!(tmp.path().join("plots/quick/tiny.png").exists());
    assert!(tmp.path().join("plots/quick/summary.md").exists());
    assert_eq!(std::fs::read(&committed).unwrap(), b"paper-scale figure");
    assert!(!tmp.path().join("plots/summary.md").exists());
}

/// Gamma covariates through four layers, Adam at 0.1: the batches of iterations 36 and 40
/// overflow float32 (see tests/parity_with_pytorch.rs), and the runs skip them.
const SKIPPING: &str = r#"
title: "tiny figure whose Adam run skips two steps"
paper: "none: a test"
series:
  - {id: g, label: "gamma, L = 4", settings: setting3_gamma.yaml, set: [model.layers=4, data.batch=100, train.skip_nonfinite=2], lr: {sgd: 0.02, adam: 0.1}}
runs: {optimizers: [sgd, adam], seeds: [0], iters: 60, save_every: 20}
measure: {loss_every: 20}
panels: [loss, break_points]
quick: {}
"#;

#[test]
fn a_figure_whose_runs_skip_nonfinite_steps_says_so_in_its_title_and_summary() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "skipping", SKIPPING);
    ok(reproduce(&fig, tmp.path()));
    let data: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("plots/data/skipping.json")).unwrap(),
    )
    .unwrap();
    let rows = data["final_loss"]
        .as_array()
        .unwrap_or_else(|| panic!("{data}"));
    let skipped = |o: &str| {
        rows.iter().find(|r| r["optimizer"] == o).unwrap()["skipped_steps"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((skipped("sgd"), skipped("adam")), (0, 2));
    assert!(
        data["title"]
            .as_str()
            .unwrap()
            .ends_with("(non-finite steps skipped: SGD 0, Adam 2)"),
        "{}",
        data["title"]
    );
    let md = std::fs::read_to_string(tmp.path().join("plots/summary.md")).unwrap();
    assert!(md.contains("over all seeds: gamma, L = 4 Adam: 2."), "{md}");
}

/// A figure with two settings whose fast runs (6 each: 3 seeds × SGD/Adam) train as two
/// ensembles, long enough to be killed in the middle (6000 iterations: each ensemble trains
/// for about 2 s on the native kernel; a checkpoint every 250 iterations), with
/// two noise units: two ensembles to share out between shards.
const TWO: &str = r#"
title: "tiny two-setting ensemble figure"
paper: "none: a test"
series:
  - {id: s2, label: "Setting 2, B = 100", settings: setting2_normal_n5.yaml, set: [data.batch=100], lr: {sgd: 0.01, adam: 0.005}}
  - {id: s1, label: "Setting 1, B = 100", settings: setting1_normal_n20.yaml, set: [data.batch=100], lr: {sgd: 0.02, adam: 0.02}}
runs: {optimizers: [sgd, adam], seeds: [0, 1, 2], iters: 6000, save_every: 250}
measure:
  loss_every: 1000
  condition_every: 6000
  noise: {seed: 1, samples: 20, full_batch: 500}
panels: [loss, noise, condition]
quick: {}
"#;

/// The [`TWO`] figure reproduced by one process: its figure file and its work folder. Made
/// once for every test of this binary that compares against it (the tests share a process),
/// under cargo's folder for test files; a folder left by an earlier process is removed.
fn two_single() -> &'static (PathBuf, PathBuf) {
    static SINGLE: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    SINGLE.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        for old in std::fs::read_dir(&base).unwrap().flatten() {
            if old
                .file_name()
                .to_string_lossy()
                .starts_with("reproduce-two-")
            {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        let dir = base.join(format!("reproduce-two-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fig = write_figure(&dir, "two", TWO);
        let work = dir.join("single");
        let mut c = reproduce_fast(&fig, &work);
        c.arg("--jobs").arg("1");
        ok(c);
        (fig, work)
    })
}

/// The figure's numbers without what measures time or the machine.
fn figure_numbers(plots: &Path, id: &str) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for k in ["wall_time_s", "machine", "all_reused"] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(plots.join("data").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap();
    strip(&mut v);
    v
}

fn wait_for(what: impl Fn() -> bool, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while !what() {
        assert!(start.elapsed() < limit, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether any run folder under `runs` holds a checkpoint.
fn any_checkpoint(runs: &Path) -> bool {
    runs.exists()
        && run_folders(runs)
            .iter()
            .any(|r| r.join("checkpoint.safetensors").exists())
}

#[test]
fn a_reproduce_killed_during_an_ensemble_resumes_it_and_gives_the_same_figure_data() {
    let (fig, single) = two_single();
    let tmp = tempdir();
    let killed = tmp.path().join("killed");
    let mut c = reproduce_fast(fig, &killed);
    c.arg("--jobs").arg("1");
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    wait_for(
        || any_checkpoint(&killed.join("runs")),
        std::time::Duration::from_secs(120),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL, during the first setting's ensemble
    assert!(
        !child.wait().unwrap().success(),
        "the figure finished before it could be killed"
    );
    let out = stdout(&ok(reproduce_fast(fig, &killed)));
    assert!(
        out.contains("resumed 6,") && out.contains("restarted 0"),
        "the ensemble resumed instead of training again: {out}"
    );
    assert_eq!(
        figure_numbers(&killed.join("plots"), "two"),
        figure_numbers(&single.join("plots"), "two")
    );
}

/// The number after `word ` in a reproduce line, e.g. `count(out, "resumed")`.
fn count(out: &str, word: &str) -> usize {
    out.split(&format!("{word} "))
        .nth(1)
        .and_then(|r| r.split([',', ';']).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of {word:?} in {out:?}"))
}

#[test]
fn reproduce_with_two_jobs_trains_each_ensemble_in_one_worker_and_draws_the_single_process_figure()
{
    let (fig, single) = two_single();
    let tmp = tempdir();
    let work = tmp.path().join("jobs");
    let mut c = reproduce_fast(fig, &work);
    c.arg("--jobs").arg("2");
    let o = ok(c);
    let (out, log) = (stdout(&o), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(
        out.contains("(2 workers): runs trained 12, reused 0, resumed 0, restarted 0; ensembles trained 2; runs measured 12; noise computed 2;"),
        "{out}"
    );
    // Each ensemble is trained by one worker, and the parent trains nothing itself.
    let trained: Vec<&str> = log.lines().filter(|l| l.contains(" trained ")).collect();
    assert_eq!(trained.len(), 2, "{log}");
    assert!(trained.iter().all(|l| l.starts_with("worker ")), "{log}");
    assert_eq!(
        figure_numbers(&work.join("plots"), "two"),
        figure_numbers(&single.join("plots"), "two")
    );
    let mut c = reproduce_fast(fig, &work);
    c.arg("--jobs").arg("2");
    let out = stdout(&ok(c));
    assert!(
        out.contains("runs trained 0, reused 12, resumed 0, restarted 0; ensembles trained 0; runs measured 0; noise computed 0;"),
        "{out}"
    );
}

/// Starts `reproduce --jobs 2` of [`TWO`], stops it with `stop` once a worker has
/// checkpointed, then runs the same command again: it must resume (the workers stopped at a
/// checkpoint) and draw the single-process figure.
fn jobs_stopped_then_resumed(stop: impl FnOnce(&mut std::process::Child)) {
    let (fig, single) = two_single();
    let tmp = tempdir();
    let work = tmp.path().join("jobs");
    let jobs = || {
        let mut c = reproduce_fast(fig, &work);
        c.arg("--jobs").arg("2");
        c
    };
    let mut parent = jobs()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        || any_checkpoint(&work.join("runs")),
        std::time::Duration::from_secs(120),
    );
    stop(&mut parent);
    let out = stdout(&ok(jobs()));
    // Workers left training on their own would have finished the runs: nothing to resume.
    assert!(
        count(&out, "resumed") > 0 && count(&out, "restarted") == 0,
        "the workers stopped at a checkpoint: {out}"
    );
    assert_eq!(
        figure_numbers(&work.join("plots"), "two"),
        figure_numbers(&single.join("plots"), "two")
    );
}

#[test]
fn a_reproduce_with_jobs_stopped_by_sigterm_exits_130_once_its_workers_checkpointed_and_resumes_to_the_same_figure(
) {
    jobs_stopped_then_resumed(|parent| {
        assert!(Command::new("kill")
            .arg("-TERM")
            .arg(parent.id().to_string())
            .status()
            .unwrap()
            .success());
        // The parent forwards SIGTERM and exits only after its workers have.
        assert_eq!(parent.wait().unwrap().code(), Some(130));
    });
}

#[test]
fn a_reproduce_with_jobs_killed_outright_stops_its_workers_which_resume_on_the_next_invocation() {
    jobs_stopped_then_resumed(|parent| {
        parent.kill().unwrap(); // SIGKILL: the kernel tells the workers (SIGTERM)
        parent.wait().unwrap();
    });
}

#[test]
fn two_shards_started_together_do_disjoint_work_and_draw_only_gives_the_single_process_figure() {
    let (fig, single) = two_single();
    let tmp = tempdir();
    let shared = tmp.path().join("shared");
    // Nothing trained yet: --draw-only names the missing units and exits 4.
    let mut c = reproduce_fast(fig, &shared);
    c.arg("--draw-only");
    let o = output(c);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("(training)"));

    let workers: Vec<std::process::Child> = [1, 2]
        .iter()
        .map(|k| {
            let mut c = reproduce_fast(fig, &shared);
            c.arg("--shard")
                .arg(format!("{k}/2"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let logs: Vec<String> = workers
        .into_iter()
        .map(|w| {
            let o = w.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stderr).into_owned()
        })
        .collect();
    // Every unit is trained or measured by exactly one shard.
    let done = |log: &str, verb: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| {
                l.split_once(&format!(" {verb} "))
                    .map(|(_, u)| u.to_string())
            })
            .collect()
    };
    for verb in ["trained", "measured"] {
        let (a, b) = (done(&logs[0], verb), done(&logs[1], verb));
        assert!(
            a.iter().all(|u| !b.contains(u)),
            "{verb} by both shards: {a:?} / {b:?}"
        );
        assert!(!(a.is_empty() && b.is_empty()), "nothing {verb}");
    }
    assert_eq!(
        done(&logs[0], "trained").len() + done(&logs[1], "trained").len(),
        2,
        "two ensembles: {logs:?}"
    );
    assert!(!shared.join("plots").exists(), "a shard draws nothing");
    let mut c = reproduce_fast(fig, &shared);
    c.arg("--draw-only");
    ok(c);
    assert_eq!(
        figure_numbers(&shared.join("plots"), "two"),
        figure_numbers(&single.join("plots"), "two")
    );
}

#[test]
fn jobs_must_be_at_least_one_and_do_not_mix_with_a_shard() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "tiny", TINY);
    for extra in [&["--jobs", "0"][..], &["--jobs", "2", "--shard", "1/2"]] {
        let mut c = reproduce(&fig, tmp.path());
        c.args(extra);
        let o = output(c);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains("--jobs") && err.trim_end().lines().count() == 1,
            "{extra:?}: {err}"
        );
    }
    assert!(!tmp.path().join("runs").exists(), "nothing was started");
}

#[test]
fn a_shard_is_k_of_n_with_k_from_1_to_n() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "tiny", TINY);
    for bad in ["0/2", "3/2", "1", "a/b"] {
        let mut c = reproduce(&fig, tmp.path());
        c.arg("--shard").arg(bad);
        let o = output(c);
        assert_eq!(o.status.code(), Some(2), "--shard {bad}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("K/N"),
            "--shard {bad}"
        );
    }
}

#[test]
fn a_shard_killed_in_the_middle_and_started_again_completes_the_figure_with_the_same_data() {
    let (fig, single) = two_single();
    let tmp = tempdir();
    let shared = tmp.path().join("shared");
    let shard = |k: usize| {
        let mut c = reproduce_fast(fig, &shared);
        c.arg("--shard")
            .arg(format!("{k}/2"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let mut first = shard(1).spawn().unwrap();
    let second = shard(2).spawn().unwrap();
    // Shard 1's log, read as it comes, says which of the two ensembles it trains.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = std::sync::Arc::clone(&log);
        let stderr = first.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    // Killed as soon as its ensemble has checkpointed: one ensemble of Setting 2 (n = 5)
    // takes well under a second on a fast machine, so any later might find it done.
    let runs = shared.join("runs");
    let checkpointed = || {
        let text = log.lock().unwrap().clone();
        let Some(unit) = text
            .lines()
            .find_map(|l| l.strip_prefix("shard 1/2: training "))
        else {
            return false;
        };
        let group = runs.join(unit.split('/').next().unwrap());
        group.exists()
            && std::fs::read_dir(&group)
                .unwrap()
                .flatten()
                .any(|r| r.path().join("checkpoint.safetensors").exists())
    };
    wait_for(checkpointed, std::time::Duration::from_secs(240));
    first.kill().unwrap(); // SIGKILL: its unit keeps a checkpoint and a free lock
    reader.join().unwrap();
    assert!(
        !first.wait().unwrap().success(),
        "shard 1 finished before it could be killed"
    );
    let logs = [output(shard(1)), second.wait_with_output().unwrap()];
    for o in &logs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The killed unit was resumed from its checkpoints, by the restarted shard or by the other.
    let resumed: usize = logs
        .iter()
        .filter_map(|o| {
            stdout(o)
                .split("resumed ")
                .nth(1)
                .and_then(|r| r.split(',').next()?.parse::<usize>().ok())
        })
        .sum();
    assert!(
        resumed > 0,
        "nothing resumed: {:?}",
        logs.iter().map(stdout).collect::<Vec<_>>()
    );
    let mut c = reproduce_fast(fig, &shared);
    c.arg("--draw-only");
    let out = stdout(&ok(c));
    assert!(
        out.contains("runs trained 0"),
        "the draw trains nothing: {out}"
    );
    assert_eq!(
        figure_numbers(&shared.join("plots"), "two"),
        figure_numbers(&single.join("plots"), "two")
    );
}

#[test]
fn a_shard_measures_the_runs_it_can_while_another_worker_holds_a_training_unit_and_names_that_unit_only_once_it_trains_it(
) {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "two", &TWO.replace("iters: 6000", "iters: 100"));
    let work = tmp.path().join("work");
    let mut c = reproduce_fast(&fig, &work);
    c.arg("--draw-only");
    let missing = String::from_utf8_lossy(&output(c).stderr).into_owned();
    // Stand in for a live worker training Setting 2: hold the lock of one of its runs.
    let held = missing
        .split([':', ';'])
        .map(str::trim)
        .find_map(|u| {
            u.strip_suffix(" (training)")
                .filter(|u| u.starts_with("normal-n5-"))
        })
        .unwrap_or_else(|| panic!("no Setting 2 run among the missing units: {missing}"));
    let lock = linattn::run::RunFolder::new(work.join("runs").join(held))
        .try_lock()
        .unwrap()
        .expect("a free lock");

    let mut c = reproduce_fast(&fig, &work);
    c.arg("--shard")
        .arg("1/1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut shard = c.spawn().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (log, stderr) = (log.clone(), shard.stderr.take().unwrap());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    // The shard owns every unit: it must train and measure Setting 1 instead of waiting.
    let setting1 = work.join("runs/normal-n20-L3-d5-fast");
    let measured = |dir: &Path| {
        dir.exists()
            && std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|r| r.path().join("measurements.csv").exists())
                .count()
                == 6
    };
    wait_for(|| measured(&setting1), std::time::Duration::from_secs(240));
    // Let go only once the shard has come to the runs it left for last, so that it has seen
    // the lock held there too.
    let said = |what: &str| log.lock().unwrap().contains(what);
    wait_for(|| said("waiting for "), std::time::Duration::from_secs(60));
    assert!(
        !work.join("runs").join(held).join("metrics.csv").exists(),
        "the held unit was trained"
    );
    assert!(!said("training normal-n5-"), "{}", log.lock().unwrap());
    drop(lock);
    let status = shard.wait().unwrap();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("is another worker's for now; measuring it later"),
        "{log}"
    );
    // The held unit is announced as trained by this worker only once the other has let go.
    let (waiting, training) = (log.find("waiting for "), log.find("training normal-n5-"));
    assert!(
        waiting.is_some() && training.is_some() && waiting < training,
        "{log}"
    );
    let mut c = reproduce_fast(&fig, &work);
    c.arg("--draw-only");
    assert!(stdout(&ok(c)).contains("runs trained 0"));
}

#[test]
fn reproduce_estimate_predicts_each_figures_work_and_trains_nothing() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "two", &TWO.replace("iters: 6000", "iters: 100"));
    let work = tmp.path().join("work");
    let mut c = reproduce_fast(&fig, &work);
    c.arg("--estimate").arg("--jobs").arg("2");
    let out = stdout(&ok(c));
    assert!(out.contains("two: "), "{out}");
    assert!(out.contains("with 2 workers about"), "{out}");
    assert!(
        !work.join("runs").exists(),
        "the estimate made the runs folder (and may have trained something)"
    );
}

/// A figure whose noise unit takes some seconds (3000 batches of B = 1000), after a tiny
/// training unit.
const SLOW_NOISE: &str = r#"
title: "slow noise"
paper: "none: a test"
series:
  - {id: s1, label: "Setting 1", settings: setting1_normal_n20.yaml, lr: {sgd: 0.02, adam: 0.02}}
runs: {optimizers: [sgd], seeds: [0], iters: 4, save_every: 1}
measure:
  loss_every: 2
  noise: {seed: 1, samples: 3000, full_batch: 10000}
panels: [loss, noise]
quick: {}
"#;

#[test]
fn a_second_plain_reproduce_waits_for_the_unit_the_first_holds_then_draws() {
    let tmp = tempdir();
    let fig = write_figure(tmp.path(), "slow_noise", SLOW_NOISE);
    let work = tmp.path().join("w");
    // Its output into a file: a pipe nobody reads could fill and stop it.
    let first_log = tmp.path().join("first.log");
    let file = std::fs::File::create(&first_log).unwrap();
    let mut first = reproduce_into(&fig, &work, &tmp.path().join("plots1"));
    first
        .args(["--jobs", "1"])
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let mut first = first.spawn().unwrap();
    // The noise folder appears when the first process takes its lock, after its training.
    let noise_folder = || {
        work.join("runs").exists()
            && std::fs::read_dir(work.join("runs"))
                .unwrap()
                .flatten()
                .filter_map(|g| std::fs::read_dir(g.path()).ok())
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("noise-"))
    };
    wait_for(noise_folder, std::time::Duration::from_secs(120));
    let mut second = reproduce_into(&fig, &work, &tmp.path().join("plots2"));
    second.args(["--jobs", "1"]);
    let second = output(second);
    let second_ok = second.status.success();
    let first_status = first.wait().unwrap();
    let first = std::fs::read_to_string(&first_log).unwrap();
    let second = format!(
        "{}{}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(first_status.code(), Some(0), "{first}");
    assert!(second_ok, "{second}");
    let said = |log: &str, what: &str| {
        log.lines()
            .any(|l| l.contains(what) && l.contains("/noise-seed1-"))
    };
    assert!(
        said(&second, "waiting for "),
        "the second process waits for the noise unit the first holds: {second}"
    );
    assert!(tmp.path().join("plots2/slow_noise.png").is_file());
    assert!(
        said(&first, "measured ") && !said(&second, "measured "),
        "the noise is measured once, by the first: {first}\n{second}"
    );
}

/// The testbed's figures in small: block spectra, heterogeneity and update sharpness of three
/// optimizers, and a learning-rate grid over all eight with the loss at each best rate.
const BLOCKS: &str = r#"
title: "tiny blocks"
paper: "none: a test"
beyond_paper: true
series:
  - {id: s1, label: "Setting 1, B = 64", settings: setting1_normal_n20.yaml, set: [data.batch=64], lr: {sgd: 0.02, adam: 0.02, sign: 0.002}}
runs: {optimizers: [sgd, adam, sign], seeds: [0, 1], iters: 6, save_every: 1}
measure: {loss_every: 2, smoothness_every: 2, spectrum_every: 3, spectrum_at: [0, 6]}
panels: [block_spectra, loss, heterogeneity, smoothness]
quick: {}
"#;

const EIGHT: &str = r#"
title: "tiny optimizers"
paper: "none: a test"
beyond_paper: true
series:
  - {id: s1, label: "Setting 1, B = 32", settings: setting1_normal_n20.yaml, set: [data.batch=32],
     lr: {sgd: 0.02, adam: 0.02, adamw: 0.02, sign: 0.002, normalized: 0.02, lion: 0.005, adam_mini: 0.02, muon: 0.05}}
runs: {optimizers: [sgd, adam, adamw, sign, normalized, lion, adam_mini, muon], seeds: [0, 1], iters: 4, save_every: 4, weight_decay: 0.01}
lr_grid: {factors: [0.5, 1]}
measure: {loss_every: 2}
panels: [lr_sweep, best_loss]
quick: {}
"#;

#[test]
fn the_testbed_figures_draw_block_spectra_heterogeneity_sharpness_and_every_optimizers_best_rate() {
    let tmp = tempdir();
    let blocks = write_figure(tmp.path(), "blocks", BLOCKS);
    let eight = write_figure(tmp.path(), "eight", EIGHT);
    let mut c = reproduce_fast(&blocks, tmp.path());
    c.arg(&eight);
    let out = stdout(&ok(c));
    assert!(out.contains("runs trained 38"), "6 + 2 x 8 x 2 runs: {out}");
    let plots = tmp.path().join("plots");
    for id in ["blocks", "eight"] {
        let png = std::fs::read(plots.join(format!("{id}.png"))).expect("png");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    }

    let b = figure_numbers(&plots, "blocks");
    let q = b["quantities"].as_array().unwrap();
    let find = |what: &str, o: &str| {
        q.iter()
            .find(|x| x["quantity"] == what && x["optimizer"] == o)
            .unwrap_or_else(|| panic!("no {what} of {o}: {b}"))
    };
    for o in ["sgd", "adam", "sign"] {
        for what in [
            "block_heterogeneity at 0",
            "block_heterogeneity at 6",
            "update sharpness (median over iterations)",
        ] {
            let x = find(what, o);
            let mean = x["mean"].as_f64().unwrap();
            assert!(mean.is_finite() && mean != 0.0, "{x}");
            assert_eq!(x["seeds"], 2, "{x}");
        }
    }
    // At initialisation every optimizer's model is the same: the ratio to SGD is 1.
    let at0 = find("block_heterogeneity at 0", "adam")["vs_sgd"]
        .as_f64()
        .unwrap();
    assert!((at0 - 1.0).abs() < 1e-12, "{at0}");
    assert!(find("block_heterogeneity at 6", "sgd")["vs_sgd"].is_null());

    let e = figure_numbers(&plots, "eight");
    let ratios = e["loss_ratios"].as_array().unwrap();
    assert_eq!(
        ratios.len(),
        7,
        "each optimizer at its best rate over SGD at its: {e}"
    );
    assert_eq!(e["lr_choices"].as_array().unwrap().len(), 8, "{e}");
    let grid = std::fs::read_to_string(plots.join("eight.csv")).expect("the grid's runs");
    assert_eq!(grid.lines().count(), 1 + 32, "{grid}");
    assert!(
        !plots.join("lr_grid.csv").exists(),
        "the paper's grid file is its own"
    );

    let md = std::fs::read_to_string(plots.join("summary.md")).unwrap();
    let beyond = md.find("# Beyond the paper").expect("the testbed's part");
    assert!(
        md[beyond..].contains("## blocks") && md[beyond..].contains("## eight"),
        "{md}"
    );
    assert!(
        md[beyond..].contains("grid centre") && md[beyond..].contains("Muon"),
        "{md}"
    );
    assert!(
        !md[..beyond].contains("blocks"),
        "the paper's overviews leave the testbed out: {md}"
    );
}

#[test]
fn reproduce_without_names_makes_the_papers_figures_and_a_testbed_figure_only_when_named() {
    let tmp = tempdir();
    let experiments = tmp.path().join("experiments");
    std::fs::create_dir_all(experiments.join("figures")).unwrap();
    std::fs::create_dir_all(experiments.join("settings")).unwrap();
    std::fs::copy(
        root().join("experiments/settings/setting1_normal_n20.yaml"),
        experiments.join("settings/setting1_normal_n20.yaml"),
    )
    .unwrap();
    write_figure(&experiments.join("figures"), "paper", TINY);
    write_figure(
        &experiments.join("figures"),
        "testbed",
        &BLOCKS.replace("sign: 0.002}", "sign: 0.003}"),
    );
    let missing = |names: &[&str]| {
        let mut c = linattn();
        c.arg("reproduce")
            .args(names)
            .arg("--experiments")
            .arg(&experiments)
            .arg("--runs")
            .arg(tmp.path().join("runs"))
            .arg("--plots")
            .arg(tmp.path().join("plots"))
            .arg("--draw-only");
        let o = output(c);
        assert_eq!(o.status.code(), Some(4), "nothing is trained yet");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let all = missing(&[]);
    assert!(all.contains("sgd-lr0.02-seed0"), "{all}");
    assert!(
        !all.contains("lr0.003"),
        "the testbed figure was not asked for: {all}"
    );
    let named = missing(&["testbed"]);
    assert!(named.contains("sign-lr0.003"), "{named}");
}

/// Issue 41's finding 2: a run whose spectrum.csv is damaged or deleted is not drawn as if it
/// held no spectrum. `--draw-only` exits 4 naming the run; `reproduce` measures it again, to
/// the same bytes, and then draws.
#[test]
fn a_damaged_or_deleted_spectrum_stops_the_drawing_and_reproduce_measures_it_again() {
    let tmp = tempdir();
    let blocks = write_figure(tmp.path(), "blocks", BLOCKS);
    ok(reproduce_fast(&blocks, tmp.path()));
    let runs = run_folders(&tmp.path().join("runs"));
    let run = runs
        .iter()
        .find(|r| r.join("spectrum.csv").exists())
        .expect("a run with spectra");
    let name = run.file_name().unwrap().to_string_lossy().into_owned();
    let spectrum = run.join("spectrum.csv");
    let whole = std::fs::read(&spectrum).unwrap();
    let mut flipped = whole.clone();
    flipped[whole.len() / 2] ^= 0x01;
    for damage in [Some(flipped), None] {
        match damage {
            Some(b) => std::fs::write(&spectrum, b).unwrap(),
            None => std::fs::remove_file(&spectrum).unwrap(),
        }
        let mut draw = reproduce_fast(&blocks, tmp.path());
        draw.arg("--draw-only");
        let o = output(draw);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(4), "{err}");
        assert!(err.contains(&name), "the run is named: {err}");
        let out = stdout(&ok(reproduce_fast(&blocks, tmp.path())));
        assert!(out.contains("runs measured 1"), "{out}");
        assert!(
            std::fs::read(&spectrum).ok().as_deref() == Some(&whole[..]),
            "measured again to the same bytes"
        );
    }
}

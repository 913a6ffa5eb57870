//! Divergence, interruption, resume and concurrent writers never lose or corrupt a run.
mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SMALL: &[&str] = &["data.batch=100"];

fn train_cmd(out: &Path, sets: &[&str]) -> Command {
    let mut c = linattn();
    c.arg("train");
    let sets: Vec<String> = SMALL.iter().chain(sets).map(|s| s.to_string()).collect();
    with_config(
        c,
        &experiment("settings/setting1_normal_n20.yaml"),
        &sets,
        out,
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_for_checkpoint(dir: &Path, deadline: Duration) {
    let start = Instant::now();
    while !dir.join("checkpoint.safetensors").exists() {
        assert!(
            start.elapsed() < deadline,
            "no checkpoint appeared in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_diverging_run_stops_keeps_every_row_and_exits_3() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let o = output(train_cmd(
        &out,
        &["train.lr=1e6", "train.clip=0", "train.iters=500"],
    ));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("diverged at iteration"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "diverged");
    let at = summary["diverged_at"].as_i64().unwrap();
    let rows = metrics(&out);
    assert_eq!(
        rows.len() as i64,
        at + 1,
        "metrics.csv keeps every row up to the diverged one"
    );
    assert!(!rows.last().unwrap().1.is_finite() || !rows.last().unwrap().2.is_finite());
    assert!(rows[..rows.len() - 1]
        .iter()
        .all(|r| r.1.is_finite() && r.2.is_finite()));
}

#[test]
fn a_run_skipping_nonfinite_steps_diverges_after_more_than_k_in_a_row_and_says_how_many() {
    // Gamma covariates through six layers at Adam lr 0.1: from iteration 34 on every batch
    // overflows.
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let mut c = linattn();
    c.arg("train");
    let sets: Vec<String> = [
        "model.layers=6",
        "data.batch=100",
        "train.optimizer=adam",
        "train.lr=0.1",
        "train.iters=300",
        "train.skip_nonfinite=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = output(with_config(
        c,
        &experiment("settings/setting3_gamma.yaml"),
        &sets,
        &out,
    ));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("diverged at iteration 37 (loss or gradient not finite, 4 steps in a row)"),
        "{}",
        stderr(&o)
    );
    let rows = metrics(&out);
    assert_eq!(rows.len(), 38);
    assert!(
        rows[34..]
            .iter()
            .all(|r| !(r.1.is_finite() && r.2.is_finite())),
        "the last 4 rows are the non-finite ones"
    );
}

#[test]
fn reusing_a_run_folder_is_refused_without_force_or_resume() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    ok(train_cmd(&out, &["train.iters=3"]));
    let before = std::fs::read(out.join("metrics.csv")).unwrap();
    let o = output(train_cmd(&out, &["train.iters=5"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("metrics.csv")).unwrap(),
        before,
        "the old run is untouched"
    );
    let mut forced = train_cmd(&out, &["train.iters=5"]);
    forced.arg("--force");
    ok(forced);
    assert_eq!(metrics(&out).len(), 5);
}

#[test]
fn a_forced_retrain_drops_the_measurements_of_the_old_trajectory() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    ok(train_cmd(&out, &["train.iters=3"]));
    std::fs::write(out.join("measurements.csv"), "iter\n0\n").unwrap();
    let mut forced = train_cmd(&out, &["train.iters=5"]);
    forced.arg("--force");
    ok(forced);
    assert!(
        !out.join("measurements.csv").exists(),
        "reproduce and analyze would reuse them for the new run"
    );
}

#[test]
fn a_second_process_writing_into_the_same_folder_is_refused() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let mut first = train_cmd(&out, &["train.iters=100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint_or_config(&out);
    let mut second = train_cmd(&out, &["train.iters=10"]);
    second.arg("--force");
    let o = output(second);
    first.kill().unwrap();
    let _ = first.wait();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("another linattn process"),
        "{}",
        stderr(&o)
    );
}

fn wait_for_checkpoint_or_config(dir: &Path) {
    let start = Instant::now();
    while !dir.join("config.yaml").exists() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Trains `sets` (plus `extra` command-line flags) uninterrupted into `whole`, and again into
/// `killed`, SIGKILLed after its first checkpoint and resumed; `folders` are the run folders
/// under each (one, or an ensemble's members). While the killed run still trains, its
/// metrics.csv is read and holds rows.
fn kill_and_resume(sets: &[&str], extra: &[&str], folders: &[&str]) {
    let tmp = tempdir();
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let mut c = train_cmd(&whole, sets);
    c.args(extra);
    ok(c);

    let mut child = train_cmd(&killed, sets);
    child
        .args(extra)
        .args(["--checkpoint-every", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = child.spawn().unwrap();
    let first = killed.join(folders[0]);
    wait_for_checkpoint(&first, Duration::from_secs(120));
    // An ensemble is checkpointed at iteration 0 too: wait for a checkpoint with rows.
    let rows = loop {
        if first.join("metrics.csv").exists() {
            let rows = metrics(&first);
            if !rows.is_empty() {
                break rows;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before its metrics could be read mid-run"
    );
    assert!(
        !rows.is_empty() && rows.len().is_multiple_of(50),
        "metrics.csv while training holds the rows up to a checkpoint: {}",
        rows.len()
    );
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed"
    );

    let mut resume = linattn();
    resume
        .arg("train")
        .arg("--resume")
        .arg(killed.join(folders[folders.len() - 1]));
    ok(resume);
    for f in folders {
        let (a, b) = (killed.join(f), whole.join(f));
        for file in ["metrics.csv", "final.safetensors", "trajectory.safetensors"] {
            assert_eq!(
                std::fs::read(a.join(file)).unwrap(),
                std::fs::read(b.join(file)).unwrap(),
                "{f}: resumed {file} differs"
            );
        }
        assert!(!a.join("checkpoint.safetensors").exists());
    }
}

#[test]
fn sigkill_then_resume_of_a_faithful_run_gives_byte_identical_files() {
    kill_and_resume(&["train.iters=1200"], &[], &[""]);
}

#[test]
fn sigkill_then_resume_of_a_fast_run_gives_byte_identical_files() {
    kill_and_resume(&["train.iters=2500", "train.mode=fast"], &[], &[""]);
}

#[test]
fn sigkill_then_resume_of_a_12_member_ensemble_gives_byte_identical_files() {
    let members: Vec<String> = (0..6)
        .flat_map(|s| [format!("sgd-seed{s}"), format!("adam-seed{s}")])
        .collect();
    let folders: Vec<&str> = members.iter().map(String::as_str).collect();
    kill_and_resume(
        &["train.iters=800"],
        &["--seeds", "0,1,2,3,4,5", "--optimizers", "sgd,adam"],
        &folders,
    );
}

/// An ensemble writes its members' checkpoints before its first step: killed at once (before
/// any periodic checkpoint), `--resume` on one member resumes them all, byte-identically, and
/// none is left "running".
#[test]
fn an_ensemble_killed_before_its_first_periodic_checkpoint_resumes_every_member() {
    let tmp = tempdir();
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let sets = ["train.iters=10000", "train.mode=fast"];
    let flags = ["--seeds", "0,1", "--optimizers", "sgd,lion"];
    let folders = ["sgd-seed0", "lion-seed0", "sgd-seed1", "lion-seed1"];
    let mut c = train_cmd(&whole, &sets);
    c.args(flags);
    ok(c);
    let mut child = train_cmd(&killed, &sets);
    child
        .args(flags)
        .args(["--checkpoint-every", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = child.spawn().unwrap();
    for f in folders {
        wait_for_checkpoint(&killed.join(f), Duration::from_secs(120));
    }
    child.kill().unwrap(); // SIGKILL
    assert!(
        !child.wait().unwrap().success(),
        "the run finished before it could be killed"
    );
    let mut resume = linattn();
    resume
        .arg("train")
        .arg("--resume")
        .arg(killed.join(folders[3]));
    let o = resume.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resumed the ensemble of 4 runs"),
        "{}",
        stderr(&o)
    );
    for f in folders {
        for file in ["metrics.csv", "final.safetensors", "trajectory.safetensors"] {
            assert_eq!(
                std::fs::read(killed.join(f).join(file)).unwrap(),
                std::fs::read(whole.join(f).join(file)).unwrap(),
                "{f}: resumed {file} differs"
            );
        }
    }
}

#[test]
fn sigkill_then_resume_of_a_faithful_run_on_a_fixed_training_set_gives_byte_identical_files() {
    kill_and_resume(&["train.iters=1200", "data.train_prompts=1500"], &[], &[""]);
}

#[test]
fn sigkill_then_resume_of_an_ensemble_of_the_testbed_optimizers_on_a_fixed_training_set_gives_byte_identical_files(
) {
    let kinds = ["adamw", "sign", "normalized", "lion", "adam_mini", "muon"];
    let members: Vec<String> = kinds.iter().map(|k| format!("{k}-seed0")).collect();
    let folders: Vec<&str> = members.iter().map(String::as_str).collect();
    kill_and_resume(
        &[
            "train.iters=800",
            "train.mode=fast",
            "train.lr=0.001",
            "data.train_prompts=2500",
        ],
        &["--seeds", "0", "--optimizers", &kinds.join(",")],
        &folders,
    );
}

/// Starts `train` with `sets` (and no periodic checkpoint), sends SIGTERM half a second after
/// it began, and checks what an interrupted run reports: exit 130, how to resume, and an
/// `interrupted` summary next to its checkpoint.
fn sigterm_during(out: &Path, sets: &[&str]) {
    let mut child = train_cmd(out, sets);
    child
        .args(["--checkpoint-every", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = child.spawn().unwrap();
    wait_for_checkpoint_or_config(out);
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert_ne!(
        o.status.code(),
        Some(0),
        "the run finished before SIGTERM arrived"
    );
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("interrupted"), "{summary}");
    assert!(out.join("checkpoint.safetensors").exists());
}

#[test]
fn sigterm_checkpoints_exits_130_and_resume_completes_the_run() {
    let tmp = tempdir();
    let (whole, stopped) = (tmp.path().join("whole"), tmp.path().join("stopped"));
    ok(train_cmd(
        &whole,
        &["train.iters=800", "train.optimizer=adam"],
    ));
    sigterm_during(&stopped, &["train.iters=800", "train.optimizer=adam"]);
    let mut resume = linattn();
    resume.arg("train").arg("--resume").arg(&stopped);
    ok(resume);
    assert_eq!(
        std::fs::read(stopped.join("metrics.csv")).unwrap(),
        std::fs::read(whole.join("metrics.csv")).unwrap()
    );
}

#[test]
fn sigterm_stops_a_fast_run_with_exit_130_and_a_checkpoint_to_resume_from() {
    let tmp = tempdir();
    sigterm_during(
        &tmp.path().join("fast"),
        &["train.iters=200000", "train.mode=fast"],
    );
}

/// Starts `train` with `sets` into `out`, checkpointing every 50 iterations, and kills it
/// (SIGKILL) once a checkpoint is there; returns the checkpoint's bytes.
fn killed_after_a_checkpoint(out: &Path, sets: &[&str]) -> Vec<u8> {
    let mut c = train_cmd(out, sets);
    c.args(["--checkpoint-every", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    wait_for_checkpoint(out, Duration::from_secs(120));
    child.kill().unwrap();
    let _ = child.wait();
    std::fs::read(out.join("checkpoint.safetensors")).unwrap()
}

/// The trajectory chunks of a training run folder, by name.
fn chunks(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out.join("trajectory.partial"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn checkpoints_append_the_trajectory_rather_than_rewrite_it_and_a_damaged_chunk_is_refused() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let mut c = train_cmd(&out, &["train.iters=100000", "train.mode=fast"]);
    c.args(["--checkpoint-every", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    while chunks(&out).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{:?}",
            chunks(&out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    // Contiguous chunks from snapshot 0, each written once.
    let names = chunks(&out);
    let mut end = 0;
    for n in &names {
        let (a, b) = n.trim_end_matches(".safetensors").split_once('-').unwrap();
        let (a, b): (i64, i64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(a == end && b > a, "{names:?}");
        end = b;
    }
    // The checkpoint holds no snapshot: it is smaller than the 50 of one chunk.
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let chunk = out.join("trajectory.partial").join(&names[1]);
    assert!(
        size(&out.join("checkpoint.safetensors")) < size(&chunk),
        "{} vs {}",
        size(&out.join("checkpoint.safetensors")),
        size(&chunk)
    );
    // One bit flipped in a chunk: the resume is refused with one line, the chunk kept.
    let first = out.join("trajectory.partial").join(&names[0]);
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(&first, flipped(&bytes)).unwrap();
    let o = output(resume_cmd(&out));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    assert!(out.join("checkpoint.safetensors").exists());
}

#[test]
fn a_truncated_or_mismatched_checkpoint_is_bad_input() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let bytes = killed_after_a_checkpoint(&out, &["train.iters=100000"]);
    let ckpt = out.join("checkpoint.safetensors");

    // Shapes that disagree with config.yaml.
    let cfg = std::fs::read_to_string(out.join("config.yaml")).unwrap();
    std::fs::write(out.join("config.yaml"), cfg.replace("dim: 5", "dim: 4")).unwrap();
    let mut resume = linattn();
    resume.arg("train").arg("--resume").arg(&out);
    let o = output(resume);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("shape"), "{}", stderr(&o));
    std::fs::write(out.join("config.yaml"), cfg).unwrap();

    // A truncated file.
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    let mut resume = linattn();
    resume.arg("train").arg("--resume").arg(&out);
    let o = output(resume);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("checkpoint.safetensors"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim_end().lines().count(), 1);
}

#[test]
fn an_output_folder_that_cannot_be_written_is_bad_input() {
    let tmp = tempdir();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = output(train_cmd(&file.join("run"), &["train.iters=2"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a-file"), "{}", stderr(&o));
}

#[test]
fn resume_of_a_folder_that_is_not_a_run_is_bad_input() {
    let tmp = tempdir();
    let mut resume = linattn();
    resume.arg("train").arg("--resume").arg(tmp.path());
    let o = output(resume);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a linattn run folder"),
        "{}",
        stderr(&o)
    );
}

// ----------------------------------------------------------------------------- noise

fn noise_cmd(out: &Path, sets: &[&str], samples: usize) -> Command {
    let mut c = linattn();
    c.arg("noise")
        .args(["--samples", &samples.to_string(), "--full-batch", "2000"]);
    let sets: Vec<String> = SMALL.iter().chain(sets).map(|s| s.to_string()).collect();
    with_config(
        c,
        &experiment("settings/setting1_normal_n20.yaml"),
        &sets,
        out,
    )
}

/// Values in a partial noise file (a key line, a checksum line, a header, then one value per
/// line).
fn partial_values(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("noise.partial.csv"))
        .map(|t| t.lines().count().saturating_sub(3))
        .unwrap_or(0)
}

/// Starts a noise measurement into `out` and waits until its partial file holds more than
/// `more_than` values.
fn noise_until_partial(out: &Path, samples: usize, more_than: usize) -> std::process::Child {
    let mut c = noise_cmd(out, &[], samples);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let start = Instant::now();
    while partial_values(out) <= more_than {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the partial file never grew past {more_than} values"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// noise.json without its wall time, which a resumed measurement counts anew.
fn noise_json(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("noise.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("wall_time_s");
    v
}

#[test]
fn a_noise_measurement_stopped_by_sigterm_and_then_sigkill_resumes_to_byte_identical_values() {
    let samples = 3000;
    let tmp = tempdir();
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    ok(noise_cmd(&whole, &[], samples));

    // SIGTERM: the values so far are written at once, and the exit code says "interrupted".
    let child = noise_until_partial(&killed, samples, 0);
    std::thread::sleep(Duration::from_millis(150));
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("run the same command again"),
        "{}",
        stderr(&o)
    );
    let kept = partial_values(&killed);
    assert!(kept > 0 && kept < samples, "{kept} values kept");
    assert!(!killed.join("noise.json").exists());

    // SIGKILL after the resumed run has written more: only the periodic writes survive.
    let mut child = noise_until_partial(&killed, samples, kept);
    child.kill().unwrap();
    assert!(
        !child.wait().unwrap().success(),
        "the measurement finished before it could be killed"
    );

    ok(noise_cmd(&killed, &[], samples));
    assert_eq!(
        std::fs::read(killed.join("noise.csv")).unwrap(),
        std::fs::read(whole.join("noise.csv")).unwrap()
    );
    assert_eq!(noise_json(&killed), noise_json(&whole));
    assert!(
        !killed.join("noise.partial.csv").exists(),
        "the partial file outlived the measurement"
    );
}

#[test]
fn a_noise_partial_file_of_another_config_is_not_resumed_from() {
    let tmp = tempdir();
    let (whole, other) = (tmp.path().join("whole"), tmp.path().join("other"));
    ok(noise_cmd(&whole, &[], 200));
    // Values of seed 2, killed midway, then the same folder measured for seed 0.
    let mut c = noise_cmd(&other, &["train.seed=2"], 3000);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    while partial_values(&other) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no partial file appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = ok(noise_cmd(&other, &[], 200));
    assert!(
        stderr(&o).contains("another config; starting over"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(other.join("noise.csv")).unwrap(),
        std::fs::read(whole.join("noise.csv")).unwrap()
    );
}

// ----------------------------------------------------------------------------- ensemble checkpoints

const ENSEMBLE: &[&str] = &["--seeds", "0,1", "--optimizers", "sgd,adam"];
const MEMBERS: [&str; 4] = ["sgd-seed0", "adam-seed0", "sgd-seed1", "adam-seed1"];
const ENSEMBLE_SETS: &[&str] = &["train.iters=800"];

/// Trains the 4-member ensemble into `out` (or resumes it there) and stops it with SIGTERM (a
/// whole checkpoint is written) once its checkpoints hold more than `past` iterations; returns
/// their iteration.
fn ensemble_stopped_past(out: &Path, past: usize, resume: bool) -> usize {
    let mut c = if resume {
        resume_cmd(&out.join(MEMBERS[3]))
    } else {
        let mut c = train_cmd(out, ENSEMBLE_SETS);
        c.args(ENSEMBLE);
        c
    };
    c.args(["--checkpoint-every", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().unwrap();
    let first = out.join(MEMBERS[0]);
    let start = Instant::now();
    let rows = |d: &Path| {
        if d.join("metrics.csv").exists() {
            metrics(d).len()
        } else {
            0
        }
    };
    while rows(&first) <= past {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint past {past} in {}",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "the ensemble was not interrupted"
    );
    let at = metrics(&first).len();
    for m in MEMBERS {
        assert_eq!(metrics(&out.join(m)).len(), at, "{m}");
    }
    at
}

fn copy_dir(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

/// A kill can land between two members' checkpoint writes. Both halves of such a cut are built
/// here from two whole checkpoints of the same ensemble (iterations i1 < i2): every resume must
/// end byte-identical to an uninterrupted ensemble.
#[test]
fn an_ensemble_killed_between_its_members_checkpoint_writes_resumes_to_byte_identical_files() {
    let tmp = tempdir();
    let t = tmp.path();
    let whole = t.join("whole");
    let mut c = train_cmd(&whole, ENSEMBLE_SETS);
    c.args(ENSEMBLE);
    ok(c);
    let (old, new) = (t.join("old"), t.join("new"));
    // The later checkpoint continues the earlier one's history, as a kill would find it.
    let i1 = ensemble_stopped_past(&old, 0, false);
    copy_dir(&old, &new);
    let i2 = ensemble_stopped_past(&new, i1, true);
    assert!(i2 > i1);
    let next = |dir: &Path, m: &str| dir.join(m).join("checkpoint.next.safetensors");
    let ckpt = |dir: &Path, m: &str| dir.join(m).join("checkpoint.safetensors");
    // A member writes its new snapshots (a trajectory chunk) before its next checkpoint.
    let chunks_of_new = |dir: &Path, m: &str| {
        let to = dir.join(m).join("trajectory.partial");
        std::fs::remove_dir_all(&to).unwrap();
        copy_dir(&new.join(m).join("trajectory.partial"), &to);
    };
    // Cut in the first phase: two members have written their next checkpoint, two have not.
    let first_phase = t.join("first_phase");
    copy_dir(&old, &first_phase);
    for m in &MEMBERS[..2] {
        chunks_of_new(&first_phase, m);
        std::fs::copy(ckpt(&new, m), next(&first_phase, m)).unwrap();
    }
    // Cut in the second phase: two members' next checkpoints are renamed in place, two not yet.
    let second_phase = t.join("second_phase");
    copy_dir(&old, &second_phase);
    for (k, m) in MEMBERS.iter().enumerate() {
        chunks_of_new(&second_phase, m);
        let to = if k < 2 {
            ckpt(&second_phase, m)
        } else {
            next(&second_phase, m)
        };
        std::fs::copy(ckpt(&new, m), to).unwrap();
    }
    for dir in [&first_phase, &second_phase] {
        let mut resume = linattn();
        resume
            .arg("train")
            .arg("--resume")
            .arg(dir.join(MEMBERS[3]));
        ok(resume);
        for m in MEMBERS {
            for file in ["metrics.csv", "final.safetensors", "trajectory.safetensors"] {
                let (a, b) = (dir.join(m).join(file), whole.join(m).join(file));
                assert_eq!(
                    std::fs::read(&a).unwrap(),
                    std::fs::read(&b).unwrap(),
                    "{}: resumed {file} differs",
                    dir.join(m).display()
                );
            }
            assert!(
                !next(dir, m).exists() && !ckpt(dir, m).exists(),
                "{m}: a checkpoint outlived the run"
            );
        }
    }
}

// ----------------------------------------------------------------------------- issue 27: damage, edits, travel

/// `train --resume DIR`.
fn resume_cmd(dir: &Path) -> Command {
    let mut c = linattn();
    c.arg("train").arg("--resume").arg(dir);
    c
}

#[test]
fn a_checkpoint_damaged_after_a_kill_or_an_edited_config_is_refused_on_resume() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let bytes = killed_after_a_checkpoint(&out, &["train.iters=100000", "train.mode=fast"]);
    let ckpt = out.join("checkpoint.safetensors");

    // One bit flipped in the tensors' data (the file's last byte): the file still parses, but
    // its numbers are not those that were written.
    let mut damaged = bytes.clone();
    *damaged.last_mut().unwrap() ^= 1;
    std::fs::write(&ckpt, &damaged).unwrap();
    let o = output(resume_cmd(&out));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    std::fs::write(&ckpt, &bytes).unwrap();
    // The killed run's summary says `running`, but no process holds its lock.
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("running"), "{summary}");
    assert_eq!(
        linattn::run::RunFolder::new(&out).summary().unwrap().status,
        linattn::run::Status::Interrupted,
        "a killed run reads as interrupted"
    );

    // config.yaml edited after the start: the run would continue under another config and
    // then claim it for all of its rows.
    let cfg = std::fs::read_to_string(out.join("config.yaml")).unwrap();
    assert!(cfg.contains("iters: 100000"), "{cfg}");
    std::fs::write(
        out.join("config.yaml"),
        cfg.replace("iters: 100000", "iters: 60"),
    )
    .unwrap();
    let o = output(resume_cmd(&out));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("train.iters: 100000 → 60"),
        "{}",
        stderr(&o)
    );
    assert!(
        out.join("checkpoint.safetensors").exists(),
        "a refused resume keeps the checkpoint"
    );
}

/// `bytes` with one bit of its last byte flipped (the file still parses).
fn flipped(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    *b.last_mut().unwrap() ^= 1;
    b
}

#[test]
fn a_finished_runs_damaged_results_are_refused_on_reading_and_damaged_measurements_measured_again()
{
    let tmp = tempdir();
    let out = tmp.path().join("run");
    ok(train_cmd(&out, &["train.iters=6"]));
    let analyze = || {
        let mut c = linattn();
        c.arg("analyze").arg(&out).args(["--every", "3"]);
        output(c)
    };
    let o = analyze();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let measured = std::fs::read(out.join("measurements.csv")).unwrap();

    // A damaged measurements.csv is work to redo, not a result: measured again, to the same
    // bytes.
    std::fs::write(out.join("measurements.csv"), flipped(&measured)).unwrap();
    let o = analyze();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("measure it again"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("measurements.csv")).unwrap(),
        measured
    );

    // A damaged trajectory is a result: refused with one line naming it, and nothing written.
    std::fs::remove_file(out.join("measurements.csv")).unwrap();
    let traj = out.join("trajectory.safetensors");
    let bytes = std::fs::read(&traj).unwrap();
    std::fs::write(&traj, flipped(&bytes)).unwrap();
    let o = analyze();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("trajectory.safetensors: damaged"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    assert!(!out.join("measurements.csv").exists());
}

#[test]
fn noise_refuses_a_training_run_a_finished_measurement_without_force_and_a_second_writer() {
    let tmp = tempdir();
    let out = tmp.path().join("noise");
    ok(noise_cmd(&out, &[], 20));
    let first = std::fs::read(out.join("noise.csv")).unwrap();
    let o = output(noise_cmd(&out, &["train.seed=3"], 20));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("noise.csv")).unwrap(), first);
    let mut forced = noise_cmd(&out, &["train.seed=3"], 20);
    forced.arg("--force");
    ok(forced);
    assert_ne!(std::fs::read(out.join("noise.csv")).unwrap(), first);

    let run = tmp.path().join("run");
    ok(train_cmd(&run, &["train.iters=3"]));
    let o = output(noise_cmd(&run, &[], 20));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("training run"), "{}", stderr(&o));
    assert!(!run.join("noise.csv").exists());

    let busy = tmp.path().join("busy");
    let mut child = noise_until_partial(&busy, 100_000, 0);
    let o = output(noise_cmd(&busy, &[], 20));
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("another linattn process"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_run_folder_trained_on_a_gpu_is_analyzed_on_a_cpu_machine_with_device_cpu() {
    if tch::Cuda::is_available() {
        println!("SKIPPED: this machine has a GPU, so the folder's device exists here");
        return;
    }
    let tmp = tempdir();
    let out = tmp.path().join("run");
    ok(train_cmd(&out, &["train.iters=4"]));
    let cfg = std::fs::read_to_string(out.join("config.yaml")).unwrap();
    assert!(cfg.contains("device: cpu"), "{cfg}");
    std::fs::write(
        out.join("config.yaml"),
        cfg.replace("device: cpu", "device: cuda"),
    )
    .unwrap();
    let mut c = linattn();
    c.arg("analyze").arg(&out).args(["--device", "cpu"]);
    ok(c);
    assert!(out.join("measurements.csv").exists());
    // Without --device the folder's own device is asked for, and named as missing.
    let mut c = linattn();
    c.arg("analyze").arg(&out);
    let o = output(c);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cuda"), "{}", stderr(&o));
}

#[test]
fn a_binary_copied_away_from_its_build_tree_reproduces_a_figure_and_compares_from_another_folder() {
    let tmp = tempdir();
    let cache = tmp.path().join("cache");
    // The binary as `cargo install` or a cluster's shared disk holds it: a copy, outside the
    // checkout it was built in, run from a folder with no experiments/ in it. (Nothing it reads
    // at run time may come from the build tree: the experiments, the PyTorch side and the
    // font are carried inside it.)
    let bin = tmp.path().join("bin/linattn");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    let built = std::env::var_os("LINATTN_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_linattn").into());
    std::fs::copy(&built, &bin).unwrap();
    let work = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&work).unwrap();
    let venv = python().parent().unwrap().parent().unwrap().to_path_buf();
    let outside = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.current_dir(&work)
            .env("LINATTN_VENV", &venv)
            .env("XDG_CACHE_HOME", &cache)
            .env_remove("LINATTN_REFERENCE")
            .args(args);
        c
    };
    // The whole figure at quick scale, shortened: trained, measured (noise included), drawn.
    let o = ok(outside(&[
        "reproduce",
        "fig2_setting1",
        "--quick",
        "--iters",
        "40",
        "--seeds",
        "0",
        "--jobs",
        "1",
        "--runs",
        "runs",
        "--plots",
        "plots",
    ]));
    assert!(
        work.join("plots/fig2_setting1.png").is_file(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(work.join("plots/summary.md").is_file());
    // The PyTorch side is the shipped copy.
    let config = work.join("setting1.yaml");
    std::fs::copy(experiment("settings/setting1_normal_n20.yaml"), &config).unwrap();
    let mut c = outside(&["compare", "--config", config.to_str().unwrap()]);
    for s in ["train.iters=2", "data.batch=10"] {
        c.arg("--set").arg(s);
    }
    c.arg("--out").arg(tmp.path().join("cmp"));
    let o = ok(c);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("bit-identical: yes"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let unpacked: Vec<_> = std::fs::read_dir(cache.join("linattn"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("experiments-"))
        .collect();
    assert_eq!(unpacked.len(), 1, "one unpacked copy of the experiments");
    assert!(unpacked[0].path().join("pytorch_reference.py").is_file());
}

/// Issue 41's finding 2: a spectrum.csv with a byte flipped, cut short or deleted is measured
/// again by `analyze --spectrum`, to the same bytes, never kept or left missing.
#[test]
fn a_damaged_or_deleted_spectrum_is_measured_again_to_the_same_bytes() {
    let tmp = tempdir();
    let run = tmp.path().join("run");
    ok(train_cmd(
        &run,
        &["train.iters=20", "train.save_every=10", "train.mode=fast"],
    ));
    let analyze = || {
        let mut c = linattn();
        c.arg("analyze")
            .arg(&run)
            .args(["--every", "10", "--spectrum"]);
        ok(c);
    };
    analyze();
    let path = run.join("spectrum.csv");
    let whole = std::fs::read(&path).unwrap();
    assert!(whole.len() > 100, "a spectrum was written");
    let mut flipped = whole.clone();
    flipped[whole.len() / 2] ^= 0x01;
    let damages: [(&str, Option<Vec<u8>>); 3] = [
        ("a flipped byte", Some(flipped)),
        ("cut short", Some(whole[..whole.len() / 3].to_vec())),
        ("deleted", None),
    ];
    for (what, bytes) in damages {
        match bytes {
            Some(b) => std::fs::write(&path, b).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        analyze();
        assert!(
            std::fs::read(&path).ok().as_deref() == Some(&whole[..]),
            "{what}: spectrum.csv was not measured again"
        );
    }
}

/// Issue 41's finding 12: `analyze` on a run that is still training says so, with exit 2,
/// rather than "trajectory.safetensors: no such file".
#[test]
fn analyze_on_a_run_still_training_says_it_is_not_finished() {
    let tmp = tempdir();
    let run = tmp.path().join("run");
    let mut child = train_cmd(&run, &["train.iters=200000", "train.mode=fast"]);
    child
        .args(["--checkpoint-every", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = child.spawn().unwrap();
    wait_for_checkpoint(&run, Duration::from_secs(120));
    let mut c = linattn();
    c.arg("analyze").arg(&run);
    let o = c.output().unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a finished run"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
}

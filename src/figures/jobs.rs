//! `reproduce --jobs N`: N worker processes of this program over one runs folder, so that one
//! command takes every core.
//!
//! A worker is the parent's own command line plus `--worker K/N`. It goes through every unit in
//! the plan's order and does each one that no other worker holds (the run folders' locks
//! decide, as between `--shard` workers), leaves the rest to whoever holds them, waits for
//! nothing and draws nothing. Its [`Report`] comes back as JSON in a file. The parent then runs
//! the ordinary pass, which finds the work done (or does what a worker left) and draws.
use super::{runs::Tally, Report};
use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How a worker learns its parent's pid, to stop if the parent is gone before the worker could
/// ask to be told of its death.
const PARENT: &str = "LINATTN_JOBS_PARENT";

/// How often the parent looks at its workers (and at its stop flag).
const POLL: Duration = Duration::from_millis(100);

/// The default number of workers on this machine: one per `threads` cores.
pub fn default_jobs(threads: usize) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (cores / threads.max(1)).max(1)
}

/// What the workers did: their reports, and whether a stop request ended them.
pub struct Workers {
    pub reports: Vec<Report>,
    pub interrupted: bool,
}

/// Starts `jobs` workers with the parent's arguments `args`, waits for them, and forwards a stop
/// request (the parent's `stop` flag: Ctrl-C or SIGTERM) to each as SIGTERM, so that each
/// checkpoints and exits as a lone process would. A worker that fails is named on stderr; its
/// units are left to the parent's pass.
pub fn run(args: &[OsString], jobs: usize, stop: &AtomicBool) -> Result<Workers> {
    let exe = std::env::current_exe().context("--jobs: cannot find this program's executable")?;
    let dir = tempfile::tempdir().context("--jobs: cannot create a folder for the reports")?;
    let mut children: Vec<(String, Child, PathBuf)> = vec![];
    for k in 1..=jobs {
        let name = format!("worker {k}/{jobs}");
        let report = dir.path().join(format!("worker-{k}.json"));
        let started = Command::new(&exe)
            .args(args)
            .arg("--worker")
            .arg(format!("{k}/{jobs}"))
            .arg("--worker-report")
            .arg(&report)
            .env(PARENT, std::process::id().to_string())
            .spawn();
        match started {
            Ok(child) => children.push((name, child, report)),
            Err(e) => {
                // Those started stop at their next safe point, as on Ctrl-C.
                terminate(&mut children);
                wait_all(&mut children, &AtomicBool::new(false))?;
                return Err(e).with_context(|| format!("--jobs: cannot start {name}"));
            }
        }
    }
    let statuses = wait_all(&mut children, stop)?;
    let mut out = Workers {
        reports: vec![],
        interrupted: stop.load(Ordering::Relaxed),
    };
    for ((name, _, report), status) in children.iter().zip(statuses) {
        match status.code() {
            Some(crate::exit::OK) | Some(crate::exit::INTERRUPTED) => {
                let r = read_report(report).with_context(|| format!("--jobs: {name}"))?;
                out.interrupted |= r.interrupted;
                out.reports.push(r);
            }
            _ => eprintln!("linattn: {name} failed ({status}); this process does its units"),
        }
    }
    Ok(out)
}

/// SIGTERM to every worker still running.
fn terminate(children: &mut [(String, Child, PathBuf)]) {
    for (_, child, _) in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            // An error means the worker has just exited: there is nothing left to stop.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }
}

/// Waits for every worker; the first time `stop` is seen set, the live ones get SIGTERM.
fn wait_all(
    children: &mut [(String, Child, PathBuf)],
    stop: &AtomicBool,
) -> Result<Vec<ExitStatus>> {
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut forwarded = false;
    while statuses.iter().any(Option::is_none) {
        if !forwarded && stop.load(Ordering::Relaxed) {
            terminate(children);
            forwarded = true;
        }
        for ((name, child, _), s) in children.iter_mut().zip(statuses.iter_mut()) {
            if s.is_none() {
                *s = child
                    .try_wait()
                    .with_context(|| format!("--jobs: waiting for {name}"))?;
            }
        }
        if statuses.iter().any(Option::is_none) {
            std::thread::sleep(POLL);
        }
    }
    Ok(statuses.into_iter().flatten().collect())
}

fn read_report(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("its report {} is missing", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("its report {}", path.display()))
}

/// Called first in a worker: ask the kernel for SIGTERM when the parent dies (so that a parent
/// killed outright does not leave workers training alone), and stop at once when the parent
/// is already gone.
pub fn enter_worker(stop: &AtomicBool) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .context("--worker: cannot ask to be stopped with the parent")?;
    let parent = std::env::var(PARENT)
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    if parent.is_some_and(|p| p != std::os::unix::process::parent_id()) {
        stop.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// A worker's report, for its parent (written to a temporary file and renamed).
pub fn write_report(path: &Path, report: &Report) -> Result<()> {
    crate::run::io::write_atomic(path, serde_json::to_string(report)?.as_bytes())
}

/// The whole invocation's report: the workers' and the parent pass's. A run a worker trained
/// is one the parent's pass found finished, so it is taken off the parent's count of reused
/// runs; a worker's own count of reused runs is not summed (every worker sees those runs).
pub fn combine(workers: &[Report], parent: Report) -> Report {
    let mut tally = Tally::default();
    let (mut measured, mut noise) = (0, 0);
    for w in workers {
        tally.add(w.tally);
        measured += w.measured;
        noise += w.noise_computed;
    }
    let by_workers = tally.trained + tally.resumed + tally.restarted;
    tally.reused = parent.tally.reused.saturating_sub(by_workers);
    tally.add(Tally {
        reused: 0,
        ..parent.tally
    });
    let mut worked: Vec<String> = workers.iter().flat_map(|w| w.worked.clone()).collect();
    worked.extend(parent.worked);
    worked.sort();
    worked.dedup();
    Report {
        tally,
        measured: measured + parent.measured,
        noise_computed: noise + parent.noise_computed,
        worked,
        ..parent
    }
}

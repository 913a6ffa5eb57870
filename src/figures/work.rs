//! Doing a figure's units: training, measuring and noise, each unit taken by whichever
//! process holds its folders' locks, waiting for (or leaving) the units another holds.
use super::*;

/// How often a worker looks again at a unit another worker holds.
const POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Trains and measures what figure `f` needs and this worker owns. [`Step::Interrupted`] when
/// Ctrl-C/SIGTERM stopped it; rerunning the same command continues.
pub(super) fn work_figure(
    f: usize,
    fig: &Figure,
    plan: &Plan,
    req: &Request,
    report: &mut Report,
) -> Result<Step> {
    let prefix = match (req.shard, req.worker) {
        (Some(s), _) => format!("shard {}/{}:", s.index, s.count),
        (None, Some(w)) => format!("worker {}/{}:", w.index, w.count),
        (None, None) => format!("[{}]", fig.id),
    };
    let ours = |name: &str| req.shard.is_none_or(|s| s.owns(name));
    // A shard or a worker leaves a training unit another worker holds to it; a shard's
    // measurements of it wait for it below.
    let wait = req.alone();
    for unit in plan
        .training
        .iter()
        .filter(|u| u.figure == f && ours(&u.name))
    {
        match train_unit(unit, req, &prefix, wait, report)? {
            Step::Interrupted => return Ok(Step::Interrupted),
            Step::Busy => {
                report.busy += 1;
                // A `--jobs` worker skips what the others hold as a matter of course.
                if req.worker.is_none() {
                    say(format!(
                        "{prefix} skipped {} (locked by another worker)",
                        unit.name
                    ));
                }
            }
            Step::Done => {}
        }
    }
    for unit in plan.noise.iter().filter(|u| u.figure == f && ours(&u.name)) {
        noise_unit(unit, req, &prefix, report)?;
        if req.options.stop.load(Ordering::Relaxed) {
            return Ok(Step::Interrupted);
        }
    }
    // A shard first measures what it can start now (training a free unit itself) and leaves
    // the runs another worker is training or measuring for last, so that it never idles while
    // a unit nobody holds is waiting.
    let mut deferred = Vec::new();
    for unit in plan
        .measuring
        .iter()
        .filter(|u| u.figure == f && ours(&u.name))
    {
        match measure_unit(unit, plan, req, &prefix, wait, report)? {
            Step::Interrupted => return Ok(Step::Interrupted),
            // A `--jobs` worker leaves it to the worker that holds it and goes on; it comes
            // back for it after its pass if it is still not done (`reproduce`).
            Step::Busy if req.worker.is_some() => report.busy += 1,
            Step::Busy => {
                say(format!(
                    "{prefix} {} is another worker's for now; measuring it later",
                    unit.name
                ));
                deferred.push(unit);
            }
            Step::Done => {}
        }
    }
    measure_when_free(deferred, plan, req, &prefix, report)
}

/// Measures the `deferred` units another worker held: each pass takes whichever of them has
/// become free, so that one long unit of another worker does not hold up the rest.
fn measure_when_free(
    mut deferred: Vec<&MeasureUnit>,
    plan: &Plan,
    req: &Request,
    prefix: &str,
    report: &mut Report,
) -> Result<Step> {
    let what = format!("{} runs", deferred.len());
    let mut waiting = Waiting::new(prefix, &what);
    while !deferred.is_empty() {
        let mut busy = vec![];
        for unit in deferred {
            match measure_unit(unit, plan, req, prefix, false, report)? {
                Step::Interrupted => return Ok(Step::Interrupted),
                Step::Busy => busy.push(unit),
                Step::Done => {}
            }
        }
        deferred = busy;
        if !deferred.is_empty() && !waiting.wait(req) {
            return Ok(Step::Interrupted);
        }
    }
    Ok(Step::Done)
}

/// How a unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Done,
    /// Another live worker holds it.
    Busy,
    Interrupted,
}

/// Trains a unit's runs unless they are done. With `wait`, a unit another live worker holds
/// is waited for (and taken over, resumed from its checkpoints, if that worker dies).
pub(super) fn train_unit(
    unit: &TrainingUnit,
    req: &Request,
    prefix: &str,
    wait: bool,
    report: &mut Report,
) -> Result<Step> {
    let done = || {
        unit.dirs
            .iter()
            .all(|d| matches!(RunFolder::new(d).state(), State::Done(_)))
    };
    let was_done = done();
    let cfgs: Vec<&Config> = unit.cfgs.iter().collect();
    let mut waiting = Waiting::new(prefix, &unit.name);
    let mut said = false;
    loop {
        // Said only when no other worker holds the unit (looked at just before `ensure` takes
        // the locks itself), so that a log never names a unit as trained by two workers.
        if !said && !done() && free(&unit.dirs)? {
            say(format!("{prefix} training {}", unit.name));
            said = true;
        }
        match runs::ensure(&cfgs, &unit.dirs, &req.options)? {
            Trained::Done(_, t) => {
                report.tally.add(t);
                if t.trained + t.resumed + t.restarted > 0 {
                    // The other worker let go between the look above and `ensure`'s own locks:
                    // this worker trained it, so it names it now, still before "trained".
                    if !said {
                        say(format!("{prefix} training {}", unit.name));
                    }
                    say(format!("{prefix} trained {}", unit.name));
                } else if req.shard.is_some() && was_done {
                    say(format!("{prefix} skipped {} (done)", unit.name));
                }
                return Ok(Step::Done);
            }
            Trained::Interrupted => return Ok(Step::Interrupted),
            Trained::Busy if !wait => return Ok(Step::Busy),
            Trained::Busy => {
                if !waiting.wait(req) {
                    return Ok(Step::Interrupted);
                }
            }
        }
    }
}

/// Whether no other live worker holds any of these run folders.
pub(super) fn free(dirs: &[PathBuf]) -> Result<bool> {
    // A folder that does not exist yet is nobody's (and looking must not create it).
    let locks = dirs
        .iter()
        .filter(|d| d.exists())
        .map(|d| RunFolder::new(d).try_lock())
        .collect::<Result<Vec<_>>>()?;
    Ok(locks.iter().all(Option::is_some))
}

/// Waiting for a unit that another live worker holds: one line when it starts, then a look
/// every [`POLL`].
pub(super) struct Waiting<'a> {
    pub(super) prefix: &'a str,
    pub(super) name: &'a str,
    pub(super) said: bool,
}

impl<'a> Waiting<'a> {
    pub(super) fn new(prefix: &'a str, name: &'a str) -> Self {
        Waiting {
            prefix,
            name,
            said: false,
        }
    }

    /// Sleeps one poll; false when Ctrl-C/SIGTERM asked to stop.
    pub(super) fn wait(&mut self, req: &Request) -> bool {
        if !self.said {
            say(format!(
                "{} waiting for {} (locked by another worker)",
                self.prefix, self.name
            ));
            self.said = true;
        }
        self.pause(req)
    }

    /// [`Waiting::wait`] without the line.
    pub(super) fn pause(&self, req: &Request) -> bool {
        if req.options.stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(POLL);
        true
    }
}

/// Measures a run once its training unit is done: trains that unit if nobody holds it, and
/// waits for the worker that does with `wait` (otherwise returns [`Step::Busy`]).
pub(super) fn measure_unit(
    unit: &MeasureUnit,
    plan: &Plan,
    req: &Request,
    prefix: &str,
    wait: bool,
    report: &mut Report,
) -> Result<Step> {
    let folder = RunFolder::new(&unit.dir);
    let missing = |summary: &Summary| -> Result<bool> {
        Ok(!measure::missing(&folder, &unit.cfg, summary, &unit.needs)?.is_empty())
    };
    if let State::Done(s) = folder.state() {
        if !missing(&s)? {
            return Ok(Step::Done);
        }
    }
    let training = &plan.training[unit.training];
    if !training
        .dirs
        .iter()
        .all(|d| matches!(RunFolder::new(d).state(), State::Done(_)))
    {
        let step = train_unit(training, req, prefix, wait, report)?;
        if step != Step::Done {
            return Ok(step);
        }
    }
    let summary = folder.summary()?;
    let mut waiting = Waiting::new(prefix, &unit.name);
    let _lock = loop {
        if let Some(lock) = folder.try_lock()? {
            break lock;
        }
        if !wait {
            return Ok(Step::Busy);
        }
        if !waiting.wait(req) {
            return Ok(Step::Interrupted);
        }
    };
    if !missing(&summary)? {
        return Ok(Step::Done); // another worker measured it meanwhile
    }
    let device = req
        .device
        .tch()
        .map_err(|e| anyhow!(BadInput(format!("--device: {e}"))))?;
    let progress = req.options.progress == crate::train::Progress::Bar;
    let (_, computed) = measure::measure_run(
        &folder,
        &unit.cfg,
        &summary,
        &unit.needs,
        device,
        progress,
        &req.options.stop,
    )?;
    if req.options.stop.load(Ordering::Relaxed) {
        return Ok(Step::Interrupted);
    }
    if computed {
        report.measured += 1;
        say(format!("{prefix} measured {}", unit.name));
    }
    Ok(Step::Done)
}

/// Measures a noise unit unless it is done. A unit another live process holds is waited for
/// when this process works alone (as its training units are), and left to that process by a
/// shard or a `--jobs` worker.
pub(super) fn noise_unit(
    unit: &NoiseUnit,
    req: &Request,
    prefix: &str,
    report: &mut Report,
) -> Result<()> {
    if measure::noise::read(&unit.dir)?.is_some() {
        if req.shard.is_some() {
            say(format!("{prefix} skipped {} (done)", unit.name));
        }
        return Ok(());
    }
    let folder = RunFolder::new(&unit.dir);
    let mut waiting = Waiting::new(prefix, &unit.name);
    let _lock = loop {
        if let Some(lock) = folder.try_lock()? {
            break lock;
        }
        if !req.alone() {
            report.busy += 1;
            if req.worker.is_none() {
                say(format!(
                    "{prefix} skipped {} (locked by another worker)",
                    unit.name
                ));
            }
            return Ok(());
        }
        if !waiting.wait(req) {
            return Ok(()); // the caller sees the stop flag
        }
    };
    // The process that held it may have finished it.
    if measure::noise::read(&unit.dir)?.is_some() {
        return Ok(());
    }
    say(format!(
        "{prefix} noise {}: {} batches",
        unit.name, unit.samples
    ));
    let mut cfg = unit.cfg.clone();
    cfg.train.device = req.device;
    let progress = req.options.progress == crate::train::Progress::Bar;
    match measure::noise::run_noise(
        &cfg,
        unit.samples,
        unit.full_batch,
        &unit.dir,
        progress,
        &req.options.stop,
    )? {
        NoiseOutcome::Done(_) => {
            report.noise_computed += 1;
            say(format!("{prefix} measured {}", unit.name));
        }
        NoiseOutcome::Interrupted { measured } => {
            // The caller sees the stop flag and reports the interruption.
            say(format!(
                "{prefix} interrupted {} after {measured} of {} batches",
                unit.name, unit.samples
            ));
        }
    }
    Ok(())
}

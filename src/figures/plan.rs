//! The plan of a `reproduce`: every figure read and resolved, and the units of work it needs
//! (runs that train together, the measurements of each run, the noise of each series).
use super::*;

/// A figure read and resolved at the requested scale.
pub(super) struct Figure {
    pub(super) id: String,
    pub(super) spec: FigureSpec,
    pub(super) res: Resolved,
    pub(super) plan: Vec<RunSpec>,
    pub(super) dirs: Vec<PathBuf>,
    pub(super) needs: Needs,
}

/// Runs that train together.
pub(super) struct TrainingUnit {
    pub(super) name: String,
    pub(super) figure: usize,
    pub(super) cfgs: Vec<Config>,
    pub(super) dirs: Vec<PathBuf>,
}

/// What all requested figures measure on one run; `training` is the unit that trains it.
pub(super) struct MeasureUnit {
    pub(super) name: String,
    pub(super) figure: usize,
    pub(super) dir: PathBuf,
    pub(super) cfg: Config,
    pub(super) needs: Needs,
    pub(super) training: usize,
}

pub(super) struct NoiseUnit {
    pub(super) name: String,
    pub(super) figure: usize,
    pub(super) cfg: Config,
    pub(super) samples: i64,
    pub(super) full_batch: i64,
    pub(super) dir: PathBuf,
}

/// Every unit, listed figure by figure.
pub(super) struct Plan {
    pub(super) figures: Vec<Figure>,
    /// The figures in the order workers that share the machine take them: the one with the
    /// largest training unit first ([`TrainingUnit::size`]), so that the longest unit (Fig. 5's
    /// ensemble, about 50 min) does not start last and end alone.
    pub(super) work_order: Vec<usize>,
    pub(super) training: Vec<TrainingUnit>,
    pub(super) measuring: Vec<MeasureUnit>,
    pub(super) noise: Vec<NoiseUnit>,
}

pub(super) fn plan(req: &Request) -> Result<Plan> {
    let figures = read_figures(req)?;
    let mut plan = Plan {
        figures: vec![],
        work_order: vec![],
        training: vec![],
        measuring: vec![],
        noise: vec![],
    };
    for (f, fig) in figures.iter().enumerate() {
        plan_runs(req, &mut plan, f, fig);
        plan_noise(req, &mut plan, f, fig)?;
    }
    for m in &mut plan.measuring {
        m.training = plan
            .training
            .iter()
            .position(|u| u.dirs.contains(&m.dir))
            .expect("every run has a training unit");
    }
    let largest = |f: usize| {
        plan.training
            .iter()
            .filter(|u| u.figure == f)
            .map(TrainingUnit::size)
            .fold(0.0, f64::max)
    };
    let mut order: Vec<usize> = (0..figures.len()).collect();
    order.sort_by(|&a, &b| largest(b).total_cmp(&largest(a)));
    plan.work_order = order;
    plan.figures = figures;
    Ok(plan)
}

impl TrainingUnit {
    /// A rough count of the multiply-adds its training takes: the model's work per token
    /// (attention's side² per layer and head, softmax's scores, the MLP's two matrices) times
    /// the tokens, iterations and runs. Only the order of units depends on it.
    pub(super) fn size(&self) -> f64 {
        self.cfgs
            .iter()
            .map(|c| {
                let (m, d) = (&c.model, &c.data);
                let side = (m.dim + 1) as f64;
                let tokens = (d.context + 1) as f64;
                let scores = match m.attention {
                    crate::config::Attention::Softmax => tokens,
                    _ => 1.0,
                };
                let per_token = (m.layers * m.heads) as f64 * side * side * scores
                    + 2.0 * m.mlp_hidden as f64 * side;
                per_token * tokens * d.batch as f64 * c.train.iters as f64
            })
            .sum()
    }
}

/// Every requested figure, read first, so that a typo is reported before hours of training.
fn read_figures(req: &Request) -> Result<Vec<Figure>> {
    let experiments = spec::experiments_dir(req.experiments.as_deref())?;
    let names = if req.figures.is_empty() {
        spec::figure_ids(&experiments)?
    } else {
        req.figures.clone()
    };
    let mut figures = vec![];
    for name in &names {
        let (id, path) = spec::locate(&experiments, name)?;
        let spec = FigureSpec::load(&path)?;
        if req.figures.is_empty() && spec.beyond_paper {
            continue; // the paper's figures only, unless named
        }
        let res = spec.resolve(&req.scale);
        let plan = spec
            .plan(&experiments.join("settings"), &res, req.device)
            .map_err(|e| anyhow!(BadInput(format!("figure file {}: {e}", path.display()))))?;
        let dirs = plan
            .iter()
            .map(|r| runs::run_dir(&req.runs, &r.cfg))
            .collect();
        let needs = Needs::of(&res.measure, res.iters);
        figures.push(Figure {
            id,
            spec,
            res,
            plan,
            dirs,
            needs,
        });
    }
    Ok(figures)
}

/// A unit's name: its folder relative to the runs folder.
fn unit_name(req: &Request, p: &Path) -> String {
    p.strip_prefix(&req.runs).unwrap_or(p).display().to_string()
}

/// Figure `f`'s runs: a measurement unit per run (shared with earlier figures that need the
/// same run), and training units for the runs no earlier figure trains.
fn plan_runs(req: &Request, plan: &mut Plan, f: usize, fig: &Figure) {
    let cfgs: Vec<&Config> = fig.plan.iter().map(|r| &r.cfg).collect();
    for (i, dir) in fig.dirs.iter().enumerate() {
        match plan.measuring.iter_mut().find(|m| m.dir == *dir) {
            Some(m) => m.needs = m.needs.union(&fig.needs),
            None => plan.measuring.push(MeasureUnit {
                name: unit_name(req, dir),
                figure: f,
                dir: dir.clone(),
                cfg: cfgs[i].clone(),
                needs: fig.needs.clone(),
                training: usize::MAX,
            }),
        }
    }
    // A run belongs to the training unit of the first figure that needs it.
    let unclaimed: Vec<usize> = (0..fig.plan.len())
        .filter(|&i| !plan.training.iter().any(|u| u.dirs.contains(&fig.dirs[i])))
        .collect();
    for batch in runs::batches(&cfgs, &unclaimed) {
        let first = unit_name(req, &fig.dirs[batch[0]]);
        // No spaces: logs name units as one word.
        let name = if batch.len() == 1 {
            first
        } else {
            format!("{first}+{}", batch.len() - 1)
        };
        plan.training.push(TrainingUnit {
            name,
            figure: f,
            cfgs: batch.iter().map(|&i| cfgs[i].clone()).collect(),
            dirs: batch.iter().map(|&i| fig.dirs[i].clone()).collect(),
        });
    }
}

/// Figure `f`'s noise units, one per series (shared with earlier figures).
fn plan_noise(req: &Request, plan: &mut Plan, f: usize, fig: &Figure) -> Result<()> {
    let Some(n) = fig.res.measure.noise else {
        return Ok(());
    };
    for s in 0..fig.spec.series.len() {
        let base = fig
            .plan
            .iter()
            .find(|r| r.series == s)
            .ok_or_else(|| anyhow!("figure {}: series {s} has no runs", fig.id))?;
        let cfg = runs::noise_config(&base.cfg, n.seed);
        let dir = runs::noise_dir(&req.runs, &cfg, n.samples, n.full_batch);
        if !plan.noise.iter().any(|u| u.dir == dir) {
            plan.noise.push(NoiseUnit {
                name: unit_name(req, &dir),
                figure: f,
                cfg,
                samples: n.samples,
                full_batch: n.full_batch,
                dir,
            });
        }
    }
    Ok(())
}

/// Reads and resolves every requested figure and creates the runs folder: what a bad request
/// fails on, before any work.
pub fn check(req: &Request) -> Result<()> {
    planned(req).map(|_| ())
}

pub(super) fn planned(req: &Request) -> Result<Plan> {
    let plan = plan(req)?;
    // Drawing only reads the runs folder: a missing one is not made, and every unit is missing.
    if req.draw_only {
        return Ok(plan);
    }
    std::fs::create_dir_all(&req.runs).map_err(|e| {
        anyhow!(BadInput(format!(
            "runs folder {}: cannot create it ({e})",
            req.runs.display()
        )))
    })?;
    Ok(plan)
}

/// The units `--draw-only` would need and that are not done.
pub(super) fn missing_units(plan: &Plan) -> Result<Vec<String>> {
    let mut missing = vec![];
    for unit in &plan.measuring {
        let folder = RunFolder::new(&unit.dir);
        match folder.state() {
            State::Done(s) => {
                if !measure::missing(&folder, &unit.cfg, &s, &unit.needs)?.is_empty() {
                    missing.push(format!("{} (measurements)", unit.name));
                }
            }
            _ => missing.push(format!("{} (training)", unit.name)),
        }
    }
    for unit in &plan.noise {
        if measure::noise::read(&unit.dir)?.is_none() {
            missing.push(format!("{} (noise)", unit.name));
        }
    }
    Ok(missing)
}

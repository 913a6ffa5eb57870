//! Ensemble training (the ensemble stepper): a member fed the same batches as a solo run follows
//! the same trajectory (within 1e-5 relative), members never influence each other, a diverging
//! member stops while the others go on, and a stopped ensemble resumes to the same files.
mod common;
use common::*;
use linattn::config::{Config, OptimizerKind};
use linattn::data::Batch;
use linattn::optim::NonFinite;
use linattn::run::{protocol, RunFolder, State, Status};
use linattn::train::{self, EnsembleStepper, FaithfulStepper, Member, Options, Stepper};
use std::path::PathBuf;
use tch::{Device, Tensor};

/// A stepper and the non-finite rule the driver would give it.
struct Stepped<S: Stepper> {
    stepper: S,
    rule: NonFinite,
    cfg: Config,
    iter: i64,
}

impl<S: Stepper> Stepped<S> {
    fn new(stepper: S, cfg: &Config) -> Self {
        let rule = NonFinite::new(
            cfg.train.skip_nonfinite,
            stepper.shape().members as i64,
            Device::Cpu,
        );
        Stepped {
            stepper,
            rule,
            cfg: cfg.clone(),
            iter: 0,
        }
    }

    /// One step as the driver takes it; (losses, grad norms) per member.
    fn step(&mut self) -> (Vec<f64>, Vec<f64>) {
        let g = train::step(
            &mut self.stepper,
            &mut self.rule,
            &self.cfg.train,
            self.iter,
        );
        self.iter += 1;
        let v = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(tch::Kind::Double)).unwrap();
        (v(&g.losses), v(&g.norms))
    }

    fn diverged(&self) -> Vec<bool> {
        Vec::<bool>::try_from(self.rule.active.logical_not()).unwrap()
    }
}

fn ensemble(cfg: &Config, members: &[Member]) -> Stepped<EnsembleStepper> {
    Stepped::new(
        EnsembleStepper::start(cfg, members, Device::Cpu).unwrap(),
        cfg,
    )
}

fn config(sets: &[&str]) -> Config {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::from_yaml_str("", &sets).expect("a valid config")
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

fn rel_f(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

fn members() -> Vec<Member> {
    vec![
        Member {
            seed: 0,
            optimizer: OptimizerKind::Sgd,
            lr: 0.02,
        },
        Member {
            seed: 0,
            optimizer: OptimizerKind::Adam,
            lr: 0.02,
        },
        Member {
            seed: 1,
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
        },
        Member {
            seed: 2,
            optimizer: OptimizerKind::Adam,
            lr: 0.005,
        },
    ]
}

/// A member's solo run: faithful (the reference `Run`) or fast (`train.mode: fast`, an
/// ensemble of one).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Solo {
    Faithful,
    Fast,
}

/// Runs every member solo on its faithful CPU stream, keeping the batches, then feeds each
/// member of one ensemble its solo run's batches. Returns the largest relative differences
/// (loss, gradient norm, parameters) over all members and steps.
fn ensemble_vs_solo(sets: &[&str], iters: i64, solo: Solo) -> (f64, f64, f64) {
    let cfg = config(sets);
    let members = members();
    let mut batches: Vec<Vec<Batch>> = Vec::new();
    let mut solo_losses: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut solo_params: Vec<Vec<Tensor>> = Vec::new();
    for m in &members {
        let mut c = m.config(&cfg);
        c.train.mode = linattn::config::Mode::Faithful;
        let mut run = Stepped::new(FaithfulStepper::start(&c, Device::Cpu).unwrap(), &c);
        // The batches the faithful run would draw: its stream, after the same start.
        let (_, mut data) = protocol::start(&c, c.train.seed).into_stream(&c, Device::Cpu);
        let bs: Vec<Batch> = (0..iters).map(|_| data.next_batch()).collect();
        let (mut rows, mut params) = (vec![], vec![]);
        match solo {
            Solo::Faithful => {
                for b in &bs {
                    run.stepper.feed(Batch {
                        z: b.z.shallow_clone(),
                        y_query: b.y_query.shallow_clone(),
                    });
                    let (l, n) = run.step();
                    rows.push((l[0], n[0]));
                    params.push(run.stepper.flat_params().get(0).copy());
                }
            }
            Solo::Fast => {
                let mut one = ensemble(&cfg, &[*m]);
                for b in &bs {
                    one.stepper.feed(
                        Batch {
                            z: b.z.unsqueeze(0),
                            y_query: b.y_query.unsqueeze(0),
                        },
                        None,
                    );
                    let (l, n) = one.step();
                    rows.push((l[0], n[0]));
                    params.push(one.stepper.flat_params().get(0).copy());
                }
            }
        }
        batches.push(bs);
        solo_losses.push(rows);
        solo_params.push(params);
    }

    let mut ens = ensemble(&cfg, &members);
    let (mut worst_loss, mut worst_norm, mut worst_param) = (0f64, 0f64, 0f64);
    for t in 0..iters as usize {
        let z: Vec<&Tensor> = batches.iter().map(|b| &b[t].z).collect();
        let y: Vec<&Tensor> = batches.iter().map(|b| &b[t].y_query).collect();
        ens.stepper.feed(
            Batch {
                z: Tensor::stack(&z, 0),
                y_query: Tensor::stack(&y, 0),
            },
            None,
        );
        let (losses, norms) = ens.step();
        for i in 0..members.len() {
            let (loss, norm) = solo_losses[i][t];
            worst_loss = worst_loss.max(rel_f(losses[i], loss));
            worst_norm = worst_norm.max(rel_f(norms[i], norm));
            worst_param = worst_param.max(rel(
                &ens.stepper.flat_params().get(i as i64),
                &solo_params[i][t],
            ));
        }
    }
    println!(
        "{sets:?}, {iters} steps against the {solo:?} solo runs: largest relative difference: loss {worst_loss:.2e}, grad norm {worst_norm:.2e}, parameters {worst_param:.2e}"
    );
    (worst_loss, worst_norm, worst_param)
}

/// The claim of the ensemble: batching changes nothing but rounding. Against the solo fast
/// runs (the same arithmetic, one member at a time) on the same batches.
fn member_follows_solo_run(sets: &[&str], iters: i64) {
    member_follows_solo_run_within(sets, iters, 1e-5);
}

fn member_follows_solo_run_within(sets: &[&str], iters: i64, tol: f64) {
    let (loss, norm, param) = ensemble_vs_solo(sets, iters, Solo::Fast);
    assert!(loss < tol, "loss differs by {loss:e}");
    assert!(norm < tol, "gradient norm differs by {norm:e}");
    assert!(param < tol, "parameters differ by {param:e}");
}

#[test]
fn ensemble_member_fed_the_solo_runs_batches_follows_its_trajectory() {
    // B = 1000: on a CPU the forward then works in chunks of members and of streams.
    member_follows_solo_run(&["data.batch=1000"], 25);
}

#[test]
fn ensemble_member_follows_its_solo_run_with_clipping_active() {
    // clip 0.05 < ‖g‖ from the first step on: every step clips.
    member_follows_solo_run(&["data.batch=200", "train.clip=0.05"], 30);
}

#[test]
fn ensemble_member_follows_its_solo_run_mlp_variant() {
    // The MLP's extra reductions round differently in a batch: over 30 steps the gradient norm
    // differed by at most 1e-5 on an AVX2 CPU, but by 1.6e-5 on an AVX512 one (loss 5.9e-6,
    // parameters 1.2e-6), whose kernels sum in another order: float32 rounding grown over 30
    // steps, so this variant gets 5e-5.
    member_follows_solo_run_within(
        &[
            "data.batch=200",
            "data.setting=mlp_teacher",
            "model.parametrization=full",
            "model.mlp_hidden=30",
            "model.init_std=0.1",
            "train.clip_mode=clip_grad_norm",
        ],
        30,
        5e-5,
    );
}

/// Against the faithful runs (the reference arithmetic, torch.optim's update order), the
/// member's parameters stay within 1e-5: the two differ only by the rounding of another
/// contraction order, step after step.
#[test]
fn ensemble_member_stays_close_to_the_faithful_run() {
    for sets in [
        &["data.batch=200"][..],
        &["data.batch=200", "train.clip=0.05"],
    ] {
        let (loss, _, param) = ensemble_vs_solo(sets, 40, Solo::Faithful);
        assert!(param < 1e-5, "{sets:?}: parameters differ by {param:e}");
        assert!(loss < 1e-5, "{sets:?}: loss differs by {loss:e}");
    }
}

#[test]
fn ensemble_members_start_from_the_faithful_runs_initial_parameters() {
    let cfg = config(&["data.batch=50"]);
    let ens = EnsembleStepper::start(&cfg, &members(), Device::Cpu).unwrap();
    for (i, m) in members().iter().enumerate() {
        let mut c = m.config(&cfg);
        c.train.mode = linattn::config::Mode::Faithful;
        let run = FaithfulStepper::start(&c, Device::Cpu).unwrap();
        for (a, b) in ens.member_params(i).iter().zip(run.params()) {
            assert!(a.equal(b), "member {i}: initial parameters differ");
        }
    }
}

#[test]
fn a_diverging_member_stops_and_the_others_go_on_as_their_solo_fast_runs() {
    let tmp = tempdir();
    let cfg = config(&["data.batch=200", "train.iters=40", "train.save_every=10"]);
    let mut members = members();
    members.push(Member {
        seed: 3,
        optimizer: OptimizerKind::Sgd,
        lr: 1e4,
    });
    let outs: Vec<PathBuf> = (0..members.len())
        .map(|i| tmp.path().join(format!("m{i}")))
        .collect();
    let outcomes = train::train_ensemble(&cfg, &members, &outs, &Options::default()).unwrap();

    let bad = &outcomes[4];
    let t = bad
        .summary
        .diverged_at
        .expect("lr 1e4 diverges, clipped or not");
    assert_eq!(bad.summary.status, Status::Diverged);
    assert_eq!(
        bad.metrics.len() as i64,
        t + 1,
        "rows up to and including the diverged iteration"
    );
    let last = bad.metrics.last().unwrap();
    assert!(!(last.train_loss.is_finite() && last.grad_norm.is_finite()));
    let traj = Tensor::read_safetensors(outs[4].join("trajectory.safetensors")).unwrap();
    let steps = Vec::<i64>::try_from(&traj.iter().find(|(n, _)| n == "step").unwrap().1).unwrap();
    assert!(
        steps.iter().all(|&s| s <= t),
        "no snapshot after the divergence: {steps:?}"
    );
    let final_params = Tensor::read_safetensors(outs[4].join("final.safetensors")).unwrap();
    assert!(
        bool::try_from(final_params[0].1.isfinite().all()).unwrap(),
        "a diverged member keeps its last finite parameters"
    );

    // Every other member completed, and its folder is what `linattn train` writes for its
    // config in fast mode: the solo run reads the same device stream.
    for i in 0..4 {
        assert_eq!(outcomes[i].summary.status, Status::Completed);
        let member_cfg = RunFolder::new(&outs[i]).config().unwrap();
        assert_eq!(member_cfg, members[i].config(&cfg));
        let solo_dir = tmp.path().join(format!("solo{i}"));
        let mut c = linattn();
        c.arg("train");
        ok(with_config(c, &outs[i].join("config.yaml"), &[], &solo_dir));
        let (a, b) = (metrics(&outs[i]), metrics(&solo_dir));
        assert_eq!(a.len(), 40);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                rel_f(x.1 as f64, y.1 as f64) < 1e-5 && rel_f(x.2 as f64, y.2 as f64) < 1e-5,
                "member {i}, iteration {}: {x:?} vs {y:?}",
                x.0
            );
        }
        let fa = Tensor::read_safetensors(outs[i].join("final.safetensors")).unwrap();
        let fb = Tensor::read_safetensors(solo_dir.join("final.safetensors")).unwrap();
        assert!(
            rel(&fa[0].1, &fb[0].1) < 1e-5,
            "member {i}: final parameters differ"
        );
    }
}

#[test]
fn a_stopped_ensemble_checkpoints_every_member_and_resuming_one_member_finishes_them_all_byte_identically(
) {
    let tmp = tempdir();
    let cfg = config(&["data.batch=20", "train.iters=30", "train.mode=fast"]);
    let folders = |name: &str| -> Vec<PathBuf> {
        (0..members().len())
            .map(|i| tmp.path().join(name).join(format!("m{i}")))
            .collect()
    };
    let (stopped, whole) = (folders("stopped"), folders("whole"));
    // Ctrl-C before the first step: the signal handler has set the flag.
    let stop = Options {
        stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        ..Options::default()
    };
    for (o, out) in train::train_ensemble(&cfg, &members(), &stopped, &stop)
        .unwrap()
        .iter()
        .zip(&stopped)
    {
        assert_eq!(o.summary.status, Status::Interrupted);
        assert_eq!(o.summary.iters_done, 0);
        assert!(
            matches!(RunFolder::new(out).state(), State::Resumable),
            "{}",
            out.display()
        );
    }
    // Resuming any member resumes the ensemble its checkpoint names.
    let outcomes = train::resume(&stopped[2], &Options::default()).unwrap();
    assert_eq!(outcomes.len(), 4);
    train::train_ensemble(&cfg, &members(), &whole, &Options::default()).unwrap();
    for (a, b) in stopped.iter().zip(&whole) {
        for file in ["metrics.csv", "final.safetensors", "trajectory.safetensors"] {
            assert_eq!(
                std::fs::read(a.join(file)).unwrap(),
                std::fs::read(b.join(file)).unwrap(),
                "{}: {file}",
                a.display()
            );
        }
        assert!(
            !a.join("checkpoint.safetensors").exists(),
            "a finished run keeps no checkpoint"
        );
    }
}

#[test]
fn training_leaves_the_callers_thread_count_alone() {
    tch::set_num_threads(2);
    let tmp = tempdir();
    train::train(
        &config(&["train.mode=fast", "train.iters=3", "data.batch=20"]),
        &tmp.path().join("r"),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        tch::get_num_threads(),
        2,
        "the engine never changes the caller's thread count"
    );
}

fn float64(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.train.mode = linattn::config::Mode::Fast;
    c.train.dtype = linattn::config::Dtype::Float64;
    c
}

#[test]
fn a_float64_ensemble_starts_from_the_float32_init_draws_the_same_data_and_stays_within_1e_4_of_it()
{
    let cfg = config(&["data.batch=200", "train.mode=fast"]);
    let (mut single, mut double) = (
        ensemble(&cfg, &members()),
        ensemble(&float64(&cfg), &members()),
    );
    assert_eq!(double.stepper.flat_params().kind(), tch::Kind::Double);
    assert!(
        single
            .stepper
            .flat_params()
            .to_kind(tch::Kind::Double)
            .equal(&double.stepper.flat_params()),
        "the float32 init, widened"
    );
    for t in 0..30 {
        let (a, b) = (single.step().0, double.step().0);
        for i in 0..members().len() {
            assert!(
                rel_f(a[i], b[i]) < 1e-4,
                "iteration {t}, member {i}: loss {} (float32) against {} (float64)",
                a[i],
                b[i]
            );
        }
    }
    let gap = rel(
        &single.stepper.flat_params().to_kind(tch::Kind::Double),
        &double.stepper.flat_params(),
    );
    assert!(gap < 1e-4, "parameters after 30 steps differ by {gap:e}");
}

#[test]
fn a_batch_whose_loss_overflows_float32_diverges_a_float32_run_but_not_a_float64_run() {
    let cfg = config(&["data.batch=20", "train.mode=fast"]);
    let member = [Member {
        seed: 0,
        optimizer: OptimizerKind::Adam,
        lr: 0.01,
    }];
    // Large prompts: the output of three cubic layers grows like the 27th power of the prompt.
    let eval = linattn::data::eval_batch(&cfg, Device::Cpu);
    let scale = 100.0;
    let huge = Batch {
        z: (&eval.z * scale).unsqueeze(0),
        y_query: (&eval.y_query * scale).unsqueeze(0),
    };
    let loss_of = |c: &Config| {
        let mut ens = ensemble(c, &member);
        let batch = Batch {
            z: huge.z.shallow_clone(),
            y_query: huge.y_query.shallow_clone(),
        }
        .to_kind(c.train.dtype.kind());
        ens.stepper.feed(batch, None);
        let (losses, norms) = ens.step();
        (
            ens.diverged()[0],
            linattn::run::MetricsRow {
                iter: 0,
                train_loss: losses[0],
                grad_norm: norms[0],
            },
        )
    };
    let (single_diverged, single_row) = loss_of(&cfg);
    assert!(
        single_diverged,
        "float32 loss {} should overflow",
        single_row.train_loss
    );
    let (double_diverged, double_row) = loss_of(&float64(&cfg));
    assert!(
        !double_diverged,
        "float64 loss {} is finite",
        double_row.train_loss
    );
    assert!(
        double_row.train_loss > f32::MAX as f64,
        "the batch's loss {} lies beyond float32",
        double_row.train_loss
    );

    // metrics.csv keeps such a value exactly, and a float32 value as float32 writes it.
    let tmp = tempdir();
    let path = tmp.path().join("metrics.csv");
    let rows = [
        double_row,
        linattn::run::MetricsRow {
            iter: 1,
            train_loss: 0.1f32 as f64,
            grad_norm: 3.0e-7f32 as f64,
        },
    ];
    let text = linattn::run::io::metrics_csv(&rows);
    assert!(
        text.ends_with("\n1,0.1,0.0000003\n"),
        "float32 values are written as float32 writes them: {text}"
    );
    std::fs::write(&path, text).unwrap();
    assert_eq!(
        linattn::run::io::read_metrics(&path).unwrap(),
        rows.to_vec()
    );
}

/// One stream per batch, `[U, B, n+1, d+1]`: the eval batch scaled by each factor (NaN poisons
/// it: its loss and gradient are not finite).
fn scaled_streams(eval: &Batch, scales: &[f64]) -> Batch {
    let z: Vec<Tensor> = scales.iter().map(|&s| &eval.z * s).collect();
    let y: Vec<Tensor> = scales.iter().map(|&s| &eval.y_query * s).collect();
    Batch {
        z: Tensor::stack(&z, 0),
        y_query: Tensor::stack(&y, 0),
    }
}

#[test]
fn a_skipped_nonfinite_step_leaves_each_member_as_if_its_batch_had_never_been_drawn() {
    let cfg = config(&["data.batch=50", "train.mode=fast", "train.skip_nonfinite=1"]);
    let eval = linattn::data::eval_batch(&cfg, Device::Cpu);
    let (good, nan) = ([1.0, 0.8, 1.2], f64::NAN);
    let rows = |r: [i64; 4]| Tensor::from_slice(&r);
    // Every member (SGD and Adam) sees the batches good[0], good[1], good[2]; members 2 and 3
    // meet a poisoned batch before good[1], members 0 and 1 before good[2].
    let mut skipped = ensemble(&cfg, &members());
    let plan = [
        (vec![good[0]], [0, 0, 0, 0]),
        (vec![good[1], nan], [0, 0, 1, 1]),
        (vec![good[2], good[1]], [0, 0, 1, 1]),
        (vec![nan, good[2]], [0, 0, 1, 1]),
    ];
    for (t, (scales, r)) in plan.iter().enumerate() {
        skipped
            .stepper
            .feed(scaled_streams(&eval, scales), Some(rows(*r)));
        let finite: Vec<bool> = skipped.step().0.iter().map(|l| l.is_finite()).collect();
        let poisoned: Vec<bool> = r.iter().map(|&i| scales[i as usize].is_nan()).collect();
        assert_eq!(
            finite,
            poisoned.iter().map(|p| !p).collect::<Vec<_>>(),
            "step {t}"
        );
    }
    let mut clean = ensemble(&cfg, &members());
    for s in good {
        clean
            .stepper
            .feed(scaled_streams(&eval, &[s]), Some(rows([0, 0, 0, 0])));
        clean.step();
    }
    let (a, b) = (skipped.stepper.flat_params(), clean.stepper.flat_params());
    assert!(
        a.equal(&b),
        "parameters and optimizer state (momentum, Adam's moments and step count) untouched by the skipped steps: {:e}",
        rel(&a, &b)
    );
    // And the next update, which reads the optimizer state, agrees too.
    for e in [&mut skipped, &mut clean] {
        e.stepper
            .feed(scaled_streams(&eval, &[0.9]), Some(rows([0, 0, 0, 0])));
        e.step();
    }
    assert!(skipped
        .stepper
        .flat_params()
        .equal(&clean.stepper.flat_params()));
}

#[test]
fn a_member_diverges_at_its_nonfinite_step_one_past_skip_nonfinite_in_a_row() {
    let cfg = config(&["data.batch=50", "train.mode=fast", "train.skip_nonfinite=2"]);
    let eval = linattn::data::eval_batch(&cfg, Device::Cpu);
    let member = [Member {
        seed: 0,
        optimizer: OptimizerKind::Adam,
        lr: 0.01,
    }];
    let mut ens = ensemble(&cfg, &member);
    let nan = f64::NAN;
    // Two in a row are skipped, a finite step resets the count, the third in a row diverges.
    for (t, scale) in [nan, nan, 1.0, nan, nan, nan].into_iter().enumerate() {
        let before = ens.stepper.flat_params().copy();
        ens.stepper.feed(scaled_streams(&eval, &[scale]), None);
        ens.step();
        assert_eq!(ens.diverged()[0], t == 5, "after step {t}");
        assert_eq!(
            ens.stepper.flat_params().equal(&before),
            scale.is_nan(),
            "step {t} updates only when finite"
        );
    }
}

#[test]
fn train_with_lrs_trains_one_member_per_rate_each_following_its_solo_run_at_that_rate() {
    let tmp = tempdir();
    let out = tmp.path().join("probe");
    let mut c = linattn();
    c.args([
        "train",
        "--seeds",
        "0,1",
        "--optimizers",
        "sgd,adam",
        "--lrs",
        "0.02,0.005",
    ]);
    let sets: Vec<String> = ["data.batch=100", "train.iters=20"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    ok(with_config(
        c,
        &experiment("settings/setting1_normal_n20.yaml"),
        &sets,
        &out,
    ));
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let want = [
        "adam-lr0.005-seed0",
        "adam-lr0.005-seed1",
        "adam-lr0.02-seed0",
        "adam-lr0.02-seed1",
        "sgd-lr0.005-seed0",
        "sgd-lr0.005-seed1",
        "sgd-lr0.02-seed0",
        "sgd-lr0.02-seed1",
    ];
    assert_eq!(names, want);
    for (name, lr) in [("sgd-lr0.005-seed1", 0.005), ("adam-lr0.02-seed0", 0.02)] {
        let member = out.join(name);
        assert_eq!(
            RunFolder::new(&member).config().unwrap().train.lr,
            lr,
            "{name}"
        );
        let solo = tmp.path().join(format!("solo-{name}"));
        let mut c = linattn();
        c.arg("train");
        ok(with_config(c, &member.join("config.yaml"), &[], &solo));
        for (x, y) in metrics(&member).iter().zip(&metrics(&solo)) {
            assert!(
                rel_f(x.1 as f64, y.1 as f64) < 1e-5,
                "{name}, iteration {}: {x:?} vs {y:?}",
                x.0
            );
        }
    }
    // The two rates are two runs: same seed, same first batch, other trajectories.
    let (a, b) = (
        metrics(&out.join("sgd-lr0.02-seed0")),
        metrics(&out.join("sgd-lr0.005-seed0")),
    );
    assert_eq!(a[0], b[0]);
    assert_ne!(a[19], b[19]);

    let mut c = linattn();
    c.args(["train", "--seeds", "0", "--lrs", "0.01,0"]);
    let o = output(with_config(
        c,
        &experiment("settings/setting1_normal_n20.yaml"),
        &[],
        &tmp.path().join("bad"),
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lrs"));
}

/// The files a finished run's results are read from.
const RESULT_FILES: [&str; 3] = ["metrics.csv", "final.safetensors", "trajectory.safetensors"];

fn assert_same_results(a: &std::path::Path, b: &std::path::Path, what: &str) {
    for file in RESULT_FILES {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{what}: {} differs from {}",
            a.join(file).display(),
            b.join(file).display()
        );
    }
}

/// Trains `members` into `outs`, stopped (as by Ctrl-C) once the first checkpoint after the
/// start is on disk, then resumed through its last member; returns at which iteration it stopped.
fn interrupted_then_resumed(cfg: &Config, members: &[Member], outs: &[PathBuf]) -> i64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = outs[0].join("metrics.csv");
    let flag = stop.clone();
    // The checkpoint every 5 iterations writes metrics.csv: a second line is a row past the
    // start, so the stop lands mid-run.
    let watcher = std::thread::spawn(move || {
        for _ in 0..20_000 {
            let rows = std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count());
            if rows > 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        flag.store(true, Ordering::Relaxed);
    });
    let opts = Options {
        stop,
        checkpoint_every: 5,
        ..Options::default()
    };
    let stopped = train::train_ensemble(cfg, members, outs, &opts).unwrap();
    watcher.join().unwrap();
    let at = stopped[0].summary.iters_done;
    assert!(
        stopped
            .iter()
            .all(|o| o.summary.status == Status::Interrupted),
        "the stop came after the end; {:?}",
        stopped.iter().map(|o| o.summary.status).collect::<Vec<_>>()
    );
    let resumed = train::resume(outs.last().unwrap(), &Options::default()).unwrap();
    assert_eq!(resumed.len(), members.len(), "the whole ensemble resumes");
    at
}

/// Every optimizer, with and without weight decay, first and last in a mixed ensemble whose
/// other member differs in whether it decays: stopped mid-run and resumed, every member's files
/// are byte-identical to an uninterrupted ensemble's. A new optimizer is covered by being a
/// variant of `OptimizerKind`.
#[test]
fn every_optimizer_resumes_in_a_mixed_ensemble_byte_identical_to_an_uninterrupted_one() {
    use clap::ValueEnum;
    let tmp = tempdir();
    let mut case = 0;
    for &o in OptimizerKind::value_variants() {
        let partner = if o.decays() {
            OptimizerKind::Sgd
        } else {
            OptimizerKind::Adamw
        };
        for wd in [0.0, 0.05] {
            let cfg = config(&[
                "data.batch=20",
                "train.iters=400",
                "train.mode=fast",
                &format!("train.weight_decay={wd}"),
                "train.optimizer=adamw",
            ]);
            let me = Member {
                seed: 0,
                optimizer: o,
                lr: 0.01,
            };
            let other = Member {
                seed: 1,
                optimizer: partner,
                lr: 0.01,
            };
            for members in [[me, other], [other, me]] {
                case += 1;
                let outs = |name: &str| -> Vec<PathBuf> {
                    (0..2)
                        .map(|i| tmp.path().join(format!("{case}-{name}-m{i}")))
                        .collect()
                };
                let (stopped, whole) = (outs("stopped"), outs("whole"));
                let at = interrupted_then_resumed(&cfg, &members, &stopped);
                train::train_ensemble(&cfg, &members, &whole, &Options::default()).unwrap();
                let what = format!(
                    "{} and {} (weight decay {wd}), stopped at {at}",
                    members[0].optimizer.name(),
                    members[1].optimizer.name()
                );
                for (a, b) in stopped.iter().zip(&whole) {
                    assert_same_results(a, b, &what);
                }
            }
        }
    }
}

/// Muon's Newton–Schulz runs one matrix at a time, so a member's bfloat16 roundings do not
/// depend on the members beside it: in a 12-member ensemble of four optimizers, each Muon
/// member's files are byte-identical to its solo fast run's.
#[test]
fn a_12_member_ensembles_muon_members_are_byte_identical_to_their_solo_runs() {
    let tmp = tempdir();
    let cfg = config(&["data.batch=20", "train.iters=150", "train.mode=fast"]);
    let kinds = [
        OptimizerKind::Sgd,
        OptimizerKind::Adam,
        OptimizerKind::Lion,
        OptimizerKind::Muon,
    ];
    let members: Vec<Member> = (0..3)
        .flat_map(|seed| {
            kinds.iter().map(move |&optimizer| Member {
                seed,
                optimizer,
                lr: 0.02,
            })
        })
        .collect();
    assert_eq!(members.len(), 12);
    let outs: Vec<PathBuf> = (0..12).map(|i| tmp.path().join(format!("m{i}"))).collect();
    train::train_ensemble(&cfg, &members, &outs, &Options::default()).unwrap();
    let mut checked = 0;
    for (m, out) in members.iter().zip(&outs) {
        if m.optimizer != OptimizerKind::Muon {
            continue;
        }
        let solo = tmp.path().join(format!("solo-seed{}", m.seed));
        train::train(&m.config(&cfg), &solo, &Options::default()).unwrap();
        assert_same_results(out, &solo, &format!("muon seed {}", m.seed));
        checked += 1;
    }
    assert_eq!(checked, 3);
}

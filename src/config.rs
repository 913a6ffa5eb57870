//! The run configuration: one YAML file with `model`, `data` and `train` sections.
//!
//! The paper's symbols, once: `model.layers` is L, `model.heads` is H, `model.dim` is d,
//! `data.context` is n (the number of in-context examples), `data.batch` is B.
//! P and Q are the learned attention matrices; M masks the query token as a key/value.
//!
//! Unknown keys are an error (a typo must never silently fall back to a default), and
//! every value is range-checked in [`Config::validate`] so that bad input is reported as one
//! line naming the key, with exit code 2 (see [`crate::BadInput`]).
use crate::BadInput;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parametrization {
    /// P~ = [[P,0],[0,1]], Q~ = [[Q,0],[0,0]] with P, Q in R^{d×d}: what the paper's figures use.
    Restricted,
    /// P and Q in R^{(d+1)×(d+1)} used as they are.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    Linear,
    Softmax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    Normal,
    Sphere,
    Gamma,
    MlpTeacher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    /// `torch.optim.AdamW`: Adam with decoupled weight decay (`train.weight_decay`).
    Adamw,
    /// Sign descent with heavy-ball momentum on the signs (Kunstner et al., 2023).
    Sign,
    /// Normalized GD with heavy-ball momentum: the gradient over its global l2 norm (Kunstner
    /// et al., 2023).
    Normalized,
    /// Lion (Chen et al., 2023).
    Lion,
    /// Adam-mini (Zhang et al., 2024): one second moment per block.
    #[value(name = "adam_mini")]
    AdamMini,
    /// `torch.optim.Muon` on each P, Q and MLP weight matrix; AdamW on the MLP's biases.
    Muon,
}

impl OptimizerKind {
    /// The name a config file, a run folder and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Adamw => "adamw",
            OptimizerKind::Sign => "sign",
            OptimizerKind::Normalized => "normalized",
            OptimizerKind::Lion => "lion",
            OptimizerKind::AdamMini => "adam_mini",
            OptimizerKind::Muon => "muon",
        }
    }

    /// Whether `train.weight_decay` means something for this optimizer (decoupled, θ ← θ(1 − lr·λ)).
    pub fn decays(self) -> bool {
        matches!(
            self,
            OptimizerKind::Adamw
                | OptimizerKind::Lion
                | OptimizerKind::AdamMini
                | OptimizerKind::Muon
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipMode {
    /// The linear experiments' rule: if ‖g‖ > c then g ← g·c/‖g‖.
    Threshold,
    /// `torch.nn.utils.clip_grad_norm_`: g ← g·min(1, c/(‖g‖+1e-6)); the MLP experiments' rule.
    ClipGradNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Follows the reference protocol op for op: bit-identical to PyTorch on CPU.
    Faithful,
    /// The same model with fewer operations, data drawn on the training device.
    Fast,
}

impl Mode {
    /// The name a config file and `--mode` use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Faithful => "faithful",
            Mode::Fast => "fast",
        }
    }
}

/// The floating-point type a run trains and is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// The authors' float32.
    #[default]
    Float32,
    /// float64 (fast mode only): the same model, data and initialisation (drawn in float32,
    /// then widened), for models whose rare large prompts overflow float32 (L = 8: the output
    /// is a polynomial of degree 3^L in the prompt).
    Float64,
}

impl Dtype {
    pub fn kind(self) -> tch::Kind {
        match self {
            Dtype::Float32 => tch::Kind::Float,
            Dtype::Float64 => tch::Kind::Double,
        }
    }

    /// The name a config and the PyTorch side's `--dtype` use.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Float64 => "float64",
        }
    }

    /// float32 is left out of a written config, so that the configs (and run-folder hashes)
    /// of every float32 run stay what they were before the key existed.
    pub fn is_float32(&self) -> bool {
        *self == Dtype::Float32
    }
}

/// A device as users write it: `cpu`, `cuda` (the first GPU) or `cuda:N`. Written back as it
/// was given, so that a config file round-trips unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceName {
    Cpu,
    /// `cuda` (None) or `cuda:N`.
    Cuda(Option<usize>),
}

impl std::str::FromStr for DeviceName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<DeviceName> {
        match s.trim() {
            "cpu" => Ok(DeviceName::Cpu),
            "cuda" => Ok(DeviceName::Cuda(None)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceName::Cuda(Some(i))),
                _ => anyhow::bail!("unknown device {s:?}; expected cpu, cuda or cuda:N"),
            },
        }
    }
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceName::Cpu => f.write_str("cpu"),
            DeviceName::Cuda(None) => f.write_str("cuda"),
            DeviceName::Cuda(Some(i)) => write!(f, "cuda:{i}"),
        }
    }
}

impl Serialize for DeviceName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<DeviceName, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceName {
    /// The libtorch device, after checking that it exists on this machine.
    pub fn tch(self) -> Result<tch::Device> {
        let index = match self {
            DeviceName::Cpu => return Ok(tch::Device::Cpu),
            DeviceName::Cuda(i) => i.unwrap_or(0),
        };
        let count = tch::Cuda::device_count() as usize;
        if !tch::Cuda::is_available() || count == 0 {
            anyhow::bail!("device {self} asked for, but no CUDA GPU is available on this machine");
        }
        if index >= count {
            anyhow::bail!("device {self} asked for, but this machine has {count} CUDA device(s)");
        }
        Ok(tch::Device::Cuda(index))
    }
}

/// A device for summaries and benchmarks: `cpu (2 threads)` or `cuda:0`.
pub fn describe(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerImpl {
    /// Tensor-op SGD and Adam that follow torch.optim's single-tensor formulas: bit-identical.
    Reference,
    /// tch's built-in libtorch C++ optimizers (`nn::Sgd`, `nn::Adam`). SGD is bit-identical;
    /// the C++ Adam updates its first moment with mul+add instead of lerp and drifts (~1e-4).
    Libtorch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub layers: i64,
    pub heads: i64,
    pub dim: i64,
    pub init_std: f64,
    pub parametrization: Parametrization,
    pub attention: Attention,
    /// Width of the learned ReLU MLP applied to the covariates; 0 disables it.
    pub mlp_hidden: i64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            layers: 3,
            heads: 1,
            dim: 5,
            init_std: 0.05,
            parametrization: Parametrization::Restricted,
            attention: Attention::Linear,
            mlp_hidden: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub setting: Setting,
    pub context: i64,
    pub batch: i64,
    pub gamma_shape: f64,
    pub teacher_hidden: i64,
    pub teacher_seed: u32,
    pub eval_seed: u32,
    /// A fixed training set of this many prompts, drawn once from the run's seed; every step
    /// takes its batch from it (docs/spec.md says how). 0, the paper's protocol: fresh prompts
    /// at every step.
    #[serde(skip_serializing_if = "is_zero")]
    pub train_prompts: i64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            setting: Setting::Normal,
            context: 20,
            batch: 1000,
            gamma_shape: 0.1,
            teacher_hidden: 10,
            teacher_seed: 7,
            eval_seed: 99,
            train_prompts: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub clip: f64,
    pub clip_mode: ClipMode,
    pub mode: Mode,
    pub iters: i64,
    pub seed: u32,
    pub device: DeviceName,
    pub save_every: i64,
    pub optimizer_impl: OptimizerImpl,
    #[serde(skip_serializing_if = "Dtype::is_float32")]
    pub dtype: Dtype,
    /// How many steps in a row whose batch loss or gradient norm is not finite are skipped (no
    /// update, optimizer state untouched, as `torch.amp.GradScaler` skips them) before the run
    /// counts as diverged. 0, the authors' rule: the first one ends the run. Why: in deep models
    /// (Fig. 5) a rare prompt's loss overflows while the model itself is fine.
    #[serde(skip_serializing_if = "is_zero")]
    pub skip_nonfinite: i64,
    /// Decoupled weight decay λ of adamw, lion, adam_mini and muon; 0 (as the authors run).
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub weight_decay: f64,
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::Sgd,
            lr: 0.02,
            momentum: 0.9,
            betas: [0.9, 0.9],
            eps: 1e-8,
            clip: 1.0,
            clip_mode: ClipMode::Threshold,
            mode: Mode::Faithful,
            iters: 10000,
            seed: 0,
            device: DeviceName::Cpu,
            save_every: 1,
            optimizer_impl: OptimizerImpl::Reference,
            dtype: Dtype::Float32,
            skip_nonfinite: 0,
            weight_decay: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
}

use crate::bad_input as bad;

/// A range check: whether it holds, the key it is about, and what to say when it does not.
type Check = (bool, &'static str, String);

/// Applies one `--set section.key=value` override to the YAML tree. The value is parsed as
/// YAML, so `--set train.betas=[0.9,0.99]` and `--set model.attention=softmax` both work.
pub fn apply_override(tree: &mut serde_yaml::Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| {
        bad(format!(
            "--set {assignment:?}: expected section.key=value, e.g. train.lr=0.01"
        ))
    })?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad(format!(
            "--set {assignment:?}: the key must be section.key (e.g. train.lr), got {key:?}"
        )));
    }
    let value: serde_yaml::Value = serde_yaml::from_str(raw).map_err(|e| {
        bad(format!(
            "--set {assignment:?}: the value is not valid YAML: {e}"
        ))
    })?;
    if tree.is_null() {
        *tree = serde_yaml::Value::Mapping(Default::default());
    }
    let root = tree
        .as_mapping_mut()
        .ok_or_else(|| bad("config: the top level must be a mapping".into()))?;
    let section = root
        .entry(parts[0].into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    let section = section.as_mapping_mut().ok_or_else(|| {
        bad(format!(
            "--set {assignment:?}: config key {} is not a section",
            parts[0]
        ))
    })?;
    section.insert(parts[1].into(), value);
    Ok(())
}

/// The keys whose values differ between two configs, as `section.key: old → new`.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (ta, tb) = (
        serde_yaml::to_value(a).expect("a Config always serializes"),
        serde_yaml::to_value(b).expect("a Config always serializes"),
    );
    let mut out = vec![];
    for section in ["model", "data", "train"] {
        let (sa, sb) = (&ta[section], &tb[section]);
        let mut keys: Vec<String> = [sa, sb]
            .iter()
            .filter_map(|s| s.as_mapping())
            .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(String::from)))
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let (va, vb) = (&sa[k.as_str()], &sb[k.as_str()]);
            if va != vb {
                let show = |v: &serde_yaml::Value| {
                    serde_yaml::to_string(v)
                        .unwrap_or_default()
                        .trim()
                        .replace('\n', " ")
                };
                out.push(format!("{section}.{k}: {} → {}", show(va), show(vb)));
            }
        }
    }
    out
}

/// YAML reads a number beyond float64's range, such as `1e400`, as a string, and serde would
/// then say "invalid type: string": name the key and the real reason instead.
fn overflowing_number(v: &serde_yaml::Value, key: &str) -> Result<()> {
    let child = |k: &str| {
        if key.is_empty() {
            k.to_string()
        } else {
            format!("{key}.{k}")
        }
    };
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                overflowing_number(v, &child(k.as_str().unwrap_or("?")))?;
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for v in items {
                overflowing_number(v, key)?;
            }
        }
        serde_yaml::Value::String(s) => {
            let looks_numeric = s
                .trim_start_matches(['+', '-'])
                .starts_with(|c: char| c.is_ascii_digit() || c == '.');
            if looks_numeric && s.parse::<f64>().is_ok_and(f64::is_infinite) {
                return Err(bad(format!(
                    "config key {key}: {s} is beyond the range of a float64 (about 1.8e308)"
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

fn yaml_tree(text: &str) -> Result<serde_yaml::Value> {
    serde_yaml::from_str(text).map_err(|e| bad(format!("not valid YAML: {e}")))
}

/// The config of a YAML tree (overrides applied), each error naming its key.
fn from_tree(mut tree: serde_yaml::Value) -> Result<Config> {
    if tree.is_null() {
        tree = serde_yaml::Value::Mapping(Default::default());
    }
    overflowing_number(&tree, "")?;
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        bad(format!("config key {path}: {}", e.into_inner()))
    })
}

/// A bad-input error about the file's contents, prefixed with the file.
pub fn in_file(path: &Path, e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<BadInput>() {
        Ok(BadInput(m)) => bad(format!("{}: {m}", path.display())),
        Err(e) => e,
    }
}

impl Config {
    /// Reads a YAML config, applies `--set` overrides in order, and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let cfg = Self::read(path, overrides)?;
        cfg.validate().map_err(|e| in_file(path, e))?;
        Ok(cfg)
    }

    /// [`Config::load`] without the range checks, for a caller that sets typed values before
    /// it validates (reproduce's figures: the checks that depend on the mode must see the mode
    /// the runs will have).
    pub fn read(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("config file {}: {e}", path.display())))?;
        let mut tree = yaml_tree(&text).map_err(|e| in_file(path, e))?;
        // An empty file is more likely a wrong path or a failed write than a wish for 10 000
        // iterations of the defaults; `--set` keys say what is meant.
        if tree.is_null() && overrides.is_empty() {
            return Err(bad(format!(
                "config file {}: holds no keys (empty or comments only); write the keys to change, or `train: {{}}` for the defaults",
                path.display()
            )));
        }
        // --set problems are about the command line, not the file: not prefixed with it.
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        from_tree(tree).map_err(|e| in_file(path, e))
    }

    pub fn from_yaml_str(text: &str, overrides: &[String]) -> Result<Config> {
        let mut tree = yaml_tree(text)?;
        for o in overrides {
            apply_override(&mut tree, o)?;
        }
        let cfg = from_tree(tree)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The run's libtorch device; bad input naming the key when this machine lacks it.
    pub fn device(&self) -> Result<tch::Device> {
        self.train
            .device
            .tch()
            .map_err(|e| bad(format!("config key train.device: {e}")))
    }

    /// Range checks, each naming the key it is about.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            self.model_checks(),
            self.data_checks(),
            self.train_checks(),
            self.float32_checks(),
            self.size_checks(),
        ];
        for (ok, key, msg) in checks.into_iter().flatten() {
            if !ok {
                return Err(bad(format!("config key {key}: {msg}")));
            }
        }
        // Whether `train.device` exists is asked where a command uses it, not here: a run
        // folder trained on a GPU node must stay readable on a CPU node.
        Ok(())
    }

    fn model_checks(&self) -> Vec<Check> {
        let m = &self.model;
        vec![
            (
                m.layers >= 1,
                "model.layers",
                format!("must be >= 1, got {}", m.layers),
            ),
            (
                m.heads >= 1,
                "model.heads",
                format!("must be >= 1, got {}", m.heads),
            ),
            (
                m.dim >= 1,
                "model.dim",
                format!("must be >= 1, got {}", m.dim),
            ),
            (
                m.init_std >= 0.0 && m.init_std.is_finite(),
                "model.init_std",
                format!("must be >= 0, got {}", m.init_std),
            ),
            (
                m.mlp_hidden >= 0,
                "model.mlp_hidden",
                format!("must be >= 0, got {}", m.mlp_hidden),
            ),
        ]
    }

    fn data_checks(&self) -> Vec<Check> {
        let d = &self.data;
        vec![
            (
                d.context >= 1,
                "data.context",
                format!("must be >= 1, got {}", d.context),
            ),
            (
                d.batch >= 1,
                "data.batch",
                format!("must be >= 1, got {}", d.batch),
            ),
            (
                d.gamma_shape > 0.0 && d.gamma_shape.is_finite(),
                "data.gamma_shape",
                format!("must be > 0, got {}", d.gamma_shape),
            ),
            (
                d.teacher_hidden >= 1,
                "data.teacher_hidden",
                format!("must be >= 1, got {}", d.teacher_hidden),
            ),
            (
                d.train_prompts == 0 || d.train_prompts >= d.batch,
                "data.train_prompts",
                format!(
                    "must be 0 (fresh prompts every step) or at least data.batch = {}, got {}",
                    d.batch, d.train_prompts
                ),
            ),
        ]
    }

    fn train_checks(&self) -> Vec<Check> {
        let t = &self.train;
        vec![
            (
                t.lr > 0.0 && t.lr.is_finite(),
                "train.lr",
                format!("must be > 0, got {}", t.lr),
            ),
            (
                (0.0..1.0).contains(&t.momentum),
                "train.momentum",
                format!("must be in [0, 1), got {}", t.momentum),
            ),
            (
                (0.0..1.0).contains(&t.betas[0]),
                "train.betas",
                format!("each beta must be in [0, 1), got {}", t.betas[0]),
            ),
            (
                (0.0..1.0).contains(&t.betas[1]),
                "train.betas",
                format!("each beta must be in [0, 1), got {}", t.betas[1]),
            ),
            (
                t.eps > 0.0 && t.eps.is_finite(),
                "train.eps",
                format!("must be > 0, got {}", t.eps),
            ),
            (
                t.clip >= 0.0 && t.clip.is_finite(),
                "train.clip",
                format!(
                    "must be a finite number >= 0 (0 disables clipping), got {}",
                    t.clip
                ),
            ),
            (
                t.iters >= 1,
                "train.iters",
                format!("must be >= 1, got {}", t.iters),
            ),
            (
                t.save_every >= 1,
                "train.save_every",
                format!("must be >= 1, got {}", t.save_every),
            ),
            (
                t.skip_nonfinite >= 0,
                "train.skip_nonfinite",
                format!(
                    "must be >= 0 (0: the first non-finite step diverges), got {}",
                    t.skip_nonfinite
                ),
            ),
            (
                t.weight_decay >= 0.0 && t.weight_decay.is_finite(),
                "train.weight_decay",
                format!("must be >= 0, got {}", t.weight_decay),
            ),
            (
                t.weight_decay == 0.0 || t.optimizer.decays(),
                "train.weight_decay",
                format!(
                    "applies to adamw, lion, adam_mini and muon only, not {}",
                    t.optimizer.name()
                ),
            ),
        ]
    }

    /// A float32 run holds its hyper-parameters as float32 scalars: beyond float32's range
    /// libtorch overflows, and a positive eps below its smallest subnormal is 0.
    fn float32_checks(&self) -> Vec<Check> {
        let t = &self.train;
        let f32_range = |x: f64, key: &'static str| -> Check {
            (
                t.dtype != Dtype::Float32 || (x as f32).is_finite(),
                key,
                format!(
                    "{x:e} is beyond float32's range (at most {:e}); the run is float32 (train.dtype)",
                    f32::MAX
                ),
            )
        };
        vec![
            f32_range(t.lr, "train.lr"),
            f32_range(t.clip, "train.clip"),
            f32_range(t.weight_decay, "train.weight_decay"),
            (
                t.dtype != Dtype::Float32 || (t.eps as f32) > 0.0,
                "train.eps",
                format!(
                    "{:e} is 0 in float32 (the smallest is {:e}); the run is float32 (train.dtype)",
                    t.eps,
                    f32::from_bits(1)
                ),
            ),
        ]
    }

    /// What cannot fit, and combinations the modes do not support.
    fn size_checks(&self) -> Vec<Check> {
        let (m, d, t) = (&self.model, &self.data, &self.train);
        let mut checks = vec![];
        // One layer holds B×(n+1)×(n+1) attention scores; refuse what cannot fit in memory
        // before libtorch fails to allocate it.
        let scores =
            (d.batch as f64) * (d.context as f64 + 1.0) * (d.context.max(m.dim) as f64 + 1.0);
        checks.push((
            scores <= 4e9,
            "data.batch",
            format!(
                "batch {} × context {} is too large for one step ({:.0} GB per layer)",
                d.batch,
                d.context,
                scores * 4.0 / 1e9
            ),
        ));
        checks.push((
            (m.layers as f64) * (m.heads as f64) * (m.dim as f64 + 1.0).powi(2) <= 1e9,
            "model.layers",
            "layers × heads × (dim+1)² is too large".into(),
        ));
        checks.push((
            t.dtype == Dtype::Float32 || t.mode == Mode::Fast,
            "train.dtype",
            "float64 needs train.mode: fast (for reproduce: --mode fast); the faithful mode is the authors' float32, op for op".into(),
        ));
        checks.push((
            t.optimizer_impl == OptimizerImpl::Reference
                || matches!(t.optimizer, OptimizerKind::Sgd | OptimizerKind::Adam),
            "train.optimizer_impl",
            format!(
                "libtorch has SGD and Adam only; {} needs optimizer_impl: reference",
                t.optimizer.name()
            ),
        ));
        checks.push((
            m.mlp_hidden == 0 || m.parametrization == Parametrization::Full,
            "model.parametrization",
            "the MLP variant (model.mlp_hidden > 0) uses the full parametrization; set model.parametrization: full".into(),
        ));
        checks
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a Config always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<Config>) -> String {
        let e = r.unwrap_err();
        assert!(
            e.downcast_ref::<BadInput>().is_some(),
            "not a BadInput: {e:#}"
        );
        e.to_string()
    }

    #[test]
    fn empty_yaml_gives_the_spec_defaults() {
        let c = Config::from_yaml_str("", &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.model.layers, 3);
        assert_eq!(c.data.context, 20);
        assert_eq!(c.train.betas, [0.9, 0.9]);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let m = msg(Config::from_yaml_str("model: {layerz: 3}", &[]));
        assert!(m.contains("model") && m.contains("layerz"), "{m}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let m = msg(Config::from_yaml_str("model: {layers: three}", &[]));
        assert!(m.contains("model.layers"), "{m}");
    }

    #[test]
    fn set_overrides_parse_yaml_values() {
        let c = Config::from_yaml_str(
            "train: {lr: 0.1}",
            &[
                "train.lr=0.5".into(),
                "train.betas=[0.8, 0.99]".into(),
                "data.setting=gamma".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.lr, 0.5);
        assert_eq!(c.train.betas, [0.8, 0.99]);
        assert_eq!(c.data.setting, Setting::Gamma);
    }

    #[test]
    fn malformed_set_is_bad_input() {
        assert!(msg(Config::from_yaml_str("", &["train.lr".into()])).contains("section.key=value"));
        assert!(msg(Config::from_yaml_str("", &["lr=3".into()])).contains("section.key"));
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        for (set, key) in [
            ("train.lr=-1", "train.lr"),
            ("data.context=0", "data.context"),
            ("train.betas=[1.0, 0.9]", "train.betas"),
            ("data.gamma_shape=0", "data.gamma_shape"),
            ("train.save_every=0", "train.save_every"),
            ("model.mlp_hidden=30", "model.parametrization"),
            ("train.dtype=float64", "train.dtype"), // float64 is fast mode's only
            ("train.skip_nonfinite=-1", "train.skip_nonfinite"),
        ] {
            let m = msg(Config::from_yaml_str("", &[set.into()]));
            assert!(m.contains(key), "{set}: {m}");
        }
    }

    #[test]
    fn a_number_beyond_float64_names_its_key_and_the_range() {
        let m = msg(Config::from_yaml_str("train: {lr: 1e400}", &[]));
        assert!(m.contains("train.lr") && m.contains("range"), "{m}");
        let m = msg(Config::from_yaml_str(
            "",
            &["train.betas=[0.9, 1e999]".into()],
        ));
        assert!(m.contains("train.betas") && m.contains("range"), "{m}");
    }

    #[test]
    fn an_empty_config_file_is_refused_unless_set_gives_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "# nothing here\n").unwrap();
        let m = msg(Config::load(&path, &[]));
        assert!(m.contains("holds no keys"), "{m}");
        assert_eq!(
            Config::load(&path, &["train.iters=5".into()])
                .unwrap()
                .train
                .iters,
            5
        );
        std::fs::write(&path, "train: {}\n").unwrap();
        assert_eq!(Config::load(&path, &[]).unwrap(), Config::default());
    }

    #[test]
    fn resolved_config_round_trips_through_yaml() {
        let c = Config::from_yaml_str("", &["model.attention=softmax".into()]).unwrap();
        assert_eq!(Config::from_yaml_str(&c.to_yaml(), &[]).unwrap(), c);
    }
}

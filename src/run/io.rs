//! How linattn's files are written and read: every output goes to a temporary file in the same
//! folder and is then renamed, so a reader (or a crash) never sees half a file; floats in CSV
//! files read back to exactly the value computed; tensors are safetensors under PyTorch names.
use crate::BadInput;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use tch::Tensor;

/// Runs `write` on a temporary file beside `path` (same folder, same extension, since some
/// writers pick the format from it), then renames it onto `path`. The temporary file is
/// removed if anything fails.
pub fn write_via_temp(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let result = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(&format!(".tmp{ext}"))
        .tempfile_in(dir)
        .map_err(anyhow::Error::from)
        .and_then(|tmp| {
            // tempfile creates 0600 files; results are meant to be shared like any output.
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))?;
            write(tmp.path())?;
            tmp.persist(path)
                .map_err(|e| anyhow!("renaming onto {}: {}", path.display(), e.error))?;
            Ok(())
        });
    result.with_context(|| format!("writing {}", path.display()))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })
}

/// Floats in CSV files: the shortest decimal that reads back to the same float32 value, in
/// positional notation (Rust's `{}`), so that runs can be diffed exactly.
pub fn fmt_f32(v: f32) -> String {
    format!("{v}")
}

pub fn write_safetensors(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let refs: Vec<(&str, Tensor)> = named
        .iter()
        .map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    write_via_temp(path, |tmp| Ok(Tensor::write_safetensors(&refs, tmp)?))
}

/// The tensor of a checked file ([`write_checked_safetensors`]) that holds its checksum.
const CHECKSUM: &str = "checksum";

/// SHA-256 over every tensor but the checksum, in name order: each one's name, kind, shape
/// and bytes.
fn checksum(named: &[(String, Tensor)]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&(String, Tensor)> = named.iter().filter(|(n, _)| n != CHECKSUM).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, t) in sorted {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update(format!("{:?}", t.kind()).as_bytes());
        for dim in t.size() {
            h.update(dim.to_le_bytes());
        }
        let n = t.numel();
        let mut bytes = vec![0u8; n * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut bytes, n);
        h.update(&bytes);
    }
    h.finalize().to_vec()
}

/// A safetensors file that carries a checksum of its own tensors, so that damage to it (a disk
/// error, a copy cut short, a stray write) is found when it is read, not carried into results.
pub fn write_checked_safetensors(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let mut all: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    all.push((CHECKSUM.into(), Tensor::from_slice(&checksum(named))));
    write_safetensors(path, &all)
}

/// Reads a file written by [`write_checked_safetensors`]; bad input naming the file when its
/// contents do not match its checksum. (A file without one, from a linattn before checksums,
/// is read as it is.)
pub fn read_checked_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut named = read_safetensors(path)?;
    let Some(i) = named.iter().position(|(n, _)| n == CHECKSUM) else {
        return Ok(named);
    };
    let (_, stored) = named.remove(i);
    let stored = Vec::<u8>::try_from(&stored).unwrap_or_default();
    if stored != checksum(&named) {
        return Err(anyhow!(BadInput(format!(
            "{}: damaged: its contents do not match the checksum written with them",
            path.display()
        ))));
    }
    Ok(named)
}

/// The SHA-256 of `bytes` in hex, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of the file at `path`, in hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// 64-bit FNV-1a: stable across Rust versions and platforms, unlike `DefaultHasher` (for
/// names, not for integrity).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Reads a safetensors file; a missing or damaged file is bad input naming the file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(anyhow!(BadInput(format!(
            "{}: no such file",
            path.display()
        ))));
    }
    Tensor::read_safetensors(path).map_err(|e| {
        anyhow!(BadInput(format!(
            "{}: not a readable safetensors file ({e})",
            path.display()
        )))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A process is training the run. A file that says so while no process holds the folder's
    /// lock (the process was killed without a word: SIGKILL, the out-of-memory killer) reads as
    /// [`Status::Interrupted`] (`RunFolder::summary`).
    Running,
    Completed,
    Diverged,
    /// Stopped by Ctrl-C or SIGTERM after writing a checkpoint; `train --resume` continues it.
    Interrupted,
    /// Stopped by an error (a full disk, a failed allocation), said on stderr; `train --resume`
    /// continues from the last checkpoint once the cause is fixed.
    Failed,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub status: Status,
    /// The iteration whose loss or gradient was not finite.
    pub diverged_at: Option<i64>,
    pub iters_done: i64,
    pub wall_time_s: f64,
    pub device: String,
    pub side: String,
    /// File name → SHA-256 of the files the run wrote and that are read back (metrics,
    /// trajectory, final parameters, measurements), so that a damaged one is found when it is
    /// read rather than carried into a figure. Absent in a running run's summary, in the PyTorch
    /// side's and in those of a linattn before checksums.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sha256: std::collections::BTreeMap<String, String>,
}

impl Summary {
    /// The summary of a run of this program (side "rust") on `device`.
    pub fn of_rust(
        status: Status,
        diverged_at: Option<i64>,
        iters_done: i64,
        wall_time_s: f64,
        device: tch::Device,
    ) -> Summary {
        Summary {
            status,
            diverged_at,
            iters_done,
            wall_time_s,
            device: crate::config::describe(device),
            side: "rust".into(),
            sha256: Default::default(),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        write_atomic(path, text.as_bytes())
    }

    pub fn read(path: &Path) -> Result<Summary> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!(BadInput(format!("{}: {e}", path.display()))))?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow!(BadInput(format!(
                "{}: not a linattn summary ({e})",
                path.display()
            )))
        })
    }
}

/// One row of `metrics.csv`: float32 values for a float32 run (every run but a fast
/// `train.dtype: float64` one), held exactly in an f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsRow {
    pub iter: i64,
    pub train_loss: f64,
    pub grad_norm: f64,
}

impl MetricsRow {
    /// Whether the step could update: its loss and gradient norm are finite.
    pub fn is_finite(&self) -> bool {
        self.train_loss.is_finite() && self.grad_norm.is_finite()
    }
}

/// How a run's non-finite steps split: `(skipped, trailing)`. The `trailing` non-finite rows end
/// the metrics (a diverged run ends with `train.skip_nonfinite` + 1 of them); the others were
/// skipped (no update) and the run went on. A diverged run's last row is not a skipped step.
pub fn nonfinite_steps(rows: &[MetricsRow], diverged: bool) -> (usize, usize) {
    let trailing = rows.iter().rev().take_while(|r| !r.is_finite()).count();
    let all = rows.iter().filter(|r| !r.is_finite()).count();
    (all - usize::from(diverged && trailing > 0), trailing)
}

/// A metric as written: a float32 value (as every float32 run's are) as the shortest decimal
/// that reads back to it as float32; any other value as the shortest that reads back as f64.
pub fn fmt_metric(v: f64) -> String {
    if !v.is_finite() || (v as f32) as f64 == v {
        fmt_f32(v as f32)
    } else {
        format!("{v}")
    }
}

/// The inverse of [`fmt_metric`]: a field that is some float32's shortest decimal is that
/// float32 (a float64 run's value has more digits than that, all but always).
pub fn parse_metric(s: &str) -> Result<f64, std::num::ParseFloatError> {
    let single: f32 = s.parse()?;
    if fmt_f32(single) == s {
        Ok(single as f64)
    } else {
        s.parse()
    }
}

/// A metric field of a CSV file, written by [`fmt_metric`] and read by [`parse_metric`], so
/// that a float32 value reads back as the float32 it was. In an `Option`, an empty field is
/// `None` (a quantity not measured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric(pub f64);

impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&fmt_metric(self.0))
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Metric, D::Error> {
        let s = String::deserialize(d)?;
        parse_metric(&s)
            .map(Metric)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

pub const METRICS_HEADER: &str = "iter,train_loss,grad_norm";

pub fn metrics_csv(rows: &[MetricsRow]) -> String {
    let mut s = String::with_capacity(32 * (rows.len() + 1));
    s.push_str(METRICS_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&format!(
            "{},{},{}\n",
            r.iter,
            fmt_metric(r.train_loss),
            fmt_metric(r.grad_norm)
        ));
    }
    s
}

pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| anyhow!(BadInput(format!("{}: {e}", path.display()))))?;
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.with_context(|| format!("{} line {}", path.display(), i + 2))?;
        let field = |k: usize| -> Result<&str> {
            rec.get(k).ok_or_else(|| {
                anyhow!(BadInput(format!(
                    "{} line {}: missing field {k}",
                    path.display(),
                    i + 2
                )))
            })
        };
        let parse_err = |e: &dyn std::fmt::Display| {
            anyhow!(BadInput(format!("{} line {}: {e}", path.display(), i + 2)))
        };
        rows.push(MetricsRow {
            iter: field(0)?.parse().map_err(|e| parse_err(&e))?,
            train_loss: parse_metric(field(1)?).map_err(|e| parse_err(&e))?,
            grad_norm: parse_metric(field(2)?).map_err(|e| parse_err(&e))?,
        });
    }
    Ok(rows)
}

/// The trajectory file: per parameter `[S, *shape]` (already stacked), plus the int64 `step`
/// tensor naming the saved steps.
pub fn write_trajectory_stacked(
    path: &Path,
    names: &[String],
    steps: &[i64],
    stacked: &[Tensor],
) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = names
        .iter()
        .cloned()
        .zip(stacked.iter().map(|t| t.shallow_clone()))
        .collect();
    named.push(("step".to_string(), Tensor::from_slice(steps)));
    write_safetensors(path, &named)
}

/// A trajectory as read back: the saved steps and, per step, the parameters in
/// `state_dict` order.
pub struct Trajectory {
    pub steps: Vec<i64>,
    pub params: Vec<(String, Tensor)>,
}

impl Trajectory {
    pub fn read(path: &Path, names: &[String]) -> Result<Trajectory> {
        let named = read_safetensors(path)?;
        let get = |name: &str| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| {
                    anyhow!(BadInput(format!(
                        "{}: has no tensor {name:?}",
                        path.display()
                    )))
                })
        };
        let step = get("step")?;
        let steps: Vec<i64> = Vec::<i64>::try_from(&step.to_kind(tch::Kind::Int64))?;
        let mut params = Vec::new();
        for n in names {
            let t = get(n)?;
            if t.size().first() != Some(&(steps.len() as i64)) {
                return Err(anyhow!(BadInput(format!(
                    "{}: tensor {n:?} has {:?} saved steps but `step` names {}",
                    path.display(),
                    t.size().first(),
                    steps.len()
                ))));
            }
            params.push((n.clone(), t));
        }
        Ok(Trajectory { steps, params })
    }

    /// The parameters saved at `step`, if it was saved.
    pub fn at(&self, step: i64) -> Option<Vec<Tensor>> {
        let i = self.steps.iter().position(|&s| s == step)? as i64;
        Some(self.params.iter().map(|(_, t)| t.get(i)).collect())
    }
}

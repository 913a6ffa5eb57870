//! The files of a noise measurement's folder (`linattn noise --out DIR`, reproduce's
//! `noise-seed…` folders), owned here and nowhere else.
//!
//! ```text
//! noise.csv           `noise`, then ‖g_B − g‖ per batch in the stream's order (float32)
//! noise.json          the summary ([`NoiseSummary`]); written last, it marks the folder done
//! noise.png           the density histogram with a normal Q-Q inset
//! noise.partial.csv   while measuring: a key line (what the values depend on), `noise`, the
//!                     values so far; removed once noise.json is written
//! .linattn.lock       an flock held by the process that measures
//! ```
use super::io::{fmt_f32, write_atomic};
use crate::BadInput;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const NOISE_CSV: &str = "noise.csv";
pub const NOISE_JSON: &str = "noise.json";
pub const NOISE_PNG: &str = "noise.png";
/// The values measured so far while a measurement runs, so that a killed one resumes where it
/// stopped: g is computed again (about 1% of the work at the paper's sizes) and the stream
/// skips the batches already measured, so the result is bit-identical to an unbroken run.
pub const NOISE_PARTIAL: &str = "noise.partial.csv";

/// `noise.json`: summary statistics of the `samples` noise norms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseSummary {
    pub count: usize,
    pub batch: i64,
    pub full_batch: i64,
    pub seed: u32,
    #[serde(deserialize_with = "f64_or_nan")]
    pub mean: f64,
    /// Population standard deviation (divides by count).
    #[serde(deserialize_with = "f64_or_nan")]
    pub std: f64,
    /// Level ("0", "0.01", …, "1") → value; linear interpolation between order statistics
    /// (numpy's default).
    pub quantiles: BTreeMap<String, f64>,
    /// Pearson's kurtosis m4/m2², 3 for a normal distribution.
    #[serde(deserialize_with = "f64_or_nan")]
    pub kurtosis: f64,
    /// `kurtosis − 3`.
    #[serde(deserialize_with = "f64_or_nan")]
    pub excess_kurtosis: f64,
    /// Hill's estimate of the tail index α from the `hill_k` largest values (smaller α =
    /// heavier tail; a normal tail gives a large α that grows with the sample).
    #[serde(deserialize_with = "f64_or_nan")]
    pub hill_tail_index: f64,
    /// k = ⌊count/10⌋, the top 10 % of the sample (at least 1; at most count−1).
    pub hill_k: usize,
    /// Seconds of the invocation that finished the measurement (a resumed one counts its own).
    pub wall_time_s: f64,
}

/// serde_json writes NaN (an estimate of too small a sample) as null; read it back as NaN.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn csv_of(header: &str, values: &[f32]) -> String {
    let mut csv = String::with_capacity(header.len() + 12 * (values.len() + 1));
    csv.push_str(header);
    for v in values {
        csv.push_str(&fmt_f32(*v));
        csv.push('\n');
    }
    csv
}

/// A noise measurement's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseFolder {
    dir: PathBuf,
}

impl NoiseFolder {
    pub fn new(dir: impl Into<PathBuf>) -> NoiseFolder {
        NoiseFolder { dir: dir.into() }
    }

    pub fn values_path(&self) -> PathBuf {
        self.dir.join(NOISE_CSV)
    }

    pub fn png_path(&self) -> PathBuf {
        self.dir.join(NOISE_PNG)
    }

    /// The values and their summary; None when the folder holds no finished measurement.
    pub fn read(&self) -> Result<Option<(Vec<f64>, NoiseSummary)>> {
        let json = self.dir.join(NOISE_JSON);
        if !json.exists() {
            return Ok(None);
        }
        let summary: NoiseSummary = serde_json::from_str(&std::fs::read_to_string(&json)?)
            .with_context(|| format!("reading {}", json.display()))?;
        let csv = self.values_path();
        let text =
            std::fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
        let values = text
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .collect();
        Ok(Some((values, summary)))
    }

    /// The values of a partial file written under `key`; none when there is no such file or it
    /// was written under another key (then the measurement starts over and says so).
    pub fn read_partial(&self, key: &str) -> Result<Vec<f32>> {
        let path = self.dir.join(NOISE_PARTIAL);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut lines = text.lines();
        if lines.next() != Some(key) || lines.next() != Some("noise") {
            eprintln!(
                "noise: {} was written for another config; starting over",
                path.display()
            );
            return Ok(vec![]);
        }
        lines
            .map(|l| {
                l.parse::<f32>().map_err(|e| {
                    anyhow!(BadInput(format!(
                        "{}: bad value {l:?} ({e})",
                        path.display()
                    )))
                })
            })
            .collect()
    }

    /// The values so far, under `key` (a line that says what they depend on).
    pub fn write_partial(&self, key: &str, values: &[f32]) -> Result<()> {
        write_atomic(
            &self.dir.join(NOISE_PARTIAL),
            csv_of(&format!("{key}\nnoise\n"), values).as_bytes(),
        )
    }

    /// `noise.csv`, then `noise.json`, which marks the measurement done.
    pub fn write_finished(&self, values: &[f32], summary: &NoiseSummary) -> Result<()> {
        write_atomic(&self.values_path(), csv_of("noise\n", values).as_bytes())?;
        let json = serde_json::to_string_pretty(summary)? + "\n";
        write_atomic(&self.dir.join(NOISE_JSON), json.as_bytes())
    }

    /// Removes the partial values (once the measurement is done).
    pub fn remove_partial(&self) -> Result<()> {
        let path = self.dir.join(NOISE_PARTIAL);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Removes a measurement, finished or partial (`noise --force`).
    pub fn clear(&self) {
        for name in [NOISE_CSV, NOISE_JSON, NOISE_PNG, NOISE_PARTIAL] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
    }
}

/// The noise of the folder `dir`; see [`NoiseFolder::read`].
pub fn read(dir: &Path) -> Result<Option<(Vec<f64>, NoiseSummary)>> {
    NoiseFolder::new(dir).read()
}

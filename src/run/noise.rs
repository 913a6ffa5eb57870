//! The files of a noise measurement's folder (`linattn noise --out DIR`, reproduce's
//! `noise-seed…` folders), owned here and nowhere else.
//!
//! ```text
//! noise.csv           `noise`, then ‖g_B − g‖ per batch in the stream's order (float32)
//! noise.json          the summary ([`NoiseSummary`]); written last, it marks the folder done
//! noise.png           the density histogram with a normal Q-Q inset
//! noise.partial.csv   while measuring: a key line (what the values depend on), the SHA-256
//!                     of the rest, `noise`, the values so far; removed once noise.json is
//!                     written
//! .linattn.lock       an flock held by the process that measures
//! ```
use super::io::{fmt_f32, sha256_hex, write_atomic};
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
    /// The SHA-256 of `noise.csv`, so that a damaged file is found when it is read (absent in
    /// files of a linattn before checksums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// serde_json writes NaN (an estimate of too small a sample) as null; read it back as NaN.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A line of `noise.csv` (and of `noise.partial.csv` after its key line): one value, float32
/// as written ([`F32`]); read as f64 from the decimal for the figures, as f32 to resume.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<V> {
    noise: V,
}

/// A float32 value written as [`fmt_f32`] writes it (csv's own float format differs).
struct F32(f32);

impl Serialize for F32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&fmt_f32(self.0))
    }
}

/// `head` (whole lines, the header `noise` last), then one line per value.
fn csv_of(head: &str, values: &[f32]) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(head.as_bytes().to_vec());
    for &v in values {
        w.serialize(Line { noise: F32(v) })?;
    }
    w.into_inner().map_err(|e| anyhow!("{NOISE_CSV}: {e}"))
}

/// The values of `text` (the header `noise`, then a value per line); bad input naming `path`
/// and the line when one is not a value. `skipped` lines of the file come before `text`.
fn values_of<V: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
    skipped: usize,
) -> Result<Vec<V>> {
    csv::Reader::from_reader(text.as_bytes())
        .deserialize::<Line<V>>()
        .enumerate()
        .map(|(i, line)| {
            line.map(|l| l.noise).map_err(|e| {
                anyhow!(BadInput(format!(
                    "{} line {}: not a noise value ({e}); remove it to measure again",
                    path.display(),
                    skipped + i + 2
                )))
            })
        })
        .collect()
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
        if summary
            .sha256
            .as_ref()
            .is_some_and(|want| *want != sha256_hex(text.as_bytes()))
        {
            return Err(anyhow!(BadInput(format!(
                "{}: damaged: its contents do not match the SHA-256 in {NOISE_JSON}; measure again (noise --force, or remove the folder and reproduce)",
                csv.display()
            ))));
        }
        // f64 from the decimal, as the figures have always read them.
        let values: Vec<f64> = values_of(&text, &csv, 0)?;
        if values.len() != summary.count {
            return Err(anyhow!(BadInput(format!(
                "{}: {} values where {NOISE_JSON} says {}; remove the folder to measure again",
                csv.display(),
                values.len(),
                summary.count
            ))));
        }
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
        // The key line, the checksum line, then the values as noise.csv holds them.
        let mut parts = text.splitn(3, '\n');
        let (first, sum, body) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
        if first != Some(key) || !body.starts_with("noise\n") {
            eprintln!(
                "noise: {} was written for another config; starting over",
                path.display()
            );
            return Ok(vec![]);
        }
        if sum != Some(&format!("sha256 {}", sha256_hex(body.as_bytes()))) {
            // Work, not a result: measured again rather than refused.
            eprintln!(
                "noise: {} does not match its SHA-256 (damaged); starting over",
                path.display()
            );
            return Ok(vec![]);
        }
        values_of(body, &path, 2)
    }

    /// The values so far, under `key` (a line that says what they depend on).
    pub fn write_partial(&self, key: &str, values: &[f32]) -> Result<()> {
        let body = csv_of("noise\n", values)?;
        let mut file = format!("{key}\nsha256 {}\n", sha256_hex(&body)).into_bytes();
        file.extend(body);
        write_atomic(&self.dir.join(NOISE_PARTIAL), &file)
    }

    /// `noise.csv`, then `noise.json`, which marks the measurement done.
    pub fn write_finished(&self, values: &[f32], summary: &NoiseSummary) -> Result<()> {
        let csv = csv_of("noise\n", values)?;
        write_atomic(&self.values_path(), &csv)?;
        let summary = NoiseSummary {
            sha256: Some(sha256_hex(&csv)),
            ..summary.clone()
        };
        let json = serde_json::to_string_pretty(&summary)? + "\n";
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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(count: usize) -> NoiseSummary {
        NoiseSummary {
            count,
            batch: 10,
            full_batch: 100,
            seed: 1,
            mean: 1.0,
            std: 0.0,
            quantiles: BTreeMap::new(),
            kurtosis: f64::NAN,
            excess_kurtosis: f64::NAN,
            hill_tail_index: f64::NAN,
            hill_k: 1,
            wall_time_s: 0.0,
            sha256: None,
        }
    }

    #[test]
    fn noise_values_read_back_as_written_and_a_flipped_digit_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let f = NoiseFolder::new(dir.path());
        let values = [0.5f32, 1.25, 3.0e-7, 7.0];
        f.write_finished(&values, &summary(values.len())).unwrap();
        let (read, s) = f.read().unwrap().unwrap();
        assert_eq!(read, vec![0.5, 1.25, 3.0e-7, 7.0]);
        assert!(s.sha256.is_some());

        let text = std::fs::read_to_string(f.values_path()).unwrap();
        std::fs::write(f.values_path(), text.replace("1.25", "1.35")).unwrap();
        let e = format!("{:#}", f.read().unwrap_err());
        assert!(e.contains("noise.csv: damaged"), "{e}");
    }

    #[test]
    fn partial_values_resume_under_their_key_and_not_when_damaged_or_of_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = NoiseFolder::new(dir.path());
        assert!(f.read_partial("k").unwrap().is_empty());
        f.write_partial("k", &[1.0, 2.5]).unwrap();
        assert_eq!(f.read_partial("k").unwrap(), vec![1.0, 2.5]);
        assert!(f.read_partial("other").unwrap().is_empty());
        f.write_partial("k", &[]).unwrap();
        assert!(f.read_partial("k").unwrap().is_empty());

        f.write_partial("k", &[1.0, 2.5]).unwrap();
        let path = dir.path().join(NOISE_PARTIAL);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("2.5", "2.6")).unwrap();
        assert!(
            f.read_partial("k").unwrap().is_empty(),
            "damage starts over"
        );
    }
}

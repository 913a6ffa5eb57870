//! `spectrum.csv`: the exact eigenvalues of the Hessian at the analyzed steps, whole (block
//! `all`) and of each block's diagonal sub-Hessian (`analyze --spectrum`; docs/spec.md).
use crate::run::folder::SPECTRUM;
use crate::run::{io, RunFolder};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;

/// The block of the whole Hessian.
pub const ALL: &str = "all";

/// One line of the file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    iter: i64,
    block: String,
    eigenvalue: f64,
}

/// Per step, the spectra in the file's order: the whole Hessian's first, then each block's.
pub type Spectra = BTreeMap<i64, Vec<Vec<f64>>>;

/// The spectra already in the run folder (none if the file is absent).
pub fn read(folder: &RunFolder) -> Result<Spectra> {
    let path = folder.spectrum_path();
    let mut out = Spectra::new();
    if !path.exists() {
        return Ok(out);
    }
    if !folder.intact(SPECTRUM)? {
        eprintln!(
            "{}: does not match the SHA-256 in summary.json (damaged, or its writer was killed before recording it); ignored (analyze and reproduce measure it again)",
            path.display()
        );
        return Ok(out);
    }
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut names: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (i, line) in reader.deserialize::<Line>().enumerate() {
        let line = line.map_err(|e| {
            anyhow!(crate::BadInput(format!(
                "{} line {}: not a spectrum row ({e}); remove the file to measure again",
                path.display(),
                i + 2
            )))
        })?;
        let (blocks, spectra) = (
            names.entry(line.iter).or_default(),
            out.entry(line.iter).or_default(),
        );
        match blocks.iter().position(|b| *b == line.block) {
            Some(k) => spectra[k].push(line.eigenvalue),
            None => {
                blocks.push(line.block);
                spectra.push(vec![line.eigenvalue]);
            }
        }
    }
    Ok(out)
}

/// Writes every step's spectra, named `all` and then `block_names`, to a temporary file and
/// renames it over the folder's spectrum.csv.
pub fn write(folder: &RunFolder, block_names: &[String], spectra: &Spectra) -> Result<()> {
    let mut w = csv::Writer::from_writer(vec![]);
    for (&iter, per_block) in spectra {
        let names = std::iter::once(ALL).chain(block_names.iter().map(String::as_str));
        for (block, eigs) in names.zip(per_block) {
            for &eigenvalue in eigs {
                w.serialize(Line {
                    iter,
                    block: block.to_string(),
                    eigenvalue,
                })?;
            }
        }
    }
    let bytes = w.into_inner().map_err(|e| anyhow!("spectrum.csv: {e}"))?;
    io::write_atomic(&folder.spectrum_path(), &bytes)?;
    folder.record_sha256(&[SPECTRUM])
}

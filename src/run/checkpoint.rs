//! `checkpoint.safetensors`: everything a run needs to continue, as named tensors, with the
//! config it started from and (written by [`super::io::write_checked_safetensors`]) a checksum.
//!
//! ```text
//! iter                    int64 [1]    the iterations done
//! ensemble                uint8 [*]    JSON of the [`Composition`]
//! config                  uint8 [*]    the YAML of the config the run started from
//! rule.in_a_row           int64 [1]    the non-finite rule's count of bad steps in a row
//! rule.active             int64 [1]    0 once the member diverged
//! param.<name>            the parameters, PyTorch names and shapes
//! optim.<name>            the optimizer's state, names of the stepper's choosing
//! metrics.train_loss      float64 [t]  every row so far (a float32 run's values exactly)
//! metrics.grad_norm       float64 [t]
//! trajectory.count        int64 [1]    S, the snapshots saved so far
//! checksum                uint8 [32]   SHA-256 of all of the above
//! ```
//!
//! The snapshots themselves are not rewritten at every checkpoint (that cost O(iterations²)
//! bytes): each checkpoint appends the new ones to the folder's `trajectory.partial/`
//! ([`super::folder`]). A checkpoint of a linattn before 2026-12 holds them whole instead, as
//! `trajectory.step` (int64 [S]) and `trajectory.flat` ([S, P]), and is still read.
use super::io::MetricsRow;
use crate::config::Config;
use crate::model::Layout;
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// The composition of an ensemble, as each member's checkpoint records it: the member folders
/// in order, relative to the member's own folder (so a runs folder can move, or be mounted
/// elsewhere on another machine), and the member's own index.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Composition {
    pub members: Vec<String>,
    pub index: usize,
}

impl Composition {
    /// Member `index` of the ensemble whose folders are `folders`.
    pub fn of(folders: &[&Path], index: usize) -> Result<Composition> {
        let relative = |to: &Path| -> Result<String> {
            let (from, to) = (folders[index].canonicalize()?, to.canonicalize()?);
            let path = pathdiff::diff_paths(&to, &from).ok_or_else(|| {
                anyhow!(
                    "no relative path from {} to {}",
                    from.display(),
                    to.display()
                )
            })?;
            Ok(path.to_string_lossy().into_owned())
        };
        Ok(Composition {
            members: folders.iter().map(|f| relative(f)).collect::<Result<_>>()?,
            index,
        })
    }
}

/// One member's checkpoint.
pub struct Checkpoint {
    pub iter: i64,
    pub composition: Composition,
    /// The config the run started from (absent from checkpoints of a linattn before 2026-12).
    pub config: Option<Config>,
    /// `[P]`: the parameters, flat in layout order.
    pub flat: Tensor,
    pub optim: Vec<(String, Tensor)>,
    pub rows: Vec<MetricsRow>,
    /// The steps saved so far, and `[S, P]` the parameters at them. Read from the file alone
    /// they are empty (unless it is of the old format): the folder fills them in from its
    /// trajectory chunks.
    pub saved_steps: Vec<i64>,
    pub snapshots: Tensor,
    /// S, the number of snapshots saved so far.
    pub saved: i64,
    pub in_a_row: i64,
    pub active: bool,
}

fn get(saved: &[(String, Tensor)], name: &str) -> Result<Tensor> {
    saved
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.shallow_clone())
        .ok_or_else(|| anyhow!("has no tensor {name:?}"))
}

/// The parameters, flat in layout order, each checked against the shape `layout` gives it.
fn flat_params(saved: &[(String, Tensor)], layout: &Layout) -> Result<Tensor> {
    let params: Vec<Tensor> = layout
        .names
        .iter()
        .map(|n| get(saved, &format!("param.{n}")))
        .collect::<Result<_>>()?;
    for ((name, t), shape) in layout.names.iter().zip(&params).zip(&layout.shapes) {
        if t.size() != *shape {
            return Err(anyhow!(
                "does not match config.yaml: parameter {name} has shape {:?}, but the config implies {:?}",
                t.size(),
                shape
            ));
        }
    }
    Ok(layout.flatten(&params))
}

/// The saved steps, the snapshots `[S, P]` and S: from a file of the old format, which holds
/// them; else none but S (the folder's trajectory chunks hold them).
fn trajectory(
    saved: &[(String, Tensor)],
    layout: &Layout,
    flat: &Tensor,
) -> Result<(Vec<i64>, Tensor, i64)> {
    if let Ok(count) = get(saved, "trajectory.count") {
        let none = Tensor::empty([0, layout.total], (flat.kind(), flat.device()));
        return Ok((vec![], none, count.int64_value(&[0])));
    }
    let steps = Vec::<i64>::try_from(&get(saved, "trajectory.step")?)?;
    let count = steps.len() as i64;
    Ok((steps, get(saved, "trajectory.flat")?, count))
}

/// The iteration and ensemble of a checkpoint's tensors, without reading the rest.
pub fn stamp(saved: &[(String, Tensor)]) -> Result<(i64, Composition)> {
    let json = Vec::<u8>::try_from(&get(saved, "ensemble")?)?;
    Ok((
        get(saved, "iter")?.int64_value(&[0]),
        serde_json::from_slice(&json).context("its ensemble record")?,
    ))
}

impl Checkpoint {
    /// The named tensors written to the file (all on the CPU).
    pub fn to_tensors(&self, layout: &Layout) -> Vec<(String, Tensor)> {
        let json = serde_json::to_string(&self.composition).expect("a Composition serializes");
        let mut named: Vec<(String, Tensor)> = vec![
            ("iter".into(), Tensor::from_slice(&[self.iter])),
            ("ensemble".into(), Tensor::from_slice(json.as_bytes())),
            ("rule.in_a_row".into(), Tensor::from_slice(&[self.in_a_row])),
            (
                "rule.active".into(),
                Tensor::from_slice(&[self.active as i64]),
            ),
        ];
        if let Some(cfg) = &self.config {
            named.push((
                "config".into(),
                Tensor::from_slice(cfg.to_yaml().as_bytes()),
            ));
        }
        for (name, value) in layout.names.iter().zip(layout.unflatten(&self.flat)) {
            named.push((format!("param.{name}"), value));
        }
        for (name, t) in &self.optim {
            named.push((format!("optim.{name}"), t.shallow_clone()));
        }
        // f64 holds a float32 run's values exactly and a float64 run's as they are.
        let column = |f: fn(&MetricsRow) -> f64| {
            Tensor::from_slice(&self.rows.iter().map(f).collect::<Vec<_>>())
        };
        named.push(("metrics.train_loss".into(), column(|r| r.train_loss)));
        named.push(("metrics.grad_norm".into(), column(|r| r.grad_norm)));
        named.push(("trajectory.count".into(), Tensor::from_slice(&[self.saved])));
        named
    }

    /// Reads the tensors of [`Checkpoint::to_tensors`] back, checking them against `layout`
    /// (the shapes its config implies).
    pub fn from_tensors(saved: &[(String, Tensor)], layout: &Layout) -> Result<Checkpoint> {
        let (iter, composition) = stamp(saved)?;
        let flat = flat_params(saved, layout)?;
        let column = |name: &str| -> Result<Vec<f64>> {
            Ok(Vec::<f64>::try_from(
                &get(saved, name)?.to_kind(Kind::Double),
            )?)
        };
        let (losses, norms) = (column("metrics.train_loss")?, column("metrics.grad_norm")?);
        let (saved_steps, snapshots, count) = trajectory(saved, layout, &flat)?;
        if losses.len() != norms.len()
            || losses.len() as i64 > iter
            || count < 1
            || snapshots.size() != [saved_steps.len() as i64, layout.total]
        {
            return Err(anyhow!(
                "is inconsistent: iteration {iter} with {} metric rows",
                losses.len()
            ));
        }
        let rows = losses
            .iter()
            .zip(&norms)
            .enumerate()
            .map(|(i, (&train_loss, &grad_norm))| MetricsRow {
                iter: i as i64,
                train_loss,
                grad_norm,
            })
            .collect();
        let config = match get(saved, "config") {
            Ok(t) => {
                let text =
                    String::from_utf8(Vec::<u8>::try_from(&t)?).context("its config record")?;
                Some(Config::from_yaml_str(&text, &[]).context("its config record")?)
            }
            Err(_) => None,
        };
        Ok(Checkpoint {
            iter,
            composition,
            config,
            flat,
            optim: saved
                .iter()
                .filter_map(|(n, t)| {
                    n.strip_prefix("optim.")
                        .map(|k| (k.to_string(), t.shallow_clone()))
                })
                .collect(),
            rows,
            saved_steps,
            snapshots,
            saved: count,
            in_a_row: get(saved, "rule.in_a_row")?.int64_value(&[0]),
            active: get(saved, "rule.active")?.int64_value(&[0]) != 0,
        })
    }
}

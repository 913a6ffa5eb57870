//! The start of a run, written once (docs/spec.md, "The reference protocol"): the teacher with
//! its own seed (`mlp_teacher` data), then both generators seeded with the run's seed, then the
//! initial parameters drawn on the CPU generator. The faithful data stream continues the same
//! generators from there; fast mode's streams are seeded per iteration instead
//! ([`crate::rng::seed_stream`]), but a fast run starts from these same initial parameters.
use crate::config::{Config, Setting};
use crate::data::DataStream;
use crate::mlp::Mlp;
use crate::model::{self, Arch};
use crate::rng::{self, LegacyRandomState};
use tch::{Device, Tensor};

/// A run at iteration 0.
pub struct Start {
    /// The teacher φ* of `mlp_teacher` data.
    pub teacher: Option<Mlp>,
    /// Initial parameters in `state_dict` order, float32 on the CPU.
    pub init: Vec<Tensor>,
    /// numpy's legacy generator, seeded with the run's seed.
    pub numpy: LegacyRandomState,
}

/// Teacher → seed(s) → init, in that order.
pub fn start(cfg: &Config, seed: u32) -> Start {
    let teacher =
        (cfg.data.setting == Setting::MlpTeacher).then(|| Mlp::teacher(&cfg.data, cfg.model.dim));
    let numpy = rng::seed_both(seed);
    let init = model::init_values(&Arch::from_config(cfg), cfg.model.init_std);
    Start {
        teacher,
        init,
        numpy,
    }
}

impl Start {
    /// The faithful data stream that follows the init draws, and the initial parameters.
    pub fn into_stream(self, cfg: &Config, device: Device) -> (Vec<Tensor>, DataStream) {
        (
            self.init,
            DataStream::new(cfg, self.teacher, self.numpy, device),
        )
    }
}

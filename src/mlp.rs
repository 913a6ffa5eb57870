//! The ReLU MLPs of App. B: the fixed random teacher φ* that makes the labels of `mlp_teacher`
//! data, and the learned front end of the MLP-augmented model (`model.mlp_hidden > 0`). Both are
//! `Linear(i,h), ReLU, Linear(h,o)` with PyTorch's parameter layout (weight is [out, in]).
use crate::config::DataConfig;
use crate::rng;
use tch::{Device, Kind, Tensor};

pub struct Mlp {
    pub w0: Tensor,
    pub b0: Tensor,
    pub w2: Tensor,
    pub b2: Tensor,
}

impl Mlp {
    /// PyTorch's default `nn.Linear` init, drawn in PyTorch's order (per layer: weight then
    /// bias) on the CPU generator. tch's own `nn::linear` draws the bias first and uses another
    /// bound, so the draws are written out here.
    pub fn init_pytorch_default(input: i64, hidden: i64, output: i64) -> Mlp {
        let (w0, b0) = pytorch_linear_init(input, hidden);
        let (w2, b2) = pytorch_linear_init(hidden, output);
        Mlp { w0, b0, w2, b2 }
    }

    /// The fixed random ReLU teacher φ* of App. B (`Linear(d, teacher_hidden), ReLU,
    /// Linear(·, d)`), built with PyTorch's default init after seeding both generators with
    /// `teacher_seed`.
    pub fn teacher(data: &DataConfig, dim: i64) -> Mlp {
        let _ = rng::seed_both(data.teacher_seed);
        Mlp::init_pytorch_default(dim, data.teacher_hidden, dim)
    }

    pub fn to_device(&self, device: Device) -> Mlp {
        Mlp {
            w0: self.w0.to_device(device),
            b0: self.b0.to_device(device),
            w2: self.w2.to_device(device),
            b2: self.b2.to_device(device),
        }
    }

    /// The parameters in `state_dict` order.
    pub fn into_values(self) -> [Tensor; 4] {
        [self.w0, self.b0, self.w2, self.b2]
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        forward(x, &[&self.w0, &self.b0, &self.w2, &self.b2])
    }
}

/// `Linear, ReLU, Linear` on the last axis of `x`, with `p = [w0, b0, w2, b2]`.
pub fn forward(x: &Tensor, p: &[&Tensor]) -> Tensor {
    x.linear(p[0], Some(p[1])).relu().linear(p[2], Some(p[3]))
}

/// `nn.Linear(fan_in, fan_out)`'s constructor: `kaiming_uniform_(a=sqrt(5))` on the weight,
/// then `uniform_(±1/sqrt(fan_in))` on the bias. The bound is computed in the same float64
/// order as `torch.nn.init` so that `uniform_` receives the same double.
fn pytorch_linear_init(fan_in: i64, fan_out: i64) -> (Tensor, Tensor) {
    let a = 5f64.sqrt();
    let gain = (2.0 / (1.0 + a.powf(2.0))).sqrt();
    let std = gain / (fan_in as f64).sqrt();
    let bound = 3f64.sqrt() * std;
    let w = Tensor::empty([fan_out, fan_in], (Kind::Float, Device::Cpu)).uniform_(-bound, bound);
    let bb = 1.0 / (fan_in as f64).sqrt();
    let b = Tensor::empty([fan_out], (Kind::Float, Device::Cpu)).uniform_(-bb, bb);
    (w, b)
}

//! The linear Transformer of paper §3 (and its MLP-augmented variant, App. B).
//!
//! The forward pass is written once, in [`loss`], as a function of (parameters, batch).
//! Training, evaluation, Hessians and directional derivatives all call it; the parameters
//! are passed as plain tensors in `state_dict` order so that a Hessian can feed views of one
//! flat vector instead of the trained variables.
use crate::config::{Attention, Config, Parametrization};
use crate::data::Batch;
use anyhow::{bail, Result};
use tch::{nn, Device, Kind, Tensor};

/// The shape of the network, derived once from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arch {
    pub layers: i64,
    pub heads: i64,
    pub dim: i64,
    pub context: i64,
    pub parametrization: Parametrization,
    pub attention: Attention,
    pub mlp_hidden: i64,
}

impl Arch {
    pub fn from_config(cfg: &Config) -> Arch {
        Arch {
            layers: cfg.model.layers,
            heads: cfg.model.heads,
            dim: cfg.model.dim,
            context: cfg.data.context,
            parametrization: cfg.model.parametrization,
            attention: cfg.model.attention,
            mlp_hidden: cfg.model.mlp_hidden,
        }
    }

    /// Side of each learned P and Q.
    pub fn pq_dim(&self) -> i64 {
        match self.parametrization {
            Parametrization::Restricted => self.dim,
            Parametrization::Full => self.dim + 1,
        }
    }

    /// Parameter names and shapes in PyTorch `state_dict` order.
    pub fn param_specs(&self) -> Vec<(String, Vec<i64>)> {
        let k = self.pq_dim();
        let mut specs = vec![("allparam".to_string(), vec![self.layers, self.heads, 2, k, k])];
        if self.mlp_hidden > 0 {
            let (d, h) = (self.dim, self.mlp_hidden);
            specs.push(("mlp.0.weight".into(), vec![h, d]));
            specs.push(("mlp.0.bias".into(), vec![h]));
            specs.push(("mlp.2.weight".into(), vec![d, h]));
            specs.push(("mlp.2.bias".into(), vec![d]));
        }
        specs
    }

    pub fn num_params(&self) -> i64 {
        self.param_specs().iter().map(|(_, s)| s.iter().product::<i64>()).sum()
    }
}

/// `Linear(i,h), ReLU, Linear(h,o)` with PyTorch's parameter layout (weight is [out, in]).
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

    pub fn forward(&self, x: &Tensor) -> Tensor {
        mlp_forward(x, &[&self.w0, &self.b0, &self.w2, &self.b2])
    }
}

fn mlp_forward(x: &Tensor, p: &[&Tensor]) -> Tensor {
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

/// The trainable parameters, held in a tch `VarStore` under PyTorch's `state_dict` names.
pub struct Model {
    pub arch: Arch,
    pub vs: nn::VarStore,
    /// Shallow handles on the VarStore's variables, in `state_dict` order.
    pub params: Vec<(String, Tensor)>,
}

impl Model {
    /// Creates the parameters and draws their initial values on the CPU generator in the
    /// reference order (SPEC: allparam by one `normal_(0, init_std)`, then the MLP layers),
    /// then copies them to `device`. Call right after seeding.
    pub fn init(arch: Arch, init_std: f64, device: Device) -> Model {
        let specs = arch.param_specs();
        let allparam = Tensor::zeros(specs[0].1.as_slice(), (Kind::Float, Device::Cpu))
            .normal_(0.0, init_std);
        let mut values = vec![allparam];
        if arch.mlp_hidden > 0 {
            let mlp = Mlp::init_pytorch_default(arch.dim, arch.mlp_hidden, arch.dim);
            values.extend([mlp.w0, mlp.b0, mlp.w2, mlp.b2]);
        }
        Self::from_values(arch, &values, device)
    }

    /// Builds a model holding the given values (state_dict order), e.g. from a checkpoint.
    pub fn from_values(arch: Arch, values: &[Tensor], device: Device) -> Model {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut params = Vec::new();
        for ((name, shape), value) in arch.param_specs().into_iter().zip(values) {
            let mut path = root.clone();
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().expect("parameter names are not empty");
            for p in parts {
                path = path / p;
            }
            let mut var = path.zeros(leaf, &shape);
            tch::no_grad(|| var.copy_(value));
            params.push((name, var));
        }
        Model { arch, vs, params }
    }

    pub fn tensors(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, t)| t.shallow_clone()).collect()
    }

    /// Copies of the current values on the CPU, e.g. for a trajectory snapshot.
    pub fn snapshot(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, t)| t.detach().to_device(Device::Cpu).copy()).collect()
    }

    pub fn loss(&self, batch: &Batch) -> Tensor {
        loss(&self.arch, &self.tensors(), batch)
    }
}

/// Checks that checkpoint values have the shapes the architecture expects.
pub fn check_shapes(arch: &Arch, named: &[(String, Tensor)]) -> Result<()> {
    for (name, shape) in arch.param_specs() {
        match named.iter().find(|(n, _)| *n == name) {
            None => bail!("missing parameter {name}"),
            Some((_, t)) if t.size() != shape => {
                bail!("parameter {name} has shape {:?}, but the config implies {:?}", t.size(), shape)
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// P~ and Q~ of one head, from its learned `[2, k, k]` slice.
fn embed(arch: &Arch, pq: &Tensor) -> (Tensor, Tensor) {
    let (p, q) = (pq.get(0), pq.get(1));
    match arch.parametrization {
        Parametrization::Full => (p, q),
        Parametrization::Restricted => {
            // P~ = [[P,0],[0,1]], Q~ = [[Q,0],[0,0]]; padding adds exact zeros, so the values
            // are the same however the embedding is written.
            let d = arch.dim;
            let one = Tensor::zeros([d + 1, d + 1], (pq.kind(), pq.device()));
            let _ = one.get(d).get(d).fill_(1.0);
            let pt = p.constant_pad_nd([0, 1, 0, 1]) + one;
            let qt = q.constant_pad_nd([0, 1, 0, 1]);
            (pt, qt)
        }
    }
}

/// M = diag(1, …, 1, 0): the query token is never a key or a value.
fn query_mask(n: i64, like: &Tensor) -> Tensor {
    let mut diag = vec![1f32; n as usize + 1];
    diag[n as usize] = 0.0;
    Tensor::from_slice(&diag).diag_embed(0, -2, -1).to_kind(like.kind()).to_device(like.device())
}

/// Z_L: the tokens after the optional MLP and all attention layers.
///
/// The three einsums are the authors' contraction order; another order computes the same
/// model only to about 1e-6, so faithful runs keep this one.
pub fn forward(arch: &Arch, params: &[Tensor], z: &Tensor) -> Tensor {
    let n = arch.context;
    let mut z = z.shallow_clone();
    if arch.mlp_hidden > 0 {
        let p: Vec<&Tensor> = params[1..5].iter().collect();
        let covariates = mlp_forward(&z.narrow(2, 0, arch.dim), &p);
        z = Tensor::cat(&[covariates, z.narrow(2, arch.dim, 1)], 2);
    }
    let mask = query_mask(n, &z);
    let allparam = &params[0];
    for l in 0..arch.layers {
        let mut acc: Option<Tensor> = None;
        for h in 0..arch.heads {
            let (pt, qt) = embed(arch, &allparam.get(l).get(h));
            let mut s = Tensor::einsum("BNi,ij,BMj->BNM", &[&z, &qt, &z], None::<i64>);
            if arch.attention == Attention::Softmax {
                s = s.softmax(-1, None::<Kind>);
            }
            let k = Tensor::einsum("ij,BNj->BNi", &[&pt, &z], None::<i64>);
            let a = Tensor::einsum("BNM,ML,BLi->BNi", &[&s, &mask, &k], None::<i64>) / n as f64;
            acc = Some(match acc {
                None => a,
                Some(acc) => acc + a,
            });
        }
        z = z + acc.expect("heads >= 1");
    }
    z
}

/// The prediction for each prompt's query is −Z_L[b, n, d]; the loss is the mean squared error.
pub fn loss(arch: &Arch, params: &[Tensor], batch: &Batch) -> Tensor {
    let z = forward(arch, params, &batch.z);
    (z.select(1, arch.context).select(1, arch.dim) + &batch.y_query)
        .square()
        .mean(None::<Kind>)
}

//! The linear Transformer of paper §3 (and its MLP-augmented variant, App. B): its shape and
//! parameters here, its forward pass in two forms.
//!
//! - [`faithful`]: the authors' einsums, op for op, written once as a function of
//!   (parameters, batch); training, evaluation, Hessians and directional derivatives call it.
//! - [`fast`]: the same model by associativity, for K members at once (fast mode, ensembles).
//!
//! The parameters are plain tensors in `state_dict` order, so that a Hessian can feed views of
//! one flat vector instead of trained variables.
pub mod faithful;
pub mod fast;
pub mod native;

pub use faithful::{forward, loss};
pub use fast::{fast_loss, fast_losses};

use crate::config::{Attention, Config, Parametrization};
use crate::mlp::Mlp;
use tch::{Device, Kind, Tensor};

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
        let mut specs = vec![(
            "allparam".to_string(),
            vec![self.layers, self.heads, 2, k, k],
        )];
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
        self.param_specs()
            .iter()
            .map(|(_, s)| s.iter().product::<i64>())
            .sum()
    }
}

/// Initial parameter values (state_dict order, on the CPU), drawn on the CPU generator in the
/// reference order (SPEC: allparam by one `normal_(0, init_std)`, then the MLP layers).
/// Call right after seeding.
pub fn init_values(arch: &Arch, init_std: f64) -> Vec<Tensor> {
    let specs = arch.param_specs();
    let allparam =
        Tensor::zeros(specs[0].1.as_slice(), (Kind::Float, Device::Cpu)).normal_(0.0, init_std);
    let mut values = vec![allparam];
    if arch.mlp_hidden > 0 {
        values.extend(Mlp::init_pytorch_default(arch.dim, arch.mlp_hidden, arch.dim).into_values());
    }
    values
}

/// One block of a member's parameters ([`Layout::blocks`]): `rows × cols` values from `offset`
/// of the flat vector, row-major; an MLP bias is one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub offset: i64,
    pub rows: i64,
    pub cols: i64,
    pub bias: bool,
}

impl Block {
    /// How many values the block holds.
    pub fn size(&self) -> i64 {
        self.rows * self.cols
    }
}

/// Where each parameter lives in one member's flat parameter vector (`state_dict` order, as
/// PyTorch's `torch.cat([p.view(-1) for p in params])` and `torch.autograd.functional.hessian`
/// see them).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<i64>>,
    offsets: Vec<i64>,
    /// Parameters per member.
    pub total: i64,
}

impl Layout {
    pub fn new(arch: &Arch) -> Layout {
        let (mut names, mut shapes, mut offsets, mut total) = (vec![], vec![], vec![], 0);
        for (name, shape) in arch.param_specs() {
            offsets.push(total);
            total += shape.iter().product::<i64>();
            names.push(name);
            shapes.push(shape);
        }
        Layout {
            names,
            shapes,
            offsets,
            total,
        }
    }

    /// The parameters as views of `flat [K, P]`, shaped `[K, *shape]`: gradients with respect
    /// to them flow into `flat`.
    pub fn views(&self, flat: &Tensor) -> Vec<Tensor> {
        let k = flat.size()[0];
        self.shapes
            .iter()
            .zip(&self.offsets)
            .map(|(shape, &off)| {
                let mut s = vec![k];
                s.extend(shape);
                flat.narrow(1, off, shape.iter().product())
                    .view(s.as_slice())
            })
            .collect()
    }

    /// The blocks of one member's flat vector, in order: each P and each Q of each layer and
    /// head, then each MLP weight and bias. Adam-mini keeps one second moment per block, and
    /// Muon orthogonalizes each matrix (docs/spec.md).
    pub fn blocks(&self) -> Vec<Block> {
        let mut out = vec![];
        for (shape, &offset) in self.shapes.iter().zip(&self.offsets) {
            match *shape.as_slice() {
                [layers, heads, two, rows, cols] => {
                    let size = rows * cols;
                    out.extend((0..layers * heads * two).map(|b| Block {
                        offset: offset + b * size,
                        rows,
                        cols,
                        bias: false,
                    }))
                }
                [rows, cols] => out.push(Block {
                    offset,
                    rows,
                    cols,
                    bias: false,
                }),
                [len] => out.push(Block {
                    offset,
                    rows: 1,
                    cols: len,
                    bias: true,
                }),
                _ => unreachable!("a parameter is allparam, an MLP weight or an MLP bias"),
            }
        }
        out
    }

    /// A name for each of [`Layout::blocks`], in order: `P.l0.h0`, `Q.l0.h0`, … (layer and
    /// head from 0), then the MLP's parameter names (`mlp.0.weight`, …).
    pub fn block_names(&self) -> Vec<String> {
        let mut out = vec![];
        for (name, shape) in self.names.iter().zip(&self.shapes) {
            match *shape.as_slice() {
                [layers, heads, 2, _, _] => {
                    for l in 0..layers {
                        for h in 0..heads {
                            out.push(format!("P.l{l}.h{h}"));
                            out.push(format!("Q.l{l}.h{h}"));
                        }
                    }
                }
                _ => out.push(name.clone()),
            }
        }
        out
    }

    /// The parameters as views of one member's `flat [P]`, in their own shapes.
    pub fn unflatten(&self, flat: &Tensor) -> Vec<Tensor> {
        self.views(&flat.unsqueeze(0))
            .into_iter()
            .map(|t| t.squeeze_dim(0))
            .collect()
    }

    /// One member's parameters (any leading shape kept) as one flat vector, detached:
    /// `params[i]` of shape `[*lead, *shape_i]` → `[*lead, P]`.
    pub fn flatten(&self, params: &[Tensor]) -> Tensor {
        let lead = params[0].dim() - self.shapes[0].len();
        let parts: Vec<Tensor> = params
            .iter()
            .map(|p| {
                let mut s: Vec<i64> = p.size()[..lead].to_vec();
                s.push(-1);
                p.detach().reshape(s.as_slice())
            })
            .collect();
        Tensor::cat(&parts, lead as i64)
    }
}

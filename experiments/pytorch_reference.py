#!/usr/bin/env python3
"""PyTorch reference side of linattn (Ahn et al., ICLR 2024, "Linear attention is (maybe) all
you need"). It mirrors the authors' torch.nn code and follows docs/conventions.md op for op,
so that on CPU the Rust side (same libtorch kernels, same generator) is bit-identical.

The training step is the authors' (train.ipynb `clip_and_step`; nonlinear_regression.ipynb's
`train_transformer` for the MLP variant), with their arithmetic, all float32 on the device:
  grad_norm = vector_norm(cat([g.reshape(-1) for g in grads]))   the norm of the concatenated
      gradient (one tensor `allparam`: `allparam.grad.norm()`; MLP variant: the notebook's
      `torch.norm(torch.cat(grads))`, taken before clipping); this is the logged grad_norm.
  clip_mode threshold, clip c > 0:  `if grad_norm > c: g.mul_(c / grad_norm)` for every g, where
      the comparison is a float32 tensor comparison and `c / grad_norm` is Tensor.__rtruediv__,
      i.e. `grad_norm.reciprocal() * c`, a float32 0-dim tensor (NOT c / float(grad_norm) in
      float64; the two agree at c = 1 but not at the sphere's c = 0.1).
  clip_mode clip_grad_norm:  torch.nn.utils.clip_grad_norm_(params, c), which takes its own norm
      of the per-parameter norms for its coefficient `min(1, (norm + 1e-6).reciprocal() * c)`.

  train   --config FILE [--set K=V]... --out DIR [--device D]   (default when argv[1] is --...)
  analyze DIR [--every K] [--vectorize] [--spectrum]             (writes DIR/measurements.csv)
  noise   --config FILE [--set K=V]... --samples S [--full-batch N] [--out DIR] [--device D]
  bench   --config FILE [--set K=V]... --steps N [--warmup W] [--ensemble K] [--device D]
  bench-hessian --config FILE [--set K=V]... [--repeats R] [--threads N] [--device D]

Exit codes: 0 done, 2 bad input (one line on stderr), 3 training diverged, 1 anything else.
"""
import argparse
import copy
import json
import math
import os
import re
import resource
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

# opt_einsum would pick another contraction order for the 3-operand einsums, changing the bits.
torch.backends.opt_einsum.enabled = False

SIDE = "pytorch"


class InputError(Exception):
    """Bad input: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------- config
DEFAULTS = {
    "model": {"layers": 3, "heads": 1, "dim": 5, "init_std": 0.05,
              "parametrization": "restricted", "attention": "linear", "mlp_hidden": 0},
    "data": {"setting": "normal", "context": 20, "batch": 1000, "gamma_shape": 0.1,
             "teacher_hidden": 10, "teacher_seed": 7, "eval_seed": 99},
    "train": {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "betas": [0.9, 0.9],
              "eps": 1.0e-8, "clip": 1.0, "clip_mode": "threshold", "mode": "faithful",
              "iters": 10000, "seed": 0, "device": "cpu", "save_every": 1,
              "optimizer_impl": "reference"},
}
# Keys a config may set that a resolved config.yaml names only when not at their default (as
# the Rust side writes them).
OPTIONAL = {"train": {"skip_nonfinite": 0, "weight_decay": 0.0, "dtype": "float32"},
            "data": {"train_prompts": 0}}
OPTIMIZERS = ("sgd", "adam", "adamw", "sign", "normalized", "lion", "adam_mini", "muon")
SEED_MAX = 2**32 - 1  # np.random.seed accepts [0, 2^32)
# kind, then bounds: ("int", lo, hi) | ("float", lo, lo_open, hi, hi_open) | ("enum", choices)
RULES = {
    "model.layers": ("int", 1, None), "model.heads": ("int", 1, None), "model.dim": ("int", 1, None),
    "model.init_std": ("float", 0, False, None, False),
    "model.parametrization": ("enum", ("restricted", "full")),
    "model.attention": ("enum", ("linear", "softmax")), "model.mlp_hidden": ("int", 0, None),
    "data.setting": ("enum", ("normal", "sphere", "gamma", "mlp_teacher")),
    "data.context": ("int", 1, None), "data.batch": ("int", 1, None),
    "data.gamma_shape": ("float", 0, True, None, False), "data.teacher_hidden": ("int", 1, None),
    "data.teacher_seed": ("int", 0, SEED_MAX), "data.eval_seed": ("int", 0, SEED_MAX),
    "train.optimizer": ("enum", OPTIMIZERS), "train.lr": ("float", 0, True, None, False),
    "train.momentum": ("float", 0, False, 1, True), "train.betas": ("betas",),
    "train.eps": ("float", 0, True, None, False), "train.clip": ("float", 0, False, None, False),
    "train.clip_mode": ("enum", ("threshold", "clip_grad_norm")),
    "train.mode": ("enum", ("faithful", "fast")), "train.iters": ("int", 1, None),
    "train.seed": ("int", 0, SEED_MAX), "train.device": ("device",),
    "train.save_every": ("int", 1, None), "train.optimizer_impl": ("enum", ("reference", "libtorch")),
    "train.skip_nonfinite": ("int", 0, None), "train.weight_decay": ("float", 0, False, None, False),
    "data.train_prompts": ("int", 0, None), "train.dtype": ("enum", ("float32", "float64")),
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.2, as serde_yaml does on the Rust side)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _show(v):
    return repr(v) if isinstance(v, str) else str(v)


def _check(where, v):
    rule, orig = RULES[where], v
    bad = lambda what: InputError(f"config key {where}: {what}, got {_show(orig)}")
    kind = rule[0]
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("must be an integer")
        if v < rule[1] or (rule[2] is not None and v > rule[2]):
            raise bad(f"must be >= {rule[1]}" + (f" and <= {rule[2]}" if rule[2] is not None else ""))
        return v
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad("must be a number")
        v = float(v)
        _, lo, lo_open, hi, hi_open = rule
        if not math.isfinite(v):
            raise bad("must be finite")
        if (v <= lo if lo_open else v < lo) or (hi is not None and (v >= hi if hi_open else v > hi)):
            what = f"must be {'>' if lo_open else '>='} {lo}"
            raise bad(what + (f" and {'<' if hi_open else '<='} {hi}" if hi is not None else ""))
        return v
    if kind == "enum":
        if v not in rule[1] or not isinstance(v, str):
            raise bad("must be one of " + ", ".join(rule[1]))
        return v
    if kind == "betas":
        if not isinstance(v, list) or len(v) != 2 or any(
                isinstance(b, bool) or not isinstance(b, (int, float)) for b in v):
            raise bad("must be a list of two numbers")
        if any(not (0 <= b < 1) for b in v):
            raise bad("each beta must be >= 0 and < 1")
        return [float(b) for b in v]
    if kind == "device":
        if not isinstance(v, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?", v):
            raise bad("must be cpu, cuda or cuda:N")
        return v
    raise AssertionError(kind)


def load_config(path, sets=()):
    cfg = copy.deepcopy(DEFAULTS)
    raw = {}
    if path is not None:
        try:
            with open(path) as f:
                raw = yaml.load(f, Loader=_Loader)
        except OSError as e:
            raise InputError(f"config file {path}: {e.strerror}")
        except yaml.YAMLError as e:
            raise InputError(f"config file {path}: invalid YAML: {' '.join(str(e).split())}")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise InputError(f"config file {path}: must be a mapping with sections model, data, train")
    for sec, body in raw.items():
        if sec not in cfg:
            raise InputError(f"config: unknown section {_show(sec)} (expected model, data, train)")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise InputError(f"config section {sec}: must be a mapping")
        for key, v in body.items():
            if key not in cfg[sec] and key not in OPTIONAL.get(sec, {}):
                raise InputError(f"config key {sec}.{key}: unknown key")
            cfg[sec][key] = v
    for s in sets:
        key, eq, text = s.partition("=")
        sec, dot, name = key.partition(".")
        if not eq or not dot:
            raise InputError(f"--set {s}: expected section.key=value")
        if sec not in cfg or (name not in cfg[sec] and name not in OPTIONAL.get(sec, {})):
            raise InputError(f"--set {s}: unknown config key {key}")
        try:
            cfg[sec][name] = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError:
            raise InputError(f"--set {s}: value is not valid YAML")
    for sec, body in cfg.items():
        for key in body:
            body[key] = _check(f"{sec}.{key}", body[key])
        for key, default in OPTIONAL.get(sec, {}).items():
            if body.get(key, default) == default:
                body.pop(key, None)
    tp = cfg["data"].get("train_prompts", 0)
    if 0 < tp < cfg["data"]["batch"]:
        raise InputError(f"config key data.train_prompts: must be 0 (fresh prompts every step) or at "
                         f"least data.batch = {cfg['data']['batch']}, got {tp}")
    decays = ("adamw", "lion", "adam_mini", "muon")
    if cfg["train"].get("weight_decay", 0) > 0 and cfg["train"]["optimizer"] not in decays:
        raise InputError(f"config key train.weight_decay: applies to {', '.join(decays)} only, "
                         f"not {cfg['train']['optimizer']}")
    if cfg["model"]["mlp_hidden"] > 0 and cfg["model"]["parametrization"] != "full":
        raise InputError("config key model.parametrization: must be full when model.mlp_hidden > 0, "
                         f"got {_show(cfg['model']['parametrization'])}")
    return cfg


def resolve_device(name):
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name}: CUDA requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


# ----------------------------------------------------------------------------- model and data
def seed_all(s):
    np.random.seed(s)
    torch.manual_seed(s)


class LinearTransformer(nn.Module):
    """The authors' model: one `allparam` [L,H,2,p,p] (p = d, or d+1 for full), optional MLP."""

    def __init__(self, cfg):
        super().__init__()
        m = cfg["model"]
        L, H, d = m["layers"], m["heads"], m["dim"]
        p = d + 1 if m["parametrization"] == "full" else d
        self.restricted = m["parametrization"] == "restricted"
        self.softmax = m["attention"] == "softmax"
        # Init order is part of the protocol: allparam first, then Linear(d,h), Linear(h,d).
        self.allparam = nn.Parameter(torch.zeros([L, H, 2, p, p]).normal_(0, m["init_std"]))
        if m["mlp_hidden"] > 0:
            h = m["mlp_hidden"]
            self.mlp = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d))
        else:
            self.mlp = None

    def forward(self, Z, yq):
        """The single forward: returns the mean squared loss of the read-out on the query row."""
        B, n1, d1 = Z.shape
        n, d = n1 - 1, d1 - 1
        if self.mlp is not None:
            Z = torch.cat([self.mlp(Z[:, :, :d]), Z[:, :, d:]], -1)
        mask = torch.ones(n + 1, dtype=Z.dtype, device=Z.device)
        mask[n] = 0
        M = torch.diag(mask)
        corner = torch.zeros(d + 1, d + 1, dtype=Z.dtype, device=Z.device)
        corner[d, d] = 1
        L, H = self.allparam.shape[0], self.allparam.shape[1]
        for l in range(L):
            acc = None
            for h in range(H):
                P, Q = self.allparam[l, h, 0], self.allparam[l, h, 1]
                if self.restricted:  # P~ = [[P,0],[0,1]], Q~ = [[Q,0],[0,0]], differentiably
                    Pt, Qt = F.pad(P, (0, 1, 0, 1)) + corner, F.pad(Q, (0, 1, 0, 1))
                else:
                    Pt, Qt = P, Q
                S = torch.einsum('BNi,ij,BMj->BNM', Z, Qt, Z)
                if self.softmax:
                    S = S.softmax(-1)
                K = torch.einsum('ij,BNj->BNi', Pt, Z)
                A = torch.einsum('BNM,ML,BLi->BNi', S, M, K)
                acc = A / n if acc is None else acc + A / n
            Z = Z + acc
        return ((Z[:, n, d] + yq) ** 2).mean()


def build_teacher(cfg):
    """Fixed random ReLU MLP d -> teacher_hidden -> d, built right after seeding with teacher_seed."""
    d, th = cfg["model"]["dim"], cfg["data"]["teacher_hidden"]
    seed_all(cfg["data"]["teacher_seed"])
    return nn.Sequential(nn.Linear(d, th), nn.ReLU(), nn.Linear(th, d)).requires_grad_(False)


def draw_batch(cfg, B, teacher=None):
    """One batch of B prompts on the CPU generator (float32), in the protocol's order."""
    d, n, setting = cfg["model"]["dim"], cfg["data"]["context"], cfg["data"]["setting"]
    normal = lambda *shape: torch.empty(shape).normal_(0, 1)
    if setting == "mlp_teacher":
        X, Xq, W = normal(B, n, d), normal(B, 1, d), normal(B, d)
    else:
        W = normal(B, d)
        X = normal(B, n, d)
        Xq = normal(B, 1, d)
    if setting in ("sphere", "gamma"):
        X = X / torch.linalg.vector_norm(X, dim=-1, keepdim=True)
        Xq = Xq / torch.linalg.vector_norm(Xq, dim=-1, keepdim=True)
    if setting == "gamma":  # numpy draws come after the three torch draws
        k = cfg["data"]["gamma_shape"]
        # The authors' scale is `(10/shape_k)**(0.5)`: C pow(x, 0.5), which is not always
        # math.sqrt(x) (equal for k = 0.1, where 10/k = 100.0).
        g = np.random.gamma(k, (10 / k) ** 0.5, size=(B, n))
        gq = np.random.gamma(k, (10 / k) ** 0.5, size=(B, 1))
        X = X * torch.from_numpy(g).float().sqrt().unsqueeze(-1)
        Xq = Xq * torch.from_numpy(gq).float().sqrt().unsqueeze(-1)
    with torch.no_grad():
        FX, FXq = (teacher(X), teacher(Xq)) if teacher is not None else (X, Xq)
    y = torch.einsum('bni,bi->bn', FX, W)
    yq = torch.einsum('bni,bi->bn', FXq, W)[:, 0]
    Z = torch.cat([torch.cat([X, y.unsqueeze(-1)], -1),
                   torch.cat([Xq, torch.zeros(B, 1, 1)], -1)], 1)
    return Z, yq


def concat_norm(tensors):
    """Norm of the concatenated tensors: the authors' logged gradient norm (`grad.norm()` of the
    single `allparam`, `torch.norm(torch.cat(grads))` for the MLP variant); train, analyze and
    noise all report this one."""
    return torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in tensors]))


# ----------------------------------------------------------------------------- optimizers
# train.optimizer beyond the paper's two (docs/spec.md writes each one's equations). adamw and
# muon are torch.optim's own; the others are written from their papers op for op as the Rust side
# computes them (src/optim), with ops both sides can express: PyTorch's `add_(x, alpha=a)` fuses
# a multiply-add that tch cannot call, so a scaled sum is a `lerp_` or a product then a sum.


def blocks(model):
    """The blocks of adam_mini and muon, in state_dict order: each P and Q of each layer and head
    (as (allparam, (l, h, j)): a 2-D slice), then each MLP weight and bias (as (tensor, ()))."""
    A = model.allparam
    out = [(A, (l, h, j)) for l in range(A.shape[0]) for h in range(A.shape[1]) for j in range(2)]
    if model.mlp is not None:
        out += [(p, ()) for p in model.mlp.parameters()]
    return out


class HeavyBall:
    """Kunstner et al. (ICLR 2023), sign descent and normalized GD with momentum, as their code
    (explib/optim/normalized_gd.py) runs them: the direction d = sign(g) (`sign`) or g / ||g||
    with ||g|| the l2 norm of all gradients concatenated (`normalized`), then torch's heavy-ball
    momentum on d (buf = d at the first step, then buf = mu*buf + d), and p -= lr*buf."""

    def __init__(self, params, lr, momentum, normalized):
        self.params, self.lr, self.momentum, self.normalized = params, lr, momentum, normalized
        self.bufs = [None] * len(params)

    @torch.no_grad()
    def step(self):
        grads = [p.grad for p in self.params]
        if self.normalized:
            norm = concat_norm(grads)
            ds = [g / norm for g in grads]
        else:
            ds = [torch.sign(g) for g in grads]
        for i, (p, d) in enumerate(zip(self.params, ds)):
            if self.momentum != 0:
                if self.bufs[i] is None:
                    self.bufs[i] = torch.clone(d).detach()
                else:
                    self.bufs[i].mul_(self.momentum).add_(d)
                d = self.bufs[i]
            p.add_(d, alpha=-self.lr)

    def zero_grad(self):
        for p in self.params:
            p.grad = None


class Lion:
    """Lion (Chen et al., 2023): c = b1*m + (1-b1)*g; p *= 1 - lr*wd; p -= lr*sign(c);
    m = b2*m + (1-b2)*g. The two convex combinations are lerps (m.lerp(g, 1-b))."""

    def __init__(self, params, lr, betas, weight_decay):
        self.params, self.lr, self.betas, self.wd = params, lr, betas, weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for p, m in zip(self.params, self.exp_avg):
            g = p.grad
            update = m.lerp(g, 1 - b1).sign_()
            p.mul_(1 - self.lr * self.wd)
            p.add_(update, alpha=-self.lr)
            m.lerp_(g, 1 - b2)

    def zero_grad(self):
        for p in self.params:
            p.grad = None


class AdamMini:
    """Adam-mini (Zhang et al., 2024; the official code's one-value-per-tensor branch, with the
    blocks of `blocks`): m per parameter, one second moment v per block, the mean of g*g over the
    block; decoupled weight decay (none on biases, as the official code); Adam's bias corrections
    and eps outside the square root."""

    def __init__(self, model, lr, betas, eps, weight_decay):
        self.model, self.lr, self.betas, self.eps, self.wd = model, lr, betas, eps, weight_decay
        self.blocks = blocks(model)
        self.m = [torch.zeros_like(p[i]) for p, i in self.blocks]
        self.v = [torch.zeros((), dtype=p.dtype, device=p.device) for p, _ in self.blocks]
        self.decays = [p.dim() != 1 for p, i in self.blocks]  # MLP biases are the 1-D tensors
        self.t = 0

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        self.t += 1
        bias_correction1 = 1 - b1 ** self.t
        bias_correction2_sqrt = math.sqrt(1 - b2 ** self.t)
        for (p, i), m, v, decays in zip(self.blocks, self.m, self.v, self.decays):
            param, g = p[i], p.grad[i]
            mean_sq = torch.sum(g * g) / g.numel()
            if decays and self.wd > 0:
                param.mul_(1 - self.lr * self.wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).add_(mean_sq * (1 - b2))
            h = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
            stepsize = (1 / bias_correction1) / h
            update = m * stepsize
            update.mul_(self.lr)
            param.add_(-update)

    def zero_grad(self):
        self.model.zero_grad(set_to_none=True)


class MuonWithAdamW:
    """torch.optim.Muon on every P and Q (2-D slices of allparam, given to Muon as leaf views of
    its storage) and the MLP's weight matrices; torch.optim.AdamW on the MLP's biases, as Muon's
    documentation advises. Both take the run's lr and weight_decay; Muon its momentum (Nesterov,
    its Newton-Schulz coefficients and steps, its default lr adjustment), AdamW its betas and eps."""

    def __init__(self, model, t):
        self.model = model
        mats = [(p, i) for p, i in blocks(model) if len(i) == 3 or p.dim() == 2]
        self.views = [(p, i, p.data[i] if i else p) for p, i in mats]
        biases = [p for p, i in blocks(model) if not i and p.dim() == 1]
        self.muon = torch.optim.Muon([v for _, _, v in self.views], lr=t["lr"],
                                     weight_decay=t.get("weight_decay", 0.0),
                                     momentum=t["momentum"], nesterov=True)
        self.adamw = torch.optim.AdamW(biases, lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"],
                                       weight_decay=t.get("weight_decay", 0.0)) if biases else None

    @torch.no_grad()
    def step(self):
        for p, i, v in self.views:
            if i:
                v.grad = p.grad[i]
        self.muon.step()
        if self.adamw is not None:
            self.adamw.step()

    def zero_grad(self):
        self.model.zero_grad(set_to_none=True)
        for _, i, v in self.views:
            if i:
                v.grad = None


def make_optimizer(t, model):
    """The optimizer `train.optimizer` names, over the model's parameters (state_dict order)."""
    params, kind = list(model.parameters()), t["optimizer"]
    wd = t.get("weight_decay", 0.0)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"])
    if kind in ("adam", "adamw"):
        # train.ipynb uses AdamW(weight_decay=0); nonlinear_regression.ipynb uses Adam. With
        # weight_decay 0 the two run the same update (AdamW is Adam with
        # decoupled_weight_decay=True, and the decay branch is skipped at 0).
        return torch.optim.AdamW(params, lr=t["lr"], betas=tuple(t["betas"]), eps=t["eps"],
                                 weight_decay=wd if kind == "adamw" else 0)
    if kind in ("sign", "normalized"):
        return HeavyBall(params, t["lr"], t["momentum"], kind == "normalized")
    if kind == "lion":
        return Lion(params, t["lr"], t["betas"], wd)
    if kind == "adam_mini":
        return AdamMini(model, t["lr"], t["betas"], t["eps"], wd)
    if kind == "muon":
        return MuonWithAdamW(model, t)
    raise AssertionError(kind)


class Run:
    """Everything one training run needs: teacher, seeded init, optimizer (mode is always faithful:
    data is drawn on the CPU generator and then moved to the device)."""

    def __init__(self, cfg, device):
        self.cfg, self.device, t = cfg, device, cfg["train"]
        # Teacher first (it seeds with teacher_seed), then seed(s), init, and the loop's draws.
        self.teacher = build_teacher(cfg) if cfg["data"]["setting"] == "mlp_teacher" else None
        seed_all(t["seed"])
        self.model = LinearTransformer(cfg).to(device)
        self.params = list(self.model.parameters())  # state_dict order
        self.opt = make_optimizer(t, self.model)
        self.t, self.train_set = 0, None

    def batch(self):
        """The batch of this iteration: fresh prompts (the paper's protocol), or with
        data.train_prompts = N the prompts (t*B + i) mod N of the training set, drawn as one batch
        of N prompts at the first step (where the protocol draws the first batch)."""
        d = self.cfg["data"]
        n_set, B = d.get("train_prompts", 0), d["batch"]
        if n_set == 0:
            return draw_batch(self.cfg, B, self.teacher)
        if self.train_set is None:
            self.train_set = draw_batch(self.cfg, n_set, self.teacher)
        at = torch.arange(self.t * B, self.t * B + B) % n_set
        return self.train_set[0][at], self.train_set[1][at]

    def step(self):
        """One iteration; returns (loss, grad_norm) as Python floats of the float32 values.
        When either is not finite nothing is updated (the caller skips the step or stops)."""
        Z, yq = self.batch()
        self.t += 1
        loss = self.model(Z.to(self.device), yq.to(self.device))
        loss.backward()
        grads = [p.grad for p in self.params]
        gn = concat_norm(grads)  # float32 0-dim; logged, and the threshold clip's norm
        loss_f, gn_f = float(loss.detach()), float(gn)
        if math.isfinite(loss_f) and math.isfinite(gn_f):
            c, mode = self.cfg["train"]["clip"], self.cfg["train"]["clip_mode"]
            if c > 0 and mode == "threshold":
                # train.ipynb clip_and_step: `if norm_p > clip_threshold:
                # grad_all.mul_(clip_threshold/norm_p)`. The comparison is float32 (c rounded to
                # float32); `c / gn` is Tensor.__rtruediv__ = gn.reciprocal() * c, a float32
                # 0-dim tensor that multiplies every gradient.
                if gn > c:
                    coef = c / gn
                    for g in grads:
                        g.mul_(coef)
            elif c > 0:
                # nonlinear_regression.ipynb: clip_grad_norm_ after the logged norm was taken.
                torch.nn.utils.clip_grad_norm_(self.params, c)
            self.opt.step()
        self.opt.zero_grad()
        return loss_f, gn_f

    def snapshot(self):
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


# ----------------------------------------------------------------------------- output helpers
def fmt(v, dtype=torch.float32):
    """Shortest round-trip positional decimal (Rust `{}`), NaN/inf/-inf for non-finite."""
    v = float(v.detach()) if torch.is_tensor(v) else float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    x = np.float32(v) if dtype == torch.float32 else np.float64(v)
    return np.format_float_positional(x, unique=True, trim='-')


def atomic_write(path, write):
    """write(tmp_path) into a temp file in the same directory, then os.replace onto path."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text):
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, w)


def write_csv(path, header, rows):
    write_text(path, "\n".join([header] + [",".join(r) for r in rows]) + "\n")


def make_out_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {path}: cannot create directory: {e.strerror}")


# ----------------------------------------------------------------------------- subcommands
def cmd_train(args):
    cfg = load_config(args.config, args.set)
    if args.device is not None:
        cfg["train"]["device"] = _check("train.device", args.device)
    device = resolve_device(cfg["train"]["device"])
    make_out_dir(args.out)
    write_text(os.path.join(args.out, "config.yaml"), yaml.safe_dump(cfg, sort_keys=False))
    t_cfg = cfg["train"]
    t0 = time.perf_counter()
    run = Run(cfg, device)
    rows, saved, steps, diverged_at = [], [], [], None
    # train.skip_nonfinite: a step whose loss or gradient norm is not finite makes no update
    # (as torch.amp.GradScaler skips it); more than that many in a row and the run has diverged.
    skip, in_a_row = t_cfg.get("skip_nonfinite", 0), 0
    for t in range(t_cfg["iters"]):
        if t % t_cfg["save_every"] == 0:  # step t = parameters before update t
            saved.append(run.snapshot())
            steps.append(t)
        loss_f, gn_f = run.step()
        rows.append([str(t), fmt(loss_f), fmt(gn_f)])
        in_a_row = 0 if math.isfinite(loss_f) and math.isfinite(gn_f) else in_a_row + 1
        if in_a_row > skip:
            diverged_at = t
            break
    # Last entry: the final parameters (step `iters`), or, on divergence at t, the parameters
    # before update t (never updated with the non-finite gradient).
    last = t_cfg["iters"] if diverged_at is None else diverged_at
    if not steps or steps[-1] != last:
        saved.append(run.snapshot())
        steps.append(last)
    wall = time.perf_counter() - t0
    out = lambda name: os.path.join(args.out, name)
    write_csv(out("metrics.csv"), "iter,train_loss,grad_norm", rows)
    traj = {k: torch.stack([s[k] for s in saved]).contiguous() for k in saved[0]}
    traj["step"] = torch.tensor(steps, dtype=torch.int64)
    atomic_write(out("trajectory.safetensors"), lambda p: save_file(traj, p))
    atomic_write(out("final.safetensors"), lambda p: save_file(saved[-1], p))
    summary = {"status": "completed" if diverged_at is None else "diverged",
               "diverged_at": diverged_at, "iters_done": last, "wall_time_s": wall,
               "device": str(device), "side": SIDE}
    write_text(out("summary.json"), json.dumps(summary) + "\n")
    if diverged_at is not None:
        print(f"diverged at iteration {diverged_at} (loss or gradient not finite)", file=sys.stderr)
        return 3
    return 0


def eval_batch(cfg):
    """The eval batch: teacher (own seed) first, then re-seed with eval_seed and draw one batch."""
    teacher = build_teacher(cfg) if cfg["data"]["setting"] == "mlp_teacher" else None
    seed_all(cfg["data"]["eval_seed"])
    return draw_batch(cfg, cfg["data"]["batch"], teacher)


def flat_loss(model, Z, yq):
    """The function the Hessian is taken of: the loss on (Z, yq) of ONE flat vector holding all
    parameters in state_dict order. Returns (names, unflatten, loss_of_flat)."""
    names = list(model.state_dict().keys())
    shapes = [model.state_dict()[k].shape for k in names]

    def unflatten(flat):
        out, o = {}, 0
        for k, s in zip(names, shapes):
            out[k] = flat[o:o + s.numel()].view(s)
            o += s.numel()
        return out

    def loss_of_flat(flat):
        return torch.func.functional_call(model, unflatten(flat), (Z, yq))

    return names, unflatten, loss_of_flat


def hessian_blocks(model):
    """(name, first index, size) of each block of the flat parameter vector, as Adam-mini's:
    each P and Q of each layer and head (allparam[l, h, 0] and [l, h, 1]), then each other
    parameter (the MLP's weights and biases) whole."""
    out, o = [], 0
    for k, v in model.state_dict().items():
        if k == "allparam":
            L, H, _, s, _ = v.shape
            for l in range(L):
                for h in range(H):
                    for which in "PQ":
                        out.append((f"{which}.l{l}.h{h}", o, s * s))
                        o += s * s
        else:
            out.append((k, o, v.numel()))
            o += v.numel()
    return out


def block_heterogeneity(spectra, num_bins=10000, sigma_squared=1e-5, overhead=0.01):
    """Zhang et al.'s mean pairwise Jensen-Shannon distance between the blocks' spectral
    densities, each smoothed as PyHessian's density_generate does (Gaussians of variance
    sigma_squared * max(1, range), normalised), on one grid spanning all blocks; each Gaussian
    is integrated over the bins (a difference of erf), as docs/spec.md defines it. A block whose
    sub-Hessian is exactly zero (the loss does not depend on it) is left out."""
    spectra = [e for e in spectra if np.any(np.asarray(e) != 0.0)]
    if len(spectra) < 2 or not all(np.isfinite(e).all() for e in spectra):
        return float("nan")
    lo = min(e.min() for e in spectra) - overhead
    hi = max(e.max() for e in spectra) + overhead
    scale = math.sqrt(2.0 * sigma_squared * max(1.0, hi - lo))
    width = (hi - lo) / num_bins
    edges = lo + np.arange(num_bins + 1) * width
    dens = []
    for e in spectra:
        d = np.zeros(num_bins)
        for lam in e:
            c = torch.erf(torch.from_numpy((edges - lam) / scale)).numpy()
            d += 0.5 * (c[1:] - c[:-1])
        dens.append(d / d.sum())

    def js(p, q):
        m = 0.5 * (p + q)
        kl = lambda a: np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0))
        return np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0))

    pairs = [js(dens[i], dens[j]) for i in range(len(dens)) for j in range(i + 1, len(dens))]
    return float(np.mean(pairs))


def cmd_analyze(args):
    if args.every < 1:
        raise InputError(f"--every: must be >= 1, got {args.every}")
    cfg_path, traj_path = (os.path.join(args.dir, f) for f in ("config.yaml", "trajectory.safetensors"))
    for p in (cfg_path, traj_path):
        if not os.path.isfile(p):
            raise InputError(f"analyze {args.dir}: missing {os.path.basename(p)}")
    cfg = load_config(cfg_path)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    model = LinearTransformer(cfg).to(dtype)  # its init is overwritten, so it may use the RNG
    Z, yq = (x.to(dtype) for x in eval_batch(cfg))
    try:
        traj = load_file(traj_path)
    except Exception as e:
        raise InputError(f"analyze {args.dir}: cannot read trajectory.safetensors: {e}")
    names, unflatten, loss_of_flat = flat_loss(model, Z, yq)
    for k in names + ["step"]:
        if k not in traj:
            raise InputError(f"analyze {args.dir}: trajectory.safetensors lacks {k!r} for this config")
    steps = traj["step"].tolist()
    index = {t: i for i, t in enumerate(steps)}
    theta = lambda i: torch.cat([traj[k][i].to(dtype).reshape(-1) for k in names])

    rows, spectrum_rows = [], []
    blocks = hessian_blocks(model)
    for i, t in enumerate(steps):
        if t % args.every:
            continue
        flat = theta(i)
        model.load_state_dict(unflatten(flat))
        loss = model(Z, yq)
        gn = concat_norm(torch.autograd.grad(loss, list(model.parameters())))
        # Default: one reverse-over-reverse row at a time (what a row-by-row Rust loop mirrors).
        # --vectorize batches the rows with vmap: several times faster for the MLP variant, equal
        # to the loop only to ~1e-7 relative.
        H = torch.autograd.functional.hessian(loss_of_flat, flat, vectorize=args.vectorize)
        diag = H.diagonal().abs()
        # torch.median: the LOWER of the two middle values for an even count (used as is).
        cond = diag.max() / torch.median(diag)
        ds = ""
        if t + 1 in index:
            delta = theta(index[t + 1]) - flat
            u = delta / torch.linalg.vector_norm(delta)
            ds = fmt(torch.dot(u, torch.mv(H, u)), dtype)
        try:
            lam = torch.linalg.eigvalsh(H)  # ascending
            lam_abs = lam.abs()
            cond_eig, sharp = fmt(lam_abs.max() / torch.median(lam_abs), dtype), fmt(lam[-1], dtype)
        except RuntimeError:  # non-finite Hessian (diverged run)
            cond_eig, sharp = "NaN", "NaN"
        het = ""
        if args.spectrum:
            Hd = H.detach().to(torch.float64)
            if torch.isfinite(Hd).all():
                spectra = [torch.linalg.eigvalsh(Hd).numpy()]
                spectra += [torch.linalg.eigvalsh(Hd[o:o + n, o:o + n]).numpy() for _, o, n in blocks]
                het = repr(block_heterogeneity(spectra[1:]))
                for name, eigs in zip(["all"] + [b[0] for b in blocks], spectra):
                    spectrum_rows += [[str(t), name, repr(float(x))] for x in eigs]
            else:
                het = "NaN"
        rows.append([str(t), fmt(loss, dtype), fmt(gn, dtype), ds, fmt(cond, dtype), cond_eig, sharp, het])
    write_csv(os.path.join(args.dir, "measurements.csv"),
              "iter,test_loss,grad_norm,dir_smoothness,condition_number,condition_number_eig,sharpness,"
              "block_heterogeneity",
              rows)
    if args.spectrum:
        write_csv(os.path.join(args.dir, "spectrum.csv"), "iter,block,eigenvalue", spectrum_rows)
    return 0


def cmd_noise(args):
    cfg = load_config(args.config, args.set)
    if args.device is not None:
        cfg["train"]["device"] = _check("train.device", args.device)
    if args.samples < 1 or args.full_batch < 1:
        raise InputError(f"--samples and --full-batch: must be >= 1, got {args.samples} and {args.full_batch}")
    device = resolve_device(cfg["train"]["device"])
    make_out_dir(args.out)
    run = Run(cfg, device)  # teacher, seed(train.seed), init, exactly as training starts
    model, params, B, N = run.model, run.params, cfg["data"]["batch"], args.full_batch
    Zf, yqf = draw_batch(cfg, N, run.teacher)  # one call per tensor with the full N
    # Full gradient of the mean loss over N, in chunks of B prompts (rows [cB, cB+B)): each chunk's
    # mean loss is weighted by |chunk|/N before backward and the gradients accumulate in .grad.
    for c in range(0, N, B):
        Zc, yqc = Zf[c:c + B].to(device), yqf[c:c + B].to(device)
        (model(Zc, yqc) * (Zc.shape[0] / N)).backward()
    g_full = [p.grad.detach().clone() for p in params]
    run.opt.zero_grad()
    del Zf, yqf
    rows = []
    for _ in range(args.samples):
        Z, yq = draw_batch(cfg, B, run.teacher)
        gb = torch.autograd.grad(model(Z.to(device), yq.to(device)), params)
        rows.append([fmt(concat_norm([a - b for a, b in zip(gb, g_full)]))])
    write_csv(os.path.join(args.out, "noise.csv"), "noise", rows)
    return 0


def cmd_bench(args):
    cfg = load_config(args.config, args.set)
    if args.device is not None:
        cfg["train"]["device"] = _check("train.device", args.device)
    if args.steps < 1 or args.warmup < 0 or (args.ensemble is not None and args.ensemble < 1):
        raise InputError("--steps must be >= 1, --warmup >= 0 and --ensemble >= 1")
    device = resolve_device(cfg["train"]["device"])
    if args.ensemble is None:
        cfgs = [cfg]
    else:  # seeds 0..K/2 x {sgd, adam}: run i has seed i//2 and optimizer sgd (even) / adam (odd)
        cfgs = []
        for i in range(args.ensemble):
            c = copy.deepcopy(cfg)
            c["train"]["seed"], c["train"]["optimizer"] = i // 2, ("sgd", "adam")[i % 2]
            cfgs.append(c)
    total = 0.0
    for c in cfgs:  # one after another; only the N timed steps of each run count
        run = Run(c, device)
        for _ in range(args.warmup):
            run.step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run.step()  # reads loss and grad_norm as floats, which also syncs a GPU
        total += time.perf_counter() - t0
    # Peak resident memory of this process (ru_maxrss is in KiB on Linux), for `linattn bench`.
    peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"ms_per_step": total * 1000 / args.steps, "side": SIDE,
                      "device": str(device), "threads": torch.get_num_threads(),
                      "peak_rss_kb": peak_rss_kb}))
    return 0


def cmd_bench_hessian(args):
    """Times R_med at the config's initialisation (seed, init, eval batch) with
    torch.autograd.functional.hessian, as analyze computes it; prints one JSON line."""
    cfg = load_config(args.config, args.set)
    if args.device is not None:
        cfg["train"]["device"] = _check("train.device", args.device)
    if args.repeats < 1:
        raise InputError(f"--repeats: must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads: must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = resolve_device(cfg["train"]["device"])
    # The Rust side's train.dtype (float64 in fast mode), given as --dtype: the init as drawn in
    # float32, then the Hessian in the run's dtype, as the Rust side computes it.
    dtype = torch.float64 if "float64" in (args.dtype, cfg["train"].pop("dtype", None)) else torch.float32
    model = Run(cfg, device).model.to(dtype)
    Z, yq = (x.to(device, dtype) for x in eval_batch(cfg))
    names, _, loss_of_flat = flat_loss(model, Z, yq)
    flat = torch.cat([model.state_dict()[k].detach().reshape(-1) for k in names])

    def condition_number():
        H = torch.autograd.functional.hessian(loss_of_flat, flat)
        diag = H.diagonal().abs()
        return float(diag.max() / torch.median(diag))  # float() also waits for a GPU

    cond = condition_number()  # warm-up, untimed
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        condition_number()
        times.append((time.perf_counter() - t0) * 1000)
    times_sorted, m = sorted(times), len(times) // 2
    median = times_sorted[m] if len(times) % 2 else (times_sorted[m - 1] + times_sorted[m]) / 2
    # Strict JSON: a non-finite condition number (a median diagonal of 0) as the string
    # "inf" or "nan", which the Rust side parses as a float.
    print(json.dumps({"ms": median, "min_ms": times_sorted[0], "ms_each": times,
                      "condition_number": cond if math.isfinite(cond) else str(cond),
                      "num_params": flat.numel(), "side": SIDE, "device": str(device),
                      "threads": torch.get_num_threads()}, allow_nan=False))
    return 0


# ----------------------------------------------------------------------------- CLI
class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print usage and a second line)
        raise InputError(f"{self.prog}: {message}")


def build_parser():
    ap = Parser(prog="pytorch_reference.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def config_args(p):
        p.add_argument("--config", default=None, help="YAML config (defaults when omitted)")
        p.add_argument("--set", action="append", default=[], metavar="K=V",
                       help="override section.key=value (value parsed as YAML)")
        p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (overrides train.device)")

    p = sub.add_parser("train", help="train one run and write its outputs into --out")
    config_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("analyze", help="Hessian statistics of a train run directory (writes DIR/measurements.csv)")
    p.add_argument("dir")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--vectorize", action="store_true",
                   help="vmap the Hessian's rows (faster; not bit-identical to the default loop)")
    p.add_argument("--spectrum", action="store_true",
                   help="block spectra into DIR/spectrum.csv and block_heterogeneity into measurements.csv")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("noise", help="stochastic-gradient noise ||g_B - g|| at initialisation")
    config_args(p)
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--full-batch", type=int, default=100000)
    p.add_argument("--out", default=".")
    p.set_defaults(func=cmd_noise)
    p = sub.add_parser("bench", help="time training steps; prints one JSON line")
    config_args(p)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--ensemble", type=int, default=None)
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("bench-hessian", help="time the condition number at init; prints one JSON line")
    config_args(p)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench_hessian)
    return ap


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "train")
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback: one line naming the exception
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

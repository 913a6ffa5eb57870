"""App. B's MLP variant: the authors' own training loop against a faithful linattn run, step by
step, bit for bit (the loss and the logged gradient norm of every iteration).

The authors' side is `train_transformer` of `nonlinear_regression.ipynb`, from a copy of
chengxiang/LinearTransformer that the caller fetched (nothing of it is in this repository),
executed as written on the CPU: `.cuda()` is made a no-op and matplotlib a stub, since the
notebook imports it. Its logged norm is `torch.cat([p.grad.view(-1) ...]).norm()` at the
moment the notebook computes its `gradient`, just before `clip_grad_norm_`.

    python experiments/authors_mlp_check.py --authors /path/to/LinearTransformer \
        --bin target/release/linattn --optimizer adam --lr 0.01 --iters 150
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def authors_run(authors, optimizer, lr, iters, threads):
    """(loss, grad norm) per iteration of the notebook's train_transformer, seed 0."""
    import torch

    for name in ("matplotlib", "matplotlib.pyplot"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.set_num_threads(threads)
    with open(os.path.join(authors, "nonlinear_regression.ipynb")) as f:
        nb = json.load(f)
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    first = next(c for c in cells if "def train_transformer" in c)
    # The definitions, the teacher and train_transformer; not the tuning loop after them.
    first = first[: first.index("# Tuning learning rate")]
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def logging_clip(params, max_norm, *a, **k):
        params = list(params)
        norms.append(torch.cat([p.grad.view(-1) for p in params]).norm().item())
        return clip(params, max_norm, *a, **k)

    torch.nn.utils.clip_grad_norm_ = logging_clip
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # it writes its log_nonlinear/ there
        try:
            ns = {}
            exec(first, ns)
            losses = ns["train_transformer"](optimizer, lr, iters, 0, ns["randomMLP"])
        finally:
            os.chdir(cwd)
    return list(zip(losses, norms))


def linattn_run(binary, optimizer, lr, iters, threads):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        subprocess.run(
            [binary, "train", "--config", os.path.join(HERE, "settings", "mlp_variant.yaml"),
             "--set", f"train.optimizer={optimizer}", "--set", f"train.lr={lr}",
             "--set", f"train.iters={iters}", "--set", "train.seed=0",
             "--threads", str(threads), "--out", out],
            check=True, capture_output=True)
        with open(os.path.join(out, "metrics.csv")) as f:
            rows = [line.strip().split(",") for line in f.readlines()[1:]]
    return [(float(r[1]), float(r[2])) for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", required=True)
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "linattn"))
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import numpy as np

    theirs = authors_run(args.authors, args.optimizer, args.lr, args.iters, args.threads)
    ours = linattn_run(args.bin, args.optimizer, args.lr, args.iters, args.threads)
    f32 = np.float32
    same_loss = sum(f32(a[0]) == f32(b[0]) for a, b in zip(theirs, ours))
    same_norm = sum(f32(a[1]) == f32(b[1]) for a, b in zip(theirs, ours))
    worst = max(abs(float(f32(a[1])) - float(f32(b[1]))) / abs(float(f32(a[1])))
                for a, b in zip(theirs, ours))
    print(f"{args.optimizer} lr {args.lr}, {args.iters} iterations, {args.threads} thread(s): "
          f"losses bit-identical {same_loss}/{len(theirs)}, gradient norms {same_norm}/{len(theirs)}, "
          f"largest relative norm difference {worst:.2e}")
    sys.exit(0 if same_loss == same_norm == len(theirs) == len(ours) else 1)


if __name__ == "__main__":
    main()

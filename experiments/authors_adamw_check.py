"""AdamW with weight decay: the authors' own training loop, its optimizer replaced by
`torch.optim.AdamW(weight_decay=λ)`, against a faithful linattn run with `train.optimizer:
adamw`, step by step, bit for bit (the loss, the gradient norm their clip computes, and the
parameters before every step).

The authors' side is `train.ipynb` from a copy of chengxiang/LinearTransformer that the caller
fetched (nothing of it is in this repository), its code cells executed as written on the CPU,
as `authors_bench.py` executes them: their module's names as their first cell imports them,
the hyperparameter cell with the run's values set after it (one seed, Adam, the iterations
asked for), their `clip_and_step`, and the training loop cell with one change, the one this
check is about:
`weight_decay=0` in their Adam line becomes `weight_decay=λ`. Their loop already builds Adam
as `torch.optim.AdamW(..., betas=(0.9, 0.9), weight_decay=0)`.

    python experiments/authors_adamw_check.py --authors /path/to/LinearTransformer \
        --bin target/release/linattn --weight-decay 0.1 --iters 300
"""
import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile

from authors_bench import authors_namespace, cell_with, code_cells

HERE = os.path.dirname(os.path.abspath(__file__))
ADAM_LINE = "optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.9), weight_decay=0)"


def authors_run(authors, lr, weight_decay, iters, threads, tmp):
    """(loss, clip norm) per iteration and the parameters before each step, seed 0."""
    import torch

    ns = authors_namespace(authors, threads)
    cells = code_cells(os.path.join(authors, "train.ipynb"))
    exec(cell_with(cells, "max_iters ="), ns)
    ns.update(max_iters=iters, seeds=[0], algos=["adam"], lrs=[lr], hist_stride=1,
              filename_format=os.path.join(tmp, "theirs_{}_{}_{}_{}_{}_lr{}_sd{}.pth"))
    exec(cell_with(cells, "def clip_and_step"), ns)
    losses, norms = [], []
    their_loss, their_step = ns["in_context_loss"], ns["clip_and_step"]

    def loss_recorded(*a, **k):
        loss = their_loss(*a, **k)
        losses.append(loss.item())
        return loss

    def step_recorded(*a, **k):
        norms.append(their_step(*a, **k))
        return norms[-1]

    ns["in_context_loss"], ns["clip_and_step"] = loss_recorded, step_recorded
    loop = cell_with(cells, "Train linear transformer")
    if loop.count(ADAM_LINE) != 1:
        sys.exit("authors_adamw_check: their Adam line is not as expected: " + ADAM_LINE)
    decayed = ADAM_LINE.replace("weight_decay=0)", f"weight_decay={weight_decay})")
    with contextlib.redirect_stdout(io.StringIO()):  # their progress lines
        exec(loop.replace(ADAM_LINE, decayed), ns)
    saved = [f for f in os.listdir(tmp) if f.startswith("theirs_")]
    hist = torch.load(os.path.join(tmp, saved[0]))["hist_list"]
    return list(zip(losses, norms)), [h.numpy() for h in hist]


def linattn_run(binary, lr, weight_decay, iters, threads, tmp):
    from safetensors.numpy import load_file

    out = os.path.join(tmp, "run")
    done = subprocess.run(
        [binary, "train", "--config", os.path.join(HERE, "settings", "setting1_normal_n20.yaml"),
         "--set", "train.optimizer=adamw", "--set", f"train.lr={lr}",
         "--set", f"train.weight_decay={weight_decay}", "--set", f"train.iters={iters}",
         "--set", "train.seed=0", "--set", "train.save_every=1",
         "--threads", str(threads), "--out", out],
        capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"authors_adamw_check: linattn train failed:\n{done.stderr}")
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = [line.strip().split(",") for line in f.readlines()[1:]]
    trajectory = load_file(os.path.join(out, "trajectory.safetensors"))["allparam"]
    return [(float(r[1]), float(r[2])) for r in rows], trajectory


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", required=True)
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "linattn"))
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        theirs, their_params = authors_run(args.authors, args.lr, args.weight_decay, args.iters,
                                           args.threads, tmp)
        ours, our_params = linattn_run(args.bin, args.lr, args.weight_decay, args.iters,
                                       args.threads, tmp)
    f32 = np.float32
    same_loss = sum(f32(a[0]) == f32(b[0]) for a, b in zip(theirs, ours))
    same_norm = sum(f32(a[1]) == f32(b[1]) for a, b in zip(theirs, ours))
    same_params = sum(np.array_equal(a, b) for a, b in zip(their_params, our_params))
    print(f"adamw lr {args.lr}, weight decay {args.weight_decay}, {args.iters} iterations, "
          f"{args.threads} thread(s): losses bit-identical {same_loss}/{len(theirs)}, "
          f"clip norms {same_norm}/{len(theirs)}, parameters before each step "
          f"{same_params}/{len(their_params)}")
    n = args.iters
    ok = same_loss == same_norm == len(theirs) == len(ours) == n and same_params == len(their_params) == n
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

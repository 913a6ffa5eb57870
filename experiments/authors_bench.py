"""The authors' own code against linattn, in one invocation, on this machine.

The authors' side is their code as they wrote it: `linear_transformer.py` imported from a copy
of chengxiang/LinearTransformer that the caller fetched (nothing of it is in this repository),
and the code cells of their notebooks executed as they are, with only their hyperparameter
variables set after their own hyperparameter cell (steps, seeds, sizes) and the device set to
the CPU:

- a training step: `train.ipynb`'s loop (SGD with momentum, B = 1000, clipping as they clip,
  a snapshot of the parameters every step), timed over `--steps` iterations of one run;
- one R_med Hessian: `plot_condition_number.ipynb`'s cell that loads the runs `train.ipynb`
  saved and takes `torch.autograd.functional.hessian` of its `eval_loss_hess` at iteration 0,
  for one SGD and one Adam run, timed and halved.

The linattn side is the binary given by `--bin`: its hidden `bench-worker` (fast mode, and a
12-member ensemble of 6 seeds x SGD/Adam, whose step is divided by 12) and `bench-hessian`
(the fast forward's Hessian). Each measurement is taken `--repeats` times, alternating the
sides, and the fastest of each is kept. Both sides get `--threads` threads.

    python experiments/authors_bench.py --authors /path/to/LinearTransformer \
        --bin target/release/linattn --threads 2
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SETTING1 = os.path.join(HERE, "settings", "setting1_normal_n20.yaml")
# Fig. 5's model: L = 8, d = 20, n = 60.
FIG5 = {"n_layer": 8, "d": 20, "N": 60}
FIG5_SETS = ["model.layers=8", "model.dim=20", "data.context=60"]


def code_cells(path):
    with open(path) as f:
        nb = json.load(f)
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def cell_with(cells, text):
    found = [c for c in cells if text in c]
    if len(found) != 1:
        sys.exit(f"authors_bench: expected one notebook cell with {text!r}, found {len(found)}")
    return found[0]


def authors_namespace(authors, threads):
    """What their notebooks' first cell provides (their module's names, torch, numpy, ...),
    without its plotting imports and with the CPU as the device."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, authors)
    import linear_transformer as lt

    return {
        "torch": torch, "np": np, "nn": torch.nn, "os": os, "sys": sys, "time": time,
        "Transformer_F": lt.Transformer_F, "attention": lt.attention,
        "generate_data": lt.generate_data, "in_context_loss": lt.in_context_loss,
        "generate_data_inplace": lt.generate_data_inplace, "device": torch.device("cpu"),
    }


def authors_train(authors, ns, overrides):
    """Runs train.ipynb's cells with `overrides` set after its hyperparameter cell, in the
    current folder (where it writes log/); returns the seconds of the training cell."""
    cells = code_cells(os.path.join(authors, "train.ipynb"))
    exec(cell_with(cells, "max_iters ="), ns)
    ns.update(overrides)
    stdout = sys.stdout
    try:
        exec(cell_with(cells, "filename_format ="), ns)  # their log file; stdout goes there
        exec(cell_with(cells, "def clip_and_step"), ns)
        start = time.perf_counter()
        exec(cell_with(cells, "Train linear transformer"), ns)
        return time.perf_counter() - start
    finally:
        ns["f"].close()
        sys.stdout = stdout


def authors_step_ms(authors, threads, steps, sizes):
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            ns = authors_namespace(authors, threads)
            s = authors_train(authors, ns, dict(max_iters=steps, seeds=[0], algos=["sgd"],
                                                lrs=[0.02], **sizes))
        finally:
            os.chdir(cwd)
    return 1000.0 * s / steps


def authors_hessian_ms(authors, threads):
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            ns = authors_namespace(authors, threads)
            run = dict(max_iters=1, seeds=[0], algos=["sgd", "adam"], lrs=[0.02])
            authors_train(authors, ns, run)
            cells = code_cells(os.path.join(authors, "plot_condition_number.ipynb"))
            exec(cell_with(cells, "stride ="), ns)
            ns.update(max_iters=1, stride=1, seeds=[0])
            start = time.perf_counter()
            exec(cell_with(cells, "def eval_loss_hess"), ns)
            seconds = time.perf_counter() - start
        finally:
            os.chdir(cwd)
    return 1000.0 * seconds / 2  # one SGD and one Adam run, one Hessian each


def linattn_ms(binary, threads, mode, sets, steps, warmup):
    cmd = [binary, "bench-worker", "--config", SETTING1, "--mode", mode,
           "--steps", str(steps), "--warmup", str(warmup), "--set", "train.optimizer=sgd"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["ms_per_step"]


def linattn_hessian_ms(binary, threads):
    cmd = [binary, "bench-hessian", "--config", SETTING1, "--set", "train.mode=fast",
           "--repeats", "3", "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    m = re.search(r"through the fast forward.*?rust median [0-9.]+ ms \(min ([0-9.]+)\)",
                  out.stdout)
    if not m:
        sys.exit(f"authors_bench: cannot read bench-hessian's output:\n{out.stdout}")
    return float(m.group(1))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", required=True, help="a copy of chengxiang/LinearTransformer")
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "linattn"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.authors, "linear_transformer.py")):
        sys.exit(f"authors_bench: {args.authors} holds no linear_transformer.py")
    best = {}

    def keep(name, ms):
        best[name] = min(ms, best.get(name, float("inf")))
        print(f"  {name}: {ms:.3f} ms", file=sys.stderr, flush=True)

    for _ in range(args.repeats):
        keep("authors, Setting 1 step", authors_step_ms(args.authors, args.threads, 300, {}))
        keep("linattn, Setting 1 fast step", linattn_ms(args.bin, args.threads, "fast", [], 300, 30))
        keep("linattn, 12-member ensemble step",
             linattn_ms(args.bin, args.threads, "ensemble", [], 200, 20))
        keep("authors, Fig. 5 model step", authors_step_ms(args.authors, args.threads, 20, FIG5))
        keep("linattn, Fig. 5 model fast step",
             linattn_ms(args.bin, args.threads, "fast", FIG5_SETS, 20, 3))
        keep("authors, R_med Hessian", authors_hessian_ms(args.authors, args.threads))
        keep("linattn, R_med Hessian (fast)", linattn_hessian_ms(args.bin, args.threads))
    rows = [
        ("Setting 1 step", best["authors, Setting 1 step"], best["linattn, Setting 1 fast step"], 15),
        ("12-member ensemble, per member-step", best["authors, Setting 1 step"],
         best["linattn, 12-member ensemble step"] / 12, 40),
        ("Fig. 5 model step", best["authors, Fig. 5 model step"],
         best["linattn, Fig. 5 model fast step"], 10),
        ("one R_med Hessian, Setting 1 at init", best["authors, R_med Hessian"],
         best["linattn, R_med Hessian (fast)"], 10),
    ]
    print(f"machine: {cpu_model()}; {args.threads} threads per side; fastest of {args.repeats}")
    print(f"{'what':<40} {'authors ms':>11} {'linattn ms':>11} {'ratio':>7} {'target':>7}")
    for what, a, l, target in rows:
        print(f"{what:<40} {a:>11.3f} {l:>11.3f} {a / l:>6.1f}x {target:>6}x")


if __name__ == "__main__":
    main()

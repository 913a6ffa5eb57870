"""Probe: which learning rates and initialisation scales keep every seed of a deep model
finite under the authors' rule (the first non-finite loss or gradient ends a run).

A probe point is (optimizer, learning rate, init scale); its seeds train as one batched
ensemble of `linattn train` (fast mode, float32, the figure's data). A point fails as soon
as one seed breaks, so by default the ensemble is stopped there (SIGTERM: it checkpoints and
can be resumed) and the other seeds' iterations so far are recorded; `--all-seeds` lets every
seed run to its own break. Points run `--jobs` at a time, and the probe is resumable: a
finished point is read back, an interrupted one resumes from its checkpoint.

Points are given in the order to run them, largest learning rate first: once a point keeps
every seed finite, the later points of that optimizer are not run, since the figure wants the
largest such rate (and the largest init scale).

Writes one CSV row per run, the same row as `collect` below; status "stopped" is a seed cut
short because another seed of its point broke.

    python3 experiments/probe_divergence.py --name L8 --set model.layers=8 \
        --points adam:0.0001:0.05,sgd:0.0005:0.05 --out runs/probe-L8 --csv probe-L8.csv
    python3 experiments/probe_divergence.py collect runs/probe-L8 runs/ --csv all.csv

`collect` writes one row per run folder it finds (a probe's, or a figure's runs folder):
its depth, dims, init scale, optimizer, lr, seed, iterations run, status, the first
non-finite step (where the authors' rule stops it) and how many non-finite steps it met.
"""
import argparse
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def metrics(folder: Path):
    try:
        with open(folder / "metrics.csv") as f:
            return [(int(r["iter"]), float(r["train_loss"]), float(r["grad_norm"])) for r in csv.DictReader(f)]
    except (FileNotFoundError, ValueError, KeyError):
        return []


def status(folder: Path):
    f = folder / "summary.json"
    return json.loads(f.read_text())["status"] if f.exists() else None


def broke_at(rows):
    return next((i for i, l, g in rows if not (math.isfinite(l) and math.isfinite(g))), None)


class Point:
    def __init__(self, args, text):
        o, lr, init = text.split(":")
        self.args, self.optimizer, self.lr, self.init = args, o, float(lr), float(init)
        self.out = Path(args.out) / f"{o}-lr{self.lr}-init{self.init}"
        self.folders = {s: self.out / f"{o}-seed{s}" for s in args.seeds}
        self.proc = None

    def broken(self):
        return any(broke_at(metrics(f)) is not None for f in self.folders.values())

    def settled(self):
        """Done: every seed finished, or (stopping at the first break) one seed broke."""
        states = [status(f) for f in self.folders.values()]
        if all(s in ("completed", "diverged") for s in states):
            return True
        return not self.args.all_seeds and self.broken() and self.proc is None

    def survived(self):
        return all(status(f) == "completed" for f in self.folders.values())

    def start(self):
        ckpt = next((f for f in self.folders.values() if (f / "checkpoint.safetensors").exists()), None)
        if ckpt is not None:
            cmd = [self.args.bin, "train", "--resume", str(ckpt)]
        else:
            cmd = [self.args.bin, "train", "--config", self.args.config, "--out", str(self.out), "--force",
                   "--seeds", ",".join(map(str, self.args.seeds)), "--optimizers", self.optimizer,
                   "--checkpoint-every", str(self.args.checkpoint_every),
                   "--set", "train.mode=fast", "--set", f"train.iters={self.args.iters}",
                   "--set", f"train.save_every={self.args.iters}", "--set", f"train.lr={self.lr}",
                   "--set", f"model.init_std={self.init}"]
            for s in self.args.set:
                cmd += ["--set", s]
        print("probe:", " ".join(cmd), flush=True)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)

    def poll(self):
        """True while the ensemble runs; stops it at the first break unless --all-seeds."""
        if self.proc.poll() is not None:
            self.proc = None
            return False
        if not self.args.all_seeds and self.broken():
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()
            self.proc = None
            return False
        return True

    def rows(self):
        return [run_row(f, Path(self.args.out)) for f in self.folders.values() if (f / "config.yaml").exists()]


def run_row(folder: Path, root: Path):
    """One run folder as a table row, read from its own config.yaml, metrics.csv, summary.json."""
    import yaml
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    m = metrics(folder)
    b = broke_at(m)
    tail = [l for _, l, _ in m[-500:] if math.isfinite(l)]
    st = status(folder)
    return {
        "run": str(folder.relative_to(root.parent)),
        "layers": cfg["model"]["layers"], "dim": cfg["model"]["dim"], "context": cfg["data"]["context"],
        "init_std": cfg["model"]["init_std"], "optimizer": cfg["train"]["optimizer"], "lr": cfg["train"]["lr"],
        "seed": cfg["train"]["seed"], "iters": cfg["train"]["iters"], "iters_run": len(m),
        "status": st if st in ("completed", "diverged") else "stopped",
        "first_nonfinite": "" if b is None else b, "skip_nonfinite": cfg["train"].get("skip_nonfinite", 0),
        "nonfinite_steps": sum(1 for _, l, g in m if not (math.isfinite(l) and math.isfinite(g))),
        "median_loss_last500": f"{statistics.median(tail):.4g}" if tail else "",
    }


def write_csv(rows, path):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def collect(roots, path):
    """One row per run folder found under `roots` (probe points, killed probes, a figure's
    runs folder)."""
    rows = [run_row(c.parent, Path(root)) for root in roots for c in sorted(Path(root).rglob("config.yaml"))]
    rows.sort(key=lambda r: (r["layers"], r["dim"], r["optimizer"], -r["lr"], -r["init_std"], r["seed"]))
    write_csv(rows, path)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "collect":
        p = argparse.ArgumentParser(description="one CSV row per run folder under ROOTS")
        p.add_argument("cmd")
        p.add_argument("roots", nargs="+")
        p.add_argument("--csv", required=True)
        a = p.parse_args()
        return collect(a.roots, a.csv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--config", default=str(ROOT / "experiments/settings/setting1_normal_n20.yaml"))
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--points", required=True, help="optimizer:lr:init_std,... in the order to run them")
    p.add_argument("--seeds", default="0,1,2,3,4,5")
    p.add_argument("--iters", type=int, default=10000)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--all-seeds", action="store_true")
    p.add_argument("--bin", default=str(ROOT / "target/release/linattn"))
    p.add_argument("--out", required=True)
    p.add_argument("--csv", required=True)
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    points = [Point(args, t) for t in args.points.split(",")]
    todo = [q for q in points if not q.settled()]
    running = []
    while todo or running:
        while todo and len(running) < args.jobs:
            q = todo.pop(0)
            if any(r.optimizer == q.optimizer and r.survived() for r in points):
                print(f"probe: {q.optimizer} lr {q.lr} init {q.init} not run: an earlier point already keeps every seed finite")
                continue
            q.start()
            running.append(q)
        time.sleep(5)
        running = [q for q in running if q.poll()]
        rows = [r for q in points for r in q.rows()]
        if rows:
            write_csv(rows, args.csv)
    for q in points:
        rows = q.rows()
        broke = [r for r in rows if r["first_nonfinite"] != ""]
        if not rows:
            continue  # not run (said above)
        print(f"probe {args.name} {q.optimizer} lr {q.lr} init {q.init}: " +
              (f"broke (seed {broke[0]['seed']} at {broke[0]['first_nonfinite']})" if broke else
               "every seed finite" if all(r["status"] == "completed" for r in rows) else "unfinished"), flush=True)


if __name__ == "__main__":
    main()

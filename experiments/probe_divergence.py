"""Probe: which learning rates and initialisation scales keep every seed of a deep model
finite under the authors' rule (the first non-finite loss or gradient ends a run).

Each initialisation scale is one batched ensemble of `linattn train` (fast mode, float32, the
figure's data): optimizers x learning rates x seeds, trained together, since an ensemble's
step costs about what one run's step does for these small models. An ensemble is resumable:
a finished one is read back, an interrupted one resumes from its checkpoint.

Writes one CSV row per run (name, init_std, lr, optimizer, seed, status, the iteration where it
broke, the median batch loss of its last 500 iterations) and prints, per optimizer and init
scale, the largest learning rate at which every seed ran all iterations.

    python3 experiments/probe_divergence.py --name L8 --set model.layers=8 \
        --lrs 0.0005,0.0001 --inits 0.05,0.01 --out runs/probe-L8 --csv probe-L8.csv
"""
import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def finished(folder: Path) -> bool:
    f = folder / "summary.json"
    return f.exists() and json.loads(f.read_text())["status"] in ("completed", "diverged")


def read_run(folder: Path):
    summary = json.loads((folder / "summary.json").read_text())
    with open(folder / "metrics.csv") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    tail = [v for v in losses[-500:] if math.isfinite(v)]
    return summary, (statistics.median(tail) if tail else float("nan"))


def ensemble(args, init, out: Path):
    """Trains (or resumes, or reads back) the ensemble of one init scale; returns its rows."""
    folders = {(o, lr, s): out / f"{o}-lr{lr}-seed{s}" for o in args.optimizers for lr in args.lrs for s in args.seeds}
    if not all(finished(f) for f in folders.values()):
        ckpt = next((f for f in folders.values() if (f / "checkpoint.safetensors").exists()), None)
        if ckpt is not None:
            cmd = [args.bin, "train", "--resume", str(ckpt)]
        else:
            cmd = [args.bin, "train", "--config", args.config, "--out", str(out), "--force",
                   "--seeds", ",".join(map(str, args.seeds)), "--optimizers", ",".join(args.optimizers),
                   "--lrs", ",".join(map(str, args.lrs)), "--checkpoint-every", str(args.checkpoint_every),
                   "--set", "train.mode=fast", "--set", f"train.iters={args.iters}",
                   "--set", f"train.save_every={args.iters}", "--set", f"model.init_std={init}"]
            for s in args.set:
                cmd += ["--set", s]
        print("probe:", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
        if rc not in (0, 3):  # 3: some run diverged, which is what we measure
            sys.exit(f"probe: {' '.join(cmd)} exited {rc}")
    rows = []
    for (o, lr, s), f in folders.items():
        summary, tail = read_run(f)
        rows.append({
            "name": args.name, "init_std": init, "lr": lr, "optimizer": o, "seed": s,
            "status": summary["status"], "diverged_at": summary.get("diverged_at") or "",
            "median_loss_last500": f"{tail:.4g}",
        })
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--config", default=str(ROOT / "experiments/settings/setting1_normal_n20.yaml"))
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--lrs", required=True)
    p.add_argument("--inits", default="0.05")
    p.add_argument("--optimizers", default="sgd,adam")
    p.add_argument("--seeds", default="0,1,2,3,4,5")
    p.add_argument("--iters", type=int, default=10000)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--bin", default=str(ROOT / "target/release/linattn"))
    p.add_argument("--out", required=True)
    p.add_argument("--csv", required=True)
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.optimizers = args.optimizers.split(",")
    args.lrs = sorted((float(v) for v in args.lrs.split(",")), reverse=True)
    rows = []
    for init in (float(v) for v in args.inits.split(",")):
        got = ensemble(args, init, Path(args.out) / f"init{init}")
        rows += got
        tmp = Path(args.csv + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, args.csv)
        for o in args.optimizers:
            kept = [lr for lr in args.lrs if all(r["status"] == "completed" for r in got if r["optimizer"] == o and r["lr"] == lr)]
            print(f"probe {args.name} {o} init {init}: " +
                  (f"every seed finite at lr {', '.join(map(str, kept))}" if kept else "no lr kept every seed finite"), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The final training loss of a learning-rate grid figure's runs, at each optimizer's best rate
(the rate the figure picks by final test loss), over SGD with momentum's per seed.

    python3 experiments/final_train_loss.py --runs RUNS --summary plots/summary.json [--figure full_batch]

Why: the figures compare test losses on the evaluation batch. On a fixed training set of N
prompts (data.train_prompts) the test loss also measures generalisation from the N prompts,
while Kunstner et al. compare the training loss. Each run's metrics.csv holds the loss of every
step's batch: with a fixed set and data.batch = N that is the exact loss on the set, so the last
step's is the final training loss; with fresh prompts the last 100 batches' mean stands for it.

Intervals: the 95% percentile bootstrap over seeds of the mean per-seed ratio, drawn as the
summary's tables draw theirs.
"""
import argparse
import csv
import glob
import json
import os
import statistics

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def series_keys(figure):
    """Per series id: (data.setting, data.batch, data.train_prompts) of its runs."""
    spec = yaml.safe_load(open(os.path.join(HERE, "figures", f"{figure}.yaml")))
    out = {}
    for s in spec["series"]:
        base = yaml.safe_load(open(os.path.join(HERE, "settings", s["settings"])))
        data = {"batch": base["data"]["batch"], "train_prompts": 0}
        for kv in s.get("set", []):
            key, value = kv.split("=")
            if key.startswith("data."):
                data[key[len("data."):]] = int(value)
        out[s["id"]] = (base["data"]["setting"], data["batch"], data["train_prompts"])
    return out


def runs_by_config(root, iters):
    out = {}
    for cfg_path in glob.glob(os.path.join(root, "*", "*", "config.yaml")):
        d = os.path.dirname(cfg_path)
        if not os.path.exists(os.path.join(d, "summary.json")):
            continue
        c = yaml.safe_load(open(cfg_path))
        t, data = c["train"], c["data"]
        if t["iters"] != iters:
            continue
        key = (data["setting"], data["batch"], data.get("train_prompts", 0),
               t["optimizer"], t["lr"], t["seed"])
        out[key] = d
    return out


def final_train_loss(run, fixed_set):
    with open(os.path.join(run, "metrics.csv")) as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    return losses[-1] if fixed_set else statistics.mean(losses[-100:])


def bootstrap(values):
    """linattn's rule (src/stats.rs): seeds drawn with numpy's legacy MT19937 seeded 0, 10 000
    times; the 2.5th and 97.5th percentiles with linear interpolation."""
    rng, v = np.random.RandomState(0), np.asarray(values)
    means = [v[(rng.random_sample(len(v)) * len(v)).astype(int)].mean() for _ in range(10_000)]
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="the runs folder the figure was made from")
    ap.add_argument("--summary", required=True, help="the summary.json the figure wrote")
    ap.add_argument("--figure", default="full_batch")
    ap.add_argument("--pick", choices=["test", "train"], default="test",
                    help="each optimizer's rate: the figure's (best final test loss) or the grid's "
                         "best final training loss (a rate where a seed diverged is the worst)")
    args = ap.parse_args()
    fig = next(f for f in json.load(open(args.summary))["figures"] if f["id"] == args.figure)
    keys = series_keys(args.figure)
    runs = runs_by_config(args.runs, fig["iters"])
    def losses(c, lr):
        setting, batch, n = keys[c["series"]]
        return {
            seed: final_train_loss(runs[k], n > 0)
            for seed in fig["seeds"]
            if (k := (setting, batch, n, c["optimizer"], lr, seed)) in runs
        }

    def score(v):
        finite = [x for x in v.values() if np.isfinite(x)]
        return statistics.mean(finite) if v and len(finite) == len(v) else np.inf

    per, best = {}, {}
    for c in fig["lr_choices"]:
        lr = c["best_lr"]
        if args.pick == "train":
            lr = min((p["lr"] for p in c["grid"]), key=lambda r: score(losses(c, r)))
        best[(c["series"], c["optimizer"])] = lr
        per[(c["series"], c["optimizer"])] = losses(c, lr)
    print(f"| setting | optimizer | best lr ({args.pick} loss) | final training loss, mean (std) "
          "| / SGD's, per seed | 95% interval | seeds |")
    print("|---|---|---|---|---|---|---|")
    for c in fig["lr_choices"]:
        mine, sgd = per[(c["series"], c["optimizer"])], per[(c["series"], "sgd")]
        v = list(mine.values())
        cells = [c["label"], c["optimizer"], f"{best[(c['series'], c['optimizer'])]:g}",
                 f"{statistics.mean(v):.3g} ({statistics.stdev(v):.2g})"]
        if c["optimizer"] == "sgd":
            cells += ["—", "—"]
        else:
            r = [mine[s] / sgd[s] for s in mine if s in sgd]
            lo, hi = bootstrap(r)
            cells += [f"{statistics.mean(r):.3f}", f"[{lo:.3f}, {hi:.3f}]"]
        print("| " + " | ".join(cells + [str(len(v))]) + " |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Two reproduce summaries side by side (plots/summary.json of an earlier and a later engine):
per figure, the numbers its conclusions rest on, and whether each conclusion still holds.

    python3 experiments/compare_summaries.py OLD/summary.json NEW/summary.json

The conclusions checked are the paper's, as the figures state them:
- final loss: Adam ends below SGD with momentum (per series);
- condition number: R_SGD / R_Adam > 1 at iterations 750 and 1250 (mean over seeds);
- noise: the Hill tail index (smaller is heavier) and the kurtosis (3 for a normal);
- Fig. 6: the correlation of log gradient norm and log smoothness is positive;
- the learning-rate grid: the best rate per optimizer and setting.
"""
import argparse
import json
import sys


def figures(path):
    with open(path) as f:
        return {fig["id"]: fig for fig in json.load(f)["figures"]}


def fmt(x):
    return "—" if x is None else f"{x:.4g}"


def final_losses(fig):
    return {(r["series"], r["optimizer"]): r for r in fig["final_loss"]}


def ratios(fig):
    return {(r["series"], r["iter"]): r["ours"]["mean"] for r in fig["ratios"] if r["iter"] in (750, 1250)}


def compare(fig_id, old, new, out):
    verdicts = []
    out.append(f"\n## {fig_id}")
    if old.get("wall_time_s") is not None:
        out.append(f"wall time of the figure's own work: old {old['wall_time_s']:.0f} s, new {new['wall_time_s']:.0f} s"
                   f" ({'reused' if new['all_reused'] else 'trained'})")
    fo, fn = final_losses(old), final_losses(new)
    if fn:
        out.append("| series | optimizer | final loss old | new | diverged old/new | skipped old/new |")
        out.append("|---|---|---|---|---|---|")
        for key in sorted(fn):
            o, n = fo.get(key, {}), fn[key]
            out.append(f"| {key[0]} | {key[1]} | {fmt(o.get('mean'))} | {fmt(n['mean'])} | "
                       f"{o.get('diverged', '—')}/{n['diverged']} | {o.get('skipped_steps', '—')}/{n.get('skipped_steps', '—')} |")
        for series in sorted({s for s, _ in fn}):
            for name, table in (("old", fo), ("new", fn)):
                sgd, adam = table.get((series, "sgd")), table.get((series, "adam"))
                if sgd and adam and sgd["mean"] is not None and adam["mean"] is not None:
                    verdicts.append((f"{series}: Adam ends below SGD", name, adam["mean"] < sgd["mean"]))
    ro, rn = ratios(old), ratios(new)
    if rn:
        out.append("| series | iter | R_SGD/R_Adam old | new |")
        out.append("|---|---|---|---|")
        for key in sorted(rn):
            out.append(f"| {key[0]} | {key[1]} | {fmt(ro.get(key))} | {fmt(rn[key])} |")
            verdicts.append((f"{key[0]}: R_SGD/R_Adam > 1 at {key[1]}", "old", ro.get(key, 0) > 1))
            verdicts.append((f"{key[0]}: R_SGD/R_Adam > 1 at {key[1]}", "new", rn[key] > 1))
    no = {r["series"]: r for r in old["noise"]}
    for r in new["noise"]:
        o = no.get(r["series"], {})
        out.append(f"noise {r['series']}: Hill α old {fmt(o.get('hill_tail_index'))} new {fmt(r['hill_tail_index'])};"
                   f" kurtosis old {fmt(o.get('kurtosis'))} new {fmt(r['kurtosis'])}")
    co = {r["series"]: r for r in old["correlations"]}
    for r in new["correlations"]:
        o = co.get(r["series"], {})
        out.append(f"correlation {r['series']}: r old {fmt(o.get('r'))} new {fmt(r['r'])}")
        verdicts.append((f"{r['series']}: log norm and log smoothness correlate positively", "old", o.get("r", 0) > 0))
        verdicts.append((f"{r['series']}: log norm and log smoothness correlate positively", "new", r["r"] > 0))
    lo = {(r["series"], r["optimizer"]): r for r in old["lr_choices"]}
    for r in new["lr_choices"]:
        o = lo.get((r["series"], r["optimizer"]), {})
        out.append(f"best lr {r['series']} {r['optimizer']}: old {fmt(o.get('best_lr'))} new {fmt(r['best_lr'])}"
                   f" (authors {fmt(r['authors_lr'])})")
    claims = {}
    for claim, which, holds in verdicts:
        claims.setdefault(claim, {})[which] = holds
    for claim, v in claims.items():
        state = "holds" if v.get("new") else "DOES NOT HOLD"
        was = "held" if v.get("old") else "did not hold"
        out.append(f"- {claim}: {state} (before: {was})")
    return all(v.get("new") or not v.get("old") for v in claims.values())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    a = p.parse_args()
    old, new = figures(a.old), figures(a.new)
    out, kept = [], True
    for fig_id in sorted(new):
        if fig_id not in old:
            out.append(f"\n## {fig_id}: new figure")
            continue
        kept &= compare(fig_id, old[fig_id], new[fig_id], out)
    print("\n".join(out))
    print("\nevery conclusion that held before still holds" if kept else "\nSOME CONCLUSION THAT HELD BEFORE NO LONGER HOLDS")
    sys.exit(0 if kept else 1)


if __name__ == "__main__":
    main()

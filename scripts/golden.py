#!/usr/bin/env python3
"""The golden check: results must not change when the code is reorganised.

  golden.py record --bin BIN --out DIR         run the golden set with BIN into DIR
  golden.py digest DIR > MANIFEST              normalised digests of DIR's outputs
  golden.py check --bin BIN [--manifest M]     record into a temporary folder and compare with M
                                               (default: the tests/golden/manifest*.json recorded
                                               on this kind of machine); exit 1 on a difference,
                                               naming every file that differs, and exit 3 when no
                                               manifest was recorded on this kind of machine
  golden.py compare DIR_A DIR_B                compare two recorded folders file by file
  golden.py same-data A.json B.json            whether two figure data JSONs hold the same numbers
                                               (exit 1 naming the first difference)

The set: faithful and fast runs of Setting 1 (SGD, Adam), the sphere (clip 0.1), gamma, L = 6,
the full parametrization, softmax and the MLP variant; a run that skips non-finite steps; a
float64 fast run; a 12-member ensemble (through `reproduce`); `analyze` and `noise` outputs; the
data JSON of `reproduce fig2_setting1 --quick`. Iteration counts are small so that the check
runs in a few minutes.

Normalisation: CSV, YAML and safetensors files are compared byte for byte (their SHA-256);
JSON files without the keys that measure time or the machine (wall_time_s, machine, device,
all_reused) or hold checksums of files digested here anyway (sha256); measurement CSVs by
their values per iteration and column, whatever the column order or file name (analysis.csv
and measurements.csv are the same measurements). A figure's data JSON may gain keys; every
key the manifest holds must keep its value.
"""
import argparse
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = os.path.join(ROOT, "experiments", "settings")
ITERS = 40
# sha256: the checksums summary.json and noise.json record of files that are digested here.
VOLATILE = {"wall_time_s", "machine", "device", "all_reused", "sha256"}
MEASURE_COLUMNS = ["test_loss", "grad_norm", "dir_smoothness", "condition_number",
                   "condition_number_eig", "sharpness"]

S1 = "setting1_normal_n20.yaml"
# (name, settings file, overrides): each is trained in faithful and in fast mode.
RUNS = [
    ("s1_sgd", S1, []),
    ("s1_adam", S1, ["train.optimizer=adam"]),
    ("sphere_sgd", "sphere.yaml", []),
    ("sphere_adam", "sphere.yaml", ["train.optimizer=adam", "train.lr=0.1"]),
    ("gamma_sgd", "setting3_gamma.yaml", []),
    ("L6_adam", S1, ["model.layers=6", "train.optimizer=adam"]),
    ("full_sgd", S1, ["model.parametrization=full"]),
    ("softmax_adam", S1, ["model.attention=softmax", "train.optimizer=adam"]),
    ("mlp_adam", "mlp_variant.yaml", []),
    ("mlp_sgd", "mlp_variant.yaml", ["train.optimizer=sgd", "train.lr=0.05"]),
]
# Runs in one mode only.
EXTRA = [
    # Iterations 36 and 40 overflow float32; two non-finite steps in a row are skipped.
    ("skip_faithful", "setting3_gamma.yaml",
     ["model.layers=4", "data.batch=100", "train.optimizer=adam", "train.lr=0.1",
      "train.iters=60", "train.skip_nonfinite=2"]),
    ("skip_fast", "setting3_gamma.yaml",
     ["model.layers=4", "data.batch=100", "train.optimizer=adam", "train.lr=0.1",
      "train.iters=60", "train.skip_nonfinite=2", "train.mode=fast"]),
    ("f64_fast", S1, ["train.optimizer=adam", "train.mode=fast", "train.dtype=float64"]),
]
ANALYZE = [("s1_adam-faithful", 10), ("s1_sgd-fast", 10), ("mlp_adam-faithful", 20)]
NOISE = [("noise_gamma", "setting3_gamma.yaml", [], 30, 2000),
         ("noise_mlp", "mlp_variant.yaml", [], 20, 4000)]
ENSEMBLE_FIGURE = """title: "golden: 12-member ensemble"
paper: "golden check"
series:
  - {id: s1, label: "Setting 1", settings: setting1_normal_n20.yaml, lr: {sgd: 0.02, adam: 0.02}}
runs: {optimizers: [sgd, adam], seeds: [0, 1, 2, 3, 4, 5], iters: 60, save_every: 1}
measure: {loss_every: 20}
panels: [loss]
quick: {}
"""


def env():
    e = dict(os.environ)
    # Reductions split over threads round differently: fix the count.
    e["OMP_NUM_THREADS"] = "2"
    e.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return e


def run(cmd, ok=(0,)):
    p = subprocess.run(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode not in ok:
        sys.exit(f"golden: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-500:]}")


def train(binary, out, settings, sets):
    cmd = [binary, "train", "--config", os.path.join(SETTINGS, settings), "--out", out]
    for s in sets:
        cmd += ["--set", s]
    run(cmd)


def record(binary, out):
    os.makedirs(out, exist_ok=True)
    for name, settings, sets in RUNS:
        for mode in ("faithful", "fast"):
            train(binary, os.path.join(out, f"{name}-{mode}"), settings,
                  sets + [f"train.iters={ITERS}", f"train.mode={mode}"])
    for name, settings, sets in EXTRA:
        train(binary, os.path.join(out, name), settings, sets)
    for name, every in ANALYZE:
        run([binary, "analyze", os.path.join(out, name), "--every", str(every)])
    for name, settings, sets, samples, full in NOISE:
        cmd = [binary, "noise", "--config", os.path.join(SETTINGS, settings), "--samples", str(samples),
               "--full-batch", str(full), "--out", os.path.join(out, name)]
        for s in sets:
            cmd += ["--set", s]
        run(cmd)
    # The ensemble: reproduce trains the 12 fast runs of one setting as one ensemble.
    exp = os.path.join(out, "ensemble-experiments")
    os.makedirs(os.path.join(exp, "figures"), exist_ok=True)
    shutil.copytree(SETTINGS, os.path.join(exp, "settings"))
    with open(os.path.join(exp, "figures", "ensemble.yaml"), "w") as f:
        f.write(ENSEMBLE_FIGURE)
    run([binary, "reproduce", "ensemble", "--experiments", exp, "--mode", "fast",
         "--runs", os.path.join(out, "ensemble"), "--plots", os.path.join(out, "ensemble-plots")])
    shutil.rmtree(exp)
    run([binary, "reproduce", "fig2_setting1", "--quick", "--experiments", os.path.join(ROOT, "experiments"),
         "--runs", os.path.join(out, "quick-runs"), "--plots", os.path.join(out, "quick-plots")])


def sha(data):
    return hashlib.sha256(data).hexdigest()


def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in VOLATILE}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v


def measurements(path):
    with open(path) as f:
        lines = f.read().splitlines()
    cols = lines[0].split(",")
    out = {}
    for line in lines[1:]:
        fields = dict(zip(cols, line.split(",")))
        out[fields["iter"]] = {c: fields[c] for c in MEASURE_COLUMNS if fields.get(c, "") != ""}
    return out


def digest(folder):
    """{relative path: entry}; an entry is {"sha256": …} or {"json": …} (compared as a subset)."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if name.startswith(".") or name.endswith(".png") or "checkpoint" in name:
                continue
            if "plots" in rel.split(os.sep)[0]:
                # A figure's folder: only its data JSON holds results (PNGs and summaries are drawn).
                if os.path.basename(dirpath) == "data" and name.endswith(".json"):
                    with open(path) as f:
                        files[rel] = {"json": strip(json.load(f))}
            elif name in ("analysis.csv", "measurements.csv"):
                key = os.path.join(os.path.dirname(rel), "measurements")
                files[key] = {"sha256": sha(json.dumps(measurements(path), sort_keys=True).encode())}
            elif name.endswith(".json"):
                with open(path) as f:
                    files[rel] = {"sha256": sha(json.dumps(strip(json.load(f)), sort_keys=True).encode())}
            elif name.endswith((".csv", ".yaml", ".safetensors")):
                with open(path, "rb") as f:
                    files[rel] = {"sha256": sha(f.read())}
    return files


def subset_diff(want, got, where=""):
    """Paths where `got` lacks or changes a value of `want`."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [where or "/"]
        out = []
        for k, v in want.items():
            out += subset_diff(v, got.get(k, KeyError), f"{where}/{k}")
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [where]
        out = []
        for i, (a, b) in enumerate(zip(want, got)):
            out += subset_diff(a, b, f"{where}[{i}]")
        return out
    return [] if want == got else [where]


def compare(want, got):
    """Lines naming every difference between two digests."""
    lines = []
    for rel in sorted(set(want) | set(got)):
        a, b = want.get(rel), got.get(rel)
        if a is None:
            continue  # a new file is not a changed result
        if b is None:
            lines.append(f"missing: {rel}")
        elif "json" in a:
            diff = subset_diff(a["json"], b.get("json", {}))
            if diff:
                lines.append(f"differs: {rel} at {', '.join(diff[:5])}")
        elif a != b:
            lines.append(f"differs: {rel}")
    return lines


def cpu_vendor():
    """GenuineIntel or AuthenticAMD: libtorch's faithful bits differ between the two at one SIMD
    capability (measured: 144 of 222 outputs of an Intel-recorded AVX512 manifest on an AMD EPYC)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The CPU flags that pick libtorch's and the native kernel's code paths (printed beside the
# manifest a check chose, so that a difference can be told from a kernel the manifest's CPU lacked).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_description():
    """The CPU's vendor, model and kernel-picking flags, as one line."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    have = [f for f in KERNEL_FLAGS if f in flags]
    return f"{cpu_vendor()} {model}; kernel flags: {' '.join(have) or 'none of ' + ' '.join(KERNEL_FLAGS)}"


def machine():
    import torch
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_vendor": cpu_vendor(), "machine": platform.machine()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--bin", required=True)
    r.add_argument("--out", required=True)
    d = sub.add_parser("digest")
    d.add_argument("dir")
    c = sub.add_parser("check")
    c.add_argument("--bin", required=True)
    c.add_argument("--manifest", help="default: the tests/golden/manifest*.json recorded on this kind of machine")
    c.add_argument("--keep", help="record into this folder and keep it")
    s = sub.add_parser("same-data")
    s.add_argument("a")
    s.add_argument("b")
    m = sub.add_parser("compare")
    m.add_argument("a")
    m.add_argument("b")
    a = p.parse_args()
    if a.cmd == "record":
        record(a.bin, a.out)
    elif a.cmd == "digest":
        json.dump({"recorded_on": machine(), "files": digest(a.dir)}, sys.stdout, indent=1, sort_keys=True)
        print()
    elif a.cmd == "same-data":
        with open(a.a) as f, open(a.b) as g:
            x, y = strip(json.load(f)), strip(json.load(g))
        diff = subset_diff(x, y) + subset_diff(y, x)
        if diff:
            sys.exit(f"golden: {a.a} and {a.b} differ at {diff[0]}")
    elif a.cmd == "compare":
        lines = compare(digest(a.a), digest(a.b))
        print("\n".join(lines) if lines else "golden: identical")
        sys.exit(1 if lines else 0)
    else:
        here = machine()
        paths = [a.manifest] if a.manifest else sorted(glob.glob(os.path.join(ROOT, "tests", "golden", "manifest*.json")))
        manifests = []
        for path in paths:
            with open(path) as f:
                manifests.append((path, json.load(f)))
        mine = [(path, m) for path, m in manifests if m["recorded_on"] == here]
        if not mine:
            # Other kernels (another CPU capability, another torch) round differently, so a
            # manifest of another machine cannot be compared with: say so, and fail, since
            # nothing was checked.
            seen = "; ".join(f"{os.path.relpath(path, ROOT)}: {m['recorded_on']}" for path, m in manifests)
            sys.stderr.write(f"golden: this CPU: {cpu_description()}\n")
            sys.stderr.write(f"golden: not checked: no manifest was recorded on this kind of machine ({here}); "
                             f"there are {seen}. Record one with a trusted binary: golden.py record, then "
                             f"golden.py digest DIR > tests/golden/manifest-<cpu capability>-<vendor>.json\n")
            sys.exit(3)
        path, manifest = mine[0]
        print(f"golden: this CPU: {cpu_description()}")
        print(f"golden: comparing with {os.path.relpath(path, ROOT)} (recorded on {manifest['recorded_on']})")
        out = a.keep or tempfile.mkdtemp(prefix="linattn-golden-")
        try:
            record(a.bin, out)
            lines = compare(manifest["files"], digest(out))
        finally:
            if not a.keep:
                shutil.rmtree(out, ignore_errors=True)
        if lines:
            print("\n".join(lines))
            sys.exit(f"golden: {len(lines)} of {len(manifest['files'])} outputs changed")
        print(f"golden: all {len(manifest['files'])} outputs identical")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The GPU check, for whoever is lent a CUDA machine (docs/performance.md, "CUDA").
#
#   bash scripts/gpu-check.sh --prepare   here, with Rust: builds the release binary and the
#                                         CUDA test binary into target/gpu-check/
#   bash scripts/gpu-check.sh             there, no Rust needed: runs from the prepared tree
#                                         (carry target/release/linattn and target/gpu-check)
#
# It writes everything under $OUT (default: gpu-check-out/): one log per part and summary.txt,
# a line per part with its exit code and seconds. The parts: the ignored tests of tests/cuda.rs;
# `compare --device cuda` on Setting 1 and the MLP variant; `bench --device cuda`; and
# `reproduce fig2_setting1 --device cuda` at paper scale with its wall time. It stops starting
# parts after 9 minutes (the last one is cut with `timeout`; reproduce resumes if run again).
# Without a GPU it runs the parts a CPU can check (compare and a short bench on the CPU) and
# says in summary.txt which parts need a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ "${1:-}" = "--prepare" ]; then
  set -e
  source scripts/env.sh
  cargo build --release
  cargo test --release --test cuda --no-run 2>&1 | tee /tmp/gpu-check-build.log
  mkdir -p target/gpu-check
  test_bin=$(ls -t target/release/deps/cuda-* | grep -v '\.d$' | head -n 1)
  cp "$test_bin" target/gpu-check/cuda-tests
  echo "prepared: target/release/linattn and target/gpu-check/cuda-tests"
  exit 0
fi
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
BIN=$ROOT/target/release/linattn
[ -x "$BIN" ] || { echo "gpu-check: no $BIN; run 'bash scripts/gpu-check.sh --prepare' first" >&2; exit 2; }
# The PyTorch side: the project's venv where there is one (scripts/env.sh), else this machine's
# python3 behind a stand-in venv (a GPU machine has torch there and no venv).
LINATTN_VENV="${LINATTN_VENV:-$HOME/.cache/linattn/venv-torch-2.11.0}"
if [ -x "$LINATTN_VENV/bin/python3" ]; then
  PY=$LINATTN_VENV/bin/python3
else
  PY=$(command -v python3)
  LINATTN_VENV=$OUT/venv
  mkdir -p "$LINATTN_VENV/bin"
  ln -sf "$PY" "$LINATTN_VENV/bin/python3"
fi
export LINATTN_VENV
"$PY" -c 'import torch' 2>/dev/null || { echo "gpu-check: $PY cannot import torch" >&2; exit 2; }
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
export LINATTN_BIN=$BIN LINATTN_ROOT=$ROOT LINATTN_REFERENCE=$ROOT/experiments/pytorch_reference.py
export OMP_WAIT_POLICY=PASSIVE
GPU=$("$PY" -c 'import torch; print("yes" if torch.cuda.is_available() else "no")')
START=$(date +%s)
{
  echo "gpu-check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  "$PY" -c 'import torch; print("torch", torch.__version__, "| cuda:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")'
} > "$OUT/summary.txt" 2>&1
left() { echo $(( 540 - ($(date +%s) - START) )); }
part() { # part NAME COMMAND...: runs it into $OUT/NAME.log unless the time is up
  local name=$1; shift
  if [ "$(left)" -le 10 ]; then echo "$name: not run (time is up)" >> "$OUT/summary.txt"; return; fi
  local t0=$(date +%s.%N)
  timeout "$(left)" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  awk -v n="$name" -v rc="$rc" -v t0="$t0" -v t1="$(date +%s.%N)" \
    'BEGIN { printf "%s: exit %d, %.1f s\n", n, rc, t1 - t0 }' >> "$OUT/summary.txt"
}
S1=experiments/settings/setting1_normal_n20.yaml
MLP=experiments/settings/mlp_variant.yaml
if [ "$GPU" = yes ]; then
  if [ -x target/gpu-check/cuda-tests ]; then
    part cuda-tests target/gpu-check/cuda-tests --ignored --test-threads 1
  else
    echo "cuda-tests: not run (no target/gpu-check/cuda-tests; run --prepare where Rust is)" >> "$OUT/summary.txt"
  fi
  part compare-setting1 "$BIN" compare --config $S1 --set train.iters=100 --device cuda --tolerance 1e-4 --out "$OUT/compare-setting1"
  part compare-mlp "$BIN" compare --config $MLP --set train.iters=100 --device cuda --tolerance 1e-4 --out "$OUT/compare-mlp"
  part bench "$BIN" bench --config $S1 --device cuda --steps 200
  part bench-fig5 "$BIN" bench --config $S1 --set model.layers=8 --set model.dim=20 --set data.context=60 --device cuda --modes fast,ensemble --steps 50
  part reproduce-fig2_setting1 "$BIN" reproduce fig2_setting1 --device cuda --runs "$OUT/runs" --plots "$OUT/plots"
else
  echo "no CUDA GPU visible: the CUDA tests, compare/bench on cuda and the paper-scale reproduce need one; running the CPU-checkable parts" >> "$OUT/summary.txt"
  part compare-setting1-cpu "$BIN" compare --config $S1 --set train.iters=20 --out "$OUT/compare-setting1"
  part compare-mlp-cpu "$BIN" compare --config $MLP --set train.iters=20 --out "$OUT/compare-mlp"
  part bench-cpu "$BIN" bench --config $S1 --steps 50 --warmup 5 --modes fast,ensemble
fi
echo "total: $(( $(date +%s) - START )) s" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"

# Sourced by scripts/main.sh and scripts/test.sh: makes sure the shared PyTorch venv exists
# (torch==2.11.0, numpy, safetensors, pyyaml) and puts it first on PATH for the build.
# Idempotent: a venv that already imports the pinned versions is reused as it is.
set -euo pipefail
TORCH_VERSION=2.11.0
export LINATTN_VENV="${LINATTN_VENV:-$HOME/.cache/linattn/venv-torch-$TORCH_VERSION}"
venv_ok() {
  [ -x "$LINATTN_VENV/bin/python3" ] && "$LINATTN_VENV/bin/python3" - <<PY 2>/dev/null
import importlib.util, sys, torch, numpy, safetensors, yaml
sys.exit(0 if torch.__version__.split('+')[0] == "$TORCH_VERSION" and importlib.util.find_spec("opt_einsum") is None else 1)
PY
}
if ! venv_ok; then
  echo "linattn: setting up the PyTorch venv at $LINATTN_VENV (torch==$TORCH_VERSION, about 5 GB, once)" >&2
  mkdir -p "$(dirname "$LINATTN_VENV")"
  [ -x "$LINATTN_VENV/bin/python3" ] || python3 -m venv "$LINATTN_VENV" || {
    echo "linattn: error: could not create a venv with 'python3 -m venv' (install python3-venv)" >&2; exit 1; }
  "$LINATTN_VENV/bin/python3" -m pip install --quiet --disable-pip-version-check \
      "torch==$TORCH_VERSION" numpy safetensors pyyaml || {
    echo "linattn: error: pip could not install torch==$TORCH_VERSION numpy safetensors pyyaml into $LINATTN_VENV" >&2; exit 1; }
  # opt_einsum changes torch.einsum's contraction path, and with it the bits (docs/conventions.md).
  "$LINATTN_VENV/bin/python3" -m pip uninstall --quiet -y opt_einsum >/dev/null 2>&1 || true
  venv_ok || { echo "linattn: error: the venv at $LINATTN_VENV does not import torch==$TORCH_VERSION" >&2; exit 1; }
fi
export PATH="$LINATTN_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
# libtorch's OpenMP threads spin-wait by default; when the 2 cores are shared with anything
# else (a second training, the PyTorch side, a compiler) a spinning thread starves its sibling
# and a step gets 10x slower (measured: 20 steps took 25 s ACTIVE vs 2.5 s PASSIVE under load).
# Passive waiting changes timings only, never results.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

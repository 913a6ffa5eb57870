#!/usr/bin/env bash
# The whole test suite (Rust unit and integration tests, including the PyTorch side-by-side).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec cargo test --release "$@"

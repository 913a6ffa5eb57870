#!/usr/bin/env bash
# The main job: the paper's headline figure (Fig. 2, Setting 1) at quick scale, on CPU, into plots/quick/
# (plots/ itself holds the committed paper-scale figures).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
exec target/release/linattn reproduce fig2_setting1 --quick --device cpu "$@"

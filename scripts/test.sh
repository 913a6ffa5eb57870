#!/usr/bin/env bash
# The whole test suite (Rust unit and integration tests, including the PyTorch side-by-side).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# One test at a time: each test runs libtorch with its own thread pool, and OpenMP threads
# that spin-wait for a starved sibling on 2 cores make parallel tests many times slower.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-1}"
exec cargo test --release "$@"

#!/usr/bin/env bash
# The whole test suite: formatting, clippy's lints, then the Rust unit and integration tests
# (including the PyTorch side-by-side).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# One test at a time: each test runs libtorch with its own thread pool, and OpenMP threads
# that spin-wait for a starved sibling on 2 cores make parallel tests many times slower.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-1}"
# Formatting and lints first: a minute, and they fail fast.
cargo fmt --check
cargo clippy --all-targets -- -D warnings
exec cargo test --release --no-fail-fast "$@"

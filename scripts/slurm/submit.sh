#!/usr/bin/env bash
# Submit `linattn reproduce FIG...` to Slurm as N shards plus one job that draws.
#
# Usage:
#   scripts/slurm/submit.sh FIG... [--shards N] [--quick] [--iters N] [--seeds 0,1,2]
#       [--device D] [--runs DIR] [--plots DIR] [--cpus-per-task C] [--gpu] [--partition P]
#
#   FIG...             figure ids or figure YAML files, as for `linattn reproduce` (none: all)
#   --shards N         array tasks, each running `--shard K/N` (default 4)
#   --quick            the figures' quick scale
#   --iters N, --seeds L  override every figure's iterations or seeds, as for reproduce
#   --device D         training device (cpu, cuda, cuda:0, ...); --gpu alone implies cuda
#   --runs DIR         shared runs folder (default: runs in the current directory)
#   --plots DIR        plots folder (default: plots, or plots/quick with --quick)
#   --cpus-per-task C  cores per shard, also libtorch's --threads (default 1)
#   --gpu              ask each shard for one GPU (--gres=gpu:1)
#   --partition P      Slurm partition for both jobs (default: the cluster's default)
#
# Environment:
#   LINATTN_BIN        the binary (default: target/release/linattn of the repository that
#                      holds this script); must be visible on the compute nodes.
#   LINATTN_SLURM_LOGS folder for the jobs' output files (default: slurm-logs in the current
#                      directory); one file per shard, <job name>-<array id>_<index>.out, and
#                      one for the draw job, linattn-draw-<id>.out.
#   SBATCH_* variables and extra site defaults apply as usual.
#
# Output: two lines, `array job <id>` and `draw job <id>`. Bad arguments: one line, exit 2.
# The draw job runs `reproduce ... --draw-only` after every shard succeeded (afterok); if a
# shard fails, Slurm cancels it (--kill-on-invalid-dep) instead of leaving it pending.
# Resubmitting the same command after a failure or a preemption is safe: done units are
# skipped, interrupted ones resume from their checkpoints (docs/cluster.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

usage_error() {
  echo "submit.sh: $*" >&2
  exit 2
}

# Absolute form of a path without creating it: the jobs run elsewhere and later, so a
# relative path would be resolved against whatever directory a job happens to start in.
absolute() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/$1" ;;
  esac
}

figs=()
shards=4
quick=0
iters=""
seeds=""
device=""
runs=""
plots=""
cpus=1
gpu=0
partition=""

# Value of an option given as `--opt VALUE` (needs the next word) or `--opt=VALUE`.
while [ $# -gt 0 ]; do
  opt="$1"
  case "$opt" in
    --*=*) name="${opt%%=*}"; value="${opt#*=}"; has_inline=1 ;;
    *) name="$opt"; value=""; has_inline=0 ;;
  esac
  case "$name" in
    --shards | --iters | --seeds | --device | --runs | --plots | --cpus-per-task | --partition)
      if [ "$has_inline" = 0 ]; then
        [ $# -ge 2 ] || usage_error "$name needs a value"
        value="$2"
        shift
        # `--runs --quick` is a missing value, not a folder named --quick.
        case "$value" in --*) usage_error "$name needs a value, not '$value'" ;; esac
      fi
      [ -n "$value" ] || usage_error "$name needs a non-empty value"
      case "$name" in
        --shards) shards="$value" ;;
        --iters) iters="$value" ;;
        --seeds) seeds="$value" ;;
        --device) device="$value" ;;
        --runs) runs="$value" ;;
        --plots) plots="$value" ;;
        --cpus-per-task) cpus="$value" ;;
        --partition) partition="$value" ;;
      esac
      ;;
    --quick | --gpu)
      [ "$has_inline" = 0 ] || usage_error "$name takes no value"
      if [ "$name" = --quick ]; then quick=1; else gpu=1; fi
      ;;
    --help | -h)
      sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    --)
      shift
      figs+=("$@")
      break
      ;;
    -*) usage_error "unknown option '$opt' (see --help)" ;;
    *) figs+=("$opt") ;;
  esac
  shift
done

is_count() { case "$1" in '' | *[!0-9]* | 0*) return 1 ;; *) return 0 ;; esac; }
is_count "$shards" || usage_error "--shards must be a positive integer, not '$shards'"
is_count "$cpus" || usage_error "--cpus-per-task must be a positive integer, not '$cpus'"
if [ "$gpu" = 1 ] && [ -z "$device" ]; then device=cuda; fi

bin="$(absolute "${LINATTN_BIN:-$repo/target/release/linattn}")"
if [ ! -x "$bin" ]; then
  echo "submit.sh: no executable linattn at $bin (build it with 'cargo build --release' or set LINATTN_BIN)" >&2
  exit 1
fi
if ! command -v sbatch >/dev/null 2>&1; then
  echo "submit.sh: sbatch not found: run this on a Slurm login node" >&2
  exit 1
fi
runs="$(absolute "${runs:-runs}")"
if [ -z "$plots" ]; then
  if [ "$quick" = 1 ]; then plots=plots/quick; else plots=plots; fi
fi
plots="$(absolute "$plots")"
logs="$(absolute "${LINATTN_SLURM_LOGS:-slurm-logs}")"
# sbatch does not create the folder of --output; a job whose log cannot be opened fails.
mkdir -p "$logs" "$runs"

# The arguments both jobs pass on to `linattn reproduce`.
common=("${figs[@]}")
if [ "$quick" = 1 ]; then common+=(--quick); fi
# The draw job must plan the very units the shards did: both get the same overrides.
if [ -n "$iters" ]; then common+=(--iters "$iters"); fi
if [ -n "$seeds" ]; then common+=(--seeds "$seeds"); fi
common+=(--runs "$runs" --plots "$plots")
shard_args=("${common[@]}")
if [ -n "$device" ]; then shard_args+=(--device "$device"); fi

sbatch_common=(--parsable --export=ALL)
if [ -n "$partition" ]; then sbatch_common+=(--partition="$partition"); fi

export LINATTN_BIN="$bin" LINATTN_SHARDS="$shards"

array_opts=("${sbatch_common[@]}" --array="0-$((shards - 1))" --job-name=linattn-reproduce
  --cpus-per-task="$cpus" --output="$logs/%x-%A_%a.out")
if [ "$gpu" = 1 ]; then array_opts+=(--gres=gpu:1); fi
# --parsable prints "<id>" or "<id>;<cluster>".
array_id="$(sbatch "${array_opts[@]}" "$here/reproduce.sbatch" "${shard_args[@]}")"
array_id="${array_id%%;*}"
echo "array job $array_id"

draw_id="$(sbatch "${sbatch_common[@]}" --dependency="afterok:$array_id" --kill-on-invalid-dep=yes \
  --job-name=linattn-draw --cpus-per-task=1 --output="$logs/%x-%j.out" \
  "$here/reproduce.sbatch" "${common[@]}" --draw-only)"
draw_id="${draw_id%%;*}"
echo "draw job $draw_id"

#!/usr/bin/env bash
# End-to-end test of scripts/slurm/ on a private one-node Slurm cluster on this machine:
# submit.sh runs fig2_setting1 --quick --iters 300 as an array of 2 shards plus a dependent
# draw job (300 iterations: the path under test is the same, at a quarter of the cost); the
# figure data must equal those of one process without --shard, and no unit may be trained by
# two shards.
#
# Needs root (the daemons run as root) and apt-get when slurm-wlm/munge are not installed yet;
# without them it prints one line `slurm selftest: skipped: <why>` and exits 0.
#
# Environment:
#   LINATTN_BIN    the binary (default: target/release/linattn of this repository)
#   LINATTN_VENV   venv whose python3 compares the JSON files (default: python3 on PATH)
#   KEEP=1         keep the temporary folder (configs, daemon logs, job logs, runs, plots)
#   SLURM_SELFTEST_TIMEOUT  seconds to wait for the jobs (default 240)
#
# Everything the cluster needs lives in one temporary folder T: slurm.conf, the munge key and
# socket, state, spool, pid and log files. munged, slurmctld and slurmd run in the foreground
# as children of this script on a loopback address, with free non-default ports and their own
# munge socket, so a system Slurm or munge on the machine is neither used nor disturbed. They are
# stopped by pid on every exit (trap), and T is removed unless KEEP=1.
#
# Last line: `slurm selftest: passed (<seconds> s)`, or `slurm selftest: FAILED: <why>` and a
# non-zero exit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
started=$SECONDS

say() { echo "slurm selftest: $*"; }
fail() {
  echo "slurm selftest: FAILED: $*" >&2
  exit 1
}
skip() {
  say "skipped: $*"
  exit 0
}

# --- Can this machine run it? ------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "not root (the private Slurm daemons run as root)"
need=(munged munge unmunge slurmctld slurmd sbatch squeue scontrol sinfo scancel)
have_all() {
  local c
  for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || return 1; done
}
if ! have_all && ! command -v apt-get >/dev/null 2>&1; then
  skip "slurm-wlm and munge are not installed and there is no apt-get to install them"
fi

bin="${LINATTN_BIN:-$repo/target/release/linattn}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
[ -x "$bin" ] || fail "no executable linattn at $bin (cargo build --release, or set LINATTN_BIN)"
export LINATTN_BIN="$bin"
python="python3"
if [ -n "${LINATTN_VENV:-}" ] && [ -x "$LINATTN_VENV/bin/python3" ]; then python="$LINATTN_VENV/bin/python3"; fi
command -v "$python" >/dev/null 2>&1 || fail "no python3 to compare the figure data"

# A surrounding Slurm job or the user's defaults must not steer our private cluster's jobs
# (SBATCH_PARTITION, SLURM_JOB_ID, ...): drop them all; SLURM_CONF is set below.
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(SLURM|SBATCH|SQUEUE|SALLOC|SRUN|SINFO|SCONTROL)_' || true)

# --- The temporary folder and the cleanup that always runs -------------------------------
T="$(mktemp -d "${TMPDIR:-/tmp}/linattn-slurm-selftest.XXXXXX")"
# munged insists that everyone may traverse the folders above its socket.
chmod 755 "$T"
if [ "${KEEP:-0}" = 1 ]; then say "working in $T (kept: KEEP=1)"; fi
mkdir -p "$T/munge" "$T/log" "$T/state" "$T/spool" "$T/slurm-logs"
chmod 755 "$T/munge"
munged_pid=""
slurmctld_pid=""
slurmd_pid=""
jobs_submitted=0

stop_pid() { # stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  # Cancel our jobs first: their slurmstepd processes are not children of slurmd and would
  # outlive it. squeue/scancel talk to our slurmctld only (SLURM_CONF).
  if [ "$jobs_submitted" = 1 ] && [ -n "$slurmctld_pid" ] && kill -0 "$slurmctld_pid" 2>/dev/null; then
    scancel --user=root >/dev/null 2>&1
    for _ in $(seq 1 20); do
      [ -z "$(squeue -h -t PD,R,CG,CF,S 2>/dev/null)" ] && break
      sleep 1
    done
  fi
  stop_pid "$slurmd_pid"
  stop_pid "$slurmctld_pid"
  stop_pid "$munged_pid"
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "slurm selftest: FAILED: interrupted" >&2; exit 130' INT
trap 'echo "slurm selftest: FAILED: terminated" >&2; exit 143' TERM

# Last lines of the daemon and job logs: shown before a failure line, where they help.
show_logs() {
  local f
  for f in "$T"/log/* "$T"/slurm-logs/* "$T"/single.log; do
    [ -f "$f" ] || continue
    echo "--- ${f#"$T"/} (last 15 lines)" >&2
    tail -n 15 "$f" >&2
  done
}

# --- Install slurm-wlm and munge (once) --------------------------------------------------
if ! have_all; then
  say "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # --no-install-recommends: slurm-wlm recommends dozens of packages (docs, MPI) we do not use.
  # apt-get update only when the install fails for want of a package list.
  if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$T/log/apt.log" 2>&1; then
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } >>"$T/log/apt.log" 2>&1 ||
      { tail -n 5 "$T/log/apt.log" >&2; fail "apt-get could not install slurm-wlm and munge (see above)"; }
  fi
  have_all || fail "slurm-wlm and munge installed, but one of ${need[*]} is still missing"
fi

# --- munged with its own key and socket --------------------------------------------------
socket="$T/munge/munge.socket"
# A random 1 KiB key, readable by root only as munged demands.
head -c 1024 /dev/urandom >"$T/munge/munge.key"
chmod 600 "$T/munge/munge.key"
munged --foreground --socket="$socket" --key-file="$T/munge/munge.key" \
  --pid-file="$T/munge/munged.pid" --seed-file="$T/munge/munged.seed" \
  --log-file="$T/log/munged.log" >"$T/log/munged.out" 2>&1 &
munged_pid=$!
for _ in $(seq 1 50); do
  [ -S "$socket" ] && break
  kill -0 "$munged_pid" 2>/dev/null || break
  sleep 0.2
done
munge --socket="$socket" -n 2>/dev/null | unmunge --socket="$socket" >/dev/null 2>&1 ||
  { show_logs; fail "munged did not start (socket $socket)"; }

# --- slurm.conf ----------------------------------------------------------------------------
node="$(hostname -s 2>/dev/null || uname -n)"
node="${node%%.*}"
cpus="$(nproc)"
# Address of the cluster. Slurm's NoInAddrAny/NoCtldInAddrAny make the daemons listen on the
# address that the host name resolves to instead of on every interface; we want that only
# when the name resolves to loopback (127.0.0.1, or Debian's 127.0.1.1), and then all parts
# must use that very address. Otherwise the daemons listen on every interface (still only
# our random ports, and munge-authenticated) and are reached through 127.0.0.1.
addr=127.0.0.1
bind_params="# (the host name does not resolve to loopback: the daemons listen on every interface)"
resolved="$(getent ahostsv4 "$node" 2>/dev/null | awk '{ print $1; exit }' || true)"
case "$resolved" in
  127.*)
    addr="$resolved"
    bind_params="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
    ;;
esac
# Two free TCP ports in a non-default range (Slurm's defaults are 6817/6818); bash's
# /dev/tcp connect fails when nobody listens there.
port_free() { ! (exec 3<>"/dev/tcp/$addr/$1") 2>/dev/null; }
ctld_port=""
for _ in $(seq 1 50); do
  p=$((20000 + (RANDOM % 20000) * 2))
  if port_free "$p" && port_free "$((p + 1))"; then
    ctld_port=$p
    break
  fi
done
[ -n "$ctld_port" ] || fail "found no two free ports on $addr"
slurmd_port=$((ctld_port + 1))

export SLURM_CONF="$T/slurm.conf"
cat >"$SLURM_CONF" <<EOF
# Private one-node cluster of scripts/slurm/selftest.sh; everything lives in $T.
ClusterName=linattn-selftest
# The controller runs here, reached at a loopback address: no other interface is involved.
SlurmctldHost=$node($addr)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
# Listen on $addr only, not on every interface.
$bind_params
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our munged, not a system one at /run/munge.
AuthInfo=socket=$socket
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
# No cgroups (a container may have none that we may use): track processes by parent pid,
# bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
# No mail: the default sendmail path may not exist.
MailProg=/bin/true
# Allocate single CPUs, so that two 1-CPU shards run side by side on two cores.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# A node that was down comes back as soon as its slurmd registers.
ReturnToService=2
# Keep finished jobs visible to squeue for 10 minutes: we read their end states there
# (there is no accounting database for sacct).
MinJobAge=600
NodeName=$node NodeAddr=$addr NodeHostname=$node CPUs=$cpus State=UNKNOWN
PartitionName=selftest Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

# --- slurmctld and slurmd --------------------------------------------------------------
slurmctld -D -i -f "$SLURM_CONF" >"$T/log/slurmctld.out" 2>&1 &
slurmctld_pid=$!
for _ in $(seq 1 50); do
  scontrol ping >/dev/null 2>&1 && break
  kill -0 "$slurmctld_pid" 2>/dev/null || break
  sleep 0.2
done
scontrol ping >/dev/null 2>&1 || { show_logs; fail "slurmctld did not answer on $addr:$ctld_port"; }
slurmd -D -f "$SLURM_CONF" -N "$node" >"$T/log/slurmd.out" 2>&1 &
slurmd_pid=$!
state=""
for _ in $(seq 1 150); do
  state="$(sinfo -h -n "$node" -o %T 2>/dev/null || true)"
  [ "$state" = idle ] && break
  kill -0 "$slurmd_pid" 2>/dev/null || break
  sleep 0.2
done
[ "$state" = idle ] || { show_logs; fail "node $node did not become idle (state '$state')"; }
say "cluster up: node $node with $cpus CPUs, slurmctld on $addr:$ctld_port, slurmd on :$slurmd_port ($((SECONDS - started)) s)"

# --- Submit the sharded figure and wait ----------------------------------------------------
cd "$T"
jobs_submitted=1
out="$(LINATTN_SLURM_LOGS="$T/slurm-logs" bash "$here/submit.sh" fig2_setting1 --quick --iters 300 --shards 2 \
  --runs "$T/runs" --plots "$T/plots" 2>"$T/log/submit.err")" ||
  { cat "$T/log/submit.err" >&2; fail "submit.sh failed"; }
array_id="$(printf '%s\n' "$out" | sed -n 's/^array job \([0-9][0-9]*\)$/\1/p')"
draw_id="$(printf '%s\n' "$out" | sed -n 's/^draw job \([0-9][0-9]*\)$/\1/p')"
if [ -z "$array_id" ] || [ -z "$draw_id" ]; then fail "submit.sh printed no job ids: '$out'"; fi
say "submitted array job $array_id and draw job $draw_id"

timeout="${SLURM_SELFTEST_TIMEOUT:-240}"
deadline=$((SECONDS + timeout))
while :; do
  # One line per array task (pending ones may be folded into one line) and one for the draw.
  states="$(squeue -h -t all -j "$array_id,$draw_id" -o '%i %T' 2>/dev/null || true)"
  if [ -n "$states" ] && ! printf '%s\n' "$states" |
    grep -qvE ' (COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)$'; then
    break
  fi
  for d in slurmctld slurmd munged; do
    pid_var="${d}_pid"
    kill -0 "${!pid_var}" 2>/dev/null || { show_logs; fail "$d died while the jobs ran"; }
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    squeue -h -t all -o '%i %T %r' >&2 || true
    show_logs
    fail "the jobs did not finish within $timeout s"
  fi
  sleep 2
done
expected="$(printf '%s\n' "${array_id}_0 COMPLETED" "${array_id}_1 COMPLETED" "$draw_id COMPLETED" | sort)"
if [ "$(printf '%s\n' "$states" | sort)" != "$expected" ]; then
  printf '%s\n' "$states" >&2
  show_logs
  fail "not every job completed: $(printf '%s' "$states" | tr '\n' ',')"
fi
say "array job and draw job completed ($((SECONDS - started)) s)"

# --- No unit trained by two shards ------------------------------------------------------
shard_logs=("$T/slurm-logs/linattn-reproduce-${array_id}_0.out" "$T/slurm-logs/linattn-reproduce-${array_id}_1.out")
for k in 1 2; do
  f="${shard_logs[$((k - 1))]}"
  [ -f "$f" ] || fail "no log of shard $k/2 at $f"
  grep -q "shard $k/2: " "$f" || { show_logs; fail "the log of shard $k/2 has no 'shard $k/2: ...' line"; }
done
# Lines `shard K/N: trained UNIT` (anything may precede `shard`; UNIT is the next word).
if ! twice="$(cat "${shard_logs[@]}" | tr -d '\r' | awk '
  match($0, /shard [0-9]+\/[0-9]+: trained [^ \t]+/) {
    s = substr($0, RSTART, RLENGTH); split(s, w, /[ \t]+/)
    k = w[2]; sub(/:$/, "", k); unit = w[4]; n++
    if ((unit in by) && by[unit] != k) { print unit " (shards " by[unit] " and " k ")"; dup = 1 }
    by[unit] = k
  }
  END { if (n == 0) print "no \"shard K/N: trained UNIT\" line at all"; exit (dup || n == 0) }')"; then
  fail "units trained by two shards or none trained: $(printf '%s' "$twice" | tr '\n' ';')"
fi
trained="$(cat "${shard_logs[@]}" | grep -cE 'shard [0-9]+/[0-9]+: trained ' || true)"
say "no unit trained twice ($trained trained by the 2 shards)"

# --- One process without --shard, same figure ----------------------------------------------
# --threads 1: the shards ran with --cpus-per-task 1, i.e. --threads 1.
"$LINATTN_BIN" reproduce fig2_setting1 --quick --iters 300 --runs "$T/single-runs" --plots "$T/single-plots" \
  --threads 1 >"$T/single.log" 2>&1 || { tail -n 20 "$T/single.log" >&2; fail "the single-process reproduce failed"; }
say "single process done ($((SECONDS - started)) s)"

[ -s "$T/plots/fig2_setting1.png" ] || fail "the draw job wrote no $T/plots/fig2_setting1.png"
# Identical figure data, apart from what describes the machine, the clock and reuse.
"$python" "$repo/scripts/golden.py" same-data "$T/plots/data/fig2_setting1.json" "$T/single-plots/data/fig2_setting1.json" ||
  fail "the sharded figure data differ from the single process's (KEEP=1 keeps both in T)"

say "passed ($((SECONDS - started)) s)"

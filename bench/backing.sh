#!/usr/bin/env bash
# Backing-store run modes against the single host, end to end (see
# BENCHMARKS.md, "Backing store run modes"): the full bazel-bench workload
# (copied from $HARNESS_SRC at run time, never modified; its common.sh is
# sourced for the timing and the summary) through `rbectl local` with
# casd's [backing] mode = none, cache and jit, the modes interleaved round
# by round (the order rotates) so that a shared machine's noise hits all
# of them alike. Per mode and round, on a fresh rbe state:
#   cold      clean build+test with a fresh salt: every action remote; for
#             cache and jit the backing store (a second release rbe-casd on
#             a Unix socket) is fresh too;
#   cached    bazel clean, the same build again: all remote cache hits;
#   warmhost  (cache, jit) rbectl local restarted on an EMPTY state against
#             the same, now full, backing store; bazel clean and the same
#             build: the second host of a shared backing store.
# Usage: bench/backing.sh
# Env:   BENCH_DIR  work dir, recreated (default /var/tmp/rbe-bench-backing)
#        ROUNDS=3  MODES="none cache jit"  JOBS=4  RBE_PORT=28982
#        HARNESS_SRC=/work/shared/bazel-bench
#        SKIP_BUILD=1  use the binaries already in $CARGO_TARGET_DIR/release
# Output: human text on stdout; one JSON line per build (wall time, Bazel's
# counts, both casds' Stats after it) in $BENCH_DIR/results.jsonl, the
# harness's $BENCH_DIR/harness/out/summary.tsv, and per-round tables with
# the ratios to mode none (bench/backing_report.py) at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/rbe-bench-backing}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-none cache jit}
JOBS=${JOBS:-4}
RBE_PORT=${RBE_PORT:-28982}
HARNESS_SRC=${HARNESS_SRC:-/work/shared/bazel-bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/rbe-bench-target}
bin=$CARGO_TARGET_DIR/release
results=$BENCH_DIR/results.jsonl
say() { printf '\n== [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { echo "FAIL: $*" >&2; exit 1; }

[ -d "$HARNESS_SRC" ] || fail "no bazel-bench harness at $HARNESS_SRC (set HARNESS_SRC)"
command -v bazel >/dev/null || fail "bazel not found (apt-get install bazel-bootstrap)"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building (release) into $CARGO_TARGET_DIR"
  (cd "$repo" && cargo build --release -p rbe-casd -p rbe-frontend -p rbe-workerd -p rbectl -p rbe-bench)
fi
for b in rbectl rbe-casd rbe-frontend rbe-workerd rbe-bench; do
  [ -x "$bin/$b" ] || fail "$bin/$b missing; build first"
done
case "$BENCH_DIR" in /|/var|/var/tmp|/tmp|"") echo "refusing BENCH_DIR=$BENCH_DIR" >&2; exit 2;; esac
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: > "$results"

# --- process bookkeeping: only what this script started is stopped ---------
harness=$BENCH_DIR/bazel-bench
export HARNESS_STATE=$BENCH_DIR/harness
front_pid="" back_pid=""
stop_pid() {  # PID: SIGTERM, wait
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
cleanup() {
  stop_pid "$front_pid"; stop_pid "$back_pid"
  # The harness's Bazel server (its own output root) is ours to stop.
  if [ -d "$harness/workload" ] && [ -d "$HARNESS_STATE/bazel-root" ]; then
    (cd "$harness/workload" && bazel --output_user_root="$HARNESS_STATE/bazel-root" shutdown) \
      >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# The backing store: a second casd with nothing but a store and a socket.
start_backing() {  # DIR
  local d=$1
  mkdir -p "$d/config" "$d/run" "$d/work"
  cat > "$d/config/casd.toml" <<TOML
[listen]
socket = "$d/run/casd.sock"

[storage]
path = "$d/cas"
max_size = "20GiB"
materialize_roots = ["$d/work"]
TOML
  "$bin/rbe-casd" --config-dir "$d/config" > "$d/casd.log" 2>&1 &
  back_pid=$!
  for _ in $(seq 1 600); do
    [ -S "$d/run/casd.sock" ] && "$bin/rbe-bench" casd-stats --socket "$d/run/casd.sock" \
      --wait-blobs 0 --timeout-secs 30 >/dev/null 2>&1 && return 0
    kill -0 "$back_pid" 2>/dev/null || { cat "$d/casd.log" >&2; fail "backing casd exited"; }
    sleep 0.1
  done
  cat "$d/casd.log" >&2; fail "backing casd did not start"
}

start_front() {  # STATE MODE BACKING_SOCKET: `rbectl local`, a [backing] drop-in
  local state=$1 mode=$2 bsock=$3 logf=$1.log
  # rbectl's health check would also pass against someone else's server.
  if ss -Hltn "sport = :$RBE_PORT" | grep -q .; then
    fail "port $RBE_PORT is taken (set RBE_PORT)"
  fi
  mkdir -p "$state/config/casd.toml.d"
  if [ "$mode" != none ]; then
    printf '[backing]\nmode = "%s"\nurl = "unix:%s"\n' "$mode" "$bsock" \
      > "$state/config/casd.toml.d/50-backing.toml"
  fi
  "$bin/rbectl" local --state-dir "$state" --listen "127.0.0.1:$RBE_PORT" \
    --max-size 20GiB > "$logf" 2>&1 &
  front_pid=$!
  for _ in $(seq 1 1200); do
    grep -q "rbe is serving" "$logf" && grep -q "attached to the frontend" "$logf" && return 0
    kill -0 "$front_pid" 2>/dev/null || { cat "$logf" >&2; fail "rbectl exited"; }
    sleep 0.1
  done
  cat "$logf" >&2; fail "rbe did not start (or no worker attached)"
}

stats() {  # SOCKET: casd's Stats as one JSON object, {} without a socket
  if [ -S "${1:-/nonexistent}" ]; then
    "$bin/rbe-bench" casd-stats --socket "$1" | grep '^{' || echo '{}'
  else
    echo '{}'
  fi
}

# Machine-wide busy CPU seconds (everything but idle and iowait), as in exec.sh.
busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.1f\n", ($2+$3+$4+$7+$8)/hz}' /proc/stat; }

python3 "$here/report.py" machine | tee -a "$results"
cp -r "$HARNESS_SRC" "$harness"
chmod -R u+w "$harness"
# shellcheck source=/dev/null
source "$harness/common.sh"
ensure_workload
TARGETS=$(default_targets)
say "bazel $(bazel_version); targets $TARGETS; jobs $JOBS; rounds $ROUNDS; modes $MODES"

build() {  # ROUND MODE PHASE FRONT_SOCK BACK_SOCK: one timed build, one JSON line
  local round=$1 mode=$2 phase=$3 fsock=$4 bsock=$5
  local logf=$BENCH_DIR/r$round-$mode-$phase.log b0 b1 l0 l1 fs bs
  bz clean > /dev/null 2>&1
  say "round $round, $mode: $phase"
  l0=$(cut -d' ' -f1-3 /proc/loadavg); b0=$(busy)
  # shellcheck disable=SC2086
  timed_bazel "$logf" test "${FLAGS[@]}" $TARGETS || true
  b1=$(busy); l1=$(cut -d' ' -f1-3 /proc/loadavg)
  record remote "backing-$mode-r$round" "$JOBS" "$phase" "$logf"
  print_phase "$mode $phase" "$logf"
  fs=$(stats "$fsock"); bs=$(stats "$bsock")
  python3 - "$logf.summary" "$round" "$mode" "$phase" "$l0" "$l1" "$b0" "$b1" "$fs" "$bs" <<'PY' | tee -a "$results"
import json, sys
summ, rnd, mode, phase, l0, l1, b0, b1, fs, bs = sys.argv[1:]
kv = {}
for line in open(summ):
    k, _, v = line.rstrip("\n").partition("=")
    kv[k] = v  # the last of each key: this build
num = lambda k: float(kv.get(k) or 0)
print(json.dumps({
    "bench": "backing_build", "round": int(rnd), "mode": mode, "phase": phase,
    "exit": int(num("exit")), "wall_s": num("wall_s"), "bazel_elapsed_s": num("bazel_elapsed_s"),
    "remote": int(num("remote")), "cache_hit": int(num("cache_hit")), "local": int(num("local")),
    "tests": kv.get("tests", ""), "loadavg_before": l0, "loadavg_after": l1,
    "machine_busy_cpu_s": round(float(b1) - float(b0), 1),
    "front": json.loads(fs), "backing": json.loads(bs),
}))
PY
}

modes=($MODES)
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order so that no mode always runs first (right after the
  # previous round's clean-up) or last.
  n=${#modes[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${modes[$(((i + round - 1) % n))]}"); done
  for mode in "${order[@]}"; do
    salt="backing-r$round-$mode-$(date +%s)-$$"
    FLAGS=(--remote_executor="grpc://127.0.0.1:$RBE_PORT" --remote_timeout=600 --jobs="$JOBS"
           --action_env=HARNESS_SALT="$salt" --host_action_env=HARNESS_SALT="$salt"
           --test_env=HARNESS_SALT="$salt")
    bdir=$BENCH_DIR/r$round-$mode-backing
    bsock=""
    if [ "$mode" != none ]; then
      start_backing "$bdir"
      bsock=$bdir/run/casd.sock
    fi
    state=$BENCH_DIR/r$round-$mode-host1
    start_front "$state" "$mode" "$bsock"
    # Loading and analysis for this salt's flags, outside the timed builds
    # (as run-remote.sh does).
    # shellcheck disable=SC2086
    bz build --nobuild "${FLAGS[@]}" $TARGETS > "$BENCH_DIR/r$round-$mode-warmup.log" 2>&1 \
      || { tail -20 "$BENCH_DIR/r$round-$mode-warmup.log"; fail "warm-up failed"; }
    build "$round" "$mode" cold "$state/run/casd.sock" "$bsock"
    build "$round" "$mode" cached "$state/run/casd.sock" "$bsock"
    stop_pid "$front_pid"; front_pid=""
    rm -rf "$state"
    if [ "$mode" != none ]; then
      state=$BENCH_DIR/r$round-$mode-host2
      start_front "$state" "$mode" "$bsock"
      build "$round" "$mode" warmhost "$state/run/casd.sock" "$bsock"
      stop_pid "$front_pid"; front_pid=""
      rm -rf "$state"
      stop_pid "$back_pid"; back_pid=""
      rm -rf "$bdir"
    fi
  done
done

say "summary ($results)"
python3 "$here/backing_report.py" "$results"

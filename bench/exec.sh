#!/usr/bin/env bash
# Remote-execution benchmarks, end to end (see BENCHMARKS.md, "Execution"):
#   1. rbe-bench exec: no-op Executes (/bin/true, unique actions = forced
#      cache misses), sequential then concurrent, with the per-stage split
#      from ExecutedActionMetadata;
#   2. a real Bazel (bazel-bench harness, copied from $HARNESS_SRC at run
#      time, never modified): run-micro.sh local vs remote, run-local.sh vs
#      run-remote.sh on the full workload, all in this one sitting;
#   3. optionally (BGD=1) a smaller rbe-bench exec and the same Bazel runs
#      against BuildGrid 0.9.x with the harness's start-buildgrid.sh
#      (installs PostgreSQL if missing).
# Usage: bench/exec.sh
# Env:   BENCH_DIR   work dir, recreated (default /var/tmp/rbe-bench-exec)
#        SEQUENTIAL=200 CONCURRENT=5000 CONCURRENCY=50   rbe-bench exec sizes
#        DIAG_CONCURRENT=2000  size of the do_not_cache diagnostic's concurrent phase
#        MICRO_RUNS=2   runs of run-micro.sh per side
#        SKIP_BAZEL=1   only rbe-bench exec;  SKIP_FULL=1  no full workload
#        BGD=1          also BuildGrid (adds ~10 minutes; rbe-bench exec with
#                       BGD_SEQUENTIAL=20 BGD_CONCURRENT=200); BUILDGRID_VENV picks an
#                       existing venv with buildgrid (default /var/tmp/bgd-venv if
#                       present, the one tests/run-all.sh installs)
#        LOCAL_JOBS=2 REMOTE_JOBS=4 RBE_PORT=28981
#        HARNESS_SRC=/work/shared/bazel-bench
#        SKIP_BUILD=1   use the binaries already in $CARGO_TARGET_DIR/release
#        KEEP=1         keep BENCH_DIR's rbe state afterwards
# Output: human text on stdout, every result as a JSON line in $BENCH_DIR/results.jsonl,
# the harness's $BENCH_DIR/harness/out/summary.tsv, and a short summary at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/rbe-bench-exec}
SEQUENTIAL=${SEQUENTIAL:-200}
CONCURRENT=${CONCURRENT:-5000}
CONCURRENCY=${CONCURRENCY:-50}
DIAG_CONCURRENT=${DIAG_CONCURRENT:-2000}
BGD_SEQUENTIAL=${BGD_SEQUENTIAL:-20}
BGD_CONCURRENT=${BGD_CONCURRENT:-200}
MICRO_RUNS=${MICRO_RUNS:-2}
LOCAL_JOBS=${LOCAL_JOBS:-2}
REMOTE_JOBS=${REMOTE_JOBS:-4}
RBE_PORT=${RBE_PORT:-28981}
HARNESS_SRC=${HARNESS_SRC:-/work/shared/bazel-bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/rbe-bench-target}
bin=$CARGO_TARGET_DIR/release
results=$BENCH_DIR/results.jsonl
log() { printf '\n== [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building (release) into $CARGO_TARGET_DIR"
  (cd "$repo" && cargo build --release -p rbe-casd -p rbe-frontend -p rbe-workerd -p rbectl -p rbe-bench)
fi
for b in rbectl rbe-casd rbe-frontend rbe-workerd rbe-bench; do
  [ -x "$bin/$b" ] || { echo "FAIL: $bin/$b missing; build first" >&2; exit 1; }
done

case "$BENCH_DIR" in /|/var|/var/tmp|/tmp|"") echo "refusing BENCH_DIR=$BENCH_DIR" >&2; exit 2;; esac
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: > "$results"

# --- process bookkeeping: only what this script started is stopped ---------
rbe_pid=""
bgd_started=0
harness=$BENCH_DIR/bazel-bench
export HARNESS_STATE=$BENCH_DIR/harness
if [ -z "${BUILDGRID_VENV:-}" ] && [ -x /var/tmp/bgd-venv/bin/bgd ]; then
  export BUILDGRID_VENV=/var/tmp/bgd-venv
fi
cleanup() {
  if [ -n "$rbe_pid" ] && kill -0 "$rbe_pid" 2>/dev/null; then
    kill -TERM "$rbe_pid" 2>/dev/null || true
    wait "$rbe_pid" 2>/dev/null || true
  fi
  if [ "$bgd_started" = 1 ]; then "$harness/stop-buildgrid.sh" >/dev/null 2>&1 || true; fi
  # The harness's Bazel server (its own output root) is ours to stop.
  if [ -d "$harness/workload" ] && [ -d "$HARNESS_STATE/bazel-root" ]; then
    (cd "$harness/workload" && bazel --output_user_root="$HARNESS_STATE/bazel-root" shutdown) \
      >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

start_rbe() {  # STATE_DIR LOG: starts `rbectl local`, waits until a worker is attached
  local state=$1 logf=$2
  # rbectl's health check would also pass against someone else's server.
  if ss -Hltn "sport = :$RBE_PORT" | grep -q .; then
    echo "FAIL: port $RBE_PORT is taken (set RBE_PORT)" >&2; exit 1
  fi
  "$bin/rbectl" local --state-dir "$state" --listen "127.0.0.1:$RBE_PORT" \
    --max-size 20GiB > "$logf" 2>&1 &
  rbe_pid=$!
  for _ in $(seq 1 1200); do
    grep -q "rbe is serving" "$logf" && grep -q "attached to the frontend" "$logf" && return 0
    kill -0 "$rbe_pid" 2>/dev/null || { cat "$logf" >&2; echo "FAIL: rbectl exited" >&2; exit 1; }
    sleep 0.1
  done
  cat "$logf" >&2; echo "FAIL: rbe did not start (or no worker attached)" >&2; exit 1
}

python3 "$here/report.py" machine | tee -a "$results"
# Prints everything, keeps the JSON result lines in $results.
jsonl() { while IFS= read -r l; do printf '%s\n' "$l"; case $l in '{'*) printf '%s\n' "$l" >> "$results";; esac; done; }
# Machine-wide busy CPU seconds (everything but idle and iowait) and steal,
# from /proc/stat: with the wall time this shows how loaded the 2 CPUs were
# (ours and other tenants' work together; nothing here is niced).
noise() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.1f %.1f\n", ($2+$3+$4+$7+$8)/hz, $9/hz}' /proc/stat; }

# --- 1. rbe-bench exec ---------------------------------------------------------
rstate=$BENCH_DIR/rbe
ep=http://127.0.0.1:$RBE_PORT
log "rbe: starting (state $rstate)"
start_rbe "$rstate" "$BENCH_DIR/rbe.log"
log "rbe-bench exec: $SEQUENTIAL sequential, $CONCURRENT at concurrency $CONCURRENCY"
"$bin/rbe-bench" exec --endpoint "$ep" --label rbe --sequential "$SEQUENTIAL" \
  --concurrent "$CONCURRENT" --concurrency "$CONCURRENCY" | jsonl
# Diagnostic, same sitting: the same load with Action.do_not_cache, so the
# server skips its action-cache write; the difference is that write's cost.
log "rbe-bench exec, diagnostic: do_not_cache (no action-cache write)"
"$bin/rbe-bench" exec --endpoint "$ep" --label rbe-do-not-cache --sequential "$SEQUENTIAL" \
  --concurrent "$DIAG_CONCURRENT" --concurrency "$CONCURRENCY" --do-not-cache | jsonl

if [ "${SKIP_BAZEL:-0}" = 1 ]; then
  kill -TERM "$rbe_pid"; wait "$rbe_pid" || true; rbe_pid=""
  [ "${KEEP:-0}" = 1 ] || rm -rf "$rstate"
  log "SKIP_BAZEL=1: done"
  exit 0
fi

# --- 2. Bazel: the harness, copied so it can write into itself ------------------
command -v bazel >/dev/null || { echo "FAIL: bazel not found (apt-get install bazel-bootstrap)" >&2; exit 1; }
cp -r "$HARNESS_SRC" "$harness"
chmod -R u+w "$harness"
out=$HARNESS_STATE/out
mkdir -p "$out"
phase() {  # NAME CMD...: runs a harness script, keeps its output, notes machine noise
  local name=$1; shift
  local n0 n1 t0 t1
  n0=$(noise); t0=$(date +%s.%N)
  log "bazel: $name"
  "$@" 2>&1 | tee "$BENCH_DIR/$name.out" || true
  n1=$(noise); t1=$(date +%s.%N)
  python3 -c "
a, b = '$n0'.split(), '$n1'.split()
print('{\"bench\":\"bazel_phase\",\"phase\":\"$name\",\"wall_s\":%.1f,\"machine_busy_cpu_s\":%.1f,\"steal_s\":%.1f}'
      % ($t1 - $t0, float(b[0]) - float(a[0]), float(b[1]) - float(a[1])))" >> "$results"
}
phase micro-local "$harness/run-micro.sh" --runs "$MICRO_RUNS" --label local
phase micro-rbe "$harness/run-micro.sh" "grpc://127.0.0.1:$RBE_PORT" --runs "$MICRO_RUNS" --label rbe
if [ "${SKIP_FULL:-0}" != 1 ]; then
  phase full-local "$harness/run-local.sh" --jobs "$LOCAL_JOBS"
  phase full-rbe "$harness/run-remote.sh" "grpc://127.0.0.1:$RBE_PORT" --jobs "$REMOTE_JOBS" --label rbe
fi
kill -TERM "$rbe_pid"; wait "$rbe_pid" || true; rbe_pid=""

# --- 3. BuildGrid (optional) ------------------------------------------------------
if [ "${BGD:-0}" = 1 ]; then
  bgd_started=1
  phase bgd-start "$harness/start-buildgrid.sh" --fresh
  # Fewer requests: BuildGrid's bot long-polls, so each takes ~0.5-3 s.
  log "rbe-bench exec against BuildGrid: $BGD_SEQUENTIAL sequential, $BGD_CONCURRENT at $CONCURRENCY"
  timeout 600 "$bin/rbe-bench" exec --endpoint http://127.0.0.1:50151 --instance main \
    --label buildgrid --sequential "$BGD_SEQUENTIAL" --concurrent "$BGD_CONCURRENT" \
    --concurrency "$CONCURRENCY" --warmup 1 | jsonl || true
  phase micro-buildgrid "$harness/run-micro.sh" grpc://127.0.0.1:50151 --instance main \
    --runs 1 --label buildgrid
  if [ "${SKIP_FULL:-0}" != 1 ]; then
    phase full-buildgrid "$harness/run-remote.sh" grpc://127.0.0.1:50151 --instance main \
      --jobs "$REMOTE_JOBS" --label buildgrid
  fi
  "$harness/stop-buildgrid.sh" || true
  bgd_started=0
fi

log "summary ($out/summary.tsv)"
column -t -s $'\t' "$out/summary.tsv" | cut -c1-200 || cat "$out/summary.tsv"
[ "${KEEP:-0}" = 1 ] || rm -rf "$rstate"

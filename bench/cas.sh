#!/usr/bin/env bash
# CAS benchmarks, end to end: rbe and BuildGrid side by side in one run.
# Usage: bench/cas.sh   (about 3 minutes of benchmarks, then ~5 minutes deleting
#                       the 1M-file store; see BENCHMARKS.md)
# Env:   BENCH_DIR   work dir, recreated (default /var/tmp/rbe-bench)
#        SIZE_MIB=256 RUNS=3  BATCH_COUNT=20000 BATCH_CONCURRENCY=2
#        FMB_COUNT=10000 FMB_CALLS=50  MEM_BLOBS=1000000
#        RBE_PORT=18980 BGD_PORT=18990  SKIP_BGD=1 to leave BuildGrid out
#        DROP_CACHES=1  drop the page/dentry cache before the 1M-blob index
#                       load (affects the whole machine; default off = warm)
#        KEEP=1         keep BENCH_DIR afterwards (default: remove the stores)
#        SKIP_BUILD=1   use the binaries already in $CARGO_TARGET_DIR/release
# Output: human text on stderr/stdout, every result as a JSON line in
# $BENCH_DIR/results.jsonl, and the markdown table in $BENCH_DIR/report.md
# (also printed at the end).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/rbe-bench}
SIZE_MIB=${SIZE_MIB:-256}
RUNS=${RUNS:-3}
BATCH_COUNT=${BATCH_COUNT:-20000}
BATCH_CONCURRENCY=${BATCH_CONCURRENCY:-2}
FMB_COUNT=${FMB_COUNT:-10000}
FMB_CALLS=${FMB_CALLS:-50}
MEM_BLOBS=${MEM_BLOBS:-1000000}
RBE_PORT=${RBE_PORT:-18980}
BGD_PORT=${BGD_PORT:-18990}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/rbe-bench-target}
bin=$CARGO_TARGET_DIR/release
results=$BENCH_DIR/results.jsonl
report() { python3 "$here/report.py" "$@"; }
log() { printf '\n== %s\n' "$*" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building (release) into $CARGO_TARGET_DIR"
  (cd "$repo" && cargo build --release -p rbe-casd -p rbe-frontend -p rbectl -p rbe-bench)
fi
for b in rbectl rbe-casd rbe-frontend rbe-bench; do
  [ -x "$bin/$b" ] || { echo "FAIL: $bin/$b missing; build first" >&2; exit 1; }
done

case "$BENCH_DIR" in /|/var|/var/tmp|/tmp|"") echo "refusing BENCH_DIR=$BENCH_DIR" >&2; exit 2;; esac
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
: > "$results"

# --- process bookkeeping: only what this script started is stopped ---------
rbe_pid=""
bgd_pid=""
cleanup() {
  if [ -n "$rbe_pid" ] && kill -0 "$rbe_pid" 2>/dev/null; then
    kill -TERM "$rbe_pid" 2>/dev/null || true
    wait "$rbe_pid" 2>/dev/null || true
  fi
  if [ -n "$bgd_pid" ] && kill -0 "$bgd_pid" 2>/dev/null; then
    kill -TERM "$bgd_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$bgd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$bgd_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# start_rbe STATE_DIR LOG: starts `rbectl local`, waits until it serves.
start_rbe() {
  local state=$1 logf=$2
  "$bin/rbectl" local --state-dir "$state" --listen "127.0.0.1:$RBE_PORT" \
    --max-size 20GiB > "$logf" 2>&1 &
  rbe_pid=$!
  for _ in $(seq 1 1200); do
    grep -q "rbe is serving" "$logf" && return 0
    kill -0 "$rbe_pid" 2>/dev/null || { cat "$logf" >&2; echo "FAIL: rbectl exited" >&2; exit 1; }
    sleep 0.1
  done
  cat "$logf" >&2; echo "FAIL: rbe did not start" >&2; exit 1
}
stop_rbe() {
  kill -TERM "$rbe_pid"
  wait "$rbe_pid" || true
  rbe_pid=""
}
# The daemons of the stack rooted at STATE (rbectl passes --config-dir).
daemon_pid() { pgrep -f "$1 --config-dir $2/config" | head -1; }
bench() { "$bin/rbe-bench" "$@" | tee -a "$results"; }

# --- machine and the hashing floor ----------------------------------------
log "machine"
report machine | tee -a "$results"
blob=$BENCH_DIR/blob.bin
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$blob"
cat "$blob" > /dev/null   # in the page cache for openssl and the client alike
log "openssl dgst -sha256 on $blob"
report openssl "$blob" "$RUNS" | tee -a "$results"

# --- rbe -------------------------------------------------------------------
rstate=$BENCH_DIR/rbe
ep=http://127.0.0.1:$RBE_PORT
log "rbe: starting (state $rstate)"
start_rbe "$rstate" "$BENCH_DIR/rbe.log"
sleep 2
report rss rbe rbe-casd "$(daemon_pid rbe-casd "$rstate")" | tee -a "$results"
report rss rbe rbe-frontend "$(daemon_pid rbe-frontend "$rstate")" | tee -a "$results"
bs=(bytestream --size-mib "$SIZE_MIB" --runs "$RUNS" --file "$blob" --openssl)
log "rbe: ByteStream SHA-256"
bench "${bs[@]}" --endpoint "$ep" --label rbe --function sha256
log "rbe: ByteStream BLAKE3"
bench "${bs[@]}" --endpoint "$ep" --label rbe --function blake3
log "rbe: ByteStream SHA-256 straight to casd (diagnostic: cost of the frontend hop)"
bench "${bs[@]}" --endpoint "unix:$rstate/run/casd.sock" --label rbe-casd-direct --function sha256
log "rbe: BatchUpdateBlobs"
bench batch --endpoint "$ep" --label rbe --count "$BATCH_COUNT" --size 1024 \
  --concurrency "$BATCH_CONCURRENCY"
log "rbe: FindMissingBlobs"
bench fmb --endpoint "$ep" --label rbe --count "$FMB_COUNT" --calls "$FMB_CALLS"
stop_rbe

log "rbe: ByteStream with verify_reads = false"
mkdir -p "$rstate/config/casd.toml.d"
printf '[storage]\nverify_reads = false\n' > "$rstate/config/casd.toml.d/bench.toml"
start_rbe "$rstate" "$BENCH_DIR/rbe-noverify.log"
bench "${bs[@]}" --endpoint "$ep" --label rbe-noverify --function sha256
bench "${bs[@]}" --endpoint "unix:$rstate/run/casd.sock" --label rbe-casd-direct-noverify \
  --function sha256
stop_rbe
[ "${KEEP:-0}" = 1 ] || rm -rf "$rstate"

# --- BuildGrid ----------------------------------------------------------------
if [ "${SKIP_BGD:-0}" != 1 ]; then
  bstate=$BENCH_DIR/bgd
  bep=http://127.0.0.1:$BGD_PORT
  log "BuildGrid: starting (state $bstate)"
  BG_STATE=$bstate "$repo/tests/scripts/start-bgd-cache.sh" "$BGD_PORT"
  bgd_pid=$(cat "$bstate/server.pid")
  sleep 2
  # bgd is one process (with threads); children, if any, are counted too.
  report rss buildgrid bgd "$bgd_pid" $(pgrep -P "$bgd_pid" || true) | tee -a "$results"
  log "BuildGrid: ByteStream SHA-256"
  bench "${bs[@]}" --endpoint "$bep" --label buildgrid --function sha256
  log "BuildGrid: BatchUpdateBlobs"
  bench batch --endpoint "$bep" --label buildgrid --count "$BATCH_COUNT" --size 1024 \
    --concurrency "$BATCH_CONCURRENCY"
  log "BuildGrid: FindMissingBlobs"
  bench fmb --endpoint "$bep" --label buildgrid --count "$FMB_COUNT" --calls "$FMB_CALLS"
  cleanup
  bgd_pid=""
  [ "${KEEP:-0}" = 1 ] || rm -rf "$bstate"
fi
# --- memory per indexed blob ------------------------------------------------
mstate=$BENCH_DIR/mem
sock=$mstate/run/casd.sock
log "rbe: casd RSS with an empty store"
start_rbe "$mstate" "$BENCH_DIR/mem0.log"
"$bin/rbe-bench" casd-stats --socket "$sock" --wait-blobs 0 >/dev/null
sleep 2
pid=$(daemon_pid rbe-casd "$mstate")
rss0=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")
stop_rbe
log "rbe: writing $MEM_BLOBS blobs into $mstate/cas"
bench populate --store "$mstate/cas" --count "$MEM_BLOBS" --size 8
cache=warm
if [ "${DROP_CACHES:-0}" = 1 ]; then
  sync; echo 3 > /proc/sys/vm/drop_caches; cache=cold
fi
log "rbe: casd RSS with $MEM_BLOBS blobs"
t0=$(date +%s.%N)
start_rbe "$mstate" "$BENCH_DIR/memn.log"
"$bin/rbe-bench" casd-stats --socket "$sock" --wait-blobs "$MEM_BLOBS" | tee -a "$results"
t1=$(date +%s.%N)
sleep 2
pid=$(daemon_pid rbe-casd "$mstate")
rssn=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")
hwmn=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")
stop_rbe
elapsed=$(sed -n 's/.*CAS index loaded blobs=[0-9]* elapsed_ms=\([0-9]*\).*/\1/p' \
  "$BENCH_DIR/memn.log" | tail -1)
awk -v n="$MEM_BLOBS" -v r0="$rss0" -v rn="$rssn" -v h="$hwmn" -v e="${elapsed:-0}" \
    -v t0="$t0" -v t1="$t1" -v c="$cache" 'BEGIN {
  printf "{\"bench\":\"memory\",\"blobs\":%d,\"blob_bytes\":8,\"rss0_kib\":%d,\"rssn_kib\":%d,\"hwmn_kib\":%d,\"bytes_per_blob\":%.1f,\"index_elapsed_ms\":%d,\"ready_s\":%.3f,\"cache\":\"%s\"}\n",
    n, r0, rn, h, (rn - r0) * 1024 / n, e, t1 - t0, c }' | tee -a "$results"

[ "${KEEP:-0}" = 1 ] || rm -f "$blob"

log "report ($BENCH_DIR/report.md)"
report table "$results" | tee "$BENCH_DIR/report.md"
if [ "${KEEP:-0}" != 1 ]; then
  log "removing the $MEM_BLOBS-file store (ext4 unlinks take minutes; the results above are final)"
  rm -rf "$mstate"
fi
